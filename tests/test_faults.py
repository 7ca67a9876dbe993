"""Fault tests: broker outages, SIGKILL, a full buffer, hot reload; each ends by itself."""

from __future__ import annotations

import asyncio
import gc
import signal
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.modbus.twin import ModbusTwin
from tests.harness import Collector, Daemon, Mosquitto, free_port
from tests.test_e2e_modbus import device_yaml, twin_points

pytestmark = pytest.mark.slow


@pytest.fixture
async def twin() -> AsyncIterator[ModbusTwin]:
    async with ModbusTwin(twin_points(), units=[1, 2, 3], port=0, update_interval=0.1) as t:
        yield t


def write_config(tmp: Path, broker: Mosquitto, devices: str, buffer: str = "", health: int | None = None) -> Path:
    path = tmp / "site.yaml"
    text = f"site: lab\nmqtt: {{url: '{broker.url}', client_id: gw-faults, reconnect_max: 1s}}\nstate_dir: {tmp / 'state'}\n"
    if buffer:
        text += f"buffer: {buffer}\n"
    if health:
        text += f"health: {{listen: '127.0.0.1:{health}'}}\n"
    path.write_text(text + (f"devices:\n{devices}" if devices else ""), encoding="utf-8")
    return path


async def metric(port: int, name: str) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
    body = (await asyncio.wait_for(reader.read(), 5)).decode()
    writer.close()
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def wait_metric(port: int, name: str, at_least: float, timeout: float = 20.0) -> float:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            value = await metric(port, name)
            if value >= at_least:
                return value
        except OSError:
            pass
        if loop.time() > deadline:
            raise AssertionError(f"{name} did not reach {at_least}")
        await asyncio.sleep(0.05)


def seqs(collector: Collector, device: str) -> list[int]:
    return [m["seq"] for m in collector.data(device)]


def contiguous_runs(values: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for v in sorted(set(values)):
        if runs and v == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], v)
        else:
            runs.append((v, v))
    return runs


@pytest.mark.parametrize("disk", [True, False], ids=["disk-buffer", "memory-only"])
async def test_broker_outage_loses_nothing(
    tmp_path: Path, broker: Mosquitto, collector: Collector, twin: ModbusTwin, disk: bool
) -> None:
    health = free_port()
    devices = device_yaml("pdu-1", twin.port, 1) + device_yaml("pdu-2", twin.port, 2)
    buffer = f"{{path: {tmp_path / 'buffer'}, sync_interval: 200ms}}" if disk else ""
    backlog = "edgegw_buffer_messages" if disk else "edgegw_queue_depth"
    cfg = write_config(tmp_path, broker, devices, buffer=buffer, health=health)
    daemon = Daemon(cfg, tmp_path)
    await daemon.start()
    try:
        await collector.wait_for(lambda: len(seqs(collector, "pdu-1")) >= 3, what="data before the outage")
        await broker.stop()
        await collector.stop()
        # Under load while the broker is away: the messages go to the disk buffer.
        await wait_metric(health, backlog, 20)
        await broker.start()
        collector2 = Collector(broker.port)
        collector2.messages = collector.messages
        await collector2.start()
        before = await metric(health, backlog)
        await collector2.wait_for(
            lambda: all(len(seqs(collector2, d)) >= before / 2 + 10 for d in ("pdu-1", "pdu-2")),
            timeout=30,
            what="the backlog and live data",
        )
        await wait_metric(health, "edgegw_broker_connected", 1)
        # Drained: every seq from the first to the newest arrived (duplicates are allowed, holes are not).
        for dev in ("pdu-1", "pdu-2"):
            await collector2.wait_for(
                lambda dev=dev: len(contiguous_runs(seqs(collector2, dev))) == 1,  # type: ignore[misc]
                timeout=30,
                what=f"no holes for {dev}: {contiguous_runs(seqs(collector2, dev))[:5]}",
            )
        assert await metric(health, "edgegw_messages_dropped_total") == 0
        await collector2.stop()
    finally:
        await daemon.stop()
    assert "broker connection lost" in daemon.output()


async def test_sigkill_during_outage_loses_nothing(
    tmp_path: Path, broker: Mosquitto, collector: Collector, twin: ModbusTwin
) -> None:
    health = free_port()
    cfg = write_config(
        tmp_path,
        broker,
        device_yaml("pdu-1", twin.port, 1),
        buffer=f"{{path: {tmp_path / 'buffer'}, sync_interval: 100ms}}",
        health=health,
    )
    daemon = Daemon(cfg, tmp_path)
    await daemon.start()
    await collector.wait_for(lambda: len(seqs(collector, "pdu-1")) >= 3, what="data before the outage")
    await broker.stop()
    await collector.stop()
    buffered = await wait_metric(health, "edgegw_buffer_messages", 10)
    await daemon.kill()  # SIGKILL: no drain, no clean close of the buffer
    await broker.start()
    collector2 = Collector(broker.port)
    collector2.messages = list(collector.messages)
    await collector2.start()
    daemon2 = Daemon(cfg, tmp_path)
    await daemon2.start()
    try:
        await collector2.wait_for(
            lambda: len(contiguous_runs(seqs(collector2, "pdu-1"))) >= 2, timeout=30, what="data after the restart"
        )
        runs = contiguous_runs(seqs(collector2, "pdu-1"))
        # Everything produced before the kill arrived: the first run starts at 1 and holds at least what was
        # buffered; after the restart seq resumes past its reservation (a jump, never a repeat).
        assert runs[0][0] == 1 and runs[0][1] >= buffered, runs
        assert len(runs) == 2, runs
        await collector2.stop()
    finally:
        await daemon2.stop()


async def test_full_buffer_drops_oldest_and_counts(tmp_path: Path, broker: Mosquitto, twin: ModbusTwin) -> None:
    health = free_port()
    devices = "".join(device_yaml(f"pdu-{u}", twin.port, u, interval="50ms") for u in (1, 2, 3))
    cfg = write_config(
        tmp_path, broker, devices, buffer=f"{{path: {tmp_path / 'buffer'}, max_size: 64KiB}}", health=health
    )
    await broker.stop()
    daemon = Daemon(cfg, tmp_path)
    await daemon.start()
    try:
        dropped = await wait_metric(health, "edgegw_messages_dropped_total", 1, timeout=30)
        assert dropped >= 1
        assert await metric(health, "edgegw_buffer_bytes") <= 64 * 1024 + 8192
        assert await metric(health, "edgegw_device_polls_total") > 0  # still polling
    finally:
        await daemon.stop()


async def test_sighup_reload_applies_changes_and_rejects_bad_config(
    tmp_path: Path, broker: Mosquitto, collector: Collector, twin: ModbusTwin
) -> None:
    cfg = write_config(tmp_path, broker, device_yaml("keep", twin.port, 1) + device_yaml("gone", twin.port, 2))
    daemon = Daemon(cfg, tmp_path)
    await daemon.start()
    try:
        await collector.wait_for(lambda: collector.data("keep") and collector.data("gone"), what="both devices")
        # A bad file is rejected and the running config stays.
        cfg.write_text(cfg.read_text().replace("interval: 200ms", "interval: never"), encoding="utf-8")
        await daemon.signal(signal.SIGHUP)
        await collector.wait_for(lambda: "reload rejected" in daemon.output(), what="reload rejected")
        n = len(collector.data("gone"))
        await collector.wait_for(lambda: len(collector.data("gone")) > n + 2, what="old config still running")
        # A good one: "gone" removed, "new" added, "keep" untouched (its seq goes on without a restart).
        write_config(tmp_path, broker, device_yaml("keep", twin.port, 1) + device_yaml("new", twin.port, 3))
        keep_before = len(collector.data("keep"))
        await daemon.signal(signal.SIGHUP)
        await collector.wait_for(lambda: collector.data("new"), what="the new device")
        await collector.wait_for(
            lambda: any(m.json()["state"] == "removed" for m in collector.on("/gone/status")), what="gone removed"
        )
        gone_count = len(collector.data("gone"))
        await collector.wait_for(lambda: len(collector.data("keep")) > keep_before + 5, what="keep goes on")
        assert len(collector.data("gone")) <= gone_count + 1
        keep = seqs(collector, "keep")
        assert len(contiguous_runs(keep)) == 1, contiguous_runs(keep)
        assert '"config reloaded"' in daemon.output()
    finally:
        await daemon.stop()


async def test_a_reload_frees_the_runners_it_replaces_before_building_their_successors(
    tmp_path: Path, broker: Mosquitto, twin: ModbusTwin
) -> None:
    """Left to the collector's pace, each reload of a changed fleet added that fleet's memory to the RSS."""
    from gateway.app import Gateway
    from gateway.config import load_config

    cfg = write_config(tmp_path, broker, device_yaml("a", twin.port, 1) + device_yaml("b", twin.port, 2))
    gw = Gateway(load_config(cfg), cfg)
    await gw.start()
    try:
        # What start built is kept out of the collector's scans (settle_memory), and a reload
        # still frees what it replaces.
        assert gc.get_freeze_count() > 0
        old = [weakref.ref(r) for r in gw.runners.values()]
        tables = [weakref.ref(r.normalizer.table) for r in gw.runners.values()]
        write_config(
            tmp_path, broker, device_yaml("a", twin.port, 1, "300ms") + device_yaml("b", twin.port, 2, "300ms")
        )
        assert await gw.reload()
        assert [r() for r in old] == [None, None]
        assert [t() for t in tables] == [None, None]
        assert sorted(gw.runners) == ["a", "b"]
    finally:
        await gw.stop(drain_timeout=1.0)
