"""Every shipped Modbus profile round-trips: the twin serves it, the driver reads back what it serves."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import structlog

from drivers.modbus.config import ModbusDevice, ModbusPoint
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.twin import ModbusTwin
from gateway.buses import Bus
from gateway.config import load_config, parse_device
from gateway.driver import DriverContext, PointError
from gateway.profiles import shipped_profiles
from gateway.state import StateStore

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
    for p, got in zip(pts, values, strict=True):
        assert isinstance(p, ModbusPoint)
        assert not isinstance(got, PointError), f"{p.id}: {got}"
        unit = p.unit_id if p.unit_id is not None else dev.unit
        want = twin.value(p.id, unit)
        if isinstance(got, bool) or isinstance(want, str | bool):
            assert got == want, p.id
            continue
        assert isinstance(got, int | float) and isinstance(want, int | float)
        exp = twin.value(p.exponent_point, unit) if p.exponent_point else 0
        assert isinstance(exp, int)
        step = abs(p.scale) * 10.0**exp
        eng = got * step + p.offset
        assert math.isclose(eng, want, rel_tol=1e-6, abs_tol=step / 2 + 1e-9), (p.id, got, eng, want)


def test_sample_config_is_valid() -> None:
    cfg = load_config(SAMPLE)
    kinds = {d.id: d for d in cfg.devices}
    assert {"bcpme-1", "busway-a", "emdx3-3", "emdx3-4", "tank-room-meter"} <= set(kinds)
    rtu = kinds["tank-room-meter"]
    assert isinstance(rtu, ModbusDevice) and rtu.transport == "rtu_over_tcp" and rtu.bus == "converter-2"
    assert all(d.resolved_points for d in cfg.devices)
