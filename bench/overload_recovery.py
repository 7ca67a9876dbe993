"""Overload and recovery in one daemon process: memory, throughput, fairness and latency (issue 13).

The rig of modbus_load.py (twins in their own process, mosquitto, `edgegw run` as a process, a
counting consumer). One daemon runs through these phases, the interval changed by rewriting its
config file and sending SIGHUP (a changed interval makes `reload` replace the device's runner):

1. steady: every device at `--interval` (100 x 100 points at 1 s: 10k points/s) for `--steady` s;
2. overload: every device at `--overload-interval` (10 ms: 1M points/s asked) for `--overload` s;
3. recovery: back to `--interval` for `--recovery` s (60: "a minute after the overload ends").

Phases 2 and 3 repeat `--runs` times in the same process, each reported on its own, so that
"run after run" steadiness shows. The daemon's VmRSS (from /proc) is sampled every second; its
/metrics are scraped at the start and end of each measured window. A window starts `--warmup`
seconds after the reload is done and ends with the phase; the recovery's window is its second half.

Per window: delivered points/s and messages/s (the consumer's), the daemon's published
messages/s, its CPU share of one core, per-device delivered rates (from the consumer's per-topic
counts) and their min/max ratio, latency (poll end to consumer) p50/p99/max, skipped ticks by
reason, dropped messages, and whether every device's ticks balance (ticks = polls + skipped +
backoff). Per phase: RSS at its end, its peak, and how long the reload took. RSS "60 s after" is
read `--recovery` seconds after the SIGHUP that ends the overload, against the steady level (the
median over the steady window).

Short check (about 4 minutes):

    python bench/overload_recovery.py --steady 20 --overload 20 --recovery 60 --runs 2

The long run for the figures of issue 13 (about 11 minutes, on an otherwise idle machine):

    python bench/overload_recovery.py --steady 60 --overload 60 --recovery 60 --runs 5 --series

Each reload itself adds memory: the replaced runners live until a full garbage collection
(docs/performance.md, "Overload and recovery"). The control is the same run with the reloads
but no overload:

    python bench/overload_recovery.py --steady 60 --overload 60 --recovery 60 --runs 5 --series --overload-interval 0.9
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from common import Rig, start_rig, stop_run
from modbus_load import cpu_seconds, rss_kib
from saturation import gauge, per_device, scrape

MIB = 1024.0
SKIP_REASONS = ("busy", "late", "backpressure")


@dataclass
class Consumer:
    """What reaches the subscriber while a window is open: messages and points per device, latencies."""

    counting: bool = False
    messages: dict[str, int] = field(default_factory=dict)
    points: int = 0
    latencies: list[float] = field(default_factory=list)
    first_data: asyncio.Event = field(default_factory=asyncio.Event)

    def reset(self) -> None:
        self.messages, self.points, self.latencies = {}, 0, []

    async def run(self, port: int, ready: asyncio.Event) -> None:
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier="overload-recovery", max_queued_incoming_messages=0
        ) as client:
            await client.subscribe("edgegw/bench/+/data", qos=1)
            ready.set()
            async for msg in client.messages:
                self.first_data.set()
                if not self.counting:
                    continue
                device = str(msg.topic).split("/")[2]
                self.messages[device] = self.messages.get(device, 0) + 1
                payload = bytes(msg.payload)
                self.points += payload.count(b'"point":')
                # The message's own "ts" (when the poll ended) is its first "ts" key.
                start = payload.index(b'"ts":') + 5
                self.latencies.append(time.time() * 1000 - int(payload[start : payload.index(b",", start)]))


@dataclass
class Bench:
    """The rig, the daemon and the RSS samples of one run of this benchmark."""

    args: argparse.Namespace
    rig: Rig
    consumer: Consumer
    daemon: subprocess.Popen[bytes] | None = None
    t0: float = field(default_factory=time.monotonic)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds since t0, VmRSS KiB)
    log_offset: int = 0

    def config(self, interval: float) -> str:
        rig = self.rig
        return (
            f"site: bench\nmqtt: {{url: 'mqtt://127.0.0.1:{rig.broker.port}', qos: 1, max_inflight: 200}}\n"
            f"health: {{listen: '127.0.0.1:{rig.health_port}'}}\nlog: {{level: info, format: json}}\n"
            f"devices:\n{rig.devices(interval, '1s')}"
        )

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def sample_rss(self) -> None:
        assert self.daemon is not None
        while self.daemon.poll() is None:
            self.rss.append((self.now(), rss_kib(self.daemon.pid, "VmRSS")))
            await asyncio.sleep(max(0.1, 1.0 - self.now() % 1.0))

    def rss_between(self, start: float, end: float) -> list[int]:
        return [kib for t, kib in self.rss if start <= t <= end]

    def new_log(self) -> list[dict[str, Any]]:
        """The daemon's log lines written since the last call."""
        path = self.rig.work / "daemon.log"
        with path.open("rb") as f:
            f.seek(self.log_offset)
            data = f.read()
        # Only whole lines: a line being written is read next time.
        data = data[: data.rfind(b"\n") + 1]
        self.log_offset += len(data)
        out = []
        for line in data.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": line.decode(errors="replace")})
        return out

    async def reload(self, interval: float) -> tuple[float, list[dict[str, Any]]]:
        """Rewrite the config at `interval`, SIGHUP, and wait for `config reloaded`; its time and log."""
        assert self.daemon is not None
        (self.rig.work / "gateway.yaml").write_text(self.config(interval))
        seen: list[dict[str, Any]] = self.new_log()
        sent = time.monotonic()
        self.daemon.send_signal(signal.SIGHUP)
        async with asyncio.timeout(self.args.reload_timeout):
            while True:
                await asyncio.sleep(0.1)
                seen += self.new_log()
                events = [str(e.get("event", "")) for e in seen]
                if "reload rejected: the new config is invalid; the running one stays" in events:
                    raise RuntimeError(f"reload rejected: {seen}")
                if "config reloaded" in events:
                    return time.monotonic() - sent, seen

    async def window(self, seconds: float) -> dict[str, Any]:
        """What the consumer and the daemon did over the next `seconds`."""
        assert self.daemon is not None
        port = self.rig.health_port
        before = await scrape(port)
        c0, t0 = cpu_seconds(self.daemon.pid), time.monotonic()
        self.consumer.reset()
        self.consumer.counting = True
        await asyncio.sleep(seconds)
        self.consumer.counting = False
        c1, t1 = cpu_seconds(self.daemon.pid), time.monotonic()
        after = await scrape(port)
        return summarise(self.args, self.consumer, before, after, t1 - t0, (c1 - c0) / (t1 - t0))


def delta(before: str, after: str, name: str, reason: str | None = None) -> float:
    """A per-device counter's growth between two scrapes of the same runners."""
    b, a = per_device(before, name, reason), per_device(after, name, reason)
    return sum(a.values()) - sum(b.get(d, 0.0) for d in a)


def total(body: str, name: str) -> float:
    """A metric summed over all its labels."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith((name + " ", name + "{")))


def pct(values: list[float], q: float) -> float | None:
    return round(values[min(len(values) - 1, int(len(values) * q))], 1) if values else None


def summarise(
    args: argparse.Namespace, consumer: Consumer, before: str, after: str, elapsed: float, cpu: float
) -> dict[str, Any]:
    rates = [consumer.messages.get(f"dev{i:03d}", 0) / elapsed for i in range(args.devices)]
    latencies = sorted(consumer.latencies)
    ticks = per_device(after, "edgegw_device_ticks_total")
    polls = per_device(after, "edgegw_device_polls_total")
    skipped = per_device(after, "edgegw_device_skipped_ticks_total")
    backoff = per_device(after, "edgegw_device_backoff_ticks_total")
    published = gauge(after, "edgegw_messages_published_total") - gauge(before, "edgegw_messages_published_total")
    dropped = total(after, "edgegw_messages_dropped_total")
    return {
        "duration_s": round(elapsed, 1),
        "points_per_s": round(consumer.points / elapsed),
        "messages_per_s": round(sum(consumer.messages.values()) / elapsed, 1),
        "daemon_published_messages_per_s": round(published / elapsed, 1),
        "daemon_cpu_share_of_one_core": round(cpu, 3),
        "per_device_messages_per_s_min_median_max": [
            round(min(rates), 2),
            round(statistics.median(rates), 2),
            round(max(rates), 2),
        ],
        "per_device_min_over_max": round(min(rates) / max(rates), 3) if max(rates) else None,
        "latency_ms_p50_p99_max": [pct(latencies, 0.5), pct(latencies, 0.99), pct(latencies, 1.0)],
        "polls": int(delta(before, after, "edgegw_device_polls_total")),
        "skipped_by_reason": {
            r: int(delta(before, after, "edgegw_device_skipped_ticks_total", r)) for r in SKIP_REASONS
        },
        "backoff_ticks": int(delta(before, after, "edgegw_device_backoff_ticks_total")),
        "poll_errors": int(delta(before, after, "edgegw_device_poll_errors_total")),
        "dropped": int(dropped - total(before, "edgegw_messages_dropped_total")),
        "dropped_since_start": int(dropped),
        "queue_depth_at_end": gauge(after, "edgegw_queue_depth"),
        "devices_whose_ticks_do_not_balance": [
            d for d in ticks if ticks[d] != polls.get(d, 0) + skipped.get(d, 0) + backoff.get(d, 0)
        ],
    }


def skip_log(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The gateway's overload log lines (SkipLog) and anything at warning or above."""
    keep = [
        e for e in lines if e.get("level") in ("warning", "error", "critical") or "polls on time" in str(e.get("event"))
    ]
    return [{k: v for k, v in e.items() if k not in ("timestamp", "logger")} for e in keep][:10]


async def overload_run(bench: Bench, steady_kib: float) -> dict[str, Any]:
    """One overload phase and the recovery after it."""
    args = bench.args
    started = bench.now()
    reload_in, log_in = await bench.reload(args.overload_interval)
    measure = args.overload - reload_in - args.warmup
    if measure <= 1:
        raise RuntimeError(f"--overload {args.overload} s leaves no window after a {reload_in:.1f} s reload")
    await asyncio.sleep(args.warmup)
    overload = await bench.window(measure)
    assert bench.daemon is not None
    hwm_kib = rss_kib(bench.daemon.pid, "VmHWM")
    ended = bench.now()
    reload_out, log_out = await bench.reload(args.interval)
    await asyncio.sleep(max(0.0, args.recovery / 2 - reload_out))
    recovery = await bench.window(args.recovery - (bench.now() - ended))
    after_kib = rss_kib(bench.daemon.pid, "VmRSS")
    log_out += bench.new_log()
    during = bench.rss_between(started, ended + reload_out)
    target_p99 = max(2000 * args.overload_interval, 100.0)
    p99 = overload["latency_ms_p50_p99_max"][1]
    return {
        "reload_to_overload_s": round(reload_in, 2),
        "reload_back_s": round(reload_out, 2),
        "overload": overload,
        "rss_peak_during_overload_mib": round(max(during, default=0) / MIB, 1),
        "vmhwm_at_overload_end_mib": round(hwm_kib / MIB, 1),
        "recovery": recovery,
        "rss_after_recovery_mib": round(after_kib / MIB, 1),
        "rss_after_recovery_minus_steady_mib": round((after_kib - steady_kib) / MIB, 1),
        "rss_after_recovery_s": round(bench.now() - ended, 1),
        "p99_target_ms": target_p99,
        "p99_under_target": p99 is not None and p99 < target_p99,
        "log": skip_log(log_in + log_out),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rig = await start_rig("edgegw-recovery-", args.devices, args.points)
    bench = Bench(args, rig, Consumer())
    ready = asyncio.Event()
    consumer = asyncio.create_task(bench.consumer.run(rig.broker.port, ready))
    sampler: asyncio.Task[None] | None = None
    runs: list[dict[str, Any]] = []
    try:
        await asyncio.wait_for(ready.wait(), 10)
        bench.daemon = rig.start_daemon(bench.config(args.interval))
        sampler = asyncio.create_task(bench.sample_rss())
        await asyncio.wait_for(bench.consumer.first_data.wait(), 120)
        await asyncio.sleep(args.warmup)
        start = bench.now()
        steady = await bench.window(args.steady - args.warmup)
        steady_kib = statistics.median(bench.rss_between(start, bench.now()))
        bench.new_log()
        for _ in range(args.runs):
            runs.append(await overload_run(bench, steady_kib))
        peak_kib = rss_kib(bench.daemon.pid, "VmHWM")
    finally:
        if bench.daemon is not None:
            await stop_run(bench.daemon, consumer, wait=60)
        else:
            consumer.cancel()
        if sampler is not None:
            sampler.cancel()
        await rig.stop()
        shutil.rmtree(rig.work, ignore_errors=True)
    rates = [r["overload"]["points_per_s"] for r in runs]
    result: dict[str, Any] = {
        "devices": args.devices,
        "points_per_device": args.points,
        "interval_s": args.interval,
        "overload_interval_s": args.overload_interval,
        "asked_points_per_s_in_overload": round(args.devices * args.points / args.overload_interval),
        "steady": steady,
        "rss_steady_mib": round(steady_kib / MIB, 1),
        "runs": runs,
        "overload_points_per_s_by_run": rates,
        "overload_points_per_s_min_over_max": round(min(rates) / max(rates), 3) if rates and max(rates) else None,
        "rss_max_sampled_mib": round(max(kib for _, kib in bench.rss) / MIB, 1),
        "vmhwm_mib": round(peak_kib / MIB, 1),
        "load_average_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
    }
    if args.series:
        result["rss_mib_series"] = [[round(t, 1), round(kib / MIB, 1)] for t, kib in bench.rss]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--interval", type=float, default=1.0, help="the steady interval, s")
    ap.add_argument("--overload-interval", type=float, default=0.01, help="the interval asked in the overload, s")
    ap.add_argument("--steady", type=float, default=60.0, help="seconds at --interval before the first overload")
    ap.add_argument("--overload", type=float, default=60.0, help="seconds of each overload, from its SIGHUP")
    ap.add_argument("--recovery", type=float, default=60.0, help="seconds after each overload, from its SIGHUP")
    ap.add_argument("--runs", type=int, default=1, help="overload and recovery phases, one after the other")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds from a reload done to its window")
    ap.add_argument("--reload-timeout", type=float, default=120.0)
    ap.add_argument("--series", action="store_true", help="add the RSS samples (one a second) to the output")
    print(json.dumps(asyncio.run(run(ap.parse_args())), indent=2))


if __name__ == "__main__":
    main()
