"""The twin: profile loading, hinted and plausible values, encoding, the twin contract, the CLI."""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from drivers.modbus.client import ExceptionReply, ModbusLink, TcpEndpoint
from drivers.modbus.codec import decode, spec_for
from drivers.modbus.config import ModbusDevice, ModbusPoint
from drivers.modbus.twin import ModbusTwin, parse_units, point_signal
from gateway.buses import Bus, BusConfig
from gateway.config import parse_device
from gateway.registry import DRIVERS
from gateway.twin import Twin, TwinClock, simulate, simulate_parser
from tests.modbus.util import assert_values, driver, points, wait_until

ROOT = str(Path(__file__).resolve().parents[2])

PROFILE = """\
profile: test-meter
driver: modbus
vars: {phases: 3}
device: {numbering: 1, word_order: little, unreadable: [[100, 109]]}
points:
  - {id: freq, address: 1, type: float32, quantity: frequency, unit: Hz}
  - repeat: {n: [1, "{phases}"]}
    points:
      - {id: "v{n}", address: "{10 + 2*(n-1)}", type: float32, quantity: voltage, unit: V,
         phase: "{['L1-N', 'L2-N', 'L3-N'][n-1]}"}
      - {id: "vll{n}", address: "{20 + 2*(n-1)}", type: float32, quantity: voltage, unit: V,
         phase: "{['L1-L2', 'L2-L3', 'L3-L1'][n-1]}"}
      - {id: "i{n}", address: "{30 + n - 1}", type: uint16, scale: 0.01, quantity: current, unit: A}
  - {id: energy, address: 40, type: uint32, scale: 1000, quantity: active_energy_import, unit: Wh, kind: counter}
  - {id: pf, address: 42, type: int16, scale: 0.001, quantity: power_factor}
  - {id: soc, address: 43, type: uint16, quantity: state_of_charge, unit: "%"}
  - {id: temp, address: 44, type: int16, scale: 0.1, quantity: temperature, unit: degC}
  - {id: exp, address: 50, type: int16, quantity: scale, publish: false, sim: {value: -1}}
  - {id: p, address: 51, type: int16, exponent_point: exp, quantity: active_power, unit: W, sim: {value: 1234.5}}
  - {id: fixed, address: 52, type: uint16, quantity: other, sim: {value: 7}}
  - {id: wave, address: 53, type: float32, byte_order: little, quantity: other, sim: {min: 10, max: 20, period: 2s}}
  - {id: alarm, address: 55, type: uint16, bit: 3, quantity: alarm, kind: state, sim: {value: 1}}
  - {id: model, address: 56, type: string, length: 3, quantity: model, sim: {value: "MX-1"}}
  - {id: peer, address: 60, type: uint16, quantity: other, unit_id: "{unit + 1}", sim: {value: "{unit}"}}
"""


@pytest.fixture
def profile(tmp_path: Path) -> str:
    path = tmp_path / "test-meter.yaml"
    path.write_text(PROFILE)
    return str(path)


async def read_regs(link: ModbusLink, unit: int, address: int, count: int) -> bytes:
    return await link.read(unit, 3, address, count, 0.5)


def test_the_registry_names_this_twin() -> None:
    cls = DRIVERS["modbus"].twin_class
    assert cls is ModbusTwin and issubclass(cls, Twin)
    assert cls.kind == "modbus" and cls.default_profile == "schneider-bcpme"


async def test_profile_twin_serves_plausible_encoded_values(profile: str) -> None:
    async with ModbusTwin.create(profile, units=[1, 5], update_interval=0) as twin:
        assert twin.units == [1, 2, 5, 6]
        link = ModbusLink(TcpEndpoint("127.0.0.1", twin.port))
        data = await read_regs(link, 1, 0, 59)  # numbering 1: document address 1 is wire 0

        def val(type_: str, address: int, **kw: object) -> object:
            return decode(spec_for(type_, word_order="little", **kw), data, address - 1)  # type: ignore[arg-type]

        assert 49.9 < val("float32", 1) < 50.1  # type: ignore[operator]
        for n in range(3):
            assert 220 < val("float32", 10 + 2 * n) < 240  # type: ignore[operator]
            assert 390 < val("float32", 20 + 2 * n) < 410  # type: ignore[operator]
            assert 0 <= val("uint16", 30 + n) <= 8000  # type: ignore[operator]
        assert 800 <= val("int16", 42) <= 1000  # type: ignore[operator]
        assert 0 <= val("uint16", 43) <= 100  # type: ignore[operator]
        assert 200 <= val("int16", 44) <= 300  # type: ignore[operator]
        # the exponent point is served, and the value encoded with it: 1234.5 W = 12345 x 10^-1
        assert val("int16", 50) == -1 and val("int16", 51) == 12345
        assert val("uint16", 52) == 7
        assert 10 <= val("float32", 53, byte_order="little") <= 20  # type: ignore[operator]
        assert val("uint16", 55) == 8 and val("uint16", 55, bit=3) is True
        assert val("string", 56, length=3) == "MX-1"
        energy = twin.value("energy")
        assert isinstance(energy, float) and energy > 1e5
        assert val("uint32", 40) == round(energy / 1000)
        # a point with its own unit_id is served there, once per simulated device
        assert decode(spec_for("uint16"), await read_regs(link, 2, 59, 1)) == 1
        assert decode(spec_for("uint16"), await read_regs(link, 6, 59, 1)) == 5
        assert twin.value("peer") == 1 and twin.value("peer", 6) == 5
        # the profile's unreadable range (document 100-109) answers illegal address
        with pytest.raises(ExceptionReply) as exc:
            await read_regs(link, 1, 98, 2)
        assert exc.value.code == 2
        assert len(await read_regs(link, 1, 110, 5)) == 10  # unmapped registers read as zeros
        await link.close()


async def test_values_move_on_a_timer_and_counters_only_grow(profile: str) -> None:
    async with ModbusTwin.create(profile, update_interval=0.02) as twin:
        wave0, energy0 = twin.value("wave"), twin.value("energy")
        await wait_until(lambda: twin.value("wave") != wave0, what="the wave to move")
        await wait_until(lambda: twin.value("energy") != energy0, what="the counter to move")
        energy1 = twin.value("energy")
        assert isinstance(energy1, float) and isinstance(energy0, float) and energy1 > energy0
        twin.set_value("wave", 15.5)
        ticks = twin.clock.elapsed()
        await wait_until(lambda: twin.clock.elapsed() > ticks + 0.1, what="a few timer ticks")
        assert twin.value("wave") == 15.5
        twin.release("wave")
        await wait_until(lambda: twin.value("wave") != 15.5, what="the released point to move")
        # raw words stay as written (a NaN sentinel), and value() says what they mean
        twin.set_raw("holding", 52, [0x0000, 0xC07F])  # NaN in this point's little/little layout
        twin.set_raw("holding", 39, [0x1234, 0x0000], target=1)  # energy, uint32 low word first, x1000
        twin.update()
        wave = twin.value("wave")
        assert isinstance(wave, float) and math.isnan(wave)
        assert twin.value("energy") == 0x1234 * 1000
        twin.release("energy")
        await wait_until(lambda: twin.value("energy") != 0x1234 * 1000, what="the released counter to move")


async def test_values_follow_the_twin_clock(profile: str) -> None:
    clock = TwinClock(start=1_700_000_000.0)
    clock.freeze()
    twin = ModbusTwin.create(profile, update_interval=0, clock=clock)
    energy0, wave0 = twin.value("energy"), twin.value("wave")
    twin.update()
    assert twin.value("energy") == energy0 and twin.value("wave") == wave0  # frozen: nothing moves
    clock.advance(3600)
    twin.update()
    energy1 = twin.value("energy")
    assert isinstance(energy0, float) and isinstance(energy1, float) and energy1 > energy0
    clock.advance(0.5)  # a quarter of the wave's 2 s period
    twin.update()
    assert twin.value("wave") != wave0


async def test_set_value_re_encodes_points_using_an_exponent(profile: str) -> None:
    async with ModbusTwin.create(profile, update_interval=0) as twin:
        link = ModbusLink(TcpEndpoint("127.0.0.1", twin.port))
        twin.set_value("exp", -2)
        raw = decode(spec_for("int16"), await read_regs(link, 1, 50, 1))
        assert raw == 32767  # 1234.5 W at 10^-2 does not fit an int16: clamped
        twin.set_value("exp", 0, 1)
        twin.set_value("p", -250, target=1)
        assert decode(spec_for("int16"), await read_regs(link, 1, 50, 1)) == -250
        await link.close()
    with pytest.raises(KeyError):
        twin.value("nope")
    with pytest.raises(KeyError):
        twin.set_value("freq", 1.0, target=9)


async def test_pymodbus_client_reads_the_twin(profile: str) -> None:
    from pymodbus.client import AsyncModbusTcpClient

    async with ModbusTwin.create(profile, update_interval=0) as twin:
        twin.set_value("fixed", 4242)
        client = AsyncModbusTcpClient("127.0.0.1", port=twin.port, timeout=1, retries=0)
        await client.connect()
        try:
            rr = await client.read_holding_registers(51, count=1, device_id=1)
            assert rr.registers == [4242]
            rr = await client.read_holding_registers(98, count=4, device_id=1)
            assert rr.isError() and rr.exception_code == 2
            rr = await client.read_coils(0, count=10, device_id=1)
            assert rr.bits[:10] == [False] * 10
        finally:
            client.close()


def test_signals_are_plausible_per_quantity() -> None:
    rng = random.Random(3)

    def series(**kw: object) -> list[float]:
        p = ModbusPoint.model_validate({"id": "x", "address": 0, "type": "float32", **kw})
        function = str(kw.get("function", "holding"))
        sig = point_signal(p, function, rng)
        return [float(sig.at(t)) for t in range(0, 3600, 7)]

    checks: list[tuple[dict[str, object], float, float]] = [
        ({"quantity": "voltage", "phase": "L2-N"}, 220, 240),
        ({"quantity": "voltage", "phase": "L2-L3"}, 390, 410),
        ({"quantity": "current"}, 0, 80),
        ({"quantity": "frequency"}, 49.9, 50.1),
        ({"quantity": "power_factor"}, 0.8, 1.0),
        ({"quantity": "temperature"}, 20, 30),
        ({"quantity": "state_of_charge"}, 0, 100),
        ({"quantity": "breaker_state", "kind": "state"}, 1, 1),
        ({"quantity": "alarm", "kind": "state"}, 0, 0),
        ({"quantity": "alarm", "kind": "state", "function": "coil", "type": "bool"}, 0, 0),
        ({"quantity": "breaker_state", "kind": "state", "function": "coil", "type": "bool"}, 1, 1),
        ({"quantity": "other", "sim": {"value": 3}}, 3, 3),
        ({"quantity": "other", "sim": {"min": -5, "max": 5, "period": "30s"}}, -5, 5),
    ]
    for kw, lo, hi in checks:
        values = series(**kw)
        assert all(lo - 1e-9 <= v <= hi + 1e-9 for v in values), (kw, min(values), max(values))
    energy = series(quantity="active_energy_import", unit="Wh", kind="counter")
    assert all(b > a for a, b in itertools.pairwise(energy))
    ramp = series(quantity="counter", kind="counter", sim={"min": 100, "max": 200, "period": "100s"})
    assert ramp[0] == 100 and math.isclose(ramp[1], 107)
    rate = series(quantity="counter", kind="counter", sim={"value": 10, "rate": 2})
    assert rate[0] == 10 and math.isclose(rate[1], 24)
    text = ModbusPoint.model_validate({"id": "t", "address": 0, "type": "string", "length": 4, "quantity": "model"})
    assert point_signal(text, "holding", rng).at(0) == "SIM t"


def test_a_typo_in_a_sim_hint_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(PROFILE.replace("sim: {value: 7}", "sim: {valeu: 7}"))
    with pytest.raises(ValueError, match="valeu"):
        ModbusTwin.create(path)
    with pytest.raises(ValueError, match="mx"):
        ModbusTwin.create(points=[{"id": "a", "address": 0, "quantity": "other", "sim": {"mx": 3}}])
    with pytest.raises(ValueError, match="profile or points"):
        ModbusTwin.create()


def _resolved(path: str) -> str:
    return str(Path(path).resolve())


async def test_device_config_reaches_the_twin_of_a_profile(profile: str) -> None:
    resolved = _resolved(profile)
    async with ModbusTwin.create(Path(profile), vars={"phases": 1}, units=[3, 7], update_interval=0) as twin:
        assert twin.describe() == f"Modbus TCP on 127.0.0.1:{twin.port}, unit ids 3-4,7-8, 30 points"
        cfg = twin.device_config()
        assert cfg == {
            "driver": "modbus",
            "profile": resolved,
            "profile_vars": {"phases": 1},
            "tcp": {"host": "127.0.0.1", "port": twin.port},
            "unit": 3,
        }
        assert twin.device_config(7)["unit"] == 7
        with pytest.raises(KeyError):
            twin.device_config(9)
        for unit in (3, 7):
            dev = parse_device({**twin.device_config(unit), "id": f"m{unit}", "timeout": 0.5})
            assert isinstance(dev, ModbusDevice)
            pts = [p for p in dev.resolved_points if isinstance(p, ModbusPoint)]
            d = await driver(dev, pts, Bus(dev.implicit_bus() or "x"))
            values = (await d.read()).values
            by_id = dict(zip((p.id for p in pts), values, strict=True))
            assert by_id["peer"] == unit and by_id["fixed"] == 7 and by_id["model"] == "MX-1"
            await d.ctx.bus.close()


async def test_device_config_of_inline_points_and_rtu_framing() -> None:
    raw = [
        {"id": "v", "address": 0, "type": "float32", "quantity": "voltage", "unit": "V", "phase": "L1-N"},
        {"id": "n", "address": 4, "type": "uint32", "quantity": "other", "sim": {"value": 70000}},
        {"id": "c", "address": 2, "function": "coil", "type": "bool", "quantity": "breaker_state", "kind": "state"},
    ]
    async with ModbusTwin.create(points=raw, units=[2], framing="rtu", word_order="little", update_interval=0) as twin:
        cfg = twin.device_config()
        assert cfg["points"] == raw and cfg["word_order"] == "little" and cfg["unit"] == 2
        assert cfg["transport"] == "rtu_over_tcp" and twin.describe().startswith("RTU over TCP on 127.0.0.1:")
        dev = parse_device({**cfg, "id": "inline", "timeout": 0.5})
        assert isinstance(dev, ModbusDevice)
        pts = [p for p in dev.resolved_points if isinstance(p, ModbusPoint)]
        d = await driver(dev, pts, Bus(dev.implicit_bus() or "x"))
        assert_values(twin, 2, pts, (await d.read()).values)
        await d.ctx.bus.close()
    # a twin built from point models directly says the same
    pts = points()
    async with ModbusTwin(pts, units=[1], byte_order="little", update_interval=0) as twin:
        cfg = twin.device_config()
        assert cfg["byte_order"] == "little" and len(cfg["points"]) == len(pts)
        dev = parse_device({**cfg, "id": "direct", "timeout": 0.5})
        assert isinstance(dev, ModbusDevice)
        assert [p.model_dump() for p in dev.resolved_points] == [p.model_dump() for p in pts]
        d = await driver(dev, pts, Bus(dev.implicit_bus() or "x"))
        assert_values(twin, 1, pts, (await d.read()).values)
        await d.ctx.bus.close()


async def test_the_demo_devices_are_twins_of_shipped_profiles() -> None:
    ids = [d.id for d in ModbusTwin.demo]
    assert ids == ["bcpme-1", "emdx3-3", "bmgw-1", "busway-a"]
    units = {"bcpme-1": 1, "emdx3-3": 3, "bmgw-1": 1, "busway-a": 1}
    for demo in ModbusTwin.demo:
        async with ModbusTwin.create(demo.profile, vars=demo.vars, **demo.options) as twin:
            dev = parse_device({**twin.device_config(), "id": demo.id, **demo.config})
            assert isinstance(dev, ModbusDevice) and dev.unit == units[demo.id]
            assert dev.interval == 2.0 and dev.timeout == 0.5
            assert set(demo.show) <= {p.id for p in dev.resolved_points}, demo.id
            for point in demo.show:
                twin.value(point)  # each shown point is served
    assert dict(ModbusTwin.demo[0].config["tags"]) == {"room": "hall-a", "board": "PDU-A1"}


def test_parse_units() -> None:
    assert parse_units("1,2") == [1, 2]
    assert parse_units("1-4, 10") == [1, 2, 3, 4, 10]
    assert parse_units("1-64") == list(range(1, 65))
    for bad in ("", "5-1", "300", "x"):
        with pytest.raises(ValueError):
            parse_units(bad)


def test_simulate_options() -> None:
    line = "--units 3-4 --rtu --baudrate 19200 --parity E --bytesize 7 --stopbits 2 --wire-time --interval 250ms"
    args = simulate_parser(ModbusTwin, "legrand-emdx3").parse_args([*line.split(), "--serial", "pty"])
    options = ModbusTwin.options_from_args(args)
    assert {k: v for k, v in options.items() if k != "base_dir"} == {
        "units": [3, 4],
        "framing": "rtu",
        "serial": "pty",
        "baudrate": 19200,
        "parity": "E",
        "bytesize": 7,
        "stopbits": 2,
        "wire_time": True,
        "update_interval": 0.25,
    }
    twin = ModbusTwin.create("legrand-emdx3", **options)
    assert twin.units == [3, 4] and twin.serial == "pty" and twin.update_interval == 0.25


def test_simulate_reports_bad_arguments(profile: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert simulate(ModbusTwin, "no-such-profile", ["--duration", "0.1"]) == 2
    assert "no shipped modbus profile" in capsys.readouterr().err
    assert simulate(ModbusTwin, profile, ["--var", "nope=1", "--duration", "0.1"]) == 2
    assert "unknown profile variable" in capsys.readouterr().err
    assert simulate(ModbusTwin, profile, ["--units", "300", "--duration", "0.1"]) == 2
    assert "bad unit range" in capsys.readouterr().err


async def test_simulate_serves_for_its_duration(profile: str, capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    code = await asyncio.to_thread(simulate, ModbusTwin, profile, ["--units", "2", "--duration", "0.3s"])
    assert code == 0 and 0.3 <= time.monotonic() - t0 < 5
    assert re.search(r"simulating Modbus TCP on 127\.0\.0\.1:\d+, unit ids 2-3, \d+ points", capsys.readouterr().out)


async def test_cli_serves_until_sigterm(profile: str) -> None:
    code = (
        "import sys; from drivers.modbus.twin import ModbusTwin; from gateway.twin import simulate; "
        "sys.exit(simulate(ModbusTwin, sys.argv[1], sys.argv[2:]))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, profile, "--port", "0", "--units", "3", "--var", "phases=1",
        "--fault", "slow", "--fault-delay", "50ms",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": "."},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        m = re.search(r"on 127\.0\.0\.1:(\d+), unit ids 3-4", line)
        assert m, line
        link = ModbusLink(TcpEndpoint("127.0.0.1", int(m.group(1))))
        t0 = time.monotonic()
        assert decode(spec_for("uint16"), await read_regs(link, 3, 51, 1)) == 7
        assert 0.05 <= time.monotonic() - t0 < 1.0  # the slow fault of --fault slow
        with pytest.raises(ExceptionReply):
            await read_regs(link, 3, 100, 1)
        await link.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_pty_of_its_own_with_wire_time() -> None:
    # 125 registers: 8-byte request + 255-byte reply = 2630 bit times at 9600 baud = 0.27 s
    raw = [{"id": f"r{i}", "address": i, "type": "uint16", "quantity": "other"} for i in range(125)]
    async with ModbusTwin.create(points=raw, serial="pty", wire_time=True, update_interval=0) as twin:
        assert twin.peer is not None and twin.describe() == f"Modbus RTU on {twin.peer}, unit ids 1, 125 points"
        cfg = twin.device_config()
        assert cfg["bus"] == "modbus-twin" and "tcp" not in cfg
        bus = Bus("modbus-twin", BusConfig.model_validate(twin.bus_config()))
        assert twin.bus_config()["serial"] == {
            "port": twin.peer,
            "baudrate": 9600,
            "bytesize": 8,
            "parity": "N",
            "stopbits": 1,
        }
        dev = parse_device({**cfg, "id": "rtu", "timeout": 1.0})
        assert isinstance(dev, ModbusDevice)
        pts = [p for p in dev.resolved_points if isinstance(p, ModbusPoint)]
        d = await driver(dev, pts, bus)
        t0 = time.monotonic()
        assert_values(twin, 1, pts, (await d.read()).values)
        assert 0.25 < time.monotonic() - t0 < 0.9
        await bus.close()
    with pytest.raises(LookupError):
        ModbusTwin.create(points=raw).bus_config()
    with pytest.raises(LookupError, match="peer"):
        ModbusTwin.create(points=raw, serial="/dev/ttyS9").bus_config()
