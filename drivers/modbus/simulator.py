"""A Modbus device twin: serves a profile's registers over Modbus TCP, RTU over TCP or a serial line.

Its own small server (not pymodbus'): the benchmark runs a hundred twins in one process, and the
tests need behaviours a stock server lacks: a unit that stops answering, injected exception
replies, a slow unit, RTU wire time on a pseudo-terminal.

Values move with time, plausibly for each point's quantity (voltages near 230 V or 400 V between
lines, currents 0-80 A, frequency near 50 Hz, energy counters that only grow, ...), or as the
point's `sim` hint says: ``{value: x}`` fixed, ``{min: a, max: b, period: 60s}`` a slow wave
(a counter ramps from `min` by ``(max - min) / period`` per second). The twin encodes the
engineering value back to raw with the point's scale, offset and exponent point, type and
byte/word order. Values are recomputed on a timer (default every second), not per request.

Command line: ``edgegw simulate PROFILE --port N [--host 127.0.0.1] [--units 1,2 | 1-64]
[--rtu] [--serial /dev/pts/X --baudrate 9600 --wire-time] [--var name=value] [--interval 1s]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import signal
import struct
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from drivers.modbus.client import crc16
from drivers.modbus.codec import BIT_FUNCTIONS, FUNCTION_CODES, ValueSpec, decode, encode, spec_of, type_range
from drivers.modbus.config import ModbusDevice, ModbusPoint
from gateway.models import parse_duration
from gateway.points import ENERGY_QUANTITIES

Value = float | int | bool | str
Gen = Callable[[float], Value]

_MBAP = struct.Struct(">HHHB")
_HH = struct.Struct(">HH")
_LL_PHASES = frozenset({"L1-L2", "L2-L3", "L3-L1"})
_ENERGY = ENERGY_QUANTITIES


# --- values -----------------------------------------------------------------------------------


def _wave(lo: float, hi: float, period: float, phase: float) -> Gen:
    span, w = hi - lo, 2 * math.pi / max(period, 1e-3)
    return lambda t: lo + span * (0.5 + 0.5 * math.sin(w * t + phase))


def _ramp(base: float, rate: float) -> Gen:
    return lambda t: base + rate * t


def _const(value: Value) -> Gen:
    return lambda _t: value


def _per_phase_power(point: ModbusPoint, per_phase: float) -> float:
    return per_phase * 3 if point.phase in ("total", "none") else per_phase


def make_generator(point: ModbusPoint, rng: random.Random) -> Gen:
    """A plausible engineering value over time (seconds since the twin started) for a point."""
    sim = point.sim or {}
    period = parse_duration(sim.get("period", rng.uniform(60, 600)))
    phase = rng.uniform(0, 2 * math.pi)
    q = point.quantity
    counter = point.kind == "counter" or q in _ENERGY or q in ("counter", "uptime", "traffic")
    if "value" in sim:
        return _const(sim["value"])
    if "min" in sim or "max" in sim:
        lo = float(sim.get("min", 0.0))
        hi = float(sim.get("max", lo + 1.0))
        return _ramp(lo, (hi - lo) / period) if counter else _wave(lo, hi, period, phase)
    if point.type == "string":
        return _const(f"SIM {point.id}")
    if point.bit is not None or point.function in BIT_FUNCTIONS or point.type == "bool":
        return _const(q in ("breaker_state", "status"))
    if q in _ENERGY:
        per_hour = _per_phase_power(point, rng.uniform(1000, 8000))  # Wh per hour = W
        return _ramp(rng.uniform(1e5, 1e6), per_hour / 3600)
    if q == "uptime":
        return _ramp(rng.uniform(1e4, 1e6), 1.0)
    if counter:
        return _ramp(rng.uniform(0, 1000), rng.uniform(0.01, 1.0))
    if q == "clock":
        return lambda _t: int(time.time())
    ranges: dict[str, tuple[float, float]] = {
        "frequency": (49.95, 50.05),
        "power_factor": (0.8, 1.0),
        "current": (0.0, 80.0),
        "current_demand": (0.0, 60.0),
        "current_demand_max": (60.0, 80.0),
        "current_max": (60.0, 80.0),
        "leakage_current": (0.0, 0.03),
        "active_power": (0.0, _per_phase_power(point, 18000)),
        "active_power_demand": (0.0, _per_phase_power(point, 15000)),
        "active_power_demand_max": (_per_phase_power(point, 15000), _per_phase_power(point, 18000)),
        "active_power_max": (_per_phase_power(point, 15000), _per_phase_power(point, 18000)),
        "reactive_power": (0.0, _per_phase_power(point, 5000)),
        "apparent_power": (0.0, _per_phase_power(point, 19000)),
        "thd_voltage": (1.0, 4.0),
        "thd_current": (2.0, 15.0),
        "unbalance_voltage": (0.0, 2.0),
        "unbalance_current": (0.0, 10.0),
        "temperature": (22.0, 28.0),
        "humidity": (35.0, 55.0),
        "state_of_charge": (60.0, 100.0),
        "state_of_health": (85.0, 100.0),
        "internal_resistance": (0.0002, 0.0006),
        "balancing": (0.0, 5.0),
        "clock_drift": (0.0, 2.0),
        "other": (0.0, 100.0),
    }
    if q == "voltage":
        lo, hi = (395.0, 405.0) if point.phase in _LL_PHASES else (226.0, 234.0)
        return _wave(lo, hi, period, phase)
    if q in ranges and point.kind != "state":
        lo, hi = ranges[q]
        return _wave(lo, hi, period, phase)
    fixed: dict[str, Value] = {
        "breaker_state": 1,
        "status": 1,
        "cell_count": 40,
        "ct_ratio": 100,
        "rating": 100,
        "firmware": 100,
        "model": 1,
        "serial_number": 12345,
        "identity": 1,
    }
    return _const(fixed.get(q, 0))


# --- the register image -----------------------------------------------------------------------


@dataclass(slots=True)
class _Unit:
    id: int
    alive: bool = True
    delay: float = 0.0
    # function code -> bytes: registers (2 bytes each) for 3/4, one byte per bit for 1/2
    tables: dict[int, bytearray] = field(
        default_factory=lambda: {1: bytearray(), 2: bytearray(), 3: bytearray(), 4: bytearray()}
    )
    points: dict[str, _TwinPoint] = field(default_factory=dict)
    ordered: list[_TwinPoint] = field(default_factory=list)  # in write order


@dataclass(slots=True)
class _TwinPoint:
    point: ModbusPoint
    unit: int
    code: int
    address: int  # wire
    spec: ValueSpec
    gen: Gen
    value: Value = 0
    frozen: bool = False
    # A bit or bit field without a `sim` hint is not generated: it shows whatever the register
    # holds (the register's own point, or 0), so a status word and its bits stay consistent.
    passive: bool = False
    raw_override: bool = False  # set_raw wrote its registers: serve them as written


def _table_write(table: bytearray, pos: int, data: bytes) -> None:
    end = pos + len(data)
    if end > len(table):
        table.extend(bytes(end - len(table)))
    table[pos:end] = data


def _table_read(table: bytearray, pos: int, size: int) -> bytes:
    data = bytes(table[pos : pos + size])
    return data if len(data) == size else data + bytes(size - len(data))


def _pack_bits(values: bytes) -> bytes:
    out = bytearray((len(values) + 7) // 8)
    for i, v in enumerate(values):
        if v:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def _exception(code: int, exc: int) -> bytes:
    return bytes((code | 0x80, exc))


class ModbusTwin:
    """A simulated Modbus device (or gateway with several unit ids) on a real socket or pty.

    ``points`` without a ``unit_id`` are served on every unit of ``units``; a point with a
    ``unit_id`` on that unit only. Device-level defaults (function, orders, numbering, unreadable
    ranges answered with exception 2) are keyword arguments, or taken from a ModbusDevice by
    :meth:`from_device` / a profile by :meth:`from_profile`.

    Use ``async with ModbusTwin(...) as twin:``; ``twin.port`` is the TCP port (``port=0`` picks a
    free one), ``twin.serial`` the pty path when serving a serial line.
    """

    def __init__(
        self,
        points: Sequence[ModbusPoint] = (),
        units: Iterable[int] = (1,),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        framing: Literal["tcp", "rtu"] = "tcp",
        serial: str | None = None,
        baudrate: int = 9600,
        bytesize: int = 8,
        parity: str = "N",
        stopbits: int = 1,
        wire_time: bool = False,
        function: str = "holding",
        byte_order: str = "big",
        word_order: str = "big",
        numbering: int = 0,
        unreadable: Iterable[tuple[int, int]] = (),
        update_interval: float = 1.0,
        seed: int | None = 0,
    ) -> None:
        self.host = host
        self.port = port
        self.framing: Literal["tcp", "rtu"] = "rtu" if serial is not None else framing
        self.serial = serial
        self.baudrate, self.bytesize, self.parity, self.stopbits = baudrate, bytesize, parity, stopbits
        self.wire_time = wire_time
        self.update_interval = update_interval
        self.requests = 0
        self._defaults = ModbusDevice.model_validate(
            {
                "id": "twin",
                "driver": "modbus",
                "tcp": {"host": host, "port": port or 502},
                "function": function,
                "byte_order": byte_order,
                "word_order": word_order,
                "numbering": numbering,
                "unreadable": [list(r) for r in unreadable],
            }
        )
        self._rng = random.Random(seed)
        self._units: dict[int, _Unit] = {}
        # (unit or None for all, function code or None for all, first, last wire address, exception)
        self._faults: list[tuple[int | None, int | None, int, int, int]] = [
            (None, None, lo - numbering, hi - numbering, 2) for lo, hi in self._defaults.unreadable
        ]
        self._t0 = time.monotonic()
        self._server: asyncio.AbstractServer | None = None
        self._serial_transport: asyncio.BaseTransport | None = None
        self._connections: set[asyncio.BaseTransport] = set()
        self._ticker: asyncio.Task[None] | None = None
        for u in units:
            self._unit(u)
        self.add_points(points, units)

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_device(cls, device: ModbusDevice, units: Iterable[int] | None = None, **kw: Any) -> ModbusTwin:
        """A twin of a configured device (its resolved points and its defaults)."""
        defaults: dict[str, Any] = {
            "function": device.function,
            "byte_order": device.byte_order,
            "word_order": device.word_order,
            "numbering": device.numbering,
            "unreadable": device.unreadable,
        }
        points = [p for p in device.resolved_points if isinstance(p, ModbusPoint)]
        return cls(points, list(units) if units is not None else [device.unit], **{**defaults, **kw})

    @classmethod
    def from_profile(
        cls,
        profile_ref: str,
        units: Iterable[int] | None = None,
        profile_vars: Mapping[str, int | float | str] | None = None,
        base_dir: Path | None = None,
        **kw: Any,
    ) -> ModbusTwin:
        """A twin serving a profile; each unit in `units` is the `unit` of one simulated device."""
        wanted: list[int | None] = list(units) if units else [None]
        devices = [_profile_device(profile_ref, u, profile_vars, base_dir) for u in wanted]
        first = devices[0]
        twin = cls.from_device(first, units=[first.unit], **kw)
        for device in devices[1:]:
            points = [p for p in device.resolved_points if isinstance(p, ModbusPoint)]
            twin.add_points(points, [device.unit])
        return twin

    def add_points(self, points: Sequence[ModbusPoint], units: Iterable[int]) -> None:
        """Serve more points (on `units`, or on their own unit_id)."""
        unit_ids = list(units)
        staged: list[_TwinPoint] = []
        for p in points:
            code = FUNCTION_CODES[p.function or self._defaults.function]
            targets = [p.unit_id] if p.unit_id is not None else unit_ids
            spec = spec_of(p, self._defaults)
            for uid in targets:
                gen = make_generator(p, self._rng)
                passive = (p.bit is not None or p.bits is not None) and not p.sim
                tp = _TwinPoint(p, uid, code, p.address - self._defaults.numbering, spec, gen, passive=passive)
                self._unit(uid).points[p.id] = tp
                staged.append(tp)
        for uid in {tp.unit for tp in staged}:
            unit = self._units[uid]
            unit.ordered = sorted(unit.points.values(), key=_write_order)
        now = time.monotonic() - self._t0
        for tp in sorted(staged, key=_write_order):
            if not tp.passive:
                self._write(tp, tp.gen(now))

    def _unit(self, unit: int) -> _Unit:
        if unit not in self._units:
            self._units[unit] = _Unit(unit)
        return self._units[unit]

    # --- control ------------------------------------------------------------------------------

    @property
    def units(self) -> list[int]:
        return sorted(self._units)

    def points(self, unit: int) -> list[str]:
        return list(self._units[unit].points)

    def value(self, unit: int, point_id: str) -> Value:
        """The engineering value the twin serves now."""
        tp = self._units[unit].points[point_id]
        if (tp.passive and not tp.frozen) or tp.raw_override:
            return self._read_back(tp)
        return tp.value

    def _read_back(self, tp: _TwinPoint) -> Value:
        """The engineering value the point's registers hold now."""
        table = self._units[tp.unit].tables[tp.code]
        if tp.spec.is_bit:
            return bool(_table_read(table, tp.address, 1)[0])
        raw = decode(tp.spec, _table_read(table, 2 * tp.address, 2 * tp.spec.words))
        if isinstance(raw, bool | str):
            return raw
        if not isinstance(raw, int | float):
            return 0
        p = tp.point
        if p.scale == 1 and p.offset == 0 and p.exponent_point is None:
            return raw
        exp = 0
        if p.exponent_point is not None:
            src = self._units[tp.unit].points.get(p.exponent_point)
            exp = int(src.value) if src is not None and isinstance(src.value, int | float) else 0
        return raw * p.scale * 10.0**exp + p.offset

    def set_value(self, unit: int, point_id: str, value: Value) -> None:
        """Serve a fixed engineering value from now on (until :meth:`release`)."""
        tp = self._units[unit].points[point_id]
        tp.frozen = True
        tp.raw_override = False
        self._write(tp, value)
        self._rewrite_dependents(unit, point_id)
        for other in self._units[unit].ordered:
            if (
                other.frozen
                and not other.raw_override
                and other is not tp
                and (other.point.bit is not None or other.point.bits is not None)
            ):
                self._write(other, other.value)

    def release(self, unit: int, point_id: str) -> None:
        """Let a point set by :meth:`set_value` or :meth:`set_raw` move with time again."""
        tp = self._units[unit].points[point_id]
        tp.frozen = tp.raw_override = False

    def set_raw(self, unit: int, function: str, address: int, words: Sequence[int]) -> None:
        """Write raw registers (wire address), e.g. a NaN or 0x8000 sentinel; bits for coil/discrete.

        The points in those registers stop moving (until :meth:`release`), so the raw words stay.
        """
        code = FUNCTION_CODES[function]
        u = self._unit(unit)
        table = u.tables[code]
        if code in (1, 2):
            _table_write(table, address, bytes(1 if w else 0 for w in words))
        else:
            _table_write(table, 2 * address, struct.pack(f">{len(words)}H", *words))
        end = address + len(words)
        for tp in u.points.values():
            if tp.code == code and tp.address < end and address < tp.address + tp.spec.span:
                tp.frozen = tp.raw_override = True

    def kill_unit(self, unit: int) -> None:
        """Stop answering a unit id (a dead device behind a gateway)."""
        self._unit(unit).alive = False

    def revive_unit(self, unit: int) -> None:
        self._unit(unit).alive = True

    def set_delay(self, unit: int, seconds: float) -> None:
        """Answer a unit's requests this late (a slow device)."""
        self._unit(unit).delay = seconds

    def inject_exception(
        self, first: int, last: int, code: int = 2, unit: int | None = None, function: str | None = None
    ) -> None:
        """Answer reads touching wire addresses first..last with exception `code`."""
        fc = FUNCTION_CODES[function] if function else None
        self._faults.append((unit, fc, first, last, code))

    def clear_exceptions(self) -> None:
        self._faults.clear()

    def drop_connections(self) -> None:
        """Close every client connection (a gateway reboot)."""
        for t in list(self._connections):
            t.close()

    @property
    def connections(self) -> int:
        return len(self._connections)

    def update(self) -> None:
        """Recompute every moving value now (the timer does this every `update_interval`)."""
        now = time.monotonic() - self._t0
        for unit in self._units.values():
            for tp in unit.ordered:
                if tp.frozen:
                    if not tp.raw_override and (tp.point.bit is not None or tp.point.bits is not None):
                        self._write(tp, tp.value)  # the register under it may have moved
                elif not tp.passive:
                    self._write(tp, tp.gen(now))

    # --- encoding -----------------------------------------------------------------------------

    def _write(self, tp: _TwinPoint, value: Value) -> None:
        tp.value = value
        p = tp.point
        raw: Value = value
        if isinstance(value, int | float) and not isinstance(value, bool) and tp.spec.type != "string":
            exp = 0
            if p.exponent_point is not None:
                src = self._units[tp.unit].points.get(p.exponent_point)
                exp = int(src.value) if src is not None and isinstance(src.value, int | float) else 0
            divisor = (p.scale or 1.0) * 10.0**exp
            raw = (value - p.offset) / divisor
            if tp.spec.type.startswith(("int", "uint")) and p.bits is None:
                lo, hi = type_range(tp.spec.type)
                raw = min(max(raw, lo), hi)
        table = self._units[tp.unit].tables[tp.code]
        if tp.spec.is_bit:
            _table_write(table, tp.address, encode(tp.spec, raw))
            return
        pos, size = 2 * tp.address, 2 * tp.spec.words
        current = _table_read(table, pos, size) if (p.bit is not None or p.bits is not None) else None
        _table_write(table, pos, encode(tp.spec, raw, current))

    def _rewrite_dependents(self, unit: int, point_id: str) -> None:
        for tp in self._units[unit].points.values():
            if tp.point.exponent_point == point_id and not tp.raw_override:
                self._write(tp, tp.value)

    # --- protocol -----------------------------------------------------------------------------

    def handle(self, unit: int, pdu: bytes) -> bytes | None:
        """The reply PDU to a request PDU for `unit`, or None when nobody answers."""
        u = self._units.get(unit)
        if u is None or not u.alive or not pdu:
            return None
        self.requests += 1
        fc = pdu[0]
        if fc in (1, 2, 3, 4):
            if len(pdu) != 5:
                return _exception(fc, 3)
            address, count = _HH.unpack_from(pdu, 1)
            if not 1 <= count <= (2000 if fc < 3 else 125):
                return _exception(fc, 3)
            if address + count > 65536:
                return _exception(fc, 2)
            if code := self._fault(unit, fc, address, count):
                return _exception(fc, code)
            table = u.tables[fc]
            if fc < 3:
                data = _pack_bits(_table_read(table, address, count))
            else:
                data = _table_read(table, 2 * address, 2 * count)
            return bytes((fc, len(data))) + data
        if fc in (5, 6) and len(pdu) == 5:
            address, value = _HH.unpack_from(pdu, 1)
            if code := self._fault(unit, 1 if fc == 5 else 3, address, 1):
                return _exception(fc, code)
            if fc == 5:
                _table_write(u.tables[1], address, b"\x01" if value == 0xFF00 else b"\x00")
            else:
                _table_write(u.tables[3], 2 * address, pdu[3:5])
            return pdu
        if fc in (15, 16) and len(pdu) >= 6:
            address, count = _HH.unpack_from(pdu, 1)
            payload = pdu[6:]
            if len(payload) != pdu[5] or not count:
                return _exception(fc, 3)
            if fc == 16:
                if len(payload) != 2 * count:
                    return _exception(fc, 3)
                _table_write(u.tables[3], 2 * address, payload)
            else:
                bits = bytes((payload[i >> 3] >> (i & 7)) & 1 for i in range(min(count, 8 * len(payload))))
                _table_write(u.tables[1], address, bits)
            return pdu[:5]
        return _exception(fc, 1)

    def _fault(self, unit: int, fc: int, address: int, count: int) -> int:
        last = address + count - 1
        for f_unit, f_fc, lo, hi, code in self._faults:
            if (f_unit is None or f_unit == unit) and (f_fc is None or f_fc == fc) and lo <= last and hi >= address:
                return code
        return 0

    def _reply_delay(self, unit: int, request_len: int, reply_len: int) -> float:
        delay = self._units[unit].delay if unit in self._units else 0.0
        if self.wire_time and self.serial is not None:
            bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
            delay += (request_len + reply_len) * bits / self.baudrate
        return delay

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> ModbusTwin:
        loop = asyncio.get_running_loop()
        factory: Callable[[], asyncio.Protocol] = (
            (lambda: _RtuServer(self)) if self.framing == "rtu" else (lambda: _MbapServer(self))
        )
        if self.serial is not None:
            import serial_asyncio

            self._serial_transport, _ = await serial_asyncio.create_serial_connection(
                loop,
                factory,
                self.serial,
                baudrate=self.baudrate,
                bytesize=self.bytesize,
                parity=self.parity,
                stopbits=self.stopbits,
            )
        else:
            self._server = await loop.create_server(factory, self.host, self.port)
            self.port = self._server.sockets[0].getsockname()[1]
        if self.update_interval > 0:
            self._ticker = asyncio.create_task(self._tick(), name="modbus-twin-update")
        return self

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._server is not None:
            self._server.close()
            self.drop_connections()
            await self._server.wait_closed()
            self._server = None
        if self._serial_transport is not None:
            self._serial_transport.close()
            self._serial_transport = None
        self.drop_connections()

    async def __aenter__(self) -> ModbusTwin:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.update_interval)
            self.update()

    def describe(self) -> str:
        where = self.serial if self.serial is not None else f"{self.host}:{self.port}"
        kind = "Modbus RTU" if self.serial is not None else ("RTU over TCP" if self.framing == "rtu" else "Modbus TCP")
        count = sum(len(u.points) for u in self._units.values())
        return f"{kind} on {where}, unit ids {_format_units(self.units)}, {count} points"


def _write_order(tp: _TwinPoint) -> tuple[int, int]:
    # Whole registers first, then the bit fields that live inside them.
    p = tp.point
    return (1 if (p.bit is not None or p.bits is not None) else 0, 0 if p.quantity == "scale" else 1)


class _ServerBase(asyncio.Protocol):
    def __init__(self, twin: ModbusTwin) -> None:
        self.twin = twin
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.twin._connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.twin._connections.discard(self.transport)

    def send(self, frame: bytes, delay: float) -> None:
        transport = self.transport
        if transport is None:
            return
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, _late_write, transport, frame)
        else:
            transport.write(frame)


def _late_write(transport: asyncio.Transport, frame: bytes) -> None:
    if not transport.is_closing():
        transport.write(frame)


class _MbapServer(_ServerBase):
    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 7:
            length = (buf[4] << 8) | buf[5]
            if length < 2 or length > 254:
                if self.transport is not None:
                    self.transport.close()
                buf.clear()
                return
            if len(buf) < 6 + length:
                return
            tid, unit = (buf[0] << 8) | buf[1], buf[6]
            request = bytes(buf[7 : 6 + length])
            del buf[: 6 + length]
            reply = self.twin.handle(unit, request)
            if reply is not None:
                frame = _MBAP.pack(tid, 0, len(reply) + 1, unit) + reply
                self.send(frame, self.twin._reply_delay(unit, 6 + length, len(frame)))


class _RtuServer(_ServerBase):
    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 4:
            fc = buf[1]
            if fc in (1, 2, 3, 4, 5, 6):
                size = 8
            elif fc in (15, 16):
                if len(buf) < 7:
                    return
                size = 9 + buf[6]
            else:
                del buf[0]  # not a request we know: hunt for the next frame start
                continue
            if len(buf) < size:
                return
            frame = bytes(buf[:size])
            if crc16(frame[:-2]) != frame[-2:]:
                del buf[0]
                continue
            del buf[:size]
            unit = frame[0]
            reply = self.twin.handle(unit, frame[1:-2])
            if reply is not None:
                body = bytes((unit,)) + reply
                out = body + crc16(body)
                self.send(out, self.twin._reply_delay(unit, size, len(out)))


# --- profile loading and the command line -------------------------------------------------------


def _profile_device(
    ref: str, unit: int | None, profile_vars: Mapping[str, int | float | str] | None, base_dir: Path | None
) -> ModbusDevice:
    from gateway.config import parse_device

    raw: dict[str, Any] = {
        "id": "twin",
        "driver": "modbus",
        "profile": ref,
        "tcp": {"host": "127.0.0.1", "port": 502},
        "profile_vars": dict(profile_vars or {}),
    }
    if unit is not None:
        raw["unit"] = unit
    device = parse_device(raw, base_dir)
    assert isinstance(device, ModbusDevice)
    return device


def parse_units(text: str) -> list[int]:
    """`1,2`, `1-64`, `1-4,10` -> unit ids (0..255)."""
    out: list[int] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        first, last = (int(lo), int(hi)) if sep else (int(part), int(part))
        if not 0 <= first <= last <= 255:
            raise ValueError(f"bad unit range {part!r} (unit ids are 0-255)")
        out.extend(range(first, last + 1))
    if not out:
        raise ValueError("no unit ids")
    return sorted(set(out))


def _format_units(units: Sequence[int]) -> str:
    parts: list[str] = []
    i = 0
    while i < len(units):
        j = i
        while j + 1 < len(units) and units[j + 1] == units[j] + 1:
            j += 1
        parts.append(str(units[i]) if i == j else f"{units[i]}-{units[j]}")
        i = j + 1
    return ",".join(parts)


def _var(text: str) -> tuple[str, int | float | str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError("use --var name=value")
    for conv in (int, float):
        try:
            return name, conv(value)
        except ValueError:
            pass
    return name, value


def _parser(profile_ref: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=f"edgegw simulate {profile_ref}",
        description="Serve a Modbus device twin of the profile on a TCP port or a serial line.",
    )
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=None, help="TCP port (0 picks a free one)")
    ap.add_argument("--units", default=None, help="unit ids, e.g. 1,2 or 1-64 (default: the profile's unit)")
    ap.add_argument("--rtu", action="store_true", help="RTU framing on TCP (a serial-to-Ethernet converter)")
    ap.add_argument("--serial", default=None, help="serve on this serial port / pty instead of TCP")
    ap.add_argument("--baudrate", type=int, default=9600)
    ap.add_argument("--parity", choices=["N", "E", "O"], default="N")
    ap.add_argument("--bytesize", type=int, choices=[7, 8], default=8)
    ap.add_argument("--stopbits", type=int, choices=[1, 2], default=1)
    ap.add_argument("--wire-time", action="store_true", help="delay serial replies by their time on the wire")
    ap.add_argument("--var", action="append", type=_var, default=[], help="profile variable, name=value")
    ap.add_argument("--interval", default="1s", help="how often values change (default 1s)")
    ap.add_argument("--seed", type=int, default=None, help="random seed of the value shapes")
    return ap


def main(profile_ref: str, argv: list[str]) -> int:
    """`edgegw simulate PROFILE ...`: serve the twin until interrupted."""
    args = _parser(profile_ref).parse_args(argv)
    if args.serial is None and args.port is None:
        print("give --port N (or --serial DEVICE)", file=sys.stderr)
        return 2
    try:
        units = parse_units(args.units) if args.units else None
        interval = parse_duration(args.interval)
        twin = ModbusTwin.from_profile(
            profile_ref,
            units=units,
            profile_vars=dict(args.var),
            base_dir=Path.cwd(),
            host=args.host,
            port=args.port or 0,
            framing="rtu" if args.rtu else "tcp",
            serial=args.serial,
            baudrate=args.baudrate,
            bytesize=args.bytesize,
            parity=args.parity,
            stopbits=args.stopbits,
            wire_time=args.wire_time,
            update_interval=interval,
            seed=args.seed,
        )
    except Exception as exc:  # noqa: BLE001 - any profile or argument problem is reported, not raised
        print(f"edgegw simulate: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(twin))
    except KeyboardInterrupt:
        return 0


async def _serve(twin: ModbusTwin) -> int:
    try:
        await twin.start()
    except OSError as exc:
        print(f"edgegw simulate: cannot serve: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"simulating {twin.describe()}; Ctrl-C stops", flush=True)
    try:
        await stop.wait()
    finally:
        await twin.stop()
    return 0
