"""End to end over BACnet/IP: the BCPME twin (a router with two routed panels), mosquitto, the daemon."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from drivers.bacnet.twin import BacnetTwin
from tests.harness import Collector, Daemon, Mosquitto
from tests.test_e2e_snmp import spray_udp

pytestmark = pytest.mark.slow


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def panel(panel_no: int, twin: BacnetTwin, interval: str, cov: bool) -> str:
    return (
        f"  - id: bcpme-p{panel_no}\n    driver: bacnet\n    profile: schneider-bcpme-bacnet\n"
        f"    profile_vars: {{panel: {panel_no}, channels: 4}}\n    address: {twin.address}\n"
        f"    network: {twin.network}\n    mac: {panel_no}\n    device_instance: {50000 + panel_no}\n"
        f"    interval: {interval}\n    timeout: 500ms\n    offline_after: 1\n    max_backoff: 1s\n"
        f"    cov: {str(cov).lower()}\n"
    )


async def test_bcpme_over_bacnet(tmp_path: Path, broker: Mosquitto, collector: Collector) -> None:
    async with BacnetTwin(port=free_udp_port(), panels=2, animate=False, profile_vars={"channels": 4}) as twin:
        twin.set_value(50001, "analog-value,2001", 50.02)  # panel 1 frequency
        twin.set_value(50002, "analog-value,2001", 49.98)
        local_port = free_udp_port()
        cfg = tmp_path / "site.yaml"
        cfg.write_text(
            f"site: lab\nmqtt: {{url: '{broker.url}'}}\nstate_dir: {tmp_path / 'state'}\n"
            f"bacnet: {{local_address: '127.0.0.1/24:{local_port}', device_instance: 4194001}}\n"
            "devices:\n" + panel(1, twin, "30s", cov=True) + panel(2, twin, "1s", cov=False),
            encoding="utf-8",
        )
        daemon = Daemon(cfg, tmp_path)
        await daemon.start()
        try:
            await collector.wait_for(
                lambda: (
                    collector.latest("bcpme-p1", "panel1.mains.frequency")
                    and collector.latest("bcpme-p2", "panel2.mains.frequency")
                ),
                what="both routed panels",
            )
            f1 = collector.latest("bcpme-p1", "panel1.mains.frequency")
            f2 = collector.latest("bcpme-p2", "panel2.mains.frequency")
            assert f1 is not None and f1["value"] == pytest.approx(50.02, abs=1e-4) and f1["unit"] == "Hz"
            assert f2 is not None and f2["value"] == pytest.approx(49.98, abs=1e-4)
            meta = next(m.json() for m in collector.on("/bcpme-p1/meta"))
            power = next(p for p in meta["points"] if p["id"] == "panel1.aux.power")
            assert power["unit"] == "W" and power["address"]["object"] == "analog-value,2102"

            # Garbage datagrams at the gateway's BACnet port: decoded, rejected, forgotten.
            spray_udp(local_port, 300)
            # COV: panel 1 polls every 30 s, so a change that arrives within seconds was pushed.
            twin.set_value(50001, "analog-value,2001", 50.50)
            await collector.wait_for(
                lambda: (
                    (r := collector.latest("bcpme-p1", "panel1.mains.frequency"))
                    and r["value"] == pytest.approx(50.5, abs=1e-4)
                ),
                timeout=10,
                what="the COV notification",
            )
            # A poll carries every point; a pushed change carries only what changed. (Counting messages
            # raced the initial notifications of the subscriptions on a loaded machine.)
            carrier = next(
                m for m in collector.data("bcpme-p1")
                if any(r["point"] == "panel1.mains.frequency" and r["value"] == pytest.approx(50.5, abs=1e-4)
                       for r in m["readings"])
            )  # fmt: skip
            assert len(carrier["readings"]) == 1

            # Panel 2 unreachable: offline, then back.
            twin.go_silent(50002)
            await collector.wait_for(
                lambda: any(m.json()["state"] == "offline" for m in collector.on("/bcpme-p2/status")),
                timeout=15,
                what="panel 2 offline",
            )
            await collector.wait_for(
                lambda: (r := collector.latest("bcpme-p2", "panel2.mains.frequency")) and r["quality"] == "bad",
                what="panel 2 readings bad",
            )
            twin.resume(50002)
            await collector.wait_for(
                lambda: collector.on("/bcpme-p2/status")[-1].json()["state"] == "online",
                timeout=15,
                what="panel 2 back online",
            )
        finally:
            await daemon.stop()
        assert "Traceback" not in daemon.output(), daemon.output()[-3000:]
