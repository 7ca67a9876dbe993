"""End to end over DLMS/COSEM: the meter twin, mosquitto, the daemon as a process.

Registers with units over an HLS-GMAC association, a load profile backfilled after the daemon was
stopped for a simulated day with no duplicate and no missing entry, and two meters on one HDLC
line with one of them dead.
"""

from __future__ import annotations

import itertools
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from drivers.dlms.twin import DlmsTwin
from tests.harness import Collector, Daemon, Mosquitto

pytestmark = pytest.mark.slow

KEYS = (
    "authentication_key = D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF\n"
    "encryption_key = 000102030405060708090A0B0C0D0E0F\n"
    "system_title = 4544473030303031\n"
)
QUARTER_MS = 15 * 60 * 1000


def site(tmp: Path, broker: Mosquitto, devices: str, extra: str = "") -> Path:
    cfg = tmp / "site.yaml"
    cfg.write_text(
        f"site: lab\nmqtt: {{url: '{broker.url}'}}\nstate_dir: {tmp / 'state'}\n{extra}devices:\n{devices}",
        encoding="utf-8",
    )
    return cfg


def profile_stamps(collector: Collector, device: str, point: str) -> list[int]:
    return [r["ts"] for m in collector.data(device) for r in m["readings"] if r["point"] == point]


async def test_hls_registers_and_load_profile_backfill_across_a_stopped_day(
    tmp_path: Path, broker: Mosquitto, collector: Collector
) -> None:
    keys = tmp_path / "meter.keys"
    keys.write_text(KEYS, encoding="utf-8")
    t0 = (int(time.time()) // 900) * 900 - 86400 * 3
    async with DlmsTwin("sensemi-sed302", transport="wrapper", auth="high_gmac", keys=keys, start=t0) as twin:
        twin.freeze()
        device = (
            "  - id: sed302-1\n    driver: dlms\n    profile: sensemi-sed302\n"
            f"    tcp: {{host: 127.0.0.1, port: {twin.port}}}\n    transport: wrapper\n    auth: high_gmac\n"
            "    keys_file: meter.keys\n    interval: 1s\n    timeout: 1s\n    backfill: 2d\n"
        )
        cfg = site(tmp_path, broker, device)
        lp = "load_profile.active_import"
        daemon = Daemon(cfg, tmp_path)
        await daemon.start()
        try:
            await collector.wait_for(lambda: collector.latest("sed302-1", "voltage.l1"), what="registers")
            volts = collector.latest("sed302-1", "voltage.l1")
            assert volts is not None and volts["quality"] == "good" and volts["unit"] == "V"
            assert 100 < volts["value"] < 400
            energy = collector.latest("sed302-1", "energy.active_import")
            assert energy is not None and energy["unit"] == "Wh" and energy["quality"] == "good"
            await collector.wait_for(
                lambda: len(profile_stamps(collector, "sed302-1", lp)) >= 25, what="load profile entries"
            )
        finally:
            assert await daemon.stop() == 0

        # The gateway is down while the meter lives through a day.
        twin.advance(days=1)
        daemon = Daemon(cfg, tmp_path)
        await daemon.start()
        try:
            end_ms = (t0 + 86400) * 1000
            await collector.wait_for(
                lambda: max(profile_stamps(collector, "sed302-1", lp)) >= end_ms, timeout=40, what="the backfilled day"
            )
        finally:
            await daemon.stop()
    stamps = profile_stamps(collector, "sed302-1", lp)
    dupes = [ts for ts, n in Counter(stamps).items() if n > 1]
    assert not dupes, f"entries published twice: {dupes[:5]}"
    ordered = sorted(stamps)
    gaps = [(a, b) for a, b in itertools.pairwise(ordered) if b - a != QUARTER_MS]
    assert not gaps, f"holes in the 15-minute series: {gaps[:5]}"
    assert ordered[0] <= (t0 - 2 * 86400) * 1000 + QUARTER_MS and ordered[-1] == (t0 + 86400) * 1000


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is needed for a pty pair")
async def test_two_meters_on_one_hdlc_line_one_dead(
    tmp_path: Path, broker: Mosquitto, collector: Collector, line: tuple[str, str]
) -> None:
    meter_side, gateway_side = line
    async with DlmsTwin("sensemi-sed102", transport="hdlc", serial=meter_side, addresses=(17, 18)) as twin:
        twin.kill(18)
        devices = "".join(
            f"  - id: meter-{addr}\n    driver: dlms\n    profile: sensemi-sed102\n    bus: rs485-1\n"
            f"    physical_address: {addr}\n    interval: 1s\n    timeout: 300ms\n    offline_after: 1\n"
            f"    close_after_poll: false\n"
            for addr in (17, 18)
        )
        bus = f"buses:\n  - {{id: rs485-1, serial: {{port: {gateway_side}, baudrate: 9600}}}}\n"
        daemon = Daemon(site(tmp_path, broker, devices, extra=bus), tmp_path)
        await daemon.start()
        try:
            await collector.wait_for(
                lambda: any(m.json()["state"] == "offline" for m in collector.on("/meter-18/status")),
                what="the dead meter offline",
            )
            before = len(collector.data("meter-17"))
            await collector.wait_for(
                lambda: len(collector.data("meter-17")) >= before + 3, timeout=10, what="the live meter keeps polling"
            )
            volts = collector.latest("meter-17", "voltage.l1")
            assert volts is not None and volts["quality"] == "good" and volts["unit"] == "V"
        finally:
            await daemon.stop()
