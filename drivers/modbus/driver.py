"""The Modbus driver: polls a device's points with the fewest requests, over a shared connection.

Failure rules (see the README for the operator's view):

* An exception reply (illegal address, ...) marks the points of that request bad; the poll goes on.
* A malformed reply (wrong length or function) marks the points of that request bad.
* No answer: a device on one unit id fails the whole poll at once (DeviceTimeout), so a dead unit
  costs the other devices on the bus one timeout per poll. A device spread over several unit ids
  (a BCPME's two panels) marks that unit's points bad, skips its other requests and goes on with
  the other units; it fails only when no unit answered.
* A connection that cannot be opened or is lost fails the poll (DeviceError).

Writes (docs/commands.md; the README's "Commands"): the point's table and size choose the function
(coil: FC 5, or 15; one register: FC 6, or 16; several: FC 16; a `bit`/`bits` view with
`write_function: mask`: FC 22). The value is encoded strictly by the codec, written, and the same
registers are read back in the same bus transaction and decoded as a poll decodes them. An
exception reply is WriteRefused, no answer DeviceTimeout; a read-back that fails is a PointError in
the result, since the write itself went through. Actions send their writes in order in one
transaction, after every value was encoded (a bad argument sends nothing).

Discovery (a device with no points and no profile, `edgegw read --discover`): the device's
identification (FC 43 / MEI 14) picks the shipped profile whose `identity` matches (vendor name
and product code), and its points come back with the profile's default vars, in the device's
numbering, with the profile's function and orders on each point. The profile's planning settings
(unreadable ranges, gaps, request sizes, write_multiple) cannot go on a point: the driver built for
the discovered points adopts them from the discovering one (`handoff`/`adopt`, called by the core's
discover -> rebuild). Calculated points are left out (they belong to the configuration, not to the
device).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

from drivers.modbus.client import (
    GATEWAY_EXCEPTIONS,
    ExceptionReply,
    IdentificationUnsupported,
    LinkError,
    LinkTimeout,
    ModbusLink,
    ReplyError,
    coils_pdu,
    endpoint_of,
    mask_pdu,
    read_identification,
    registers_pdu,
)
from drivers.modbus.codec import (
    BIT_FUNCTIONS,
    BlockDecoder,
    ValueSpec,
    block_decoder,
    decode,
    mask_write,
    spec_of,
    write_spec,
    write_words,
)
from drivers.modbus.config import ModbusAction, ModbusDevice, ModbusPoint, ModbusWrite
from drivers.modbus.planner import Plan, plan_reads
from gateway.driver import (
    DeviceError,
    DeviceTimeout,
    Driver,
    DriverContext,
    PointError,
    RawReadings,
    RawValue,
    WriteRefused,
    WriteRequest,
)
from gateway.interning import interned
from gateway.profiles import Profile, ProfileError, expand, matching_profiles, shipped_profiles

if TYPE_CHECKING:
    from gateway.models import ActionConfig


# Device settings a profile may set that only planning and writes use (not a point's own keys).
_PLAN_KEYS: Final = ("unreadable", "max_gap", "max_registers", "max_bits", "write_multiple")
_POINT_KEYS: Final = ("function", "byte_order", "word_order")
# Identification replies are up to 253 bytes: at 9600 baud that alone is 0.3 s.
_MIN_ID_TIMEOUT = 0.5


def profile_points(profile: Profile, device: ModbusDevice) -> list[dict[str, Any]]:
    """A profile's points for a device that has none of its own: see the module docstring."""
    env: dict[str, Any] = {k: v for k, v in device if isinstance(v, int | float | str) and not isinstance(v, bool)}
    env.update(profile.vars)
    env.update({k: v for k, v in device.profile_vars.items() if k in profile.vars})
    layout = profile.device
    shift = device.numbering - int(layout.get("numbering", 0))
    out: list[dict[str, Any]] = []
    for raw, _file, _line in expand(profile.points, env):
        if "calc" in raw:
            continue
        point = dict(raw)
        if shift and isinstance(point.get("address"), int):
            point["address"] += shift
        for key in _POINT_KEYS:
            if key in layout and key not in point and layout[key] != getattr(device, key):
                point[key] = layout[key]
        out.append(point)
    return out


def plan_settings(profile: Profile, device: ModbusDevice) -> dict[str, Any]:
    """The profile's planning settings, its unreadable ranges in the device's numbering."""
    layout = profile.device
    out: dict[str, Any] = {k: layout[k] for k in _PLAN_KEYS if k in layout}
    shift = device.numbering - int(layout.get("numbering", 0))
    if "unreadable" in out:
        out["unreadable"] = [(int(lo) + shift, int(hi) + shift) for lo, hi in out["unreadable"]]
    return out


@dataclass(frozen=True, slots=True)
class _Read:
    unit: int
    code: int
    start: int
    count: int
    label: str
    slots: tuple[int, ...]
    decoder: BlockDecoder


@dataclass(frozen=True, slots=True)
class _Compiled:
    plan: Plan
    reads: tuple[_Read, ...]
    template: tuple[RawValue, ...]
    units: frozenset[int]


@dataclass(frozen=True, slots=True)
class WritePlan:
    """How one writable point goes on the wire, and how it is read back."""

    unit: int
    table: str  # holding | coil
    address: int  # wire
    spec: ValueSpec
    function: str  # single | multiple | mask
    label: str  # e.g. "unit 1 holding 10", for messages

    def pdu(self, raw: object) -> bytes:
        """The request PDU that writes `raw`; ValueError when the point's type cannot hold it exactly."""
        if self.function == "mask":
            if not isinstance(raw, bool | int):
                raise ValueError(f"{raw!r} is not a bit value")
            offset, and_mask, or_mask = mask_write(self.spec, raw)
            return mask_pdu(self.address + offset, and_mask, or_mask)
        data = write_words(self.spec, raw)
        if self.table == "coil":
            return coils_pdu(self.address, data, self.function == "multiple")
        return registers_pdu(self.address, data, self.function == "multiple")

    @property
    def read_code(self) -> int:
        return 1 if self.table == "coil" else 3

    @property
    def read_count(self) -> int:
        return self.spec.span


def write_plan(point: ModbusPoint, device: ModbusDevice) -> WritePlan:
    """The wire form of a writable point; ValueError for a point that cannot be written."""
    if not point.writable:
        raise ValueError(f"point {point.id!r} is not writable")
    table = point.function or device.function
    if table not in ("holding", "coil"):
        raise ValueError(f"point {point.id!r} is in the {table} table, which Modbus cannot write")
    spec = spec_of(point, device)
    if point.write_function is not None:
        function = point.write_function
    elif spec.span > 1 or device.write_multiple:
        function = "multiple"
    else:
        function = "single"
    address = point.address - device.numbering
    if not 0 <= address <= 65536 - spec.span:
        raise ValueError(f"point {point.id!r}: wire address {address} is outside 0-65535")
    unit = point.unit_id if point.unit_id is not None else device.unit
    return WritePlan(unit, table, address, spec, function, f"unit {unit} {table} {point.address}")


def action_request(
    write: ModbusWrite, device: ModbusDevice, args: Mapping[str, Any], spec: ModbusAction
) -> tuple[int, bytes, str]:
    """(unit, request PDU, label) of one write of an action; ValueError when it cannot be sent."""
    if write.arg is not None:
        value = args.get(write.arg)
        if value is None:
            value = spec.args[write.arg].default
        if value is None:
            raise ValueError(f"argument {write.arg!r} is missing")
    else:
        value = write.value
    unit = write.unit_id if write.unit_id is not None else device.unit + write.unit_offset
    if not 0 <= unit <= 255:
        raise ValueError(f"unit id {unit} (the device's unit {device.unit} {write.unit_offset:+d}) is not 0-255")
    address = write.address - device.numbering
    label = f"unit {unit} {write.function} {write.address}"
    try:
        data = write_words(write_spec(write, device.byte_order, device.word_order), value)
    except ValueError as exc:
        raise ValueError(f"{label}: {exc}") from None
    multiple = write.write_function == "multiple" or (write.write_function is None and device.write_multiple)
    if write.function == "coil":
        return unit, coils_pdu(address, data, multiple or len(data) > 1), label
    return unit, registers_pdu(address, data, multiple or len(data) > 2), label


def compile_plan(points: Sequence[ModbusPoint], device: ModbusDevice) -> _Compiled:
    """The plan plus everything read() needs precomputed: decoders, slots, rejected points."""
    plan = plan_reads(points, device)
    template: list[RawValue] = [None] * len(points)
    for index, reason in plan.rejected:
        template[index] = PointError(f"not read: {reason}")
    reads = []
    for r in plan.reads:
        bits = r.function in BIT_FUNCTIONS
        items = tuple((i, spec_of(points[i], device), off) for i, off in r.items)
        label = f"unit {r.unit} {r.function} {r.start}+{r.count}"
        slots = interned(tuple(i for i, _ in r.items))
        reads.append(_Read(r.unit, r.code, r.start, r.count, label, slots, block_decoder(items, bits)))
    # Without rejected points the template is n Nones: one tuple for every device of that size.
    shared = interned(tuple(template)) if not plan.rejected else tuple(template)
    return _Compiled(plan, tuple(reads), shared, frozenset(r.unit for r in plan.reads))


class ModbusDriver(Driver[ModbusDevice, None]):
    """Modbus TCP, RTU over TCP and RTU on a serial bus; function codes 1-4, writes with 5, 6, 15, 16, 22."""

    def __init__(self, ctx: DriverContext) -> None:
        super().__init__(ctx)
        # The device's settings, with a discovered profile's planning settings over them (adopt).
        self._layout: ModbusDevice = self.config
        self._discovered: dict[str, Any] | None = None
        self._compiled: _Compiled | None = None
        self._link: ModbusLink | None = None
        self._refused: set[str] = set()
        self._write_plans: dict[int, WritePlan] = {}

    @property
    def plan(self) -> Plan:
        return self._compiled_plan().plan

    async def start(self) -> None:
        self._compiled = self._compile()

    async def replan(self) -> None:
        self._compiled = self._compile()

    def handoff(self) -> dict[str, Any] | None:
        """The identified profile's planning settings, for the driver rebuilt with its points."""
        return self._discovered

    def adopt(self, handoff: Any) -> None:
        if handoff:
            self._layout = self.config.model_copy(update=handoff)

    async def stop(self) -> None:
        # The connection belongs to the bus (other devices may share it); the core closes buses.
        self._link = None

    def _compile(self) -> _Compiled:
        return compile_plan(cast(Sequence[ModbusPoint], self.ctx.points), self._layout)

    def _compiled_plan(self) -> _Compiled:
        if self._compiled is None:
            self._compiled = self._compile()
        return self._compiled

    def _get_link(self) -> ModbusLink:
        if self._link is None:
            endpoint = endpoint_of(self.config, self.ctx.bus)
            if endpoint is None:
                raise DeviceError("no connection: give the device `tcp` or a bus with `serial` or `tcp` settings")
            self._link = self.ctx.bus.shared(endpoint.key, lambda: ModbusLink(endpoint))
        return self._link

    async def read(self) -> RawReadings:
        compiled = self._compiled_plan()
        link = self._get_link()
        device = self.config
        timeout, retries, pause = device.timeout, device.retries, device.pause
        bus = self.ctx.bus
        values = list(compiled.template)
        single = len(compiled.units) <= 1
        dead: dict[int, PointError] = {}
        try:
            for n, rd in enumerate(compiled.reads):
                if dead and rd.unit in dead:
                    err = dead[rd.unit]
                    for slot in rd.slots:
                        values[slot] = err
                    continue
                if pause and n:
                    await asyncio.sleep(pause)
                try:
                    async with bus.transaction():
                        data = await link.read(rd.unit, rd.code, rd.start, rd.count, timeout, retries)
                except LinkTimeout as exc:
                    if single:
                        raise DeviceTimeout(str(exc)) from None
                    dead[rd.unit] = self._mark(values, rd, f"unit {rd.unit} did not answer")
                    continue
                except ExceptionReply as exc:
                    if exc.code in GATEWAY_EXCEPTIONS:
                        msg = f"gateway: unit {rd.unit}: {exc}"
                        if single:
                            raise (DeviceTimeout if exc.code == 11 else DeviceError)(msg) from None
                        dead[rd.unit] = self._mark(values, rd, msg)
                        continue
                    self._mark(values, rd, f"{rd.label}: {exc}")
                    self._report_refusal(rd, exc)
                    continue
                except ReplyError as exc:
                    self._mark(values, rd, f"{rd.label}: {exc}")
                    continue
                except LinkError as exc:
                    raise DeviceError(str(exc)) from None
                try:
                    rd.decoder.decode_into(data, values)
                except Exception as exc:  # noqa: BLE001 - a decoding bug must cost one request, not the poll
                    self._mark(values, rd, f"{rd.label}: cannot decode: {exc}")
            if dead and len(dead) == len(compiled.units):
                raise DeviceTimeout("no unit answered: " + "; ".join(e.message for e in dead.values()))
        except DeviceError:
            await self._after_poll(link)
            raise
        await self._after_poll(link)
        return RawReadings(values)

    # --- discovery --------------------------------------------------------------------------------

    async def discover(self) -> list[dict[str, Any]]:
        """The points of the shipped profile whose identity matches the device's (FC 43)."""
        device = self.config
        link = self._get_link()
        hint = "give the device a `profile` or `points`"
        try:
            async with self.ctx.bus.transaction():
                ident = await read_identification(
                    link, device.unit, max(device.timeout, _MIN_ID_TIMEOUT), device.retries
                )
        except IdentificationUnsupported as exc:
            raise DeviceError(f"cannot discover unit {device.unit}: {exc}; {hint}") from None
        except LinkTimeout as exc:
            raise DeviceTimeout(f"cannot discover: no answer to device identification (FC 43): {exc}") from None
        except (ReplyError, LinkError) as exc:
            raise DeviceError(f"cannot discover unit {device.unit}: device identification: {exc}") from None
        finally:
            await self._after_poll(link)
        vendor, code = ident.get("vendor_name"), ident.get("product_code")
        try:
            found = matching_profiles("modbus", vendor, code)
        except ProfileError as exc:
            raise DeviceError(f"cannot discover: a shipped profile is broken: {exc}") from None
        said = f"vendor {vendor!r}, product code {code!r}, revision {ident.get('revision')!r}"
        if not found:
            shipped = ", ".join(sorted(shipped_profiles("modbus")))
            raise DeviceError(
                f"no shipped Modbus profile matches unit {device.unit} ({said}; shipped: {shipped}); {hint}"
            )
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise DeviceError(f"unit {device.unit} ({said}) matches several profiles ({names}); {hint}")
        profile = found[0]
        try:
            points = profile_points(profile, device)
        except ProfileError as exc:
            raise DeviceError(f"cannot discover: profile {profile.name}: {exc}") from None
        self._discovered = plan_settings(profile, device)
        assumed = profile.identity is not None and profile.identity.assumed
        # A profile picked by an identity nobody documented is worth the operator's eye.
        (self.ctx.log.warning if assumed else self.ctx.log.info)(
            "device identified",
            unit=device.unit,
            vendor=vendor,
            product_code=code,
            revision=ident.get("revision"),
            profile=profile.name,
            identity="assumed" if assumed else "documented",
            points=len(points),
        )
        return points

    # --- commands ---------------------------------------------------------------------------------

    async def write(self, request: WriteRequest) -> RawValue:
        """Write one point (the function from its table and size) and read it back in the same transaction."""
        plan = self._write_plans.get(request.index)
        if plan is None:
            point = cast(ModbusPoint, self.ctx.points[request.index])
            plan = self._write_plans[request.index] = write_plan(point, self._layout)
        if request.raw is None:
            raise ValueError("Modbus has no relinquish: a write needs a value")
        pdu = plan.pdu(request.raw)
        unreadable = self._compiled_plan().template[request.index]
        link = self._get_link()
        try:
            async with self.ctx.bus.transaction():
                await self._send(link, plan.unit, pdu, plan.label)
                if isinstance(unreadable, PointError):
                    return PointError(f"written, not read back: {unreadable.message.removeprefix('not read: ')}")
                await self._quiet()
                return await self._read_back(link, plan)
        finally:
            await self._after_poll(link)

    async def action(self, name: str, spec: ActionConfig, args: Mapping[str, Any]) -> Any:
        """Send the action's writes in order in one bus transaction; returns {"written": n}."""
        if not isinstance(spec, ModbusAction):
            raise TypeError(f"action {name!r} is not a Modbus action")
        device = self._layout
        requests = [action_request(w, device, args, spec) for w in spec.writes]
        link = self._get_link()
        total = len(requests)
        try:
            async with self.ctx.bus.transaction():
                for n, (unit, pdu, label) in enumerate(requests):
                    if n:
                        await self._quiet()
                    before = f"; {n} of them written before" if n else ""
                    await self._send(link, unit, pdu, f"{name}: write {n + 1} of {total} ({label})", before)
        finally:
            await self._after_poll(link)
        return {"written": total}

    async def _send(self, link: ModbusLink, unit: int, pdu: bytes, what: str, after: str = "") -> None:
        """One write request, its failures as the driver API names them."""
        device = self.config
        try:
            await link.write(unit, pdu, device.timeout, device.retries)
        except LinkTimeout as exc:
            raise DeviceTimeout(f"{what}: {exc}{after}") from None
        except ExceptionReply as exc:
            if exc.code in GATEWAY_EXCEPTIONS:
                kind = DeviceTimeout if exc.code == 11 else DeviceError
                raise kind(f"{what}: gateway: unit {unit}: {exc}{after}") from None
            # The message leads with the device's own answer: it is what the caller is told.
            raise WriteRefused(f"{exc} ({what}{after})") from None
        except ReplyError as exc:
            raise DeviceError(f"{what}: {exc}{after}") from None
        except LinkError as exc:
            raise DeviceError(f"{what}: {exc}{after}") from None

    async def _read_back(self, link: ModbusLink, plan: WritePlan) -> RawValue:
        device = self.config
        try:
            data = await link.read(
                plan.unit, plan.read_code, plan.address, plan.read_count, device.timeout, device.retries
            )
        except (ReplyError, LinkError) as exc:
            return PointError(f"written, not read back: {exc}")
        return decode(plan.spec, data, 0)

    async def _quiet(self) -> None:
        """The quiet time the device (pause) or the line (turnaround) needs between two requests."""
        bus = self.ctx.bus.config
        gap = max(self.config.pause, bus.turnaround if bus is not None else 0.0)
        if gap:
            await asyncio.sleep(gap)

    async def _after_poll(self, link: ModbusLink) -> None:
        if self.config.close_after_poll:
            async with self.ctx.bus.transaction():
                await link.close()

    @staticmethod
    def _mark(values: list[RawValue], rd: _Read, message: str) -> PointError:
        err = PointError(message)
        for slot in rd.slots:
            values[slot] = err
        return err

    def _report_refusal(self, rd: _Read, exc: ExceptionReply) -> None:
        if rd.label in self._refused:
            return
        self._refused.add(rd.label)
        self.ctx.log.warning(
            "modbus request refused",
            request=rd.label,
            code=exc.code,
            reason=str(exc),
            hint="list the address range in the device's `unreadable` if it never answers",
        )
