"""Pure parts of the scheduler: aligned deadlines and backoff."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import pytest

from gateway.scheduler import DeviceRunner, backoff_delay, next_deadline, poll_offset


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
    # Spread in 5 ms steps, every step used and none holding many: one wake-up serves a few devices.
    steps = Counter(round(o / 0.005, 6) for o in offsets)
    assert all(k.is_integer() for k in steps) and len(steps) == 20 and max(steps.values()) <= 12
    # Short intervals keep 20 steps over their spread: 10 ms polls are not bunched into one instant.
    short = {poll_offset(f"dev{i}", 0.01, "auto") for i in range(100)}
    assert len(short) == 20 and max(short) < 0.001
    assert poll_offset("dev1", 1.0, "auto") == offsets[1]
    assert poll_offset("x", 60.0, "auto") < 1.0
    assert poll_offset("x", 5.0, 7.0) == 2.0


async def test_the_schedule_turns_while_an_unreachable_device_backs_off() -> None:
    """The watchdog's notion of progress: ticks, not successful polls."""
    import asyncio
    import time

    import structlog

    from gateway.buses import Bus
    from gateway.driver import DeviceError, Driver, DriverContext, RawReadings
    from gateway.models import DeviceConfig
    from gateway.scheduler import DeviceRunner
    from gateway.state import StateStore

    class Unreachable(Driver[DeviceConfig, None]):
        reads = 0

        async def read(self) -> RawReadings:
            Unreachable.reads += 1
            raise DeviceError("no route to host")

    device = DeviceConfig.model_validate(
        {"id": "d", "driver": "x", "interval": 0.05, "offline_after": 1, "max_backoff": 60}
    )
    ctx = DriverContext(device=device, points=[], log=structlog.get_logger("t"), bus=Bus("b"), state=StateStore(None))
    statuses: list[str] = []
    runner = DeviceRunner(device, lambda _p: Unreachable(ctx), lambda _b, _done: None,
                          lambda _d, st: statuses.append(st.state.value), structlog.get_logger("t"))  # fmt: skip
    runner._started = True
    runner.start()
    try:
        async with asyncio.timeout(5):
            while Unreachable.reads < 2:  # noqa: ASYNC110 - a bounded wait on plain counters
                await asyncio.sleep(0.01)
        runner._retry_at = time.monotonic() + 60  # deep in backoff: no poll for a minute
        await asyncio.sleep(0.1)
        seen, reads = runner.stats.last_progress, Unreachable.reads
        async with asyncio.timeout(5):
            while runner.stats.last_progress == seen:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert Unreachable.reads == reads  # no poll happened, yet the schedule turned
        assert statuses.count("offline") == 1
    finally:
        await runner.stop()


async def test_a_failing_hand_over_does_not_stop_the_schedule() -> None:
    import asyncio

    import structlog

    from gateway.buses import Bus
    from gateway.driver import Driver, DriverContext, RawReadings
    from gateway.models import DeviceConfig
    from gateway.scheduler import DeviceRunner
    from gateway.state import StateStore

    class Fine(Driver[DeviceConfig, None]):
        async def read(self) -> RawReadings:
            return RawReadings([])

    def broken_sink(_batch: object, _done: object) -> None:
        raise OSError("disk full")

    device = DeviceConfig.model_validate({"id": "d", "driver": "x", "interval": 0.02})
    ctx = DriverContext(device=device, points=[], log=structlog.get_logger("t"), bus=Bus("b"), state=StateStore(None))
    runner = DeviceRunner(device, lambda _p: Fine(ctx), broken_sink, lambda _d, _s: None, structlog.get_logger("t"))
    runner.start()
    try:
        async with asyncio.timeout(5):
            while runner.stats.polls < 5:  # noqa: ASYNC110 - a bounded wait on a counter
                await asyncio.sleep(0.01)
        assert runner.stats.state.value == "online"
    finally:
        await runner.stop()


async def test_driver_state_is_committed_in_poll_order_once_each_message_is_safe(tmp_path: Path) -> None:
    """A later poll acknowledged first must not move the cursor past an earlier one still in flight."""
    import asyncio
    import json
    from collections.abc import Callable

    import structlog

    from gateway.buses import Bus
    from gateway.driver import Driver, DriverContext, RawReadings
    from gateway.models import DeviceConfig
    from gateway.normalize import Batch
    from gateway.scheduler import DeviceRunner
    from gateway.state import StateStore

    class Cursor(Driver[DeviceConfig, None]):
        n = 0

        async def read(self) -> RawReadings:
            Cursor.n += 1
            return RawReadings([], commit={"cursor": Cursor.n})

    pending: list[Callable[[], None]] = []

    def sink(_batch: Batch, on_done: Callable[[], None] | None) -> None:
        assert on_done is not None
        pending.append(on_done)

    path = tmp_path / "d.json"
    state = StateStore(path)
    device = DeviceConfig.model_validate({"id": "d", "driver": "x", "interval": 60})
    ctx = DriverContext(device=device, points=[], log=structlog.get_logger("t"), bus=Bus("b"), state=state)
    runner = DeviceRunner(device, lambda _p: Cursor(ctx), sink, lambda _d, _s: None, structlog.get_logger("t"), state)
    for _ in range(3):
        await runner.poll_once()
    assert len(pending) == 3 and not path.exists()  # nothing is safe yet: nothing on disk
    pending[1]()  # poll 2 acknowledged before poll 1
    assert not path.exists()
    pending[0]()
    assert json.loads(path.read_text())["cursor"] == 2
    pending[2]()
    assert json.loads(path.read_text())["cursor"] == 3
    await asyncio.sleep(0)


def _hung_runner() -> tuple[DeviceRunner, asyncio.Event]:
    """A runner whose driver's read waits until the returned event is set."""
    import structlog

    from gateway.buses import Bus
    from gateway.driver import Driver, DriverContext, RawReadings
    from gateway.models import DeviceConfig
    from gateway.state import StateStore

    started = asyncio.Event()

    class Hung(Driver[DeviceConfig, None]):
        async def read(self) -> RawReadings:
            started.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    # The safety net: max(2 x interval, 10 x timeout) + 1 s = 1.5 s.
    device = DeviceConfig.model_validate({"id": "d", "driver": "x", "interval": 0.05, "timeout": 0.05})
    ctx = DriverContext(device=device, points=[], log=structlog.get_logger("t"), bus=Bus("b"), state=StateStore(None))
    runner = DeviceRunner(device, lambda _p: Hung(ctx), lambda _b, _done: None, lambda _d, _s: None,
                          structlog.get_logger("t"))  # fmt: skip
    return runner, started


async def test_a_hung_driver_read_ends_at_the_poll_deadline_as_a_failed_poll() -> None:
    runner, _started = _hung_runner()
    async with asyncio.timeout(10):
        batch = await runner.poll_once()
    assert runner.stats.last_error == "poll took longer than 1.5s"
    assert runner.stats.failures == 1 and len(batch) == 0
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_poll_cancelled_from_outside_stays_cancelled() -> None:
    runner, started = _hung_runner()
    task = asyncio.create_task(runner.poll_once())
    async with asyncio.timeout(10):
        await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runner.stats.failures == 0
