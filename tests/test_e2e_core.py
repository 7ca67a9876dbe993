"""End to end, promises the core makes for every driver: twins from the registry, mosquitto, the daemon.

- a clean stop leaves every device's retained status `offline` with reason `stopped`;
- a value a device pushes keeps the quality the device gives it (BACnet COV of an out-of-service
  object arrives `uncertain`, as the same value polled does);
- a counter published as a rate survives a 32-bit wrap and an agent restart without a spike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import aiomqtt
import pytest
import yaml

from gateway.registry import DRIVERS
from tests.harness import Collector, Daemon, Mosquitto

if TYPE_CHECKING:
    from drivers.bacnet.twin import BacnetTwin
    from drivers.snmp.twin import SnmpTwin

pytestmark = pytest.mark.slow


def site(tmp: Path, broker: Mosquitto, devices: list[dict[str, Any]], **sections: Any) -> Path:
    cfg = tmp / "site.yaml"
    body = {"site": "lab", "mqtt": {"url": broker.url}, "state_dir": str(tmp / "state"), **sections}
    cfg.write_text(yaml.safe_dump({**body, "devices": devices}, sort_keys=False), encoding="utf-8")
    return cfg


async def retained(broker: Mosquitto, topic: str) -> dict[str, Any]:
    """What a consumer connecting now is given on `topic`."""
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="late-consumer") as client:
        await client.subscribe(topic, qos=1)
        async for msg in client.messages:
            assert msg.retain
            body: dict[str, Any] = json.loads(bytes(msg.payload))
            return body
    raise AssertionError("no retained message")


async def test_a_clean_stop_leaves_every_device_stopped(
    tmp_path: Path, broker: Mosquitto, collector: Collector
) -> None:
    twin_cls = DRIVERS["modbus"].twin_class
    points = [{"id": "v", "address": 0, "type": "float32", "quantity": "voltage", "unit": "V"}]
    async with twin_cls.create(points=points, units=[1, 2]) as twin:
        devices = [
            {"id": f"m{unit}", **twin.device_config(unit), "interval": "1s", "timeout": "500ms"} for unit in (1, 2)
        ]
        daemon = Daemon(site(tmp_path, broker, devices), tmp_path)
        await daemon.start()
        try:
            await collector.wait_for(lambda: collector.latest("m1", "v") and collector.latest("m2", "v"), what="data")
        finally:
            assert await daemon.stop() == 0
    for dev in ("m1", "m2"):
        status = await retained(broker, f"edgegw/lab/{dev}/status")
        assert status["state"] == "offline" and status["reason"] == "stopped", status
        assert status["last_success"] is not None
    gateway = await retained(broker, "edgegw/lab/gateway/status")
    assert gateway["state"] == "offline" and gateway["reason"] == "stopped"


async def test_a_cov_of_an_out_of_service_object_arrives_uncertain(
    tmp_path: Path, broker: Mosquitto, collector: Collector
) -> None:
    twin_cls = cast("type[BacnetTwin]", DRIVERS["bacnet"].twin_class)
    async with twin_cls.create("schneider-bcpme-bacnet", vars={"channels": 4}, panels=1, animate=False) as twin:
        # Polled every 30 s: anything that arrives within seconds of a change was pushed.
        device = {"id": "p1", **twin.device_config(), "interval": "30s", "timeout": "500ms", "cov": True}
        daemon = Daemon(site(tmp_path, broker, [device], bacnet=twin.section_config()), tmp_path)
        point = "panel1.mains.frequency"
        await daemon.start()
        try:
            first = await collector.wait_for(lambda: collector.latest("p1", point), what="the first poll")
            assert first["quality"] == "good"
            polls = len(collector.data("p1"))
            twin.set_flags(50001, point, [0, 0, 0, 1])  # out of service: no longer the process value
            pushed = await collector.wait_for(
                lambda: next(
                    (m for m in collector.data("p1")[polls:] for r in m["readings"] if r["quality"] == "uncertain"),
                    None,
                ),
                timeout=15,
                what="the COV notification of the out-of-service object",
            )
            assert len(pushed["readings"]) == 1  # pushed, not polled: a poll carries every point
            reading = pushed["readings"][0]
            assert reading["point"] == point and reading["value"] == pytest.approx(first["value"], abs=1e-3)
        finally:
            await daemon.stop()


async def test_counter_rates_across_a_32_bit_wrap_and_an_agent_restart(
    tmp_path: Path, broker: Mosquitto, collector: Collector
) -> None:
    # 1000 octets a second, 3000 below the top: the counter wraps about 3 s after the start. (Sim
    # hints are engineering units: bits, with the point's scale of 8.)
    rate_point = {
        "id": "in_rate",
        "oid": "1.3.6.1.4.1.9999.2.1.0",
        "type": "counter32",
        "rate": "per_second",
        "scale": 8,
        "quantity": "traffic",
        "unit": "bit/s",
        "sim": {"value": (2**32 - 3000) * 8, "rate": 8000},
    }
    twin_cls = cast("type[SnmpTwin]", DRIVERS["snmp"].twin_class)
    async with twin_cls.create(points=[rate_point]) as twin:
        device = {"id": "sw1", **twin.device_config(), "interval": "1s", "timeout": "500ms"}
        daemon = Daemon(site(tmp_path, broker, [device]), tmp_path)

        def rates() -> list[dict[str, Any]]:
            return [r for m in collector.data("sw1") for r in m["readings"] if r["point"] == "in_rate"]

        await daemon.start()
        try:
            # Past the wrap: a few good rates in a row after it.
            await collector.wait_for(lambda: sum(r["quality"] == "good" for r in rates()) >= 6, what="rates")
            before = len(rates())
            twin.restart()  # sysUpTime and every counter from 0 again
            await collector.wait_for(
                lambda: sum(r["quality"] == "good" for r in rates()[before:]) >= 3, what="rates after the restart"
            )
        finally:
            await daemon.stop()
    got = rates()
    assert got[0]["quality"] == "uncertain"  # the first sample has no rate yet
    good = [r["value"] for r in got if r["quality"] == "good"]
    # 8000 bit/s; a 1 s poll on a loaded machine may see a few hundred ms either way, never a spike.
    assert all(2000 <= v <= 20_000 for v in good), good
    after = got[before:]
    assert any(r["quality"] == "uncertain" for r in after[:3]), after[:3]  # the restart: no rate, no spike
