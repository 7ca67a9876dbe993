"""systemd notification (READY, WATCHDOG, STATUS) and the optional /healthz and /metrics endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from gateway.app import Gateway


def sd_notify(state: str) -> bool:
    """Send a notification to systemd when run as a Type=notify service; False when not."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(state.encode())
        return True
    except OSError:
        return False


def watchdog_period() -> float | None:
    """Half the WatchdogSec systemd gave this process, or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return None


class Health:
    """Pings the watchdog only while the gateway makes progress; serves /healthz and /metrics."""

    def __init__(
        self, gateway: Gateway, listen: str | None, stall: float, log: structlog.typing.FilteringBoundLogger
    ) -> None:
        self.gateway = gateway
        self.listen = listen
        self.stall = stall
        self.log = log
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._status = ""

    async def start(self) -> None:
        period = watchdog_period()
        if period:
            self._tasks.append(asyncio.create_task(self._watchdog(period), name="watchdog"))
        self._tasks.append(asyncio.create_task(self._status_loop(), name="sd-status"))
        if self.listen:
            host, _, port = self.listen.rpartition(":")
            self._server = await asyncio.start_server(self._handle, host.strip("[]"), int(port))
            self.log.info("health endpoint listening", listen=self.listen)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()

    def problems(self) -> list[str]:
        """Why the gateway is not healthy (empty when it is)."""
        out = []
        now = time.monotonic()
        gw = self.gateway
        runners = list(gw.runners.values())
        if runners:
            newest = max(r.stats.last_progress for r in runners)
            if now - newest > max(self.stall, 2 * max(r.device.interval for r in runners)):
                out.append("scheduler: no device's schedule has turned recently")
        pub = gw.publisher
        if pub.connected and pub.backlog and now - pub.stats.last_progress > self.stall:
            out.append("publisher: connected but nothing acknowledged recently")
        return out

    async def _watchdog(self, period: float) -> None:
        while True:
            if not self.problems():
                sd_notify("WATCHDOG=1")
            await asyncio.sleep(period)

    async def _status_loop(self) -> None:
        while True:
            status = self.gateway.summary()
            if status != self._status:
                self._status = status
                sd_notify(f"STATUS={status}")
            await asyncio.sleep(5.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5.0):
                request = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else "/"
            if path == "/healthz":
                problems = self.problems()
                body = json.dumps({"ok": not problems, "problems": problems, "summary": self.gateway.summary()})
                await _respond(writer, 200 if not problems else 503, "application/json", body)
            elif path == "/metrics":
                await _respond(writer, 200, "text/plain; version=0.0.4", render_metrics(self.gateway))
            else:
                await _respond(writer, 404, "text/plain", "not found\n")
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _respond(writer: asyncio.StreamWriter, code: int, ctype: str, body: str) -> None:
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[code]
    data = body.encode()
    head = (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + data)
    await writer.drain()


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(gw: Gateway) -> str:
    """Prometheus text exposition of the gateway's counters."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP edgegw_{name} {help_}")
        lines.append(f"# TYPE edgegw_{name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
            lines.append(f"edgegw_{name}{{{lab}}} {value}" if lab else f"edgegw_{name} {value}")

    runners = list(gw.runners.values())

    def per_device(get: Callable[[Any], float]) -> list[tuple[dict[str, str], float]]:
        return [({"device": r.device.id}, float(get(r))) for r in runners]

    # ticks == polls + skipped (all reasons) + backoff ticks, per device, exactly.
    metric(
        "device_ticks_total",
        "counter",
        "Deadlines of the device's schedule that passed.",
        per_device(lambda r: r.stats.ticks),
    )
    metric("device_polls_total", "counter", "Polls started.", per_device(lambda r: r.stats.polls))
    metric("device_poll_errors_total", "counter", "Polls that failed.", per_device(lambda r: r.stats.failures))
    metric(
        "device_skipped_ticks_total",
        "counter",
        "Ticks that started no poll, by reason: busy (the previous poll still ran), late (the process "
        "woke after the deadline), backpressure (the publisher's queue was full).",
        [
            ({"device": r.device.id, "reason": str(reason)}, float(n))
            for r in runners
            for reason, n in r.stats.skipped_by.items()
        ],
    )
    metric(
        "device_backoff_ticks_total",
        "counter",
        "Ticks that fell in an offline device's backoff wait.",
        per_device(lambda r: r.stats.backoff),
    )
    metric(
        "device_poll_duration_seconds",
        "gauge",
        "Duration of the last poll.",
        per_device(lambda r: r.stats.last_duration),
    )
    metric(
        "device_poll_duration_seconds_sum",
        "counter",
        "Total time spent polling.",
        per_device(lambda r: r.stats.duration_sum),
    )
    metric(
        "device_online",
        "gauge",
        "1 when the device is online.",
        per_device(lambda r: 1.0 if r.stats.state.value == "online" else 0.0),
    )
    metric(
        "device_readings_total",
        "counter",
        "Readings produced.",
        per_device(lambda r: r.stats.readings + r.stats.pushed),
    )
    metric(
        "bus_utilisation_ratio",
        "gauge",
        "Share of time the bus was busy with a transaction.",
        [({"bus": b.id}, round(b.utilisation(), 6)) for b in gw.buses.values()],
    )
    metric(
        "bus_transactions_total",
        "counter",
        "Transactions on the bus.",
        [({"bus": b.id}, float(b.transactions)) for b in gw.buses.values()],
    )
    pathsets = [b.paths for b in gw.buses.values() if b.paths is not None and b.paths.redundant]
    metric(
        "bus_path_info",
        "gauge",
        "1 for the endpoint a bus with several uses, 0 for its others.",
        [
            ({"bus": ps.bus_id, "path": str(p), "preferred": "true" if not p.index else "false"}, float(p == ps.active))
            for ps in pathsets
            for p in ps.paths
        ],
    )
    metric(
        "bus_path_switches_total",
        "counter",
        "Changes of the endpoint a bus uses, by direction.",
        [({"bus": ps.bus_id, "direction": "failover"}, float(ps.failovers)) for ps in pathsets]
        + [({"bus": ps.bus_id, "direction": "failback"}, float(ps.failbacks)) for ps in pathsets],
    )
    pub = gw.publisher
    st = pub.stats
    metric("queue_depth", "gauge", "Messages waiting in memory.", [({}, float(pub.queue_depth))])
    metric(
        "queue_bytes",
        "gauge",
        "Payload and topic bytes of the messages waiting in memory.",
        [({}, float(pub.queue_bytes))],
    )
    metric("inflight_messages", "gauge", "Messages published, not yet acknowledged.", [({}, float(pub.inflight))])
    metric("messages_published_total", "counter", "Messages acknowledged by the broker.", [({}, float(st.published))])
    metric(
        "bytes_published_total",
        "counter",
        "Payload bytes acknowledged by the broker.",
        [({}, float(st.published_bytes))],
    )
    metric(
        "messages_dropped_total",
        "counter",
        "Messages dropped, by reason.",
        [
            ({"reason": "queue_full"}, float(st.dropped_queue)),
            *_buffer_drops(pub.buffer_stats()),
        ],
    )
    metric("broker_connected", "gauge", "1 while connected to the broker.", [({}, 1.0 if pub.connected else 0.0)])
    metric("broker_connects_total", "counter", "Successful broker connections.", [({}, float(st.connects))])
    metric(
        "broker_active",
        "gauge",
        "1 for the broker (of mqtt.url) the gateway is connected to, 0 for the others.",
        [({"url": e.url}, 1.0 if pub.endpoint == e else 0.0) for e in pub.endpoints],
    )
    metric(
        "broker_switches_total",
        "counter",
        "Connections made to another broker than the one before.",
        [({}, float(st.broker_switches))],
    )
    for kind, runtime in gw.runtimes.items():
        for name, value in runtime.counters().items():
            metric(
                f"{kind}_{name}_total", "counter", f"{kind} runtime: {name.replace('_', ' ')}.", [({}, float(value))]
            )
    bstats = pub.buffer_stats()
    if bstats is not None:
        oldest = getattr(bstats, "oldest_ts", None)
        metric("buffer_bytes", "gauge", "Bytes in the disk buffer.", [({}, float(bstats.bytes))])
        metric("buffer_messages", "gauge", "Messages in the disk buffer.", [({}, float(bstats.records))])
        metric(
            "buffer_oldest_age_seconds",
            "gauge",
            "Age of the oldest buffered message.",
            [({}, max(0.0, time.time() - oldest) if oldest else 0.0)],
        )
        metric(
            "buffer_stored_ratio",
            "gauge",
            "Bytes stored per payload byte appended since start (compression).",
            [({}, bstats.stored_bytes / bstats.payload_bytes if bstats.payload_bytes else 1.0)],
        )
        metric("buffer_drain_rate_limit", "gauge", "buffer.drain_rate (0: no limit).", [({}, pub.drain_rate_limit)])
        metric(
            "buffer_drain_rate",
            "gauge",
            "Buffered messages acknowledged per second (last ten seconds).",
            [({}, pub.drain_rate_measured)],
        )
        eta = pub.drain_eta()
        metric(
            "buffer_time_to_empty_seconds",
            "gauge",
            "Estimated time until the buffer is drained at the measured rate (+Inf: not draining).",
            [({}, math.inf if eta is None else eta)],
        )
    ha = gw.ha
    if ha is not None:
        from gateway.ha import ROLES

        who = {"instance": ha.instance, "group": ha.group}
        metric(
            "ha_role",
            "gauge",
            "1 for this instance's role in its hot-standby pair.",
            [({"role": r, **who}, 1.0 if ha.role == r else 0.0) for r in ROLES],
        )
        metric("ha_epoch", "gauge", "The lease epoch this instance holds (0 unless active).", [(who, float(ha.epoch))])
        metric("ha_takeovers_total", "counter", "Times this instance became active.", [(who, float(ha.takeovers))])
        metric(
            "ha_seq_exhausted_total",
            "counter",
            "Data messages dropped: the seq reservation ran out while the broker was away.",
            [(who, float(pub.seq.exhausted))],
        )
    spb = gw.sparkplug
    if spb is not None:
        sst = spb.publisher.stats
        metric(
            "sparkplug_connected",
            "gauge",
            "1 while the Sparkplug session is connected.",
            [({}, 1.0 if spb.publisher.connected else 0.0)],
        )
        metric(
            "sparkplug_live",
            "gauge",
            "1 while the edge node is born and publishing live data.",
            [({}, 1.0 if spb.live else 0.0)],
        )
        metric(
            "sparkplug_births_total",
            "counter",
            "NBIRTHs acknowledged (connects, rebirths, primary host back).",
            [({}, float(spb.births))],
        )
        metric(
            "sparkplug_rebirth_requests_total",
            "counter",
            "NCMD Node Control/Rebirth requests.",
            [({}, float(spb.rebirths))],
        )
        metric(
            "sparkplug_messages_published_total",
            "counter",
            "Sparkplug messages acknowledged by the broker.",
            [({}, float(sst.published))],
        )
        metric(
            "sparkplug_backlog_messages",
            "gauge",
            "Sparkplug messages waiting (memory, in flight, disk buffer).",
            [({}, float(spb.publisher.backlog))],
        )
        metric(
            "sparkplug_messages_dropped_total",
            "counter",
            "Sparkplug messages dropped, by reason.",
            [
                ({"reason": "queue_full"}, float(sst.dropped_queue)),
                ({"reason": "buffer_full"}, float(getattr(spb.publisher.buffer_stats(), "dropped_records", 0) or 0)),
            ],
        )
    metric("process_resident_memory_bytes", "gauge", "Resident set size.", [({}, float(_rss_bytes()))])
    metric("asyncio_tasks", "gauge", "Tasks alive in the event loop.", [({}, float(len(asyncio.all_tasks())))])
    return "\n".join(lines) + "\n"


def _buffer_drops(bstats: Any) -> list[tuple[dict[str, str], float]]:
    """The disk buffer's drops by reason: the size cap, a full disk, other disk errors."""
    if bstats is None:
        return [({"reason": "buffer_full"}, 0.0)]
    full, no_space = bstats.dropped_full, bstats.dropped_no_space
    return [
        ({"reason": "buffer_full"}, float(full)),
        ({"reason": "disk_full"}, float(no_space)),
        ({"reason": "buffer_error"}, float(bstats.dropped_records - full - no_space)),
    ]


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
