"""`edgegw demo`: device twins of all four protocols, a private mosquitto and the gateway, readings shown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

from gateway.config import GatewayConfig, load_config_text
from gateway.localbroker import LocalBroker

# The embedded default: the shipped Modbus devices, a BCPME over BACnet and over SNMP, and a
# DLMS/COSEM meter, each on a twin started below.
DEMO_CONFIG = """\
site: demo
mqtt: {{url: "mqtt://127.0.0.1:{broker}", topic_prefix: edgegw, qos: 1}}
state_dir: {state}
bacnet: {{local_address: "127.0.0.1/24:{bacnet_local}", device_instance: 4194001}}
devices:
  - {{id: bcpme-1, driver: modbus, profile: schneider-bcpme, tcp: {{host: 127.0.0.1, port: {bcpme}}}, unit: 1,
     interval: 2s, timeout: 500ms, tags: {{room: hall-a, board: PDU-A1}}}}
  - {{id: emdx3-3, driver: modbus, profile: legrand-emdx3, tcp: {{host: 127.0.0.1, port: {emdx3}}}, unit: 3,
     interval: 2s, timeout: 500ms}}
  - {{id: bmgw-1, driver: modbus, profile: robotina-bm-sm, tcp: {{host: 127.0.0.1, port: {bmgw}}},
     profile_vars: {{cells: 8}}, interval: 2s, timeout: 500ms}}
  - {{id: busway-a, driver: modbus, profile: ibgw100-ibsm, tcp: {{host: 127.0.0.1, port: {ibgw}}},
     profile_vars: {{meters: 4}}, interval: 2s, timeout: 500ms}}
  - {{id: bcpme-2-bacnet, driver: bacnet, profile: schneider-bcpme-bacnet, address: "127.0.0.1:{bacnet}",
     network: 50, mac: 1, device_instance: 50001, interval: 2s, timeout: 1s}}
  - {{id: bcpme-3-snmp, driver: snmp, profile: schneider-bcpme-snmp, profile_vars: {{panels: 1}}, host: 127.0.0.1,
     port: {snmp}, version: 2c, community_env: EDGEGW_DEMO_COMMUNITY, interval: 2s, timeout: 1s}}
  - {{id: sed302-17, driver: dlms, profile: sensemi-sed302, tcp: {{host: 127.0.0.1, port: {dlms}}},
     transport: wrapper, interval: 2s, timeout: 1s, backfill: 6h}}
"""

SHOW = {
    "bcpme-1": ["panel1.mains.frequency", "panel1.mains.voltage_an", "panel1.ch1.current", "panel1.ch1.power"],
    "emdx3-3": ["voltage_l1n", "current_l1", "frequency"],
    "bmgw-1": ["string1.voltage", "string1.current", "string1.soc"],
    "busway-a": ["meter1.temperature", "meter1.cb1.voltage_l1n", "meter1.cb1.current_l1"],
    "bcpme-2-bacnet": ["panel1.mains.frequency", "panel1.mains.voltage_an", "panel1.ch1.current"],
    "bcpme-3-snmp": ["panel1.mains.frequency", "panel1.ch1.current"],
    "sed302-17": ["voltage.l1", "energy.active_import", "power.active_import"],
}


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fmt(reading: dict[str, Any] | None) -> str:
    if reading is None:
        return "-"
    if reading["quality"] != "good":
        return str(reading["quality"])
    value = reading["value"]
    text = f"{value:.2f}" if isinstance(value, float) else str(value)
    return f"{text} {reading['unit']}".strip()


async def demo(duration: float) -> int:
    """Run every twin, the broker and the gateway for `duration` seconds (0: until Ctrl-C)."""
    from drivers.bacnet.simulator import BacnetTwin
    from drivers.dlms.simulator import DlmsTwin
    from drivers.modbus.simulator import ModbusTwin
    from drivers.snmp.simulator import SnmpTwin

    os.environ.setdefault("EDGEGW_DEMO_COMMUNITY", "public")
    with tempfile.TemporaryDirectory(prefix="edgegw-demo-") as tmp:
        work = Path(tmp)
        async with contextlib.AsyncExitStack() as stack:
            broker = await stack.enter_async_context(LocalBroker(work))
            modbus = {
                "bcpme": ModbusTwin.from_profile("schneider-bcpme", units=[1], port=0),
                "emdx3": ModbusTwin.from_profile("legrand-emdx3", units=[3], port=0),
                "bmgw": ModbusTwin.from_profile("robotina-bm-sm", profile_vars={"cells": 8}, port=0),
                "ibgw": ModbusTwin.from_profile("ibgw100-ibsm", profile_vars={"meters": 4}, port=0),
            }
            ports = {name: (await stack.enter_async_context(twin)).port for name, twin in modbus.items()}
            bacnet = await stack.enter_async_context(BacnetTwin(port=_free_udp_port(), panels=1))
            snmp = await stack.enter_async_context(SnmpTwin("schneider-bcpme-snmp", port=0, profile_vars={"panels": 1}))
            dlms = await stack.enter_async_context(DlmsTwin("sensemi-sed302", transport="wrapper", port=0))
            text = DEMO_CONFIG.format(
                broker=broker.port,
                state=work / "state",
                bacnet=bacnet.port,
                bacnet_local=_free_udp_port(),
                snmp=snmp.port,
                dlms=dlms.port,
                **ports,
            )
            cfg = load_config_text(text, "<demo>")
            twins = ", ".join(f"{k} :{p}" for k, p in ports.items())
            print(f"broker {broker.url}; twins: Modbus TCP {twins}; BACnet/IP :{bacnet.port}; "
                  f"SNMP :{snmp.port}; DLMS wrapper :{dlms.port}")  # fmt: skip
            print("topics: edgegw/demo/<device>/data | meta | status   (Ctrl-C to stop)\n")
            return await _watch(cfg, broker.port, duration)
    return 1


async def _watch(cfg: GatewayConfig, broker_port: int, duration: float) -> int:
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
            for dev, points in SHOW.items():
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
    ok = counts["good"] > 0 and len(latest) == len(SHOW)
    print("demo ok" if ok else f"demo: readings from {len(latest)} of {len(SHOW)} devices")
    return 0 if ok else 1
