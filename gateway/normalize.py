"""Raw values -> engineering values with quality, and the JSON the consumers read.

Pure functions over a per-device table compiled once at start, so the hot path is a loop over
plain lists: no per-reading objects, no pydantic, no json.dumps per reading.
"""

from __future__ import annotations

import functools
import json
import math
import struct
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from itertools import compress
from operator import eq, not_
from typing import cast

from gateway.calc import Compiled, combine, compile_expr
from gateway.driver import NO_VALUE, NoValue, PointError, Pushed, RawReadings, RawValue
from gateway.interning import interned
from gateway.models import PointConfig, deadband_parts
from gateway.points import Quality

GOOD = Quality.GOOD.value
UNCERTAIN = Quality.UNCERTAIN.value
BAD = Quality.BAD.value

Value = int | float | bool | str | None

_INF = math.inf


@functools.lru_cache(maxsize=4096)  # a few scales, thousands of points: built at start, per device
def ratio(x: float) -> tuple[int, int]:
    """The exact decimal a profile wrote (0.1 means 1/10, not 0.1000000000000000055...)."""
    frac = Fraction(Decimal(repr(x)))
    return frac.numerator, frac.denominator


def scale_exact(raw: int | float, num: int, den: int, exponent: int) -> int | float:
    """raw * num/den * 10**exponent with one rounding for integer raw values."""
    if exponent > 0:
        num *= 10**exponent
    elif exponent < 0:
        den *= 10**-exponent
    if isinstance(raw, int):
        if den == 1:
            return raw * num
        # int/int true division is correctly rounded: 1234567/10 -> 123456.7 exactly as written.
        return (raw * num) / den
    return raw * num / den if den != 1 or num != 1 else raw


#: `PointConfig.float_digits()` of a float32 source: 9 significant digits always identify one.
FLOAT32_DIGITS = 9
_F32 = struct.Struct("f")
_G7, _G8, _G9 = "%.7g".__mod__, "%.8g".__mod__, "%.9g".__mod__
_SHORTER = tuple(f"%.{n}g".__mod__ for n in range(6, 0, -1))
_F32_MIN_NORMAL = 2.0**-126  # below it a float32 has fewer digits than %.7g assumes


def _significant(text: str) -> int:
    """Significant digits of a %g text (trailing zeros of an integer part are not: "50000" is 1)."""
    return len(text.partition("e")[0].replace("-", "").replace(".", "").strip("0"))


def float32_text(x: float) -> str:
    """The shortest decimal that reads back as the same float32: 101.2, not 101.199997 (or 101.19999694824219).

    A value the device made from a decimal (101.2 kW, 0.3) comes back as that decimal, any other
    with the 8 or 9 digits that identify it. `%g` drops trailing zeros, so the 7-digit text of a
    float32 that stands for a shorter decimal is that decimal already ("90", not "9e+01"). Only a
    text of all 7 digits (1e28 reads back as 9.999999e+27 at the top of a decade) or a subnormal
    tries fewer.
    """
    # On the hot path of every float32 reading: two formats for most, the round trip inlined.
    pack, unpack = _F32.pack, _F32.unpack
    try:
        text = _G7(x)
        if unpack(pack(float(text)))[0] == x:
            if abs(x) >= _F32_MIN_NORMAL and _significant(text) < 7:
                return text
            for fmt in _SHORTER:
                shorter = fmt(x)
                if shorter == text:
                    continue  # the same text with a zero fewer ("90"): try fewer digits still
                if unpack(pack(float(shorter)))[0] != x:
                    break
                text = shorter
            return text
        text = _G8(x)
        return text if unpack(pack(float(text)))[0] == x else _G9(x)
    except OverflowError:  # beyond float32's range: not a float32 reading, keep every digit
        return repr(x)


# Per message size n: the %.7g and %.8g formats of n values in one string, and a struct of n float32s.
_VECTOR: dict[int, tuple[str, str, struct.Struct]] = {}


def _vector(n: int) -> tuple[str, str, struct.Struct]:
    found = _VECTOR.get(n)
    if found is None:
        found = _VECTOR[n] = (",".join(["%.7g"] * n), ",".join(["%.8g"] * n), struct.Struct(f"{n}f"))
    return found


def float32_texts(values: tuple[float, ...]) -> list[str]:
    """`[float32_text(x) for x in values]`, with each step done for all values at once.

    The formats and the float32 round trips run in C over the whole tuple (one `%` and one
    struct pack for all values). What remains per value is a comparison: a 7-digit text that reads
    back and starts with a digit from 1 to 7 is the shortest, because a float32's rounding interval
    (at most 2**-23 of it) holds two 7-digit decimals only when the leading digits are 8.39 or more;
    so the 6-digit text either is the same decimal or does not read back. Every other value (a
    leading 8 or 9, subnormals, anything that does not pack as a float32) goes through
    float32_text itself.
    """
    n = len(values)
    if not n:
        return []
    f7, f8, vec = _vector(n)
    try:
        texts = (f7 % values).split(",")
        ok = list(map(eq, vec.unpack(vec.pack(*map(float, texts))), values))
    except (OverflowError, struct.error):
        return list(map(float32_text, values))
    if min(map(abs, filter(None, values)), default=1.0) < _F32_MIN_NORMAL:
        return list(map(float32_text, values))
    # The first significant digit ("" for zero): with 8 or 9, a shorter text may read back too.
    high = [i for i in compress(range(n), ok) if texts[i].lstrip("-0.")[:1] > "7"]
    if high:
        sub = tuple(map(values.__getitem__, high))
        vec = _vector(len(sub))[2]
        texts6 = ("%.6g," * len(sub))[:-1] % sub
        try:
            back6 = vec.unpack(vec.pack(*map(float, texts6.split(","))))
        except (OverflowError, struct.error):
            back6 = sub  # every one through float32_text
        for i, text6, y, x in zip(high, texts6.split(","), back6, sub, strict=True):
            # The same text with 6 digits has fewer than 7 significant ones; a 6-digit text that
            # does not read back ends float32_text's search for a shorter one at once.
            if text6 != texts[i] and y == x:
                texts[i] = float32_text(x)
    if len(ok) != ok.count(True):
        miss = list(compress(range(n), map(not_, ok)))
        sub = tuple(map(values.__getitem__, miss))
        _f7, f8, vec = _vector(len(sub))
        texts8 = (f8 % sub).split(",")
        back = vec.unpack(vec.pack(*map(float, texts8)))
        for i, text, y, x in zip(miss, texts8, back, sub, strict=True):
            texts[i] = text if y == x else _G9(x)
    return texts


def scale_float32(raw: float, num: int, den: int, exponent: int, offset: float) -> float:
    """A float32 reading scaled as the decimal it stands for: 101.2 kW x 1000 is 101200 W, not 101199.997."""
    exact = Fraction(float32_text(raw)) * num / den * Fraction(10) ** exponent
    return float(exact + Fraction(repr(offset)) if offset else exact)


def _scaled(p: PointConfig) -> bool:
    return p.scale != 1 or p.offset != 0 or p.exponent_point is not None


@functools.cache
def _float_format(digits: int | None) -> Callable[[float], str]:
    if digits == FLOAT32_DIGITS:
        return float32_text
    return f"%.{digits}g".__mod__ if digits else float.__repr__


@dataclass(slots=True)
class Batch:
    """One device's normalised readings (columnar), and the table that encodes them.

    A batch is self-contained: the publisher calls :meth:`encode` and never needs the
    normaliser that made it.
    """

    device: str
    ts: int
    encoder: Encoder
    index: list[int] = field(default_factory=list)
    values: list[Value] = field(default_factory=list)
    qualities: list[str] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    stamps: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.index)

    def add(self, i: int, value: Value, quality: str, error: str | None, ts: int) -> None:
        self.index.append(i)
        self.values.append(value)
        self.qualities.append(quality)
        self.errors.append(error)
        self.stamps.append(ts)

    def encode(self, seq: int) -> bytes:
        """The data message of the MQTT contract (docs/mqtt.md)."""
        return self.encoder.encode(self, seq)

    def as_dicts(self) -> list[dict[str, object]]:
        """The readings as dicts (for `edgegw read` and per-point topics)."""
        return self.encoder.as_dicts(self)


# HA mode: `,"instance":"boxA"`, set once at start (set_instance) and baked into each Encoder's
# device fragment, so a data message names its publisher at no cost per message.
_instance_fragment = ""


def set_instance(instance: str | None) -> None:
    """Name the publishing instance in every data message encoded from now on (None: don't)."""
    global _instance_fragment
    _instance_fragment = "" if instance is None else ',"instance":' + json.dumps(instance)


# A hundred devices of one profile repeat the same point ids and units: each fragment is made once
# (start-up of 10 000 points) and shared (memory).
@functools.lru_cache(maxsize=65536)
def _point_fragment(point_id: str) -> str:
    return '{"point":' + json.dumps(point_id) + ',"value":'


@functools.lru_cache(maxsize=4096)
def _unit_fragments(unit: str) -> tuple[str, str]:
    return ',"unit":' + json.dumps(unit) + ',"quality":"', ',"unit":' + json.dumps(unit) + ',"quality":"good","ts":'


class _Fragments:
    """The JSON fragments of a list of points, shared by every device with the same points."""

    __slots__ = ("__weakref__", "float_fmt", "good_tail", "ids", "prefix", "shapes", "unit_json", "units")

    def __init__(self, points: Sequence[PointConfig]) -> None:
        self.ids = [p.id for p in points]
        self.units = [p.unit for p in points]
        self.prefix = [_point_fragment(p.id) for p in points]
        self.unit_json = [_unit_fragments(p.unit)[0] for p in points]
        self.good_tail = [_unit_fragments(p.unit)[1] for p in points]
        # A float32 reading as a double prints 17 digits of which 8 are noise (229.27000427246094):
        # it is written as the shortest decimal that identifies the float32 (229.27). A scaled
        # float32 is the exact product of that decimal (Normalizer._one): every digit of it counts.
        self.float_fmt = [_float_format(None if _scaled(p) else p.float_digits()) for p in points]
        # The message templates of all-good polls (Encoder._reshape), by the points a batch carried:
        # a few per point list (every point; what report by exception lets through varies, so only
        # the first few shapes are kept here and the rest are each device's own).
        self.shapes: dict[tuple[int, ...], _Shape] = {}

    def shape(self, index: list[int]) -> _Shape:
        key = tuple(index)
        found = self.shapes.get(key)
        if found is not None:
            return found
        parts = ["", "", ',"ts":', ""]
        sep = ',"readings":['
        for i in index:
            parts += (sep + self.prefix[i], "", self.good_tail[i], "")
            sep = "},"
        parts.append("}]}" if index else ',"readings":[]}')
        made = _Shape(index.copy(), parts, all(self.float_fmt[i] is float32_text for i in index))
        if len(self.shapes) < _SHAPES_KEPT:
            self.shapes[key] = made
        return made


_SHAPES_KEPT = 4


@dataclass(slots=True, frozen=True)
class _Shape:
    index: list[int]
    parts: list[str]  # [head, seq, ',"ts":', ts, then per point: prefix, value, good tail, ts; the end]
    f32: bool


class Encoder:
    """A device's points compiled for JSON: the shared fragments per point, and the device's last texts."""

    __slots__ = (
        "_device_json",
        "_float_fmt",
        "_frag",
        "_good_tail",
        "_head",
        "_ids",
        "_last_text",
        "_last_value",
        "_prefix",
        "_shape",
        "_shape_texts",
        "_shape_values",
        "_unit_json",
        "_units",
    )

    def __init__(self, device_id: str, points: Sequence[PointConfig], fragments: _Fragments | None = None) -> None:
        self._device_json = json.dumps(device_id) + _instance_fragment
        self._head = '{"device":' + self._device_json + ',"seq":'
        frag = self._frag = fragments or _Fragments(points)
        self._ids, self._units, self._prefix = frag.ids, frag.units, frag.prefix
        self._unit_json, self._good_tail, self._float_fmt = frag.unit_json, frag.good_tail, frag.float_fmt
        # The last float each point printed and its text, made on first use (most devices' polls
        # are all good and take _encode_good). A device refreshes its registers at its own pace
        # (often once a second), so a fast poll reads the same value again and again, and the
        # shortest-decimal search (about 1 us) is then a comparison. NaN never matches.
        self._last_value: list[float] | None = None
        self._last_text: list[str] = []
        # The message of an all-good poll as fragments with holes for seq, the stamps and the
        # values, for the last set of points a batch carried (see _encode_good); built on demand.
        self._shape: _Shape | None = None
        self._shape_values: list[float] = []
        self._shape_texts = ""

    def _last(self) -> tuple[list[float], list[str]]:
        if self._last_value is None:
            n = len(self._ids)
            self._last_value, self._last_text = [math.nan] * n, [""] * n
        return self._last_value, self._last_text

    def encode(self, batch: Batch, seq: int) -> bytes:
        n = len(batch.index)
        ts = batch.ts
        if (
            batch.qualities.count(GOOD) == n
            and batch.errors.count(None) == n
            and batch.stamps.count(ts) == n
            and None not in batch.values
        ):
            return self._encode_good(batch, seq)
        return self._encode_any(batch, seq)

    def _encode_good(self, batch: Batch, seq: int) -> bytes:
        """An all-good poll (every reading good, no error, the batch's own stamp): the common case.

        The message is the device's fragments with the values' texts slotted in and one join. A
        float32 device's values are printed all at once (float32_texts), and a value that repeats
        (the same register read again before the device refreshed it) reuses its text.
        """
        index, values = batch.index, batch.values
        shape = self._shape
        if shape is None or index != shape.index:
            shape = self._reshape(index)
        n = len(index)
        if shape.f32 and {float}.issuperset(map(type, values)):
            floats = cast(list[float], values)
            same = list(map(eq, floats, self._shape_values))
            hits = same.count(True)
            if hits == 0:
                texts = float32_texts(tuple(floats))
            elif hits == n:
                texts = self._shape_texts.split(",")
            else:
                texts = self._shape_texts.split(",")
                miss = list(compress(range(n), map(not_, same)))
                for k, text in zip(miss, float32_texts(tuple(map(floats.__getitem__, miss))), strict=True):
                    texts[k] = text
            # Kept as one string (a float's text has no comma): a hundred small strings per
            # device cost 6 KB, a thousand devices 6 MB, for a cache that is only read on a repeat.
            self._shape_texts = ",".join(texts)
            # Zero is never taken from memory (0.0 == -0.0): it is stored as NaN, which matches nothing.
            self._shape_values = [v or math.nan for v in floats] if 0.0 in floats else floats.copy()
        else:
            texts = self._texts(index, values)
        parts = shape.parts.copy()
        parts[0] = self._head
        parts[1] = str(seq)
        parts[3::4] = [str(batch.ts)] * (n + 1)
        parts[5::4] = texts
        return "".join(parts).encode()

    def _reshape(self, index: list[int]) -> _Shape:
        shape = self._shape = self._frag.shape(index)
        self._shape_values = [math.nan] * len(index)
        self._shape_texts = ""
        return shape

    def _texts(self, index: list[int], values: list[Value]) -> list[str]:
        """Each value's JSON text, as _encode_any writes it."""
        float_fmt = self._float_fmt
        last_value, last_text = self._last()
        out: list[str] = []
        for i, value in zip(index, values, strict=True):
            kind = type(value)
            if kind is float:
                if value == last_value[i] and value:
                    out.append(last_text[i])
                else:
                    text = last_text[i] = float_fmt[i](value)  # type: ignore[arg-type]
                    last_value[i] = value  # type: ignore[assignment]
                    out.append(text)
            elif kind is int:
                out.append(str(value))
            else:
                out.append(_json_value(value, float_fmt[i]))
        return out

    def _encode_any(self, batch: Batch, seq: int) -> bytes:
        prefix, good_tail, unit, float_fmt = self._prefix, self._good_tail, self._unit_json, self._float_fmt
        last_value, last_text = self._last()
        batch_ts = batch.ts
        batch_tss = str(batch_ts)
        out: list[str] = ['{"device":', self._device_json, ',"seq":', str(seq), ',"ts":', batch_tss, ',"readings":[']
        extend = out.extend
        sep = ""
        for i, value, quality, error, ts in zip(
            batch.index, batch.values, batch.qualities, batch.errors, batch.stamps, strict=True
        ):
            kind = type(value)
            if kind is float:
                if value == last_value[i] and value:  # zero is left out: 0.0 == -0.0
                    text = last_text[i]
                else:
                    text = last_text[i] = float_fmt[i](value)  # type: ignore[arg-type]
                    last_value[i] = value  # type: ignore[assignment]
            elif kind is int:
                text = str(value)
            else:
                text = _json_value(value, float_fmt[i])
            tss = batch_tss if ts == batch_ts else str(ts)
            # One flat list joined once: cheaper than building a string per reading.
            if error is None and quality is GOOD:
                extend((sep, prefix[i], text, good_tail[i], tss, "}"))
            else:
                tail = "}" if error is None else ',"error":' + json.dumps(error) + "}"
                extend((sep, prefix[i], text, unit[i], quality, '","ts":', tss, tail))
            sep = ","
        out.append("]}")
        return "".join(out).encode()

    def as_dicts(self, batch: Batch) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for i, value, quality, error, ts in zip(
            batch.index, batch.values, batch.qualities, batch.errors, batch.stamps, strict=True
        ):
            item: dict[str, object] = {
                "point": self._ids[i],
                "value": float(self._float_fmt[i](value)) if type(value) is float else value,  # as encode() writes it
                "unit": self._units[i],
                "quality": quality,
                "ts": ts,
            }
            if error is not None:
                item["error"] = error
            out.append(item)
        return out


_RATE_PER = {"per_second": 1000, "per_minute": 60_000, "per_hour": 3_600_000}


def counter_delta(previous: int, current: int, bits: int, last_rate: float | None, elapsed_ms: int) -> int | None:
    """How much a counter advanced between two samples; None when it was reset, not advanced.

    A counter that went down either wrapped (once, modulo 2**bits) or restarted from zero (a
    device reboot). The wrapped difference must be plausible to count as growth: at most four
    times the last known rate, or under half the range when there is no rate yet. A restarted
    counter fails that test (for a 64-bit one, always), so it never publishes a spike that did
    not happen.
    """
    if current >= previous:
        return current - previous
    wrapped = current + (1 << bits) - previous
    if last_rate is None:
        return wrapped if wrapped < 1 << (bits - 1) else None
    return wrapped if wrapped <= 4 * last_rate * elapsed_ms + 1 else None


@dataclass(slots=True)
class _RateState:
    raw: int
    ts: int
    rate: float | None = None  # counts per ms between the last two samples


class PointTable:
    """A list of points compiled once for the normaliser and the encoder: plain lists indexed like the points.

    Nothing in it changes after it is built, so every device with the same points (the same
    validated point objects: a profile, or inline definitions written alike, gateway/config.py)
    shares one table; a device holds only its own state (rates, report by exception, last texts).
    """

    __slots__ = ("__weakref__", "all_fast", "calc", "den", "exp_from", "f32", "fast", "fragments", "invalid",
                 "n", "nan_invalid", "num", "offset", "plain", "points", "publish", "publish_all", "rate_bits",
                 "rate_per", "rbe")  # fmt: skip

    def __init__(self, points: Sequence[PointConfig], calculated: Sequence[PointConfig]) -> None:
        # The driver's points (aligned with its readings), then the calculated ones (gateway/calc.py).
        self.points = [*points, *calculated]
        self.n = len(points)
        self.fragments = _Fragments(self.points)
        ids = {p.id: i for i, p in enumerate(points)}
        self.num: list[int] = []
        self.den: list[int] = []
        self.offset: list[float] = []
        self.plain: list[bool] = []
        self.f32: list[bool] = []
        self.exp_from: list[int] = []
        self.invalid: list[frozenset[float]] = []
        self.nan_invalid: list[bool] = []
        self.publish: list[int] = []
        self.fast: list[bool] = []
        # Counters published as rates: ms per rate unit and wrap width, per point (0: not a rate).
        self.rate_per: list[int] = []
        self.rate_bits: list[int] = []
        for i, p in enumerate(points):
            num, den = ratio(p.scale)
            self.num.append(num)
            self.den.append(den)
            self.offset.append(p.offset)
            self.f32.append(p.float_digits() == FLOAT32_DIGITS)
            self.exp_from.append(ids[p.exponent_point] if p.exponent_point in ids else -1)  # noqa: SIM401
            self.rate_per.append(_RATE_PER[p.rate] if p.rate is not None else 0)
            self.rate_bits.append(p.counter_width() or 0 if p.rate is not None else 0)
            plain = num == 1 and den == 1 and p.offset == 0 and p.exponent_point is None and p.rate is None
            self.plain.append(plain)
            # Sentinel sets repeat across thousands of points: one shared object each.
            self.invalid.append(interned(frozenset(x for x in p.invalid if not math.isnan(x))))
            self.nan_invalid.append(any(math.isnan(x) for x in p.invalid))
            if p.publish:
                self.publish.append(i)
            # The common case (a plain number, no scaling, no sentinel but NaN) skips _one().
            self.fast.append(plain and not self.invalid[i])
        self.calc = _Calculated(self.n, points, calculated) if calculated else None
        # Report by exception: None for points none of which use it (the step costs nothing).
        self.rbe = _RbeColumns(self.points) if any(p.reports_by_exception() for p in self.points) else None
        self.all_fast = all(self.fast[i] for i in self.publish)
        self.publish_all = self.publish == list(range(self.n))

    @classmethod
    def of(cls, points: Sequence[PointConfig], calculated: Sequence[PointConfig] = ()) -> PointTable:
        """The table of these point objects: the one already built for them while any device uses it."""
        key = (tuple(map(id, points)), tuple(map(id, calculated)))
        table = _TABLES.get(key)
        # The table holds its points, so their ids cannot be reused while the entry exists.
        if table is None:
            table = _TABLES[key] = cls(points, calculated)
        return table


_TABLES: weakref.WeakValueDictionary[tuple[tuple[int, ...], tuple[int, ...]], PointTable] = (
    weakref.WeakValueDictionary()
)


class Normalizer:
    """A device's normalisation: the shared table of its points, and its own state."""

    __slots__ = ("_all_fast", "_calc", "_den", "_exp_from", "_f32", "_fast", "_invalid", "_n", "_nan_invalid",
                 "_num", "_offset", "_plain", "_publish", "_publish_all", "_rate_bits", "_rate_per", "_rates",
                 "_rbe", "device_id", "encoder", "points", "table")  # fmt: skip

    def __init__(self, device_id: str, points: Sequence[PointConfig], calculated: Sequence[PointConfig] = ()) -> None:
        self.device_id = device_id
        t = self.table = PointTable.of(points, calculated)
        self.points = t.points
        self._n = t.n
        self.encoder = Encoder(device_id, t.points, t.fragments)
        # The table's columns as attributes: the hot path reads them without a second lookup.
        self._num, self._den, self._offset, self._plain, self._f32 = t.num, t.den, t.offset, t.plain, t.f32
        self._exp_from, self._invalid, self._nan_invalid = t.exp_from, t.invalid, t.nan_invalid
        self._publish, self._fast, self._rate_per, self._rate_bits = t.publish, t.fast, t.rate_per, t.rate_bits
        self._rates: dict[int, _RateState] = {}
        self._calc = t.calc
        self._rbe = ReportByException(t.rbe) if t.rbe is not None else None
        self._all_fast = t.all_fast
        self._publish_all = t.publish_all

    def _one(
        self, i: int, raw: RawValue, exponent: int | None, ex_values: Sequence[RawValue] | None, ts: int
    ) -> tuple[Value, str, str | None]:
        if raw is None:
            return None, BAD, "no value"
        if isinstance(raw, PointError):
            return None, raw.quality.value, raw.message
        if isinstance(raw, bool | str):
            return raw, GOOD, None
        if isinstance(raw, NoValue):
            return None, UNCERTAIN, "no value"
        if raw in self._invalid[i] or (raw != raw and self._nan_invalid[i]):  # noqa: PLR0124 - NaN test
            return None, BAD, "device reports no data"
        if isinstance(raw, float) and not math.isfinite(raw):
            return None, BAD, "not a finite number"
        if self._rate_per[i]:
            rated = self._rate(i, raw, ts)
            if not isinstance(rated, float):
                return rated
            raw = rated
        if self._plain[i] and exponent is None:
            return raw, GOOD, None
        exp = exponent or 0
        src = self._exp_from[i]
        if src >= 0:
            ex = ex_values[src] if ex_values is not None else None
            if not isinstance(ex, int) or isinstance(ex, bool) or not -30 <= ex <= 30:
                return None, BAD, "scale register unavailable"
            exp += ex
        try:
            value = self._scale(i, raw, exp)
        except OverflowError:
            return None, BAD, "value out of range after scaling"
        if isinstance(value, float) and not -_INF < value < _INF:
            return None, BAD, "value out of range after scaling"
        return value, GOOD, None

    def _scale(self, i: int, raw: int | float, exp: int) -> int | float:
        if self._f32[i] and type(raw) is float:
            return scale_float32(raw, self._num[i], self._den[i], exp, self._offset[i])
        value = scale_exact(raw, self._num[i], self._den[i], exp)
        off = self._offset[i]
        return value + off if off else value

    def _rate(self, i: int, raw: int | float, ts: int) -> float | tuple[Value, str, str | None]:
        """The rate of counter point i from its previous sample, in counts per rate unit."""
        if not isinstance(raw, int):
            return None, BAD, "a rate needs an integer counter"
        state = self._rates.get(i)
        if state is None:
            self._rates[i] = _RateState(raw, ts)
            return None, UNCERTAIN, "first sample: the rate is known from the next poll"
        elapsed = ts - state.ts
        if elapsed <= 0:
            return None, UNCERTAIN, "no time between two samples"
        delta = counter_delta(state.raw, raw, self._rate_bits[i], state.rate, elapsed)
        if delta is None:
            self._rates[i] = _RateState(raw, ts)
            return None, UNCERTAIN, "counter reset (device restart?): the rate restarts"
        per_ms = delta / elapsed
        self._rates[i] = _RateState(raw, ts, per_ms)
        return per_ms * self._rate_per[i]

    def value_of(
        self, i: int, raw: RawValue, ex_values: Sequence[RawValue] | None, exponent: int = 0
    ) -> tuple[Value, str, str | None]:
        """One raw value of point i as it would be published: (value, quality, error).

        `exponent` is the whole power of ten the value carries beyond `scale` (a protocol scaler
        plus an exponent register); the normaliser applies the register's part itself.
        """
        src = self._exp_from[i]
        ex = ex_values[src] if src >= 0 and ex_values is not None else None
        register = ex if isinstance(ex, int) and not isinstance(ex, bool) else 0
        return self._one(i, raw, exponent - register, ex_values, int(time.time() * 1000))

    def normalize(self, raw: RawReadings, now_ms: int) -> Batch:
        """A whole poll's readings, plus any time-stamped series entries."""
        batch = Batch(self.device_id, now_ms, self.encoder)
        values = raw.values
        if len(values) < self._n:
            values = [*values, *[PointError("driver returned no value")] * (self._n - len(values))]
        exps = raw.exponents
        stamps = raw.timestamps
        quals = raw.qualities
        b_index, b_values, b_quality, b_errors, b_stamps = (
            batch.index,
            batch.values,
            batch.qualities,
            batch.errors,
            batch.stamps,
        )
        fast = self._fast
        one = self._one
        simple = exps is None and stamps is None and quals is None
        value: Value
        todo = self._publish
        if simple and self._all_fast:
            # Every published point a plain number and every value a finite float (the sum of
            # finite floats is inf only on overflow, which just takes the loop below): the
            # columns are filled in C.
            picked = cast(list[float], values[: self._n] if self._publish_all else list(map(values.__getitem__, todo)))
            if {float}.issuperset(map(type, picked)) and -_INF < sum(picked) < _INF:
                k = len(picked)
                b_index += todo
                b_values += picked
                b_quality += [GOOD] * k
                b_errors += [None] * k
                b_stamps += [now_ms] * k
                todo = []
        for i in todo:
            raw_value = values[i]
            if simple and fast[i] and type(raw_value) is float and -_INF < raw_value < _INF:
                value, quality, error, ts = raw_value, GOOD, None, now_ms
            elif raw_value is NO_VALUE:
                continue
            else:
                stamp = stamps[i] if stamps is not None else None
                ts = now_ms if stamp is None else stamp
                value, quality, error = one(i, raw_value, exps[i] if exps is not None else None, values, ts)
                if quals is not None and quality == GOOD:
                    q = quals[i]
                    if q is not None and q is not Quality.GOOD:
                        quality = q.value
                        if q is Quality.BAD:
                            value = None
                            error = error or "device flags the value as faulty"
            b_index.append(i)
            b_values.append(value)
            b_quality.append(quality)
            b_errors.append(error)
            b_stamps.append(ts)
        if self._calc is not None:
            self._calc.run(self, batch, values, exps, stamps, quals, now_ms)
        # --- report by exception: after the calculated points (they read this poll's values), before
        # the time-stamped series entries (each a record of its own, always published).
        if self._rbe is not None:
            self._rbe.filter(batch, now_ms)
        # --- end of report by exception
        for i, raw_value, ts in raw.series:
            if not 0 <= i < self._n or not self.points[i].publish or raw_value is NO_VALUE:
                continue
            value, quality, error = one(i, raw_value, exps[i] if exps is not None else None, values, ts)
            b_index.append(i)
            b_values.append(value)
            b_quality.append(quality)
            b_errors.append(error)
            b_stamps.append(ts)
        return batch

    def normalize_pushed(self, pushed: Sequence[Pushed], now_ms: int, last: Sequence[RawValue] | None) -> Batch:
        """Values a device pushed (COV); `last` supplies exponent registers from the last poll."""
        batch = Batch(self.device_id, now_ms, self.encoder)
        for item in pushed:
            i, raw_value = item.index, item.value
            if not 0 <= i < self._n or not self.points[i].publish or raw_value is NO_VALUE:
                continue
            ts = item.ts if item.ts is not None else now_ms
            value, quality, error = self._one(i, raw_value, None, last, ts)
            q = item.quality
            if q is not None and q is not Quality.GOOD and quality == GOOD:
                quality = q.value
                if q is Quality.BAD:
                    value, error = None, "device flags the value as faulty"
            batch.add(i, value, quality, error, ts)
        if self._rbe is not None:
            self._rbe.filter(batch, now_ms)  # report by exception, as for a poll
        return batch

    def failed(self, message: str, now_ms: int) -> Batch:
        """Every published point bad: the device did not answer."""
        batch = Batch(self.device_id, now_ms, self.encoder)
        for i in self._publish:
            batch.add(i, None, BAD, message, now_ms)
        if self._calc is not None:
            for i in self._calc.publish:
                batch.add(i, None, BAD, message, now_ms)
        if self._rbe is not None:
            self._rbe.record(batch, now_ms)  # a failed poll is always published whole
        return batch


class _Calculated:
    """A device's calculated points, compiled once: each computed from its inputs' engineering values."""

    __slots__ = ("inputs", "order", "publish")

    def __init__(self, n: int, points: Sequence[PointConfig], calculated: Sequence[PointConfig]) -> None:
        slot = {p.id: i for i, p in enumerate(points)}
        slot.update({p.id: n + j for j, p in enumerate(calculated)})
        # (index, compiled expression, input indices); `calculated` is in evaluation order.
        self.order: list[tuple[int, Compiled, list[int], bool]] = []
        used: set[int] = set()
        for j, p in enumerate(calculated):
            assert p.calc is not None
            c = compile_expr(p.calc)
            # An id missing here (points discovered instead of configured) reads as a bad input.
            idx = [slot.get(pid, -1) for pid in c.inputs]
            used.update(i for i in idx if 0 <= i < n)
            self.order.append((n + j, c, idx, p.publish))
        self.inputs = sorted(used)
        self.publish = [i for i, _c, _idx, pub in self.order if pub]

    def run(
        self,
        norm: Normalizer,
        batch: Batch,
        values: Sequence[RawValue],
        exps: Sequence[int | None] | None,
        stamps: Sequence[int | None] | None,
        quals: Sequence[Quality | None] | None,
        now_ms: int,
    ) -> None:
        """Add the calculated points to a poll's batch (its driver points are in it already)."""
        first: dict[int, int] = {}
        for k, i in enumerate(batch.index):
            first.setdefault(i, k)
        known: dict[int, tuple[Value, str, str | None, int]] = {}
        for i in self.inputs:
            k = first.get(i, -1)
            if k >= 0:
                known[i] = (batch.values[k], batch.qualities[k], batch.errors[k], batch.stamps[k])
                continue
            raw_value = values[i]
            if raw_value is NO_VALUE:
                continue  # nothing new this poll: the calculated points that read it are not published
            stamp = stamps[i] if stamps is not None else None
            ts = now_ms if stamp is None else stamp
            # Not published (a sign word, a magnitude): normalised here only, as the main loop would.
            value, quality, error = norm._one(i, raw_value, exps[i] if exps is not None else None, values, ts)
            q = quals[i] if quals is not None else None
            if q is not None and q is not Quality.GOOD and quality == GOOD:
                quality = q.value
                if q is Quality.BAD:
                    value, error = None, error or "device flags the value as faulty"
            known[i] = (value, quality, error, ts)
        missing = (None, BAD, "no such point", now_ms)
        for i, c, idx, publish in self.order:
            if any(j not in known and j >= 0 for j in idx):
                continue
            got = [known.get(j, missing) for j in idx]
            value, quality, error = combine(c, [g[0] for g in got], [g[1] for g in got], [g[2] for g in got])
            ts = max((g[3] for g in got), default=now_ms)
            known[i] = (value, quality, error, ts)
            if publish:
                batch.add(i, value, quality, error, ts)


class _RbeColumns:
    """Report by exception's settings per point (shared in a PointTable; the state is per device)."""

    __slots__ = ("absolute", "age", "deadband", "fraction", "rbe")

    def __init__(self, points: Sequence[PointConfig]) -> None:
        self.rbe = [p.reports_by_exception() for p in points]
        self.deadband = [p.deadband is not None and p.numeric_gauge() for p in points]
        parts = [deadband_parts(p.deadband) for p in points]
        self.absolute = [a for a, _f in parts]
        self.fraction = [f for _a, f in parts]
        self.age = [_INF if p.max_age is None else p.max_age * 1000 for p in points]


class ReportByException:
    """Report by exception (docs/mqtt.md): drops the readings of a batch that do not qualify.

    A reading qualifies when its point does not report by exception, when it is the point's first,
    when its quality or error differs from the last published one, when the point's `max_age` has
    passed since it was last published, or when its value changed: for a gauge with a deadband,
    moved by more than the deadband from the last *published* value (so a slow drift is published
    once it adds up); for anything else (counters, rates, states, text, booleans), any change.
    Compiled per point at start into flat lists indexed like the normaliser's points; the state
    (the last published value, quality, error and when it is due again) lives only in memory.
    """

    __slots__ = ("_absolute", "_age", "_band", "_deadband", "_due", "_error", "_fraction", "_now", "_quality",
                 "_rbe", "_value")  # fmt: skip

    def __init__(self, points: Sequence[PointConfig] | _RbeColumns) -> None:
        columns = points if isinstance(points, _RbeColumns) else _RbeColumns(points)
        n = len(columns.rbe)
        self._rbe, self._deadband, self._age = columns.rbe, columns.deadband, columns.age
        self._absolute, self._fraction = columns.absolute, columns.fraction
        self._value: list[Value] = [None] * n
        self._quality: list[str | None] = [None] * n
        self._error: list[str | None] = [None] * n
        # The deadband around the last published value (absolute + fraction of it), computed when
        # it is published, and the epoch ms at which max_age republishes it (-inf: never published).
        self._band = list(self._absolute)
        self._due: list[float] = [-_INF] * n
        self._now = -_INF

    @classmethod
    def of(cls, points: Sequence[PointConfig]) -> ReportByException | None:
        """The step for these points, or None when none of them reports by exception."""
        return cls(points) if any(p.reports_by_exception() for p in points) else None

    def qualifies(self, i: int, value: Value, quality: str, error: str | None, now_ms: int) -> bool:
        """Whether point i's reading is published; if it is, it becomes the last published one."""
        batch = Batch("", now_ms, _NO_ENCODER)
        batch.add(i, value, quality, error, now_ms)
        self.filter(batch, now_ms)
        return len(batch) == 1

    def filter(self, batch: Batch, now_ms: int) -> None:
        """Keep the readings of `batch` that qualify (in place)."""
        if now_ms < self._now:
            # The clock stepped back: every max_age is measured anew, from now (all due at once).
            self._due = [-_INF] * len(self._due)
        self._now = now_ms
        index, values, qualities, errors = batch.index, batch.values, batch.qualities, batch.errors
        rbe, deadband, band, due, age = self._rbe, self._deadband, self._band, self._due, self._age
        last_value, last_quality, last_error = self._value, self._quality, self._error
        absolute, fraction = self._absolute, self._fraction
        dropped: list[int] = []  # positions; none at all is the common case of a device that moves
        for k, (i, value, quality, error) in enumerate(zip(index, values, qualities, errors, strict=True)):
            if not rbe[i]:
                continue
            # Unchanged quality and error, within max_age: held unless the value changed enough.
            if now_ms < due[i] and quality == last_quality[i] and error == last_error[i]:
                last = last_value[i]
                if deadband[i]:
                    try:  # no type checks on the way of two numbers: a try costs nothing in 3.11
                        b = band[i]
                        if -b <= value - last <= b:  # type: ignore[operator]
                            dropped.append(k)
                            continue
                    except TypeError:  # not two numbers (a value that went None, a text): any change
                        if value == last and type(value) is type(last):
                            dropped.append(k)
                            continue
                elif value == last and type(value) is type(last):
                    dropped.append(k)
                    continue
            last_value[i], last_quality[i], last_error[i] = value, quality, error
            due[i] = now_ms + age[i]
            if fraction[i]:
                try:
                    band[i] = absolute[i] + fraction[i] * abs(value)  # type: ignore[arg-type]
                except TypeError:
                    band[i] = absolute[i]
        if dropped:
            # In place: the caller may hold the lists (normalize() appends the series entries after).
            keep = [True] * len(index)
            for k in dropped:
                keep[k] = False
            stamps = batch.stamps
            index[:] = compress(index, keep)
            values[:] = compress(values, keep)
            qualities[:] = compress(qualities, keep)
            errors[:] = compress(errors, keep)
            stamps[:] = compress(stamps, keep)

    def record(self, batch: Batch, now_ms: int) -> None:
        """Note every reading of `batch` as published (a failed poll: all of it goes out)."""
        self._now = max(self._now, now_ms)
        for i, value, quality, error in zip(batch.index, batch.values, batch.qualities, batch.errors, strict=True):
            if self._rbe[i]:
                self._value[i], self._quality[i], self._error[i] = value, quality, error
                self._due[i] = now_ms + self._age[i]


_NO_ENCODER = Encoder("", ())


def _json_value(value: Value, float_fmt: Callable[[float], str] = float.__repr__) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return float_fmt(value)
    return json.dumps(value)
