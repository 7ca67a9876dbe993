"""Every shipped Modbus profile round-trips: the twin serves it, the driver reads back what it serves."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from drivers.modbus.config import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.twin import ModbusTwin
from gateway.buses import Bus
from gateway.config import load_config, parse_device
from gateway.driver import DriverContext
from gateway.profiles import shipped_profiles
from gateway.state import StateStore
from tests.modbus.util import assert_reads_the_twin

SAMPLE = Path(__file__).resolve().parents[2] / "drivers" / "modbus" / "sample.yaml"


@pytest.mark.asyncio
@pytest.mark.parametrize("name", sorted(shipped_profiles("modbus")))
async def test_shipped_profile_round_trip(name: str) -> None:
    async with ModbusTwin.create(name, update_interval=0) as twin:
        raw = {"id": "x", "driver": "modbus", "profile": name, "tcp": {"host": "127.0.0.1", "port": twin.port}}
        dev = parse_device(raw)
        assert isinstance(dev, ModbusDevice)
        pts = dev.resolved_points
        bus = Bus(dev.implicit_bus() or "x")
        ctx = DriverContext(device=dev, points=pts, log=structlog.get_logger(), bus=bus, state=StateStore(None))
        driver = ModbusDriver(ctx)
        await driver.start()
        assert driver.plan.rejected == ()
        values = (await driver.read()).values
        await bus.close()
    assert_reads_the_twin(dev, pts, values, twin)


def test_sample_config_is_valid() -> None:
    cfg = load_config(SAMPLE)
    kinds = {d.id: d for d in cfg.devices}
    assert {"bcpme-1", "busway-a", "emdx3-3", "emdx3-4", "tank-room-meter"} <= set(kinds)
    rtu = kinds["tank-room-meter"]
    assert isinstance(rtu, ModbusDevice) and rtu.transport == "rtu_over_tcp" and rtu.bus == "converter-2"
    assert all(d.resolved_points for d in cfg.devices)
