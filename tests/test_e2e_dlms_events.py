"""DLMS event logs end to end: events logged while the gateway is down arrive after it, each once.

The daemon polls a COSEM twin serving the shipped Sensemi SED302 profile (whose device defaults
list the standard event logs). It is stopped, the meter's clock runs on and logs a power failure,
a tamper and a relay disconnection, and the daemon is started again: each event arrives once on
`events`, stamped with the meter's time, as the log's cursor resumes from the device state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.dlms import codec
from drivers.dlms.twin import DlmsTwin
from tests.harness import Collector, Daemon, Mosquitto

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

T0 = 1773144000  # 2026-03-10 12:00:00 UTC, the twin's start


def events(collector: Collector) -> list[tuple[str, int, int, str | None]]:
    out = []
    for m in collector.on("/m1/events"):
        e: dict[str, Any] = m.json()
        if e.get("type") == "dlms_event":
            out.append((e["log"], e["ts"], e["code"], e["name"]))
    return out


async def test_events_of_an_outage_arrive_once_with_the_meters_stamps(
    tmp_path: Path, broker: Mosquitto, collector: Collector
) -> None:
    async with DlmsTwin.create("sensemi-sed302", transport="wrapper", start=T0) as twin:
        twin.clock.freeze(T0)  # the stamps below are exact
        twin.log_event(0, 1, at=T0 - 3600)  # before the gateway's first poll: read by the backfill
        device = {"id": "m1", **twin.device_config(), "interval": "300ms", "timeout": "1s", "backfill": "1d"}
        cfg = tmp_path / "site.yaml"
        body = {
            "site": "lab",
            "mqtt": {"url": f"mqtt://127.0.0.1:{broker.port}"},
            "state_dir": str(tmp_path / "state"),
            "devices": [device],
        }
        cfg.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
        first = [("standard", (T0 - 3600) * 1000, 1, "power_down")]
        daemon = Daemon(cfg, tmp_path)
        await daemon.start()
        try:
            await collector.wait_for(lambda: events(collector) == first, timeout=30, what="the backfilled event")
            polls = len(collector.data("m1"))
            # a few more polls: nothing is repeated while the meter logs nothing
            await collector.wait_for(lambda: len(collector.data("m1")) >= polls + 3, timeout=30, what="polls")
        finally:
            await daemon.stop()
        assert events(collector) == first

        # the gateway is down: the meter's clock runs on and it logs events
        twin.clock.advance(60)
        twin.power_failure(300)
        twin.clock.advance(400)
        twin.tamper()
        twin.clock.advance(5)
        assert twin.meter.action(70, "0.0.96.3.10.255", 1, codec.i8(0))[0] == 0  # remote disconnect
        twin.clock.advance(5)
        during = [
            ("standard", (T0 + 60) * 1000, 1, "power_down"),
            ("standard", (T0 + 360) * 1000, 2, "power_up"),
            ("fraud", (T0 + 460) * 1000, 44, "meter_cover_removed"),
            ("disconnector", (T0 + 465) * 1000, 62, "remote_disconnection"),
        ]
        twin.clock.run()

        daemon = Daemon(cfg, tmp_path)
        await daemon.start()
        try:
            await collector.wait_for(
                lambda: len(events(collector)) >= len(first) + len(during), timeout=30, what="the outage's events"
            )
            polls = len(collector.data("m1"))
            await collector.wait_for(lambda: len(collector.data("m1")) >= polls + 3, timeout=30, what="polls")
        finally:
            await daemon.stop()
    got = events(collector)
    assert sorted(got[len(first) :]) == sorted(during), got
    assert len(got) == len(set(got)) == len(first) + len(during)
