"""The COSEM objects a twin meter serves, and how a profile's points become them.

Values are engineering values (what the gateway publishes) from :class:`gateway.twin.Signal`;
an object turns them into its raw form with its own scaler (and the point's scale and offset),
exactly: 123456.7 Wh with scaler -1 is served as 1234567. A counter (a signal with a rate) is
served rounded down to whole raw units, so it never runs backwards; everything else is rounded to
the nearest.

Signals run on meter time since :data:`SIGNAL_EPOCH` (2024-01-01), not since the twin started, so
a load profile's history has the same shape as the live values and a counter read today has
grown by its rate since 2024 (a profile of a meter that has been running for years).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from drivers.dlms import codec
from drivers.dlms.codec import DataType
from drivers.dlms.config import CLOCK_OBIS, PROFILE_GENERIC, DlmsPoint
from gateway.models import parse_duration
from gateway.points import ENERGY_QUANTITIES, Kind
from gateway.twin import Signal, TwinValue, signal_for

SIGNAL_EPOCH = 1704067200.0  # 2024-01-01T00:00:00Z
EPOCH_2024 = SIGNAL_EPOCH
ASSOCIATION_OBIS = "0.0.40.0.0.255"
DISCONNECT_OBIS = "0.0.96.3.10.255"
BILLING_SCRIPT_OBIS = "0.0.10.0.1.255"  # MDI reset / end of billing period script table
DEMAND_PERIOD = 900  # seconds: the demand registers' period

#: `sim: {type: ...}` -> the A-XDR type an object serves.
TYPES: dict[str, DataType] = {
    "boolean": DataType.BOOLEAN,
    "uint8": DataType.UINT8,
    "uint16": DataType.UINT16,
    "uint32": DataType.UINT32,
    "uint64": DataType.UINT64,
    "int8": DataType.INT8,
    "int16": DataType.INT16,
    "int32": DataType.INT32,
    "int64": DataType.INT64,
    "float32": DataType.FLOAT32,
    "float64": DataType.FLOAT64,
    "enum": DataType.ENUM,
    "octet_string": DataType.OCTET_STRING,
    "visible_string": DataType.VISIBLE_STRING,
}
FLOAT_TYPES = frozenset({DataType.FLOAT32, DataType.FLOAT64})
TEXT_TYPES = frozenset({DataType.OCTET_STRING, DataType.VISIBLE_STRING, DataType.UTF8_STRING})
INT_RANGES: dict[DataType, tuple[int, int]] = {
    DataType.BOOLEAN: (0, 1),
    DataType.UINT8: (0, 0xFF),
    DataType.ENUM: (0, 0xFF),
    DataType.UINT16: (0, 0xFFFF),
    DataType.UINT32: (0, 0xFFFF_FFFF),
    DataType.UINT64: (0, 2**64 - 1),
    DataType.INT8: (-0x80, 0x7F),
    DataType.INT16: (-0x8000, 0x7FFF),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
}
_COUNTER_SLACK = Fraction(1, 10**6)  # float noise of value + rate * t, in raw units

_DEFAULT_TEXT = {
    "serial_number": "12345678",
    "firmware": "SEN-1.0.0",
    "model": "SENSEMI",
    "identity": "SEN0012345678",
}
_SCALERS = {"voltage": -1, "frequency": -2, "power_factor": -3, "leakage_current": -3, "temperature": -1}
# Captured every 15 minutes, every day, once a month (0); other profiles: 15 minutes.
_CAPTURE_PERIODS = {"1.0.99.1.0.255": 900, "1.0.99.2.0.255": 86400, "0.0.98.1.0.255": 0}


def _fraction(value: float | int | Fraction) -> Fraction:
    """A number as the decimal a person means (0.1 is 1/10, not its binary neighbour)."""
    if isinstance(value, Fraction | int):
        return Fraction(value)
    return Fraction(repr(float(value)))


def plain_number(value: Fraction | float | int) -> int | float:
    """An engineering value as a plain number: an int when it is whole."""
    if isinstance(value, Fraction):
        return value.numerator if value.denominator == 1 else float(value)
    return value


@dataclass(slots=True, eq=False)
class TwinObject:
    """One COSEM object the twin serves.

    `signal` is in engineering units (raw x scale x 10**scaler + offset); `pinned` (a test's
    :meth:`~drivers.dlms.twin.DlmsTwin.set_value`, or an accepted SET) replaces it. A profile
    generic (class 7) has `columns` (class, OBIS, attribute; the clock is added first),
    `capture_period` in seconds (0: monthly, as a billing profile) and `capacity` entries.
    """

    class_id: int
    obis: str
    signal: Signal | None = None
    dtype: DataType = DataType.UINT32
    scaler: int = 0
    unit: int = 255
    text: str | bytes | None = None
    columns: list[tuple[int, str, int]] = field(default_factory=list)
    capture_period: int = 900
    capacity: int = 9600
    scale: float = 1.0
    offset: float = 0.0
    quantity: str = "other"
    pinned: Fraction | float | str | bytes | None = None
    reset_at: float | None = None  # the last reset (method 1, a billing script): maxima read 0 after it
    zeroed_until: float | None = None  # ... until the end of the demand period it fell in

    @property
    def counter(self) -> bool:
        return self.signal is not None and self.signal.rate != 0 and self.pinned is None

    @property
    def resettable(self) -> bool:
        """A maximum or a demand: what a billing (MDI reset) script resets."""
        if self.class_id == 5:
            return True
        return self.class_id in (3, 4) and ("max" in self.quantity or "demand" in self.quantity)

    def reset(self, at: float) -> None:
        self.reset_at = math.floor(at * 1000) / 1000  # the meter's clock counts milliseconds
        self.zeroed_until = (math.floor(at / DEMAND_PERIOD) + 1) * DEMAND_PERIOD

    def zeroed(self, t: float) -> bool:
        return self.reset_at is not None and self.zeroed_until is not None and self.reset_at <= t < self.zeroed_until

    def engineering(self, t: float) -> Fraction | TwinValue | bytes:
        """The engineering value at meter time `t` (epoch seconds)."""
        if self.pinned is not None:
            return self.pinned
        if self.zeroed(t):
            return 0
        if self.signal is None:
            return 0
        return self.signal.at(t - SIGNAL_EPOCH)

    def to_raw(self, value: Fraction | TwinValue) -> int | float:
        """An engineering value as this object's raw value (clamped to its type)."""
        if isinstance(value, str):
            value = float(value)
        number = int(value) if isinstance(value, bool) else value
        if self.dtype in FLOAT_TYPES:
            return (float(number) - self.offset) / (self.scale or 1.0) * 10.0 ** (-self.scaler)
        exact = (_fraction(number) - _fraction(self.offset)) / _fraction(self.scale or 1.0)
        exact /= Fraction(10) ** self.scaler
        raw = math.floor(exact + _COUNTER_SLACK) if self.counter else round(exact)
        lo, hi = INT_RANGES.get(self.dtype, (-(2**63), 2**64 - 1))
        return min(max(raw, lo), hi)

    def from_raw(self, raw: int | float) -> Fraction | float:
        """A raw value as the engineering value the gateway computes from it."""
        if isinstance(raw, float):
            return (raw * 10.0**self.scaler) * self.scale + self.offset
        return Fraction(raw) * _fraction(self.scale) * Fraction(10) ** self.scaler + _fraction(self.offset)

    def raw(self, t: float) -> int | float:
        value = self.engineering(t)
        if isinstance(value, bytes):
            raise TypeError(f"{self.obis} serves octets, not a number")
        return self.to_raw(value)

    def typed(self, t: float) -> codec.Data:
        """Attribute 2 of a value object (Data, Register...) at meter time `t`, as A-XDR data."""
        if self.text is not None or self.dtype in TEXT_TYPES:
            value = self.pinned if isinstance(self.pinned, str | bytes) else self.text
            if value is None:
                value = ""
            if self.dtype == DataType.OCTET_STRING or isinstance(value, bytes):
                return codec.octets(value if isinstance(value, bytes) else value.encode())
            return codec.Data(DataType.VISIBLE_STRING, value)
        raw = self.raw(t)
        if self.dtype == DataType.BOOLEAN:
            return codec.Data(DataType.BOOLEAN, bool(raw))
        if self.dtype in FLOAT_TYPES:
            return codec.Data(self.dtype, float(raw))
        return codec.Data(self.dtype, int(raw))


def copy_object(o: TwinObject) -> TwinObject:
    """An independent copy (each meter of a line owns its objects)."""
    return TwinObject(
        o.class_id,
        o.obis,
        o.signal,
        o.dtype,
        o.scaler,
        o.unit,
        o.text,
        list(o.columns),
        o.capture_period,
        o.capacity,
        o.scale,
        o.offset,
        o.quantity,
        o.pinned,
    )


# --- from a profile's points --------------------------------------------------------------------


def _dtype(sim: Mapping[str, Any], default: DataType) -> DataType:
    name = sim.get("type")
    if name is None:
        return default
    if str(name) not in TYPES:
        raise ValueError(f"sim type {name!r}: use one of {', '.join(TYPES)}")
    return TYPES[str(name)]


def _default_scaler(point: DlmsPoint) -> int:
    q = point.quantity
    if point.kind is not Kind.GAUGE or q in ENERGY_QUANTITIES:
        return 0
    if q in _SCALERS:
        return _SCALERS[q]
    if q.startswith("current"):
        return -3
    if "power" in q:
        return 0
    return -2


def _never_negative(signal: Signal) -> bool:
    if signal.minimum is not None and signal.minimum < 0:
        return False
    value = signal.value
    return (not isinstance(value, int | float) or value >= 0) and signal.rate >= 0


def _text_hint(sim: Mapping[str, Any]) -> str | None:
    if "text" in sim:
        return str(sim["text"])
    value = sim.get("value")
    return value if isinstance(value, str) else None


def _data_object(point: DlmsPoint, obis: str, rng: random.Random) -> TwinObject:
    sim = point.sim or {}
    base = {"quantity": point.quantity, "scale": point.scale, "offset": point.offset}
    text = _text_hint(sim)
    numeric = any(k in sim for k in ("value", "min", "max", "rate")) and text is None
    if numeric:
        signal = signal_for(sim, quantity=point.quantity, phase=point.phase, kind=point.kind.value, rng=rng)
        default = DataType.UINT32 if _never_negative(signal) else DataType.INT32
        return TwinObject(1, obis, signal, dtype=_dtype(sim, default), **base)  # type: ignore[arg-type]
    if text is None:
        text = _DEFAULT_TEXT.get(point.quantity, "edgegw-twin")
    return TwinObject(1, obis, dtype=_dtype(sim, DataType.VISIBLE_STRING), text=text, **base)  # type: ignore[arg-type]


def object_for(
    point: DlmsPoint, rng: random.Random, *, class_id: int | None = None, obis: str | None = None
) -> TwinObject:
    """The COSEM object serving a point (or, with class_id/obis, the column a profile point captures)."""
    cid = point.class_id if class_id is None else class_id
    code = point.obis if obis is None else obis
    if cid == 8:
        return TwinObject(8, code)
    if cid == 1:
        return _data_object(point, code, rng)
    sim = point.sim or {}
    if _text_hint(sim) is not None:
        raise ValueError(f"point {point.id}: a class {cid} object serves numbers; `text` is for class 1 (Data)")
    signal = signal_for(sim, quantity=point.quantity, phase=point.phase, kind=point.kind.value, rng=rng)
    scaler = int(sim["scaler"]) if "scaler" in sim else _default_scaler(point)
    if not -128 <= scaler <= 127:
        raise ValueError(f"point {point.id}: sim scaler {scaler} is not -128..127")
    dtype = _dtype(sim, DataType.UINT32 if _never_negative(signal) else DataType.INT32)
    return TwinObject(
        cid,
        code,
        signal,
        dtype=dtype,
        scaler=scaler,
        unit=codec.UNIT_CODES.get(point.unit, 255),
        scale=point.scale,
        offset=point.offset,
        quantity=point.quantity,
    )


def _profile_object(point: DlmsPoint) -> TwinObject:
    sim = point.sim or {}
    period = _CAPTURE_PERIODS.get(point.obis, 900)
    if "capture_period" in sim:
        period = int(parse_duration(sim["capture_period"]))
    default_entries = 9600 if period == 900 else 400 if period else 24
    capacity = int(sim.get("entries", default_entries))
    if capacity < 1:
        raise ValueError(f"point {point.id}: sim entries must be at least 1")
    return TwinObject(PROFILE_GENERIC, point.obis, capture_period=period, capacity=capacity)


def objects_from_points(points: Sequence[DlmsPoint], rng: random.Random) -> list[TwinObject]:
    """The objects serving `points`: the first point on an OBIS code defines its object."""
    objects: dict[str, TwinObject] = {}
    profiles: dict[str, TwinObject] = {}
    for p in points:
        if p.class_id != PROFILE_GENERIC and p.obis not in objects:
            objects[p.obis] = object_for(p, rng)
    for p in points:
        if p.class_id != PROFILE_GENERIC or p.column is None:
            continue
        prof = profiles.get(p.obis)
        if prof is None:
            prof = profiles[p.obis] = _profile_object(p)
        column = objects.get(p.column)
        col_class = p.column_class or (column.class_id if column is not None else 3)
        if column is None:
            objects[p.column] = object_for(p, rng, class_id=col_class, obis=p.column)
        entry = (col_class, p.column, p.column_attribute)
        if entry not in prof.columns:
            prof.columns.append(entry)
    return [*objects.values(), *profiles.values()]


def ensure_clock_column(obj: TwinObject) -> None:
    if obj.class_id == PROFILE_GENERIC and not any(c[1] == CLOCK_OBIS for c in obj.columns):
        obj.columns.insert(0, (8, CLOCK_OBIS, 2))


def profile_path(ref: str | Path) -> Path:
    from gateway.profiles import resolve_profile_path

    return ref if isinstance(ref, Path) else resolve_profile_path(str(ref), "dlms")
