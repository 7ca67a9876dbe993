"""The driver contract, checked the same way against every registered driver and its twin.

Each driver is built the way the daemon builds it (registry, parse_device, build_driver, the kind's
shared runtime) and must: validate its config, read its twin into aligned RawReadings, turn an
unreachable device into DeviceError within bounds, stop cleanly (twice), discover or say it cannot,
and ship profiles that load.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, get_args

import pytest
import structlog

from gateway.app import build_driver
from gateway.buses import Bus
from gateway.config import parse_device
from gateway.driver import DeviceError, Driver, DriverRuntime, NoValue, PointError, RawReadings
from gateway.models import DeviceConfig, PointConfig
from gateway.normalize import Normalizer
from gateway.profiles import shipped_profiles
from gateway.registry import DRIVERS, load_object
from gateway.state import StateStore

os.environ.setdefault("EDGEGW_CONTRACT_COMMUNITY", "public")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Kind:
    """How to stand a twin up for one driver, and a device config that reaches it."""

    name: str
    serve: Callable[[], contextlib.AbstractAsyncContextManager[dict[str, Any]]]
    dead: Callable[[], dict[str, Any]]
    section: Callable[[], dict[str, Any] | None] = lambda: None


@contextlib.asynccontextmanager
async def modbus_twin() -> AsyncIterator[dict[str, Any]]:
    from drivers.modbus.simulator import ModbusTwin

    async with ModbusTwin.from_profile("schneider-bcpme", units=[1], port=0) as twin:
        yield {
            "driver": "modbus",
            "profile": "schneider-bcpme",
            "tcp": {"host": "127.0.0.1", "port": twin.port},
            "unit": 1,
        }


@contextlib.asynccontextmanager
async def dlms_twin() -> AsyncIterator[dict[str, Any]]:
    from drivers.dlms.simulator import DlmsTwin

    async with DlmsTwin("sensemi-sed102", transport="wrapper", port=0) as twin:
        yield {
            "driver": "dlms",
            "profile": "sensemi-sed102",
            "tcp": {"host": "127.0.0.1", "port": twin.port},
            "transport": "wrapper",
            "backfill": "2h",
        }


@contextlib.asynccontextmanager
async def bacnet_twin() -> AsyncIterator[dict[str, Any]]:
    from drivers.bacnet.simulator import BacnetTwin

    async with BacnetTwin(port=free_port(socket.SOCK_DGRAM), panels=1, profile_vars={"channels": 4}) as twin:
        yield {
            "driver": "bacnet",
            "profile": "schneider-bcpme-bacnet",
            "profile_vars": {"channels": 4},
            "address": twin.address,
            "network": twin.network,
            "mac": 1,
            "device_instance": 50001,
        }


@contextlib.asynccontextmanager
async def snmp_twin() -> AsyncIterator[dict[str, Any]]:
    from drivers.snmp.simulator import SnmpTwin

    async with SnmpTwin("schneider-bcpme-snmp", port=0, profile_vars={"panels": 1, "channels": 4}) as twin:
        yield {
            "driver": "snmp",
            "profile": "schneider-bcpme-snmp",
            "profile_vars": {"panels": 1, "channels": 4},
            "host": "127.0.0.1",
            "port": twin.port,
            "community_env": "EDGEGW_CONTRACT_COMMUNITY",
        }


KINDS = {
    "modbus": Kind(
        "modbus",
        modbus_twin,
        lambda: {
            "driver": "modbus",
            "tcp": {"host": "127.0.0.1", "port": free_port()},
            "points": [{"id": "v", "address": 0, "type": "float32", "quantity": "voltage", "unit": "V"}],
        },
    ),
    "dlms": Kind(
        "dlms",
        dlms_twin,
        lambda: {
            "driver": "dlms",
            "tcp": {"host": "127.0.0.1", "port": free_port()},
            "transport": "wrapper",
            "points": [{"id": "v", "obis": "1.0.32.7.0.255", "quantity": "voltage", "unit": "V"}],
        },
    ),
    "bacnet": Kind(
        "bacnet",
        bacnet_twin,
        lambda: {
            "driver": "bacnet",
            "address": f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
            "device_instance": 7,
            "points": [{"id": "v", "object": "analog-value,1", "quantity": "voltage", "unit": "V"}],
        },
        section=lambda: {"local_address": f"127.0.0.1/24:{free_port(socket.SOCK_DGRAM)}"},
    ),
    "snmp": Kind(
        "snmp",
        snmp_twin,
        lambda: {
            "driver": "snmp",
            "host": "127.0.0.1",
            "port": free_port(socket.SOCK_DGRAM),
            "community_env": "EDGEGW_CONTRACT_COMMUNITY",
            "points": [{"id": "up", "oid": "1.3.6.1.2.1.1.3.0", "quantity": "uptime", "unit": "s"}],
        },
    ),
}


def test_every_registered_driver_is_covered() -> None:
    assert set(KINDS) == set(DRIVERS)


@contextlib.asynccontextmanager
async def built(kind: str, raw: dict[str, Any]) -> AsyncIterator[Driver[Any]]:
    """A driver as the daemon builds it, started; stopped (twice) on the way out."""
    spec = DRIVERS[kind]
    device = parse_device({"id": f"contract-{kind}", "timeout": 0.5, "interval": 1, **raw})
    log = structlog.get_logger("contract").bind(device=device.id)
    runtime: DriverRuntime | None = None
    if spec.runtime is not None:
        section_raw = KINDS[kind].section()
        model = spec.section_model
        section = model.model_validate(section_raw) if model is not None and section_raw is not None else None
        runtime = load_object(spec.runtime)(section, log)
        await runtime.start()
    bus = Bus(device.implicit_bus() or device.id)
    driver = build_driver(device, bus, StateStore(None), runtime, log)
    try:
        await asyncio.wait_for(driver.start(), 10)
        yield driver
    finally:
        await asyncio.wait_for(driver.stop(), 10)
        await asyncio.wait_for(driver.stop(), 10)  # idempotent
        await bus.close()
        if runtime is not None:
            await runtime.stop()


@pytest.mark.parametrize("kind", sorted(DRIVERS))
def test_registry_entry_is_complete(kind: str) -> None:
    spec = DRIVERS[kind]
    model = spec.device_model
    assert issubclass(model, DeviceConfig)
    assert get_args(model.model_fields["driver"].annotation) == (kind,)
    assert issubclass(model.point_model, PointConfig)
    assert issubclass(load_object(spec.driver), Driver)
    if spec.runtime is not None:
        assert issubclass(load_object(spec.runtime), DriverRuntime)
    for ref in (spec.simulator, spec.scanner):
        if ref is not None:
            assert callable(load_object(ref))
    assert shipped_profiles(kind), f"{kind} ships no profile"


@pytest.mark.parametrize("kind", sorted(DRIVERS))
def test_shipped_profiles_load_for_a_device(kind: str) -> None:
    dead = KINDS[kind].dead()
    dead.pop("points")
    for name in shipped_profiles(kind):
        device = parse_device({"id": "p", **dead, "profile": name})
        # A profile may leave the points to discovery (SNMP table templates walked at start).
        assert device.resolved_points or getattr(device, "tables", None), name
        for point in device.resolved_points:
            json.dumps(point.to_def().meta())


@pytest.mark.parametrize("kind", sorted(DRIVERS))
async def test_reads_its_twin_into_aligned_readings(kind: str) -> None:
    async with KINDS[kind].serve() as raw, built(kind, raw) as driver:
        result = await asyncio.wait_for(driver.read(), 20)
        points = driver.ctx.points
        assert isinstance(result, RawReadings)
        assert len(result.values) == len(points)
        for extra in (result.timestamps, result.exponents, result.qualities):
            assert extra is None or len(extra) == len(points)
        for value in result.values:
            assert value is None or isinstance(value, int | float | bool | str | PointError | NoValue)
        for index, _raw, ts in result.series:
            assert 0 <= index < len(points) and isinstance(ts, int)
        read = [v for v in result.values if not isinstance(v, PointError | NoValue)]
        assert len(read) >= 0.8 * len(points), f"{kind}: only {len(read)} of {len(points)} points read"
        normalizer = Normalizer(driver.ctx.device.id, points)
        message = json.loads(normalizer.encode(normalizer.normalize(result, int(time.time() * 1000)), 1))
        assert message["readings"]


@pytest.mark.parametrize("kind", sorted(DRIVERS))
async def test_unreachable_device_is_a_device_error_in_bounded_time(kind: str) -> None:
    async with built(kind, KINDS[kind].dead()) as driver:
        started = time.monotonic()
        with pytest.raises(DeviceError):
            await asyncio.wait_for(driver.read(), 15)
        assert time.monotonic() - started < 10 * driver.ctx.device.timeout + 3


@pytest.mark.parametrize("kind", sorted(DRIVERS))
async def test_discover_gives_valid_points_or_says_it_cannot(kind: str) -> None:
    async with KINDS[kind].serve() as raw, built(kind, raw) as driver:
        try:
            found = await asyncio.wait_for(driver.discover(), 30)
        except NotImplementedError:
            return
        assert found
        model = type(driver.ctx.device).point_model
        ids = set()
        for item in found:
            point = model.model_validate(item)
            assert point.id not in ids
            ids.add(point.id)
