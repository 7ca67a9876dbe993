"""One polling task per device: wall-clock aligned deadlines, timeouts, backoff, availability."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import structlog

from gateway.discovery import DriverFactory, discover_points, rebuild
from gateway.driver import DeviceError, DeviceTimeout, Driver, Pushed, RawReadings, RawValue
from gateway.models import DeviceConfig, PointConfig
from gateway.normalize import Batch, Normalizer
from gateway.state import StateStore

# Hands a batch to the publisher, with a callback for when its message is safe (or dropped).
Sink = Callable[[Batch, Callable[[], None] | None], None]


class Availability(StrEnum):
    UNKNOWN = "unknown"
    ONLINE = "online"
    OFFLINE = "offline"


class SkipReason(StrEnum):
    """Why a tick did not start a poll (the `reason` label of the skipped-ticks counter)."""

    BUSY = "busy"  # the previous poll still ran
    LATE = "late"  # the event loop woke after this deadline had already passed (the process is saturated)
    BACKPRESSURE = "backpressure"  # the publisher's queue was at its bound


@dataclass(slots=True)
class DeviceStats:
    """A device's counters. Every tick is counted once, where it is decided:

    ticks == polls + skipped + backoff, exactly, at any moment: polls counts polls started (a
    `poll_once` outside the schedule counts as a tick of its own), and skipped is the sum of
    skipped_by. Ticks are counted from the schedule's start, once the driver has started.
    """

    polls: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    skipped: int = 0
    ticks: int = 0
    backoff: int = 0  # ticks that fell in an offline device's backoff wait
    skipped_by: dict[SkipReason, int] = field(default_factory=lambda: dict.fromkeys(SkipReason, 0))
    last_duration: float = 0.0
    duration_sum: float = 0.0
    last_success_ms: int | None = None
    last_error: str | None = None
    state: Availability = Availability.UNKNOWN
    state_since_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    readings: int = 0
    pushed: int = 0
    last_progress: float = field(default_factory=time.monotonic)
    # The endpoint the device's bus uses (`host:port`; TCP only) and the one its status last named.
    path_of: Callable[[], str | None] | None = None
    published_path: str | None = None

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": self.state.value,
            "since": self.state_since_ms,
            "last_success": self.last_success_ms,
            "last_error": self.last_error,
        }
        if self.path_of is not None:
            path = self.published_path = self.path_of()
            if path is not None:
                out["path"] = path
        return out

    def skip(self, reason: SkipReason, n: int = 1) -> None:
        self.skipped += n
        self.skipped_by[reason] += n


def next_deadline(now: float, interval: float) -> float:
    """The next multiple of `interval` after `now` (wall clock): 5 s polls at :00, :05, ..."""
    return (math.floor(now / interval) + 1) * interval


# `phase: auto` places devices on steps of this length, and on at least this many steps (so
# short intervals get shorter steps and stay spread).
_SPREAD_STEP = 0.005
_SPREAD_STEPS_MIN = 20


def poll_offset(device_id: str, interval: float, phase: float | str) -> float:
    """Where in each interval a device polls: its `phase`, or a stable spread of up to 10% (max 1 s).

    Aligned polls make readings of different devices comparable in time; the small spread keeps a
    hundred devices from hitting the network, the CPU and the broker in the same millisecond. The
    spread is in steps of 5 ms (at least 20 steps over the spread): the devices of one step are
    served by one wake-up of the process, their requests and replies share system calls and their
    messages share socket writes. Spread one by one, each poll woke the process about three times
    (its tick, each reply, the PUBACK); the steps cut the CPU of 100 devices at 1 s by a sixth
    (docs/performance.md).
    """
    if not isinstance(phase, str):
        return phase % interval
    spread = min(interval * 0.1, 1.0)
    step = min(_SPREAD_STEP, spread / _SPREAD_STEPS_MIN)
    return (zlib.crc32(device_id.encode()) * round(spread / step) >> 32) * step


def backoff_delay(interval: float, failures: int, max_backoff: float, rng: random.Random) -> float:
    """Exponential backoff with +-20% jitter, never shorter than one interval."""
    base = min(max_backoff, interval * 2.0 ** min(30, max(0, failures - 1)))
    return max(interval, base * (0.8 + 0.4 * rng.random()))


_JITTER = random.Random()


def _ignore_pushed(_values: list[Pushed]) -> None:
    return None


def _ignore_event(_event: dict[str, Any]) -> None:
    return None


_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError)


class SkipLog:
    """Overload as a state change of the process: one line when ticks start being skipped, one when
    none has been for `quiet_after` seconds, with what was skipped meanwhile.

    One is shared by every device of a gateway: a thousand saturated devices are one overload,
    not a thousand log lines; the per-device, per-reason counters are in /metrics.
    """

    def __init__(self, log: structlog.typing.FilteringBoundLogger, quiet_after: float = 60.0) -> None:
        self.log = log
        self.quiet_after = quiet_after
        self._since: float | None = None
        self._last = 0.0
        self._counts = dict.fromkeys(SkipReason, 0)
        self._devices: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None

    def skipped(self, device_id: str, reason: SkipReason, n: int) -> None:
        now = time.monotonic()
        self._last = now
        self._counts[reason] += n
        self._devices.add(device_id)
        if self._since is None:
            self._since = now
            self.log.warning(
                "poll skipped: the gateway cannot keep up; further skips are only counted until polls are on time again",
                device=device_id,
                reason=reason.value,
            )
            self._timer = asyncio.get_running_loop().call_later(self.quiet_after, self._check)

    def _check(self) -> None:
        now = time.monotonic()
        if self._since is None:
            return
        if now - self._last < self.quiet_after:
            self._timer = asyncio.get_running_loop().call_later(self._last + self.quiet_after - now, self._check)
            return
        self.log.info(
            "polls on time again",
            skipped={r.value: n for r, n in self._counts.items() if n},
            devices=len(self._devices),
            lasted_s=round(self._last - self._since, 1),
        )
        self._since, self._timer = None, None
        self._counts = dict.fromkeys(SkipReason, 0)
        self._devices = set()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@dataclass(slots=True)
class _Commit:
    state: dict[str, Any]
    done: bool = False


class DeviceRunner:
    """Polls one device on its schedule and hands each poll's batch to `sink`.

    The runner builds its driver with `build` (again after discovery), wires the driver's push
    callbacks, and commits the driver state each poll carries (`RawReadings.commit`) to `state`
    once the poll's message is safe, in poll order.
    """

    def __init__(
        self,
        device: DeviceConfig,
        build: DriverFactory,
        sink: Sink,
        on_status: Callable[[DeviceConfig, DeviceStats], None],
        log: structlog.typing.FilteringBoundLogger,
        state: StateStore | None = None,
        on_event: Callable[..., None] | None = None,
        saturated: Callable[[], bool] | None = None,
        skip_log: SkipLog | None = None,
    ) -> None:
        self.device = device
        self.skip_log = skip_log or SkipLog(log)
        # True while the publisher cannot take another message: the tick is skipped (backpressure).
        self.saturated = saturated
        self._build = build
        self.sink = sink
        self.on_status = on_status
        self.on_event = on_event
        self.log = log
        self.state = state
        self._commits: deque[_Commit] = deque()
        self._state_error: str | None = None
        self.driver = self._wired(build(device.resolved_points))
        self.normalizer = Normalizer(device.id, self.driver.ctx.points, device.calculated_points)
        self.stats = DeviceStats()
        bus = getattr(self.driver.ctx, "bus", None)
        if bus is not None and hasattr(bus, "path"):
            self.stats.path_of = lambda: bus.path
        # One generator for every device (its state is 2.5 KB): draws still differ from device to device.
        self._rng = _JITTER
        self._task: asyncio.Task[None] | None = None
        self._poll: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._last_values: list[Any] | None = None
        self._last_exponents: list[int | None] | None = None
        self._started = False
        self._bug_logged = False

    def _wired(self, driver: Driver[Any, Any]) -> Driver[Any, Any]:
        driver.ctx.emit = self.pushed
        if self.on_event is not None:
            driver.ctx.emit_event = self.on_event
        return driver

    @property
    def points(self) -> Sequence[PointConfig]:
        # The driver's points and the calculated ones (what the meta topic lists).
        return self.normalizer.points

    def last_raw(self) -> Sequence[RawValue] | None:
        """The raw values of the last good poll (commands read exponent registers and types from it)."""
        return self._last_values

    def last_exponents(self) -> Sequence[int | None] | None:
        """The protocol exponents of the last good poll (a DLMS register's scaler)."""
        return self._last_exponents

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"device:{self.device.id}")

    async def stop(self) -> None:
        for task in (self._poll, self._task):
            if task is not None and not task.done():
                task.cancel()
        for task in (self._poll, self._task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._started:
            try:
                async with asyncio.timeout(max(2.0, self.device.timeout * 2)):
                    await self.driver.stop()
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                self.log.warning("driver stop failed", error=_describe(exc))
        # The driver's push callbacks point back at this runner (a cycle): unhook them, so that a
        # removed device's runner, driver and tables go as soon as the gateway lets go of it.
        ctx = self.driver.ctx
        ctx.emit, ctx.emit_event = _ignore_pushed, _ignore_event

    def pushed(self, values: list[Pushed]) -> None:
        """Values the device pushed between polls (COV); published at once."""
        now_ms = int(time.time() * 1000)
        batch = self.normalizer.normalize_pushed(values, now_ms, self._last_values)
        if len(batch):
            self.stats.pushed += len(batch)
            self._hand_over(batch)

    # -- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        interval = self.device.interval
        offset = poll_offset(self.device.id, interval, self.device.phase)
        await self._start_driver()
        st = self.stats
        # The first poll is at once, not at the first aligned deadline (up to an interval away):
        # a started gateway publishes within its first second, and a takeover reads at once. It is
        # a tick of its own, like `poll_once`; the aligned schedule follows.
        st.last_progress = time.monotonic()
        self._tick(busy=False)
        # Deadlines are numbered: deadline n is at n * interval + offset on the wall clock. `last`
        # is the newest one already accounted for, so every deadline is counted exactly once.
        last = math.floor((time.time() - offset) / interval)
        while True:
            await asyncio.sleep(max(0.0, (last + 1) * interval + offset - time.time()))
            now = math.floor((time.time() - offset) / interval)
            if now <= last:
                # The loop's timer woke a hair early (never reuse a deadline), or the wall clock
                # stepped back by more than an interval (follow it rather than wait it out).
                if now < last - 1:
                    last = now
                continue
            passed, last = now - last, now
            if passed > 1:
                # Deadlines that went by while the process was too busy to wake on time.
                st.ticks += passed - 1
                self._skipped(SkipReason.LATE, passed - 1)
            # Progress for the watchdog is the schedule turning, not polls succeeding: a site whose
            # devices are all unreachable must not get the gateway restarted over and over.
            st.last_progress = time.monotonic()
            busy = self._poll is not None and not self._poll.done() and not await self._ends_before(last + 1, offset)
            self._tick(busy)

    def _tick(self, busy: bool) -> None:
        """Count a tick with its outcome, and poll if it is to be one.

        The tick is counted where it is decided, so the counters balance at every moment (a
        /metrics scrape during the wait for a running poll sees neither).
        """
        st = self.stats
        st.ticks += 1
        if busy:
            # The previous poll runs into the next deadline: skip this tick rather than pile up requests.
            self._skipped(SkipReason.BUSY)
        elif time.monotonic() < self._retry_at:
            st.backoff += 1
        elif self.saturated is not None and self.saturated():
            # Shed load at the source: a reading not taken costs nothing downstream.
            self._skipped(SkipReason.BACKPRESSURE)
        else:
            st.polls += 1
            self._poll = asyncio.create_task(self._scheduled_poll(), name=f"poll:{self.device.id}")

    async def _scheduled_poll(self) -> None:
        # The task is kept until the next tick: its result must not keep the batch (five lists of
        # the device's points) alive that long.
        await self._poll_once()

    async def _ends_before(self, deadline: int, offset: float) -> bool:
        """Wait for the running poll, but not past deadline number `deadline`; True if it ended first.

        A tick that finds the previous poll running is served as soon as that poll ends: at
        saturation a device then polls back to back. Skipping it outright left every device
        idle until its next deadline, so throughput fell to whole fractions of the asked rate
        (100 polls in 31 ms at a 10 ms interval is one round per 40 ms) and jumped between them.
        """
        poll = self._poll
        assert poll is not None
        interval = self.device.interval
        remaining = deadline * interval + offset - time.time()
        if remaining > 0:
            # asyncio.wait, not a timeout around the task: the poll must not be cancelled.
            await asyncio.wait((poll,), timeout=remaining)
        return poll.done() and math.floor((time.time() - offset) / interval) < deadline

    def _skipped(self, reason: SkipReason, n: int = 1) -> None:
        self.stats.skip(reason, n)
        self.skip_log.skipped(self.device.id, reason, n)

    async def _start_driver(self) -> None:
        while True:
            try:
                async with asyncio.timeout(max(self.device.timeout * 4, 5.0)):
                    await self.driver.start()
                if not self.driver.ctx.points:
                    await self._discover()
                self._started = True
                return
            except BaseException as exc:
                if isinstance(exc, _FATAL):
                    raise
                self._failed(_describe(exc), int(time.time() * 1000))
                delay = backoff_delay(
                    self.device.interval, self.stats.consecutive_failures, self.device.max_backoff, self._rng
                )
                await asyncio.sleep(delay)

    async def _discover(self) -> None:
        try:
            async with asyncio.timeout(max(self.device.timeout * 20, 30.0)):
                _found, points = await discover_points(self.driver)
        except NotImplementedError:
            return
        # The discovering driver goes; a new driver and normaliser are built for the points.
        driver = self.driver
        self._started = False
        self.driver = self._wired(await rebuild(driver, points, self._build))
        self._started = True
        self.normalizer = Normalizer(self.device.id, points, self.device.calculated_points)
        self.log.info("points discovered from the device", points=len(points))
        self.on_status(self.device, self.stats)

    async def poll_once(self) -> Batch:
        """One poll now, outside the schedule (counted as a tick and a poll). Never raises (but cancel)."""
        self.stats.ticks += 1
        self.stats.polls += 1
        return await self._poll_once()

    async def _poll_once(self) -> Batch:
        """Read, normalise, hand over, update availability. Never raises (but cancel)."""
        started = time.monotonic()
        # A safety net against a hung driver, not a budget: a device behind a busy shared bus or
        # with several silent unit ids legitimately takes a few timeouts.
        limit = max(2 * self.device.interval, 10 * self.device.timeout) + 1.0
        error: str | None = None
        raw: RawReadings | None = None
        try:
            # What asyncio.timeout does, not wait_for: no extra task per poll.
            deadline = _Deadline(limit)
            try:
                raw = await self.driver.read()
            except BaseException as exc:
                if deadline.end(exc):
                    raise TimeoutError from exc
                raise
            deadline.end(None)
        except DeviceTimeout as exc:
            error = str(exc) or "device did not answer in time"
        except DeviceError as exc:
            error = str(exc) or type(exc).__name__
        except TimeoutError:
            error = f"poll took longer than {limit:.1f}s"
        except BaseException as exc:
            if isinstance(exc, _FATAL):
                raise
            error = _describe(exc)
            if not self._bug_logged:
                self._bug_logged = True
                self.log.error("driver raised an unexpected error (a driver bug)", error=error, exc_info=exc)
        now_ms = int(time.time() * 1000)
        duration = time.monotonic() - started
        self.stats.last_duration = duration
        self.stats.duration_sum += duration
        self.stats.last_progress = time.monotonic()
        commit = None
        events: list[dict[str, Any]] = []
        if raw is not None:
            batch = self.normalizer.normalize(raw, now_ms)
            self._last_values = raw.values
            self._last_exponents = raw.exponents
            commit = raw.commit
            events = raw.events
            self._succeeded(now_ms)
        else:
            batch = self.normalizer.failed(error or "poll failed", now_ms)
            self._failed(error or "poll failed", now_ms)
        self.stats.readings += len(batch)
        self._hand_over(batch, commit, events)
        self._path_changed()
        return batch

    def _path_changed(self) -> None:
        """The status names the bus' path: a switch (during this poll) publishes it again."""
        st = self.stats
        if st.path_of is None:
            return
        path = st.path_of()
        if path != st.published_path:
            known = st.published_path is not None
            st.published_path = path
            if known:
                self.on_status(self.device, st)

    def _hand_over(
        self, batch: Batch, commit: dict[str, Any] | None = None, events: Sequence[dict[str, Any]] = ()
    ) -> None:
        on_done = None
        sent = events if self.on_event is not None else ()
        if commit is not None and self.state is not None:
            entry = _Commit(commit)
            self._commits.append(entry)
            # The poll's state is safe to store once its readings and every one of its events are.
            pending = [len(sent) + 1]

            def on_done() -> None:
                pending[0] -= 1
                if pending[0] == 0:
                    entry.done = True
                    self._commit_ready()

        try:
            for event in sent:
                assert self.on_event is not None
                if on_done is None:
                    self.on_event(event)
                else:
                    self.on_event(event, on_done=on_done)
            self.sink(batch, on_done)
        except Exception as exc:
            if not self._bug_logged:
                self._bug_logged = True
                self.log.error("could not hand the readings to the publisher", error=_describe(exc), exc_info=exc)

    def _commit_ready(self) -> None:
        """Store the newest state whose poll and every earlier one are safe (a hole is never skipped)."""
        latest: dict[str, Any] | None = None
        while self._commits and self._commits[0].done:
            latest = self._commits.popleft().state
        if latest is None or self.state is None:
            return
        try:
            self.state.commit(latest)
            self._state_error = None
        except OSError as exc:
            # The state stays applied in memory and goes out with the next commit; the worst a
            # crash before then causes is a re-read.
            if str(exc) != self._state_error:
                self._state_error = str(exc)
                self.log.warning("cannot write device state", error=str(exc), path=str(self.state.path))

    # -- availability ----------------------------------------------------------------------

    def _succeeded(self, now_ms: int) -> None:
        st = self.stats
        st.consecutive_failures = 0
        st.last_success_ms = now_ms
        self._retry_at = 0.0
        if st.state is not Availability.ONLINE:
            if st.state is Availability.OFFLINE:
                self.log.info("device recovered", offline_since=st.state_since_ms)
            else:
                self.log.info("device online")
            st.state = Availability.ONLINE
            st.state_since_ms = now_ms
            st.last_error = None
            self.on_status(self.device, st)

    def _failed(self, error: str, now_ms: int) -> None:
        st = self.stats
        st.failures += 1
        st.consecutive_failures += 1
        changed_error = error != st.last_error
        st.last_error = error
        if st.consecutive_failures >= self.device.offline_after:
            delay = backoff_delay(
                self.device.interval,
                st.consecutive_failures - self.device.offline_after + 1,
                self.device.max_backoff,
                self._rng,
            )
            self._retry_at = time.monotonic() + delay - self.device.interval * 0.5
            if st.state is not Availability.OFFLINE:
                st.state = Availability.OFFLINE
                st.state_since_ms = now_ms
                self.log.warning("device offline", error=error, failures=st.consecutive_failures)
                self.on_status(self.device, st)
            elif changed_error:
                self.on_status(self.device, st)


class _Deadline:
    """asyncio.timeout's contract for the poll's safety net, at a quarter of its cost.

    The timer cancels the task; `end` says whether the CancelledError it then meets is the
    deadline's (no other cancel request came), which the poll turns into a TimeoutError, exactly as
    `asyncio.timeout`'s exit does. Its async context manager (two coroutines, a state machine)
    cost 29k instructions per poll, a fifth of everything the runner adds to a poll.
    """

    __slots__ = ("_cancelling", "_fired", "_handle", "_task")

    def __init__(self, delay: float) -> None:
        # One get_running_loop (a getpid system call in CPython 3.11), not one more in current_task.
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a poll's deadline needs a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._fired = False
        self._handle = loop.call_later(delay, self._expire)

    def _expire(self) -> None:
        self._fired = True
        self._task.cancel()

    def end(self, exc: BaseException | None) -> bool:
        """Stop the timer; True if `exc` is the deadline's cancellation."""
        self._handle.cancel()
        if not self._fired:
            return False
        self._fired = False
        return self._task.uncancel() <= self._cancelling and type(exc) is asyncio.CancelledError


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
