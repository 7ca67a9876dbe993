"""End to end: a compressed disk buffer rides out a broker outage (daemon process, mosquitto, Modbus twin)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.modbus.config import ModbusPoint
from drivers.modbus.twin import ModbusTwin
from tests.harness import Collector, Daemon, Mosquitto, free_port
from tests.test_faults import metric, seqs, wait_metric, write_config

pytestmark = pytest.mark.slow

POINTS = [
    {"id": f"ch{i}.current", "address": 2 * i, "type": "float32", "quantity": "current", "unit": "A", "circuit": i}
    for i in range(100)
]


@pytest.fixture
async def twin() -> AsyncIterator[ModbusTwin]:
    points = [ModbusPoint.model_validate(p) for p in POINTS]
    async with ModbusTwin(points, units=[1, 2], port=0, update_interval=0.1) as t:
        yield t


def device(dev_id: str, port: int, unit: int) -> str:
    points = "\n".join(f"      - {json.dumps(p)}" for p in POINTS)
    return (
        f"  - id: {dev_id}\n    driver: modbus\n    tcp: {{host: 127.0.0.1, port: {port}}}\n    unit: {unit}\n"
        f"    interval: 100ms\n    timeout: 500ms\n    points:\n{points}\n"
    )


async def test_compressed_buffer_rides_out_an_outage_every_seq_once_under_a_kilobyte_each(
    tmp_path: Path, broker: Mosquitto, collector: Collector, twin: ModbusTwin
) -> None:
    health = free_port()
    devices = device("meter-1", twin.port, 1) + device("meter-2", twin.port, 2)
    buffer = f"{{path: {tmp_path / 'buffer'}, compression: zstd, sync_interval: 200ms, drain_rate: 100}}"
    cfg = write_config(tmp_path, broker, devices, buffer=buffer, health=health)
    daemon = Daemon(cfg, tmp_path)
    await daemon.start()
    try:
        await collector.wait_for(lambda: len(seqs(collector, "meter-1")) >= 3, what="data before the outage")
        await broker.stop()
        await collector.stop()
        buffered = await wait_metric(health, "edgegw_buffer_messages", 100, timeout=60)
        size = await metric(health, "edgegw_buffer_bytes")
        count = await metric(health, "edgegw_buffer_messages")
        # Segment bytes (headers and topics included) per buffered 100-reading message.
        assert size / count <= 1024, size / count
        on_disk = sum(p.stat().st_size for p in (tmp_path / "buffer").glob("seg-*.log"))
        assert on_disk <= size + 64 * 1024  # the metric is what is on disk (give or take appends since)
        assert await metric(health, "edgegw_buffer_stored_ratio") < 0.2
        await broker.start()
        again = Collector(broker.port)
        again.messages = collector.messages
        await again.start()
        await wait_metric(health, "edgegw_broker_connected", 1)
        assert await metric(health, "edgegw_buffer_drain_rate_limit") == 100
        for dev in ("meter-1", "meter-2"):
            await again.wait_for(
                lambda dev=dev: _complete(seqs(again, dev), buffered / 2),  # type: ignore[misc]
                timeout=60,
                what=f"every seq of {dev} from 1 on, past the outage",
            )
        await wait_metric(health, "edgegw_buffer_drain_rate", 0.01, timeout=30)
        await again.stop()
        assert await metric(health, "edgegw_messages_dropped_total") == 0
    finally:
        await daemon.stop()
    for dev in ("meter-1", "meter-2"):
        counts = Counter(seqs(again, dev))
        assert sorted(counts) == list(range(1, max(counts) + 1)), f"holes in {dev}"
        # Once each; a resend can only be one that was in flight when the broker went (at-least-once).
        repeated = [s for s, n in counts.items() if n > 1]
        assert len(repeated) <= 20, repeated


def _complete(values: list[int], at_least: float) -> bool:
    got = set(values)
    return bool(got) and min(got) == 1 and len(got) == max(got) and max(got) >= at_least
