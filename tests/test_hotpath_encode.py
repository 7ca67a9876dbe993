"""The hot path's shortcuts write exactly what the general path writes (issue 13.5)."""

from __future__ import annotations

import json
import random
import struct

from drivers.modbus.config import ModbusPoint
from gateway.driver import PointError, RawReadings
from gateway.normalize import Normalizer, float32_text, float32_texts

F32 = struct.Struct("f")


def f32(x: float) -> float:
    return float(F32.unpack(F32.pack(x))[0])


def test_float32_texts_is_float32_text_of_each_value() -> None:
    rng = random.Random(13)
    values = [f32(rng.uniform(-300, 300)) for _ in range(5000)]
    values += [f32(10 ** rng.uniform(-45, 38)) * rng.choice((1, -1)) for _ in range(5000)]
    values += [
        f32(float(f"{rng.randint(1, 10**d - 1)}e{rng.randint(-30, 30)}")) for d in range(1, 8) for _ in range(500)
    ]
    # Around the leading digits where a float32's interval can hold two 7-digit decimals (8.39...).
    values += [
        f32(m * 10.0**e) for m in (8.3886, 8.388608, 8.5, 9.999999, 9.9999995, 1.0000001) for e in range(-38, 38)
    ]
    values += [f32(2.0**k) for k in range(-149, 128)] + [0.0, -0.0, 1e300, -1e300]
    rng.shuffle(values)
    for size in (1, 7, 100, 125):
        for k in range(0, len(values), size):
            chunk = tuple(values[k : k + size])
            assert float32_texts(chunk) == [float32_text(x) for x in chunk], chunk


def _points(n: int) -> list[ModbusPoint]:
    return [
        ModbusPoint.model_validate(
            {"id": f"p{i}", "address": 2 * i, "type": "float32", "quantity": "current", "unit": "A"}
        )
        for i in range(n)
    ]


def _general(norm: Normalizer, raw: RawReadings, ts: int, seq: int) -> bytes:
    """The message as the general (per-reading) encoder writes it, with a fresh text memory."""
    fresh = Normalizer(norm.device_id, norm.points)
    return fresh.encoder._encode_any(fresh.normalize(raw, ts), seq)


def test_an_all_good_poll_encodes_as_the_general_path_does() -> None:
    rng = random.Random(5)
    norm = Normalizer("dev", _points(20))
    previous = [f32(rng.uniform(0, 80)) for _ in range(20)]
    for poll in range(300):
        # Values that change, repeat (a register not refreshed yet), go to zero and to -0.0.
        values: list[object] = [
            rng.choice((previous[i], f32(rng.uniform(-80, 80)), 0.0, -0.0, f32(8.388608 * 10 ** rng.randint(-3, 3))))
            for i in range(20)
        ]
        if poll % 7 == 0:
            values[3] = PointError("bad reply")  # not all good: the general path
        if poll % 11 == 0:
            values[4] = 17  # not all floats: the texts one by one
        raw = RawReadings(values)  # type: ignore[arg-type]
        fast = norm.normalize(raw, 1_700_000_000_000 + poll).encode(poll)
        assert fast == _general(norm, raw, 1_700_000_000_000 + poll, poll)
        json.loads(fast)
        previous = [v if isinstance(v, float) else 1.0 for v in values]


def test_a_poll_that_skips_a_point_encodes_as_the_general_path_does() -> None:
    from gateway.driver import NO_VALUE

    norm = Normalizer("dev", _points(5))
    for k, values in enumerate(
        [[1.5, 2.5, 3.5, 4.5, 5.5], [1.5, NO_VALUE, 3.5, 4.5, 5.5], [1.5, 2.5, 3.5, 4.5, 5.5], [NO_VALUE] * 5]
    ):
        raw = RawReadings(values)  # type: ignore[arg-type]
        assert norm.normalize(raw, 1000 + k).encode(k) == _general(norm, raw, 1000 + k, k)


def test_the_columnar_fast_path_of_normalize_is_the_loop() -> None:
    from gateway.driver import NO_VALUE

    points = _points(6)
    points[2] = points[2].model_copy(update={"publish": False})
    rng = random.Random(3)
    choices: list[object] = [1.5, -0.0, 0.0, float("nan"), float("inf"), 3, NO_VALUE, PointError("x"), 1e308]
    for published_all in (True, False):
        pts = _points(6) if published_all else points
        for _ in range(300):
            values = [rng.choice(choices) if rng.random() < 0.2 else f32(rng.uniform(-9, 9)) for _ in range(6)]
            fast, loop = Normalizer("d", pts), Normalizer("d", pts)
            loop._all_fast = False
            a = fast.normalize(RawReadings(values), 7)  # type: ignore[arg-type]
            b = loop.normalize(RawReadings(values), 7)  # type: ignore[arg-type]
            assert (a.index, a.qualities, a.errors, a.stamps) == (b.index, b.qualities, b.errors, b.stamps)
            assert [repr(v) for v in a.values] == [repr(v) for v in b.values]
            assert a.encode(1) == b.encode(1)
