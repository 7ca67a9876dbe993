"""The twin: profile loading, plausible and hinted values, encoding, exceptions, the CLI."""

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
from drivers.modbus.config import ModbusPoint
from drivers.modbus.simulator import ModbusTwin, main, make_generator, parse_units
from tests.modbus.util import wait_until

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


async def test_profile_twin_serves_plausible_encoded_values(profile: str) -> None:
    async with ModbusTwin.from_profile(profile, units=[1, 5], update_interval=0) as twin:
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
        energy = twin.value(1, "energy")
        assert isinstance(energy, float) and energy > 1e5
        assert val("uint32", 40) == round(energy / 1000)
        # a point with its own unit_id is served there, once per simulated device
        assert decode(spec_for("uint16"), await read_regs(link, 2, 59, 1)) == 1
        assert decode(spec_for("uint16"), await read_regs(link, 6, 59, 1)) == 5
        # the profile's unreadable range (document 100-109) answers illegal address
        with pytest.raises(ExceptionReply) as exc:
            await read_regs(link, 1, 98, 2)
        assert exc.value.code == 2
        assert len(await read_regs(link, 1, 110, 5)) == 10  # unmapped registers read as zeros
        await link.close()


async def test_values_move_on_a_timer_and_counters_only_grow(profile: str) -> None:
    async with ModbusTwin.from_profile(profile, update_interval=0.02) as twin:
        wave0, energy0 = twin.value(1, "wave"), twin.value(1, "energy")
        await wait_until(lambda: twin.value(1, "wave") != wave0, what="the wave to move")
        await wait_until(lambda: twin.value(1, "energy") != energy0, what="the counter to move")
        energy1 = twin.value(1, "energy")
        assert isinstance(energy1, float) and isinstance(energy0, float) and energy1 > energy0
        twin.set_value(1, "wave", 15.5)
        await asyncio.sleep(0.05)
        assert twin.value(1, "wave") == 15.5
        twin.release(1, "wave")
        await wait_until(lambda: twin.value(1, "wave") != 15.5, what="the released point to move")
        # raw words stay as written (a NaN sentinel), and value() says what they mean
        twin.set_raw(1, "holding", 52, [0x0000, 0xC07F])  # NaN in this point's little/little layout
        twin.set_raw(1, "holding", 39, [0x1234, 0x0000])  # energy, uint32 low word first, x1000
        await asyncio.sleep(0.05)
        wave = twin.value(1, "wave")
        assert isinstance(wave, float) and math.isnan(wave)
        assert twin.value(1, "energy") == 0x1234 * 1000
        twin.release(1, "energy")
        await wait_until(lambda: twin.value(1, "energy") != 0x1234 * 1000, what="the released counter to move")


async def test_set_value_re_encodes_points_using_an_exponent(profile: str) -> None:
    async with ModbusTwin.from_profile(profile, update_interval=0) as twin:
        link = ModbusLink(TcpEndpoint("127.0.0.1", twin.port))
        twin.set_value(1, "exp", -2)
        raw = decode(spec_for("int16"), await read_regs(link, 1, 50, 1))
        assert raw == 32767  # 1234.5 W at 10^-2 does not fit an int16: clamped
        twin.set_value(1, "exp", 0)
        twin.set_value(1, "p", -250)
        assert decode(spec_for("int16"), await read_regs(link, 1, 50, 1)) == -250
        await link.close()


async def test_pymodbus_client_reads_the_twin(profile: str) -> None:
    from pymodbus.client import AsyncModbusTcpClient

    async with ModbusTwin.from_profile(profile, update_interval=0) as twin:
        twin.set_value(1, "fixed", 4242)
        client = AsyncModbusTcpClient("127.0.0.1", port=twin.port, timeout=1, retries=0)
        await client.connect()
        try:
            rr = await client.read_holding_registers(51, count=1, device_id=1)
            assert rr.registers == [4242]
            rr = await client.read_holding_registers(98, count=4, device_id=1)
            assert rr.isError() and rr.exception_code == 2
            rr = await client.read_coils(0, count=10, device_id=1)
            assert rr.bits[:10] == [False] * 10
            rr = await client.write_register(500, 17, device_id=1)
            assert not rr.isError()
            assert (await client.read_holding_registers(500, count=1, device_id=1)).registers == [17]
        finally:
            client.close()


def test_generators_are_plausible_per_quantity() -> None:
    rng = random.Random(3)

    def gen(**kw: object) -> list[float]:
        p = ModbusPoint.model_validate({"id": "x", "address": 0, "type": "float32", **kw})
        g = make_generator(p, rng)
        return [float(g(t)) for t in range(0, 3600, 7)]

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
        ({"quantity": "other", "sim": {"value": 3}}, 3, 3),
        ({"quantity": "other", "sim": {"min": -5, "max": 5, "period": "30s"}}, -5, 5),
    ]
    for kw, lo, hi in checks:
        values = gen(**kw)
        assert all(lo - 1e-9 <= v <= hi + 1e-9 for v in values), (kw, min(values), max(values))
    energy = gen(quantity="active_energy_import", unit="Wh", kind="counter")
    assert all(b > a for a, b in itertools.pairwise(energy))
    ramp = gen(quantity="counter", kind="counter", sim={"min": 100, "max": 200, "period": "100s"})
    assert ramp[0] == 100 and math.isclose(ramp[1], 107)


def test_parse_units() -> None:
    assert parse_units("1,2") == [1, 2]
    assert parse_units("1-4, 10") == [1, 2, 3, 4, 10]
    assert parse_units("1-64") == list(range(1, 65))
    for bad in ("", "5-1", "300", "x"):
        with pytest.raises(ValueError):
            parse_units(bad)


def test_main_reports_bad_arguments(profile: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(profile, []) == 2
    assert "--port" in capsys.readouterr().err
    assert main("no-such-profile", ["--port", "0"]) == 2
    assert "no shipped modbus profile" in capsys.readouterr().err
    assert main(profile, ["--port", "0", "--var", "nope=1"]) == 2
    assert "unknown profile variable" in capsys.readouterr().err


async def test_cli_serves_until_sigterm(profile: str) -> None:
    code = "import sys; from drivers.modbus.simulator import main; sys.exit(main(sys.argv[1], sys.argv[2:]))"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, profile, "--port", "0", "--units", "3", "--var", "phases=1",
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
        assert time.monotonic() - t0 < 1.0
        with pytest.raises(ExceptionReply):
            await read_regs(link, 3, 100, 1)
        await link.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
