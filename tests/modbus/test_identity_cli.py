"""Device identification put to use: discovery picks the shipped profile by FC 43, and the CLI
(`edgegw scan modbus`, `edgegw read --discover`) as processes against twins."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog

from drivers.modbus.driver import ModbusDriver
from drivers.modbus.twin import ModbusTwin
from gateway.app import build_driver
from gateway.buses import Bus
from gateway.config import parse_device
from gateway.discovery import discover_points, rebuild
from gateway.driver import DeviceError
from gateway.profiles import shipped_profiles
from gateway.state import StateStore
from tests.harness import Collector, Daemon, Mosquitto
from tests.modbus.util import assert_reads_the_twin, points

pytestmark = pytest.mark.asyncio


def bare_device(twin: ModbusTwin, unit: int, **extra: Any) -> Any:
    """A device config with no points and no profile, reaching `unit` of the twin."""
    raw = {k: v for k, v in twin.device_config(unit).items() if k not in ("profile", "profile_vars", "points")}
    return parse_device({**raw, "id": "dev", "timeout": 1.0, **extra})


@pytest.mark.parametrize("name", sorted(shipped_profiles("modbus")))
async def test_discovery_picks_the_profile_and_reads_like_it(name: str) -> None:
    # The device says numbering 0 where BCPME's profile says 1: discovery shifts the addresses, and the
    # profile's unreadable ranges (shifted too) keep the plan away from what the device refuses.
    # A device's profile_vars apply to the profile discovery picks (64 tap boxes would take 20 s here).
    small = {"ibgw100-ibsm": {"meters": 3}}.get(name, {})
    async with ModbusTwin.create(name, vars=small, update_interval=0) as twin:
        unit = twin.device_config()["unit"]
        device = bare_device(twin, unit, profile_vars=small)
        assert not device.resolved_points
        bus = Bus(device.implicit_bus())
        log = structlog.get_logger()
        driver = build_driver(device, bus, StateStore(None), None, log)
        await driver.start()
        try:
            _found, pts = await discover_points(driver)
            driver = await rebuild(driver, pts, lambda p: build_driver(device, bus, StateStore(None), None, log, p))
            assert isinstance(driver, ModbusDriver)
            reference = parse_device({**twin.device_config(unit), "id": "ref"})
            assert [p.id for p in pts] == [p.id for p in reference.resolved_points]
            raw = await driver.read()
            assert_reads_the_twin(device, pts, raw.values, twin)
            # As many requests as the profile's own plan: its planning settings came along.
            ref_driver = build_driver(reference, bus, StateStore(None), None, log)
            assert isinstance(ref_driver, ModbusDriver)
            assert len(driver.plan.reads) == len(ref_driver.plan.reads)
        finally:
            await driver.stop()
            await bus.close()


async def test_discovery_errors_are_clear() -> None:
    async with ModbusTwin(points(), units=[1], update_interval=0) as twin:
        device = bare_device(twin, 1)
        bus = Bus(device.implicit_bus())
        driver = build_driver(device, bus, StateStore(None), None, structlog.get_logger())
        try:
            with pytest.raises(
                DeviceError, match=r"not supported: exception 1 .*give the device a `profile` or `points`"
            ):
                await driver.discover()
            twin.set_identity({"vendor_name": "Nobody", "product_code": "N-1", "revision": "9"})
            with pytest.raises(
                DeviceError, match="no shipped Modbus profile matches unit 1 \\(vendor 'Nobody', product"
            ):
                await driver.discover()
        finally:
            await bus.close()


# --- the command line, as processes -----------------------------------------------------------------


def edgegw(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def site(tmp: Path, device: dict[str, Any]) -> Path:
    path = tmp / "site.yaml"
    text = "site: lab\nmqtt: {url: 'mqtt://127.0.0.1:1883'}\nstate_dir: memory\ndevices:\n  - " + json.dumps(device)
    path.write_text(text + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("framing", ["tcp", "rtu"])
async def test_scan_shows_identity_and_suggests_the_profile(framing: str) -> None:
    async with (
        ModbusTwin.create("legrand-emdx3", units=[3], framing=framing, update_interval=0) as emdx3,
        ModbusTwin(points(), units=[5], framing=framing, update_interval=0) as plain,  # type: ignore[arg-type]
    ):
        emdx3.set_identity({"vendor_name": "Legrand", "product_code": "4 120 45", "revision": "1.07"})
        flags = ["--rtu-over-tcp"] if framing == "rtu" else []
        res = await asyncio.to_thread(
            edgegw, "scan", "modbus", "--host", "127.0.0.1", "--port", str(emdx3.port), "--units", "2-3", *flags
        )
        assert res.returncode == 0, res.stderr
        lines = res.stdout.splitlines()
        at = lines.index(next(line for line in lines if line.startswith("unit   3: answers")))
        assert lines[at + 1].strip() == "identity: vendor Legrand, product code 4 120 45, revision 1.07 (basic)"
        assert lines[at + 2].strip().startswith("profile:  legrand-emdx3 (identity assumed")
        assert "unit   2" not in res.stdout
        res = await asyncio.to_thread(
            edgegw, "scan", "modbus", "--host", "127.0.0.1", "--port", str(plain.port), "--units", "5", *flags
        )
        assert res.returncode == 0, res.stderr
        assert "identity: not supported (exception 1, illegal function)" in res.stdout
        res = await asyncio.to_thread(
            edgegw,
            "scan",
            "modbus",
            "--host",
            "127.0.0.1",
            "--port",
            str(plain.port),
            "--units",
            "5",
            "--no-identify",
            *flags,
        )
        assert res.returncode == 0 and "identity" not in res.stdout, res.stdout


async def test_read_discover_picks_the_profile(tmp_path: Path) -> None:
    async with (
        ModbusTwin.create("legrand-emdx3", units=[3], update_interval=0) as emdx3,
        ModbusTwin(points(), units=[1], update_interval=0) as plain,
    ):
        emdx3.set_value("frequency", 49.9, 3)
        dev: dict[str, Any] = {
            "id": "m",
            "driver": "modbus",
            "tcp": {"host": "127.0.0.1", "port": emdx3.port},
            "unit": 3,
        }
        res = await asyncio.to_thread(edgegw, "read", "--config", str(site(tmp_path, dev)), "m", "--discover", "--json")
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        values = {r["point"]: r for r in out["readings"]}
        assert values["frequency"]["value"] == 49.9 and values["frequency"]["quality"] == "good"
        # Calculated points stay with the configuration; inputs marked `publish: false` are read, not shown.
        assert [p["id"] for p in out["discovered"] if p.get("publish", True)] == list(values)
        assert "device identified" in res.stderr and "legrand-emdx3" in res.stderr  # an assumed identity: a warning

        dev["tcp"]["port"] = plain.port
        dev["unit"] = 1
        res = await asyncio.to_thread(edgegw, "read", "--config", str(site(tmp_path, dev)), "m", "--discover")
        assert res.returncode == 1
        assert res.stderr.strip().splitlines()[-1] == (
            "edgegw read: cannot discover unit 1: device identification (FC 43 / MEI 14) is not supported: "
            "exception 1 (illegal function); give the device a `profile` or `points`"
        )
        plain.set_identity({"vendor_name": "Legrand", "product_code": "999999"})
        res = await asyncio.to_thread(edgegw, "read", "--config", str(site(tmp_path, dev)), "m")
        assert res.returncode == 1 and "no shipped Modbus profile matches unit 1 (vendor 'Legrand'" in res.stderr
        assert "Traceback" not in res.stderr


async def test_discovery_brings_the_profiles_planning_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 1-based addresses around a register the device refuses: the device config says nothing of it.
    path = tmp_path / "gappy.yaml"
    path.write_text(
        "profile: gappy\ndriver: modbus\nidentity: {vendor_name: Gap Co, product_code: G-1}\n"
        "device: {numbering: 1, unreadable: [[6, 6]], max_gap: 16}\n"
        "points:\n"
        "  - {id: a, address: 1, quantity: voltage, unit: V}\n"
        "  - {id: b, address: 11, quantity: voltage, unit: V}\n",
        encoding="utf-8",
    )
    import gateway.profiles

    monkeypatch.setattr(gateway.profiles, "shipped_profiles", lambda driver=None: {"gappy": path})
    async with ModbusTwin.create(path, update_interval=0) as twin:
        device = bare_device(twin, 1)
        assert device.numbering == 0 and not device.unreadable
        bus = Bus(device.implicit_bus())
        log = structlog.get_logger()
        driver = build_driver(device, bus, StateStore(None), None, log)
        try:
            found, pts = await discover_points(driver)
            assert [(p["id"], p["address"]) for p in found] == [("a", 0), ("b", 10)]
            driver = await rebuild(driver, pts, lambda p: build_driver(device, bus, StateStore(None), None, log, p))
            assert isinstance(driver, ModbusDriver)
            assert [(r.start, r.count) for r in driver.plan.reads] == [(0, 1), (10, 1)]  # not one read over 5
            assert_reads_the_twin(device, pts, (await driver.read()).values, twin)
            # A driver built for the same device with points of its own is not affected.
            other = build_driver(bare_device(twin, 1), bus, StateStore(None), None, log, pts)
            assert isinstance(other, ModbusDriver) and len(other.plan.reads) == 1
        finally:
            await driver.stop()
            await bus.close()


async def test_the_daemon_discovers_a_bare_device(tmp_path: Path, broker: Mosquitto, collector: Collector) -> None:
    async with ModbusTwin.create("legrand-emdx3", units=[3], update_interval=0) as twin:
        twin.set_value("frequency", 49.9, 3)
        dev = {"id": "bare", "driver": "modbus", "tcp": {"host": "127.0.0.1", "port": twin.port}, "unit": 3}
        dev.update(interval="500ms", timeout="500ms")
        cfg = tmp_path / "site.yaml"
        cfg.write_text(
            f"site: lab\nmqtt: {{url: '{broker.url}', client_id: gw-fc43}}\nstate_dir: {tmp_path / 'state'}\n"
            f"devices:\n  - {json.dumps(dev)}\n",
            encoding="utf-8",
        )
        d = Daemon(cfg, tmp_path)
        await d.start()
        try:
            await collector.wait_for(
                lambda: (r := collector.latest("bare", "frequency")) and r["value"] == 49.9, what="discovered points"
            )
            assert collector.latest("bare", "voltage_l1n") is not None
        finally:
            assert await d.stop() == 0
