"""Saturation rig: what each device gets when the devices ask for more than the daemon can deliver.

The same rig as modbus_load.py (twins in their own process, mosquitto, `edgegw run`), but it
reports what that benchmark does not: the delivered rate per device (fairness), the queue depth
seen over the run, the tick accounting per device (ticks = polls + skipped + backoff), skipped
ticks by reason, and how many retained messages reached the consumer before the first data
message. Optionally it runs the daemon under cProfile, to see where the time goes.

    python bench/saturation.py --devices 100 --points 100 --interval 0.01 --duration 30
    python bench/saturation.py --interval 0.01 --duration 15 --profile /tmp/edgegw.prof
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

import aiomqtt
from common import REPO, start_rig, stop_run
from modbus_load import cpu_seconds


async def scrape(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data.decode()


def per_device(body: str, name: str, reason: str | None = None) -> dict[str, float]:
    """A per-device counter, summed over its other labels (or only those of one `reason`)."""
    out: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith(name + "{") and (reason is None or f'reason="{reason}"' in line):
            labels, value = line[len(name) + 1 :].rsplit("} ", 1)
            device = labels.split('device="', 1)[1].split('"', 1)[0]
            out[device] = out.get(device, 0.0) + float(value)
    return out


def gauge(body: str, name: str) -> float:
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rig = await start_rig("edgegw-saturation-", args.devices, args.points)
    config = rig.work / "gateway.yaml"
    config.write_text(
        f"site: bench\nmqtt: {{url: 'mqtt://127.0.0.1:{rig.broker.port}', qos: 1, max_inflight: 200}}\n"
        f"health: {{listen: '127.0.0.1:{rig.health_port}'}}\nlog: {{level: warning, format: json}}\n"
        f"devices:\n{rig.devices(args.interval, '1s')}"
    )
    delivered: dict[str, int] = {}
    latencies: list[float] = []
    retained_before_data: list[int] = [0]
    first_data = asyncio.Event()
    counting = asyncio.Event()

    async def consume(ready: asyncio.Event) -> None:
        async with aiomqtt.Client(
            "127.0.0.1", rig.broker.port, identifier="saturation", max_queued_incoming_messages=0
        ) as client:
            await client.subscribe("edgegw/bench/#", qos=1)
            ready.set()
            async for msg in client.messages:
                topic = str(msg.topic)
                if not topic.endswith("/data"):
                    if not first_data.is_set():
                        retained_before_data[0] += 1
                    continue
                first_data.set()
                if counting.is_set():
                    device = topic.split("/")[2]
                    delivered[device] = delivered.get(device, 0) + 1
                    payload = bytes(msg.payload)
                    start = payload.index(b'"ts":') + 5
                    latencies.append(time.time() * 1000 - int(payload[start : payload.index(b",", start)]))

    ready = asyncio.Event()
    consumer = asyncio.create_task(consume(ready))
    await asyncio.wait_for(ready.wait(), 10)
    profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
    log = (rig.work / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [sys.executable, *profile, "-m", "gateway.cli", "run", "--config", str(config)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    depths: list[float] = []
    inflight: list[float] = []
    try:
        await asyncio.wait_for(first_data.wait(), 120)
        await asyncio.sleep(args.warmup)
        counting.set()
        started, cpu0 = time.monotonic(), cpu_seconds(daemon.pid)
        while time.monotonic() - started < args.duration:
            await asyncio.sleep(0.5)
            sample = await scrape(rig.health_port)
            depths.append(gauge(sample, "edgegw_queue_depth"))
            inflight.append(gauge(sample, "edgegw_inflight_messages"))
        counting.clear()
        elapsed = time.monotonic() - started
        cpu = (cpu_seconds(daemon.pid) - cpu0) / elapsed
        body = await scrape(rig.health_port)
    finally:
        await stop_run(daemon, consumer, wait=60)
        log.close()
        await rig.stop()
        shutil.rmtree(rig.work, ignore_errors=True)
    ticks = per_device(body, "edgegw_device_ticks_total")
    polls = per_device(body, "edgegw_device_polls_total")
    skipped = per_device(body, "edgegw_device_skipped_ticks_total")
    backoff = per_device(body, "edgegw_device_backoff_ticks_total")
    rates = [delivered.get(f"dev{i:03d}", 0) / elapsed for i in range(args.devices)]
    latencies.sort()
    return {
        "devices": args.devices,
        "interval_s": args.interval,
        "points_per_s": round(sum(rates) * args.points),
        "daemon_cpu_share_of_one_core": round(cpu, 3),
        "per_device_messages_per_s_min_median_max": [
            round(min(rates), 2),
            round(statistics.median(rates), 2),
            round(max(rates), 2),
        ],
        "per_device_min_over_max": round(min(rates) / max(rates), 3) if max(rates) else None,
        "latency_ms_p50_p99": [
            round(latencies[len(latencies) // 2], 1),
            round(latencies[int(len(latencies) * 0.99)], 1),
        ]
        if latencies
        else None,
        "queue_depth_max": max(depths, default=0.0),
        "inflight_median": statistics.median(inflight) if inflight else None,
        "poll_duration_ms_mean": round(
            1000
            * sum(per_device(body, "edgegw_device_poll_duration_seconds_sum").values())
            / max(1.0, sum(polls.values())),
            2,
        ),
        "retained_before_first_data": retained_before_data[0],
        "ticks": sum(ticks.values()),
        "polls": sum(polls.values()),
        "skipped_by_reason": {
            reason: sum(per_device(body, "edgegw_device_skipped_ticks_total", reason).values())
            for reason in ("busy", "late", "backpressure")
        },
        "backoff_ticks": sum(backoff.values()),
        "devices_whose_ticks_do_not_balance": [
            d for d in ticks if ticks[d] != polls.get(d, 0) + skipped.get(d, 0) + backoff.get(d, 0)
        ],
        "dropped": gauge(body, "edgegw_messages_dropped_total"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--interval", type=float, default=0.01)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds after the first data message")
    ap.add_argument("--profile", default="", help="run the daemon under cProfile, stats to this file")
    print(json.dumps(asyncio.run(run(ap.parse_args())), indent=2))


if __name__ == "__main__":
    main()
