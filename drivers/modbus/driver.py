"""The Modbus driver: polls a device's points with the fewest requests, over a shared connection.

Failure rules (see the README for the operator's view):

* An exception reply (illegal address, ...) marks the points of that request bad; the poll goes on.
* A malformed reply (wrong length or function) marks the points of that request bad.
* No answer: a device on one unit id fails the whole poll at once (DeviceTimeout), so a dead unit
  costs the other devices on the bus one timeout per poll. A device spread over several unit ids
  (a BCPME's two panels) marks that unit's points bad, skips its other requests and goes on with
  the other units; it fails only when no unit answered.
* A connection that cannot be opened or is lost fails the poll (DeviceError).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from drivers.modbus.client import (
    GATEWAY_EXCEPTIONS,
    ExceptionReply,
    LinkError,
    LinkTimeout,
    ModbusLink,
    ReplyError,
    endpoint_of,
)
from drivers.modbus.codec import BIT_FUNCTIONS, BlockDecoder, spec_of
from drivers.modbus.config import ModbusDevice, ModbusPoint
from drivers.modbus.planner import Plan, plan_reads
from gateway.driver import DeviceError, DeviceTimeout, Driver, DriverContext, PointError, RawReadings, RawValue


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
    """Modbus TCP, RTU over TCP and RTU on a serial bus; function codes 1-4."""

    def __init__(self, ctx: DriverContext) -> None:
        super().__init__(ctx)
        self._compiled: _Compiled | None = None
        self._link: ModbusLink | None = None
        self._refused: set[str] = set()

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
