"""End to end over SNMP: the BCPME agent twin, mosquitto, the daemon; polled values and a trap as an event."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from drivers.snmp.twin import SnmpTwin
from tests.harness import Collector, Daemon, Mosquitto

pytestmark = pytest.mark.slow


def spray_udp(port: int, count: int, seed: int = 7) -> None:
    """Send random datagrams to 127.0.0.1:port: raw, shaped like SNMP's BER, or like a BACnet/IP BVLL."""
    rng = random.Random(seed)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(count):
            body = rng.randbytes(rng.randint(0, 300))
            shape = rng.random()
            if shape < 0.33:
                body = b"\x30" + bytes([min(len(body), 127)]) + body
            elif shape < 0.66:
                body = (
                    b"\x81" + bytes([rng.choice([0x0A, 0x0B, 0x04, 0x05])]) + (len(body) + 4).to_bytes(2, "big") + body
                )
            s.sendto(body, ("127.0.0.1", port))


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_bcpme_over_snmp_with_a_trap(tmp_path: Path, broker: Mosquitto, collector: Collector) -> None:
    trap_port = free_udp_port()
    (tmp_path / "community").write_text("s3cret-community\n", encoding="utf-8")
    async with SnmpTwin.create(
        "schneider-bcpme-snmp", community="s3cret-community", vars={"panels": 1, "channels": 4}
    ) as twin:
        twin.set_value("1.3.6.1.4.1.3833.1.30.1.3.1.0", 5002, syntax="gauge32")  # 50.02 Hz, raw 0.01 Hz
        cfg = tmp_path / "site.yaml"
        cfg.write_text(
            f"site: lab\nmqtt: {{url: '{broker.url}'}}\nstate_dir: {tmp_path / 'state'}\n"
            f"snmp:\n  traps: {{listen: '127.0.0.1:{trap_port}', communities_env: TRAP_COMMUNITIES}}\n"
            "devices:\n"
            "  - id: bcpme-snmp\n    driver: snmp\n    profile: schneider-bcpme-snmp\n"
            "    profile_vars: {panels: 1, channels: 4}\n"
            f"    host: 127.0.0.1\n    port: {twin.port}\n    version: 2c\n    community_file: community\n"
            "    interval: 1s\n    timeout: 500ms\n",
            encoding="utf-8",
        )
        daemon = Daemon(cfg, tmp_path, env={"TRAP_COMMUNITIES": "trapcomm"})
        await daemon.start()
        try:
            await collector.wait_for(lambda: collector.latest("bcpme-snmp", "panel1.mains.frequency"), what="data")
            freq = collector.latest("bcpme-snmp", "panel1.mains.frequency")
            assert freq is not None and freq["value"] == 50.02 and freq["unit"] == "Hz" and freq["quality"] == "good"
            good = [r for r in collector.data("bcpme-snmp")[-1]["readings"] if r["quality"] == "good"]
            assert len(good) > 10

            # Garbage on the trap port first: the listener must shrug it off and still take the inform.
            spray_udp(trap_port, 300)
            acked = await twin.send_trap(
                ("127.0.0.1", trap_port),
                varbinds=[("1.3.6.1.4.1.3833.1.30.1.2.1.0", 3)],
                inform=True,
                community="trapcomm",
            )
            assert acked, "the inform was not acknowledged"
            events = await collector.wait_for(lambda: collector.on("/bcpme-snmp/events"), what="the event")
            event = events[0].json()
            assert event["type"] == "inform" and event["source"].startswith("127.0.0.1:")
            assert any(vb["oid"] == "1.3.6.1.4.1.3833.1.30.1.2.1.0" and vb["value"] == 3 for vb in event["varbinds"])
        finally:
            await daemon.stop()
        assert "s3cret-community" not in daemon.output()
        assert "Traceback" not in daemon.output(), daemon.output()[-4000:]
