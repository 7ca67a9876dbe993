"""A broker outage at 10k points/s: the daemon's CPU while it buffers, then live latency while it drains.

Twins, mosquitto and the daemon as in modbus_load.py, with a disk buffer. After a warm-up the
broker is stopped for ``--outage`` seconds (the daemon's CPU over that window is the cost of
buffering: run once with ``--compression none`` and once with ``zstd`` back to back), then
started again; the consumer reconnects and reports the poll-to-consumer latency of the *live*
messages (polled once the daemon is connected again) while the backlog drains at ``--drain-rate``, and how long
the backlog took to drain.

    python bench/buffer_drain.py --compression zstd --outage 60 --drain-rate 1000
    python bench/buffer_drain.py --compression none --outage 60 --drain-rate 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time

import aiomqtt
from common import metrics, start_rig, stop_run
from modbus_load import cpu_seconds, rss_kib


async def run(args: argparse.Namespace) -> dict[str, object]:
    rig = await start_rig("edgegw-drain-", args.devices, args.points)
    work, broker, health_port = rig.work, rig.broker, rig.health_port
    config_text = (
        f"site: bench\nmqtt: {{url: '{broker.url}', max_inflight: 200, reconnect_max: 1s}}\n"
        f"health: {{listen: '127.0.0.1:{health_port}'}}\nlog: {{level: warning, format: json}}\n"
        f"state_dir: {work / 'state'}\n"
        f"buffer: {{path: {work / 'buffer'}, compression: {args.compression}, drain_rate: {args.drain_rate}}}\n"
        f"devices:\n{rig.devices(args.interval, '1s')}"
    )
    live_after = [float("inf")]  # epoch ms: messages polled after this are live
    live: list[float] = []
    before: list[float] = []  # the same latency before the outage: the baseline on this machine now
    measuring_before = [False]
    backlog_seen = [0]

    async def consume() -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", broker.port, identifier="bench-drain", max_queued_incoming_messages=0
                ) as client:
                    await client.subscribe("edgegw/bench/+/data", qos=1)
                    async for msg in client.messages:
                        payload = bytes(msg.payload)
                        start = payload.index(b'"ts":') + 5
                        ts = int(payload[start : payload.index(b",", start)])
                        if measuring_before[0]:
                            before.append(time.time() * 1000 - ts)
                        elif ts >= live_after[0]:
                            live.append(time.time() * 1000 - ts)
                        else:
                            backlog_seen[0] += 1
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    daemon = rig.start_daemon(config_text)
    consumer = asyncio.create_task(consume())
    try:
        await asyncio.sleep(args.warmup)
        measuring_before[0] = True
        await asyncio.sleep(args.baseline)
        measuring_before[0] = False
        await broker.stop()
        c0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        await asyncio.sleep(args.outage)
        c1, t1 = cpu_seconds(daemon.pid), time.monotonic()
        m_full = await metrics(health_port)
        await broker.start()
        t_back = time.monotonic()
        # Live: polled once the daemon is connected again (before that, a poll goes to the buffer).
        while True:
            if (await metrics(health_port)).get("edgegw_broker_connected", 0) == 1:
                break
            await asyncio.sleep(0.05)
        live_after[0] = time.time() * 1000 + 100
        rates: list[tuple[float, float, float]] = []
        while True:
            await asyncio.sleep(2)
            m = await metrics(health_port)
            rates.append(
                (
                    round(time.monotonic() - t_back, 1),
                    m.get("edgegw_buffer_drain_rate", 0.0),
                    m.get("edgegw_buffer_time_to_empty_seconds", 0.0),
                )
            )
            if m.get("edgegw_buffer_messages", 1) == 0:
                break
            if time.monotonic() - t_back > args.max_drain:
                break
        drain_s = time.monotonic() - t_back
        m_end = await metrics(health_port)
        rss_peak = rss_kib(daemon.pid, "VmHWM")
    finally:
        await stop_run(daemon, consumer)
        await rig.stop()
    live.sort()
    before.sort()

    def pct(q: float, values: list[float] = live) -> float:
        return round(values[min(len(values) - 1, int(len(values) * q))], 1) if values else float("nan")

    buffered = m_full.get("edgegw_buffer_messages", 0)
    result: dict[str, object] = {
        "devices": args.devices,
        "points_per_device": args.points,
        "compression": args.compression,
        "outage_s": args.outage,
        "daemon_cpu_during_outage": round((c1 - c0) / (t1 - t0), 4),
        "buffered_messages": int(buffered),
        "buffer_bytes": int(m_full.get("edgegw_buffer_bytes", 0)),
        "bytes_per_message": round(m_full.get("edgegw_buffer_bytes", 0) / buffered, 1) if buffered else None,
        "drain_rate_limit": args.drain_rate,
        "drain_s": round(drain_s, 1),
        "drained_messages_per_s": round(buffered / drain_s, 1) if drain_s else None,
        "metrics_during_drain (t, rate, time_to_empty)": rates[: len(rates) : max(1, len(rates) // 6)],
        "latency_before_outage_ms_p50": pct(0.5, before),
        "latency_before_outage_ms_p99": pct(0.99, before),
        "live_messages_during_drain": len(live),
        "live_latency_ms_p50": pct(0.5),
        "live_latency_ms_p99": pct(0.99),
        "live_latency_ms_max": pct(1.0),
        "dropped": int(m_end.get("edgegw_messages_dropped_total", 0)),
        "daemon_peak_rss_mib": round(rss_peak / 1024, 1),
    }
    shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--baseline", type=float, default=20.0, help="seconds of latency measured before the outage")
    ap.add_argument("--outage", type=float, default=60.0)
    ap.add_argument("--compression", choices=["zstd", "none"], default="zstd")
    ap.add_argument("--drain-rate", type=float, default=1000.0)
    ap.add_argument("--max-drain", type=float, default=600.0, help="give up waiting for the drain after this long")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
