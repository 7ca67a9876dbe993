"""Bandwidth saved by report by exception on the demo fleet (docs/performance.md).

Runs the twins of `edgegw demo` (every registered kind; their values move as their `sim` hints
say), a private mosquitto and the gateway in this process, twice for `--duration` seconds: as the
demo is (every reading of every poll), and with a deadband per quantity and a `max_age` on every
point. A subscriber counts the data messages, their bytes and their readings.

    python bench/rbe_demo.py --duration 180 --warmup 15 --max-age 60s

The first `--warmup` seconds of each run are not counted: the devices come online, and the first
poll of each publishes every point (as after every restart).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.config import load_config_text  # noqa: E402
from gateway.demo import _start_twins, demo_config  # noqa: E402
from gateway.localbroker import LocalBroker  # noqa: E402

#: A deadband per quantity, as a site would set them: about the resolution a consumer acts on.
DEADBANDS: dict[str, float | str] = {
    "voltage": 1.0,  # V
    "current": 0.1,  # A
    "leakage_current": 0.001,  # A
    "frequency": 0.02,  # Hz
    "power_factor": 0.01,
    "active_power": "1%",
    "reactive_power": "1%",
    "apparent_power": "1%",
    "active_power_demand": "1%",
    "current_demand": "1%",
    "temperature": 0.5,  # degC
    "humidity": 1.0,  # %
    "thd_voltage": 0.5,  # %
    "thd_current": 1.0,  # %
    "unbalance_voltage": 0.5,  # %
    "unbalance_current": 1.0,  # %
    "state_of_charge": 1.0,  # %
    "state_of_health": 1.0,  # %
    "internal_resistance": "2%",
}


@dataclass
class Count:
    messages: int = 0
    payload: int = 0
    wire: int = 0  # MQTT PUBLISH packets as sent (header, topic, packet id, payload)
    readings: int = 0
    empty: int = 0
    failed: int = 0  # messages of a failed poll (every reading bad): published whole either way
    by_quantity: dict[str, int] = field(default_factory=dict)  # good readings per quantity


def with_rbe(cfg: dict[str, Any], max_age: str) -> tuple[dict[str, Any], dict[str, int]]:
    """The demo config with every point's rule inline (over its profile point, by id), and how many of each."""
    loaded = load_config_text(json.dumps(cfg), "<demo>")
    out = json.loads(json.dumps(cfg))
    tally = {"deadband": 0, "on change": 0}
    for dev, loaded_dev in zip(out["devices"], loaded.devices, strict=True):
        overrides = []
        for p in (*loaded_dev.resolved_points, *loaded_dev.calculated_points):
            if not p.publish:
                continue
            rule: dict[str, Any] = {"id": p.id, "max_age": max_age}
            if p.numeric_gauge() and p.quantity in DEADBANDS:
                rule["deadband"] = DEADBANDS[p.quantity]
                tally["deadband"] += 1
            else:
                tally["on change"] += 1
            overrides.append(rule)
        dev["points"] = [*dev.get("points", []), *overrides]
    return out, tally


def publish_size(topic: str, payload: int) -> int:
    remaining = 2 + len(topic.encode()) + 2 + payload
    header = 1 + (1 if remaining < 128 else 2 if remaining < 16384 else 3)
    return header + remaining


async def measure(cfg_dict: dict[str, Any], port: int, duration: float, warmup: float) -> Count:
    from gateway.app import Gateway

    cfg = load_config_text(json.dumps(cfg_dict), "<bench>")
    quantity = {(d.id, p.id): p.quantity for d in cfg.devices for p in (*d.resolved_points, *d.calculated_points)}
    count = Count()
    ready = asyncio.Event()
    counting = [False]

    async def listen() -> None:
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"rbe-bench-{time.time_ns()}") as client:
            await client.subscribe("edgegw/demo/+/data", qos=1)
            ready.set()
            async for msg in client.messages:
                if not counting[0]:
                    continue
                payload = bytes(msg.payload)
                body = json.loads(payload)
                count.messages += 1
                count.payload += len(payload)
                count.wire += publish_size(str(msg.topic), len(payload))
                count.readings += len(body["readings"])
                count.empty += not body["readings"]
                count.failed += bool(body["readings"]) and all(r["quality"] == "bad" for r in body["readings"])
                for r in body["readings"]:
                    if r["quality"] == "good":
                        q = quantity.get((body["device"], r["point"]), "?")
                        count.by_quantity[q] = count.by_quantity.get(q, 0) + 1

    viewer = asyncio.create_task(listen())
    await asyncio.wait_for(ready.wait(), 10)
    gateway = Gateway(cfg)
    await gateway.start()
    try:
        # The first poll of each device publishes every point (as after any restart): a one-off, left out.
        await asyncio.sleep(warmup)
        counting[0] = True
        await asyncio.sleep(duration)
        counting[0] = False
    finally:
        await gateway.stop(drain_timeout=5.0)
        viewer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await viewer
    return count


async def main(duration: float, warmup: float, max_age: str) -> None:
    with tempfile.TemporaryDirectory(prefix="edgegw-rbe-bench-") as tmp:
        work = Path(tmp)
        async with contextlib.AsyncExitStack() as stack:
            broker = await stack.enter_async_context(LocalBroker(work))
            twins = await _start_twins(stack)
            base = {**demo_config(broker.url, work / "state", twins), "log": {"level": "warning"}}
            rbe, tally = with_rbe(base, max_age)
            print(f"demo fleet: {len(twins)} devices; RBE: {tally['deadband']} points with a deadband, "
                  f"{tally['on change']} on change; max_age {max_age} on all; {duration:g} s counted per run "
                  f"after {warmup:g} s")  # fmt: skip
            results = {}
            for name, cfg in (("every poll", base), ("report by exception", rbe)):
                results[name] = await measure(cfg, broker.port, duration, warmup)
    every = results["every poll"]
    head = f"{'run':<20} {'messages':>9} {'empty':>6} {'failed':>6} {'readings':>9} {'payload bytes':>14}"
    print(f"\n{head} {'MQTT bytes':>11}")
    for name, c in results.items():
        print(f"{name:<20} {c.messages:>9} {c.empty:>6} {c.failed:>6} {c.readings:>9} {c.payload:>14} {c.wire:>11}")
    c = results["report by exception"]
    print("\ngood readings per quantity (the ten most frequent without RBE): every poll -> RBE")
    for q, n in sorted(every.by_quantity.items(), key=lambda kv: -kv[1])[:10]:
        print(f"   {q:<24} {n:>7} -> {c.by_quantity.get(q, 0):>7}  deadband {DEADBANDS.get(q, 'on change')}")
    if every.readings and every.wire:
        print(f"\nreadings -{100 * (1 - c.readings / every.readings):.1f} %, "
              f"MQTT bytes -{100 * (1 - c.wire / every.wire):.1f} %")  # fmt: skip


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=120.0, help="seconds per run")
    ap.add_argument("--warmup", type=float, default=15.0, help="seconds before counting (devices come online)")
    ap.add_argument("--max-age", default="60s", help="max_age of every point in the RBE run")
    args = ap.parse_args()
    asyncio.run(main(args.duration, args.warmup, args.max_age))
