"""BACnet commands: WriteProperty with priorities, read-back of value and slot, refusals, actions.

Against the twin (16-slot priority arrays, relinquish defaults, write-access-denied for inputs,
value-out-of-range) and against a plain bacpypes3 device built here from bacpypes3's own objects,
both on loopback UDP.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog
from bacpypes3.app import Application
from bacpypes3.local.analog import AnalogInputObject, AnalogValueObject, AnalogValueObjectCmd
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.local.oos import OutOfService

from drivers.bacnet.client import encode_value
from drivers.bacnet.codec import commandable
from drivers.bacnet.config import BacnetAction, BacnetDevice
from drivers.bacnet.driver import BacnetDriver, WriteReadBack
from drivers.bacnet.runtime import BacnetRuntime
from drivers.bacnet.twin import BacnetTwin, free_udp_port
from gateway.buses import Bus
from gateway.config import ConfigError, parse_device
from gateway.driver import DeviceTimeout, DriverContext, PointError, RawValue, ReadBack, WriteRefused, WriteRequest
from gateway.state import StateStore
from tests.bacnet.conftest import TIMEOUT, Drivers

pytestmark = pytest.mark.timeout(30)

# A bound for "the device did not answer": its timeout plus scheduling slack, never the stack's 12 s.
SILENT_BOUND = TIMEOUT * 3

POINTS: list[dict[str, Any]] = [
    {
        "id": "setpoint",
        "object": "analog-value,10",
        "quantity": "temperature",
        "unit": "degC",
        "writable": True,
        "sim": {"value": 21, "min_pres_value": 15, "max_pres_value": 30},
    },
    {
        "id": "power",
        "object": "analog-output,1",
        "quantity": "active_power",
        "unit": "W",
        "scale": 1000,
        "writable": True,
        "sim": {"value": 2000},
    },
    {"id": "breaker", "object": "binary-output,1", "quantity": "breaker_state", "kind": "state", "writable": True},
    {
        "id": "mode",
        "object": "multi-state-value,1",
        "quantity": "status",
        "kind": "state",
        "writable": True,
        "sim": {"value": 2, "max": 4},
    },
    {
        "id": "supply",
        "object": "analog-input,1",
        "quantity": "temperature",
        "unit": "degC",
        "writable": True,
        "sim": {"value": 18},
    },
    # The shipped BCPME profile's (assumed) reset object.
    {"id": "reset", "object": "analog-value,3001", "quantity": "other", "sim": {"value": 0}},
]
SETPOINT, POWER, BREAKER, MODE, SUPPLY = range(5)
PANEL = 50001


def index_of(driver: BacnetDriver, point_id: str) -> int:
    return next(i for i, p in enumerate(driver.ctx.points) if p.id == point_id)


@pytest.fixture
async def twin() -> AsyncIterator[BacnetTwin]:
    async with BacnetTwin.create(points=POINTS, panels=1, animate=False) as t:
        yield t


@pytest.fixture
async def drivers(twin: BacnetTwin, runtime: BacnetRuntime) -> AsyncIterator[Drivers]:
    d = Drivers(twin, runtime)
    try:
        yield d
    finally:
        await d.close()


async def twin_driver(drivers: Drivers, **extra: Any) -> BacnetDriver:
    return await drivers.make(1, **{"points": POINTS, **extra})


def last(driver: BacnetDriver) -> WriteReadBack:
    assert driver.last_write is not None
    return driver.last_write


# --- the twin ------------------------------------------------------------------------------------


def present(answer: RawValue | ReadBack) -> RawValue:
    """The present value a write read back (a commanded one comes with its slot)."""
    return answer.value if isinstance(answer, ReadBack) else answer


async def test_write_at_the_default_priority_reads_back_value_and_slot(drivers: Drivers, twin: BacnetTwin) -> None:
    d = await twin_driver(drivers)
    assert d.config.write_priority == 8
    assert present(await d.write(WriteRequest(SETPOINT, 25.5))) == 25.5
    back = last(d)
    assert (back.priority, back.slot) == (8, 25.5)
    assert back.as_dict() == {
        "object": "analog-value,10",
        "property": "present-value",
        "value": 25.5,
        "priority": 8,
        "priority_slot": 25.5,
    }
    slots = twin.priority_array("setpoint", PANEL)
    assert slots[7] == 25.5 and [s for i, s in enumerate(slots) if i != 7] == [None] * 15
    assert [(w.point, w.raw, w.priority) for w in twin.writes] == [("setpoint", 25.5, 8)]
    counts = twin.requests(PANEL)
    assert counts["write-property"] == 1
    # The read-back is one ReadPropertyMultiple: present value and the slot together.
    assert counts["read-property-multiple"] == 1


async def test_higher_priority_wins_and_relinquish_returns_to_the_default(drivers: Drivers, twin: BacnetTwin) -> None:
    d = await twin_driver(drivers)
    assert present(await d.write(WriteRequest(SETPOINT, 25.5))) == 25.5
    # A command at 4 wins over 8; the value read back is the device's, the slot is ours.
    assert present(await d.write(WriteRequest(SETPOINT, 23.0, priority=4))) == 23.0
    assert (last(d).priority, last(d).slot) == (4, 23.0)
    assert present(await d.write(WriteRequest(SETPOINT, 27.0))) == 23.0
    assert (last(d).priority, last(d).slot) == (8, 27.0)
    # Relinquish 4: priority 8 shows again; relinquish 8: the relinquish default (21).
    assert present(await d.write(WriteRequest(SETPOINT, None, priority=4))) == 27.0
    assert (last(d).priority, last(d).slot) == (4, None)
    assert present(await d.write(WriteRequest(SETPOINT, None))) == 21.0
    assert last(d).as_dict() == {
        "object": "analog-value,10",
        "property": "present-value",
        "value": 21.0,
        "priority": 8,
        "priority_slot": None,
    }
    assert twin.priority_array("setpoint", PANEL) == [None] * 16
    assert [(w.raw, w.priority) for w in twin.writes] == [(25.5, 8), (23.0, 4), (27.0, 8), (None, 4), (None, 8)]


async def test_each_object_type_gets_its_datatype(drivers: Drivers, twin: BacnetTwin) -> None:
    d = await twin_driver(drivers)
    # REAL in the object's own units (kW): the core sends raw 4.5 for 4500 W.
    assert present(await d.write(WriteRequest(POWER, 4.5))) == 4.5
    # Binary: enumerated active/inactive; read back as a bool, the slot too.
    assert present(await d.write(WriteRequest(BREAKER, False, priority=1))) is False
    assert last(d).slot is False
    assert present(await d.write(WriteRequest(BREAKER, True, priority=1))) is True
    assert last(d).slot is True
    # Multi-state: Unsigned.
    assert present(await d.write(WriteRequest(MODE, 3, priority=10))) == 3
    assert last(d).slot == 3
    got = [(w.point, w.value, w.raw, w.priority) for w in twin.writes]
    assert got == [
        ("power", 4500.0, 4.5, 8),
        ("breaker", False, 0, 1),
        ("breaker", True, 1, 1),
        ("mode", 3, 3, 10),
    ]


async def test_the_device_write_priority_is_the_default(drivers: Drivers, twin: BacnetTwin) -> None:
    d = await twin_driver(drivers, write_priority=12)
    assert present(await d.write(WriteRequest(SETPOINT, 19.0))) == 19.0
    assert twin.priority_array("setpoint", PANEL)[11] == 19.0
    assert last(d).priority == 12
    # The request's own priority still wins over the device's.
    await d.write(WriteRequest(SETPOINT, 18.0, priority=3))
    assert twin.priority_array("setpoint", PANEL)[2] == 18.0


async def test_refusals_carry_the_bacnet_error(drivers: Drivers, twin: BacnetTwin) -> None:
    d = await twin_driver(
        drivers,
        points=[
            *POINTS,
            {"id": "ghost", "object": "analog-value,99", "quantity": "other", "writable": True},
        ],
    )
    cases = [
        # An input is not commandable: written without a priority, and the twin refuses it.
        (
            WriteRequest(SUPPLY, 20.0),
            "WriteProperty analog-input,1 present-value refused: error: property: write-access-denied",
        ),
        (WriteRequest(SETPOINT, 45.0), "at priority 8 refused: error: property: value-out-of-range"),
        (WriteRequest(MODE, 9), "at priority 8 refused: error: property: value-out-of-range"),
        (WriteRequest(SETPOINT, 22.0, priority=6), "at priority 6 refused: error: property: write-access-denied"),
        (WriteRequest(index_of(d, "ghost"), 1.0), "refused: error: object: unknown-object"),
    ]
    for request, message in cases:
        started = time.monotonic()
        with pytest.raises(WriteRefused) as caught:
            await d.write(request)
        assert message in str(caught.value), request
        assert time.monotonic() - started < SILENT_BOUND
    assert twin.writes == []
    assert twin.requests(PANEL)["write-property"] == len(cases)


async def test_read_property_only_devices_read_back_with_two_requests(drivers: Drivers, twin: BacnetTwin) -> None:
    d = await twin_driver(drivers, rpm="off")
    assert present(await d.write(WriteRequest(SETPOINT, 24.0, priority=9))) == 24.0
    assert last(d).slot == 24.0
    counts = twin.requests(PANEL)
    assert counts["read-property-multiple"] == 0
    info = counts["read-property"] - 2  # what is left is the device information, read once
    assert present(await d.write(WriteRequest(SETPOINT, None, priority=9))) == 21.0
    assert twin.requests(PANEL)["read-property"] - info == 4


async def test_a_device_rejecting_rpm_mid_way_still_reads_back(drivers: Drivers, twin: BacnetTwin) -> None:
    d = await twin_driver(drivers)
    await d.read()  # rpm: auto has seen the device support it
    twin.devices[PANEL].rpm_supported = False
    assert present(await d.write(WriteRequest(SETPOINT, 26.0))) == 26.0
    assert last(d).slot == 26.0
    assert not any(isinstance(v, PointError) for v in (await d.read()).values)


async def test_a_silent_device_times_out_in_bounds(drivers: Drivers, twin: BacnetTwin) -> None:
    d = await twin_driver(drivers)
    await d.read()
    twin.faults.set("silent", target=PANEL)
    started = time.monotonic()
    with pytest.raises(DeviceTimeout, match=r"no response from .* to WriteProperty analog-value,10"):
        await d.write(WriteRequest(SETPOINT, 22.0))
    assert time.monotonic() - started < SILENT_BOUND
    # A driver that never reached the device times out on its first request just the same.
    fresh = await twin_driver(drivers, id="fresh")
    started = time.monotonic()
    with pytest.raises(DeviceTimeout):
        await fresh.write(WriteRequest(SETPOINT, 22.0))
    assert time.monotonic() - started < SILENT_BOUND
    twin.faults.set("none", target=PANEL)
    assert present(await d.write(WriteRequest(SETPOINT, 22.0))) == 22.0


async def test_values_that_cannot_be_encoded_never_reach_the_device(drivers: Drivers, twin: BacnetTwin) -> None:
    d = await twin_driver(drivers)
    await d.read()
    before = twin.requests(PANEL).total()
    for request, message in [
        (WriteRequest(MODE, 2.5), "not a whole number"),
        (WriteRequest(SETPOINT, 1e39), "REAL|Real"),
        (WriteRequest(BREAKER, 2), "active"),
        (WriteRequest(SUPPLY, None), "not commandable: there is no priority to relinquish"),
        (WriteRequest(SETPOINT, 20.0, priority=17), "out of range"),
    ]:
        with pytest.raises(ValueError, match=message):
            await d.write(request)
    assert twin.requests(PANEL).total() == before


async def test_writes_wait_for_the_poll_in_progress(drivers: Drivers, twin: BacnetTwin) -> None:
    d = await twin_driver(drivers)
    bus = d.ctx.bus
    await d.read()
    await d.write(WriteRequest(SETPOINT, 22.0))
    # Each poll and each write (with its read-back) is one bus transaction.
    assert bus.transactions == 2


# --- actions ---------------------------------------------------------------------------------------

ACTIONS: dict[str, Any] = {
    "set_mode": {
        "description": "mode and enable together",
        "args": {"mode": {"type": "integer", "min": 1, "max": 4}},
        "writes": [
            {"object": "multi-state-value,1", "arg": "mode"},
            {"object": "binary-output,1", "value": True, "priority": 10},
        ],
    },
    "release": {"writes": [{"object": "multi-state-value,1", "value": None}]},
    "half_refused": {
        "writes": [
            {"object": "analog-value,10", "value": 24, "priority": 5},
            {"object": "analog-input,1", "value": 1.0},
            {"object": "analog-value,10", "value": 25},
        ]
    },
}


async def test_actions_write_their_steps_and_read_each_back(drivers: Drivers, twin: BacnetTwin) -> None:
    d = await twin_driver(drivers, actions=ACTIONS)
    actions = d.config.resolved_actions
    assert set(actions) == set(ACTIONS)
    default = (await d.read()).values[MODE]
    answer = await d.action("set_mode", actions["set_mode"], {"mode": 3})
    assert answer == [
        {"object": "multi-state-value,1", "property": "present-value", "value": 3, "priority": 8, "priority_slot": 3},
        {
            "object": "binary-output,1",
            "property": "present-value",
            "value": True,
            "priority": 10,
            "priority_slot": True,
        },
    ]
    assert [(w.point, w.raw, w.priority) for w in twin.writes] == [("mode", 3, 8), ("breaker", 1, 10)]
    # `value: null` relinquishes at the step's priority (the device's here): back to the default.
    answer = await d.action("release", actions["release"], {})
    assert answer == [
        {
            "object": "multi-state-value,1",
            "property": "present-value",
            "value": default,
            "priority": 8,
            "priority_slot": None,
        }
    ]
    assert d.ctx.bus.transactions == 3  # one per poll, one per action


async def test_a_refused_step_stops_the_action_and_says_what_was_written(drivers: Drivers, twin: BacnetTwin) -> None:
    d = await twin_driver(drivers, actions=ACTIONS)
    with pytest.raises(WriteRefused) as caught:
        await d.action("half_refused", d.config.resolved_actions["half_refused"], {})
    text = str(caught.value)
    assert text.startswith("action 'half_refused' step 2 of 3: WriteProperty analog-input,1 present-value refused")
    assert "write-access-denied" in text and text.endswith("; step 1 was written")
    assert [(w.point, w.raw, w.priority) for w in twin.writes] == [("setpoint", 24.0, 5)]


async def test_an_action_value_that_cannot_be_encoded_stops_it_before_the_first_write(
    drivers: Drivers, twin: BacnetTwin
) -> None:
    d = await twin_driver(drivers, actions=ACTIONS)
    with pytest.raises(ValueError, match="multi-state-value,1"):
        await d.action("set_mode", d.config.resolved_actions["set_mode"], {"mode": 2.5})
    assert twin.writes == []
    assert twin.requests(PANEL)["write-property"] == 0


async def test_the_shipped_bcpme_profile_resets(drivers: Drivers, twin: BacnetTwin) -> None:
    d = await drivers.make(1, profile="schneider-bcpme-bacnet")
    actions = d.config.resolved_actions
    assert {name: [(s.object, s.value) for s in a.writes] for name, a in actions.items()} == {  # type: ignore[attr-defined]
        "reset_energy": [("analog-value,3001", 10203)],
        "reset_demand": [("analog-value,3001", 26013)],
        "reset_max_demand": [("analog-value,3001", 20097)],
        "reset_maxima": [("analog-value,3001", 29877)],
    }
    assert all("ASSUMED" in a.description for a in actions.values())
    assert d.config.profile_meta["status"] == "assumed"
    assert not any(p.writable for p in d.ctx.points)
    # The twin here serves the assumed reset object (the profile's measurements are not needed).
    answer = await d.action("reset_energy", actions["reset_energy"], {})
    assert answer[0]["value"] == 10203.0
    assert [(w.point, w.raw, w.priority) for w in twin.writes] == [("reset", 10203.0, 8)]


# --- config ----------------------------------------------------------------------------------------


def bacnet_device(**extra: Any) -> BacnetDevice:
    device = parse_device({"id": "d", "driver": "bacnet", "address": "10.0.0.5", **extra})
    assert isinstance(device, BacnetDevice)
    return device


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ({"writes": []}, "at least 1"),
        ({"writes": [{"object": "av,1"}]}, "exactly one"),
        ({"writes": [{"object": "av,1", "value": 1, "arg": "x"}]}, "exactly one"),
        ({"writes": [{"object": "av,1", "arg": "x"}]}, "not an argument"),
        ({"writes": [{"object": "av,1", "value": 1, "priority": 17}]}, "less than or equal to 16"),
        ({"writes": [{"object": "nonsense", "value": 1}]}, "not an object reference"),
        ({"writes": [{"object": "av,1", "value": 1, "delay": 1}]}, "Extra inputs"),
    ],
)
def test_action_definitions_are_checked(action: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        bacnet_device(actions={"bad": action})


def test_action_steps_are_canonical_and_default_to_present_value() -> None:
    device = bacnet_device(
        write_priority=14,
        actions={
            "a": {
                "args": {"x": {"type": "number"}},
                "writes": [
                    {"object": "AV,3", "arg": "x"},
                    {"object": "bo1", "property": "outOfService", "value": False},
                ],
            }
        },
    )
    spec = device.resolved_actions["a"]
    assert isinstance(spec, BacnetAction)
    assert [(s.object, s.property, s.value, s.arg, s.priority) for s in spec.writes] == [
        ("analog-value,3", "present-value", None, "x", None),
        ("binary-output,1", "out-of-service", False, None, None),
    ]
    assert device.write_priority == 14
    with pytest.raises(ConfigError, match="write_priority"):
        bacnet_device(write_priority=0)


def test_commandable_and_encoding_rules() -> None:
    assert commandable("analog-output,1", "present-value") is True
    assert commandable("analog-value,1", "present-value") is None  # when it has a priority array
    assert commandable("analog-value,1", "out-of-service") is False
    assert commandable("analog-input,1", "present-value") is False
    assert commandable("130,1", "present-value") is None
    assert type(encode_value("analog-value,1", "present-value", 2)).__name__ == "Real"
    assert type(encode_value("large-analog-value,1", "present-value", 2)).__name__ == "Double"
    assert type(encode_value("multi-state-output,1", "present-value", 2)).__name__ == "Unsigned"
    assert str(encode_value("binary-value,1", "present-value", True)) == "active"
    assert str(encode_value("binary-value,1", "present-value", 0)) == "inactive"
    assert type(encode_value("integer-value,1", "present-value", -3)).__name__ == "Integer"
    assert type(encode_value("analog-value,1", "present-value", None)).__name__ == "Null"
    assert str(encode_value("analog-value,1", "units", "kilowatts")) == "kilowatts"


# --- a plain bacpypes3 device ----------------------------------------------------------------------


@dataclass
class Plain:
    """A bacpypes3 device built from bacpypes3's own objects; it records the priority of each write."""

    app: Application
    address: str
    priorities: list[tuple[str, int | None]] = field(default_factory=list)


class _RecordingApplication(Application):  # type: ignore[misc]
    plain: Plain | None = None

    async def do_WritePropertyRequest(self, apdu: Any) -> None:
        if self.plain is not None:
            self.plain.priorities.append((str(apdu.objectIdentifier), apdu.priority))
        await super().do_WritePropertyRequest(apdu)


class _Input(OutOfService, AnalogInputObject):  # type: ignore[misc]
    """bacpypes3's out-of-service rule: the present value is writable only while out of service."""


PLAIN_POINTS: list[dict[str, Any]] = [
    {"id": "setpoint", "object": "analog-value,1", "quantity": "temperature", "unit": "degC", "writable": True},
    {"id": "plain", "object": "analog-value,2", "quantity": "other", "writable": True},
    {"id": "input", "object": "analog-input,1", "quantity": "other", "writable": True},
    {"id": "input_oos", "object": "analog-input,1", "property": "out-of-service", "quantity": "other", "kind": "state", "writable": True},
    {"id": "identity", "object": "analog-value,2", "property": "object-identifier", "quantity": "other", "kind": "state", "writable": True},
]  # fmt: skip
P_SETPOINT, P_PLAIN, P_INPUT, P_INPUT_OOS, P_IDENTITY = range(5)


@pytest.fixture
async def plain() -> AsyncIterator[Plain]:
    port = free_udp_port()
    device = DeviceObject(objectIdentifier=("device", 1234), objectName="plain-device", vendorIdentifier=999)
    network = NetworkPortObject(f"127.0.0.1/24:{port}", objectIdentifier=("network-port", 1), objectName="NP-1")
    app = _RecordingApplication.from_object_list([device, network])
    common: dict[str, Any] = {"statusFlags": [0, 0, 0, 0], "covIncrement": 0.0}
    app.add_object(
        AnalogValueObjectCmd(
            objectIdentifier=("analog-value", 1), objectName="sp", presentValue=20.0, units="degrees-celsius", **common
        )
    )
    app.add_object(
        AnalogValueObject(
            objectIdentifier=("analog-value", 2), objectName="reg", presentValue=1.0, units="no-units", **common
        )
    )
    app.add_object(
        _Input(
            objectIdentifier=("analog-input", 1),
            objectName="in",
            presentValue=5.0,
            units="no-units",
            outOfService=False,
            **common,
        )
    )
    app.add_object(
        AnalogValueObject(
            objectIdentifier=("analog-value", 3001), objectName="reset", presentValue=0.0, units="no-units", **common
        )
    )
    record = Plain(app, f"127.0.0.1:{port}")
    app.plain = record
    try:
        yield record
    finally:
        app.close()


@pytest.fixture
async def plain_driver(plain: Plain, runtime: BacnetRuntime) -> AsyncIterator[BacnetDriver]:
    driver = await make_plain_driver(plain, runtime)
    try:
        yield driver
    finally:
        await driver.stop()


async def make_plain_driver(plain: Plain, runtime: BacnetRuntime, **extra: Any) -> BacnetDriver:
    device = parse_device(
        {
            "id": "plain",
            "driver": "bacnet",
            "address": plain.address,
            "device_instance": 1234,
            "timeout": TIMEOUT,
            "points": PLAIN_POINTS,
            **extra,
        }
    )
    ctx = DriverContext(
        device=device,
        points=list(device.resolved_points),
        log=structlog.get_logger(),
        bus=Bus("plain"),
        state=StateStore(None),
        runtime=runtime,
    )
    driver = BacnetDriver(ctx)
    await driver.start()
    return driver


async def test_plain_device_priority_write_slot_and_relinquish(plain: Plain, plain_driver: BacnetDriver) -> None:
    d = plain_driver
    assert present(await d.write(WriteRequest(P_SETPOINT, 25.5))) == 25.5
    assert (last(d).priority, last(d).slot) == (8, 25.5)
    assert present(await d.write(WriteRequest(P_SETPOINT, 22.0, priority=4))) == 22.0
    assert present(await d.write(WriteRequest(P_SETPOINT, None, priority=4))) == 25.5
    assert (last(d).priority, last(d).slot) == (4, None)
    # The relinquish default of a bacpypes3 commandable object is its initial value.
    assert present(await d.write(WriteRequest(P_SETPOINT, None))) == 20.0
    assert (last(d).priority, last(d).slot) == (8, None)
    assert plain.priorities == [
        ("analog-value,1", 8),
        ("analog-value,1", 4),
        ("analog-value,1", 4),
        ("analog-value,1", 8),
    ]
    assert (await d.read()).values[P_SETPOINT] == 20.0


async def test_plain_device_non_commandable_objects(plain: Plain, plain_driver: BacnetDriver) -> None:
    d = plain_driver
    # A value object without a priority array: the write works, the read-back shows no slot,
    # and the next write sends no priority.
    assert present(await d.write(WriteRequest(P_PLAIN, 7.0))) == 7.0
    assert last(d).priority is None
    assert last(d).as_dict() == {"object": "analog-value,2", "property": "present-value", "value": 7.0}
    assert present(await d.write(WriteRequest(P_PLAIN, 8.0))) == 8.0
    with pytest.raises(ValueError, match="not commandable"):
        await d.write(WriteRequest(P_PLAIN, None))
    # An input: refused while in service, written (without a priority) once out of service.
    with pytest.raises(
        WriteRefused, match="analog-input,1 present-value refused: error: property: write-access-denied"
    ):
        await d.write(WriteRequest(P_INPUT, 3.0))
    assert present(await d.write(WriteRequest(P_INPUT_OOS, True))) is True
    assert present(await d.write(WriteRequest(P_INPUT, 3.0))) == 3.0
    assert plain.priorities == [
        ("analog-value,2", 8),
        ("analog-value,2", None),
        ("analog-input,1", None),
        ("analog-input,1", None),
        ("analog-input,1", None),
    ]


async def test_plain_device_refuses_a_value_out_of_range(plain: Plain, plain_driver: BacnetDriver) -> None:
    # bacpypes3 answers value-out-of-range to an object identifier of another object type.
    with pytest.raises(WriteRefused, match="object-identifier refused: error: property: value-out-of-range"):
        await plain_driver.write(WriteRequest(P_IDENTITY, "binary-value,2"))
    assert present(await plain_driver.write(WriteRequest(P_IDENTITY, "analog-value,2"))) == "analog-value,2"


async def test_plain_device_runs_the_bcpme_reset_action(plain: Plain, runtime: BacnetRuntime) -> None:
    d = await make_plain_driver(plain, runtime, profile="schneider-bcpme-bacnet", points=[])
    try:
        actions = d.config.resolved_actions
        # A plain (non-commandable) analog value, as a command register may be: no slot to report.
        assert await d.action("reset_maxima", actions["reset_maxima"], {}) == [
            {"object": "analog-value,3001", "property": "present-value", "value": 29877.0}
        ]
        assert await d.action("reset_energy", actions["reset_energy"], {}) == [
            {"object": "analog-value,3001", "property": "present-value", "value": 10203.0}
        ]
        assert plain.priorities == [("analog-value,3001", 8), ("analog-value,3001", None)]
    finally:
        await d.stop()


async def test_plain_device_silent_is_a_timeout_in_bounds(plain: Plain, plain_driver: BacnetDriver) -> None:
    d = plain_driver
    assert present(await d.write(WriteRequest(P_SETPOINT, 21.0))) == 21.0
    plain.app.close()
    started = time.monotonic()
    with pytest.raises(DeviceTimeout, match="no response"):
        await d.write(WriteRequest(P_SETPOINT, 22.0))
    assert time.monotonic() - started < SILENT_BOUND
