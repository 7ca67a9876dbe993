"""A list of brokers (issue 12): the daemon moves to the next broker and keeps every delivery guarantee.

Two real mosquittos, the daemon as a process, a Modbus twin; a collector on each broker. Across a
move the union of what both collectors saw holds every `seq` of each device exactly as published
(QoS 1 may deliver one twice, never two different messages with one `seq`), and the retained
state a consumer finds on the new broker is complete.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from drivers.modbus.twin import ModbusTwin
from tests.harness import Collector, Daemon, Mosquitto, TcpProxy, free_port
from tests.test_e2e_modbus import device_yaml, twin_points
from tests.test_faults import contiguous_runs, metric, wait_metric

pytestmark = pytest.mark.slow

DEVICES = ("pdu-1", "pdu-2")


class Gate(TcpProxy):
    """A relay to a broker on a fixed port: closed, it refuses connections (a broker that is away,
    while the broker itself and its collector stay up); opened again, the same port accepts."""

    async def start(self) -> None:
        if not self.port:
            self.port = free_port()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


@pytest.fixture
async def brokers(tmp_path: Path) -> AsyncIterator[tuple[Mosquitto, Mosquitto]]:
    a, b = Mosquitto(tmp_path / "a"), Mosquitto(tmp_path / "b")
    for broker in (a, b):
        broker.workdir.mkdir()
        await broker.start()
    try:
        yield a, b
    finally:
        for broker in (a, b):
            await broker.stop()


@pytest.fixture
async def twin() -> AsyncIterator[ModbusTwin]:
    async with ModbusTwin(twin_points(), units=[1, 2], port=0, update_interval=0.1) as t:
        yield t


def write_config(tmp: Path, urls: list[str], twin: ModbusTwin, health: int, extra: str = "") -> Path:
    path = tmp / "site.yaml"
    mqtt = f"{{url: {json.dumps(urls)}, client_id: gw-brokers, reconnect_max: 1s, connect_timeout: 1s{extra}}}"
    devices = "".join(device_yaml(dev, twin.port, unit) for unit, dev in enumerate(DEVICES, 1))
    path.write_text(
        f"site: lab\nmqtt: {mqtt}\nstate_dir: {tmp / 'state'}\nhealth: {{listen: '127.0.0.1:{health}'}}\n"
        f"commands: {{enabled: true}}\n{{buffer}}devices:\n{devices}",
        encoding="utf-8",
    )
    return path


def with_buffer(path: Path, buffer: str) -> Path:
    path.write_text(path.read_text(encoding="utf-8").replace("{buffer}", f"buffer: {buffer}\n"), encoding="utf-8")
    return path


def no_buffer(path: Path) -> Path:
    path.write_text(path.read_text(encoding="utf-8").replace("{buffer}", ""), encoding="utf-8")
    return path


def data(collectors: list[Collector], device: str) -> list[dict[str, Any]]:
    return [m for c in collectors for m in c.data(device)]


def seqs(collectors: list[Collector], device: str) -> list[int]:
    return [m["seq"] for m in data(collectors, device)]


def assert_one_message_per_seq(collectors: list[Collector]) -> None:
    """No hole, and no seq used twice: a duplicate is the same message delivered again (QoS 1)."""
    for dev in DEVICES:
        by_seq: dict[int, dict[str, Any]] = {}
        for msg in data(collectors, dev):
            assert by_seq.setdefault(msg["seq"], msg) == msg, (dev, msg["seq"], "two messages with one seq")
        runs = contiguous_runs(list(by_seq))
        assert len(runs) == 1, (dev, runs[:5])


async def retained_on(port: int, topics: list[str], timeout: float = 10.0) -> dict[str, Any]:
    """The retained message of every topic, as a consumer connecting now to the broker on `port` gets it."""
    found: dict[str, Any] = {}
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"late-consumer-{time.monotonic_ns()}") as client:
        for topic in topics:
            await client.subscribe(topic, qos=1)
        async with asyncio.timeout(timeout):
            async for msg in client.messages:
                if msg.retain:
                    found[str(msg.topic)] = json.loads(bytes(msg.payload))
                if len(found) == len(topics):
                    break
    return found


async def command_answered(port: int, collector: Collector, rid: str) -> dict[str, Any]:
    """Send a request to the broker on `port`; the result proves the gateway subscribed there."""
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"operator-{rid}") as client:
        body = {"id": rid, "point": "nope", "value": 1}
        await client.publish("edgegw/lab/pdu-1/command", json.dumps(body).encode(), qos=1)
    topic = "edgegw/lab/pdu-1/command/result"
    found: dict[str, Any] = await collector.wait_for(
        lambda: next((m.json() for m in collector.messages if m.topic == topic and m.json()["id"] == rid), None),
        what=f"the result of {rid}",
    )
    return found


async def gateway_status_becomes(port: int, reason: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = (await retained_on(port, ["edgegw/lab/gateway/status"]))["edgegw/lab/gateway/status"]
        if status.get("reason") == reason or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.05)


def state_topics() -> list[str]:
    return ["edgegw/lab/gateway/status"] + [f"edgegw/lab/{d}/{leaf}" for d in DEVICES for leaf in ("meta", "status")]


async def test_the_first_broker_stops_data_continues_on_the_second(
    tmp_path: Path, brokers: tuple[Mosquitto, Mosquitto], twin: ModbusTwin
) -> None:
    a, b = brokers
    health = free_port()
    daemon = Daemon(no_buffer(write_config(tmp_path, [a.url, b.url], twin, health)), tmp_path)
    on_a, on_b = Collector(a.port), Collector(b.port)
    await on_a.start()
    await on_b.start()
    await daemon.start()
    try:
        await on_a.wait_for(lambda: all(len(on_a.data(d)) >= 3 for d in DEVICES), what="data on the first broker")
        assert not on_b.data("pdu-1")
        await a.stop()
        await on_a.stop()
        # Polls go on every 200 ms: ten more per device on the second broker is well past the move.
        before = {d: max(seqs([on_a], d)) for d in DEVICES}
        await on_b.wait_for(
            lambda: all(len([s for s in seqs([on_b], d) if s > before[d]]) >= 10 for d in DEVICES),
            what="data on the second broker",
        )
        assert_one_message_per_seq([on_a, on_b])
        state = await retained_on(b.port, state_topics())
        assert state["edgegw/lab/gateway/status"]["state"] == "online"
        assert state["edgegw/lab/gateway/status"]["broker"] == f"127.0.0.1:{b.port}"
        for dev in DEVICES:
            assert state[f"edgegw/lab/{dev}/status"]["state"] == "online"
            assert {p["id"] for p in state[f"edgegw/lab/{dev}/meta"]["points"]} >= {"mains.voltage_l1"}
        assert await metric(health, f'edgegw_broker_active{{url="{b.url}"}}') == 1
        assert await metric(health, f'edgegw_broker_active{{url="{a.url}"}}') == 0
        assert await metric(health, "edgegw_broker_switches_total") == 1
        result = await command_answered(b.port, on_b, "after-the-move")
        assert result["status"] == "rejected", result
        # The last will was registered with the second broker: it speaks for a gateway that vanishes.
        await daemon.kill()
        lost = await gateway_status_becomes(b.port, "lost")
        assert lost["state"] == "offline" and lost["reason"] == "lost", lost
    finally:
        await on_b.stop()
        await daemon.stop()
    log = daemon.output()
    assert log.count("switched to another broker") == 1, log[-3000:]
    assert "connected to the broker" in log and f"mqtt://127.0.0.1:{a.port}" in log


async def test_what_was_buffered_while_no_broker_answered_arrives_on_the_second(
    tmp_path: Path, brokers: tuple[Mosquitto, Mosquitto], twin: ModbusTwin
) -> None:
    a, b = brokers
    gate = Gate(b.port)  # the daemon reaches the second broker through it; the collector directly
    await gate.start()
    health = free_port()
    buffer = f"{{path: {tmp_path / 'buffer'}, sync_interval: 200ms}}"
    daemon = Daemon(with_buffer(write_config(tmp_path, [a.url, gate.url], twin, health), buffer), tmp_path)
    on_a, on_b = Collector(a.port), Collector(b.port)
    await on_a.start()
    await on_b.start()
    await daemon.start()
    try:
        await on_a.wait_for(lambda: all(len(on_a.data(d)) >= 3 for d in DEVICES), what="data on the first broker")
        await gate.stop()
        await a.stop()
        await on_a.stop()
        await wait_metric(health, "edgegw_buffer_messages", 20)
        assert await metric(health, "edgegw_broker_connected") == 0
        buffered_from = {d: max(seqs([on_a], d)) for d in DEVICES}
        await gate.start()
        # Live data and the backlog share the window: wait until the second broker has it all.
        await on_b.wait_for(
            lambda: all(len([s for s in seqs([on_b], d) if s > buffered_from[d]]) >= 30 for d in DEVICES),
            what="backlog and live data on the second broker",
        )
        await wait_metric(health, "edgegw_broker_connected", 1)
        for dev in DEVICES:
            await on_b.wait_for(
                lambda dev=dev: len(contiguous_runs(seqs([on_a, on_b], dev))) == 1,  # type: ignore[misc]
                what=f"no hole for {dev}: {contiguous_runs(seqs([on_a, on_b], dev))[:5]}",
            )
        assert_one_message_per_seq([on_a, on_b])
        assert await metric(health, "edgegw_messages_dropped_total") == 0
        state = await retained_on(b.port, state_topics())
        assert state["edgegw/lab/gateway/status"]["broker"] == f"127.0.0.1:{gate.port}"
        assert all(state[f"edgegw/lab/{d}/status"]["state"] == "online" for d in DEVICES)
    finally:
        await on_b.stop()
        await daemon.stop()
        await gate.stop()


async def test_failback_returns_to_the_first_broker(
    tmp_path: Path, brokers: tuple[Mosquitto, Mosquitto], twin: ModbusTwin
) -> None:
    a, b = brokers
    gate = Gate(a.port)  # "the first broker is away" without losing its collector's subscription
    await gate.start()
    health = free_port()
    path = no_buffer(write_config(tmp_path, [gate.url, b.url], twin, health, extra=", failback_after: 1s"))
    daemon = Daemon(path, tmp_path)
    on_a, on_b = Collector(a.port), Collector(b.port)
    await on_a.start()
    await on_b.start()
    await daemon.start()
    try:
        await on_a.wait_for(lambda: all(len(on_a.data(d)) >= 3 for d in DEVICES), what="data on the first broker")
        await gate.stop()
        await on_b.wait_for(lambda: all(len(on_b.data(d)) >= 3 for d in DEVICES), what="data on the second broker")
        left_a = {d: max(seqs([on_a], d)) for d in DEVICES}
        await gate.start()
        await on_a.wait_for(
            lambda: all(len([s for s in seqs([on_a], d) if s > left_a[d]]) >= 5 for d in DEVICES),
            what="data on the first broker again",
        )
        assert await metric(health, f'edgegw_broker_active{{url="{gate.url}"}}') == 1
        assert await metric(health, "edgegw_broker_switches_total") == 2
        assert_one_message_per_seq([on_a, on_b])
        # The broker left behind says where the gateway went; the first one has it online.
        moved = (await retained_on(b.port, ["edgegw/lab/gateway/status"]))["edgegw/lab/gateway/status"]
        assert moved["state"] == "offline" and moved["reason"] == "moved", moved
        assert moved["broker"] == f"127.0.0.1:{gate.port}"
        back = (await retained_on(a.port, ["edgegw/lab/gateway/status"]))["edgegw/lab/gateway/status"]
        assert back["state"] == "online" and back["broker"] == f"127.0.0.1:{gate.port}"
    finally:
        await on_a.stop()
        await on_b.stop()
        await daemon.stop()
        await gate.stop()
    assert "returning to the preferred broker" in daemon.output()


async def test_a_silent_first_broker_costs_one_connect_timeout_not_the_backoff(
    tmp_path: Path, brokers: tuple[Mosquitto, Mosquitto], twin: ModbusTwin
) -> None:
    _, b = brokers
    silent = Gate(b.port)  # accepts TCP and holds every byte: no CONNACK ever comes back
    await silent.start()
    silent.stall()
    health = free_port()
    # A backoff of a minute between brokers would miss the 20 s the collector waits.
    path = no_buffer(write_config(tmp_path, [silent.url, b.url], twin, health, extra=", reconnect_min: 60s"))
    daemon = Daemon(path, tmp_path)
    on_b = Collector(b.port)
    await on_b.start()
    await daemon.start()
    try:
        await on_b.wait_for(lambda: all(len(on_b.data(d)) >= 3 for d in DEVICES), what="data on the second broker")
        assert_one_message_per_seq([on_b])
        assert await metric(health, f'edgegw_broker_active{{url="{b.url}"}}') == 1
    finally:
        await on_b.stop()
        await daemon.stop()
        await silent.stop()
    log = daemon.output()
    assert "cannot reach the broker" in log and silent.url in log, log[-3000:]
