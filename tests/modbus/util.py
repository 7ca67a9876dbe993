"""Helpers for the Modbus tests: devices, points and drivers built by hand."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from drivers.modbus.client import ModbusLink
from drivers.modbus.config import ModbusDevice, ModbusPoint
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.twin import ModbusTwin
from gateway.buses import Bus, BusConfig
from gateway.driver import DriverContext, PointError, RawValue
from gateway.state import StateStore

# A small meter: floats, a scaled int, a low-word-first counter, a status word with bits, a
# string, a far-away point and a coil.
METER: list[dict[str, Any]] = [
    {"id": "v1", "address": 0, "type": "float32", "quantity": "voltage", "unit": "V", "phase": "L1-N"},
    {"id": "v12", "address": 2, "type": "float32", "quantity": "voltage", "unit": "V", "phase": "L1-L2"},
    {"id": "i1", "address": 4, "type": "float32", "quantity": "current", "unit": "A", "phase": "L1"},
    {"id": "f", "address": 10, "type": "int16", "scale": 0.01, "quantity": "frequency", "unit": "Hz"},
    {
        "id": "e",
        "address": 12,
        "type": "uint32",
        "word_order": "little",
        "scale": 1000,
        "quantity": "active_energy_import",
        "unit": "Wh",
        "kind": "counter",
    },
    {"id": "status", "address": 20, "type": "uint16", "quantity": "status", "kind": "state", "sim": {"value": 5}},
    {"id": "status.b0", "address": 20, "type": "uint16", "bit": 0, "quantity": "alarm", "kind": "state"},
    {"id": "status.b1", "address": 20, "type": "uint16", "bit": 1, "quantity": "alarm", "kind": "state"},
    {"id": "name", "address": 30, "type": "string", "length": 4, "quantity": "model", "sim": {"value": "BM-SM"}},
    {"id": "far", "address": 200, "type": "float32", "quantity": "temperature", "unit": "degC"},
    {"id": "breaker", "address": 3, "function": "coil", "type": "bool", "quantity": "breaker_state", "kind": "state"},
]


def points(raw: Sequence[dict[str, Any]] = METER) -> list[ModbusPoint]:
    return [ModbusPoint.model_validate(p) for p in raw]


def device(port: int = 502, **kw: Any) -> ModbusDevice:
    base: dict[str, Any] = {"id": "meter", "driver": "modbus", "timeout": 0.5}
    if "bus" not in kw:
        base["tcp"] = {"host": "127.0.0.1", "port": port}
    return ModbusDevice.model_validate({**base, **kw})


def bus_for(dev: ModbusDevice, config: BusConfig | None = None) -> Bus:
    return Bus(dev.bus or dev.implicit_bus() or f"device:{dev.id}", config)


async def driver(dev: ModbusDevice, pts: Sequence[ModbusPoint], bus: Bus | None = None) -> ModbusDriver:
    ctx = DriverContext(
        device=dev, points=pts, log=structlog.get_logger(), bus=bus or bus_for(dev), state=StateStore(None)
    )
    d = ModbusDriver(ctx)
    await d.start()
    return d


def link_of(d: ModbusDriver) -> ModbusLink:
    assert d._link is not None
    return d._link


def expected_raw(twin: ModbusTwin, unit: int, p: ModbusPoint) -> RawValue:
    """What the driver should decode for a point: the twin's engineering value back to raw."""
    value = twin.value(p.id, unit)
    if p.bit is not None or p.function in ("coil", "discrete") or p.type in ("bool", "string"):
        return value
    assert isinstance(value, int | float)
    raw = (value - p.offset) / p.scale
    return round(raw) if p.type.startswith(("int", "uint")) else raw


def assert_values(twin: ModbusTwin, unit: int, pts: Sequence[ModbusPoint], values: Sequence[RawValue]) -> None:
    for p, got in zip(pts, values, strict=True):
        want = expected_raw(twin, unit, p)
        assert not isinstance(got, PointError), f"{p.id}: {got}"
        if isinstance(want, float) and p.type == "float32":
            assert isinstance(got, float) and math.isclose(got, want, rel_tol=1e-6), (p.id, got, want)
        else:
            assert got == want, (p.id, got, want)


async def wait_until(cond: Callable[[], bool], timeout: float = 2.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def assert_reads_the_twin(dev: ModbusDevice, pts: Sequence[Any], values: Sequence[RawValue], twin: ModbusTwin) -> None:
    """Every point the driver read equals what the twin serves, within one step of its scaling."""
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


async def poll_records(dev: ModbusDevice) -> dict[str, dict[str, Any]]:
    """One poll of a parsed device through its driver and normaliser, as the daemon does it: id -> record."""
    from gateway.normalize import Normalizer

    bus = bus_for(dev)
    d = await driver(dev, dev.resolved_points, bus)  # type: ignore[arg-type]
    try:
        raw = await d.read()
    finally:
        await d.stop()
        await bus.close()
    norm = Normalizer(dev.id, dev.resolved_points, dev.calculated_points)
    return {str(r["point"]): r for r in norm.normalize(raw, 1000).as_dicts()}
