"""End to end: commands over MQTT to the daemon, against the device twins (docs/commands.md).

Every request gets exactly one result on `.../command/result` (or its MQTT 5 response topic) and
one `command` event; a refused request never reaches the device (the twin's write log stays
empty).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import aiomqtt
import pytest
import yaml

from gateway.registry import DRIVERS
from tests.harness import REPO, Collector, Daemon, Mosquitto

if TYPE_CHECKING:
    from drivers.modbus.twin import ModbusTwin

pytestmark = pytest.mark.slow

POINTS = [
    {"id": "setpoint", "address": 0, "type": "int16", "scale": 0.1, "quantity": "temperature", "unit": "degC",
     "function": "holding", "writable": True, "min": 5, "max": 35, "step": 0.5, "sim": {"value": 21}},
    {"id": "voltage", "address": 1, "type": "float32", "quantity": "voltage", "unit": "V"},
]  # fmt: skip


def site(tmp: Path, broker: Mosquitto, devices: list[dict[str, Any]], **extra: Any) -> Path:
    cfg = tmp / "site.yaml"
    body = {"site": "lab", "mqtt": {"url": broker.url}, "state_dir": str(tmp / "state"), **extra, "devices": devices}
    cfg.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return cfg


async def send(broker: Mosquitto, device: str, body: dict[str, Any] | bytes) -> None:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=f"operator-{uuid.uuid4().hex[:8]}") as client:
        await client.publish(f"edgegw/lab/{device}/command", payload, qos=1)


def results(collector: Collector, device: str) -> list[dict[str, Any]]:
    return [m.json() for m in collector.messages if m.topic == f"edgegw/lab/{device}/command/result"]


def events(collector: Collector, device: str) -> list[dict[str, Any]]:
    return [m.json() for m in collector.on(f"/{device}/events") if m.json().get("type") == "command"]


async def test_refused_commands_never_reach_the_device(tmp_path: Path, broker: Mosquitto, collector: Collector) -> None:
    twin_cls = DRIVERS["modbus"].twin_class
    async with twin_cls.create(points=POINTS) as twin:
        device = {
            "id": "m1",
            **twin.device_config(),
            "interval": "1s",
            "timeout": "500ms",
            "commands": {"rate": 0.01, "burst": 6},
        }
        daemon = Daemon(site(tmp_path, broker, [device], commands={"enabled": True}), tmp_path)
        await daemon.start()
        try:
            await collector.wait_for(lambda: collector.latest("m1", "setpoint"), what="the first poll")
            cases: list[tuple[dict[str, Any] | bytes, str]] = [
                ({"id": "a", "point": "nope", "value": 1}, "no point 'nope'"),
                ({"id": "b", "point": "voltage", "value": 230}, "voltage is not writable"),
                ({"id": "c", "point": "setpoint", "value": 40}, "above the maximum 35"),
                ({"id": "d", "point": "setpoint", "value": 21.2}, "not a multiple of the step 0.5"),
                ({"id": "e", "point": "setpoint", "value": "warm"}, "a number is expected"),
                ({"id": "f", "point": "setpoint", "value": 20, "ts": int(time.time() * 1000) - 120_000}, "stale"),
                ({"id": "g", "action": "reset"}, "no action 'reset'"),
                ({"id": "i", "point": "nope", "value": 1}, "rate limited"),  # the 7th let in, burst 6
                (b"{not json", "not JSON"),
            ]
            for body, _ in cases:
                await send(broker, "m1", body)
            await collector.wait_for(lambda: len(results(collector, "m1")) >= len(cases), what="every result")
            got = results(collector, "m1")
            assert len(got) == len(cases)
            by_id = {r["id"]: r for r in got}
            for body, why in cases:
                result = by_id[body["id"] if isinstance(body, dict) else None]
                assert result["status"] == "rejected" and why in result["error"], (body, result)
            await collector.wait_for(lambda: len(events(collector, "m1")) >= len(cases), what="the audit events")
            assert {e["status"] for e in events(collector, "m1")} == {"rejected"}
            assert twin.writes == []
        finally:
            assert await daemon.stop() == 0
    assert "command" in daemon.output()  # the audit log line


async def test_commands_are_off_unless_enabled(tmp_path: Path, broker: Mosquitto, collector: Collector) -> None:
    twin_cls = DRIVERS["modbus"].twin_class
    async with twin_cls.create(points=POINTS) as twin:
        device = {"id": "m1", **twin.device_config(), "interval": "1s", "timeout": "500ms"}
        daemon = Daemon(site(tmp_path, broker, [device]), tmp_path)
        await daemon.start()
        try:
            await collector.wait_for(lambda: collector.latest("m1", "setpoint"), what="the first poll")
            await send(broker, "m1", {"id": "x", "point": "setpoint", "value": 20})
            # Disabled means not even subscribed: nothing answers, and the device is untouched.
            await collector.wait_for(lambda: len(collector.data("m1")) >= 3, what="polls after the request")
            assert results(collector, "m1") == [] and twin.writes == []
        finally:
            await daemon.stop()


async def result_for(collector: Collector, device: str, rid: str) -> dict[str, Any]:
    found: dict[str, Any] = await collector.wait_for(
        lambda: next((r for r in results(collector, device) if r["id"] == rid), None), what=f"the result of {rid}"
    )
    return found


async def test_bacnet_write_at_a_priority_reads_back_the_slot_and_relinquishes(
    tmp_path: Path, broker: Mosquitto, collector: Collector
) -> None:
    setpoint = {
        "id": "setpoint", "object": "analog-value,10", "quantity": "temperature", "unit": "degC",
        "writable": True, "min": 15, "max": 30, "sim": {"value": 21, "min_pres_value": 15, "max_pres_value": 30},
    }  # fmt: skip
    twin_cls = DRIVERS["bacnet"].twin_class
    async with twin_cls.create(points=[setpoint], panels=1, animate=False) as twin:
        device = {"id": "ahu", **twin.device_config(), "interval": "1s", "timeout": "500ms"}
        cfg = site(tmp_path, broker, [device], bacnet=twin.section_config(), commands={"enabled": True})
        daemon = Daemon(cfg, tmp_path)
        await daemon.start()
        try:
            await collector.wait_for(lambda: collector.latest("ahu", "setpoint"), what="the first poll")
            await send(broker, "ahu", {"id": "w1", "point": "setpoint", "value": 24.5})
            ok = await result_for(collector, "ahu", "w1")
            assert ok["status"] == "ok" and ok["value"] == 24.5, ok
            assert ok["priority"] == 8 and ok["priority_slot"] == 24.5
            assert [(w.point, w.raw, w.priority) for w in twin.writes] == [("setpoint", 24.5, 8)]
            await send(broker, "ahu", {"id": "w2", "point": "setpoint", "value": None})  # relinquish
            back = await result_for(collector, "ahu", "w2")
            assert back["status"] == "ok" and back["priority_slot"] is None and back["value"] == 21, back
            await send(broker, "ahu", {"id": "w3", "point": "setpoint", "value": 31})
            assert "above the maximum 30" in (await result_for(collector, "ahu", "w3"))["error"]
            assert len(twin.writes) == 2  # the refused one never left the gateway
            audit = await collector.wait_for(lambda: len(events(collector, "ahu")) >= 3, what="audit events")
            assert audit
            assert [e["status"] for e in events(collector, "ahu")] == ["ok", "ok", "rejected"]
        finally:
            await daemon.stop()


async def test_snmp_set_over_mqtt_is_read_back(
    tmp_path: Path, broker: Mosquitto, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    location = {"id": "location", "oid": "1.3.6.1.2.1.1.6.0", "type": "octets", "quantity": "other",
                "writable": True, "sim": {"text": "Hall A"}}  # fmt: skip
    monkeypatch.setenv("EDGEGW_TEST_WRITE_COMMUNITY", "private")
    twin_cls = DRIVERS["snmp"].twin_class
    async with twin_cls.create(points=[location], writable=["location"], write_community="private") as twin:
        device = {
            "id": "pdu",
            **twin.device_config(),
            "interval": "1s",
            "timeout": "500ms",
            "allow_set_v1_v2c": True,
            "write_community_env": "EDGEGW_TEST_WRITE_COMMUNITY",
        }
        daemon = Daemon(site(tmp_path, broker, [device], commands={"enabled": True}), tmp_path)
        await daemon.start()
        try:
            await collector.wait_for(lambda: collector.latest("pdu", "location"), what="the first poll")
            await send(broker, "pdu", {"id": "s1", "point": "location", "value": "Hall B, row 3"})
            ok = await result_for(collector, "pdu", "s1")
            assert ok["status"] == "ok" and ok["value"] == "Hall B, row 3", ok
            assert [(w.point, w.value) for w in twin.writes] == [("location", "Hall B, row 3")]
            await collector.wait_for(
                lambda: (r := collector.latest("pdu", "location")) and r["value"] == "Hall B, row 3",
                what="the next poll sees it",
            )
        finally:
            await daemon.stop()


async def test_modbus_write_over_mqtt_and_from_the_cli(tmp_path: Path, broker: Mosquitto, collector: Collector) -> None:
    twin_cls = DRIVERS["modbus"].twin_class
    async with twin_cls.create(points=POINTS) as twin:
        device = {"id": "m1", **twin.device_config(), "interval": "1s", "timeout": "500ms"}
        cfg = site(tmp_path, broker, [device], commands={"enabled": True})
        daemon = Daemon(cfg, tmp_path)
        await daemon.start()
        try:
            await collector.wait_for(lambda: collector.latest("m1", "setpoint"), what="the first poll")
            await send(broker, "m1", {"id": "w1", "point": "setpoint", "value": 22.5})
            ok = await result_for(collector, "m1", "w1")
            assert ok["status"] == "ok" and ok["value"] == 22.5, ok
            assert [(w.point, w.value, w.raw) for w in twin.writes] == [("setpoint", 22.5, [225])]
            await collector.wait_for(
                lambda: (r := collector.latest("m1", "setpoint")) and r["value"] == 22.5, what="the next poll"
            )
            event = next(e for e in events(collector, "m1") if e["id"] == "w1")
            assert event["status"] == "ok" and event["requested"] == 22.5 and event["who"]["via"] == "mqtt"
        finally:
            await daemon.stop()
        # The command line: the same policy, its own result and exit status.

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "gateway.cli", *args],
                capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
            )  # fmt: skip

        done = await asyncio.to_thread(cli, "write", "-c", str(cfg), "m1", "setpoint", "19")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["status"] == "ok" and twin.value("setpoint") == 19
        refused = await asyncio.to_thread(cli, "write", "-c", str(cfg), "m1", "setpoint", "50")
        assert refused.returncode == 2 and "above the maximum" in json.loads(refused.stdout)["error"]
        assert "command" in refused.stderr and "cli" in refused.stderr  # the audit line
        assert len(twin.writes) == 2


async def test_a_command_storm_leaves_polling_on_time_and_answers_every_request(
    tmp_path: Path, broker: Mosquitto, collector: Collector
) -> None:
    """100 requests in a second to three devices on one RS-485 line: 100 results, polls on time."""
    twin_cls = cast("type[ModbusTwin]", DRIVERS["modbus"].twin_class)
    async with twin_cls.create(points=POINTS, units=[1, 2, 3], serial="pty", baudrate=19200) as twin:
        devices = [
            {"id": f"u{unit}", **twin.device_config(unit), "interval": "500ms", "timeout": "300ms"}
            for unit in (1, 2, 3)
        ]
        cfg = site(tmp_path, broker, devices, buses=[twin.bus_config()], commands={"enabled": True})
        daemon = Daemon(cfg, tmp_path)
        await daemon.start()
        try:
            await collector.wait_for(
                lambda: all(collector.latest(f"u{u}", "setpoint") for u in (1, 2, 3)), what="polls"
            )
            start_ms = int(time.time() * 1000)
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="storm") as client:
                for n in range(100):
                    body = {"id": f"s{n}", "point": "setpoint", "value": 10 + (n % 40) / 2}
                    await client.publish(f"edgegw/lab/u{n % 3 + 1}/command", json.dumps(body).encode(), qos=1)
                    await asyncio.sleep(0.01)
            got = await collector.wait_for(
                lambda: (r := [x for u in (1, 2, 3) for x in results(collector, f"u{u}")]) and len(r) >= 100 and r,
                timeout=30,
                what="100 results",
            )
            # Polls during the next 6 s, counted by their own timestamps.
            await collector.wait_for(
                lambda: all(any(m["ts"] >= start_ms + 6000 for m in collector.data(f"u{u}")) for u in (1, 2, 3)),
                timeout=30,
                what="6 s of polls after the storm began",
            )
        finally:
            await daemon.stop()
    assert len(got) == 100 and len({r["id"] for r in got}) == 100
    statuses = {r["status"] for r in got}
    assert "ok" in statuses and statuses <= {"ok", "rejected"}  # the rest rate limited, none lost
    for u in (1, 2, 3):
        polls = [m for m in collector.data(f"u{u}") if start_ms <= m["ts"] < start_ms + 6000]
        assert len(polls) >= 0.9 * 12, (u, len(polls))  # every 500 ms: 12 in 6 s, within 10 %


async def test_mqtt5_response_topic_and_correlation_data(
    tmp_path: Path, broker: Mosquitto, collector: Collector
) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    twin_cls = DRIVERS["modbus"].twin_class
    async with twin_cls.create(points=POINTS) as twin:
        device = {"id": "m1", **twin.device_config(), "interval": "1s", "timeout": "500ms"}
        cfg = site(tmp_path, broker, [device], commands={"enabled": True})
        body = yaml.safe_load(cfg.read_text(encoding="utf-8"))
        body["mqtt"]["protocol"] = "5"
        cfg.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
        daemon = Daemon(cfg, tmp_path)
        await daemon.start()
        try:
            await collector.wait_for(lambda: collector.latest("m1", "setpoint"), what="the first poll")
            v5 = aiomqtt.ProtocolVersion.V5
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="scada", protocol=v5) as client:
                await client.subscribe("replies/scada", qos=1)
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.ResponseTopic = "replies/scada"
                props.CorrelationData = b"\x00\x01corr"
                props.UserProperty = [("client_id", "scada")]
                request = json.dumps({"point": "setpoint", "value": 23}).encode()  # no id: MQTT 5 callers may omit it
                await client.publish("edgegw/lab/m1/command", request, qos=1, properties=props)
                async with asyncio.timeout(15):
                    async for msg in client.messages:
                        answer = json.loads(bytes(msg.payload))
                        correlation = getattr(msg.properties, "CorrelationData", None)
                        assert correlation == b"\x00\x01corr"
                        break
            assert answer["status"] == "ok" and answer["value"] == 23 and answer["id"] is None
            assert results(collector, "m1") == []  # answered on the response topic only
            event = await collector.wait_for(lambda: events(collector, "m1"), what="the audit event")
            assert event[0]["who"] == {"via": "mqtt", "client_id": "scada"}
        finally:
            await daemon.stop()


async def test_dlms_scaled_register_write_and_relay_actions(
    tmp_path: Path, broker: Mosquitto, collector: Collector
) -> None:
    """A register with a scaler of 1 (tens of watts) written in watts; the relay opened and closed."""
    limit = {"id": "demand_limit", "obis": "0.0.17.0.0.255", "class": 3, "quantity": "active_power", "unit": "W",
             "writable": True, "max": 20000, "sim": {"value": 5000, "scaler": 1}}  # fmt: skip
    twin_cls = DRIVERS["dlms"].twin_class
    async with twin_cls.create(
        "sensemi-sed102", points=[limit], transport="wrapper", writable=["demand_limit"]
    ) as twin:
        device = {"id": "sed", **twin.device_config(), "interval": "1s", "timeout": "1s"}
        daemon = Daemon(site(tmp_path, broker, [device], commands={"enabled": True}), tmp_path)
        await daemon.start()
        try:
            await collector.wait_for(lambda: collector.latest("sed", "demand_limit"), what="the first poll")
            await send(broker, "sed", {"id": "l1", "point": "demand_limit", "value": 4200})
            ok = await result_for(collector, "sed", "l1")
            assert ok["status"] == "ok" and ok["value"] == 4200, ok
            assert twin.value("demand_limit") == 4200  # 420 x 10^1 on the meter, not 4200 x 10^1
            await send(broker, "sed", {"id": "l2", "point": "demand_limit", "value": 4205})
            assert "not representable" in (await result_for(collector, "sed", "l2"))["error"]
            await send(broker, "sed", {"id": "off", "action": "remote_disconnect"})
            assert (await result_for(collector, "sed", "off"))["status"] == "ok"
            await collector.wait_for(
                lambda: (r := collector.latest("sed", "disconnect.output_state")) and r["value"] is False,
                what="the relay open in the next poll",
            )
            await send(broker, "sed", {"id": "on", "action": "remote_reconnect"})
            assert (await result_for(collector, "sed", "on"))["status"] == "ok"
            await send(broker, "sed", {"id": "clk", "action": "set_clock"})
            assert (await result_for(collector, "sed", "clk"))["status"] == "ok"
            # The clock is set by SET (attribute 2 of class 8), the relay by ACTION (methods 1 and 2).
            assert [(w.point.split(":")[0], w.action) for w in twin.writes][1:] == [
                ("0.0.96.3.10.255", True),
                ("0.0.96.3.10.255", True),
                ("clock.drift", False),  # the twin names the clock's write after the profile's clock point
            ]
        finally:
            await daemon.stop()
