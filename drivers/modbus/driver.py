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
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from drivers.modbus.client import (
    GATEWAY_EXCEPTIONS,
    ExceptionReply,
    LinkError,
    LinkTimeout,
    ModbusLink,
    ReplyError,
    coils_pdu,
    endpoint_of,
    mask_pdu,
    registers_pdu,
)
from drivers.modbus.codec import (
    BIT_FUNCTIONS,
    BlockDecoder,
    ValueSpec,
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

if TYPE_CHECKING:
    from gateway.models import ActionConfig


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
    template: list[RawValue]
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
        items = [(i, spec_of(points[i], device), off) for i, off in r.items]
        label = f"unit {r.unit} {r.function} {r.start}+{r.count}"
        slots = tuple(i for i, _ in r.items)
        reads.append(_Read(r.unit, r.code, r.start, r.count, label, slots, BlockDecoder(items, bit_data=bits)))
    return _Compiled(plan, tuple(reads), template, frozenset(r.unit for r in plan.reads))


class ModbusDriver(Driver[ModbusDevice, None]):
    """Modbus TCP, RTU over TCP and RTU on a serial bus; function codes 1-4, writes with 5, 6, 15, 16, 22."""

    def __init__(self, ctx: DriverContext) -> None:
        super().__init__(ctx)
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

    async def stop(self) -> None:
        # The connection belongs to the bus (other devices may share it); the core closes buses.
        self._link = None

    def _compile(self) -> _Compiled:
        return compile_plan(cast(Sequence[ModbusPoint], self.ctx.points), self.config)

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
        values = compiled.template.copy()
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

    # --- commands ---------------------------------------------------------------------------------

    async def write(self, request: WriteRequest) -> RawValue:
        """Write one point (the function from its table and size) and read it back in the same transaction."""
        plan = self._write_plans.get(request.index)
        if plan is None:
            point = cast(ModbusPoint, self.ctx.points[request.index])
            plan = self._write_plans[request.index] = write_plan(point, self.config)
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
        device = self.config
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
