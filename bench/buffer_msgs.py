"""Realistic data messages for the buffer benchmarks: 100 float32 currents through the real encoder."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

from gateway.driver import RawReadings
from gateway.models import PointConfig
from gateway.normalize import FLOAT32_DIGITS, Normalizer


class _Float32Point(PointConfig):
    """A point read as a Modbus float32 (the driver's own model adds addresses we do not need)."""

    def float_digits(self) -> int | None:
        return FLOAT32_DIGITS


def _f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def messages(
    devices: int = 100, points: int = 100, seed: int = 1, start_ms: int = 1_765_000_000_000
) -> Iterator[tuple[str, bytes]]:
    """(topic, payload) forever: one message per device per second, every value drifting (the worst case)."""
    rng = random.Random(seed)
    pts = [
        _Float32Point.model_validate({"id": f"p{i}", "quantity": "current", "unit": "A", "circuit": str(i)})
        for i in range(points)
    ]
    norms = [Normalizer(f"meter-{d:03d}", pts) for d in range(devices)]
    values = [[rng.uniform(0.5, 60.0) for _ in range(points)] for _ in range(devices)]
    seqs = [0] * devices
    ts = start_ms
    while True:
        for d, norm in enumerate(norms):
            vals = values[d]
            for i in range(points):
                vals[i] = max(0.0, vals[i] + rng.gauss(0.0, 0.2))
            raw = RawReadings(values=[_f32(v) for v in vals])
            batch = norm.normalize(raw, ts + rng.randrange(0, 50))
            seqs[d] += 1
            yield f"edgegw/site/meter-{d:03d}/data", batch.encode(seqs[d])
        ts += 1000
