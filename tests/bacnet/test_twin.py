"""The BACnet twin on the shared twin base: its factory and configs, WriteProperty with priorities
(checked with a plain bacpypes3 client), and every fault mode against the gateway's own driver."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import structlog
from bacpypes3.apdu import ErrorRejectAbortNack, WritePropertyRequest
from bacpypes3.app import Application
from bacpypes3.constructeddata import Any as AnyValue
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import CharacterString, Null

from drivers.bacnet.config import BacnetSection
from drivers.bacnet.runtime import BacnetRuntime
from drivers.bacnet.twin import BacnetTwin, free_udp_port
from gateway.app import build_driver
from gateway.buses import Bus
from gateway.config import parse_device
from gateway.driver import DeviceError, Driver, PointError
from gateway.points import Quality
from gateway.registry import DRIVERS
from gateway.state import StateStore
from gateway.twin import Fault, Write

pytestmark = pytest.mark.timeout(30)

TIMEOUT = 0.5

# Commandable objects of every kind, and an input that is not.
COMMANDABLE: list[dict[str, Any]] = [
    {
        "id": "setpoint",
        "object": "analog-value,10",
        "quantity": "temperature",
        "unit": "degC",
        "sim": {"value": 21, "min_pres_value": 15, "max_pres_value": 30},
    },
    {
        "id": "moving",
        "object": "analog-value,11",
        "quantity": "temperature",
        "unit": "degC",
        "sim": {"min": 10, "max": 20, "period": "60s"},
    },
    {"id": "power", "object": "analog-output,1", "quantity": "active_power", "unit": "W", "scale": 1000},
    {"id": "breaker", "object": "binary-output,1", "quantity": "breaker_state", "kind": "state"},
    {"id": "enable", "object": "binary-value,1", "quantity": "status", "kind": "state", "sim": {"value": 0}},
    {
        "id": "mode",
        "object": "multi-state-value,1",
        "quantity": "status",
        "kind": "state",
        "sim": {"value": 2, "max": 4},
    },
    {"id": "supply", "object": "analog-input,1", "quantity": "temperature", "unit": "degC", "sim": {"value": 18}},
]


class Client:
    """A plain bacpypes3 application on its own loopback port, routed to the twin's network."""

    def __init__(self, app: Application) -> None:
        self.app = app

    async def read(self, address: str, obj: str, prop: str = "present-value") -> Any:
        return await self.app.read_property(Address(address), obj, prop)

    async def write(
        self, address: str, obj: str, value: Any, priority: int | None = None, prop: str = "present-value"
    ) -> str | None:
        """None when acknowledged, else the BACnet error code."""
        try:
            await self.app.write_property(Address(address), obj, prop, value, priority=priority)
        except ErrorRejectAbortNack as answer:
            return str(getattr(answer, "errorCode", answer))
        return None

    async def write_raw(self, address: str, obj: str, value: Any, priority: int) -> str | None:
        """A WriteProperty whose value is encoded as given, whatever the property's type."""
        request = WritePropertyRequest(
            objectIdentifier=obj,
            propertyIdentifier="present-value",
            propertyValue=AnyValue(value),
            destination=Address(address),
            priority=priority,
        )
        try:
            await self.app.request(request)
        except ErrorRejectAbortNack as answer:
            return str(getattr(answer, "errorCode", answer))
        return None

    async def priority_array(self, address: str, obj: str) -> list[Any]:
        slots = await self.read(address, obj, "priority-array")
        return [None if pv.null is not None else getattr(pv, pv._choice) for pv in slots]


@pytest.fixture
async def twin() -> AsyncIterator[BacnetTwin]:
    async with BacnetTwin.create(points=COMMANDABLE, panels=2, animate=False) as t:
        yield t


@pytest.fixture
async def client(twin: BacnetTwin) -> AsyncIterator[Client]:
    device = DeviceObject(objectIdentifier=("device", 4194001), objectName="test-client", vendorIdentifier=999)
    port = NetworkPortObject(
        f"127.0.0.1/24:{free_udp_port()}", objectIdentifier=("network-port", 1), objectName="NetworkPort-1"
    )
    app = Application.from_object_list([device, port])
    await app.nsap.update_router_references(None, Address(twin.address), [twin.network])
    try:
        yield Client(app)
    finally:
        app.close()


# --- writes -----------------------------------------------------------------------------------------------


async def test_write_with_priority_fills_the_priority_array(twin: BacnetTwin, client: Client) -> None:
    p1, p2 = "50:1", "50:2"
    assert await client.read(p1, "analog-value,10") == 21.0
    assert await client.write(p1, "analog-value,10", 25.5, priority=8) is None
    assert await client.read(p1, "analog-value,10") == 25.5
    slots = await client.priority_array(p1, "analog-value,10")
    assert slots == [None] * 7 + [25.5] + [None] * 8
    assert await client.read(p1, "analog-value,10", "relinquish-default") == 21.0

    # A higher priority (lower number) wins; relinquishing it falls back to the next one.
    assert await client.write(p1, "analog-value,10", 23.0, priority=4) is None
    assert await client.read(p1, "analog-value,10") == 23.0
    assert await client.write(p1, "analog-value,10", Null(()), priority=4) is None
    assert await client.read(p1, "analog-value,10") == 25.5
    assert await client.write(p1, "analog-value,10", Null(()), priority=8) is None
    assert await client.read(p1, "analog-value,10") == 21.0  # the relinquish default
    assert await client.priority_array(p1, "analog-value,10") == [None] * 16
    assert twin.priority_array("setpoint") == [None] * 16

    # No priority: 16, the lowest.
    assert await client.write(p1, "analog-value,10", 19.0) is None
    assert twin.priority_array("setpoint")[15] == 19.0
    assert await client.read(p2, "analog-value,10") == 21.0  # the other panel is another device

    assert [(w.point, w.value, w.raw, w.priority, w.target) for w in twin.writes] == [
        ("setpoint", 25.5, 25.5, 8, 50001),
        ("setpoint", 23.0, 23.0, 4, 50001),
        ("setpoint", None, None, 4, 50001),
        ("setpoint", None, None, 8, 50001),
        ("setpoint", 19.0, 19.0, 16, 50001),
    ]
    assert all(isinstance(w, Write) for w in twin.writes)


async def test_writes_in_engineering_units_and_of_every_commandable_type(twin: BacnetTwin, client: Client) -> None:
    p2 = "50:2"
    # The analog output is in kilowatts (scale 1000 to W): the write is remembered in W.
    assert await client.write(p2, "analog-output,1", 4.5, priority=9) is None
    assert twin.value("power", 50002) == pytest.approx(4500.0)
    assert str(await client.read(p2, "binary-output,1")) == "active"  # a breaker twin starts closed
    assert await client.write(p2, "binary-output,1", "inactive", priority=1) is None
    assert str(await client.read(p2, "binary-output,1")) == "inactive"
    assert twin.value("breaker", 50002) is False
    assert (await client.priority_array(p2, "binary-output,1"))[0] == 0
    assert await client.write(p2, "binary-output,1", Null(()), priority=1) is None
    assert str(await client.read(p2, "binary-output,1")) == "active"  # back to the relinquish default
    assert await client.write(p2, "binary-value,1", "active", priority=12) is None
    assert twin.value("enable", 50002) is True
    assert await client.write(p2, "multi-state-value,1", 4, priority=10) is None
    assert await client.read(p2, "multi-state-value,1") == 4
    got = [(w.point, w.value, w.raw, w.priority, w.target) for w in twin.writes]
    assert got == [
        ("power", pytest.approx(4500.0), 4.5, 9, 50002),
        ("breaker", False, 0, 1, 50002),
        ("breaker", None, None, 1, 50002),
        ("enable", True, 1, 12, 50002),
        ("mode", 4, 4, 10, 50002),
    ]


async def test_refused_writes_answer_the_bacnet_error(twin: BacnetTwin, client: Client) -> None:
    p1 = "50:1"
    cases: Sequence[tuple[str, Any, int | None, str, str]] = [
        ("analog-input,1", 20.0, 8, "present-value", "write-access-denied"),  # not commandable
        ("analog-value,10", "amperes", None, "units", "write-access-denied"),  # read-only property
        ("analog-value,10", 22.0, 6, "present-value", "write-access-denied"),  # minimum on/off, reserved
        ("analog-value,10", 30.5, 8, "present-value", "value-out-of-range"),  # above max-pres-value
        ("analog-value,10", 14.0, 8, "present-value", "value-out-of-range"),  # below min-pres-value
        ("multi-state-value,1", 5, 8, "present-value", "value-out-of-range"),  # 4 states
        ("multi-state-value,1", 0, 8, "present-value", "value-out-of-range"),
        ("analog-value,99", 1.0, 8, "present-value", "unknown-object"),
    ]
    for obj, value, priority, prop, code in cases:
        assert await client.write(p1, obj, value, priority=priority, prop=prop) == code, (obj, value, priority, prop)
    assert await client.write_raw(p1, "analog-value,10", CharacterString("warm"), 8) == "invalid-data-type"
    assert await client.read(p1, "analog-value,10") == 21.0
    assert await client.read(p1, "analog-value,10", "max-pres-value") == 30.0
    assert twin.writes == []
    assert twin.requests(50001)["write-property"] == len(cases) + 1


async def test_a_commanded_object_stops_moving(twin: BacnetTwin, client: Client) -> None:
    p1 = "50:1"
    twin.tick(0.0)
    at0 = await client.read(p1, "analog-value,11")
    twin.tick(15.0)  # a quarter period: the sine moved
    at15 = await client.read(p1, "analog-value,11")
    assert at15 != pytest.approx(at0, abs=0.5)
    assert await client.write(p1, "analog-value,11", 12.0, priority=8) is None
    twin.tick(30.0)
    assert await client.read(p1, "analog-value,11") == 12.0
    assert await client.read(p1, "analog-value,11", "relinquish-default") == pytest.approx(at15)  # pinned too
    assert await client.write(p1, "analog-value,11", Null(()), priority=8) is None
    twin.tick(45.0)  # free again: it follows its signal
    assert await client.read(p1, "analog-value,11") == pytest.approx(twin.value("moving"))
    assert twin.value("moving") != pytest.approx(at15, abs=0.5)


# --- the factory, the configs and the driver ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def gateway_side(twin: BacnetTwin) -> AsyncIterator[dict[int, Driver[Any, Any]]]:
    """The gateway's stack (from the twin's section) and a driver per panel, built as the daemon does."""
    log = structlog.get_logger("test")
    runtime = BacnetRuntime(BacnetSection.model_validate(twin.section_config()), log)
    await runtime.start()
    drivers: dict[int, Driver[Any, Any]] = {}
    try:
        for instance in twin.panel_instances:
            device = parse_device({"id": f"d{instance}", **twin.device_config(instance), "timeout": TIMEOUT})
            driver = build_driver(device, Bus(device.id), StateStore(None), runtime, log)
            await driver.start()
            drivers[instance] = driver
        yield drivers
    finally:
        for driver in drivers.values():
            await driver.stop()
        await runtime.stop()


def good(values: Sequence[object]) -> bool:
    return bool(values) and not any(isinstance(v, PointError) for v in values)


async def test_the_registry_names_this_twin() -> None:
    cls = DRIVERS["bacnet"].twin_class
    assert cls is BacnetTwin and cls.kind == "bacnet"
    assert cls.default_profile == "schneider-bcpme-bacnet"
    (demo,) = cls.demo
    assert demo.id == "bcpme-2-bacnet" and "panel1.mains.frequency" in demo.show


async def test_create_gives_what_a_device_needs() -> None:
    async with BacnetTwin.create(vars={"channels": 2}, panels=2, animate=False) as twin:
        assert twin.port != 0
        first = twin.device_config()
        assert first == {
            "driver": "bacnet",
            "profile": "schneider-bcpme-bacnet",
            "profile_vars": {"channels": 2, "panel": 1},
            "address": f"127.0.0.1:{twin.port}",
            "network": 50,
            "mac": 1,
            "device_instance": 50001,
        }
        assert twin.device_config(50002)["profile_vars"] == {"channels": 2, "panel": 2}
        local = twin.section_config()["local_address"]
        assert local.startswith("127.0.0.1/24:") and not local.endswith(f":{twin.port}")
        assert "router device 50000" in twin.describe() and "50002 (50:2)" in twin.describe()

        twin.set_value("panel2.ch1.power", 2500.0, target=50002)  # engineering units: W
        assert twin.get_value(50002, "analog-value,101") == pytest.approx(2.5)  # the object is in kW
        twin.set_flags(50001, "panel1.ch2.current", [0, 0, 0, 1])  # a point id works as well
        async with gateway_side(twin) as drivers:
            raw1 = await drivers[50001].read()
            raw2 = await drivers[50002].read()
            assert good(raw1.values) and good(raw2.values)
            ids2 = [p.id for p in drivers[50002].ctx.points]
            assert raw2.values[ids2.index("panel2.ch1.power")] == pytest.approx(2.5)
            ids1 = [p.id for p in drivers[50001].ctx.points]
            frequency = raw1.values[ids1.index("panel1.mains.frequency")]
            assert frequency == pytest.approx(twin.value("panel1.mains.frequency"))
            assert raw1.qualities is not None and raw1.qualities[ids1.index("panel1.ch2.current")] is Quality.UNCERTAIN
        assert twin.writes == []


async def test_values_follow_the_twin_clock() -> None:
    async with BacnetTwin.create(vars={"channels": 1}, panels=1, animate=False) as twin:
        twin.clock.freeze()
        twin.tick()
        before = twin.value("panel1.mains.frequency")
        assert 49.95 <= before <= 50.05  # the profile's sim hint
        twin.clock.advance(15.0)  # a quarter of its 60 s period
        assert twin.value("panel1.mains.frequency") == before  # served values move on a tick
        twin.tick()
        assert twin.value("panel1.mains.frequency") != pytest.approx(before, abs=1e-4)
        energy = twin.value("panel1.ch1.energy")
        twin.clock.advance(100.0)
        twin.tick()
        assert twin.value("panel1.ch1.energy") == pytest.approx(energy + 100 * 0.5, rel=1e-6)  # 0.5 Wh/s


async def test_without_a_router_each_panel_is_a_device_of_its_own() -> None:
    async with BacnetTwin.create(vars={"channels": 1}, panels=2, router=False, animate=False) as twin:
        one, two = twin.device_config(50001), twin.device_config(50002)
        assert "network" not in one and "mac" not in one
        assert one["address"] != two["address"] and one["address"] == twin.address
        async with gateway_side(twin) as drivers:
            assert good((await drivers[50001].read()).values)
            assert good((await drivers[50002].read()).values)
            twin.faults.set(Fault.GARBAGE, target=50002)
            with pytest.raises(DeviceError):
                await drivers[50002].read()
            assert good((await drivers[50001].read()).values)


@pytest.mark.parametrize("router", [True, False], ids=["router", "no-router"])
async def test_a_restarted_twin_serves_where_it_was(router: bool) -> None:
    twin = BacnetTwin.create(vars={"channels": 1}, panels=2, router=router, animate=False)
    async with twin:
        configs = [twin.device_config(i) for i in twin.panel_instances]
        twin.set_value("panel2.mains.frequency", 49.5, target=50002)
    assert twin.value("panel2.mains.frequency", 50002) == pytest.approx(49.5)  # pinned while stopped too
    async with twin, gateway_side(twin) as drivers:
        assert [twin.device_config(i) for i in twin.panel_instances] == configs
        raw = await drivers[50002].read()
        ids = [p.id for p in drivers[50002].ctx.points]
        assert raw.values[ids.index("panel2.mains.frequency")] == pytest.approx(49.5)


async def test_an_unknown_sim_key_is_refused() -> None:
    point = {"id": "x", "object": "analog-value,1", "quantity": "other", "sim": {"vlaue": 3}}
    with pytest.raises(ValueError, match="unknown key"):
        BacnetTwin.create(points=[point])
    with pytest.raises(ValueError, match="profile or inline points"):
        BacnetTwin.create("schneider-bcpme-bacnet", points=[point])


# --- faults ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [Fault.SILENT, Fault.SLOW, Fault.GARBAGE, Fault.DISCONNECT], ids=str)
async def test_a_faulty_panel_fails_its_poll_and_the_other_panel_reads(mode: Fault) -> None:
    async with BacnetTwin.create(vars={"channels": 1}, panels=2, animate=False) as twin, gateway_side(twin) as d:
        assert good((await d[50001].read()).values) and good((await d[50002].read()).values)
        twin.faults.set(mode, delay=3 * TIMEOUT if mode is Fault.SLOW else 0.0, target=50002)
        started = time.monotonic()
        with pytest.raises(DeviceError):
            await d[50002].read()
        assert time.monotonic() - started < 3 * TIMEOUT
        assert twin.requests(50002)[f"fault-{mode}"] >= 1
        assert good((await d[50001].read()).values)
        assert twin.requests(50001)[f"fault-{mode}"] == 0
        twin.faults.clear(50002)
        assert good((await d[50002].read()).values)


async def test_a_slow_panel_within_the_timeout_still_reads() -> None:
    async with BacnetTwin.create(vars={"channels": 1}, panels=1, animate=False) as twin, gateway_side(twin) as d:
        await d[50001].read()  # device information read once
        twin.faults.set(Fault.SLOW, delay=TIMEOUT / 3, target=50001)
        started = time.monotonic()
        assert good((await d[50001].read()).values)
        assert time.monotonic() - started >= TIMEOUT / 3


async def test_a_fault_of_the_whole_board_fails_every_panel() -> None:
    async with BacnetTwin.create(vars={"channels": 1}, panels=2, animate=False) as twin, gateway_side(twin) as d:
        twin.faults.set(Fault.DISCONNECT)
        for instance in (50001, 50002):
            with pytest.raises(DeviceError):
                await d[instance].read()
        twin.faults.set(Fault.SILENT, target=50001)  # a panel's own fault wins over the board's
        twin.faults.set(Fault.NONE)
        with pytest.raises(DeviceError):
            await d[50001].read()
        assert good((await d[50002].read()).values)
