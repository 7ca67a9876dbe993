"""The shipped EMDX3 profile publishes active and reactive power signed, from magnitude and sign word."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.modbus.config import ModbusDevice
from drivers.modbus.twin import ModbusTwin
from gateway.config import parse_device
from tests.harness import Collector, Daemon, Mosquitto
from tests.modbus.util import poll_records


def emdx3(port: int) -> ModbusDevice:
    dev = parse_device({"id": "emdx3", "driver": "modbus", "profile": "legrand-emdx3",
                        "tcp": {"host": "127.0.0.1", "port": port}})  # fmt: skip
    assert isinstance(dev, ModbusDevice)
    return dev


async def poll(twin: ModbusTwin, dev: ModbusDevice) -> dict[str, dict[str, Any]]:
    """One poll through the driver and the normaliser, as the daemon does it: point id -> record."""
    return await poll_records(dev)


def test_the_profile_declares_signed_power() -> None:
    dev = emdx3(502)
    calc = {p.id: p for p in dev.calculated_points}
    assert set(calc) == {"active_power", "reactive_power"}
    assert (calc["active_power"].quantity, calc["active_power"].unit, calc["active_power"].phase) == (
        "active_power", "W", "total")  # fmt: skip
    assert (calc["reactive_power"].quantity, calc["reactive_power"].unit) == ("reactive_power", "var")
    inputs = {p.id: p for p in dev.resolved_points}
    for pid in ("active_power_magnitude", "reactive_power_magnitude", "active_power_sign", "reactive_power_sign"):
        assert inputs[pid].publish is False, f"{pid} is an input of the signed power, not published"


@pytest.mark.asyncio
async def test_driver_and_normaliser_give_signed_power() -> None:
    async with ModbusTwin.create("legrand-emdx3", update_interval=0) as twin:
        dev = emdx3(twin.port)
        twin.set_value("active_power_magnitude", 12345.67)
        twin.set_value("reactive_power_magnitude", 2345.5)
        got = await poll(twin, dev)
        assert (got["active_power"]["value"], got["active_power"]["quality"]) == (12345.67, "good")
        assert got["reactive_power"]["value"] == 2345.5
        assert got["active_power"]["unit"] == "W" and got["reactive_power"]["unit"] == "var"
        hidden = {"active_power_magnitude", "reactive_power_magnitude", "active_power_sign", "reactive_power_sign"}
        assert not hidden & set(got)

        twin.set_value("active_power_sign", 1)
        got = await poll(twin, dev)
        assert got["active_power"]["value"] == -12345.67
        assert got["reactive_power"]["value"] == 2345.5  # its own sign word still says positive
        twin.set_value("reactive_power_sign", 1)
        got = await poll(twin, dev)
        assert (got["active_power"]["value"], got["reactive_power"]["value"]) == (-12345.67, -2345.5)


@pytest.mark.asyncio
async def test_an_unreadable_sign_word_makes_the_power_bad_not_positive() -> None:
    async with ModbusTwin.create("legrand-emdx3", update_interval=0) as twin:
        dev = emdx3(twin.port)
        twin.inject_exception(first=4122, last=4123, code=2)
        got = await poll(twin, dev)
        for pid in ("active_power", "reactive_power"):
            assert (got[pid]["value"], got[pid]["quality"]) == (None, "bad"), got[pid]
            assert str(got[pid].get("error")).startswith("input "), got[pid]  # names the bad input


@pytest.mark.slow
async def test_signed_power_end_to_end(tmp_path: Path, broker: Mosquitto, collector: Collector) -> None:
    """The daemon polls the EMDX3 twin with the shipped profile and publishes a negative power when the sign says so."""
    async with ModbusTwin.create("legrand-emdx3") as twin:
        twin.set_value("active_power_magnitude", 4321.5)
        twin.set_value("active_power_sign", 1)
        device = {"id": "emdx3", **twin.device_config(), "profile": "legrand-emdx3", "interval": "200ms",
                  "timeout": "500ms"}  # fmt: skip
        site = tmp_path / "site.yaml"
        body = {"site": "lab", "state_dir": "memory", "mqtt": {"url": broker.url}, "devices": [device]}
        site.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
        daemon = Daemon(site, tmp_path)
        await daemon.start()
        try:
            got = await collector.wait_for(lambda: collector.latest("emdx3", "active_power"), what="the signed power")
            assert (got["value"], got["quality"], got["unit"]) == (-4321.5, "good", "W")
            twin.set_value("active_power_sign", 0)
            await collector.wait_for(
                lambda: (r := collector.latest("emdx3", "active_power")) is not None and r["value"] == 4321.5,
                what="a positive power",
            )
            assert collector.latest("emdx3", "active_power_sign") is None  # an input, not published
            meta = await collector.wait_for(lambda: collector.on("/emdx3/meta"), what="the meta message")
            ids = {p["id"] for p in meta[-1].json()["points"]}
            assert {"active_power", "reactive_power"} <= ids and "active_power_magnitude" not in ids
        finally:
            assert await daemon.stop() == 0
