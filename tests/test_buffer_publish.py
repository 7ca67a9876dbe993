"""The publisher's use of the disk buffer, against a real mosquitto: fsync off the loop, drain rate."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

import gateway.buffer
from gateway.config import BufferConfig, MqttConfig
from gateway.publish import Publisher
from tests.harness import Collector, Mosquitto


def _publisher(broker: Mosquitto, buffer_dir: Path, **buffer: object) -> Publisher:
    mqtt = MqttConfig.model_validate({"url": broker.url, "client_id": "gw-buffer", "reconnect_max": 0.5})
    cfg = BufferConfig.model_validate({"path": str(buffer_dir), **buffer})
    pub = Publisher(mqtt, "lab", cfg, None, structlog.get_logger("t"))
    pub.open_buffer()
    return pub


async def _until(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_zero_loss_mode_reports_safe_only_after_an_fsync_in_a_worker_thread(
    tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    await broker.stop()  # broker away: every message goes to the disk buffer
    threads: list[int] = []
    fsynced_before_done: list[bool] = []
    run = gateway.buffer.SyncJob.run

    def recording_run(job: gateway.buffer.SyncJob) -> None:
        threads.append(threading.get_ident())
        run(job)

    monkeypatch.setattr(gateway.buffer.SyncJob, "run", recording_run)
    pub = _publisher(broker, tmp_path / "buf", sync_interval=0)
    pub.start()
    done: list[int] = []
    try:

        def on_done(i: int) -> Callable[[], None]:
            def safe() -> None:
                done.append(i)
                fsynced_before_done.append(bool(threads))

            return safe

        for i in range(50):
            pub.submit_event("dev", {"i": i}, on_done=on_done(i))
        assert done == []  # not before the fsync: the scheduler would commit a cursor too early
        await _until(lambda: len(done) == 50, what="the group commit")
        assert done == list(range(50)) and all(fsynced_before_done)
        assert threads and threading.get_ident() not in threads  # the fsyncs ran off the event loop
        assert len(threads) < 50  # grouped, not one fsync per message
    finally:
        await pub.stop()


async def test_the_backlog_drains_at_the_configured_rate_and_live_data_goes_first(
    tmp_path: Path, broker: Mosquitto, collector: Collector
) -> None:
    pub = _publisher(broker, tmp_path / "buf", drain_rate=200)
    for i in range(500):  # not started yet: as while the broker was away
        pub.submit_event("old", {"i": i})
    assert pub.buffer_stats().records == 500
    pub.start()
    try:
        await _until(lambda: pub.connected, what="the connection")
        start = time.monotonic()
        await _until(lambda: len(collector.on("old/events")) >= 100, what="the drain to start")
        pub.submit_event("live", {"now": True})
        await _until(lambda: collector.on("live/events"), what="the live message")
        # The live message overtook the backlog: far more than a window's worth was still waiting.
        assert len(collector.on("old/events")) < 400
        await _until(lambda: len(collector.on("old/events")) >= 500, timeout=60, what="the whole backlog")
        elapsed = time.monotonic() - start
        # 500 messages at 200/s take at least (500 - the bucket's quarter second) / 200 s.
        assert elapsed >= (500 - 50) / 200 * 0.9, elapsed
        assert [json.loads(m.payload)["i"] for m in collector.on("old/events")] == list(range(500))
        await _until(lambda: pub.drain_eta() == 0.0, what="an empty buffer")
        assert pub.drain_rate_limit == 200
    finally:
        await pub.stop()


def test_a_long_buffer_check_at_start_extends_systemds_start_timeout(
    tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "buf"
    buf = gateway.buffer.DiskBuffer(folder, max_bytes=1 << 20, segment_bytes=4096)
    buf.open()
    for i in range(100):
        buf.append("t", b"%d" % i * 60)
    buf.close()
    monkeypatch.setattr(gateway.buffer, "_PROGRESS_INTERVAL", 0.0)
    sock_path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(sock_path)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
        pub = _publisher(broker, folder)
        note = sock.recv(4096).decode()
    assert note.startswith("EXTEND_TIMEOUT_USEC=30000000\nSTATUS=checking the disk buffer: ")
    assert pub.buffer_stats().records == 100
    pub._disk.close()


def test_the_measured_drain_rate_follows_a_short_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    """A drain of a few seconds shows in /metrics while it runs: a ten-second window, updated every second."""
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    pub = Publisher(MqttConfig.model_validate({}), "lab", BufferConfig(), None, structlog.get_logger("t"))
    for second in range(1, 16):
        clock[0] += 1.0
        pub._drained += 900
        pub._measure_drain()
        assert pub.drain_rate_measured == pytest.approx(900.0), second
    for _ in range(11):  # drained: the window empties of acknowledgements
        clock[0] += 1.0
        pub._measure_drain()
    assert pub.drain_rate_measured == 0.0
