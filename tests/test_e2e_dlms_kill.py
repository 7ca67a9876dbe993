"""A DLMS daemon killed with SIGKILL at random moments of a load-profile backfill never leaves a hole.

The core stores a profile cursor only once the poll's message is acknowledged by the broker
(docs/dlms.md), so a kill at any moment can cause a re-read but never a skipped entry. The
backfill is made slow on purpose (one 15-minute chunk per poll) so that the kills land in the
middle of it. On loopback an acknowledgement takes a millisecond, so in half of the runs the
daemon's broker connection (through a proxy) is stalled first: messages published and not
acknowledged, as over a slow WAN link, when the kill comes. A cursor stored before the
acknowledgement loses those entries for good; this test finds that within a few runs.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from pathlib import Path

import pytest
import yaml

from gateway.registry import DRIVERS
from tests.harness import Collector, Daemon, Mosquitto, TcpProxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

QUARTER_MS = 15 * 60 * 1000
POINT = "load_profile.active_import"
KILLS = 20


def stamps(collector: Collector) -> set[int]:
    return {r["ts"] for m in collector.data("m1") for r in m["readings"] if r["point"] == POINT}


async def test_sigkill_at_random_moments_of_a_backfill_leaves_no_hole(
    tmp_path: Path, broker: Mosquitto, collector: Collector
) -> None:
    t0 = (int(time.time()) // 900) * 900
    wanted = set(range((t0 - 12 * 3600) * 1000 + QUARTER_MS, t0 * 1000 + 1, QUARTER_MS))
    rng = random.Random(20261202)
    proxy = TcpProxy(broker.port)
    await proxy.start()
    async with DRIVERS["dlms"].twin_class.create("sensemi-sed102", transport="wrapper", start=t0) as twin:
        twin.clock.freeze()  # the meter's time stands still: the backfill has a fixed end
        device = {
            "id": "m1",
            **twin.device_config(),
            "interval": "200ms",
            "timeout": "1s",
            "backfill": "12h",
            "profile_chunk": "15min",
            "profile_chunks_per_poll": 1,
        }
        cfg = tmp_path / "site.yaml"
        body = {
            "site": "lab",
            "mqtt": {"url": f"mqtt://127.0.0.1:{proxy.port}"},
            "state_dir": str(tmp_path / "state"),
            "devices": [device],
        }
        cfg.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
        kills = 0
        for _run in range(4 * KILLS):
            daemon = Daemon(cfg, tmp_path)
            before = len(collector.data("m1"))
            await daemon.start()
            if kills >= KILLS and wanted <= stamps(collector):
                await daemon.stop()
                break
            try:
                await collector.wait_for(lambda b=before: len(collector.data("m1")) > b, timeout=30, what="a poll")  # type: ignore[misc]
                stall = rng.random() < 0.5
                # A random moment after this run's first poll (no test waits on it: any moment is valid).
                await asyncio.sleep(rng.uniform(0.0, 0.8))
                if stall:
                    proxy.stall()
                    await asyncio.sleep(rng.uniform(0.2, 0.6))  # polls go on; their messages hang
            finally:
                await daemon.kill()
                proxy.cut()  # what the stalled link held dies with the process
                proxy.resume()
            kills += 1
        else:
            raise AssertionError(f"the backfill did not complete in {4 * KILLS} runs")
    await proxy.stop()
    got = stamps(collector)
    assert kills >= KILLS
    missing = sorted(wanted - got)
    assert not missing, f"holes after {kills} kills: {missing[:5]} ({len(missing)} entries)"
    ordered = sorted(t for t in got if t >= min(wanted))
    assert all(b - a == QUARTER_MS for a, b in itertools.pairwise(ordered))
