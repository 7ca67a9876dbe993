"""Overload: every tick accounted for, queues held to their bounds, retained state off the data path.

The scheduler tests run the real `DeviceRunner` with small in-process drivers (no protocol to
speak); the end-to-end checks run the daemon against Modbus twins and a real mosquitto.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import structlog

from gateway.buses import Bus
from gateway.config import BufferConfig, MqttConfig
from gateway.driver import DeviceError, Driver, DriverContext, RawReadings
from gateway.models import DeviceConfig, PointConfig
from gateway.normalize import Normalizer
from gateway.publish import Outgoing, Publisher
from gateway.scheduler import DeviceRunner, DeviceStats, SkipLog, SkipReason
from gateway.state import StateStore
from tests.harness import Collector, Mosquitto


class Lines:
    """A logger that keeps what it was asked to log (the runner's only log sink here)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def _log(self, level: str) -> Callable[..., None]:
        return lambda event, **kw: self.lines.append((level, event, kw))

    def __getattr__(self, level: str) -> Callable[..., None]:
        return self._log(level)

    def bind(self, **_kw: Any) -> Lines:
        return self


def balanced(st: DeviceStats) -> bool:
    return st.ticks == st.polls + st.skipped + st.backoff and st.skipped == sum(st.skipped_by.values())


def runner_for(
    read: Callable[[], Any],
    interval: float,
    log: Any,
    *,
    saturated: Callable[[], bool] | None = None,
    skip_log: SkipLog | None = None,
    **keys: Any,
) -> DeviceRunner:
    device = DeviceConfig.model_validate({"id": f"d{id(read)}", "driver": "x", "interval": interval, **keys})
    ctx = DriverContext(device=device, points=[], log=log, bus=Bus("b"), state=StateStore(None))

    class Fake(Driver[DeviceConfig, None]):
        async def read(self) -> RawReadings:
            return await read()  # type: ignore[no-any-return]

    return DeviceRunner(
        device,
        lambda _p: Fake(ctx),
        lambda _b, _done: None,
        lambda _d, _s: None,
        log,
        saturated=saturated,
        skip_log=skip_log,
    )


async def until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - a bounded wait on counters
            await asyncio.sleep(0.005)
    assert predicate(), what


async def test_a_poll_longer_than_its_interval_skips_ticks_and_every_tick_is_counted() -> None:
    async def slow() -> RawReadings:
        await asyncio.sleep(0.06)
        return RawReadings([])

    log = Lines()
    runner = runner_for(slow, 0.01, log)
    runner.start()
    try:
        checks = 0
        while runner.stats.ticks < 60:
            await asyncio.sleep(0.003)
            # Any moment the loop is ours is a consistent snapshot: the identity holds at each.
            assert balanced(runner.stats), runner.stats
            checks += 1
        assert checks > 10
        st = runner.stats
        assert st.skipped_by[SkipReason.BUSY] > st.polls  # most ticks find the previous poll running
    finally:
        await runner.stop()
    assert balanced(runner.stats)
    skips = [kw for _lvl, event, kw in log.lines if event.startswith("poll skipped")]
    # A state change is one line; the ticks themselves are counters.
    assert len(skips) <= len(SkipReason), skips


async def test_a_tick_waits_for_a_poll_that_ends_before_the_next_deadline() -> None:
    """A poll of 1.2 intervals: the device polls back to back, not on every second deadline."""

    async def slower_than_interval() -> RawReadings:
        await asyncio.sleep(0.06)
        return RawReadings([])

    runner = runner_for(slower_than_interval, 0.05, Lines())
    runner.start()
    try:
        await until(lambda: runner.stats.ticks >= 30, "ticks")
        st = runner.stats
        assert balanced(st), st
        # Skipping every tick that found the poll running would give one poll per two ticks;
        # back to back gives five per six (less what a loaded machine's timers cost).
        assert st.polls > 0.6 * st.ticks, st
    finally:
        await runner.stop()


async def test_many_devices_at_a_tiny_interval_account_for_every_tick() -> None:
    def busy() -> Any:
        async def read() -> RawReadings:
            # CPU the loop cannot give to anyone else, as decode and encode are.
            end = time.perf_counter() + 0.0003
            while time.perf_counter() < end:
                pass
            return RawReadings([])

        return read

    log = Lines()
    skip_log = SkipLog(cast(Any, log))
    runners = [runner_for(busy(), 0.01, log, skip_log=skip_log) for _ in range(150)]
    for r in runners:
        r.start()
    try:
        await until(lambda: min(r.stats.ticks for r in runners) >= 20, "every device ticked")
        for r in runners:
            assert balanced(r.stats), r.stats
        lost = sum(r.stats.skipped for r in runners)
        assert lost > 0  # 15 000 ticks/s of 0.3 ms cannot all be polls: the shortfall is counted, not vanished
    finally:
        for r in runners:
            await r.stop()
    for r in runners:
        assert balanced(r.stats), r.stats
    skip_log.close()
    # One overload of the process is one line, whatever the number of devices and ticks.
    assert len([1 for _l, e, _k in log.lines if e.startswith("poll skipped")]) == 1


async def test_the_end_of_an_overload_is_one_line_with_what_was_skipped() -> None:
    slow = True

    async def read() -> RawReadings:
        if slow:
            await asyncio.sleep(0.03)
        return RawReadings([])

    log = Lines()
    skip_log = SkipLog(cast(Any, log), quiet_after=0.2)
    runner = runner_for(read, 0.01, log, skip_log=skip_log)
    runner.start()
    try:
        await until(lambda: runner.stats.skipped >= 5, "skips")
        slow = False
        await until(lambda: any(e == "polls on time again" for _l, e, _k in log.lines), "the end of the overload")
        (ended,) = [kw for _l, e, kw in log.lines if e == "polls on time again"]
        assert ended["devices"] == 1 and ended["skipped"]["busy"] >= 5, ended
    finally:
        await runner.stop()
        skip_log.close()
    assert len([1 for _l, e, _k in log.lines if e.startswith("poll skipped")]) == 1


async def test_devices_share_a_saturated_process_fairly() -> None:
    """More asked than one core can do: every device gets about the same share of the polls."""

    def busy() -> Any:
        async def read() -> RawReadings:
            await asyncio.sleep(0)  # the reply comes from the network
            end = time.perf_counter() + 0.0003
            while time.perf_counter() < end:
                pass
            return RawReadings([])

        return read

    runners = [runner_for(busy(), 0.01, Lines()) for _ in range(50)]
    for r in runners:
        r.start()
    try:
        await until(lambda: min(r.stats.polls for r in runners) >= 5, "every device polled")
        start = [r.stats.polls for r in runners]
        await until(lambda: min(r.stats.polls - s for r, s in zip(runners, start, strict=True)) >= 60, "polls")
        polls = [r.stats.polls - s for r, s in zip(runners, start, strict=True)]
        assert min(polls) >= 0.8 * max(polls), polls
        assert sum(r.stats.skipped for r in runners) > 0  # it was saturated
    finally:
        for r in runners:
            await r.stop()


async def test_backoff_ticks_of_an_offline_device_are_counted() -> None:
    async def dead() -> RawReadings:
        raise DeviceError("no route to host")

    runner = runner_for(dead, 0.01, Lines(), offline_after=1, max_backoff=0.2)
    runner.start()
    try:
        await until(lambda: runner.stats.backoff >= 10 and runner.stats.polls >= 3, "backoff ticks")
        assert balanced(runner.stats), runner.stats
        assert runner.stats.state.value == "offline"
    finally:
        await runner.stop()
    assert balanced(runner.stats)


async def test_backpressure_skips_ticks_instead_of_polling() -> None:
    full = [True]

    async def fine() -> RawReadings:
        return RawReadings([])

    runner = runner_for(fine, 0.01, Lines(), saturated=lambda: full[0])
    runner.start()
    try:
        await until(lambda: runner.stats.skipped_by[SkipReason.BACKPRESSURE] >= 5, "backpressure skips")
        assert runner.stats.polls == 0 and balanced(runner.stats)
        full[0] = False
        await until(lambda: runner.stats.polls >= 3, "polls once the queue has room")
        assert balanced(runner.stats)
    finally:
        await runner.stop()


# -- the publisher's bounds ---------------------------------------------------------------------


def pub(**mqtt: Any) -> Publisher:
    return Publisher(MqttConfig(**mqtt), "s", BufferConfig(), None, structlog.get_logger("t"))


def test_the_queue_holds_its_bound_in_messages_whether_connected_or_not() -> None:
    p = pub(queue_size=10, memory_backlog=5)
    p.connected = True
    dropped: list[int] = []
    for i in range(40):
        p._enqueue(Outgoing("t", b"x", 1, on_done=lambda i=i: dropped.append(i)))  # type: ignore[misc]
        assert p.queue_depth <= 10
    assert p.stats.dropped_queue == 30 and dropped == list(range(30))
    # While the broker is away the memory backlog adds to it, and nothing more.
    p.connected = False
    for _ in range(40):
        p._enqueue(Outgoing("t", b"x", 1))
        assert p.queue_depth <= 15
    assert p.queue_depth == 15
    # Connected again, the backlog drains: a new message neither cuts it to 10 nor grows it.
    p.connected = True
    p._enqueue(Outgoing("t", b"x", 1))
    assert p.queue_depth == 15
    p._next_live()
    p._enqueue(Outgoing("t", b"x", 1))
    assert p.queue_depth == 14


def test_the_queue_holds_its_bound_in_bytes() -> None:
    p = pub(queue_size=10000, queue_bytes="64KiB")
    for _ in range(100):
        p._enqueue(Outgoing("edgegw/s/d/data", b"x" * 5000, 1))
        assert p.queue_bytes <= 64 * 1024
    assert p.queue_depth == 64 * 1024 // (5000 + len("edgegw/s/d/data"))
    assert p.stats.dropped_queue == 100 - p.queue_depth
    while p._next_live() is not None:
        pass
    assert p.queue_bytes == 0


def test_messages_returned_from_flight_stay_within_the_bound() -> None:
    p = pub(queue_size=10, memory_backlog=0)
    p.connected = True
    for i in range(10):
        p._enqueue(Outgoing(f"m{i}", b"", 1))
    inflight = [m for _ in range(5) if (m := p._next_live()) is not None]
    for i in range(10, 15):
        p._enqueue(Outgoing(f"m{i}", b"", 1))
    p._return(inflight)  # the connection failed: they are older than anything queued
    assert p.queue_depth == 10 and p.stats.dropped_queue == 5
    taken = [m.topic for _ in range(10) if (m := p._next_live()) is not None]
    assert taken == [f"m{i}" for i in range(5, 15)]


def test_saturated_only_while_connected_and_a_window_waits() -> None:
    p = pub(max_inflight=20, queue_size=1000)
    for _ in range(25):
        p._enqueue(Outgoing("t", b"x", 1))
    assert not p.saturated()  # broker away: the outage rules apply, not backpressure
    p.connected = True
    assert p.saturated()
    while p.queue_depth >= 20:
        p._next_live()
    assert not p.saturated()


def test_queue_bytes_is_validated() -> None:
    from pydantic import ValidationError

    assert MqttConfig.model_validate({"queue_bytes": "8MiB"}).queue_bytes == 8 * 2**20
    with pytest.raises(ValidationError):
        MqttConfig.model_validate({"queue_bytes": "1KiB"})


# -- retained state does not hold the data back --------------------------------------------------


@pytest.mark.slow
async def test_the_first_data_message_does_not_wait_for_all_retained_state(
    tmp_path: Path, broker: Mosquitto, collector: Collector
) -> None:
    """100 devices x 100 points: meta and status share the in-flight window with data."""
    cfg = MqttConfig.model_validate({"url": broker.url, "client_id": "gw-retained", "max_inflight": 200})
    publisher = Publisher(cfg, "s", BufferConfig(), None, structlog.get_logger("t"))
    points = [PointConfig.model_validate({"id": f"p{i}", "quantity": "current", "unit": "A"}) for i in range(100)]
    built: list[str] = []

    def meta(device: str) -> Callable[[], dict[str, Any]]:
        def build() -> dict[str, Any]:
            built.append(device)
            return {"device": device, "points": [p.model_dump(mode="json") for p in points]}

        return build

    devices = [f"d{i:03}" for i in range(100)]
    for d in devices:
        publisher.submit_retained(publisher.topic(d, "meta"), meta(d))
        publisher.submit_retained(publisher.topic(d, "status"), {"state": "online"})
    for d in devices:
        publisher.submit_batch(Normalizer(d, points).normalize(RawReadings([1.0] * 100), 1000))
    publisher.start()
    try:
        retained = 2 * len(devices) + 1  # meta and status per device, and the gateway's status
        await collector.wait_for(
            lambda: (
                len(collector.on("/data")) == len(devices)
                and len([m for m in collector.messages if m.topic.endswith(("/meta", "/status"))]) >= retained
            ),
            what="every message",
        )
        order = [m.topic for m in collector.messages]
        first_data = next(i for i, t in enumerate(order) if t.endswith("/data"))
        assert order[0] == "edgegw/s/gateway/status"  # the gateway says it is online first
        assert first_data < retained // 2, f"data came after {first_data} retained messages"
        assert json.loads(collector.on("/d042/meta")[0].payload)["device"] == "d042"
        assert publisher.stats.published == len(devices)  # retained state is not counted as data
    finally:
        await publisher.stop()


# -- end to end: the daemon, Modbus twins, mosquitto ---------------------------------------------


def per_device(body: str, name: str) -> dict[str, float]:
    """A per-device counter from /metrics, summed over its other labels."""
    out: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1 :].rsplit("} ", 1)
            device = labels.split('device="', 1)[1].split('"', 1)[0]
            out[device] = out.get(device, 0.0) + float(value)
    return out


@pytest.mark.slow
async def test_the_daemon_accounts_for_every_tick_under_overload(tmp_path: Path, broker: Mosquitto) -> None:
    from drivers.modbus.twin import ModbusTwin
    from tests.harness import Daemon, free_port
    from tests.test_e2e_modbus import device_yaml, twin_points
    from tests.test_faults import write_config
    from tests.test_health import http_get

    health = free_port()
    async with ModbusTwin(twin_points(), units=[1, 2, 3], port=0) as twin:
        twin.faults.set("slow", delay=0.05, target=1)  # a poll takes longer than the interval
        devices = (
            device_yaml("slow", twin.port, 1, interval="20ms")
            + device_yaml("fast-a", twin.port, 2, interval="10ms")
            + device_yaml("fast-b", twin.port, 3, interval="10ms")
            + device_yaml("dead", free_port(), 1, interval="10ms")  # nobody listens: offline, backing off
        )
        daemon = Daemon(write_config(tmp_path, broker, devices, health=health), tmp_path)
        await daemon.start()
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    _code, body = await http_get(health, "/metrics")
                except OSError:
                    body = ""
                ticks = per_device(body, "edgegw_device_ticks_total")
                backoff = per_device(body, "edgegw_device_backoff_ticks_total")
                if len(ticks) == 4 and min(ticks.values()) >= 50 and backoff.get("dead", 0) >= 5:
                    break
                assert time.monotonic() < deadline, f"no ticks yet: {ticks}\n{daemon.output()[-2000:]}"
                await asyncio.sleep(0.2)
            # One /metrics answer is rendered in one go: a consistent snapshot of every counter.
            polls = per_device(body, "edgegw_device_polls_total")
            skipped = per_device(body, "edgegw_device_skipped_ticks_total")
            for device, n in ticks.items():
                assert n == polls[device] + skipped[device] + backoff[device], (device, body)
            assert skipped["slow"] > 0 and backoff["dead"] > 0
        finally:
            assert await daemon.stop() == 0
    lines = [line for line in daemon.output().splitlines() if "poll skipped" in line]
    assert len(lines) == 1, lines[:20]


@pytest.mark.slow
async def test_a_broker_that_stops_acknowledging_makes_devices_skip_not_the_queue_grow(
    tmp_path: Path, broker: Mosquitto, collector: Collector
) -> None:
    from drivers.modbus.twin import ModbusTwin
    from tests.harness import Daemon, TcpProxy, free_port
    from tests.test_e2e_modbus import device_yaml, twin_points
    from tests.test_health import http_get

    health = free_port()
    proxy = TcpProxy(broker.port)
    await proxy.start()
    async with ModbusTwin(twin_points(), units=[1, 2, 3], port=0) as twin:
        devices = "".join(device_yaml(f"m{u}", twin.port, u, interval="20ms") for u in (1, 2, 3))
        path = tmp_path / "site.yaml"
        path.write_text(
            f"site: lab\nmqtt: {{url: 'mqtt://127.0.0.1:{proxy.port}', client_id: gw-overload, max_inflight: 10,"
            f" queue_size: 40}}\nstate_dir: {tmp_path / 'state'}\nhealth: {{listen: '127.0.0.1:{health}'}}\n"
            f"devices:\n{devices}",
            encoding="utf-8",
        )
        daemon = Daemon(path, tmp_path)
        await daemon.start()
        try:
            await collector.wait_for(lambda: all(collector.data(f"m{u}") for u in (1, 2, 3)), what="data")
            _code, body = await http_get(health, "/metrics")
            rss_before = float(body.split("\nedgegw_process_resident_memory_bytes ", 1)[1].split("\n", 1)[0])
            proxy.stall()  # connected, but nothing reaches the broker and no PUBACK comes back
            deadline = time.monotonic() + 30
            while True:
                _code, body = await http_get(health, "/metrics")
                depth = float(body.split("\nedgegw_queue_depth ", 1)[1].split("\n", 1)[0])
                assert depth <= 40, body
                ticks = per_device(body, "edgegw_device_ticks_total")
                polls = per_device(body, "edgegw_device_polls_total")
                skipped = per_device(body, "edgegw_device_skipped_ticks_total")
                backoff = per_device(body, "edgegw_device_backoff_ticks_total")
                for device, n in ticks.items():
                    assert n == polls[device] + skipped[device] + backoff[device], (device, body)
                pressure = sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in body.splitlines()
                    if line.startswith("edgegw_device_skipped_ticks_total{") and 'reason="backpressure"' in line
                )
                if pressure >= 100:
                    break
                assert time.monotonic() < deadline, body
                await asyncio.sleep(0.1)
            # Load was shed by skipping ticks: nothing had to be dropped at the bound, and memory
            # did not grow with the ticks the broker could not take.
            assert 'edgegw_messages_dropped_total{reason="queue_full"} 0.0' in body
            rss = float(body.split("\nedgegw_process_resident_memory_bytes ", 1)[1].split("\n", 1)[0])
            assert rss < 1.2 * rss_before, (rss, rss_before)
            seen = len(collector.data("m1"))
            proxy.resume()
            await collector.wait_for(lambda: len(collector.data("m1")) > seen + 5, what="data after the stall")
        finally:
            proxy.resume()
            assert await daemon.stop() == 0
            await proxy.stop()
