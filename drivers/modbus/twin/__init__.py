"""The Modbus device twin: a profile's registers over Modbus TCP, RTU / ASCII over TCP or a serial line.

Its own small server (not pymodbus'): the benchmark runs a hundred twins in one process, and the
tests need behaviours a stock server lacks: per-unit faults (silent, slow, garbage, cut off
mid-frame), injected exception replies, RTU wire time on a pseudo-terminal.

Values come from :func:`gateway.twin.signal_for` (the one ``sim`` vocabulary, docs/profiles.md)
in engineering units; the twin encodes them back to raw with the point's scale, offset and
exponent point, type and byte/word order, on a timer (default every second) of twin time
(``self.clock``), not per request. Writes (FC 5, 6, 15, 16, 22) land in the register image, pin
the points they touch to what was written and are remembered in ``self.writes``.

Read Device Identification (FC 43 / MEI 14) answers the profile's ``identity`` on every unit
(stream access with "more follows" when the objects do not fit one reply, or every
``identity_split`` objects; individual access, code 4); a twin without an identity answers
exception 1, like a device without FC 43.

Command line: ``edgegw simulate PROFILE [--port N] [--units 1,2 | 1-64] [--rtu | --framing ascii]
[--serial PATH|pty --baudrate 9600 --wire-time] [--var name=value] [--interval 1s]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import struct
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from drivers.modbus.codec import (
    BIT_FUNCTIONS,
    FC_MEI,
    FUNCTION_CODES,
    MAX_PDU,
    MEI_DEVICE_ID,
    OBJECT_NAMES,
    READ_BASIC,
    READ_ONE,
    READ_REGULAR,
    ValueSpec,
    decode,
    encode,
    spec_of,
    type_range,
)
from drivers.modbus.config import ModbusDevice, ModbusPoint
from drivers.modbus.twin.transport import AsciiServer, MbapServer, PtyTransport, RtuServer, ServerBase
from gateway.models import parse_duration
from gateway.profiles import load_profile, resolve_profile_path
from gateway.twin import DemoDevice, Signal, Twin, TwinClock, Write, check_sim, faulty_reply, signal_for

Value = float | int | bool | str

_HH = struct.Struct(">HH")
_HHH = struct.Struct(">HHH")
_TABLE_NAMES = {code: name for name, code in FUNCTION_CODES.items()}
# Device settings that change how inline points are laid out; a device config repeats them.
_LAYOUT_KEYS = ("function", "byte_order", "word_order", "numbering", "unreadable")
_LAYOUT_DEFAULTS: dict[str, Any] = {
    "function": "holding",
    "byte_order": "big",
    "word_order": "big",
    "numbering": 0,
    "unreadable": [],
}
MAX_READ = {1: 2000, 2: 2000, 3: 125, 4: 125}
MAX_WRITE_COILS = 1968  # what fits one request PDU
MAX_WRITE_REGISTERS = 123
BUS_ID = "modbus-twin"
_OBJECT_IDS = {name: oid for oid, name in OBJECT_NAMES.items()}
_UNSET: Any = object()


def point_signal(point: ModbusPoint, function: str, rng: random.Random) -> Signal:
    """The signal a point serves (its ``sim`` hint, else plausible for its quantity)."""
    if point.type == "string":
        value_type = "string"
    elif point.bit is not None or function in BIT_FUNCTIONS or point.type == "bool":
        value_type = "bool"
    else:
        value_type = "number"
    return signal_for(
        point.sim,
        quantity=point.quantity,
        phase=point.phase,
        kind=point.kind.value,
        value_type=value_type,
        name=point.id,
        rng=rng,
    )


# --- the register image -----------------------------------------------------------------------


@dataclass(slots=True)
class _Unit:
    id: int
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
    signal: Signal
    value: Value = 0
    frozen: bool = False
    # A bit or bit field without a `sim` hint is not generated: it shows whatever the register
    # holds (the register's own point, or 0), so a status word and its bits stay consistent.
    passive: bool = False
    raw_override: bool = False  # set_raw or a client's write put its registers there: serve them as written
    wall_clock: bool = False  # a `clock` point without a hint serves the twin's time of day

    @property
    def is_view(self) -> bool:
        return self.point.bit is not None or self.point.bits is not None

    def overlaps(self, code: int, address: int, count: int) -> bool:
        return self.code == code and self.address < address + count and address < self.address + self.spec.span


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


def _unpack_bits(packed: bytes, count: int) -> bytes:
    return bytes((packed[i >> 3] >> (i & 7)) & 1 for i in range(count))


def _exception(code: int, exc: int) -> bytes:
    return bytes((code | 0x80, exc))


def _write_order(tp: _TwinPoint) -> tuple[int, int]:
    # Whole registers first, then the bit fields that live inside them; exponents before their users.
    return (1 if tp.is_view else 0, 0 if tp.point.quantity == "scale" else 1)


class ModbusTwin(Twin):
    """A simulated Modbus device (or gateway with several unit ids) on a real socket or pty.

    ``points`` without a ``unit_id`` are served on every unit of ``units``; a point with a
    ``unit_id`` on that unit only. Device-level defaults (function, orders, numbering, unreadable
    ranges answered with exception 2) are keyword arguments; :meth:`create` takes them from a
    profile. ``serial`` serves RTU (or ASCII, ``framing="ascii"``) on that serial port / pty end
    instead of TCP (``peer``: the end a client opens, for :meth:`device_config`); ``serial="pty"``
    makes the pty pair itself. ASCII defaults to 7 data bits and even parity unless given.

    Use ``async with ModbusTwin(...) as twin:``; ``twin.port`` is the TCP port (``port=0`` picks a
    free one), ``twin.peer`` the path a client opens when serving a serial line.
    """

    kind: ClassVar[str] = "modbus"
    default_profile: ClassVar[str] = "schneider-bcpme"
    demo: ClassVar[Sequence[DemoDevice]] = (
        DemoDevice(
            id="bcpme-1",
            profile="schneider-bcpme",
            options={"units": [1]},
            config={"interval": "2s", "timeout": "500ms", "tags": {"room": "hall-a", "board": "PDU-A1"}},
            show=("panel1.mains.frequency", "panel1.mains.voltage_an", "panel1.ch1.current", "panel1.ch1.power"),
        ),
        DemoDevice(
            id="emdx3-3",
            profile="legrand-emdx3",
            options={"units": [3]},
            config={"interval": "2s", "timeout": "500ms"},
            show=("voltage_l1n", "current_l1", "frequency"),
        ),
        DemoDevice(
            id="bmgw-1",
            profile="robotina-bm-sm",
            vars={"cells": 8},
            config={"interval": "2s", "timeout": "500ms"},
            show=("string1.voltage", "string1.current", "string1.soc"),
        ),
        DemoDevice(
            id="busway-a",
            profile="ibgw100-ibsm",
            vars={"meters": 4},
            config={"interval": "2s", "timeout": "500ms"},
            show=("meter1.temperature", "meter1.cb1.voltage_l1n", "meter1.cb1.current_l1"),
        ),
    )

    def __init__(
        self,
        points: Sequence[ModbusPoint] = (),
        units: Iterable[int] = (1,),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        framing: Literal["tcp", "rtu", "ascii"] = "tcp",
        serial: str | None = None,
        peer: str | None = None,
        baudrate: int = 9600,
        bytesize: int | None = None,
        parity: str | None = None,
        stopbits: int = 1,
        wire_time: bool = False,
        function: str = "holding",
        byte_order: str = "big",
        word_order: str = "big",
        numbering: int = 0,
        unreadable: Iterable[tuple[int, int]] = (),
        update_interval: float = 1.0,
        seed: int | None = 0,
        clock: TwinClock | None = None,
        identity: Mapping[str, str] | None = None,
        identity_split: int = 0,
    ) -> None:
        super().__init__(clock=clock, seed=seed)
        self._identity: dict[int, bytes] | None = None
        self.identity_split = identity_split
        self.set_identity(identity)
        if framing not in ("tcp", "rtu", "ascii"):
            raise ValueError(f"framing is 'tcp', 'rtu' or 'ascii', not {framing!r}")
        self.host = host
        self.port = port
        # A serial line has no MBAP: RTU unless ASCII is asked for.
        self.framing: Literal["tcp", "rtu", "ascii"] = "rtu" if serial is not None and framing == "tcp" else framing
        self.serial = serial
        self.peer = peer
        # ASCII lines are 7E1 by default, but a pty the twin makes has no character format: Linux
        # forces 8N1 on it and refuses 7E1 when the client sets it, so its bus config says 8N1.
        ascii = self.framing == "ascii" and serial != "pty"
        self.bytesize = bytesize if bytesize is not None else 7 if ascii else 8
        self.parity = parity if parity is not None else "E" if ascii else "N"
        self.baudrate, self.stopbits = baudrate, stopbits
        self.wire_time = wire_time
        self.update_interval = update_interval
        self.requests = 0
        self._late = 0
        layout: dict[str, Any] = {
            "function": function,
            "byte_order": byte_order,
            "word_order": word_order,
            "numbering": numbering,
            "unreadable": [list(r) for r in unreadable],
        }
        self._defaults = ModbusDevice.model_validate(
            {"id": "twin", "driver": "modbus", "tcp": {"host": "127.0.0.1", "port": 502}, **layout}
        )
        # What a device config must repeat to read these points the way they are served.
        self._layout = {k: v for k, v in layout.items() if v != _LAYOUT_DEFAULTS[k]}
        self._units: dict[int, _Unit] = {}
        self._device_units: list[int] = list(units)
        self._given: list[ModbusPoint] = list(points)
        self._profile: str | None = None
        self._vars: dict[str, Any] = {}
        self._inline: list[dict[str, Any]] | None = None
        # (unit or None for all, function code or None for all, first, last wire address, exception)
        self._exceptions: list[tuple[int | None, int | None, int, int, int]] = []
        self._unreadable = [(None, None, lo - numbering, hi - numbering, 2) for lo, hi in self._defaults.unreadable]
        self._server: asyncio.AbstractServer | None = None
        self._serial_transport: asyncio.BaseTransport | None = None
        self._connections: set[asyncio.BaseTransport] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._handlers: dict[int, Callable[[_Unit, bytes], bytes]] = {
            1: self._read,
            2: self._read,
            3: self._read,
            4: self._read,
            5: self._write_coil,
            6: self._write_register,
            15: self._write_coils,
            16: self._write_registers,
            22: self._mask_write,
            FC_MEI: self._device_id,
        }
        for u in self._device_units:
            self._unit(u)
        self.add_points(points, self._device_units)

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        profile: str | Path | None = None,
        *,
        points: Sequence[Mapping[str, Any]] | None = None,
        vars: Mapping[str, Any] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        **options: Any,
    ) -> Self:
        """A twin of a profile and/or inline points (as a device config gives them).

        Options: ``units`` (each one the ``unit`` of one simulated device; default the profile's),
        ``framing`` ('tcp' | 'rtu' | 'ascii'), ``serial`` (a path or 'pty'), ``peer``, ``baudrate``,
        ``bytesize``, ``parity``, ``stopbits`` (ASCII on a path: 7E1 unless given), ``wire_time``, ``update_interval``, ``seed``,
        ``clock``, ``base_dir`` (of a relative profile path), and for inline points the device
        layout: ``function``, ``byte_order``, ``word_order``, ``numbering``, ``unreadable``.
        """
        if profile is None and not points:
            raise ValueError("a Modbus twin needs a profile or points")
        units = options.pop("units", None)
        base_dir = options.pop("base_dir", None)
        identity = options.pop("identity", _UNSET)
        layout = {k: options.pop(k) for k in _LAYOUT_KEYS if k in options}
        ref = _profile_ref(profile, base_dir)
        wanted: list[int | None] = list(units) if units else [None]
        devices = [_device_of(ref, points, vars, layout, unit) for unit in wanted]
        first = devices[0]
        if identity is _UNSET:
            identity = _profile_identity(ref)
        twin = cls(
            _modbus_points(first),
            [first.unit],
            host=host,
            port=port,
            function=first.function,
            byte_order=first.byte_order,
            word_order=first.word_order,
            numbering=first.numbering,
            unreadable=first.unreadable,
            identity=identity,
            **options,
        )
        for device in devices[1:]:
            twin._device_units.append(device.unit)
            twin.add_points(_modbus_points(device), [device.unit])
        twin._profile = ref
        twin._vars = dict(vars or {})
        twin._inline = [dict(p) for p in points] if points else None
        # A profile's own device settings come with the profile; only explicit ones are repeated.
        twin._layout = {k: ([list(r) for r in v] if k == "unreadable" else v) for k, v in layout.items()}
        return twin

    def add_points(self, points: Sequence[ModbusPoint], units: Iterable[int]) -> None:
        """Serve more points (on `units`, or on their own unit_id)."""
        unit_ids = list(units)
        staged: list[_TwinPoint] = []
        for p in points:
            check_sim(p.sim, self.sim_extras)
            function = p.function or self._defaults.function
            code = FUNCTION_CODES[function]
            targets = [p.unit_id] if p.unit_id is not None else unit_ids
            spec = spec_of(p, self._defaults)
            for uid in targets:
                tp = _TwinPoint(
                    p,
                    uid,
                    code,
                    p.address - self._defaults.numbering,
                    spec,
                    point_signal(p, function, self.rng),
                    passive=(p.bit is not None or p.bits is not None) and not p.sim,
                    wall_clock=p.quantity == "clock" and not p.sim,
                )
                self._unit(uid).points[p.id] = tp
                staged.append(tp)
        for uid in {tp.unit for tp in staged}:
            unit = self._units[uid]
            unit.ordered = sorted(unit.points.values(), key=_write_order)
        for tp in sorted(staged, key=_write_order):
            if not tp.passive:
                self._encode(tp, self._signal_value(tp))

    def set_identity(self, identity: Mapping[str, str] | None) -> None:
        """Answer FC 43 with these objects (profile `identity` names); None: answer exception 1."""
        if identity is None:
            self._identity = None
            return
        objects: dict[int, bytes] = {}
        for name, text in identity.items():
            if name not in _OBJECT_IDS:
                continue  # `match`, `assumed`: how a profile is matched, not what a device says
            objects[_OBJECT_IDS[name]] = str(text).encode("ascii", "replace")[: MAX_PDU - 9]
        for oid in (0, 1, 2):  # the basic objects are mandatory: a device always has them
            objects.setdefault(oid, b"twin" if oid == 2 else b"unknown")
        self._identity = objects

    def _unit(self, unit: int) -> _Unit:
        if unit not in self._units:
            self._units[unit] = _Unit(unit)
        return self._units[unit]

    # --- the twin contract --------------------------------------------------------------------

    def device_config(self, target: Hashable | None = None) -> dict[str, Any]:
        """Device keys that reach one simulated device (target: its unit id; default the first)."""
        unit = self._target_unit(target)
        if unit not in self._units:
            raise KeyError(f"the twin serves no unit {unit} (units: {_format_units(self.units)})")
        out: dict[str, Any] = {"driver": "modbus"}
        if self._profile is not None:
            out["profile"] = self._profile
            if self._vars:
                out["profile_vars"] = dict(self._vars)
        if self._inline is not None:
            out["points"] = [dict(p) for p in self._inline]
        elif self._profile is None:
            out["points"] = [p.model_dump(mode="json", exclude_defaults=True) for p in self._given]
        out.update({k: (list(v) if isinstance(v, list) else v) for k, v in self._layout.items()})
        if self.serial is not None:
            out["bus"] = BUS_ID
        else:
            out["tcp"] = {"host": _client_host(self.host), "port": self.port}
            if self.framing != "tcp":
                out["transport"] = f"{self.framing}_over_tcp"
        out["unit"] = unit
        return out

    def bus_config(self) -> dict[str, Any]:
        """The ``buses:`` entry a serial twin's device config names (``bus: modbus-twin``)."""
        if self.serial is None:
            raise LookupError("the twin serves TCP: its device config needs no bus")
        if self.peer is None:
            raise LookupError("the twin does not know the client's end of its line: give peer=PATH or serial='pty'")
        return {
            "id": BUS_ID,
            "serial": {
                "port": self.peer,
                "baudrate": self.baudrate,
                "bytesize": self.bytesize,
                "parity": self.parity,
                "stopbits": self.stopbits,
                **({"framing": "ascii"} if self.framing == "ascii" else {}),
            },
        }

    def describe(self) -> str:
        if self.serial is not None:
            where = self.peer if self.serial == "pty" and self.peer else self.serial
            kind = "Modbus ASCII" if self.framing == "ascii" else "Modbus RTU"
            if self.framing == "ascii":  # not the 8N1 an RTU line usually is: say what to configure
                where += f" ({self.baudrate} {self.bytesize}{self.parity}{self.stopbits})"
        else:
            where = f"{self.host}:{self.port}"
            kind = {"rtu": "RTU over TCP", "ascii": "ASCII over TCP"}.get(self.framing, "Modbus TCP")
        count = sum(len(u.points) for u in self._units.values())
        return f"{kind} on {where}, unit ids {_format_units(self.units)}, {count} points"

    def value(self, point: str, target: Hashable | None = None) -> Value:
        """The engineering value the twin serves now."""
        tp = self._lookup(point, target)
        if (tp.passive and not tp.frozen) or tp.raw_override:
            return self._read_back(tp)
        return tp.value

    def set_value(self, point: str, value: Any, target: Hashable | None = None) -> None:
        """Serve a fixed engineering value from now on (until :meth:`release`)."""
        tp = self._lookup(point, target)
        tp.frozen = True
        tp.raw_override = False
        self._encode(tp, value)
        self._rewrite_dependents(tp)
        for other in self._units[tp.unit].ordered:
            if other.frozen and not other.raw_override and other is not tp and other.is_view:
                self._encode(other, other.value)

    def release(self, point: str, target: Hashable | None = None) -> None:
        """Let a point pinned by :meth:`set_value`, :meth:`set_raw` or a write move with time again."""
        tp = self._lookup(point, target)
        tp.frozen = tp.raw_override = False

    def set_raw(self, function: str, address: int, words: Sequence[int], target: Hashable | None = None) -> None:
        """Write raw registers (wire address), e.g. a NaN or 0x8000 sentinel; bits for coil/discrete.

        The points in those registers stop moving (until :meth:`release`), so the raw words stay.
        """
        code = FUNCTION_CODES[function]
        u = self._unit(self._target_unit(target))
        if code in (1, 2):
            _table_write(u.tables[code], address, bytes(1 if w else 0 for w in words))
        else:
            _table_write(u.tables[code], 2 * address, struct.pack(f">{len(words)}H", *words))
        self._pin_written(u, code, address, len(words))

    def inject_exception(
        self, first: int, last: int, code: int = 2, unit: int | None = None, function: str | None = None
    ) -> None:
        """Answer requests touching wire addresses first..last with exception `code` (10/11: a gateway's)."""
        fc = FUNCTION_CODES[function] if function else None
        self._exceptions.append((unit, fc, first, last, code))

    def clear_exceptions(self) -> None:
        """Forget the injected exceptions (the unreadable ranges stay)."""
        self._exceptions.clear()

    def drop_connections(self) -> None:
        """Close every client connection (a gateway reboot)."""
        for t in list(self._connections):
            t.close()

    @property
    def connections(self) -> int:
        return len(self._connections)

    @property
    def late_replies(self) -> int:
        """Replies held back (a slow fault, wire time) and not sent yet."""
        return self._late

    @property
    def units(self) -> list[int]:
        """Every unit id served (a profile's points may add units beside the devices' own)."""
        return sorted(self._units)

    def points(self, unit: int) -> list[str]:
        return list(self._units[unit].points)

    def update(self) -> None:
        """Recompute every moving value now (the timer does this every `update_interval`)."""
        for unit in self._units.values():
            for tp in unit.ordered:
                if tp.frozen:
                    if not tp.raw_override and tp.is_view:
                        self._encode(tp, tp.value)  # the register under it may have moved
                elif not tp.passive:
                    self._encode(tp, self._signal_value(tp))

    def _target_unit(self, target: Hashable | None) -> int:
        if target is None:
            return self._device_units[0]
        if isinstance(target, int | str):
            return int(target)
        raise TypeError(f"a Modbus twin's target is a unit id, not {target!r}")

    def _lookup(self, point: str, target: Hashable | None) -> _TwinPoint:
        if target is not None:
            unit = self._units.get(self._target_unit(target))
            if unit is None or point not in unit.points:
                raise KeyError(f"the twin has no point {point!r} on unit {target}")
            return unit.points[point]
        first = self._units.get(self._device_units[0])
        if first is not None and point in first.points:
            return first.points[point]
        for uid in self.units:  # a point with its own unit_id
            if point in self._units[uid].points:
                return self._units[uid].points[point]
        raise KeyError(f"the twin has no point {point!r}")

    # --- encoding -----------------------------------------------------------------------------

    def _signal_value(self, tp: _TwinPoint) -> Value:
        if tp.wall_clock:
            return int(self.clock.now())
        return tp.signal.at(self.clock.elapsed())

    def _exponent(self, tp: _TwinPoint) -> int:
        p = tp.point
        if p.exponent_point is None:
            return 0
        src = self._units[tp.unit].points.get(p.exponent_point)
        return int(src.value) if src is not None and isinstance(src.value, int | float) else 0

    def _encode(self, tp: _TwinPoint, value: Value) -> None:
        tp.value = value
        p = tp.point
        raw: Value = value
        if isinstance(value, int | float) and not isinstance(value, bool) and tp.spec.type != "string":
            divisor = (p.scale or 1.0) * 10.0 ** self._exponent(tp)
            raw = (value - p.offset) / divisor
            if tp.spec.type.startswith(("int", "uint")) and p.bits is None:
                lo, hi = type_range(tp.spec.type)
                raw = min(max(raw, lo), hi)
        table = self._units[tp.unit].tables[tp.code]
        if tp.spec.is_bit:
            _table_write(table, tp.address, encode(tp.spec, raw))
            return
        pos, size = 2 * tp.address, 2 * tp.spec.words
        current = _table_read(table, pos, size) if tp.is_view else None
        _table_write(table, pos, encode(tp.spec, raw, current))

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
        return raw * p.scale * 10.0 ** self._exponent(tp) + p.offset

    def _rewrite_dependents(self, source: _TwinPoint) -> None:
        for tp in self._units[source.unit].points.values():
            if tp.point.exponent_point == source.point.id and not tp.raw_override:
                self._encode(tp, tp.value)

    def _pin_written(self, u: _Unit, code: int, address: int, count: int) -> None:
        for tp in u.points.values():
            if tp.overlaps(code, address, count):
                tp.frozen = tp.raw_override = True

    # --- protocol -----------------------------------------------------------------------------

    def handle(self, unit: int, pdu: bytes) -> bytes | None:
        """The reply PDU to a request PDU for `unit` (before faults), or None when nobody is there."""
        u = self._units.get(unit)
        if u is None or not pdu:
            return None
        self.requests += 1
        handler = self._handlers.get(pdu[0])
        if handler is None:
            return _exception(pdu[0], 1)
        return handler(u, pdu)

    def _refused(self, unit: int, code: int, address: int, count: int) -> int:
        """The exception a request of `count` items at `address` of table `code` gets, or 0."""
        if address + count > 65536:
            return 2
        last = address + count - 1
        for f_unit, f_fc, lo, hi, exc in (*self._unreadable, *self._exceptions):
            if (f_unit is None or f_unit == unit) and (f_fc is None or f_fc == code) and lo <= last and hi >= address:
                return exc
        return 0

    def _read(self, u: _Unit, pdu: bytes) -> bytes:
        fc = pdu[0]
        if len(pdu) != 5:
            return _exception(fc, 3)
        address, count = _HH.unpack_from(pdu, 1)
        if not 1 <= count <= MAX_READ[fc]:
            return _exception(fc, 3)
        if exc := self._refused(u.id, fc, address, count):
            return _exception(fc, exc)
        table = u.tables[fc]
        data = _pack_bits(_table_read(table, address, count)) if fc < 3 else _table_read(table, 2 * address, 2 * count)
        return bytes((fc, len(data))) + data

    def _write_coil(self, u: _Unit, pdu: bytes) -> bytes:
        if len(pdu) != 5:
            return _exception(5, 3)
        address, value = _HH.unpack_from(pdu, 1)
        if value not in (0x0000, 0xFF00):
            return _exception(5, 3)
        if exc := self._refused(u.id, 1, address, 1):
            return _exception(5, exc)
        self._store_bits(u, address, b"\x01" if value else b"\x00")
        return pdu

    def _write_coils(self, u: _Unit, pdu: bytes) -> bytes:
        if len(pdu) < 6:
            return _exception(15, 3)
        address, count = _HH.unpack_from(pdu, 1)
        size = pdu[5]
        if not 1 <= count <= MAX_WRITE_COILS or size != (count + 7) // 8 or len(pdu) != 6 + size:
            return _exception(15, 3)
        if exc := self._refused(u.id, 1, address, count):
            return _exception(15, exc)
        self._store_bits(u, address, _unpack_bits(pdu[6:], count))
        return pdu[:5]

    def _write_register(self, u: _Unit, pdu: bytes) -> bytes:
        if len(pdu) != 5:
            return _exception(6, 3)
        address = _HH.unpack_from(pdu, 1)[0]
        if exc := self._refused(u.id, 3, address, 1):
            return _exception(6, exc)
        self._store_registers(u, address, pdu[3:5])
        return pdu

    def _write_registers(self, u: _Unit, pdu: bytes) -> bytes:
        if len(pdu) < 6:
            return _exception(16, 3)
        address, count = _HH.unpack_from(pdu, 1)
        size = pdu[5]
        if not 1 <= count <= MAX_WRITE_REGISTERS or size != 2 * count or len(pdu) != 6 + size:
            return _exception(16, 3)
        if exc := self._refused(u.id, 3, address, count):
            return _exception(16, exc)
        self._store_registers(u, address, pdu[6:])
        return pdu[:5]

    def _mask_write(self, u: _Unit, pdu: bytes) -> bytes:
        if len(pdu) != 7:
            return _exception(22, 3)
        address, and_mask, or_mask = _HHH.unpack_from(pdu, 1)
        if exc := self._refused(u.id, 3, address, 1):
            return _exception(22, exc)
        current = int.from_bytes(_table_read(u.tables[3], 2 * address, 2), "big")
        result = (current & and_mask) | (or_mask & ~and_mask & 0xFFFF)
        self._store_registers(u, address, result.to_bytes(2, "big"))
        return pdu

    def _device_id(self, u: _Unit, pdu: bytes) -> bytes:
        """Read Device Identification: stream access (codes 1-3) and individual access (code 4)."""
        objects = self._identity
        if objects is None or len(pdu) < 2 or pdu[1] != MEI_DEVICE_ID:
            return _exception(FC_MEI, 1)
        if len(pdu) != 4:
            return _exception(FC_MEI, 3)
        code, start = pdu[2], pdu[3]
        regular = any(3 <= oid <= 0x7F for oid in objects)
        # A device of basic conformity refuses the regular and extended categories.
        if not READ_BASIC <= code <= READ_ONE or (code in (2, 3) and not regular):
            return _exception(FC_MEI, 3)
        conformity = 0x80 | (2 if regular else 1)
        if code == READ_ONE:
            if start not in objects:
                return _exception(FC_MEI, 2)
            ids = [start]
        else:
            last = 2 if code == READ_BASIC else 0x7F if code == READ_REGULAR else 0xFF
            ids = sorted(oid for oid in objects if oid <= last)
            if start not in ids:
                start = 0  # the standard: an unknown object id restarts the stream at the beginning
            ids = ids[ids.index(start) :]
        out = bytearray()
        count, size = 0, 7
        for oid in ids:
            value = objects[oid]
            if count and (size + 2 + len(value) > MAX_PDU or count == self.identity_split):
                return bytes((FC_MEI, MEI_DEVICE_ID, code, conformity, 0xFF, oid, count)) + out
            out += bytes((oid, len(value))) + value
            count += 1
            size += 2 + len(value)
        return bytes((FC_MEI, MEI_DEVICE_ID, code, conformity, 0, 0, count)) + out

    def _store_bits(self, u: _Unit, address: int, bits: bytes) -> None:
        _table_write(u.tables[1], address, bits)
        self._pin_written(u, 1, address, len(bits))
        self._remember(u, 1, address, [bool(b) for b in bits])

    def _store_registers(self, u: _Unit, address: int, data: bytes) -> None:
        _table_write(u.tables[3], 2 * address, data)
        count = len(data) // 2
        self._pin_written(u, 3, address, count)
        self._remember(u, 3, address, list(struct.unpack(f">{count}H", data)))

    def _remember(self, u: _Unit, code: int, address: int, raw: list[bool] | list[int]) -> None:
        at = [tp for tp in u.points.values() if tp.code == code and tp.address == address]
        at.sort(key=lambda tp: tp.is_view)  # the register's own point before the bits inside it
        value: Any
        if at:
            name, value = at[0].point.id, self._read_back(at[0])
        else:
            name = f"{_TABLE_NAMES[code]}:{address + self._defaults.numbering}"
            value = raw[0] if len(raw) == 1 else list(raw)
        self.record_write(Write(point=name, value=value, raw=raw, target=u.id))

    def _reply_delay(self, request_len: int, reply_len: int) -> float:
        if not (self.wire_time and self.serial is not None):
            return 0.0
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return (request_len + reply_len) * bits / self.baudrate

    def _send_reply(self, server: ServerBase, unit: int, frame: bytes, request_len: int) -> None:
        """Send one reply frame the way the unit's fault says (none, slow, garbage, cut off)."""
        out = faulty_reply(self.faults.of(unit), frame, self.rng)
        if out.data is None:
            return
        delay = out.delay + self._reply_delay(request_len, len(out.data))
        # A serial line cannot be hung up: a cut-off reply there is just half a frame.
        server.send(out.data, delay, close=out.close and self.serial is None)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None or self._serial_transport is not None:
            return
        loop = asyncio.get_running_loop()
        track = self.serial is None
        server = {"rtu": RtuServer, "ascii": AsciiServer}.get(self.framing, MbapServer)
        factory: Callable[[], ServerBase] = lambda: server(self, track)  # noqa: E731
        if self.serial == "pty":
            self._serial_transport = PtyTransport.open(loop, factory())
            self.peer = self._serial_transport.peer
        elif self.serial is not None:
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

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.update_interval)
            self.update()

    # --- the command line ---------------------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--units", default=None, help="unit ids, e.g. 1,2 or 1-64 (default: the profile's unit)")
        parser.add_argument("--rtu", action="store_true", help="RTU framing on TCP (a serial-to-Ethernet converter)")
        parser.add_argument(
            "--framing",
            choices=["tcp", "rtu", "ascii"],
            default=None,
            help="tcp (MBAP), rtu or ascii; on --serial: rtu (default) or ascii",
        )
        parser.add_argument(
            "--serial",
            default=None,
            help="serve RTU/ASCII on this serial port / pty end instead of TCP ('pty': make one)",
        )
        parser.add_argument("--baudrate", type=int, default=9600)
        parser.add_argument("--parity", choices=["N", "E", "O"], default=None, help="default N (E with ascii)")
        parser.add_argument("--bytesize", type=int, choices=[7, 8], default=None, help="default 8 (7 with ascii)")
        parser.add_argument("--stopbits", type=int, choices=[1, 2], default=1)
        parser.add_argument("--wire-time", action="store_true", help="delay serial replies by their time on the wire")
        parser.add_argument("--interval", default="1s", help="how often values change (default 1s)")

    @classmethod
    def options_from_args(cls, args: argparse.Namespace) -> dict[str, Any]:
        return {
            "units": parse_units(args.units) if args.units else None,
            "framing": args.framing or ("rtu" if args.rtu else "tcp"),
            "serial": args.serial,
            "baudrate": args.baudrate,
            "parity": args.parity,
            "bytesize": args.bytesize,
            "stopbits": args.stopbits,
            "wire_time": args.wire_time,
            "update_interval": parse_duration(args.interval),
            "base_dir": Path.cwd(),
        }


# --- profiles and units -------------------------------------------------------------------------


def _profile_ref(profile: str | Path | None, base_dir: Path | None) -> str | None:
    """A shipped name as it is, a path made absolute (a device config elsewhere must find it)."""
    if profile is None:
        return None
    text = str(profile)
    if isinstance(profile, Path) or "/" in text or text.endswith((".yaml", ".yml")):
        path = Path(text)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return str(path.resolve())
    return text


def _profile_identity(ref: str | None) -> dict[str, str] | None:
    if ref is None:
        return None
    identity = load_profile(resolve_profile_path(ref, "modbus")).identity
    return identity.objects() if identity is not None else None


def _device_of(
    profile: str | None,
    points: Sequence[Mapping[str, Any]] | None,
    vars: Mapping[str, Any] | None,
    layout: Mapping[str, Any],
    unit: int | None,
) -> ModbusDevice:
    from gateway.config import parse_device

    raw: dict[str, Any] = {"id": "twin", "driver": "modbus", "tcp": {"host": "127.0.0.1", "port": 502}, **layout}
    if profile is not None:
        raw["profile"] = profile
        raw["profile_vars"] = dict(vars or {})
    if points:
        raw["points"] = [dict(p) for p in points]
    if unit is not None:
        raw["unit"] = unit
    device = parse_device(raw)
    assert isinstance(device, ModbusDevice)
    return device


def _modbus_points(device: ModbusDevice) -> list[ModbusPoint]:
    return [p for p in device.resolved_points if isinstance(p, ModbusPoint)]


def _client_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


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
