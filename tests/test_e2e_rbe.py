"""Report by exception end to end: Modbus twin + mosquitto + `edgegw run` as a process + a subscriber."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.twin import ModbusTwin
from tests.harness import Collector, Mosquitto
from tests.test_e2e_modbus import config, daemon, device_yaml, twin_points

pytestmark = pytest.mark.slow

INTERVAL_MS = 200
MAX_AGE_MS = 1000
VOLTAGE = "mains.voltage_l1"
PUBLISHED = {VOLTAGE, "mains.frequency", "ch1.current", "ch1.energy", "breaker.closed"}


@pytest.fixture
async def twin() -> AsyncIterator[ModbusTwin]:
    async with ModbusTwin(twin_points(), units=[1, 2], port=0, update_interval=0.1) as t:
        for unit in (1, 2):
            t.set_value(VOLTAGE, 231.5, unit)
            t.set_value("mains.frequency", 50.01, unit)
            t.set_value("ch1.current", 12.3, unit)
            t.set_value("ch1.energy", 45000.0, unit)
            t.set_value("breaker.closed", True, unit)
        yield t


def publications(collector: Collector, device: str, point: str) -> list[tuple[int, Any]]:
    """(message ts, value) of every data message of `device` that carried `point`."""
    return [(msg["ts"], r["value"]) for msg in collector.data(device) for r in msg["readings"] if r["point"] == point]


async def test_constant_value_once_per_max_age_and_a_step_within_one_poll(
    tmp_path: Path, broker: Mosquitto, collector: Collector, twin: ModbusTwin
) -> None:
    devices = (
        # On the mixed device only the voltage reports by exception: 1 V deadband, 1 s max_age.
        device_yaml("mixed", twin.port, 1).replace(
            '"phase": "L1-N"}', '"phase": "L1-N", "deadband": 1, "max_age": "1s"}'
        )
        + device_yaml("plain", twin.port, 1)
        + device_yaml("quiet", twin.port, 2, extra="    report: {deadband: 1, max_age: 1s}\n")
    )
    cfg = config(tmp_path, broker, devices)
    async with daemon(cfg, tmp_path) as d:
        # A constant voltage: published at the first poll, then once per max_age (3 s = 15 polls).
        await collector.wait_for(
            lambda: len(publications(collector, "mixed", VOLTAGE)) >= 4, timeout=30, what="four voltage publications"
        )
        stamps = [ts for ts, _v in publications(collector, "mixed", VOLTAGE)]
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        # Never before max_age; at the first poll after it (one interval late at most, plus scheduling slack).
        assert all(MAX_AGE_MS <= g <= MAX_AGE_MS + INTERVAL_MS + 400 for g in gaps), gaps
        mixed = collector.data("mixed")
        assert len(mixed) > 3 * len(stamps), "the other points keep every message going"
        # The points without RBE are in every message, exactly as before.
        assert all({r["point"] for r in m["readings"]} >= PUBLISHED - {VOLTAGE} for m in mixed)
        assert all({r["point"] for r in m["readings"]} == PUBLISHED for m in collector.data("plain"))

        # A move within the deadband is not published before max_age ...
        seen = len(collector.data("mixed"))
        twin.set_value(VOLTAGE, 232.0, 1)
        await collector.wait_for(lambda: len(collector.data("mixed")) >= seen + 3, what="three more polls")
        # ... a step past it is published by the first poll that reads it.
        before = len(collector.data("mixed"))
        set_at = time.time() * 1000
        twin.set_value(VOLTAGE, 240.0, 1)
        await collector.wait_for(
            lambda: any(v == 240.0 for _ts, v in publications(collector, "mixed", VOLTAGE)), what="the step"
        )
        after = collector.data("mixed")[before:]
        # The first message after set_value may come from a poll that read the register before it.
        first = next(
            k for k, m in enumerate(after) if any(r["point"] == VOLTAGE and r["value"] == 240.0 for r in m["readings"])
        )
        assert first <= 1, [m["readings"] for m in after[: first + 1]]
        assert after[first]["ts"] - set_at <= 2 * INTERVAL_MS + 400
        # Only max_age publications of 232.0 (the held value) came between the first 231.5 and the step.
        held = [v for _ts, v in publications(collector, "mixed", VOLTAGE)]
        assert set(held) <= {231.5, 232.0, 240.0}
        pairs = itertools.pairwise(publications(collector, "mixed", VOLTAGE))
        gaps_before_step = [b - a for (a, _va), (b, vb) in pairs if vb != 240.0]
        assert all(g >= MAX_AGE_MS for g in gaps_before_step), gaps_before_step

        # A device whose points all report by exception still sends one message per poll (maybe empty).
        await collector.wait_for(
            lambda: any(not m["readings"] for m in collector.data("quiet")), what="an empty message from quiet"
        )
        quiet = collector.data("quiet")
        seqs = [m["seq"] for m in quiet]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "seq stays continuous"
        assert {r["point"] for r in quiet[0]["readings"]} == PUBLISHED  # everything once at start

        # meta says which points use it, with their rule.
        meta = (await collector.wait_for(lambda: collector.on("/mixed/meta"), what="meta"))[-1].json()
        report = {p["id"]: p.get("report") for p in meta["points"]}
        assert report[VOLTAGE] == {"deadband": 1.0, "max_age": 1.0}
        assert all(report[p] is None for p in PUBLISHED - {VOLTAGE})
        quiet_meta = (await collector.wait_for(lambda: collector.on("/quiet/meta"), what="meta"))[-1].json()
        assert {p["id"]: p["report"] for p in quiet_meta["points"]}["ch1.energy"] == {"deadband": 0, "max_age": 1.0}

        # A failed poll is published whole, every time.
        twin.faults.set("silent", target=2)
        await collector.wait_for(
            lambda: (
                sum(1 for m in collector.data("quiet") if m["readings"] and m["readings"][0]["quality"] == "bad") >= 2
            ),
            what="two failed polls published",
        )
        failed = [m for m in collector.data("quiet") if m["readings"] and m["readings"][0]["quality"] == "bad"]
        assert all({r["point"] for r in m["readings"]} == PUBLISHED for m in failed)
        twin.faults.clear(2)
        recovered = len(collector.data("quiet"))
        await collector.wait_for(
            lambda: any(
                {r["point"] for r in m["readings"]} == PUBLISHED and m["readings"][0]["quality"] == "good"
                for m in collector.data("quiet")[recovered:]
            ),
            what="everything again after the recovery",
        )
        assert await d.stop() == 0
