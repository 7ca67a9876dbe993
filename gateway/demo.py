"""`edgegw demo`: a twin of every registered kind, a private mosquitto and the gateway, readings shown.

What runs comes from the registry: each kind's twin class lists its demo devices
(``Twin.demo``); the demo starts a twin per device, takes the device config and the kind's gateway
section from the twin, and shows the points the entry names. A new kind is in the demo by its
registry line alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiomqtt

from gateway.config import GatewayConfig, load_config_text
from gateway.localbroker import LocalBroker
from gateway.registry import DRIVERS
from gateway.twin import DemoDevice, Twin


def _fmt(reading: dict[str, Any] | None) -> str:
    if reading is None:
        return "-"
    if reading["quality"] != "good":
        return str(reading["quality"])
    value = reading["value"]
    text = f"{value:.2f}" if isinstance(value, float) else str(value)
    return f"{text} {reading['unit']}".strip()


async def _start_twins(stack: contextlib.AsyncExitStack) -> list[tuple[DemoDevice, Twin]]:
    """A started twin per demo device of every registered kind, stopped when `stack` closes."""
    out: list[tuple[DemoDevice, Twin]] = []
    for spec in DRIVERS.values():
        if spec.twin is None:
            continue
        cls = spec.twin_class
        for dd in cls.demo:
            twin = cls.create(dd.profile, vars=dd.vars, **dd.options)
            out.append((dd, await stack.enter_async_context(twin)))
    return out


def demo_config(broker_url: str, state_dir: Path, twins: Sequence[tuple[DemoDevice, Twin]]) -> dict[str, Any]:
    """The gateway config that polls every demo twin."""
    cfg: dict[str, Any] = {
        "site": "demo",
        "mqtt": {"url": broker_url, "topic_prefix": "edgegw", "qos": 1},
        "state_dir": str(state_dir),
    }
    devices: list[dict[str, Any]] = []
    for dd, twin in twins:
        section = twin.section_config()
        if section is not None:
            # One section per kind: the first twin's serves them all (it is the client's side).
            cfg.setdefault(twin.kind, section)
        devices.append({"id": dd.id, **twin.device_config(), **dd.config})
    cfg["devices"] = devices
    return cfg


async def demo(duration: float) -> int:
    """Run every twin, the broker and the gateway for `duration` seconds (0: until Ctrl-C)."""
    with tempfile.TemporaryDirectory(prefix="edgegw-demo-") as tmp:
        work = Path(tmp)
        async with contextlib.AsyncExitStack() as stack:
            broker = await stack.enter_async_context(LocalBroker(work))
            twins = await _start_twins(stack)
            # JSON is YAML: the demo config goes through the same loader as a file would.
            text = json.dumps(demo_config(broker.url, work / "state", twins), indent=1)
            cfg = load_config_text(text, "<demo>")
            print(f"broker {broker.url}; twins:")
            for dd, twin in twins:
                print(f"   {dd.id:<15} {twin.describe()}")
            print("topics: edgegw/demo/<device>/data | meta | status   (Ctrl-C to stop)\n")
            show = {dd.id: list(dd.show) for dd, _ in twins}
            return await _watch(cfg, broker.port, duration, show)
    return 1


async def _watch(cfg: GatewayConfig, broker_port: int, duration: float, show: dict[str, list[str]]) -> int:
    from gateway.app import Gateway

    gateway = Gateway(cfg)
    latest: dict[str, dict[str, dict[str, Any]]] = {}
    counts = {"messages": 0, "readings": 0, "good": 0}
    latencies: list[float] = []

    async def listen() -> None:
        async with aiomqtt.Client("127.0.0.1", broker_port, identifier="edgegw-demo-viewer") as client:
            await client.subscribe("edgegw/demo/+/data", qos=1)
            async for msg in client.messages:
                body = json.loads(bytes(msg.payload))
                counts["messages"] += 1
                latencies.append(time.time() * 1000 - body["ts"])
                per_dev = latest.setdefault(body["device"], {})
                for r in body["readings"]:
                    counts["readings"] += 1
                    counts["good"] += r["quality"] == "good"
                    per_dev[r["point"]] = r

    viewer = asyncio.create_task(listen())
    await gateway.start()
    started = time.monotonic()
    try:
        while duration <= 0 or time.monotonic() - started < duration:
            await asyncio.sleep(2.0)
            elapsed = time.monotonic() - started
            print(f"-- {elapsed:5.1f}s  {counts['messages']} messages, {counts['readings']} readings "
                  f"({counts['good']} good)")  # fmt: skip
            for dev, points in show.items():
                if dev in latest:
                    shown = "  ".join(f"{'.'.join(p.split('.')[-2:])}={_fmt(latest[dev].get(p))}" for p in points)
                    print(f"   {dev:<15} {len(latest[dev]):>4} points  {shown}")
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    finally:
        await gateway.stop(drain_timeout=5.0)
        viewer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await viewer
    if latencies:
        latencies.sort()
        p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
        print(f"\n{counts['readings']} readings in {counts['messages']} messages; poll-to-consumer latency "
              f"p50 {latencies[len(latencies) // 2]:.1f} ms, p99 {p99:.1f} ms")  # fmt: skip
    ok = counts["good"] > 0 and len(latest) == len(show)
    print("demo ok" if ok else f"demo: readings from {len(latest)} of {len(show)} devices")
    return 0 if ok else 1
