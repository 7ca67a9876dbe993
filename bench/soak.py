"""Soak: run the daemon under load for a long time and watch memory and task count for growth.

Twins, mosquitto and the daemon as in modbus_load.py; the broker is stopped for a while every
`--outage-every` seconds (so the disk buffer fills and drains), and one twin unit is killed and
revived now and then (so devices go offline and recover). Samples /metrics every `--sample`
seconds and reports RSS and asyncio task count at the start, the end and their growth.

    python bench/soak.py --duration 1800 --devices 50 --points 100 --interval 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time

from common import metrics, start_rig, stop_run


async def run(args: argparse.Namespace) -> dict[str, object]:
    # Every tenth device's twin is not served: it stays offline and backs off.
    rig = await start_rig("edgegw-soak-", args.devices, args.points, dead_every=10)
    work, broker, health_port = rig.work, rig.broker, rig.health_port
    daemon = rig.start_daemon(
        f"site: soak\nmqtt: {{url: '{broker.url}', reconnect_max: 2s}}\n"
        f"health: {{listen: '127.0.0.1:{health_port}'}}\nlog: {{level: warning, format: json}}\n"
        f"state_dir: {work / 'state'}\nbuffer: {{path: {work / 'buffer'}, max_size: 256MiB}}\n"
        f"devices:\n{rig.devices(args.interval, '500ms')}"
    )
    samples: list[dict[str, float]] = []
    started = time.monotonic()
    next_outage = started + args.outage_every
    try:
        await asyncio.sleep(args.warmup)
        while time.monotonic() - started < args.duration:
            m = await metrics(health_port)
            m["t"] = round(time.monotonic() - started, 1)
            samples.append(m)
            print(
                json.dumps(
                    {
                        k: m.get(k)
                        for k in (
                            "t",
                            "edgegw_process_resident_memory_bytes",
                            "edgegw_asyncio_tasks",
                            "edgegw_buffer_messages",
                            "edgegw_messages_published_total",
                        )
                    }
                ),
                flush=True,
            )
            if time.monotonic() >= next_outage:
                await broker.stop()
                await asyncio.sleep(args.outage)
                await broker.start()
                next_outage = time.monotonic() + args.outage_every
            await asyncio.sleep(args.sample)
    finally:
        await stop_run(daemon, None, wait=30)
        await rig.stop()
    # A broker outage makes the buffer, its index and the backlog grow once (a high-water mark
    # the allocator keeps); growth that matters is what happens after that: compare the samples
    # after the first outage has drained with the end of the run.
    settled = [r for r in samples if r["t"] > args.outage_every + args.outage + 60] or samples
    quarter = max(1, len(settled) // 4)
    head, tail = settled[:quarter], settled[-quarter:]

    def avg(rows: list[dict[str, float]], key: str) -> float:
        return sum(r.get(key, 0.0) for r in rows) / len(rows)

    rss0, rss1 = avg(head, "edgegw_process_resident_memory_bytes"), avg(tail, "edgegw_process_resident_memory_bytes")
    tasks0, tasks1 = avg(head, "edgegw_asyncio_tasks"), avg(tail, "edgegw_asyncio_tasks")
    last = samples[-1]
    result = {
        "duration_s": round(time.monotonic() - started),
        "devices": args.devices,
        "points_per_device": args.points,
        "interval_s": args.interval,
        "broker_outages": int(last.get("edgegw_broker_connects_total", 1) - 1),
        "rss_mib_at_start": round(samples[0].get("edgegw_process_resident_memory_bytes", 0) / 2**20, 1),
        "rss_mib_settled_first_quarter": round(rss0 / 2**20, 1),
        "rss_mib_settled_last_quarter": round(rss1 / 2**20, 1),
        "rss_growth_settled_mib": round((rss1 - rss0) / 2**20, 2),
        "rss_peak_mib": round(max(s.get("edgegw_process_resident_memory_bytes", 0) for s in samples) / 2**20, 1),
        "tasks_settled_first_quarter": round(tasks0, 1),
        "tasks_settled_last_quarter": round(tasks1, 1),
        "messages_published": int(last.get("edgegw_messages_published_total", 0)),
        "messages_dropped": int(last.get("edgegw_messages_dropped_total", 0)),
        "daemon_exit_code": daemon.returncode,
    }
    shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=1800)
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--sample", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=30.0)
    ap.add_argument("--outage-every", type=float, default=300.0)
    ap.add_argument("--outage", type=float, default=30.0)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
