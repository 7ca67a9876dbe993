"""End to end: one Modbus device reachable through two endpoints fails over and fails back.

One twin, two loopback proxies in front of it (the two LAN ports of one gateway); the test takes
the preferred one down and brings it back while `edgegw run` polls and a subscriber counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.config import ModbusPoint
from drivers.modbus.twin import ModbusTwin
from tests.harness import Collector, Daemon, Mosquitto, TcpProxy, free_port, running

pytestmark = pytest.mark.slow

INTERVAL = 0.25
FAILBACK = 2.0
POINTS = [
    {"id": "mains.frequency", "address": 2, "type": "uint16", "scale": 0.01, "quantity": "frequency", "unit": "Hz"}
]


class Port(TcpProxy):
    """A proxy that can go away entirely (connections refused) and come back on the same port."""

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.cut()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)


@contextlib.asynccontextmanager
async def two_ports(target: int) -> AsyncIterator[tuple[Port, Port]]:
    a, b = Port(target), Port(target)
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()


@pytest.fixture
async def twin() -> AsyncIterator[ModbusTwin]:
    async with ModbusTwin([ModbusPoint.model_validate(p) for p in POINTS], units=[1], port=0) as t:
        t.set_value("mains.frequency", 50.01, 1)
        yield t


def config(tmp: Path, broker: Mosquitto, a: int, b: int, health: int) -> Path:
    points = "\n".join(f"      - {json.dumps(p)}" for p in POINTS)
    path = tmp / "site.yaml"
    path.write_text(
        f"site: lab\nmqtt: {{url: '{broker.url}', client_id: gw-paths}}\nstate_dir: {tmp / 'state'}\n"
        f"health: {{listen: '127.0.0.1:{health}'}}\n"
        "devices:\n"
        "  - id: pdu-1\n    driver: modbus\n"
        f"    tcp: [{{host: 127.0.0.1, port: {a}}}, {{host: 127.0.0.1, port: {b}}}]\n"
        f"    failover: {{after_timeouts: 2, failback_after: {FAILBACK}s, probe_interval: 200ms}}\n"
        f"    interval: {INTERVAL}s\n    timeout: 300ms\n    offline_after: 3\n    max_backoff: 1s\n"
        f"    points:\n{points}\n",
        encoding="utf-8",
    )
    return path


# The daemon on a config, stopped at the end (tests/harness.py).
daemon = running


def statuses(collector: Collector) -> list[dict[str, Any]]:
    return [m.json() for m in collector.on("/pdu-1/status")]


def good_polls(collector: Collector, since_ms: int, until_ms: int) -> int:
    return sum(
        1
        for m in collector.data("pdu-1")
        if since_ms <= m["ts"] < until_ms and all(r["quality"] == "good" for r in m["readings"])
    )


def log_events(d: Daemon, event: str) -> list[dict[str, Any]]:
    out = []
    for line in d.output().splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict) and rec.get("event") == event:
                out.append(rec)
    return out


async def metrics(port: int) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    return await asyncio.to_thread(get)


async def test_a_cut_path_fails_over_and_fails_back_without_losing_polls(
    tmp_path: Path, broker: Mosquitto, collector: Collector, twin: ModbusTwin
) -> None:
    health = free_port()
    async with two_ports(twin.port) as (a, b), daemon(config(tmp_path, broker, a.port, b.port, health), tmp_path) as d:
        pa, pb = f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"
        await collector.wait_for(
            lambda: any(s.get("path") == pa and s["state"] == "online" for s in statuses(collector)),
            what="the device online on the preferred path",
        )
        await collector.wait_for(lambda: len(collector.data("pdu-1")) >= 4, what="a few polls")
        start_ms = int(time.time() * 1000)

        await a.down()
        cut = time.monotonic()
        await collector.wait_for(
            lambda: statuses(collector)[-1].get("path") == pb, timeout=10, what="the status naming the second path"
        )
        assert time.monotonic() - cut < 3 * INTERVAL + 1.0
        assert statuses(collector)[-1]["state"] == "online"
        await collector.wait_for(lambda: good_polls(collector, int(time.time() * 1000) - 10_000, 2**62) > 0)
        await asyncio.sleep(1.0)  # some polls on the second path before the first comes back

        await a.up()
        restored = time.monotonic()
        await collector.wait_for(
            lambda: statuses(collector)[-1].get("path") == pa, timeout=15, what="the status back on the first path"
        )
        # Back only once the preferred path was reachable for the failback time, give or take a probe.
        assert time.monotonic() - restored >= FAILBACK - 0.3
        await asyncio.sleep(1.0)  # and polls go on there
        end_ms = int(time.time() * 1000)

        expected = (end_ms - start_ms) / 1000 / INTERVAL
        delivered = good_polls(collector, start_ms, end_ms)
        assert delivered >= 0.9 * expected, (delivered, expected)

        over = log_events(d, "path failover")
        back = log_events(d, "path failback")
        assert len(over) == 1 and (over[0]["path_from"], over[0]["path_to"]) == (pa, pb), over
        assert "cannot connect" in over[0]["reason"] and over[0]["level"] == "warning"
        assert len(back) == 1 and (back[0]["path_from"], back[0]["path_to"]) == (pb, pa) and back[0]["level"] == "info"
        text = await metrics(health)
        assert f'edgegw_bus_path_switches_total{{bus="modbus-tcp:{pa},{pb}",direction="failover"}} 1.0' in text
        assert f'edgegw_bus_path_info{{bus="modbus-tcp:{pa},{pb}",path="{pa}",preferred="true"}} 1.0' in text
        # Every status while it ran named a path; the retained one names the preferred.
        assert all("path" in s for s in statuses(collector))


async def test_a_half_open_path_fails_over_on_timeouts(
    tmp_path: Path, broker: Mosquitto, collector: Collector, twin: ModbusTwin
) -> None:
    """The preferred path accepts connections but carries nothing: timeouts, not a refusal, move the bus."""
    async with (
        two_ports(twin.port) as (a, b),
        daemon(config(tmp_path, broker, a.port, b.port, free_port()), tmp_path) as d,
    ):
        pa, pb = f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"
        await collector.wait_for(
            lambda: any(s.get("path") == pa and s["state"] == "online" for s in statuses(collector)),
            what="the device online on the preferred path",
        )
        a.stall()
        await collector.wait_for(
            lambda: statuses(collector)[-1].get("path") == pb, timeout=10, what="the status naming the second path"
        )
        over = log_events(d, "path failover")
        assert over and "timeouts in a row" in over[0]["reason"], over
        a.resume()
        await collector.wait_for(
            lambda: statuses(collector)[-1].get("path") == pa, timeout=15, what="the status back on the first path"
        )
        await collector.wait_for(
            lambda: (
                statuses(collector)[-1]["state"] == "online"
                and good_polls(collector, int(time.time() * 1000) - 500, 2**62)
            ),
            what="polls on the first path",
        )


async def test_a_dlms_meter_behind_two_wrapper_endpoints_fails_over_and_back(
    tmp_path: Path, broker: Mosquitto, collector: Collector
) -> None:
    from drivers.dlms.twin import DlmsTwin

    async with DlmsTwin("sensemi-sed302", transport="wrapper") as twin, two_ports(twin.port) as (a, b):
        pa, pb = f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"
        dev = twin.device_config()
        dev.update(
            id="sed-1",
            tcp=[{"host": "127.0.0.1", "port": a.port}, {"host": "127.0.0.1", "port": b.port}],
            failover={"failback_after": "2s", "probe_interval": "200ms"},
            interval="500ms",
            timeout="500ms",
            backfill="0s",
        )
        cfg = tmp_path / "site.yaml"
        cfg.write_text(
            f"site: lab\nmqtt: {{url: '{broker.url}'}}\nstate_dir: {tmp_path / 'state'}\n"
            f"devices:\n  - {json.dumps(dev)}\n",
            encoding="utf-8",
        )

        def status() -> dict[str, Any]:
            last: dict[str, Any] = collector.on("/sed-1/status")[-1].json()
            return last

        def fresh_good() -> bool:
            now = int(time.time() * 1000)
            msgs = [m for m in collector.data("sed-1") if m["ts"] > now - 1500]
            return any(all(r["quality"] == "good" for r in m["readings"]) for m in msgs)

        async with daemon(cfg, tmp_path) as d:
            await collector.wait_for(
                lambda: collector.on("/sed-1/status") and status().get("path") == pa and status()["state"] == "online",
                what="the meter online on the preferred path",
            )
            await a.down()
            await collector.wait_for(lambda: status().get("path") == pb, timeout=10, what="the second path")
            await collector.wait_for(fresh_good, what="readings through the second path")
            await a.up()
            restored = time.monotonic()
            await collector.wait_for(lambda: status().get("path") == pa, timeout=15, what="back on the first path")
            assert time.monotonic() - restored >= 2.0 - 0.3
            await collector.wait_for(fresh_good, what="readings through the first path again")
            assert [e["path_to"] for e in log_events(d, "path failover")] == [pb]
            assert [e["path_to"] for e in log_events(d, "path failback")] == [pa]
