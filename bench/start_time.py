"""Start-up benchmark: from `edgegw run` to the first data message at a consumer (issue 13).

The rig of `modbus_load.py` (N Modbus TCP twins of P float32 points in their own process,
mosquitto, a subscriber in this process). Each run starts the daemon as a process and reports,
from the moment it was spawned: when the gateway's retained `online` status arrived (the daemon
has connected to the broker), when the first data message arrived, and when every device had
delivered one; and the daemon's CPU time (user + system, from /proc) at the first two, which
depends much less than the wall clock on what else the machine runs. Several runs in a row
(`--runs`) share the rig.

    python bench/start_time.py --devices 100 --points 100 --interval 1 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import time

import aiomqtt
from common import start_rig, stop_run
from modbus_load import cpu_seconds


async def one_run(rig: object, args: argparse.Namespace, run: int) -> dict[str, float | None]:
    from common import Rig

    assert isinstance(rig, Rig)
    site = f"start{run}"
    config_text = (
        f"site: {site}\nmqtt: {{url: 'mqtt://127.0.0.1:{rig.broker.port}', max_inflight: 200}}\n"
        f"health: {{listen: '127.0.0.1:{rig.health_port}'}}\nlog: {{level: warning, format: json}}\n"
        + f"devices:\n{rig.devices(args.interval, '1s', inline=args.inline)}"
    )
    marks: dict[str, float | None] = {
        "online": None,
        "first_data": None,
        "all_devices": None,
        "online_cpu": None,
        "first_data_cpu": None,
        "all_devices_cpu": None,
    }
    seen: set[str] = set()
    done = asyncio.Event()
    spawned = [0.0]

    async def consume(ready: asyncio.Event) -> None:
        async with aiomqtt.Client(
            "127.0.0.1", rig.broker.port, identifier=f"start-consumer-{run}", max_queued_incoming_messages=0
        ) as client:
            await client.subscribe(f"edgegw/{site}/+/data", qos=1)
            await client.subscribe(f"edgegw/{site}/gateway/status", qos=1)
            ready.set()
            async for msg in client.messages:
                now = time.monotonic() - spawned[0]
                topic = str(msg.topic)
                if topic.endswith("/status"):
                    if marks["online"] is None and b'"online"' in bytes(msg.payload) and spawned[0]:
                        marks["online"] = now
                        marks["online_cpu"] = cpu_seconds(daemon.pid)
                    continue
                if marks["first_data"] is None:
                    marks["first_data"] = now
                    marks["first_data_cpu"] = cpu_seconds(daemon.pid)
                seen.add(topic)
                if len(seen) == args.devices and marks["all_devices"] is None:
                    marks["all_devices"] = now
                    marks["all_devices_cpu"] = cpu_seconds(daemon.pid)
                    done.set()

    ready = asyncio.Event()
    consumer = asyncio.create_task(consume(ready))
    await asyncio.wait_for(ready.wait(), 10)
    spawned[0] = time.monotonic()
    daemon = rig.start_daemon(config_text)
    await asyncio.sleep(0)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), args.timeout)
    finally:
        await stop_run(daemon, consumer)
    out = {k: (round(v, 3) if v is not None else None) for k, v in marks.items()}
    online, first = marks["online"], marks["first_data"]
    out["online_to_first_data"] = round(first - online, 3) if online is not None and first is not None else None
    return out


async def run(args: argparse.Namespace) -> dict[str, object]:
    rig = await start_rig("edgegw-start-", args.devices, args.points)
    runs = []
    try:
        for i in range(args.runs):
            runs.append(await one_run(rig, args, i))
    finally:
        await rig.stop()
        shutil.rmtree(rig.work, ignore_errors=True)

    def med(key: str) -> float | None:
        values = [v for r in runs if (v := r[key]) is not None]
        return round(statistics.median(values), 3) if values else None

    return {
        "devices": args.devices,
        "points_per_device": args.points,
        "interval_s": args.interval,
        "inline_points": args.inline,
        "runs": runs,
        "median_s": {
            k: med(k)
            for k in (
                "online",
                "first_data",
                "online_to_first_data",
                "all_devices",
                "online_cpu",
                "first_data_cpu",
                "all_devices_cpu",
            )
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=60.0, help="give up on a run after this many seconds")
    ap.add_argument("--inline", action="store_true", help="every device lists its points instead of naming the profile")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
