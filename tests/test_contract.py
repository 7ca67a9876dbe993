"""The driver contract, checked the same way against every registered driver and its twin.

Everything per kind comes from the registry: the twin class (``DRIVERS[kind].twin_class``), the
twin it makes of its own default profile, the device config that reaches it
(``twin.device_config()``) and the kind's runtime section (``twin.section_config()``). Each driver
is built the way the daemon builds it (parse_device, build_driver, the kind's shared runtime) and
must: validate its config, read its twin into aligned RawReadings and show the value the twin
shows, turn an unreachable device and every fault the twin can inject into a failed poll in
bounded time and then recover on the same instance, stop cleanly (twice), discover or say it
cannot, and ship profiles that load.

A kind registered at run time is checked by calling these functions with its kind name
(tests/test_fifth_driver.py does that for a kind outside drivers/).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, get_args

import pytest
import structlog

from gateway.app import build_driver
from gateway.buses import Bus
from gateway.config import parse_device
from gateway.driver import DeviceError, Driver, DriverRuntime, NoValue, PointError, RawReadings
from gateway.models import DeviceConfig, PointConfig
from gateway.normalize import Normalizer
from gateway.points import Kind
from gateway.profiles import shipped_profiles
from gateway.registry import DRIVERS, load_object
from gateway.state import StateStore
from gateway.twin import SIM_KEYS, DemoDevice, Fault, Twin

TIMEOUT = 0.5  # the contract devices' timeout, seconds
SLOW = 2.0  # the reply delay of the slow fault: well past TIMEOUT
FAULTS = [Fault.SILENT, Fault.SLOW, Fault.GARBAGE, Fault.DISCONNECT]


def failed_in_time(started: float) -> bool:
    """A failed poll must end within a few timeouts (a driver gives up at its first timeout in a poll)."""
    return time.monotonic() - started < 10 * TIMEOUT + 3


@contextlib.asynccontextmanager
async def twin_of(kind: str) -> AsyncIterator[Twin]:
    """The kind's twin of its own default profile, started; stopped on the way out."""
    cls = DRIVERS[kind].twin_class
    async with cls.create(cls.default_profile, vars=cls.default_vars) as twin:
        yield twin


def device_raw(kind: str, twin: Twin) -> dict[str, Any]:
    return {**twin.device_config(), "id": f"contract-{kind}", "timeout": TIMEOUT, "interval": 1}


@contextlib.asynccontextmanager
async def built(kind: str, raw: dict[str, Any], section_raw: dict[str, Any] | None) -> AsyncIterator[Driver[Any, Any]]:
    """A driver as the daemon builds it, started; stopped (twice) on the way out."""
    spec = DRIVERS[kind]
    device = parse_device(raw)
    log = structlog.get_logger("contract").bind(device=device.id)
    runtime: DriverRuntime | None = None
    if spec.runtime is not None:
        model = spec.section_model
        section = model.model_validate(section_raw) if model is not None and section_raw is not None else None
        runtime = load_object(spec.runtime)(section, log)
        await runtime.start()
    bus = Bus(device.implicit_bus() or device.id)
    driver = build_driver(device, bus, StateStore(None), runtime, log)
    try:
        async with asyncio.timeout(10):
            await driver.start()
        yield driver
    finally:
        async with asyncio.timeout(10):
            await driver.stop()
        async with asyncio.timeout(10):
            await driver.stop()  # idempotent
        await bus.close()
        if runtime is not None:
            await runtime.stop()


@contextlib.asynccontextmanager
async def twin_and_driver(kind: str) -> AsyncIterator[tuple[Twin, Driver[Any, Any]]]:
    async with twin_of(kind) as twin, built(kind, device_raw(kind, twin), twin.section_config()) as driver:
        yield twin, driver


async def read(driver: Driver[Any, Any], seconds: float = 20) -> RawReadings:
    async with asyncio.timeout(seconds):
        return await driver.read()


def readable(result: RawReadings) -> int:
    return sum(1 for v in result.values if not isinstance(v, PointError | NoValue))


def assert_good_read(kind: str, driver: Driver[Any, Any], result: RawReadings) -> None:
    points = driver.ctx.points
    # NO_VALUE is an answer too: a profile column with no entry since the last read.
    got = sum(1 for v in result.values if not isinstance(v, PointError))
    assert got >= 0.8 * len(points), f"{kind}: only {got} of {len(points)} points read"


# --- the core knows drivers through the registry only -----------------------------------------

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"


def _driver_imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, module) of every import of a concrete driver module: import statements and literal
    importlib.import_module / __import__ calls."""
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        for name in names:
            if name == "drivers" or name.startswith("drivers."):
                yield getattr(node, "lineno", 0), name


def test_gateway_imports_no_driver_module_except_through_the_registry() -> None:
    files = sorted(GATEWAY.rglob("*.py"))
    assert any(f.name == "demo.py" for f in files)
    found = [
        f"{f.relative_to(GATEWAY.parent)}:{line}: {name}"
        for f in files
        for line, name in _driver_imports(ast.parse(f.read_text(encoding="utf-8"), str(f)))
    ]
    assert found == [], "gateway/ must reach drivers through gateway/registry.py:\n" + "\n".join(found)
    # The check itself sees each form of import.
    probe = "import drivers.modbus\nfrom drivers.snmp import driver\nimportlib.import_module('drivers.dlms.twin')\n"
    assert [line for line, _ in _driver_imports(ast.parse(probe))] == [1, 2, 3]


# --- the registry entry and its profiles ------------------------------------------------------


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
    if spec.scanner is not None:
        assert callable(load_object(spec.scanner))
    shipped = shipped_profiles(kind)
    assert shipped, f"{kind} ships no profile"
    cls = spec.twin_class
    assert issubclass(cls, Twin) and cls.kind == kind
    assert cls.default_profile in shipped, f"{kind}: the twin's default profile is not shipped"
    assert isinstance(cls.sim_extras, frozenset)
    for dd in cls.demo:
        assert isinstance(dd, DemoDevice) and dd.profile in shipped, dd


@pytest.mark.parametrize("kind", sorted(DRIVERS))
async def test_shipped_profiles_load_for_a_device(kind: str) -> None:
    async with twin_of(kind) as twin:
        base = {k: v for k, v in twin.device_config().items() if k not in ("profile", "profile_vars", "points")}
    for name in shipped_profiles(kind):
        device = parse_device({**base, "id": "p", "profile": name})
        # A profile may leave the points to discovery (SNMP table templates walked at start).
        assert device.resolved_points or getattr(device, "tables", None), name
        for point in device.resolved_points:
            json.dumps(point.to_def().meta())


@pytest.mark.parametrize("kind", sorted(DRIVERS))
def test_its_sim_hint_keys_are_documented(kind: str) -> None:
    text = (GATEWAY.parent / "docs" / "profiles.md").read_text(encoding="utf-8")
    section = text.split("## Sim hints for the device twins", 1)[1].split("\n## ", 1)[0]
    missing = [k for k in sorted(SIM_KEYS | DRIVERS[kind].twin_class.sim_extras) if f"`{k}`" not in section]
    assert missing == [], f"docs/profiles.md, sim hints: {kind} keys not described: {missing}"


# --- reading the twin -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(DRIVERS))
async def test_reads_its_twin_into_aligned_readings(kind: str) -> None:
    async with twin_and_driver(kind) as (twin, driver):
        result = await read(driver)
        points = driver.ctx.points
        assert isinstance(result, RawReadings)
        assert len(result.values) == len(points)
        for extra in (result.timestamps, result.exponents, result.qualities):
            assert extra is None or len(extra) == len(points)
        for value in result.values:
            assert value is None or isinstance(value, int | float | bool | str | PointError | NoValue)
        for index, _raw, ts in result.series:
            assert 0 <= index < len(points) and isinstance(ts, int)
        assert_good_read(kind, driver, result)
        batch = Normalizer(driver.ctx.device.id, points).normalize(result, int(time.time() * 1000))
        assert json.loads(batch.encode(1))["readings"]
        assert twin.writes == [], f"{kind}: a poll wrote to the device"


def _pinnable(points: Sequence[PointConfig], result: RawReadings, values: dict[int, Any]) -> int | None:
    """The first plain numeric gauge read good: its engineering value depends on its own raw value only."""
    for i, point in enumerate(points):
        value = values.get(i)
        if (
            point.kind is Kind.GAUGE
            and point.publish
            and point.exponent_point is None
            and point.quantity != "clock_drift"  # measured against the reader's own clock: never exact
            and getattr(point, "rate", None) is None
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and not isinstance(result.values[i], PointError | NoValue)
        ):
            return i
    return None


@pytest.mark.parametrize("kind", sorted(DRIVERS))
async def test_reads_the_value_the_twin_shows(kind: str) -> None:
    async with twin_and_driver(kind) as (twin, driver):
        points = driver.ctx.points
        normalizer = Normalizer(driver.ctx.device.id, points)

        async def good_values() -> tuple[RawReadings, dict[int, Any]]:
            result = await read(driver)
            batch = normalizer.normalize(result, int(time.time() * 1000))
            good = {i: v for i, v, q in zip(batch.index, batch.values, batch.qualities, strict=True) if q == "good"}
            return result, good

        result, before = await good_values()
        i = _pinnable(points, result, before)
        assert i is not None, f"{kind}: no numeric gauge read good"
        point = points[i]
        exponent = (result.exponents[i] if result.exponents else None) or 0
        step = abs(point.scale) * 10.0**exponent  # the engineering value of one raw count
        prev = float(before[i])
        # Far enough from what it showed that a twin ignoring set_value cannot pass; on the raw grid.
        wanted = round((prev + max(3 * step, 0.25 * abs(prev), 1.0)) / step) * step
        twin.set_value(point.id, wanted)
        assert twin.value(point.id) == pytest.approx(wanted)
        _, after = await good_values()
        assert i in after, f"{kind}: {point.id} not good after set_value"
        tolerance = max(step, 1e-4 * abs(wanted))
        assert after[i] == pytest.approx(wanted, abs=tolerance), (
            f"{kind}: {point.id} read {after[i]}, twin shows {wanted}"
        )


# --- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(DRIVERS))
async def test_unreachable_device_is_a_device_error_in_bounded_time(kind: str) -> None:
    async with twin_of(kind) as twin:
        raw, section = device_raw(kind, twin), twin.section_config()
    # The twin is gone: its address is now a device that does not answer.
    async with built(kind, raw, section) as driver:
        started = time.monotonic()
        with pytest.raises(DeviceError):
            await read(driver, 15)
        assert failed_in_time(started)


@pytest.mark.parametrize("fault", FAULTS, ids=str)
@pytest.mark.parametrize("kind", sorted(DRIVERS))
async def test_every_fault_fails_the_poll_in_bounded_time_and_the_driver_recovers(kind: str, fault: Fault) -> None:
    async with twin_and_driver(kind) as (twin, driver):
        # A working session first: a fault in the middle of one is the harder case.
        assert_good_read(kind, driver, await read(driver))
        twin.faults.set(fault, delay=SLOW if fault is Fault.SLOW else 0.0)
        started = time.monotonic()
        try:
            result = await read(driver, 15)
        except DeviceError:
            pass
        else:
            assert readable(result) == 0, f"{kind} under {fault}: values read from a faulty device: {result.values}"
        assert failed_in_time(started), f"{kind} under {fault}: {time.monotonic() - started:.1f}s"
        twin.faults.clear()
        # The same driver instance must get back to work by itself (new connection, association).
        assert_good_read(kind, driver, await read(driver))


# --- discovery --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(DRIVERS))
async def test_discover_gives_valid_points_or_says_it_cannot(kind: str) -> None:
    async with twin_and_driver(kind) as (_twin, driver):
        try:
            async with asyncio.timeout(30):
                found = await driver.discover()
        except NotImplementedError:
            return
        assert found
        model = type(driver.ctx.device).point_model
        ids = set()
        for item in found:
            point = model.model_validate(item)
            assert point.id not in ids
            ids.add(point.id)
