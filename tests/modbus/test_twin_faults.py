"""Fault injection on one unit of a shared endpoint: that unit's device fails, the other still reads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog

from drivers.modbus.config import ModbusDevice, ModbusPoint
from drivers.modbus.twin import ModbusTwin
from gateway.app import build_driver
from gateway.buses import Bus, BusConfig
from gateway.config import parse_device
from gateway.driver import DeviceError, Driver, PointError
from gateway.state import StateStore
from gateway.twin import Fault
from tests.modbus.util import METER, assert_values, points, wait_until

pytestmark = pytest.mark.asyncio

TIMEOUT = 0.2
FAULTS = [Fault.SILENT, Fault.SLOW, Fault.GARBAGE, Fault.DISCONNECT]
INLINE = [p for p in METER if p.get("function") != "coil"]


def built(twin: ModbusTwin, unit: int, bus: Bus, **extra: Any) -> Driver[Any, Any]:
    """The unit's device as the daemon builds it, from what the twin says reaches it."""
    dev = parse_device({**twin.device_config(unit), "id": f"unit-{unit}", "timeout": TIMEOUT, **extra})
    assert isinstance(dev, ModbusDevice)
    return build_driver(dev, bus, StateStore(None), None, structlog.get_logger())


async def poll(d: Driver[Any, Any]) -> list[Any] | DeviceError:
    try:
        async with asyncio.timeout(5 * TIMEOUT + 2):
            return list((await d.read()).values)
    except DeviceError as exc:
        return exc


def failed(result: list[Any] | DeviceError) -> bool:
    """A DeviceError, or readings that are all bad."""
    return isinstance(result, DeviceError) or all(isinstance(v, PointError) for v in result)


TRANSPORTS: dict[str, dict[str, Any]] = {
    "tcp": {},
    "rtu": {"framing": "rtu"},  # RTU over TCP
    "pty": {"serial": "pty", "baudrate": 19200},  # RTU on a serial line
}


@pytest.fixture(params=sorted(TRANSPORTS))
async def twin(request: pytest.FixtureRequest) -> AsyncIterator[ModbusTwin]:
    options = TRANSPORTS[str(request.param)]
    async with ModbusTwin.create(points=INLINE, units=[1, 2], update_interval=0, **options) as t:
        yield t


def bus_of(twin: ModbusTwin) -> Bus:
    dev = parse_device({**twin.device_config(1), "id": "probe"})
    if twin.serial is not None:
        return Bus(dev.bus or "x", BusConfig.model_validate(twin.bus_config()))
    return Bus(dev.implicit_bus() or "x")


def unit_points(twin: ModbusTwin, unit: int) -> list[ModbusPoint]:
    dev = parse_device({**twin.device_config(unit), "id": "probe"})
    return [p for p in dev.resolved_points if isinstance(p, ModbusPoint)]


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_faulty_unit_fails_alone(twin: ModbusTwin, fault: Fault) -> None:
    bus = bus_of(twin)
    d1, d2 = built(twin, 1, bus), built(twin, 2, bus)
    pts = unit_points(twin, 2)
    try:
        await d1.start()
        await d2.start()
        assert not failed(await poll(d1)) and not failed(await poll(d2))
        twin.faults.set(fault, delay=5 * TIMEOUT if fault is Fault.SLOW else 0.0, target=1)
        # RTU frames carry no transaction id: a late reply passes for the answer to the unit's next
        # request of the same function (as on a real line), so one round only, over before the first
        # late reply; MBAP's transaction id tells late replies from answers, round after round.
        rounds = 1 if fault is Fault.SLOW and twin.framing == "rtu" else 3
        for _ in range(rounds):
            t0 = time.monotonic()
            r1, r2 = await asyncio.gather(poll(d1), poll(d2))
            assert failed(r1), (fault, r1)
            assert time.monotonic() - t0 < 4 * TIMEOUT + 1
            assert not isinstance(r2, DeviceError), (fault, r2)
            assert_values(twin, 2, pts, r2)
            # and in the other order on the bus: the healthy unit first, then the faulty one
            r2 = await poll(d2)
            assert not isinstance(r2, DeviceError), (fault, r2)
            assert_values(twin, 2, pts, r2)
            assert failed(await poll(d1))
        twin.faults.clear(1)
        if twin.framing == "rtu":
            await wait_until(lambda: twin.late_replies == 0, timeout=5, what="the late replies")
            flush = await poll(d2)  # behind the late replies on the line: they are gone after it
            assert not isinstance(flush, DeviceError), flush
            assert_values(twin, 2, pts, flush)
        # (MBAP: the transaction id tells the late replies from the answers)
        for _ in range(2):
            r1 = await poll(d1)
            assert not isinstance(r1, DeviceError), (fault, r1)
            assert_values(twin, 1, pts, r1)
    finally:
        await d1.stop()
        await d2.stop()
        await bus.close()


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_fault_of_the_whole_twin_fails_every_unit(fault: Fault) -> None:
    async with ModbusTwin.create(points=INLINE, units=[1, 2], update_interval=0) as twin:
        bus = bus_of(twin)
        drivers = [built(twin, u, bus) for u in (1, 2)]
        try:
            twin.faults.set(fault, delay=3 * TIMEOUT if fault is Fault.SLOW else 0.0)
            for d in drivers:
                assert failed(await poll(d)), fault
            twin.faults.clear()
            for d in drivers:
                result = await poll(d)
                assert not failed(result), (fault, result)
        finally:
            await bus.close()


async def test_a_device_over_two_units_marks_the_faulty_units_points_bad() -> None:
    raw = [{**p, "id": f"u{u}.{p['id']}", "unit_id": u} for u in (1, 2) for p in INLINE]
    async with ModbusTwin.create(points=raw, update_interval=0) as twin:
        bus = bus_of(twin)
        d = built(twin, 1, bus)
        try:
            twin.faults.set("silent", target=2)
            values = await poll(d)
            assert not isinstance(values, DeviceError)
            pts = unit_points(twin, 1)
            for p, v in zip(pts, values, strict=True):
                assert isinstance(v, PointError) == (p.unit_id == 2), (p.id, v)
            assert_values(twin, 1, pts[: len(INLINE)], values[: len(INLINE)])
        finally:
            await bus.close()


async def test_slow_replies_arrive_late_but_whole() -> None:
    async with ModbusTwin(points(INLINE), units=[1], update_interval=0) as twin:
        bus = bus_of(twin)
        d = built(twin, 1, bus, timeout=1.0)
        try:
            twin.faults.set("slow", delay=0.3, target=1)
            t0 = time.monotonic()
            values = await poll(d)
            assert 0.3 <= time.monotonic() - t0 < 1.0 * 2
            assert_values(twin, 1, points(INLINE), values)  # type: ignore[arg-type]
        finally:
            await bus.close()
