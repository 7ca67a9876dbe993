"""The assumed Legrand breaker-interface profile: state, trip cause and signed power through driver and normaliser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.modbus.config import ModbusDevice
from drivers.modbus.twin import ModbusTwin
from gateway.config import parse_device
from gateway.profiles import load_profile, shipped_profiles
from tests.modbus.util import poll_records

PROFILE = "legrand-breaker-interface"


def interface(port: int, **profile_vars: Any) -> ModbusDevice:
    raw: dict[str, Any] = {
        "id": "cb1",
        "driver": "modbus",
        "profile": PROFILE,
        "tcp": {"host": "127.0.0.1", "port": port},
    }
    if profile_vars:
        raw["profile_vars"] = profile_vars
    dev = parse_device(raw)
    assert isinstance(dev, ModbusDevice)
    return dev


async def poll(dev: ModbusDevice) -> dict[str, Any]:
    """One poll through the driver and the normaliser: point id -> engineering value."""
    out: dict[str, Any] = {}
    for pid, r in (await poll_records(dev)).items():
        assert r["quality"] == "good", r
        out[pid] = r["value"]
    return out


def test_it_says_it_is_assumed_and_how_to_verify() -> None:
    path = shipped_profiles("modbus")[PROFILE]
    assert load_profile(path).status == "assumed"
    notes = yaml.safe_load(Path(path).read_text(encoding="utf-8"))["notes"]
    assert "edgegw read" in notes and "--discover" in notes and "edgegw scan modbus" in notes


@pytest.mark.asyncio
async def test_state_and_trip_cause_follow_the_device() -> None:
    async with ModbusTwin.create(PROFILE, update_interval=0) as twin:
        dev = interface(twin.port)
        got = await poll(dev)
        assert (got["closed"], got["tripped"], got["trip_cause"]) == (1, 0, 0)
        assert got["rated_current"] == 250
        assert {"current_l1", "current_l2", "current_l3", "current_n"} <= set(got)
        twin.set_value("status", 0b110)  # open, tripped, alarm
        twin.set_value("trip_cause", 4)  # earth fault
        got = await poll(dev)
        assert (got["closed"], got["tripped"], got["alarm"], got["trip_cause"]) == (0, 1, 1, 4)


@pytest.mark.asyncio
async def test_status_only_interface_reads_state_alone() -> None:
    async with ModbusTwin.create(PROFILE, vars={"currents": 0, "counters": 0}, update_interval=0) as twin:
        dev = interface(twin.port, currents=0, counters=0)
        got = await poll(dev)
        assert set(got) == {"product_code", "firmware", "status", "closed", "tripped", "alarm", "trip_cause",
                            "rated_current"}  # fmt: skip


@pytest.mark.asyncio
async def test_metering_gives_signed_power() -> None:
    async with ModbusTwin.create(PROFILE, vars={"metering": 1}, update_interval=0) as twin:
        dev = interface(twin.port, metering=1)
        twin.set_value("active_power_magnitude", 31000.0)
        twin.set_value("active_power_sign", 1)
        got = await poll(dev)
        assert got["active_power"] == -31000.0
        assert got["reactive_power"] > 0
        assert "active_power_magnitude" not in got and "active_power_sign" not in got
        assert got["voltage_l1l2"] == pytest.approx(twin.value("voltage_l1l2"), abs=0.001)
