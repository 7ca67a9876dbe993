"""Load benchmark: N Modbus TCP twins x P float32 points, mosquitto, and `edgegw run` as a process.

Reports what the consumers receive (points/s, poll-to-consumer latency) and what the daemon costs
(CPU share of one core from /proc, peak RSS), plus the scheduler's own counters (polls, skipped
ticks) from its /metrics endpoint. The twins run in a separate process so that their cost is not
counted against the daemon.

    python bench/modbus_load.py --devices 100 --points 100 --interval 1 --duration 60
    python bench/modbus_load.py --devices 100 --points 100 --interval 0.05 --duration 30   # flat out
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import time
from pathlib import Path

import aiomqtt
from common import metrics, start_rig, stop_run

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


async def run(args: argparse.Namespace) -> dict[str, object]:
    rig = await start_rig("edgegw-bench-", args.devices, args.points)
    work, broker_port, health_port = rig.work, rig.broker.port, rig.health_port
    config_text = (
        f"site: bench\nmqtt: {{url: 'mqtt://127.0.0.1:{broker_port}', qos: {args.qos}, max_inflight: 200}}\n"
        f"health: {{listen: '127.0.0.1:{health_port}'}}\nlog: {{level: warning, format: json}}\n"
        + (f"buffer: {{path: {work / 'buffer'}}}\n" if args.buffer else "")
        + f"devices:\n{rig.devices(args.interval, '1s', inline=args.inline)}"
    )
    received = {"points": 0, "messages": 0}
    latencies: list[float] = []
    counting = asyncio.Event()

    async def subscribe(ready: asyncio.Event) -> None:
        async with aiomqtt.Client(
            "127.0.0.1", broker_port, identifier="bench-consumer", max_queued_incoming_messages=0
        ) as client:
            await client.subscribe("edgegw/bench/+/data", qos=args.qos)
            ready.set()
            async for msg in client.messages:
                if not counting.is_set():
                    continue
                payload = bytes(msg.payload)
                received["messages"] += 1
                received["points"] += payload.count(b'"point":')
                # "ts" of the message is when the poll completed; the first "ts" key is the message's.
                start = payload.index(b'"ts":') + 5
                ts = int(payload[start : payload.index(b",", start)])
                latencies.append(time.time() * 1000 - ts)

    ready = asyncio.Event()
    consumer = asyncio.create_task(subscribe(ready))
    await asyncio.wait_for(ready.wait(), 10)
    daemon = rig.start_daemon(config_text)
    try:
        await asyncio.sleep(args.warmup)
        m0 = await metrics(health_port)
        c0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        counting.set()
        await asyncio.sleep(args.duration)
        counting.clear()
        c1, t1 = cpu_seconds(daemon.pid), time.monotonic()
        m1 = await metrics(health_port)
        rss_now, rss_peak = rss_kib(daemon.pid, "VmRSS"), rss_kib(daemon.pid, "VmHWM")
    finally:
        await stop_run(daemon, consumer)
        await rig.stop()
    elapsed = t1 - t0
    cpu = (c1 - c0) / elapsed
    latencies.sort()

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(len(latencies) * q))], 2) if latencies else float("nan")

    polls = m1.get("edgegw_device_polls_total", 0) - m0.get("edgegw_device_polls_total", 0)
    expected = args.devices * elapsed / args.interval
    result: dict[str, object] = {
        "devices": args.devices,
        "points_per_device": args.points,
        "interval_s": args.interval,
        "qos": args.qos,
        "disk_buffer": args.buffer,
        "inline_points": args.inline,
        "duration_s": round(elapsed, 1),
        "points_per_s": round(received["points"] / elapsed),
        "messages_per_s": round(received["messages"] / elapsed, 1),
        "daemon_cpu_share_of_one_core": round(cpu, 4),
        "points_per_s_per_core": round(received["points"] / elapsed / cpu) if cpu else None,
        "daemon_rss_mib": round(rss_now / 1024, 1),
        "daemon_peak_rss_mib": round(rss_peak / 1024, 1),
        "latency_ms_p50": pct(0.5),
        "latency_ms_p99": pct(0.99),
        "latency_ms_max": pct(1.0),
        "polls": int(polls),
        "polls_expected_on_time": int(expected),
        "skipped_ticks": int(
            m1.get("edgegw_device_skipped_ticks_total", 0) - m0.get("edgegw_device_skipped_ticks_total", 0)
        ),
        "poll_errors": int(m1.get("edgegw_device_poll_errors_total", 0) - m0.get("edgegw_device_poll_errors_total", 0)),
        "dropped": int(m1.get("edgegw_messages_dropped_total", 0)),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
    }
    shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--qos", type=int, default=1)
    ap.add_argument("--buffer", action="store_true", help="with a disk buffer configured")
    ap.add_argument("--inline", action="store_true", help="every device lists its points instead of naming the profile")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
