"""Traps and informs from twins to the runtime's listener, routed to devices as events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog

from drivers.snmp.config import SnmpSection
from drivers.snmp.driver import SnmpDriver
from drivers.snmp.runtime import SnmpRuntime
from drivers.snmp.twin import DEFAULT_TRAP_OID, SnmpTwin, V3User
from tests.snmp.util import AUTH_KEY, PRIV_KEY, Events, device, driver, free_udp_port, points, wait_until

TWIN_ENGINE = "80001f8880aabbccddeeff0011"
TRAP_OID = ".".join(str(a) for a in DEFAULT_TRAP_OID)
UPTIME = points({"id": "up", "oid": "1.3.6.1.2.1.1.3.0", "quantity": "uptime"})


def section(engine_ids: list[str]) -> SnmpSection:
    return SnmpSection.model_validate(
        {
            "traps": {
                "listen": f"127.0.0.1:{free_udp_port()}",  # a config names a real port, never 0
                "communities_env": "EDGEGW_TEST_SNMP_COMMUNITY",
                "users": [
                    {
                        "user": "edgegw",
                        "auth_protocol": "SHA-256",
                        "auth_key_env": "EDGEGW_TEST_SNMP_AUTH",
                        "priv_protocol": "AES-128",
                        "priv_key_env": "EDGEGW_TEST_SNMP_PRIV",
                        "engine_ids": engine_ids,
                    }
                ],
            }
        }
    )


@pytest.fixture
async def runtime() -> AsyncIterator[SnmpRuntime]:
    rt = SnmpRuntime(section([TWIN_ENGINE]), structlog.get_logger("test"))
    await rt.start()
    assert rt.listener is not None
    try:
        yield rt
    finally:
        await rt.stop()


@pytest.fixture
async def twin() -> AsyncIterator[SnmpTwin]:
    user = V3User("edgegw", AUTH_KEY, PRIV_KEY)
    async with SnmpTwin.create("schneider-bcpme-snmp", users=[user], engine_id=TWIN_ENGINE) as t:
        yield t


def target(rt: SnmpRuntime) -> tuple[str, int]:
    assert rt.listener is not None
    return rt.listener.address


async def device_with_events(port: int, rt: SnmpRuntime, **kw: Any) -> tuple[SnmpDriver, Events]:
    events = Events()
    d = await driver(device(port, **kw), UPTIME, rt, events)
    return d, events


async def test_v2c_trap_and_inform_become_events(runtime: SnmpRuntime, twin: SnmpTwin) -> None:
    d, events = await device_with_events(twin.port, runtime)
    branch = "1.3.6.1.4.1.3833.1.30.1.5.1.1.2.7"
    twin.set_value(branch, 1750)
    assert await twin.send_trap(
        target(runtime), varbinds=[(branch, twin.raw_value(branch)), ("1.3.6.1.2.1.1.5.0", "x")]
    )
    await wait_until(lambda: len(events) == 1, what="the trap event")
    event = events[0]
    assert event["type"] == "trap" and event["version"] == "2c"
    assert event["trap_oid"] == TRAP_OID and event["trap_name"] is None
    assert isinstance(event["uptime"], float) and event["source"] == f"127.0.0.1:{twin.port}"
    assert isinstance(event["ts"], int) and event["ts"] > 1_600_000_000_000
    assert event["varbinds"] == [
        {"oid": branch, "type": "Gauge32", "value": 1750, "name": None},
        {"oid": "1.3.6.1.2.1.1.5.0", "type": "OctetString", "value": "x", "name": "SNMPv2-MIB::sysName.0"},
    ]
    # an inform is acknowledged (send_trap waits for the answer) and published once
    acked = await twin.send_trap(target(runtime), inform=True, varbinds=[])
    assert acked
    await wait_until(lambda: len(events) == 2, what="the inform event")
    assert events[1]["type"] == "inform" and events[1]["varbinds"] == []
    assert runtime.stats.routed == 2
    await d.stop()


async def test_v1_trap_hides_the_community(runtime: SnmpRuntime, twin: SnmpTwin) -> None:
    d, events = await device_with_events(twin.port, runtime)
    await twin.send_trap(target(runtime), version="1", varbinds=[("1.3.6.1.2.1.1.6.0", "lab")])
    await wait_until(lambda: len(events) == 1, what="the v1 trap event")
    event = events[0]
    assert event["version"] == "1" and event["trap_oid"] == TRAP_OID
    assert event["enterprise"] == "1.3.6.1.4.1.3833.1.30" and "agent_address" in event
    assert [vb["oid"] for vb in event["varbinds"]] == ["1.3.6.1.2.1.1.6.0"]
    assert "public" not in repr(event)
    await d.stop()


async def test_v3_trap_and_inform(runtime: SnmpRuntime, twin: SnmpTwin) -> None:
    d, events = await device_with_events(twin.port, runtime)
    # a v3 trap is authenticated with the twin's engine ID, listed in engine_ids
    await twin.send_trap(target(runtime), version="3")
    await wait_until(lambda: len(events) == 1, what="the v3 trap event")
    assert events[0]["version"] == "3" and events[0]["user"] == "edgegw" and events[0]["type"] == "trap"
    # an inform: the twin discovers the listener's engine ID, nothing to configure
    assert await twin.send_trap(target(runtime), version="3", inform=True)
    await wait_until(lambda: len(events) == 2, what="the v3 inform event")
    assert events[1]["type"] == "inform" and events[1]["version"] == "3"
    await d.stop()


async def test_wrong_community_and_unknown_senders(runtime: SnmpRuntime, twin: SnmpTwin) -> None:
    d, events = await device_with_events(twin.port, runtime)
    await twin.send_trap(target(runtime), community="not-the-community")
    await twin.send_trap(target(runtime))  # arrives after the rejected one
    await wait_until(lambda: len(events) == 1, what="the accepted trap")
    assert runtime.stats.received == 1
    async with SnmpTwin.create(host="127.0.0.3") as stranger:
        await stranger.send_trap(target(runtime))
        await stranger.send_trap(target(runtime))
        await wait_until(lambda: runtime.stats.unknown == 2, what="the stranger's traps counted")
    assert runtime.stats.unknown_senders == {"127.0.0.3": 2} and len(events) == 1
    await d.stop()


async def test_routed_to_the_device_of_the_sender(runtime: SnmpRuntime, twin: SnmpTwin) -> None:
    a, events_a = await device_with_events(twin.port, runtime, id="a")
    async with SnmpTwin.create(host="127.0.0.2") as other:
        b, events_b = await device_with_events(other.port, runtime, id="b", host="127.0.0.2")
        await other.send_trap(target(runtime), trap_oid="1.3.6.1.6.3.1.1.5.1")
        await twin.send_trap(target(runtime), trap_oid="1.3.6.1.6.3.1.1.5.3")
        await wait_until(lambda: len(events_a) == 1 and len(events_b) == 1, what="one event each")
        assert events_b[0]["trap_name"] == "SNMPv2-MIB::coldStart"
        assert events_a[0]["trap_name"] == "IF-MIB::linkDown"
        await b.stop()
    # after stop() the device gets nothing more: its route is gone
    await a.stop()
    await twin.send_trap(target(runtime))
    await wait_until(lambda: runtime.stats.unknown == 1, what="the trap to a stopped device")
    assert len(events_a) == 1


async def test_busy_port_does_not_stop_the_runtime() -> None:
    first = SnmpRuntime(section([]), structlog.get_logger("test"))
    await first.start()
    assert first.listener is not None
    busy = section([]).model_copy(
        update={"traps": section([]).traps.model_copy(update={"listen": f"127.0.0.1:{first.listener.address[1]}"})}  # type: ignore[union-attr]
    )
    second = SnmpRuntime(busy, structlog.get_logger("test"))
    await second.start()
    assert second.listener is None
    await second.stop()
    await first.stop()


def test_inform_retransmissions_are_dropped() -> None:
    from drivers.snmp.runtime import TrapListener

    listener = TrapListener(section([]).traps, SnmpRuntime(None, structlog.get_logger("test")), structlog.get_logger())  # type: ignore[arg-type]
    assert not listener._seen("127.0.0.1", 1000, "2c", None, 42)
    assert listener._seen("127.0.0.1", 1000, "2c", None, 42)
    assert not listener._seen("127.0.0.1", 1000, "2c", None, 43)
