"""Pure parts of the scheduler: aligned deadlines and backoff."""

from __future__ import annotations

import random

from gateway.scheduler import backoff_delay, next_deadline, poll_offset


def test_deadlines_are_aligned_to_the_wall_clock() -> None:
    assert next_deadline(1000.2, 5.0) == 1005.0
    assert next_deadline(1005.0, 5.0) == 1010.0
    assert next_deadline(59.99, 60.0) == 60.0


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(1.0, n, 30.0, rng) for n in range(1, 12)]
    assert all(1.0 <= d <= 36.0 for d in delays)
    assert delays[-1] >= 24.0  # capped at 30 s +-20 %
    assert backoff_delay(10.0, 1, 300.0, rng) >= 10.0  # never shorter than the interval


def test_poll_offsets_are_stable_and_small() -> None:
    offsets = [poll_offset(f"dev{i}", 1.0, "auto") for i in range(100)]
    assert all(0 <= o < 0.1 for o in offsets)
    assert len({round(o, 3) for o in offsets}) > 50  # spread, not bunched
    assert poll_offset("dev1", 1.0, "auto") == offsets[1]
    assert poll_offset("x", 60.0, "auto") < 1.0
    assert poll_offset("x", 5.0, 7.0) == 2.0
