"""End to end: Modbus twins + a real mosquitto + `edgegw run` as a child process + a subscriber."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.modbus.config import ModbusPoint
from drivers.modbus.twin import ModbusTwin
from tests.harness import Collector, Mosquitto, running

pytestmark = pytest.mark.slow

POINTS = [
    {"id": "mains.voltage_l1", "address": 0, "type": "float32", "quantity": "voltage", "unit": "V", "phase": "L1-N"},
    {"id": "mains.frequency", "address": 2, "type": "uint16", "scale": 0.01, "quantity": "frequency", "unit": "Hz"},
    {
        "id": "ch1.current",
        "address": 3,
        "type": "int16",
        "exponent_point": "ch1.current_scale",
        "quantity": "current",
        "unit": "A",
        "circuit": 1,
        "invalid": [-32768],
    },
    {
        "id": "ch1.current_scale",
        "address": 4,
        "type": "int16",
        "quantity": "scale",
        "publish": False,
        "sim": {"value": -1},
    },
    {
        "id": "ch1.energy",
        "address": 10,
        "type": "uint32",
        "scale": 1000,
        "quantity": "active_energy_import",
        "unit": "Wh",
        "kind": "counter",
        "circuit": 1,
    },
    {"id": "breaker.closed", "address": 5, "type": "bool", "bit": 0, "quantity": "breaker_state", "kind": "state"},
]


def twin_points() -> list[ModbusPoint]:
    return [ModbusPoint.model_validate(p) for p in POINTS]


def device_yaml(dev_id: str, port: int, unit: int, interval: str = "200ms", extra: str = "") -> str:
    points = "\n".join(f"      - {json.dumps(p)}" for p in POINTS)
    return (
        f"  - id: {dev_id}\n    driver: modbus\n    tcp: {{host: 127.0.0.1, port: {port}}}\n    unit: {unit}\n"
        f"    interval: {interval}\n    timeout: 300ms\n    offline_after: 2\n    max_backoff: 1s\n{extra}"
        f"    points:\n{points}\n"
    )


def config(tmp: Path, broker: Mosquitto, devices: str, extra: str = "") -> Path:
    path = tmp / "site.yaml"
    path.write_text(
        f"site: lab\nmqtt: {{url: '{broker.url}', client_id: gw-test}}\nstate_dir: {tmp / 'state'}\n{extra}"
        f"devices:\n{devices}",
        encoding="utf-8",
    )
    return path


@pytest.fixture
async def twin() -> AsyncIterator[ModbusTwin]:
    async with ModbusTwin(twin_points(), units=[1, 2], port=0, update_interval=0.1) as t:
        t.set_value("mains.voltage_l1", 231.5, 1)
        t.set_value("mains.frequency", 50.01, 1)
        t.set_value("ch1.current", 12.3, 1)
        t.set_value("ch1.energy", 45000.0, 1)
        t.set_value("breaker.closed", True, 1)
        yield t


# The daemon on a config, stopped at the end (tests/harness.py).
daemon = running


def reading(msg: dict[str, object], point: str) -> dict[str, object]:
    return next(r for r in msg["readings"] if r["point"] == point)  # type: ignore[attr-defined]


async def test_readings_reach_consumers_normalised(
    tmp_path: Path, broker: Mosquitto, collector: Collector, twin: ModbusTwin
) -> None:
    cfg = config(tmp_path, broker, device_yaml("pdu-1", twin.port, 1))
    async with daemon(cfg, tmp_path) as d:
        msgs = await collector.wait_for(lambda: collector.data("pdu-1"), what="a data message")
        msg = msgs[0]
        assert msg["device"] == "pdu-1" and isinstance(msg["seq"], int) and isinstance(msg["ts"], int)
        assert reading(msg, "mains.voltage_l1") == {
            "point": "mains.voltage_l1",
            "value": 231.5,
            "unit": "V",
            "quality": "good",
            "ts": msg["ts"],
        }
        assert reading(msg, "mains.frequency")["value"] == 50.01
        assert reading(msg, "ch1.current")["value"] == 12.3  # raw 123 with the scale register's -1
        assert reading(msg, "ch1.energy")["value"] == 45000
        assert reading(msg, "breaker.closed")["value"] is True
        assert all(r["point"] != "ch1.current_scale" for r in msg["readings"])  # publish: false

        meta = await collector.wait_for(lambda: collector.on("/pdu-1/meta"), what="meta")
        body = meta[-1].json()
        assert meta[-1].retain is False or meta[-1].retain is True
        energy = next(p for p in body["points"] if p["id"] == "ch1.energy")
        assert energy == {
            "id": "ch1.energy",
            "quantity": "active_energy_import",
            "unit": "Wh",
            "phase": "none",
            "kind": "counter",
            "circuit": "1",
            "address": {"address": 10, "type": "uint32"},
        }
        await collector.wait_for(
            lambda: any(m.json()["state"] == "online" for m in collector.on("/pdu-1/status")), what="status online"
        )
        assert collector.on("/gateway/status")[0].json()["state"] == "online"

        # The device's "no data" sentinel becomes bad quality, never a number.
        twin.set_raw("holding", 3, [0x8000], target=1)
        await collector.wait_for(
            lambda: (r := collector.latest("pdu-1", "ch1.current")) and r["quality"] == "bad", what="sentinel -> bad"
        )
        bad = collector.latest("pdu-1", "ch1.current")
        assert bad is not None and bad["value"] is None and bad["error"]

        seqs = [m["seq"] for m in collector.data("pdu-1")]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert await d.stop() == 0
    status = [m.json() for m in collector.on("/gateway/status")]
    assert status[-1]["state"] == "offline" and status[-1]["reason"] == "stopped"


async def test_seq_continues_after_restart(
    tmp_path: Path, broker: Mosquitto, collector: Collector, twin: ModbusTwin
) -> None:
    cfg = config(tmp_path, broker, device_yaml("pdu-1", twin.port, 1))
    async with daemon(cfg, tmp_path):
        await collector.wait_for(lambda: len(collector.data("pdu-1")) >= 3, what="three messages")
    first = [m["seq"] for m in collector.data("pdu-1")]
    async with daemon(cfg, tmp_path):
        await collector.wait_for(lambda: len(collector.data("pdu-1")) >= len(first) + 2, what="messages after restart")
    seqs = [m["seq"] for m in collector.data("pdu-1")]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert seqs[len(first)] == first[-1] + 1  # a clean stop leaves no gap


async def test_dead_unit_on_shared_endpoint_does_not_stall_the_other(
    tmp_path: Path, broker: Mosquitto, collector: Collector, twin: ModbusTwin
) -> None:
    twin.faults.set("silent", target=2)
    devices = device_yaml("live", twin.port, 1) + device_yaml("dead", twin.port, 2)
    cfg = config(tmp_path, broker, devices)
    async with daemon(cfg, tmp_path) as d:
        await collector.wait_for(
            lambda: any(m.json()["state"] == "offline" for m in collector.on("/dead/status")), what="dead goes offline"
        )
        before = len(collector.data("live"))
        start = time.monotonic()
        await collector.wait_for(
            lambda: len(collector.data("live")) >= before + 10, timeout=10, what="live keeps polling"
        )
        elapsed = time.monotonic() - start
        # 10 polls at 200 ms take ~2 s; a stalled bus would add the dead unit's 300 ms timeouts and skip ticks.
        assert elapsed < 4.0, elapsed
        live = collector.latest("live", "mains.voltage_l1")
        assert live is not None and live["quality"] == "good"
        dead = collector.latest("dead", "mains.voltage_l1")
        assert dead is not None and dead["quality"] == "bad"

        twin.faults.clear(2)
        await collector.wait_for(
            lambda: collector.on("/dead/status")[-1].json()["state"] == "online", timeout=10, what="dead recovers"
        )
        log = d.output()
        assert log.count('"device offline"') == 1 and log.count('"device recovered"') == 1, log[-3000:]
        # State changes republish the small status, not the whole point list in meta.
        assert len(collector.on("/dead/meta")) == 1


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is needed for a pty pair")
async def test_rtu_two_units_on_one_serial_line(
    tmp_path: Path, broker: Mosquitto, collector: Collector, line: tuple[str, str]
) -> None:
    device_side, gateway_side = line
    async with ModbusTwin(twin_points(), units=[1, 2], serial=device_side, baudrate=19200, update_interval=0.1) as t:
        t.set_value("mains.voltage_l1", 230.0, 1)
        t.set_value("mains.voltage_l1", 240.0, 2)
        bus = f"buses:\n  - {{id: rs485-1, serial: {{port: {gateway_side}, baudrate: 19200}}}}\n"
        devices = ""
        for unit in (1, 2):
            devices += device_yaml(f"rtu-{unit}", 0, unit, interval="500ms").replace(
                "    tcp: {host: 127.0.0.1, port: 0}\n", "    bus: rs485-1\n"
            )
        cfg = config(tmp_path, broker, devices, extra=bus)
        async with daemon(cfg, tmp_path):
            await collector.wait_for(
                lambda: collector.latest("rtu-1", "mains.voltage_l1") and collector.latest("rtu-2", "mains.voltage_l1"),
                what="both RTU units",
            )
            assert collector.latest("rtu-1", "mains.voltage_l1")["value"] == 230.0  # type: ignore[index]
            assert collector.latest("rtu-2", "mains.voltage_l1")["value"] == 240.0  # type: ignore[index]


async def test_read_command_prints_one_poll(tmp_path: Path, broker: Mosquitto, twin: ModbusTwin) -> None:
    cfg = config(tmp_path, broker, device_yaml("pdu-1", twin.port, 1))
    res = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway.cli", "read", "--config", str(cfg), "pdu-1", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    values = {r["point"]: r["value"] for r in out["readings"]}
    assert values["mains.voltage_l1"] == 231.5 and values["ch1.current"] == 12.3
    table = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway.cli", "read", "--config", str(cfg), "pdu-1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "mains.voltage_l1" in table.stdout and "231.5" in table.stdout and "good" in table.stdout


async def test_read_exits_1_when_the_device_gives_nothing(tmp_path: Path, broker: Mosquitto) -> None:
    from tests.harness import free_port

    cfg = config(tmp_path, broker, device_yaml("nobody", free_port(), 1))
    res = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway.cli", "read", "--config", str(cfg), "nobody"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert res.returncode == 1, res.stdout + res.stderr
    assert "bad" in res.stdout
