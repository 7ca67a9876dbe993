"""Raw values -> engineering values with quality, and the JSON the consumers read.

Pure functions over a per-device table compiled once at start, so the hot path is a loop over
plain lists: no per-reading objects, no pydantic, no json.dumps per reading.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import TypeVar

from gateway.driver import NO_VALUE, NoValue, PointError, Pushed, RawReadings, RawValue
from gateway.models import PointConfig
from gateway.points import Quality

GOOD = Quality.GOOD.value
UNCERTAIN = Quality.UNCERTAIN.value
BAD = Quality.BAD.value

Value = int | float | bool | str | None

_INF = math.inf


def _ratio(x: float) -> tuple[int, int]:
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


# Per-point tables repeat the same few units, sentinel sets and formatters across thousands of
# points: one shared object each instead of one per point (~3 MB for 10k points).
_SHARED: dict[object, object] = {}
T = TypeVar("T")


def _shared(value: T) -> T:
    return _SHARED.setdefault(value, value)  # type: ignore[return-value]


@functools.cache
def _float_format(digits: int | None) -> Callable[[float], str]:
    return f"%.{digits}g".__mod__ if digits else float.__repr__


@dataclass(slots=True)
class Batch:
    """One device's normalised readings (columnar), ready to encode."""

    device: str
    ts: int
    index: list[int] = field(default_factory=list)
    values: list[Value] = field(default_factory=list)
    qualities: list[str] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    stamps: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.index)


class Normalizer:
    """A device's points compiled for normalisation and encoding."""

    def __init__(self, device_id: str, points: Sequence[PointConfig]) -> None:
        self.device_id = device_id
        self.points = list(points)
        ids = {p.id: i for i, p in enumerate(self.points)}
        self._num: list[int] = []
        self._den: list[int] = []
        self._offset: list[float] = []
        self._plain: list[bool] = []
        self._exp_from: list[int] = []
        self._invalid: list[frozenset[float]] = []
        self._nan_invalid: list[bool] = []
        self._publish: list[int] = []
        self._prefix: list[str] = []
        self._unit_json: list[str] = []
        self._good_tail: list[str] = []
        self._fast: list[bool] = []
        self._float_fmt: list[Callable[[float], str]] = []
        for i, p in enumerate(self.points):
            num, den = _ratio(p.scale)
            self._num.append(num)
            self._den.append(den)
            self._offset.append(p.offset)
            self._exp_from.append(ids[p.exponent_point] if p.exponent_point in ids else -1)  # noqa: SIM401
            self._plain.append(num == 1 and den == 1 and p.offset == 0 and p.exponent_point is None)
            self._invalid.append(_shared(frozenset(x for x in p.invalid if not math.isnan(x))))
            self._nan_invalid.append(any(math.isnan(x) for x in p.invalid))
            if p.publish:
                self._publish.append(i)
            self._prefix.append('{"point":' + json.dumps(p.id) + ',"value":')
            self._unit_json.append(_shared(',"unit":' + json.dumps(p.unit) + ',"quality":"'))
            self._good_tail.append(_shared(',"unit":' + json.dumps(p.unit) + ',"quality":"good","ts":'))
            # The common case (a plain number, no scaling, no sentinel but NaN) skips _one().
            self._fast.append(self._plain[i] and not self._invalid[i])
            digits = p.float_digits()
            # A float32 reading as a double prints 17 digits of which 8 are noise (229.27000427246094)
            # and repr() of those costs three times as much: 9 significant digits are exact for float32.
            self._float_fmt.append(_float_format(digits))
        self._device_json = json.dumps(device_id)

    def _one(
        self, i: int, raw: RawValue, exponent: int | None, ex_values: Sequence[RawValue] | None
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
            value = scale_exact(raw, self._num[i], self._den[i], exp)
            off = self._offset[i]
            if off:
                value = value + off
        except OverflowError:
            return None, BAD, "value out of range after scaling"
        if isinstance(value, float) and not -_INF < value < _INF:
            return None, BAD, "value out of range after scaling"
        return value, GOOD, None

    def normalize(self, raw: RawReadings, now_ms: int) -> Batch:
        """A whole poll's readings, plus any time-stamped series entries."""
        batch = Batch(self.device_id, now_ms)
        values = raw.values
        if len(values) < len(self.points):
            values = [*values, *[PointError("driver returned no value")] * (len(self.points) - len(values))]
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
        for i in self._publish:
            raw_value = values[i]
            if simple and fast[i] and type(raw_value) is float and -_INF < raw_value < _INF:
                value, quality, error = raw_value, GOOD, None
            elif raw_value is NO_VALUE:
                continue
            else:
                value, quality, error = one(i, raw_value, exps[i] if exps is not None else None, values)
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
            if stamps is None:
                b_stamps.append(now_ms)
            else:
                ts = stamps[i]
                b_stamps.append(ts if ts is not None else now_ms)
        for i, raw_value, ts in raw.series:
            if not 0 <= i < len(self.points) or not self.points[i].publish or raw_value is NO_VALUE:
                continue
            value, quality, error = one(i, raw_value, exps[i] if exps is not None else None, values)
            b_index.append(i)
            b_values.append(value)
            b_quality.append(quality)
            b_errors.append(error)
            b_stamps.append(ts)
        return batch

    def normalize_pushed(self, pushed: Sequence[Pushed], now_ms: int, last: Sequence[RawValue] | None) -> Batch:
        """Values a device pushed (COV); `last` supplies exponent registers from the last poll."""
        batch = Batch(self.device_id, now_ms)
        for item in pushed:
            i, raw_value, ts = item[0], item[1], item[2]
            if not 0 <= i < len(self.points) or not self.points[i].publish or raw_value is NO_VALUE:
                continue
            value, quality, error = self._one(i, raw_value, None, last)
            q = item[3] if len(item) > 3 else None
            if q is not None and q is not Quality.GOOD and quality == GOOD:
                quality = q.value
                if q is Quality.BAD:
                    value, error = None, "device flags the value as faulty"
            batch.index.append(i)
            batch.values.append(value)
            batch.qualities.append(quality)
            batch.errors.append(error)
            batch.stamps.append(ts if ts is not None else now_ms)
        return batch

    def failed(self, message: str, now_ms: int) -> Batch:
        """Every published point bad: the device did not answer."""
        batch = Batch(self.device_id, now_ms)
        for i in self._publish:
            batch.index.append(i)
            batch.values.append(None)
            batch.qualities.append(BAD)
            batch.errors.append(message)
            batch.stamps.append(now_ms)
        return batch

    def encode(self, batch: Batch, seq: int) -> bytes:
        """The data message of the MQTT contract (docs/mqtt.md)."""
        prefix, good_tail, unit, float_fmt = self._prefix, self._good_tail, self._unit_json, self._float_fmt
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
                text = float_fmt[i](value)  # type: ignore[arg-type]
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
        """The readings as dicts (for `edgegw read` and per-point topics)."""
        out: list[dict[str, object]] = []
        for i, value, quality, error, ts in zip(
            batch.index, batch.values, batch.qualities, batch.errors, batch.stamps, strict=True
        ):
            p = self.points[i]
            item: dict[str, object] = {"point": p.id, "value": value, "unit": p.unit, "quality": quality, "ts": ts}
            if error is not None:
                item["error"] = error
            out.append(item)
        return out


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
