"""`edgegw demo`: device twins, a private mosquitto and the gateway, readings shown as they arrive."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

from gateway.config import load_config_text

# The embedded default: one of each shipped Modbus device, on the twins started below.
DEMO_CONFIG = """\
site: demo
mqtt: {{url: "mqtt://127.0.0.1:{broker}", topic_prefix: edgegw, qos: 1}}
state_dir: {state}
devices:
  - {{id: bcpme-1, driver: modbus, profile: schneider-bcpme, tcp: {{host: 127.0.0.1, port: {bcpme}}}, unit: 1,
     interval: 2s, timeout: 500ms, tags: {{room: hall-a, board: PDU-A1}}}}
  - {{id: emdx3-3, driver: modbus, profile: legrand-emdx3, tcp: {{host: 127.0.0.1, port: {emdx3}}}, unit: 3,
     interval: 2s, timeout: 500ms}}
  - {{id: bmgw-1, driver: modbus, profile: robotina-bm-sm, tcp: {{host: 127.0.0.1, port: {bmgw}}},
     profile_vars: {{cells: 8}}, interval: 2s, timeout: 500ms}}
  - {{id: busway-a, driver: modbus, profile: ibgw100-ibsm, tcp: {{host: 127.0.0.1, port: {ibgw}}},
     profile_vars: {{meters: 4}}, interval: 2s, timeout: 500ms}}
"""

SHOW = {
    "bcpme-1": ["panel1.mains.frequency", "panel1.mains.voltage_an", "panel1.ch1.current", "panel1.ch1.power"],
    "emdx3-3": ["voltage_l1n", "current_l1", "frequency"],
    "bmgw-1": ["string1.voltage", "string1.current", "string1.soc"],
    "busway-a": ["meter1.temperature", "meter1.cb1.voltage_l1n", "meter1.cb1.current_l1"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _mosquitto(workdir: Path, port: int) -> asyncio.subprocess.Process:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n", encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        binary, "-c", str(conf), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    for _ in range(200):
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return proc
        await asyncio.sleep(0.025)
    proc.kill()
    raise RuntimeError("mosquitto did not start (is it installed? `make demo` installs it)")


def _fmt(reading: dict[str, Any] | None) -> str:
    if reading is None:
        return "-"
    if reading["quality"] != "good":
        return str(reading["quality"])
    value = reading["value"]
    text = f"{value:.2f}" if isinstance(value, float) else str(value)
    return f"{text} {reading['unit']}".strip()


async def demo(duration: float, devices: int) -> int:
    from drivers.modbus.simulator import ModbusTwin
    from gateway.app import Gateway

    with tempfile.TemporaryDirectory(prefix="edgegw-demo-") as tmp:
        work = Path(tmp)
        broker_port = _free_port()
        broker = await _mosquitto(work, broker_port)
        twins = {
            "bcpme": ModbusTwin.from_profile("schneider-bcpme", units=[1], port=0),
            "emdx3": ModbusTwin.from_profile("legrand-emdx3", units=[3], port=0),
            "bmgw": ModbusTwin.from_profile("robotina-bm-sm", profile_vars={"cells": 8}, port=0),
            "ibgw": ModbusTwin.from_profile("ibgw100-ibsm", profile_vars={"meters": 4}, port=0),
        }
        wanted = list(twins)[: max(1, devices)] if devices < len(twins) else list(twins)
        for twin in twins.values():
            await twin.start()
        text = DEMO_CONFIG.format(broker=broker_port, state=work / "state", **{k: t.port for k, t in twins.items()})
        cfg = load_config_text(text, "<demo>")
        keep = {"bcpme": "bcpme-1", "emdx3": "emdx3-3", "bmgw": "bmgw-1", "ibgw": "busway-a"}
        cfg = cfg.model_copy(update={"devices": [d for d in cfg.devices if d.id in {keep[w] for w in wanted}]})
        print(f"broker 127.0.0.1:{broker_port}; twins: " + ", ".join(f"{k} :{t.port}" for k, t in twins.items()))
        print("topics: edgegw/demo/<device>/data | meta | status   (Ctrl-C to stop)\n")

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
                print(
                    f"-- {elapsed:5.1f}s  {counts['messages']} messages, {counts['readings']} readings "
                    f"({counts['good']} good)"
                )
                for dev, points in SHOW.items():
                    if dev in latest:
                        shown = "  ".join(f"{p.split('.')[-1]}={_fmt(latest[dev].get(p))}" for p in points)
                        print(f"   {dev:<9} {len(latest[dev]):>4} points  {shown}")
        except (KeyboardInterrupt, asyncio.CancelledError):
            pass
        finally:
            await gateway.stop(drain_timeout=5.0)
            viewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await viewer
            for twin in twins.values():
                await twin.stop()
            broker.terminate()
            await broker.wait()
        if latencies:
            latencies.sort()
            p99 = latencies[int(len(latencies) * 0.99) - 1 if len(latencies) > 1 else 0]
            print(
                f"\n{counts['readings']} readings in {counts['messages']} messages; "
                f"poll-to-consumer latency p50 {latencies[len(latencies) // 2]:.1f} ms, p99 {p99:.1f} ms"
            )
        ok = counts["good"] > 0
        print("demo ok" if ok else "demo: no good readings arrived")
        return 0 if ok else 1
