"""The shipped Sensemi profiles: they validate, their twin serves them, the driver reads them."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from drivers.dlms.twin import DlmsTwin
from gateway.profiles import load_profile, shipped_profiles
from tests.dlms.util import T0, device, driver, normalized, series_of

pytestmark = [pytest.mark.timeout(30)]

REPO = Path(__file__).resolve().parents[2]
PROFILES = ["sensemi-sed102", "sensemi-sed302", "sensemi-sm306", "sensemi-sm307", "sensemi-sm120b2"]


def test_all_profiles_are_shipped_and_say_they_are_assumed() -> None:
    shipped = shipped_profiles("dlms")
    assert sorted(shipped) == sorted(PROFILES)
    for name in PROFILES:
        prof = load_profile(shipped[name])
        assert prof.driver == "dlms" and prof.status == "assumed"
        assert "does not publish" in prof.source


@pytest.mark.parametrize("name", PROFILES)
async def test_profile_against_its_twin(name: str) -> None:
    async with DlmsTwin(name, start=T0) as twin:
        twin.freeze()
        dev = device([], profile=name, tcp={"host": "127.0.0.1", "port": twin.port}, backfill="100d", timeout=2.0)
        drv = driver(dev)
        raw = await asyncio.wait_for(drv.read(), 20)
        got = normalized(drv, raw)
        bad = {pid: v for pid, v in got.items() if v[1] != "good"}
        assert not bad, bad
        three_phase = name in ("sensemi-sed302", "sensemi-sm306", "sensemi-sm307")
        assert ("voltage.l3" in got) == three_phase
        assert 220 < got["voltage.l1"][0] < 240
        # the meter keeps 100 days of 15-minute entries; the first poll reads 8 chunks of 1 day
        assert len(series_of(drv, raw, "load_profile.active_import")) == 8 * 96
        billing = series_of(drv, raw, "billing.active_import")
        assert [ts for ts, _ in billing] == [1764547200000, 1767225600000, 1769904000000, 1772323200000]
        await drv.ctx.bus.close()


async def test_edgegw_simulate_entry_point() -> None:
    """`edgegw simulate sensemi-sed302 --port N` as a process, read by the driver, stopped by SIGTERM."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "simulate",
        "sensemi-sed302",
        "--port",
        str(port),
        "--start",
        "2026-03-10T12:00:00",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert b"DLMS meter twin of sensemi-sed302 (wrapper) on 127.0.0.1:" in line, line
        drv = driver(device([], profile="sensemi-sed302", tcp={"host": "127.0.0.1", "port": port}, timeout=2.0))
        got = normalized(drv, await asyncio.wait_for(drv.read(), 15))
        assert got["energy.active_import"][1] == "good"
        drift, quality = got["clock.drift"]
        assert quality == "good" and drift < -86400  # the meter clock started in the past (--start)
        await drv.stop()
        await drv.ctx.bus.close()
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
