"""MQTT publishing (aiomqtt): topics, payloads, availability, last will, and delivery that loses nothing.

Delivery rules (docs/mqtt.md, docs/operations.md):

* Data and event messages go out with the configured QoS (1 by default). A message is done only
  when the broker acknowledged it; until then it is in memory (in flight or queued) or, with a
  disk buffer, on disk.
* While the broker is away, queued messages move to the disk buffer (or stay in a bounded
  memory backlog when there is none). After a reconnect the backlog drains oldest first, sharing
  the in-flight window with live data, so dashboards stay current while history catches up.
* With `buffer.write_through`, every message is written to the disk buffer before it is
  published, and with `sync_interval: 0` fsynced first: nothing is lost on a power cut.
* The fsyncs run in a worker thread (the loop goes on); with `sync_interval: 0` a message's
  `on_done` and its publishing from the buffer wait for the fsync that covers it.
* The backlog drains at most `buffer.drain_rate` messages/s, and only in the share of the
  in-flight window that live data leaves.
* Retained messages (meta, status) carry state, not history: the latest per topic is kept and
  re-sent on every connect.
* Every drop is counted (metrics) and logged once per burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
import structlog

from gateway.buses import tcp_probe
from gateway.config import BrokerEndpoint, BufferConfig, MqttConfig
from gateway.normalize import Batch
from gateway.state import atomic_write

# How many seq numbers a device may use before the reservation on disk is moved forward.
SEQ_BLOCK = 1000

# A connection that lasted this long counts as a success: the next drop starts a new round through
# the broker list with no backoff. A shorter one counts as a failed attempt, so that brokers that
# accept and then drop at once (a client id taken by another gateway) are not hammered in a loop.
STABLE_SESSION = 10.0


@dataclass(slots=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    buffer_id: int | None = None
    order: int = 0  # when it was queued: returned messages go back in this order
    # Called once when the message is safe (acknowledged, or handed to the disk buffer) or dropped
    # (counted): the core commits driver state such as profile cursors from it.
    on_done: Callable[[], None] | None = None
    properties: Any = None  # MQTT 5 publish properties (a command result's correlation data)

    def __lt__(self, other: Outgoing) -> bool:
        return self.order < other.order


@dataclass(slots=True)
class PublisherStats:
    submitted: int = 0
    published: int = 0
    published_bytes: int = 0
    dropped_queue: int = 0
    dropped_backlog: int = 0
    spilled: int = 0
    connects: int = 0
    connect_failures: int = 0
    broker_switches: int = 0
    last_progress: float = field(default_factory=time.monotonic)


class SeqCounter:
    """Per-device message numbers that only ever grow, across restarts and crashes.

    The file holds, per device, a number no seq has reached yet. A clean stop writes the exact
    next value; after a crash the count resumes at the reservation, so seq may jump forward
    (at most SEQ_BLOCK) but never repeats.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._next: dict[str, int] = {}
        self._reserved: dict[str, int] = {}
        self.error: str | None = None
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                self._reserved = {str(k): int(v) for k, v in data.items()}
            except (OSError, ValueError, TypeError, AttributeError):
                self._reserved = {}
        self._next = dict(self._reserved)
        # HA mode (gateway/ha.py): per device, the first number the broker has not acknowledged as
        # reserved for this instance. None: no HA, the local reservation alone rules.
        self.ceiling: dict[str, int] | None = None
        self.low_water: dict[str, int] = {}  # HA: ask for a new reservation when fewer are left
        self.on_low: Callable[[str], None] | None = None
        self.exhausted = 0  # HA: messages dropped because the reservation ran out (broker away too long)
        self.stalled: set[str] = set()  # HA: devices whose reservation ran out (logged once each time)

    def take(self, device: str) -> int | None:
        """The device's next seq; None in HA mode when its acknowledged reservation is used up."""
        if self.ceiling is not None:
            seq = self._next.get(device, 1)
            top = self.ceiling.get(device, 0)
            if seq >= top or top - seq <= self.low_water.get(device, 0):
                if self.on_low is not None:
                    self.on_low(device)
                if seq >= top:
                    self.exhausted += 1
                    return None
        return self.next(device)

    def next(self, device: str) -> int:
        seq = self._next.get(device, 1)
        self._next[device] = seq + 1
        if seq >= self._reserved.get(device, 0):
            self._reserved[device] = seq + SEQ_BLOCK
            self._write(self._reserved)
        return seq

    def close(self) -> None:
        """A clean stop: record the exact next numbers, so no gap appears."""
        self._write(self._next)

    def peek(self, device: str) -> int:
        """The number the device's next message would get."""
        return self._next.get(device, 1)

    def advance(self, devices: dict[str, int], reserve: dict[str, int]) -> None:
        """HA: continue each device at least at `devices[d]`, with `reserve[d]` on disk before use."""
        for device, start in devices.items():
            self._next[device] = max(self._next.get(device, 1), start)
        changed = False
        for device, top in reserve.items():
            if top > self._reserved.get(device, 0):
                self._reserved[device] = top
                changed = True
        if changed:
            self._write(self._reserved)

    def _write(self, data: dict[str, int]) -> None:
        if self.path is None:
            return
        try:
            atomic_write(self.path, json.dumps(data, sort_keys=True).encode())
            self.error = None
        except OSError as exc:
            # Publishing goes on; only the guarantee across a crash is at risk, and the log says so.
            self.error = f"cannot save seq reservations to {self.path}: {exc.strerror}"


def tls_context(cfg: MqttConfig, endpoint: BrokerEndpoint | None = None) -> ssl.SSLContext | None:
    """The TLS settings for one broker (the first by default); None when it is reached without TLS."""
    if not (endpoint or cfg.endpoints[0]).tls:
        return None
    tls = cfg.tls
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls and tls.ca_file else None)
    # Verification stays on: there is deliberately no option to turn it off.
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if tls and tls.cert_file and tls.key_file:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return ctx


class Publisher:
    """Owns the broker connection; everything that reaches MQTT goes through here."""

    def __init__(
        self,
        cfg: MqttConfig,
        site: str,
        buffer_cfg: BufferConfig,
        state_dir: Path | None,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.cfg = cfg
        self.site = site
        self.base = f"{cfg.topic_prefix}/{site}"
        self.log = log
        self.stats = PublisherStats()
        self.connected = False
        # While the broker is away and there is no disk buffer, the queue may also hold the backlog.
        self._backlog_extra = 0 if buffer_cfg.path else cfg.memory_backlog
        # Waiting messages at which the devices skip ticks (backpressure): a window's worth is
        # enough to keep the broker link busy; more only adds latency and memory.
        self._pressure = min(cfg.queue_size, cfg.max_inflight)
        self._bytes = 0  # payload + topic bytes of the messages in _queue and _retry
        self._retained_inflight = 0
        self._queue: deque[Outgoing] = deque()
        # Messages that were in flight when their publish failed: older than anything queued,
        # sent first, oldest first, whatever order their failures came in.
        self._retry: list[Outgoing] = []
        # Retained state, encoded when sent: a builder keeps 100 devices' meta (1-2 MB of JSON)
        # out of memory between connects.
        self._retained: dict[str, dict[str, Any] | str | Callable[[], dict[str, Any]]] = {}
        self._retained_dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._inflight: dict[int, Outgoing] = {}  # by MQTT message id, awaiting PUBACK
        self._order = 0
        self._seq = SeqCounter(state_dir / "seq.json" if state_dir else None)
        self._buffer_cfg = buffer_cfg
        self._disk: Any = None
        self._drop_logged = 0.0
        self._seq_error_logged: str | None = None
        self._unsynced = False
        # Group commit off the loop (_sync_async): callbacks waiting for durability, the job running.
        self._sync_lock = asyncio.Lock()
        self._sync_wanted = asyncio.Event()
        self._sync_running: asyncio.Future[None] | None = None
        self._durable_waiting: list[Callable[[], None]] = []
        self._durable_below = 0
        self._recover_logged = False
        # Drain rate: a token bucket for backlog takes, and the measured rate for /metrics.
        self._drain_tokens = 0.0
        self._drain_stamp = time.monotonic()
        self._drained = 0
        self._drain_marks: deque[tuple[float, int]] = deque([(time.monotonic(), 0)])
        self.drain_rate_measured = 0.0
        self._session_client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._syncer: asyncio.Task[None] | None = None
        self._status_topic = f"{self.base}/gateway/status"
        # Topic filter -> handler of incoming messages (commands); subscribed again on every connect.
        self._subscriptions: dict[str, Callable[[aiomqtt.Message], None]] = {}
        self.endpoints = cfg.endpoints
        self.endpoint: BrokerEndpoint | None = None  # the broker of the current connection
        self._last_endpoint: BrokerEndpoint | None = None
        self._up_since = 0.0
        self._leaving = False  # the session ends by choice: back to the preferred broker
        # HA mode (gateway/ha.py) sets these: the will on the instance's member topic, a client id
        # per instance, no automatic gateway/status, and nothing sent after a connect until the
        # coordinator has seen the lease (a returning active must not publish as a stale holder).
        self.will_topic = self._status_topic
        self.will_extra: dict[str, Any] = {}
        self.client_suffix = ""
        self.announce_status = True
        self.hold_on_connect = False
        self.hold = False
        self.on_connection: Callable[[bool], None] | None = None
        # A second sink on its own session (gateway/sparkplug.py) sets these: the will and the clean
        # stop's message as (topic, payload), not retained, built per connect; `stamp` rewrites
        # each non-retained payload as it is launched (Sparkplug's seq is the send order's).
        self.will_message: Callable[[], tuple[str, bytes]] | None = None
        self.goodbye_message: Callable[[], tuple[str, bytes] | None] | None = None  # None: say nothing
        self.stamp: Callable[[bytes], bytes] | None = None

    # -- producer side (called from the scheduler, never blocks) ------------------------------

    def topic(self, device: str, leaf: str) -> str:
        return f"{self.base}/{device}/{leaf}"

    def submit_batch(self, batch: Batch, on_done: Callable[[], None] | None = None) -> None:
        """A device's readings as one data message; `on_done` once it is safe (or dropped)."""
        seq = self._seq.take(batch.device)
        if seq is None:
            self._seq_exhausted(batch.device, on_done)
            return
        if self._seq.error is not None and self._seq.error != self._seq_error_logged:
            self._seq_error_logged = self._seq.error
            self.log.error("seq numbers may repeat after a crash", error=self._seq.error)
        self._enqueue(Outgoing(self.topic(batch.device, "data"), batch.encode(seq), self.cfg.qos, on_done=on_done))
        if self.cfg.per_point_topics:
            for item in batch.as_dicts():
                leaf = f"points/{item['point']}"
                self._enqueue(Outgoing(self.topic(batch.device, leaf), json.dumps(item).encode(), self.cfg.qos))

    def _seq_exhausted(self, device: str, on_done: Callable[[], None] | None) -> None:
        # HA: a number past the broker-acknowledged reservation could be the new active's; drop
        # the message (counted, like a full queue) rather than risk a repeated seq.
        if device not in self._seq.stalled:
            self._seq.stalled.add(device)
            self.log.error("seq reservation used up without the broker: dropping this device's data", device=device)
        if on_done is not None:
            on_done()

    def subscribe(self, topic_filter: str, handler: Callable[[aiomqtt.Message], None]) -> None:
        """Deliver messages on `topic_filter` to `handler` (QoS 1, from every connection on)."""
        self._subscriptions[topic_filter] = handler

    def submit(self, topic: str, payload: bytes, qos: int) -> None:
        """One non-retained message under the delivery rules of data (disk buffer while the broker is away)."""
        self._enqueue(Outgoing(topic, payload, qos))

    def submit_message(self, topic: str, payload: bytes, properties: Any = None) -> None:
        """One non-retained QoS 1 message (a command result), never written to the disk buffer."""
        self._enqueue(Outgoing(topic, payload, 1, properties=properties), durable=False)

    def submit_event(self, device: str, event: dict[str, Any], on_done: Callable[[], None] | None = None) -> None:
        """One event on the device's `events` topic; `on_done` once it is safe (or dropped)."""
        self._enqueue(Outgoing(self.topic(device, "events"), json.dumps(event).encode(), self.cfg.qos, on_done=on_done))

    def submit_retained(self, topic: str, payload: dict[str, Any] | str | Callable[[], dict[str, Any]]) -> None:
        """The latest state of a topic, sent now and again after every reconnect."""
        self._retained[topic] = payload
        self._retained_dirty.add(topic)
        self._wake.set()

    def _retained_body(self, topic: str) -> bytes:
        value = self._retained[topic]
        if callable(value):
            value = value()
        body = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        return body.encode()

    def _enqueue(self, msg: Outgoing, durable: bool = True) -> None:
        self.stats.submitted += 1
        self._order += 1
        msg.order = self._order
        disk = self._disk if durable else None
        if disk is not None and (not self.connected or self._buffer_cfg.write_through):
            self._to_disk(msg)
            self.stats.spilled += 1
            self._unsynced = True
            self._idle.clear()
            self._wake.set()
            return
        self._queue.append(msg)
        self._bytes += _size(msg)
        self._bound(disk, 1)
        self._idle.clear()
        self._wake.set()

    @property
    def _limit(self) -> int:
        """How many messages may wait in memory now (queue_size, plus the backlog while away)."""
        return self.cfg.queue_size + (0 if self.connected else self._backlog_extra)

    def _bound(self, disk: Any, added: int) -> None:
        """Hold the waiting messages to their bounds after `added` more came: the oldest go first.

        Only what the newcomers push past the count goes: a backlog kept while the broker was
        away (more than `queue_size`) drains once it is back, it is not cut at the first message.
        """
        limit = self.cfg.queue_size if disk is not None else self._limit
        excess = min(added, len(self._queue) + len(self._retry) - limit)
        while (excess > 0 or self._bytes > self.cfg.queue_bytes) and (oldest := self._next_live()) is not None:
            excess -= 1
            if disk is not None:
                # The broker is slower than the devices: keep the overflow on disk instead of dropping it.
                self._to_disk(oldest)
                self.stats.spilled += 1
                self._unsynced = True
            else:
                _done(oldest)
                self.stats.dropped_queue += 1
                self._log_drop("queue full: dropped the oldest message", self.stats.dropped_queue)

    def saturated(self) -> bool:
        """True while connected and a window's worth of messages (or the byte bound) already waits.

        The devices then skip their ticks (counted, reason backpressure): at saturation load is
        shed at the source instead of growing the queue. While the broker is away the outage
        rules apply instead (disk buffer, or the memory backlog).
        """
        return self.connected and (
            len(self._queue) + len(self._retry) >= self._pressure or self._bytes >= self.cfg.queue_bytes
        )

    def _to_disk(self, msg: Outgoing) -> None:
        assert self._disk is not None
        self._disk.append(msg.topic, msg.payload, msg.qos, msg.retain)
        if self._buffer_cfg.sync_interval == 0:
            # Zero loss promised: "safe" means fsynced, so on_done waits for the next group commit.
            if msg.on_done is not None:
                self._durable_waiting.append(msg.on_done)
                msg.on_done = None
            self._sync_wanted.set()
        _done(msg)

    def _log_drop(self, what: str, total: int) -> None:
        now = time.monotonic()
        if now - self._drop_logged > 10.0:
            self._drop_logged = now
            self.log.warning(what, dropped_total=total)

    # -- lifecycle -------------------------------------------------------------------------

    def open_buffer(self) -> None:
        """Open the disk buffer (recovering what a previous run left)."""
        if self._buffer_cfg.path is None:
            return
        from gateway.buffer import DiskBuffer

        self._disk = DiskBuffer(
            self._buffer_cfg.path,
            max_bytes=self._buffer_cfg.max_size,
            segment_bytes=self._buffer_cfg.segment_size,
            log=self.log,
            compression=self._buffer_cfg.compression,
            when_full=self._buffer_cfg.when_full,
            progress=self._recovering,
        )
        report = self._disk.open()
        stats = self._disk.stats
        if stats.records:
            self.log.info("disk buffer holds messages from an earlier run", records=stats.records, report=str(report))

    def _recovering(self, done: int, total: int) -> None:
        """A long buffer check at start: keep systemd's start timeout from killing it, and say why."""
        from gateway.health import sd_notify

        if done and not self._recover_logged:
            self._recover_logged = True
            self.log.info("checking a large disk buffer before starting", files=total)
        sd_notify(f"EXTEND_TIMEOUT_USEC=30000000\nSTATUS=checking the disk buffer: {done} of {total} files")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="publisher")
        if self._disk is not None:
            self._syncer = asyncio.create_task(self._sync_loop(), name="buffer-sync")

    async def _sync_loop(self) -> None:
        """Bound the loss window: nothing buffered stays un-fsynced longer than sync_interval.

        With `sync_interval: 0` a sync starts as soon as one is wanted (group commit: every
        message appended while the previous fsync ran is covered by the next).
        """
        period = self._buffer_cfg.sync_interval or 1.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
                    await self._sync_wanted.wait()
            self._sync_wanted.clear()
            await self._sync_async()
            self._measure_drain()

    def _sync(self) -> None:
        """Ask for a sync soon (it runs in the sync task, its fsyncs in a worker thread)."""
        if self._disk is not None:
            self._sync_wanted.set()

    async def _sync_async(self) -> None:
        """One group commit: fsyncs in a worker thread; then the callbacks that waited for it."""
        async with self._sync_lock:
            disk = self._disk
            if disk is None or not self._unsynced:
                return
            self._unsynced = False
            waiting, self._durable_waiting = self._durable_waiting, []
            job = disk.sync_begin()
            self._sync_running = asyncio.get_running_loop().run_in_executor(None, job.run)
            try:
                # Shielded: cancelling this task (stop) must not cut the job short; stop() awaits it.
                await asyncio.shield(self._sync_running)
            except asyncio.CancelledError:
                self._durable_waiting[:0] = waiting
                raise
            if self._disk is disk:
                disk.sync_end(job)
            self._durable_below = max(self._durable_below, job.durable_below)
            for callback in waiting:
                callback()
            self._wake.set()  # records that just became durable may be published (sync_interval 0)

    def _measure_drain(self) -> None:
        """Backlog messages acknowledged per second, over the last ten seconds, updated every second.

        A sliding window: a drain shorter than the window (a minute's outage drains in seconds)
        shows its rate and time to empty while it runs, not only once it is over.
        """
        now = time.monotonic()
        marks = self._drain_marks
        if marks and now - marks[-1][0] < 1.0:
            return
        marks.append((now, self._drained))
        while len(marks) > 1 and now - marks[0][0] > 10.0:
            marks.popleft()
        t0, n0 = marks[0]
        self.drain_rate_measured = (self._drained - n0) / (now - t0) if now > t0 else 0.0

    @property
    def drain_rate_limit(self) -> float:
        return float(self._buffer_cfg.drain_rate)

    def drain_eta(self) -> float | None:
        """Estimated seconds until the disk backlog is empty (0 when empty, None when not draining)."""
        if self._disk is None:
            return None
        records = self._disk.stats.records
        if not records:
            return 0.0
        return records / self.drain_rate_measured if self.drain_rate_measured > 0 and self.connected else None

    @property
    def queue_depth(self) -> int:
        return len(self._queue) + len(self._retry)

    @property
    def queue_bytes(self) -> int:
        return self._bytes

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def backlog(self) -> int:
        disk = self._disk.stats.records if self._disk is not None else 0
        return len(self._queue) + len(self._retry) + len(self._inflight) + disk

    def buffer_stats(self) -> Any:
        return self._disk.stats if self._disk is not None else None

    async def drain(self, timeout: float) -> bool:
        """Wait until everything queued was acknowledged (or spilled to disk); True when all got out."""
        deadline = time.monotonic() + timeout
        while True:
            if (
                not self._queue
                and not self._retry
                and not self._inflight
                and (self._disk is None or not self._disk.stats.records)
                and (not self._retained_dirty or not self.connected)
            ):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (not self.connected and self._disk is not None and not self._inflight):
                return False
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(0.1, remaining)):
                    await self._idle.wait()

    async def stop(self) -> None:
        """Say offline, close the connection, keep what was not delivered on disk."""
        client = self._session_client
        if client is not None and self.connected:
            goodbye = self._farewell({"state": "offline", "reason": "stopped", "since": int(time.time() * 1000)})
            if goodbye is not None:
                with contextlib.suppress(Exception):
                    await client.publish(goodbye[0], goodbye[1], qos=1, retain=goodbye[2], timeout=2.0)
        if self._syncer is not None:
            self._syncer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._syncer
        if self._sync_running is not None and not self._sync_running.done():
            with contextlib.suppress(Exception):
                await self._sync_running
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._return(list(self._inflight.values()))
        self._inflight.clear()
        if self._disk is not None:
            self._spill()
            self._disk.close()
            self._disk = None
        waiting, self._durable_waiting = self._durable_waiting, []
        for callback in waiting:  # close() fsynced them
            callback()
        lost = len(self._queue) + len(self._retry)
        if lost:
            self.log.warning("stopping with undelivered messages and no disk buffer", messages=lost)
        self._seq.close()

    # -- the connection loop ---------------------------------------------------------------

    async def _run(self) -> None:
        """Connect to the brokers in turn: the list is a round, and the backoff applies between rounds.

        A dead broker costs one connect timeout, not a backoff: the next one is tried at once. A
        connection that drops moves on to the next broker too (a cluster's other node, the
        standby); with `failback_after` the gateway returns to the first broker once it accepts
        connections again.
        """
        endpoints = self.endpoints
        delay = self.cfg.reconnect_min
        index = 0
        failed = 0  # attempts since the last stable session (or the last backoff)
        while True:
            endpoint = endpoints[index]
            self._up_since = 0.0
            self._leaving = False
            watcher = None
            if self.cfg.failback_after is not None and endpoint.index != 0:
                watcher = asyncio.create_task(self._failback(endpoint), name="broker-failback")
            try:
                await self._session(endpoint)
            except asyncio.CancelledError:
                raise
            except (aiomqtt.MqttError, OSError, ssl.SSLError) as exc:
                if self._leaving:
                    pass
                elif self.connected:
                    self.log.warning("broker connection lost", url=endpoint.url, error=str(exc))
                else:
                    self.stats.connect_failures += 1
                    if self.stats.connect_failures in (1, 10) or self.stats.connect_failures % 100 == 0:
                        self.log.warning(
                            "cannot reach the broker",
                            url=endpoint.url,
                            error=str(exc),
                            attempts=self.stats.connect_failures,
                        )
            finally:
                if watcher is not None:
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await watcher
                self._disconnected()
            if self._leaving:
                index, failed, delay = 0, 0, self.cfg.reconnect_min
                continue
            if self._up_since and time.monotonic() - self._up_since >= STABLE_SESSION:
                failed, delay = 0, self.cfg.reconnect_min
            else:
                failed += 1
            index = (index + 1) % len(endpoints)
            if failed >= len(endpoints):
                failed = 0
                await asyncio.sleep(delay)
                delay = min(self.cfg.reconnect_max, delay * 2)

    async def _failback(self, current: BrokerEndpoint) -> None:
        """Leave `current` for the first broker once it accepts connections and `current` was up long enough.

        The status retained on the broker left behind says where the gateway went, so a consumer
        of a primary/standby pair that still reads the standby is not told "online" forever.
        """
        assert self.cfg.failback_after is not None
        preferred = self.endpoints[0]
        while True:
            if not self._up_since:  # still connecting
                await asyncio.sleep(0.5)
                continue
            up = time.monotonic() - self._up_since
            if up < self.cfg.failback_after:
                await asyncio.sleep(self.cfg.failback_after - up)
                continue
            client = self._session_client
            if client is not None and await self._accepts(preferred):
                self.log.info("returning to the preferred broker", url=preferred.url, previous=current.url)
                self._leaving = True
                now = int(time.time() * 1000)
                moved = {"state": "offline", "reason": "moved", "since": now, "broker": preferred.address}
                # Where the will would have said "lost": gateway/status, or this instance's member
                # topic in a hot-standby pair (gateway/status is the active's there).
                goodbye = self._farewell(moved)
                if goodbye is not None:
                    with contextlib.suppress(Exception):
                        await client.publish(goodbye[0], goodbye[1], qos=1, retain=goodbye[2], timeout=5.0)
                client._client.disconnect()
                return
            await asyncio.sleep(self.cfg.reconnect_max)

    def _farewell(self, body: dict[str, Any]) -> tuple[str, bytes, bool] | None:
        """What a connection ended by choice says last: `body` where the will goes, or the second sink's own."""
        if self.goodbye_message is not None:
            own = self.goodbye_message()
            return None if own is None else (own[0], own[1], False)
        return self.will_topic, json.dumps({**body, **self.will_extra}).encode(), True

    async def _accepts(self, endpoint: BrokerEndpoint) -> bool:
        """Whether the broker accepts a TCP connection (a probe: no MQTT session, no client id taken)."""
        return await tcp_probe(endpoint.host, endpoint.port, self.cfg.connect_timeout)

    def _client(self, endpoint: BrokerEndpoint) -> aiomqtt.Client:
        if self.will_message is not None:
            will_topic, will_body = self.will_message()
            will = aiomqtt.Will(will_topic, will_body, 1, False)
        else:
            lost = json.dumps({"state": "offline", "reason": "lost", **self.will_extra}).encode()
            will = aiomqtt.Will(self.will_topic, lost, 1, True)
        client = aiomqtt.Client(
            endpoint.host,
            endpoint.port,
            username=self.cfg.username,
            password=self.cfg.password,
            identifier=(self.cfg.client_id or f"edgegw-{self.site}") + self.client_suffix,
            will=will,
            keepalive=int(self.cfg.keepalive),
            tls_context=tls_context(self.cfg, endpoint),
            max_inflight_messages=self.cfg.max_inflight,
            # Bounds the wait for CONNACK; paho's connect_timeout bounds TCP and the TLS handshake.
            timeout=self.cfg.connect_timeout,
            protocol=aiomqtt.ProtocolVersion.V5 if self.cfg.protocol == "5" else aiomqtt.ProtocolVersion.V311,
        )
        client._client.connect_timeout = self.cfg.connect_timeout
        # We cap in-flight publishes ourselves; aiomqtt would warn on every one past 10.
        client.pending_calls_threshold = self.cfg.max_inflight + 10
        return client

    @contextlib.asynccontextmanager
    async def _connect(self, endpoint: BrokerEndpoint) -> AsyncIterator[aiomqtt.Client]:
        """`async with` one broker's client, leaving nothing behind when the connect fails."""
        client = self._client(endpoint)
        try:
            await client.__aenter__()
        except BaseException:
            # A CONNACK after the timeout must not leave a session behind: on a cluster it would
            # take our client id from the connection made next, on another node.
            with contextlib.suppress(Exception):
                client._client._sock_close()
            raise
        client.timeout = 10.0  # subscribe and the like, once connected
        try:
            yield client
        except BaseException as exc:
            await client.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        await client.__aexit__(None, None, None)

    async def _session(self, endpoint: BrokerEndpoint) -> None:
        async with self._connect(endpoint) as client:
            self._up_since = time.monotonic()
            self.endpoint = endpoint
            self.connected = True
            self.stats.connects += 1
            previous, self._last_endpoint = self._last_endpoint, endpoint
            if previous is None:
                self.log.info("connected to the broker", url=endpoint.url)
            elif previous == endpoint:
                self.log.info("reconnected to the broker", url=endpoint.url, backlog=self.backlog)
            else:
                self.stats.broker_switches += 1
                self.log.info(
                    "switched to another broker", url=endpoint.url, previous=previous.url, backlog=self.backlog
                )
            self.stats.connect_failures = 0
            if self.announce_status:
                online = {"state": "online", "since": int(time.time() * 1000), "broker": endpoint.address}
                self._retained[self._status_topic] = online
            self._retained_dirty = set(self._retained)
            self.hold = self.hold_on_connect
            self._session_client = client
            paho = client._client
            aiomqtt_on_publish: Any = paho.on_publish

            def on_publish(c: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
                # A PUBACK of ours that took paho's own path (see AckReader); aiomqtt's are its own.
                if not self._on_puback(mid) and aiomqtt_on_publish is not None:
                    aiomqtt_on_publish(c, userdata, mid, reason, properties)

            paho.on_publish = on_publish
            AckReader(paho, self._acked, self._acks_done)
            disconnected: asyncio.Future[None] = client._disconnected
            for topic_filter in self._subscriptions:
                await client.subscribe(topic_filter, qos=1)
            if self.on_connection is not None:
                self.on_connection(True)
            sender = asyncio.create_task(self._send_loop(client))
            receiver = asyncio.create_task(self._receive_loop(client)) if self._subscriptions else None
            try:
                await asyncio.wait({sender, disconnected}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (sender, receiver):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
            if sender.done() and not sender.cancelled() and sender.exception() is not None:
                raise sender.exception()  # type: ignore[misc]
            if disconnected.done():
                exc = disconnected.exception() if not disconnected.cancelled() else None
                raise aiomqtt.MqttError(f"disconnected: {exc}")

    async def _receive_loop(self, client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            for topic_filter, handler in self._subscriptions.items():
                if msg.topic.matches(topic_filter):
                    try:
                        handler(msg)
                    except Exception as exc:  # noqa: BLE001 - one bad message must not end the session
                        self.log.error("incoming message handler failed", topic=str(msg.topic), error=repr(exc))

    async def _send_loop(self, client: aiomqtt.Client) -> None:
        window = self.cfg.max_inflight
        backlog_share = max(1, window // 2)
        retained_share = max(1, window // 4)
        disk = self._disk
        zero_loss = self._buffer_cfg.sync_interval == 0
        paho = client._client
        while True:
            self._wake.clear()
            if self.hold:
                await self._held()
                continue
            held = _hold_writes(paho)
            try:
                free = window - len(self._inflight)
                if self._retained_dirty and free > 0:
                    # Retained state shares the window with data, unawaited: one round trip per
                    # message (and 100 devices' meta built before any data) made the first data
                    # message wait seconds at start. Gateway status first; then at most a quarter
                    # of the window while live data waits.
                    live = self._queue or self._retry
                    share = free if not live else min(free, max(0, retained_share - self._retained_inflight))
                    for topic in self._take_retained(share):
                        self._retained_inflight += 1
                        self._launch(client, Outgoing(topic, self._retained_body(topic), 1, retain=True))
                if zero_loss and self._unsynced:
                    # Group commit: one fsync covers every message buffered since the last one.
                    held = _write_now(client, held)
                    await self._sync_async()
                    held = _hold_writes(paho)
                free = window - len(self._inflight)
                if disk is not None and free > 0:
                    from_disk = sum(1 for m in self._inflight.values() if m.buffer_id is not None)
                    live = self._queue or self._retry
                    share = free if not live else min(free, max(0, backlog_share - from_disk))
                    share = self._drain_allowance(share)
                    if share:
                        recs = disk.take(share, self._durable_below if zero_loss else None)
                        self._drain_tokens -= len(recs)
                        for rec in recs:
                            self._launch(client, Outgoing(rec.topic, rec.payload, rec.qos, rec.retain, rec.id))
                    free = window - len(self._inflight)
                while free > 0 and (msg := self._next_live()) is not None:
                    self._launch(client, msg)
                    free -= 1
            finally:
                _write_now(client, held)
            if (
                not self._queue
                and not self._retry
                and not self._inflight
                and not self._retained_dirty
                and (disk is None or not disk.stats.records)
            ):
                self._idle.set()
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._drain_wait(disk)):
                        await self._wake.wait()

    async def _held(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self._wake.wait()

    def release(self) -> None:
        """HA: the lease is settled after a connect; what waits may go out."""
        self.hold = False
        self._wake.set()

    async def publish_now(self, topic: str, payload: bytes, retain: bool = True) -> None:
        """One QoS 1 message on the current connection, awaited to its PUBACK (HA coordination)."""
        client = self._session_client
        if client is None or not self.connected:
            raise aiomqtt.MqttError("not connected to the broker")
        await client.publish(topic, payload, qos=1, retain=retain, timeout=10.0)

    def forget_retained(self, topics: Iterable[str]) -> None:
        """Stop sending these retained topics (HA: what a stepped-down instance no longer owns)."""
        for topic in topics:
            self._retained.pop(topic, None)
            self._retained_dirty.discard(topic)

    @property
    def seq(self) -> SeqCounter:
        return self._seq

    def _take_retained(self, n: int) -> list[str]:
        """Up to `n` dirty retained topics, the gateway's status first."""
        dirty = self._retained_dirty
        out: list[str] = []
        if n > 0 and self._status_topic in dirty:
            dirty.discard(self._status_topic)
            out.append(self._status_topic)
        while dirty and len(out) < n:
            out.append(dirty.pop())
        return out

    def _drain_allowance(self, share: int) -> int:
        """How many backlog messages may go now under `buffer.drain_rate` (a token bucket)."""
        rate = self._buffer_cfg.drain_rate
        if not rate:
            return share
        now = time.monotonic()
        # A quarter second of burst at most: the rate holds over any second, not just on average.
        self._drain_tokens = min(max(1.0, rate / 4), self._drain_tokens + (now - self._drain_stamp) * rate)
        self._drain_stamp = now
        return min(share, int(self._drain_tokens))

    def _drain_wait(self, disk: Any) -> float:
        """How long the send loop may sleep: until the drain bucket has room again, at most 1 s."""
        rate = self._buffer_cfg.drain_rate
        if not rate or disk is None or not disk.available or self._drain_tokens >= 1.0:
            return 1.0
        return min(1.0, max(0.02, (1.0 - self._drain_tokens) / rate))

    def _launch(self, client: aiomqtt.Client, msg: Outgoing) -> None:
        """Hand one message to paho; its PUBACK arrives through _on_puback.

        Publishing through aiomqtt's awaitable publish() costs a task, an event and a wait_for
        per message: a fifth of the daemon's CPU flat out. Data messages go to the paho client
        aiomqtt wraps (same connection, same loop) and are tracked by message id here.
        """
        payload = msg.payload if self.stamp is None or msg.retain else self.stamp(msg.payload)
        if msg.qos == 1 and msg.properties is None:
            rc, mid = publish_qos1(client._client, msg.topic, payload, msg.retain)
        else:
            info = client._client.publish(msg.topic, payload, msg.qos, msg.retain, properties=msg.properties)
            rc, mid = info.rc, info.mid
        if rc != 0:
            self._return([msg])
            raise aiomqtt.MqttError(f"publish refused by the client (rc {rc})")
        if msg.qos == 0:
            self._delivered(msg)
        else:
            self._inflight[mid] = msg

    def _on_puback(self, mid: int) -> bool:
        """A PUBACK through paho's callback; False if the message is not one of ours."""
        if not self._acked(mid):
            return False
        self._acks_done()
        return True

    def _acked(self, mid: int) -> bool:
        """The broker has message `mid`; False if it is not one of ours (aiomqtt's own publish)."""
        msg = self._inflight.pop(mid, None)
        if msg is None:
            return False
        if msg.retain and msg.buffer_id is None:
            self._retained_inflight -= 1  # state, not a data message: not counted as published
        else:
            self._delivered(msg)
        return True

    def _acks_done(self) -> None:
        """After one or more PUBACKs: wake the send loop only if the freed window has a use.

        With nothing waiting a pass of the send loop would only find the publisher idle; at 10k
        points/s that pass (a timeout, an event, a task step) came once per message.
        """
        if self._queue or self._retry or self._retained_dirty or self._disk is not None or self.hold:
            self._wake.set()
        elif not self._inflight:
            self._idle.set()

    def _delivered(self, msg: Outgoing) -> None:
        _done(msg)
        self.stats.published += 1
        self.stats.published_bytes += len(msg.payload)
        self.stats.last_progress = time.monotonic()
        if msg.buffer_id is not None and self._disk is not None:
            self._disk.ack([msg.buffer_id])
            self._drained += 1
            self._unsynced = True

    def _return(self, msgs: Iterable[Outgoing]) -> None:
        """Messages that were in flight when the connection went: back in line, in order."""
        disk_ids = [m.buffer_id for m in msgs if m.buffer_id is not None]
        if disk_ids and self._disk is not None:
            self._disk.release(disk_ids)
        added = 0
        for m in msgs:
            if m.buffer_id is not None:
                continue
            if m.retain:
                # Retained state is sent again from _retained on the next connect.
                self._retained_inflight -= 1
                continue
            heapq.heappush(self._retry, m)
            self._bytes += _size(m)
            added += 1
        self._bound(self._disk, added)

    def _next_live(self) -> Outgoing | None:
        if self._retry:
            msg = heapq.heappop(self._retry)
        elif self._queue:
            msg = self._queue.popleft()
        else:
            return None
        self._bytes -= _size(msg)
        return msg

    def _disconnected(self) -> None:
        was = self.connected
        self.connected = False
        self.endpoint = None
        if was and self.on_connection is not None:
            self.on_connection(False)
        self._session_client = None
        inflight = list(self._inflight.values())
        self._inflight.clear()
        self._return(inflight)
        if self._disk is not None:
            self._spill()
            self._unsynced = True
            self._sync()
        if was:
            self._idle.set()

    def _spill(self) -> None:
        """Move the queue to the disk buffer (broker away, write-through, or stopping)."""
        disk = self._disk
        if disk is None:
            return
        n = len(self._queue) + len(self._retry)
        while (m := self._next_live()) is not None:
            self._to_disk(m)
        if n:
            self.stats.spilled += n
            self._unsynced = True
            if self._buffer_cfg.sync_interval == 0:
                self._sync()


_PUBLISH = 0x30
_READ_CHUNK = 1 << 16
_U16 = struct.Struct("!H")
_MAX_PAYLOAD = 268_435_455 - 2 - 65_535 - 2
# The messages this module hands to paho are waited on by nobody (the publisher matches PUBACKs by
# message id), so their MessageInfos share one condition instead of building one each.
_SHARED_CONDITION = threading.Condition()


def publish_qos1(paho: Any, topic: str, payload: bytes, retain: bool) -> tuple[int, int]:
    """paho's `publish` at QoS 1 without properties: (rc, mid), the same packet and the same state.

    paho's own costs 60k instructions per message (checks for every case, a log call, a
    MessageInfo with a threading.Condition, the packet built byte by byte), a twentieth of a
    100-point poll. This is its path for the publisher's case, step by step: the next message id,
    the message in paho's table and window, the PUBLISH packet in paho's output queue through
    paho's own `_packet_queue`. Any other case (MQTT 5, debug logging, paho's window full, a
    bound on paho's queue, no socket, a topic paho would refuse) goes to `publish` itself.
    """
    logger = paho._logger
    topic_bytes = topic.encode()
    if (
        paho._protocol not in (mqtt.MQTTv311, mqtt.MQTTv31)
        or paho._sock is None
        or paho._max_queued_messages
        or (paho._max_inflight_messages and paho._inflight_messages >= paho._max_inflight_messages)
        or paho.on_log is not None
        or (logger is not None and logger.isEnabledFor(logging.DEBUG))
        or not 0 < len(topic_bytes) <= 65535
        or b"+" in topic_bytes
        or b"#" in topic_bytes
        or not isinstance(payload, bytes | bytearray)
        or len(payload) > _MAX_PAYLOAD
    ):
        info = paho.publish(topic, payload, 1, retain)
        return info.rc, info.mid
    mid = paho._last_mid + 1
    if mid == 65536:
        mid = 1
    paho._last_mid = mid
    info = mqtt.MQTTMessageInfo.__new__(mqtt.MQTTMessageInfo)
    info.mid = mid
    info._published = False
    info._condition = _SHARED_CONDITION
    info.rc = mqtt.MQTT_ERR_SUCCESS
    info._iterpos = 0
    table = paho._out_messages
    if mid in table:
        info.rc = mqtt.MQTT_ERR_QUEUE_SIZE
        return info.rc, mid
    message = mqtt.MQTTMessage.__new__(mqtt.MQTTMessage)
    message.mid = mid
    message._topic = topic_bytes
    message.timestamp = time.monotonic()
    message.payload = payload
    message.qos = 1
    message.retain = retain
    message.dup = False
    message.properties = None
    message.info = info
    message.state = mqtt.mqtt_ms_wait_for_puback
    table[mid] = message
    paho._inflight_messages += 1
    # Fixed header, remaining length, topic, message id, payload: what paho's _send_publish builds.
    size = 4 + len(topic_bytes) + len(payload)
    head = bytearray((_PUBLISH | 0x02 | (1 if retain else 0),))
    while True:
        byte = size & 127
        size >>= 7
        if size:
            head.append(byte | 0x80)
        else:
            head.append(byte)
            break
    packet = b"".join((head, _U16.pack(len(topic_bytes)), topic_bytes, _U16.pack(mid), payload))
    rc: int = paho._packet_queue(mqtt.PUBLISH, packet, mid, 1, info)
    if rc == mqtt.MQTT_ERR_NO_CONN:
        paho._inflight_messages -= 1
        message.state = mqtt.mqtt_ms_publish
    info.rc = rc  # type: ignore[assignment]
    return rc, mid


class AckReader:
    """Reads the broker's plain PUBACKs of our messages itself, and leaves all else to paho.

    paho reads every packet with a system call per byte of its fixed header (three `recv` for a
    4-byte PUBACK) and builds a ReasonCode and a Properties object for each PUBACK, then walks
    its whole table of messages in flight looking for queued ones to send. Installed on a paho
    client (as instance attributes that aiomqtt's reader calls), this reads what the socket
    holds in one `recv` and handles each leading PUBACK (0x40 0x02 mid) of a message the
    publisher launched: the publisher's bookkeeping, then paho's (its message table and in-flight
    count), exactly as paho's callback path would. The first other byte ends the run: the rest
    goes to paho's own parser, served from memory before the socket. So do a packet paho is in
    the middle of, and everything while paho logs at debug level (it logs each PUBACK).
    """

    __slots__ = ("_acked", "_done", "_paho", "_pending", "_read", "_recv")

    def __init__(self, paho: Any, acked: Callable[[int], bool], done: Callable[[], None]) -> None:
        self._paho = paho
        self._acked = acked
        self._done = done
        self._pending = bytearray()
        self._read = paho.loop_read
        self._recv = paho._sock_recv
        paho.loop_read = self.loop_read
        paho._sock_recv = self._sock_recv

    def _sock_recv(self, bufsize: int) -> bytes:
        pending = self._pending
        if not pending:
            return self._recv(bufsize)  # type: ignore[no-any-return]
        out = bytes(pending[:bufsize])
        del pending[:bufsize]
        return out

    def _slow(self, max_packets: int) -> int:
        # paho reads at most max_packets packets per call; what it left in memory would wait for
        # the socket to become readable again, so call it until that is used up.
        rc: int = self._read(max_packets)
        while self._pending and rc == 0 and self._paho._sock is not None:
            rc = self._read(max_packets)
        return rc

    def loop_read(self, max_packets: int = 1) -> int:
        paho = self._paho
        logger = paho._logger
        if (
            self._pending
            or paho._sock is None
            or paho._in_packet["command"]
            or paho.on_log is not None
            or (logger is not None and logger.isEnabledFor(logging.DEBUG))
        ):
            return self._slow(max_packets)
        try:
            data = self._recv(_READ_CHUNK)
        except BlockingIOError:
            return 0
        except OSError:
            return self._slow(max_packets)  # paho meets the error (or the end) itself and reports it
        if not data:
            return self._slow(max_packets)
        table = paho._out_messages
        acked = self._acked
        n = len(data)
        pos = 0
        while pos + 4 <= n and data[pos] == 0x40 and data[pos + 1] == 2:
            mid = (data[pos + 2] << 8) | data[pos + 3]
            msg = table.get(mid)
            if msg is None or not acked(mid):
                break
            # What paho does after its callback. Nobody can wait on the message's info: the
            # publisher dropped it at launch, so no condition to notify.
            del table[mid]
            msg.info._published = True
            if msg.qos:
                paho._inflight_messages -= 1
            pos += 4
        if pos:
            paho._last_bytes_received = time.monotonic()
            self._done()
            if paho._max_inflight_messages > 0 and len(table) > paho._inflight_messages:
                # paho holds messages past its window: they go now, as after its own PUBACKs.
                rc: int = paho._update_inflight()
                if rc:
                    return paho._loop_rc_handle(rc)  # type: ignore[no-any-return]
        if pos == n:
            return 0
        self._pending += data[pos:]
        return self._slow(max_packets)


def coalesce(paho: Any) -> None:
    """Join the QoS 1 PUBLISH packets waiting in paho's output queue into one socket write.

    paho sends every queued packet with a `send` of its own when the socket is writable: a
    hundred data messages launched in one pass of the send loop were a hundred system calls (and,
    with TCP_NODELAY, as many segments for the broker to read). Packets not yet started are joined
    in order; a packet paho has begun to write, and QoS 0 ones (paho reports those as published
    when written), stay as they are. Nothing else reads a QoS 1 packet after it is written: its
    PUBACK is matched by message id from paho's own table.
    """
    queue = paho._out_packet
    if len(queue) < 2:
        return
    out: list[Any] = []
    run: list[Any] = []
    for packet in queue:
        if packet["pos"] == 0 and packet["qos"] > 0 and packet["command"] & 0xF0 == _PUBLISH:
            run.append(packet)
            continue
        _flush(run, out)
        out.append(packet)
    _flush(run, out)
    if len(out) != len(queue):
        queue.clear()
        queue.extend(out)


def _hold_writes(paho: Any) -> bool:
    """Keep paho from asking the loop for a writer while a send loop pass queues its packets.

    For every pass paho would register the socket as a writer (aiomqtt does that through
    `call_soon_threadsafe`: a wake-up of the loop), write in the loop's next turn, and unregister
    it: two `epoll_ctl` and a turn of the loop per pass, which at 10k points/s is per message.
    The pass writes itself instead (`_write_now`). False if a writer is registered already (an
    earlier write was cut short): that writer sends everything, in order, as before.
    """
    if paho._registered_write:
        return False
    paho._registered_write = True
    return True


def _write_now(client: aiomqtt.Client, held: bool) -> bool:
    """Join the queued PUBLISH packets and, after `_hold_writes`, write them now; returns False.

    What the socket does not take at once goes the usual way: paho registers the writer.
    """
    paho = client._client
    coalesce(paho)
    if held:
        paho._registered_write = False
        if paho._out_packet:
            try:
                paho.loop_write()
            except Exception as exc:  # noqa: BLE001 - as aiomqtt's writer: the connection is gone
                if not client._disconnected.done():
                    client._disconnected.set_exception(exc)
    return False


def _flush(run: list[Any], out: list[Any]) -> None:
    if len(run) > 1:
        data = b"".join([p["packet"] for p in run])
        out.append({**run[0], "mid": 0, "info": None, "packet": data, "to_process": len(data)})
    elif run:
        out.append(run[0])
    run.clear()


def _size(msg: Outgoing) -> int:
    """What a waiting message counts against `queue_bytes`."""
    return len(msg.payload) + len(msg.topic)


def _done(msg: Outgoing) -> None:
    """Tell the producer once that a message is out of memory's hands (safe, or dropped)."""
    callback, msg.on_done = msg.on_done, None
    if callback is not None:
        callback()
