"""Load profile 2 (1.0.99.2.0.255) of the Sensemi profiles: read where the meter has it, as it captures it.

The three-phase twins carry it (10-minute power-quality captures: voltage and current per phase,
power factor, frequency); the single-phase ones do not, and their profiles leave it off unless
asked (docs/dlms.md, "Load profile 2").
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from drivers.dlms.twin import DlmsTwin
from tests.dlms.util import T0, RecordingLog, device, driver, normalized, series_of

pytestmark = [pytest.mark.timeout(60)]

LP2 = "1.0.99.2.0.255"
STEP_MS = 600_000  # the twins' capture period of load profile 2
THREE_PHASE_COLUMNS = [
    *(f"load_profile_2.{q}.l{p}" for p in (1, 2, 3) for q in ("voltage", "current")),
    "load_profile_2.power_factor",
    "load_profile_2.frequency",
]


@pytest.mark.parametrize("name", ["sensemi-sed302", "sensemi-sm306", "sensemi-sm307"])
async def test_a_three_phase_meter_gives_load_profile_2_incrementally(name: str) -> None:
    t0_ms = int(T0 * 1000)
    async with DlmsTwin(name, start=T0) as twin:
        twin.freeze()
        dev = device([], profile=name, tcp={"host": "127.0.0.1", "port": twin.port}, backfill="6h", timeout=2.0)
        drv = driver(dev)
        # the meter lists it in its association: `--discover` offers its columns
        found = await asyncio.wait_for(drv.discover(), 20)
        columns = {p.get("column") for p in found if p.get("obis") == LP2}
        assert {"1.0.32.7.0.255", "1.0.71.7.0.255", "1.0.13.7.0.255", "1.0.14.7.0.255"} <= columns

        raw = await asyncio.wait_for(drv.read(), 20)
        got = normalized(drv, raw)
        assert all(got[pid][1] == "good" for pid in THREE_PHASE_COLUMNS), {p: got.get(p) for p in THREE_PHASE_COLUMNS}
        # the last 6 hours (the backfill) of 10-minute captures, stamped with the meter's capture times
        # (the twin froze a few ms after T0, so the capture at exactly T0 - 6h may fall just outside)
        for pid in THREE_PHASE_COLUMNS:
            stamps = [ts for ts, _ in series_of(drv, raw, pid)]
            assert stamps and stamps[0] - (t0_ms - 6 * 3600_000) in (0, STEP_MS), pid
            assert stamps == list(range(stamps[0], t0_ms + 1, STEP_MS)), pid
        volts = [v for _, v in series_of(drv, raw, "load_profile_2.voltage.l3")]
        assert all(200 < v < 260 for v in volts)
        assert all(49 < v < 51 for _, v in series_of(drv, raw, "load_profile_2.frequency"))
        # the newest capture is what the meter's register shows at that moment
        assert got["load_profile_2.voltage.l1"][0] == pytest.approx(twin.value("voltage.l1"), abs=0.1)

        # nothing new, then only the captures since the cursor
        raw = await asyncio.wait_for(drv.read(), 20)
        assert series_of(drv, raw, "load_profile_2.voltage.l1") == []
        twin.advance(minutes=30)
        raw = await asyncio.wait_for(drv.read(), 20)
        new = [ts for ts, _ in series_of(drv, raw, "load_profile_2.current.l2")]
        assert new == [t0_ms + STEP_MS, t0_ms + 2 * STEP_MS, t0_ms + 3 * STEP_MS]
        await drv.stop()
        await drv.ctx.bus.close()


@pytest.mark.parametrize("name", ["sensemi-sed102", "sensemi-sm120b2"])
async def test_a_single_phase_meter_without_it(name: str) -> None:
    async with DlmsTwin(name, start=T0) as twin:
        twin.freeze()
        base: dict[str, Any] = {
            "profile": name,
            "tcp": {"host": "127.0.0.1", "port": twin.port},
            "backfill": "6h",
            "timeout": 2.0,
        }
        # the profile's default leaves it off: nothing about it is read, everything else is good
        drv = driver(device([], **base))
        assert not [p for p in drv.ctx.points if p.id.startswith("load_profile_2")]
        found = await asyncio.wait_for(drv.discover(), 20)
        assert not [p for p in found if p.get("obis") == LP2]
        got = normalized(drv, await asyncio.wait_for(drv.read(), 20))
        assert all(quality == "good" for _, quality in got.values()), got
        await drv.stop()

        # switched on for a meter that lacks it: those points are bad, logged once; the rest reads on
        log = RecordingLog()
        drv = driver(device([], **base, profile_vars={"load_profile_2": 1}), bus=drv.ctx.bus, log=log)
        for _ in range(2):
            got = normalized(drv, await asyncio.wait_for(drv.read(), 20))
            lp2 = {pid: v for pid, v in got.items() if pid.startswith("load_profile_2")}
            assert len(lp2) == 4 and all(quality == "bad" for _, quality in lp2.values()), lp2
            assert got["energy.active_import"][1] == "good" and got["voltage.l1"][1] == "good"
        assert log.events("warning").count("dlms point unreadable") == 4
        await drv.stop()
        await drv.ctx.bus.close()
