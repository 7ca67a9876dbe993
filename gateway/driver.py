"""The driver API every protocol implements, and the errors a driver may raise.

Contract (the core owns everything but the protocol):

* The core builds one driver instance per device: ``factory(ctx)`` with a :class:`DriverContext`.
  ``ctx.points`` is the device's validated protocol points (the driver's own point model), in the
  order the core expects values back.
* ``await driver.start()`` once; it may connect lazily. It must not block for long and must not
  raise for an unreachable device (that is a failed poll later, not a start-up error).
* ``await driver.read()`` performs one poll and returns :class:`RawReadings` whose ``values`` are
  aligned with ``ctx.points``. A point that could not be read or decoded holds a
  :class:`PointError` in its slot. When the device as a whole did not answer, raise
  :class:`DeviceError` (or :class:`DeviceTimeout`); the core marks every point bad, counts the
  failure and handles availability and backoff. Drivers never scale, schedule, buffer or publish.
* Push sources (BACnet COV, SNMP traps, DLMS pushes) call ``ctx.emit(...)`` / ``ctx.emit_event``
  from their own tasks, which the driver starts in ``start()`` and cancels in ``stop()``.
* A device configured with no points whose driver implements ``discover()`` gets its points
  from the device: the core starts a driver without points, calls ``discover()``, stops it and
  builds a new driver (and normaliser) with the discovered points (gateway/discovery.py). A
  driver's points never change after it was built.
* State a driver must keep across restarts goes through the core. A value that only becomes
  true once this poll's readings are safe (a profile cursor) travels in ``RawReadings.commit``:
  the core stores it durably after the publisher has the poll's message on disk or acknowledged
  by the broker, in poll order, so a crash can cause a re-read but never a hole. A value that
  must be durable before it is used (a DLMS invocation counter reservation) is written with
  ``ctx.state.commit()`` at once.
* ``await driver.stop()`` releases the device cleanly (DLMS release, COV unsubscribe, ...).
* Commands (docs/commands.md): the core checks a request against the point's limits, converts
  the engineering value to raw and calls ``await driver.write(WriteRequest)``, which writes and
  reads back inside one bus transaction; named actions (``ActionConfig`` subclass of the driver)
  go to ``await driver.action(name, spec, args)``. A refusal is ``WriteRefused``.
* Nothing may escape ``read()`` other than :class:`DeviceError` and ``asyncio.CancelledError``;
  the core treats anything else as a driver bug, logs it once and marks the poll failed.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from gateway.points import Quality

if TYPE_CHECKING:
    import structlog

    from gateway.buses import Bus
    from gateway.config import DeviceConfig, PointConfig
    from gateway.models import ActionConfig
    from gateway.state import StateStore


class DriverError(Exception):
    """Base of the errors a driver may raise."""


class DeviceError(DriverError):
    """The device as a whole failed this poll (no answer, connection refused, association lost)."""


class DeviceTimeout(DeviceError):
    """The device did not answer within its timeout."""


class WriteRefused(DeviceError):
    """The device answered a write or an action with a refusal (exception code, error status, DAR)."""


class PointError:
    """A per-point failure, placed in the point's slot of ``RawReadings.values``.

    Not an exception: it is a value, so that one bad point costs nothing more than a slot.
    """

    __slots__ = ("message", "quality")

    def __init__(self, message: str, quality: Quality = Quality.BAD) -> None:
        self.message = message
        self.quality = quality

    def __repr__(self) -> str:
        return f"PointError({self.message!r}, {self.quality.value})"


class NoValue:
    """The slot of a point that has nothing new this poll (a load-profile column with no new entry).

    The normaliser publishes nothing for it: not a reading, not a bad one.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_VALUE"


NO_VALUE = NoValue()

# A raw value as a driver returns it: a number, bool or text, a PointError, or NO_VALUE.
RawValue = int | float | bool | str | None | PointError | NoValue


@dataclass(slots=True)
class RawReadings:
    """One poll's result, aligned with ``ctx.points``.

    ``timestamps``: the device's own time (epoch ms) per point where it gives one, else None.
    ``exponents``: a power of ten per point supplied by the protocol (a DLMS scaler), applied
    exactly by the normaliser.
    ``qualities``: a quality per point the device itself reports (BACnet status-flags); None in a
    slot, or no list, means good when the value decoded.
    ``series``: extra time-stamped values of a point, as ``(point_index, raw, ts_ms)``: profile
    buffer entries, which are published with the device's timestamps.
    """

    values: list[RawValue]
    timestamps: list[int | None] | None = None
    exponents: list[int | None] | None = None
    qualities: list[Quality | None] | None = None
    series: list[tuple[int, RawValue, int]] = field(default_factory=list)
    commit: dict[str, Any] | None = None  # driver state to store once these readings are safe
    # Events read in this poll (a DLMS event log); published on `events` before the readings and
    # covered by `commit` like them, unlike ctx.emit_event.
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """One point write, as the core hands it to a driver."""

    index: int  # the point's slot in ctx.points
    raw: RawValue  # the protocol value; None: relinquish (BACnet NULL)
    priority: int | None = None  # BACnet write priority (1-16)


@dataclass(frozen=True, slots=True)
class ReadBack:
    """A write's read-back where the value alone does not tell whether the write took.

    BACnet: a present value is what the priority array resolves to, so a write at 8 under an
    active priority 4 reads back the priority-4 value; ``slot`` is the written priority's entry
    read back (None: NULL, relinquished) and is what the core compares with what it wrote.
    """

    value: RawValue
    priority: int
    slot: RawValue = None


@dataclass(frozen=True, slots=True)
class Pushed:
    """A value the device pushed outside a poll (a COV notification), for point ``index``.

    ``ts``: the device's time (epoch ms) or None for the arrival time; ``quality``: what the
    device says of the value (BACnet status flags), None for good.
    """

    index: int
    value: RawValue
    ts: int | None = None
    quality: Quality | None = None


@dataclass(slots=True)
class DriverContext:
    """What the core hands a driver instance."""

    device: DeviceConfig
    points: Sequence[PointConfig]
    log: structlog.typing.FilteringBoundLogger
    bus: Bus
    state: StateStore
    runtime: DriverRuntime | None = None
    emit: Callable[[list[Pushed]], None] = lambda _values: None
    emit_event: Callable[[dict[str, Any]], None] = lambda _event: None


CfgT = TypeVar("CfgT", bound="DeviceConfig")
RtT = TypeVar("RtT", bound="DriverRuntime | None")


class Driver(abc.ABC, Generic[CfgT, RtT]):
    """Base class of a protocol driver; see the module docstring for the contract.

    ``CfgT`` is the driver's device config model, ``RtT`` its kind's shared runtime class (None
    for kinds without one): the core builds the runtime named in the registry, so the driver
    gets it typed instead of checking it.
    """

    def __init__(self, ctx: DriverContext) -> None:
        self.ctx = ctx

    @property
    def config(self) -> CfgT:
        return self.ctx.device  # type: ignore[return-value]

    @property
    def runtime(self) -> RtT:
        return self.ctx.runtime  # type: ignore[return-value]

    async def start(self) -> None:
        """Prepare the driver; connect lazily if the protocol allows."""

    @abc.abstractmethod
    async def read(self) -> RawReadings:
        """Poll the device once."""

    async def stop(self) -> None:
        """Release the device and any tasks the driver started."""

    async def write(self, request: WriteRequest) -> RawValue | ReadBack:
        """Write one writable point and read it back in the same bus transaction; returns the raw read-back.

        ``request.raw`` is already checked and converted by the core (the inverse of the point's
        normalisation); None means "relinquish" where the protocol has it (BACnet NULL at a
        priority). Return the value read back (a PointError when it could not be read back).
        Raise WriteRefused when the device refused, DeviceError/DeviceTimeout when it did not
        answer. The core never calls this for a point that is not `writable`.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot write")

    async def action(self, name: str, spec: ActionConfig, args: Mapping[str, Any]) -> Any:
        """Run a named action (``spec``: the driver's own action model, ``args`` already checked).

        Returns what the device answered, JSON-ready (None when nothing). Raises like ``write``.
        """
        raise NotImplementedError(f"{type(self).__name__} has no actions")

    async def discover(self) -> list[dict[str, Any]]:
        """Ask the device what it has (BACnet object list, DLMS association, SNMP walk).

        Returns point dicts in the driver's point-model form, ready to be written out as a
        profile. Self-describing devices configured with no points get their points from here.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot discover points")

    def handoff(self) -> Any:
        """What discovery learnt besides the points, for the driver rebuilt with them (None: nothing).

        A Modbus device identified by FC 43 gets its profile's planning settings (unreadable
        ranges, request sizes) this way: they belong to the device, not to any point.
        """
        return None

    def adopt(self, handoff: Any) -> None:
        """Take over what the discovering driver learnt (`handoff()`); called before `start()`."""


class DriverRuntime:
    """A per-kind shared runtime (one BACnet/IP stack, one SNMP engine and trap listener).

    The core creates it when at least one device of the kind is configured, starts it before the
    drivers and stops it after them. ``section`` is the kind's top-level config section or None.
    """

    def __init__(self, section: Any, log: structlog.typing.FilteringBoundLogger) -> None:
        self.section = section
        self.log = log

    async def start(self) -> None:
        """Start shared resources."""

    async def stop(self) -> None:
        """Stop shared resources."""

    def counters(self) -> dict[str, float]:
        """Counters for /metrics, e.g. {"notifications_received": 12} -> edgegw_<kind>_<name>_total."""
        return {}
