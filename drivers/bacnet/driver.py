"""The BACnet/IP driver: ReadPropertyMultiple polls packed to the device's APDU size, COV, discovery, commands."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bacpypes3.apdu import IAmRequest
from bacpypes3.pdu import Address

from drivers.bacnet.client import BacnetClient, BacnetError, Failure, encode_value, make_address, to_scalar
from drivers.bacnet.codec import (
    BINARY_TYPES,
    MEASUREMENT_TYPES,
    UNITS_TYPES,
    ObjectInfo,
    canonical_object,
    commandable,
    discovered_points,
    object_type_of,
    plan_reads,
    status_quality,
    status_text,
)
from drivers.bacnet.config import BacnetAction, BacnetDevice, BacnetPoint, BacnetSection
from drivers.bacnet.runtime import BacnetRuntime
from gateway.driver import (
    DeviceError,
    DeviceTimeout,
    Driver,
    DriverContext,
    PointError,
    Pushed,
    RawReadings,
    RawValue,
    ReadBack,
    WriteRefused,
    WriteRequest,
)
from gateway.models import ActionConfig
from gateway.points import Quality

PRESENT_VALUE = "present-value"
STATUS_FLAGS = "status-flags"
PRIORITY_ARRAY = "priority-array"
WILDCARD_DEVICE = 4194303
_SAFE_APDU = 480  # what every BACnet device (MS/TP included) accepts, until the device says more
_SEGMENTED_TX = ("segmented-both", "segmented-transmit")
_SEGMENTED_RX = ("segmented-both", "segmented-receive")


@dataclass(slots=True)
class _CovObject:
    """One subscribed object: its points, the subscription's state and the last notified values."""

    points: list[int]
    active_until: float = 0.0  # monotonic; 0 = not subscribed
    renew_at: float = 0.0
    failures: int = 0
    value: Any = None
    flags: list[int] | None = None
    received: bool = False


@dataclass(slots=True)
class _Plan:
    """Per point: (object, property); per subscribed object: its points."""

    slots: list[tuple[str, str]] = field(default_factory=list)
    cov: dict[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WriteReadBack:
    """What a WriteProperty left on the device, read back in the same bus transaction.

    ``value``: the property read back (for a present value: what the priority array resolves to,
    which a higher-priority command may keep from being the value written). ``priority``: the
    priority written at, None when the property is not commanded. ``slot``: that priority's
    priority-array entry read back, None when NULL (relinquished); a PointError when it could
    not be read; meaningless when ``priority`` is None.
    """

    object: str
    property: str
    value: RawValue
    priority: int | None = None
    slot: RawValue = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the value read back and, when commanded, the priority and its slot."""
        out: dict[str, Any] = {"object": self.object, "property": self.property}
        out.update(_json_value("value", self.value))
        if self.priority is not None:
            out["priority"] = self.priority
            out.update(_json_value("priority_slot", self.slot))
        return out


def _json_value(key: str, value: RawValue) -> dict[str, Any]:
    if isinstance(value, PointError):
        return {key: None, f"{key}_error": value.message}
    return {key: value}


def build_plan(points: Sequence[BacnetPoint], device_cov: bool) -> _Plan:
    plan = _Plan()
    for i, p in enumerate(points):
        plan.slots.append((p.object, p.property))
        wants_cov = p.cov if p.cov is not None else device_cov
        # A COV notification carries present-value and status-flags only.
        if wants_cov and p.property == PRESENT_VALUE:
            plan.cov.setdefault(p.object, []).append(i)
    return plan


class BacnetDriver(Driver[BacnetDevice, BacnetRuntime]):
    """One BACnet device (local or routed) on the gateway's shared BACnet/IP stack."""

    def __init__(self, ctx: DriverContext) -> None:
        super().__init__(ctx)
        # None only for a driver built outside the core (a one-off read in a test): start() makes one.
        self._runtime: BacnetRuntime | None = self.runtime
        self._own_runtime = False
        self._address: Address = make_address(self.config.bacnet_address())
        self._plan = build_plan(self._points(), self.config.cov)
        self._info_read = False
        self._max_apdu = self.config.max_apdu or _SAFE_APDU
        self._segmentation = "no-segmentation"
        self._rpm = self.config.rpm != "off"
        self._max_objects = 200
        self._cov: dict[str, _CovObject] = {}
        self._cov_pid: int | None = None
        self._cov_task: asyncio.Task[None] | None = None
        self._added_flags: set[str] = set()
        self._said: set[str] = set()
        # Value objects whose read-back showed no priority array: written without a priority.
        self._not_commandable: set[str] = set()
        self.last_write: WriteReadBack | None = None  # the last write's read-back, slot included

    # -- life cycle ----------------------------------------------------------------------------

    def _points(self) -> list[BacnetPoint]:
        return [p for p in self.ctx.points if isinstance(p, BacnetPoint)]

    async def start(self) -> None:
        if self._runtime is None:
            # No shared stack (a one-off `edgegw read`, a test): an ephemeral port of our own.
            self._runtime = BacnetRuntime(BacnetSection(local_address="0.0.0.0:0"), self.ctx.log)
            self._own_runtime = True
            await self._runtime.start()
        self._runtime.fit_timeout(self.config.timeout)
        if self.config.network is not None:
            await self._runtime.add_route(self.config.network, self.config.address)
        if self._cov_task is None:
            self._setup_cov()

    async def stop(self) -> None:
        await self._stop_cov()
        if self._own_runtime and self._runtime is not None:
            await self._runtime.stop()

    async def replan(self) -> None:
        await self._stop_cov()
        self._plan = build_plan(self._points(), self.config.cov)
        self._setup_cov()

    def _client(self) -> BacnetClient:
        assert self._runtime is not None, "start() first"
        return self._runtime.ready()

    def _say_once(self, key: str, message: str, **kw: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            self.ctx.log.warning(message, **kw)

    # -- device information ----------------------------------------------------------------------

    def _device_ref(self) -> str:
        instance = self.config.device_instance
        return f"device,{instance if instance is not None else WILDCARD_DEVICE}"

    async def _ensure_info(self, client: BacnetClient) -> None:
        """Read max-apdu-length-accepted and segmentation-supported once (RPM support too, in auto)."""
        if self._info_read:
            return
        timeout = self.config.timeout
        dev = self._device_ref()
        try:
            max_apdu = await client.read_property(self._address, dev, "max-apdu-length-accepted", timeout)
        except BacnetError as exc:
            if exc.no_response:
                raise DeviceTimeout(f"no response from {self._address}") from None
            self._say_once(
                "info",
                "cannot read the device's max APDU; assuming 480 bytes, no segmentation",
                address=str(self._address),
                error=str(exc),
            )
            self._info_read = True
            return
        except ValueError as exc:
            self._say_once("info", "malformed max APDU from the device; assuming 480 bytes", error=str(exc))
            self._info_read = True
            return
        if self.config.max_apdu is None and isinstance(max_apdu, int) and max_apdu >= 50:
            self._max_apdu = int(max_apdu)
        with contextlib.suppress(BacnetError, ValueError):
            self._segmentation = str(await client.read_property(self._address, dev, "segmentation-supported", timeout))
        if self.config.rpm == "auto":
            with contextlib.suppress(BacnetError, ValueError):
                services = await client.read_property(self._address, dev, "protocol-services-supported", timeout)
                bits = list(services)
                # Bit 14 is readPropertyMultiple (BACnetServicesSupported).
                if len(bits) > 14 and not bits[14]:
                    self._rpm = False
                    self.ctx.log.info("device does not support ReadPropertyMultiple; using ReadProperty")
        self._info_read = True
        if self.config.device_instance is not None:
            await self._remember_device(client, self.config.device_instance)

    async def _remember_device(self, client: BacnetClient, instance: int) -> None:
        """Give bacpypes3's device cache the device's limits, for its segmentation decisions."""
        iam = IAmRequest(
            iAmDeviceIdentifier=("device", instance),
            maxAPDULengthAccepted=self._max_apdu,
            segmentationSupported=self._segmentation,
            vendorID=0,
        )
        iam.pduSource = self._address
        with contextlib.suppress(Exception):
            await client.app.device_info_cache.set_device_info(iam)

    def _budget(self) -> int:
        assert self._runtime is not None
        section = self._runtime.section
        budget = min(self._max_apdu, section.max_apdu)
        if self._segmentation in _SEGMENTED_TX and section.segmentation in _SEGMENTED_RX:
            budget *= min(section.max_segments, 4)
        return budget

    # -- polling ---------------------------------------------------------------------------------

    async def read(self) -> RawReadings:
        # One request at a time to the device: a command waits for the poll, a poll for the command.
        async with self.ctx.bus.transaction():
            return await self._read()

    async def _read(self) -> RawReadings:
        points = self._points()
        client = self._client()
        await self._ensure_info(client)
        now = time.monotonic()
        served: set[int] = set()
        for st in self._cov.values():
            if st.active_until > now and st.received:
                served.update(st.points)
        wanted: dict[str, list[str]] = {}
        for i, (obj, prop) in enumerate(self._plan.slots):
            if i not in served:
                props = wanted.setdefault(obj, [])
                if prop not in props:
                    props.append(prop)
        if not wanted and self._cov:
            # Everything comes by COV: still ask the device something, so that a dead device is seen.
            obj = next(iter(self._cov))
            wanted[obj] = [PRESENT_VALUE]
        self._added_flags = set()
        if self._rpm:
            for obj, props in wanted.items():
                if PRESENT_VALUE in props and STATUS_FLAGS not in props:
                    props.append(STATUS_FLAGS)
                    self._added_flags.add(obj)
        results = await self._read_all(client, list(wanted.items()))

        values: list[RawValue] = []
        qualities: list[Quality | None] = []
        for i, (obj, prop) in enumerate(self._plan.slots):
            if i in served:
                st = self._cov[obj]
                value, quality = self._from_flags(st.value, st.flags)
            else:
                value, quality = self._point_value(results, obj, prop)
            values.append(value)
            qualities.append(quality)
        if len(values) != len(points):  # defensive: the plan is built from these points
            raise DeviceError("internal: read plan out of date")
        return RawReadings(values=values, qualities=qualities if any(q is not None for q in qualities) else None)

    def _point_value(self, results: dict[tuple[str, str], Any], obj: str, prop: str) -> tuple[RawValue, Quality | None]:
        if (obj, prop) not in results:
            return PointError("not read"), None
        value = results[(obj, prop)]
        if isinstance(value, Failure):
            return PointError(value.message), None
        flags = None
        if prop == PRESENT_VALUE:
            f = results.get((obj, STATUS_FLAGS))
            if isinstance(f, list):
                flags = [int(b) for b in f]
        return self._from_flags(value, flags)

    @staticmethod
    def _from_flags(value: Any, flags: list[int] | None) -> tuple[RawValue, Quality | None]:
        quality = status_quality(flags)
        if quality is Quality.BAD:
            return PointError(f"status-flags: {status_text(flags or [])}"), None
        if isinstance(value, Failure):
            return PointError(value.message), None
        return to_scalar(value), quality

    async def _read_all(self, client: BacnetClient, specs: list[tuple[str, list[str]]]) -> dict[tuple[str, str], Any]:
        results: dict[tuple[str, str], Any] = {}
        state = {"answered": False}
        if self._rpm:
            chunks = plan_reads(specs, self._budget(), self._max_objects)
            for chunk in chunks:
                await self._read_chunk(client, [specs[i] for i in chunk], results, state)
        else:
            await self._read_single(client, specs, results, state)
        return results

    def _no_response(self, state: dict[str, bool]) -> Failure:
        """A request went unanswered: the device is down if nothing answered yet in this poll."""
        if not state["answered"]:
            raise DeviceTimeout(f"no response from {self._address}")
        return Failure("no response")

    async def _read_chunk(
        self,
        client: BacnetClient,
        specs: list[tuple[str, list[str]]],
        results: dict[tuple[str, str], Any],
        state: dict[str, bool],
    ) -> None:
        if not self._rpm:
            await self._read_single(client, specs, results, state)
            return
        try:
            answer = await client.read_multiple(self._address, specs, self.config.timeout)
        except BacnetError as exc:
            if exc.no_response:
                failure = self._no_response(state)
                for obj, props in specs:
                    for prop in props:
                        results[(obj, prop)] = failure
                return
            state["answered"] = True
            if exc.unsupported_service and self.config.rpm == "on":
                for obj, props in specs:
                    for prop in props:
                        results[(obj, prop)] = Failure(f"ReadPropertyMultiple refused ({exc}); set rpm: auto or off")
                return
            if exc.unsupported_service:
                self._rpm = False
                self.ctx.log.info("device rejected ReadPropertyMultiple; using ReadProperty", error=str(exc))
                await self._read_single(client, self._without_flags(specs), results, state)
                return
            if exc.too_big:
                if len(specs) > 1:
                    half = len(specs) // 2
                    self._max_objects = max(1, half)
                    self._say_once(
                        "too-big",
                        "device refused a request as too large; sending smaller ones",
                        objects=len(specs),
                        error=str(exc),
                    )
                    await self._read_chunk(client, specs[:half], results, state)
                    await self._read_chunk(client, specs[half:], results, state)
                    return
                await self._read_single(client, self._without_flags(specs), results, state)
                return
            if exc.kind == "error":
                # An Error for the whole request (e.g. no object of it exists): ask one by one,
                # so that each point gets its own answer.
                await self._read_single(client, self._without_flags(specs), results, state)
                return
            for obj, props in specs:
                for prop in props:
                    results[(obj, prop)] = Failure(str(exc))
            return
        state["answered"] = True
        results.update(answer)

    def _without_flags(self, specs: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
        """The same reads minus the status-flags this driver added (ReadProperty mode reads values only)."""
        return [
            (obj, [p for p in props if p != STATUS_FLAGS] if obj in self._added_flags else props)
            for obj, props in specs
        ]

    async def _read_single(
        self,
        client: BacnetClient,
        specs: list[tuple[str, list[str]]],
        results: dict[tuple[str, str], Any],
        state: dict[str, bool],
    ) -> None:
        for obj, props in specs:
            for prop in props:
                try:
                    results[(obj, prop)] = await client.read_property(self._address, obj, prop, self.config.timeout)
                    state["answered"] = True
                except BacnetError as exc:
                    if exc.no_response:
                        results[(obj, prop)] = self._no_response(state)
                        continue
                    state["answered"] = True
                    results[(obj, prop)] = Failure(str(exc), exc.reason if exc.kind == "error" else None)
                except ValueError as exc:
                    state["answered"] = True
                    results[(obj, prop)] = Failure(str(exc))

    # -- commands --------------------------------------------------------------------------------

    async def write(self, request: WriteRequest) -> RawValue | ReadBack:
        """WriteProperty at the request's priority (else the device's), then read back value and slot."""
        point = self._points()[request.index]
        priority = self._priority(point.object, point.property, request.priority, request.raw is None)
        value = encode_value(point.object, point.property, request.raw)
        async with self.ctx.bus.transaction():
            client = self._client()
            await self._ensure_info(client)
            await self._write(client, point.object, point.property, value, priority)
            back = await self._read_back(client, point.object, point.property, priority)
        self.last_write = back
        self.ctx.log.debug("write read back", point=point.id, **back.as_dict())
        # A commanded property is judged by its slot: a higher priority may hold the present value.
        return back.value if back.priority is None else ReadBack(back.value, back.priority, back.slot)

    async def action(self, name: str, spec: ActionConfig, args: Mapping[str, Any]) -> Any:
        """The action's WriteProperty steps in order, each read back; a list of what each left behind.

        Every step is encoded before the first is sent, so a value that cannot be written stops
        the action before the device sees any of it. A refused step stops the rest; the error
        says which step, and that the steps before it were written.
        """
        if not isinstance(spec, BacnetAction):
            raise TypeError(f"action {name!r} is not a BACnet action")
        steps: list[tuple[str, str, Any, int | None]] = []
        for i, step in enumerate(spec.writes, start=1):
            raw = step.value if step.arg is None else args.get(step.arg, spec.args[step.arg].default)
            if step.arg is not None and raw is None:
                raise ValueError(f"action {name!r} step {i}: argument {step.arg!r} has no value")
            priority = self._priority(step.object, step.property, step.priority, raw is None)
            steps.append((step.object, step.property, encode_value(step.object, step.property, raw), priority))
        done: list[dict[str, Any]] = []
        async with self.ctx.bus.transaction():
            client = self._client()
            await self._ensure_info(client)
            for i, (obj, prop, value, priority) in enumerate(steps, start=1):
                try:
                    await self._write(client, obj, prop, value, priority)
                except DeviceError as exc:
                    before = {1: "", 2: "; step 1 was written"}.get(i, f"; steps 1-{i - 1} were written")
                    message = f"action {name!r} step {i} of {len(steps)}: {exc}{before}"
                    raise type(exc)(message) from None
                back = await self._read_back(client, obj, prop, priority)
                done.append(back.as_dict())
        self.ctx.log.debug("action done", action=name, writes=done)
        return done

    def _priority(self, obj: str, prop: str, requested: int | None, relinquish: bool) -> int | None:
        """The priority to write at; None for a property that is not commanded (none is sent then)."""
        if requested is not None and not 1 <= requested <= 16:
            raise ValueError(f"priority {requested} is out of range (1-16)")
        if commandable(obj, prop) is False or obj in self._not_commandable:
            if relinquish:
                raise ValueError(f"{prop} of {obj} is not commandable: there is no priority to relinquish")
            return None
        return requested if requested is not None else self.config.write_priority

    async def _write(self, client: BacnetClient, obj: str, prop: str, value: Any, priority: int | None) -> None:
        at = f" at priority {priority}" if priority is not None else ""
        try:
            await client.write_property(self._address, obj, prop, value, priority, self.config.timeout)
        except BacnetError as exc:
            if exc.no_response:
                raise DeviceTimeout(f"no response from {self._address} to WriteProperty {obj} {prop}{at}") from None
            raise WriteRefused(f"WriteProperty {obj} {prop}{at} refused: {exc}") from None

    async def _read_back(self, client: BacnetClient, obj: str, prop: str, priority: int | None) -> WriteReadBack:
        """The property and, for a command, its priority-array slot: one ReadPropertyMultiple, or two reads."""
        slot_prop = f"{PRIORITY_ARRAY}[{priority}]" if priority is not None and prop == PRESENT_VALUE else None
        props = [prop] if slot_prop is None else [prop, slot_prop]
        results: dict[tuple[str, str], Any] = {}
        # The write was answered: a read-back that is not costs its value only, not a device timeout.
        state = {"answered": True}
        if self._rpm:
            await self._read_chunk(client, [(obj, props)], results, state)
        else:
            await self._read_single(client, [(obj, props)], results, state)
        value = self._back_value(obj, results.get((obj, prop)))
        if slot_prop is None:
            return WriteReadBack(obj, prop, value)
        found = results.get((obj, slot_prop))
        if isinstance(found, Failure) and found.unknown_property:
            # No priority array: a value object that is not commandable. The device ignored the
            # priority (clause 15.9.1.1.5); later writes send none.
            self._not_commandable.add(obj)
            return WriteReadBack(obj, prop, value)
        return WriteReadBack(obj, prop, value, priority, self._back_value(obj, found))

    @staticmethod
    def _back_value(obj: str, found: Any) -> RawValue:
        if found is None:
            return PointError("not read back")
        if isinstance(found, Failure):
            return PointError(f"read-back: {found.message}")
        value = to_scalar(found)
        # A binary slot is a bare enumeration (1/0); the present value decodes as a bool.
        if object_type_of(obj) in BINARY_TYPES and type(value) is int:
            return value == 1
        return value

    # -- COV -------------------------------------------------------------------------------------

    def _setup_cov(self) -> None:
        self._cov = {obj: _CovObject(points=idx) for obj, idx in self._plan.cov.items()}
        if not self._cov:
            return
        assert self._runtime is not None
        self._cov_pid = self._runtime.register_cov(self._address, self._on_cov)
        self._cov_task = asyncio.create_task(self._cov_loop(), name=f"bacnet-cov:{self.config.id}")

    async def _stop_cov(self) -> None:
        task, self._cov_task = self._cov_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pid, self._cov_pid = self._cov_pid, None
        if pid is None or self._runtime is None:
            return
        active = [obj for obj, st in self._cov.items() if st.active_until > time.monotonic()]
        client = self._runtime.client
        if client is not None and active:
            timeout = min(self.config.timeout, 2.0)

            async def cancel(obj: str) -> None:
                with contextlib.suppress(BacnetError, ValueError):
                    await client.unsubscribe_cov(self._address, obj, pid, timeout)

            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout + 0.5):
                    await asyncio.gather(*(cancel(o) for o in active))
        self._runtime.unregister_cov(self._address, pid)
        for st in self._cov.values():
            st.active_until = 0.0

    async def _cov_loop(self) -> None:
        lifetime = int(self.config.cov_lifetime)
        while True:
            try:
                now = time.monotonic()
                answering = True
                for obj, st in list(self._cov.items()):
                    if st.renew_at > now:
                        continue
                    if answering:
                        answering = await self._subscribe(obj, st, lifetime)
                    else:
                        # The device did not answer this round: do not spend a timeout per object.
                        st.renew_at = now + min(lifetime / 2, 10.0)
                due = min((st.renew_at for st in self._cov.values()), default=now + lifetime)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop must outlive a bug in one round
                self.ctx.log.error("COV loop error", error=f"{type(exc).__name__}: {exc}")
                due = time.monotonic() + 5.0
            await asyncio.sleep(max(0.2, due - time.monotonic()))

    async def _subscribe(self, obj: str, st: _CovObject, lifetime: int) -> bool:
        """Subscribe (or renew); False when the device did not answer at all."""
        pid = self._cov_pid
        if pid is None:
            return False
        try:
            client = self._client()
            await client.subscribe_cov(
                self._address, obj, pid, self.config.cov_confirmed, lifetime, self.config.timeout
            )
        except (BacnetError, DeviceError, ValueError) as exc:
            st.failures += 1
            st.active_until = 0.0
            st.received = False
            # Retry sooner than the lifetime, backing off for an object that never subscribes.
            retry = min(lifetime / 2, 10.0 * 2 ** min(st.failures - 1, 5))
            st.renew_at = time.monotonic() + retry
            if st.failures == 1:
                self.ctx.log.warning(
                    "COV subscription failed; polling the object", object=obj, error=str(exc), retry_in=round(retry, 1)
                )
            return not (isinstance(exc, DeviceError) or (isinstance(exc, BacnetError) and exc.no_response))
        now = time.monotonic()
        if st.failures:
            self.ctx.log.info("COV subscription established", object=obj)
        st.failures = 0
        st.active_until = now + lifetime
        # Renew well before expiry: a lost renewal still leaves time for another try.
        st.renew_at = now + max(1.0, lifetime * 2 / 3)
        return True

    def _on_cov(self, obj: str, values: list[tuple[str, Any]]) -> None:
        st = self._cov.get(canonical_object(obj))
        if st is None:
            return
        for prop, value in values:
            if prop == PRESENT_VALUE:
                st.value = value
                st.received = True
            elif prop == STATUS_FLAGS and isinstance(value, list):
                st.flags = [int(b) for b in value]
        if not st.received:
            return
        # The notification's status flags count as much as a poll's: out of service is uncertain.
        raw, quality = self._from_flags(st.value, st.flags)
        self.ctx.emit([Pushed(i, raw, quality=quality) for i in st.points])

    # -- discovery -------------------------------------------------------------------------------

    async def discover(self) -> list[dict[str, Any]]:
        """Read the object list, then each measurement object's name, units and description."""
        client = self._client()
        await self._ensure_info(client)
        objects = await self._object_list(client)
        infos = [ObjectInfo(object=o) for o in objects if object_type_of(o) in MEASUREMENT_TYPES]
        specs: list[tuple[str, list[str]]] = []
        for info in infos:
            props = ["object-name", "description"]
            if object_type_of(info.object) in UNITS_TYPES:
                props.append("units")
            specs.append((info.object, props))
        results = await self._read_all(client, specs)
        for info in infos:
            name = results.get((info.object, "object-name"))
            desc = results.get((info.object, "description"))
            units = results.get((info.object, "units"))
            info.name = str(name) if name is not None and not isinstance(name, Failure) else None
            info.description = str(desc) if desc is not None and not isinstance(desc, Failure) else None
            info.units = str(units) if units is not None and not isinstance(units, Failure) else None
        return discovered_points(infos)

    async def _object_list(self, client: BacnetClient) -> list[str]:
        dev = self._device_ref()
        timeout = self.config.timeout
        try:
            whole = await client.read_property(self._address, dev, "object-list", timeout)
            return [canonical_object(str(o)) for o in whole]
        except BacnetError as exc:
            if exc.no_response:
                raise DeviceTimeout(f"no response from {self._address}") from None
            self.ctx.log.info("object-list too large for one answer; reading it item by item", error=str(exc))
        except ValueError as exc:
            raise DeviceError(f"malformed object-list: {exc}") from None
        try:
            count = int(await client.read_property(self._address, dev, "object-list[0]", timeout))
        except (BacnetError, ValueError) as exc:
            raise DeviceError(f"cannot read the object list: {exc}") from None
        indexed = [(dev, [f"object-list[{i}]" for i in range(1, count + 1)])]
        out: list[str] = []
        if self._rpm:
            per = max(1, (self._budget() - 20) // 16)
            results: dict[tuple[str, str], Any] = {}
            state = {"answered": True}
            props = indexed[0][1]
            for start in range(0, len(props), per):
                await self._read_chunk(client, [(dev, props[start : start + per])], results, state)
        else:
            results = {}
            await self._read_single(client, indexed, results, {"answered": True})
        for prop in indexed[0][1]:
            value = results.get((dev, prop))
            if value is None or isinstance(value, Failure):
                continue
            with contextlib.suppress(ValueError):
                out.append(canonical_object(str(value)))
        return out
