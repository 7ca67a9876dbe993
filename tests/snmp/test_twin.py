"""The SNMP twin itself: the registry factory, faults on the wire and through the driver, counters, SET.

Everything runs over real UDP on 127.0.0.1: our driver (built as the daemon builds it), pysnmp's own
command generator for SET, and hand-made datagrams where the bytes on the wire are the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    UsmUserData,
    get_cmd,
    set_cmd,
    usmAesCfb128Protocol,
    usmHMAC192SHA256AuthProtocol,
)
from pysnmp.proto import rfc1902

from drivers.snmp.codec import Value
from drivers.snmp.config import SnmpDevice, SnmpSection
from drivers.snmp.runtime import SnmpRuntime
from drivers.snmp.twin import SYS_UPTIME, SnmpTwin, V3User
from gateway.app import build_driver
from gateway.buses import Bus
from gateway.config import parse_device
from gateway.driver import DeviceError, Driver, PointError, RawReadings
from gateway.normalize import Normalizer
from gateway.registry import DRIVERS
from gateway.state import StateStore
from gateway.twin import Fault, Write
from tests.snmp.util import AUTH_KEY, PRIV_KEY, Events, free_udp_port, wait_until

pytestmark = pytest.mark.asyncio

REPO = Path(__file__).resolve().parents[2]
FREQUENCY = "1.3.6.1.4.1.3833.1.30.1.3.1.0"  # panel1.mains.frequency, Gauge32 in 0.01 Hz
LOCATION = "1.3.6.1.4.1.3833.1.30.1.1.1.0"  # panel1.location, OctetString
CT_LAYOUT = "1.3.6.1.4.1.3833.1.30.1.1.5.0"  # panel1.ct_layout, Integer32
SYS_CONTACT = "1.3.6.1.2.1.1.4.0"
TIMEOUT = 0.3


# --- helpers -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def polled(twin: SnmpTwin, **over: Any) -> AsyncIterator[Driver[Any, Any]]:
    """Our driver for the twin, built as the daemon builds it (registry, parse_device, build_driver)."""
    device = parse_device({"id": "bcpme", **twin.device_config(), "timeout": TIMEOUT, "retries": 0, **over})
    log = structlog.get_logger("test")
    runtime = SnmpRuntime(None, log)
    await runtime.start()
    bus = Bus(device.id)
    driver = build_driver(device, bus, StateStore(None), runtime, log)
    try:
        async with asyncio.timeout(10):
            await driver.start()
        yield driver
    finally:
        await driver.stop()
        await bus.close()
        await runtime.stop()


async def poll(driver: Driver[Any, Any]) -> RawReadings:
    async with asyncio.timeout(10):
        return await driver.read()


def good(result: RawReadings) -> int:
    return sum(1 for v in result.values if not isinstance(v, PointError))


def by_id(driver: Driver[Any, Any], result: RawReadings) -> dict[str, Any]:
    return {p.id: v for p, v in zip(driver.ctx.points, result.values, strict=True)}


def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    length = bytes([n]) if n < 0x80 else bytes([0x81, n]) if n < 0x100 else bytes([0x82, n >> 8, n & 0xFF])
    return bytes([tag]) + length + body


def _oid_body(text: str) -> bytes:
    arcs = [int(a) for a in text.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


def v2c_get(community: str, oid: str, request_id: int = 1) -> bytes:
    """A v2c GetRequest datagram, BER by hand (the test does not trust the twin's own library)."""
    varbind = _tlv(0x30, _tlv(0x06, _oid_body(oid)) + b"\x05\x00")
    pdu = _tlv(0xA0, _tlv(0x02, bytes([request_id])) + b"\x02\x01\x00\x02\x01\x00" + _tlv(0x30, varbind))
    return _tlv(0x30, b"\x02\x01\x01" + _tlv(0x04, community.encode()) + pdu)


class _Catch(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.put_nowait(data)


async def exchange(port: int, datagram: bytes, wait: float = 1.0) -> tuple[bytes | None, float]:
    """Send one datagram to the twin; (the reply or None after `wait`, seconds it took)."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_Catch, local_addr=("127.0.0.1", 0))
    try:
        started = time.monotonic()
        transport.sendto(datagram, ("127.0.0.1", port))
        try:
            async with asyncio.timeout(wait):
                data = await proto.got.get()
        except TimeoutError:
            return None, time.monotonic() - started
        return data, time.monotonic() - started
    finally:
        transport.close()


async def snmp_set(
    twin: SnmpTwin, auth: CommunityData | UsmUserData, *varbinds: tuple[str, Any]
) -> tuple[str, int, list[tuple[str, Any]]]:
    """SET with pysnmp's own command generator: (error status name or indication, error index, varbinds)."""
    engine = SnmpEngine()
    try:
        target = await UdpTransportTarget.create(("127.0.0.1", twin.port), timeout=1, retries=0)
        indication, status, index, vbs = await set_cmd(
            engine,
            auth,
            target,
            ContextData(),
            *[ObjectType(ObjectIdentity(oid), value) for oid, value in varbinds],
            lookupMib=False,
        )
        if indication:  # no answer, or one that could not be used
            return str(indication), 0, []
        return status.prettyPrint() if status else "noError", int(index), [(str(n), v) for n, v in vbs]
    finally:
        engine.close_dispatcher()


async def snmp_get(twin: SnmpTwin, auth: CommunityData | UsmUserData, oid: str) -> Any:
    engine = SnmpEngine()
    try:
        target = await UdpTransportTarget.create(("127.0.0.1", twin.port), timeout=1, retries=0)
        indication, status, _index, vbs = await get_cmd(
            engine, auth, target, ContextData(), ObjectType(ObjectIdentity(oid)), lookupMib=False
        )
        assert not indication and not status, (indication, status)
        return vbs[0][1]
    finally:
        engine.close_dispatcher()


def v3_auth(user: str = "edgegw") -> UsmUserData:
    return UsmUserData(
        user,
        authKey=AUTH_KEY,
        privKey=PRIV_KEY,
        authProtocol=usmHMAC192SHA256AuthProtocol,
        privProtocol=usmAesCfb128Protocol,
    )


@pytest.fixture
async def twin() -> AsyncIterator[SnmpTwin]:
    async with SnmpTwin.create("schneider-bcpme-snmp", vars={"panels": 1, "channels": 4}) as t:
        yield t


# --- the registry's factory ----------------------------------------------------------------------


async def test_registry_twin_and_its_device_config() -> None:
    cls = DRIVERS["snmp"].twin_class
    assert cls is SnmpTwin and cls.kind == "snmp" and cls.default_profile == "schneider-bcpme-snmp"
    assert dict(cls.default_vars) == {"panels": 1, "channels": 4}
    (demo,) = cls.demo
    assert demo.id == "bcpme-3-snmp" and demo.profile == "schneider-bcpme-snmp" and dict(demo.vars) == {"panels": 1}
    assert dict(demo.config) == {"interval": "2s", "timeout": "1s", "version": "2c"}
    assert list(demo.show) == ["panel1.mains.frequency", "panel1.ch1.current"]
    async with cls.create(cls.default_profile, vars=cls.default_vars) as twin:
        cfg = twin.device_config()
        assert cfg == {
            "driver": "snmp",
            "profile": "schneider-bcpme-snmp",
            "profile_vars": {"panels": 1, "channels": 4},
            "host": "127.0.0.1",
            "port": twin.port,
            "version": "2c",
            "community_env": "EDGEGW_TWIN_COMMUNITY",
        }
        assert os.environ["EDGEGW_TWIN_COMMUNITY"] == "public" and twin.section_config() is None
        line = twin.describe()
        assert f"on udp 127.0.0.1:{twin.port}" in line and "v2c" in line and "108 points" in line
        async with polled(twin) as driver:
            result = await poll(driver)
            assert good(result) == len(driver.ctx.points) == 108
            values = by_id(driver, result)
            # the twin's engineering value is what the normaliser makes of the raw reading
            twin.clock.freeze()
            result = await poll(driver)
            batch = Normalizer("bcpme", driver.ctx.points).normalize(result, 0).as_dicts()
            freq = next(r for r in batch if r["point"] == "panel1.mains.frequency")
            shown = twin.value("panel1.mains.frequency")
            assert freq["value"] == shown and 49.95 <= shown <= 50.05
            assert values["panel1.location"] == "Panel 1" == twin.value("panel1.location")
            assert twin.writes == []


async def test_v3_device_config_and_secrets_through_the_environment() -> None:
    user = V3User("edgegw", AUTH_KEY, PRIV_KEY)
    async with SnmpTwin.create("mib2-system", version="3", users=[user], community=None) as twin:
        cfg = twin.device_config()
        assert cfg["version"] == "3" and cfg["user"] == "edgegw" and "community_env" not in cfg
        assert cfg["auth_protocol"] == "SHA-256" and cfg["priv_protocol"] == "AES-128"
        assert os.environ[cfg["auth_key_env"]] == AUTH_KEY and os.environ[cfg["priv_key_env"]] == PRIV_KEY
        assert "v3" in twin.describe() and "v2c" not in twin.describe()
        async with polled(twin) as driver:
            device = driver.ctx.device
            assert isinstance(device, SnmpDevice) and device.security_level == "authPriv"
            result = await poll(driver)
            assert good(result) == len(result.values) == 6
    # version 3 without users: the default user, keys in the environment as well
    async with SnmpTwin.create("mib2-system", version="3") as default, polled(default) as driver:
        assert good(await poll(driver)) == 6


async def test_two_communities_get_two_variables() -> None:
    async with (
        SnmpTwin.create("mib2-system", community="alpha-community") as a,
        SnmpTwin.create("mib2-system", community="beta-community") as b,
    ):
        env_a, env_b = a.device_config()["community_env"], b.device_config()["community_env"]
        assert env_a != env_b and os.environ[env_a] == "alpha-community" and os.environ[env_b] == "beta-community"
        async with polled(a) as da, polled(b, id="b") as db:
            assert good(await poll(da)) == 6 and good(await poll(db)) == 6


async def test_inline_points_and_sim_hints() -> None:
    pts: list[dict[str, Any]] = [
        {
            "id": "volts",
            "oid": "1.3.6.1.4.1.9999.1.1.0",
            "type": "gauge32",
            "scale": 0.1,
            "quantity": "voltage",
            "unit": "V",
            "sim": {"value": 230.4},
        },
        {
            "id": "temp",
            "oid": "1.3.6.1.4.1.9999.1.2.0",
            "type": "integer",
            "scale": 0.5,
            "offset": -40,
            "quantity": "temperature",
            "unit": "degC",
            "sim": {"min": 20, "max": 30, "period": "60s"},
        },
        {
            "id": "name",
            "oid": "1.3.6.1.4.1.9999.1.3.0",
            "type": "octets",
            "quantity": "identity",
            "kind": "state",
            "sim": {"text": "UPS {n}"},
        },
        {
            "id": "load",
            "oid": "1.3.6.1.4.1.9999.1.4.0",
            "type": "octets",
            "format": "number",
            "quantity": "other",
            "sim": {"value": 42.5},
        },
        {"id": "ip", "oid": "1.3.6.1.4.1.9999.1.5.0", "type": "ipaddress", "quantity": "identity", "kind": "state"},
    ]
    async with SnmpTwin.create(points=pts, vars={"n": 3}) as twin:
        cfg = twin.device_config()
        assert "profile" not in cfg and [p["id"] for p in cfg["points"]] == ["volts", "temp", "name", "load", "ip"]
        assert cfg["points"][2]["sim"] == {"text": "UPS 3"}  # the vars were applied
        async with polled(twin) as driver:
            values = by_id(driver, await poll(driver))
        assert values["volts"] == 2304 and twin.value("volts") == 230.4
        assert values["name"] == "UPS 3" and values["load"] == 42.5 and values["ip"] == "0.0.0.0"
        assert 20 <= twin.value("temp") <= 30 and values["temp"] == pytest.approx(
            (twin.value("temp") + 40) / 0.5, abs=3
        )
        twin.set_value("temp", 25.5)  # engineering in, raw out: (25.5 + 40) / 0.5
        assert twin.raw_value("temp") is not None and twin.raw_value("temp").raw == 131  # type: ignore[union-attr]
        assert twin.value(twin.device_config()["points"][1]["oid"]) == 131  # by OID: the raw value
    with pytest.raises(ValueError, match=r"point 'x': sim: unknown key\(s\) start"):
        SnmpTwin.create(points=[{"id": "x", "oid": "1.3.6.1.4.1.9999.9.0", "quantity": "other", "sim": {"start": 1}}])
    with pytest.raises(ValueError, match="profile or points"):
        SnmpTwin.create("mib2-system", points=[])


# --- faults --------------------------------------------------------------------------------------


async def test_fault_modes_on_the_wire() -> None:
    async with SnmpTwin.create("mib2-system") as twin:
        request = v2c_get("public", SYS_CONTACT)
        healthy, _ = await exchange(twin.port, request)
        assert healthy is not None and healthy[0] == 0x30 and b"edgegw" in healthy and b"\xa2" in healthy

        twin.faults.set(Fault.SILENT)
        reply, _ = await exchange(twin.port, request, wait=0.3)
        assert reply is None

        twin.faults.set(Fault.SLOW, delay=0.4)
        reply, took = await exchange(twin.port, request, wait=2.0)
        assert reply == healthy and took >= 0.4

        twin.faults.set(Fault.GARBAGE)
        reply, _ = await exchange(twin.port, request)
        assert reply is not None and len(reply) == len(healthy) and reply[0] != 0x30
        assert all(a != b for a, b in zip(reply, healthy, strict=True))

        twin.faults.set(Fault.DISCONNECT)  # a datagram cut in the middle: half the reply
        reply, _ = await exchange(twin.port, request)
        assert reply == healthy[: len(healthy) // 2]

        twin.faults.clear()
        reply, _ = await exchange(twin.port, request)
        assert reply == healthy
        assert twin.requests["get"] == 6


@pytest.mark.parametrize("version", ["2c", "3"])
@pytest.mark.parametrize("fault", [Fault.SILENT, Fault.SLOW, Fault.GARBAGE, Fault.DISCONNECT], ids=str)
async def test_each_fault_fails_the_driver_and_it_recovers(fault: Fault, version: str) -> None:
    users = [V3User("edgegw", AUTH_KEY, PRIV_KEY)]
    twin = SnmpTwin.create("schneider-bcpme-snmp", vars={"channels": 4}, version=version, users=users)
    async with twin, polled(twin) as driver:
        assert good(await poll(driver)) == len(driver.ctx.points)
        twin.faults.set(fault, delay=3 * TIMEOUT)
        started = time.monotonic()
        with pytest.raises(DeviceError):
            await poll(driver)
        assert time.monotonic() - started < 3.0
        twin.faults.clear()
        assert good(await poll(driver)) == len(driver.ctx.points)


async def test_a_slow_agent_within_the_timeout_is_only_late(twin: SnmpTwin) -> None:
    async with polled(twin, timeout=1.0) as driver:
        twin.faults.set(Fault.SLOW, delay=0.15)
        started = time.monotonic()
        result = await poll(driver)
        assert good(result) == len(result.values) and time.monotonic() - started >= 0.15


async def test_a_fault_of_one_community_spares_the_others() -> None:
    users = [V3User("edgegw", AUTH_KEY, PRIV_KEY)]
    twin = SnmpTwin.create("mib2-system", users=users)
    async with twin, polled(twin) as v2c, polled(twin, id="v3", **_v3_keys()) as v3:
        twin.faults.set(Fault.SILENT, target="public")
        with pytest.raises(DeviceError):
            await poll(v2c)
        assert good(await poll(v3)) == 6
        twin.faults.set(Fault.GARBAGE, target="edgegw")
        twin.faults.clear("public")
        assert good(await poll(v2c)) == 6
        with pytest.raises(DeviceError):
            await poll(v3)


def _v3_keys() -> dict[str, Any]:
    os.environ.setdefault("EDGEGW_TEST_SNMP_AUTH", AUTH_KEY)
    os.environ.setdefault("EDGEGW_TEST_SNMP_PRIV", PRIV_KEY)
    return {
        "version": "3",
        "community_env": None,
        "user": "edgegw",
        "auth_protocol": "SHA-256",
        "auth_key_env": "EDGEGW_TEST_SNMP_AUTH",
        "priv_protocol": "AES-128",
        "priv_key_env": "EDGEGW_TEST_SNMP_PRIV",
    }


# --- counters ------------------------------------------------------------------------------------


COUNTERS: list[dict[str, Any]] = [
    {
        "id": "c32",
        "oid": "1.3.6.1.4.1.9999.2.1.0",
        "type": "counter32",
        "quantity": "traffic",
        "unit": "B",
        "sim": {"value": 4294967000, "rate": 100},
    },
    {
        "id": "c64",
        "oid": "1.3.6.1.4.1.9999.2.2.0",
        "type": "counter64",
        "quantity": "traffic",
        "unit": "B",
        "sim": {"value": 18446744073709551000, "rate": 100},
    },
    {
        "id": "c32_rate",
        "oid": "1.3.6.1.4.1.9999.2.1.0",
        "type": "counter32",
        "rate": "per_second",
        "quantity": "traffic",
        "unit": "B",
    },
    {
        "id": "energy",
        "oid": "1.3.6.1.4.1.9999.2.3.0",
        "type": "counter64",
        "scale": 0.1,
        "quantity": "active_energy_import",
        "unit": "Wh",
        "sim": {"value": 1000, "rate": 2},
    },
]


def frozen(**options: Any) -> SnmpTwin:
    """A twin of the counters whose clock stands still at its start (t = 0) until advanced."""
    twin = SnmpTwin.create(points=COUNTERS, **options)
    twin.clock.freeze(twin.clock.t0)
    return twin


async def test_counters_wrap_modulo_their_width() -> None:
    async with frozen() as twin, polled(twin) as driver:
        first = by_id(driver, await poll(driver))
        assert first["c32"] == 4294967000 and first["c64"] == 18446744073709551000 and first["energy"] == 10000
        twin.clock.advance(10)  # 1000 counts: both wrap
        second = by_id(driver, await poll(driver))
        assert second["c32"] == (4294967000 + 1000) % 2**32 == 704
        assert second["c64"] == (18446744073709551000 + 1000) % 2**64 == 384  # exact: no float rounding
        assert second["energy"] == 10200 and twin.value("energy") == 1020.0  # 2 Wh/s in 0.1 Wh
        # set_counter: a value and a rate, counting on from there
        twin.set_counter("c32", 2**32 - 50, rate=10)
        twin.clock.advance(6)
        assert twin.value("c32") == 10 and by_id(driver, await poll(driver))["c32"] == 10


async def test_set_value_pins_a_counter_and_release_lets_it_count() -> None:
    async with frozen() as twin:
        twin.set_value("c32", 123)
        twin.clock.advance(100)
        assert twin.value("c32") == 123 and twin.value("c32_rate") == 123  # two points, one OID
        twin.release("c32")
        assert twin.value("c32") == (4294967000 + 100 * 100) % 2**32


async def test_restart_resets_uptime_and_counters() -> None:
    async with frozen() as twin:
        twin.clock.advance(3600)
        twin.set_value("energy", 5000)  # pinned: stays pinned, at the reset value
        assert twin.raw_value(SYS_UPTIME) == Value("TimeTicks", 360000)
        twin.restart(counter_value=5)
        assert twin.restarts == 1
        assert twin.raw_value(SYS_UPTIME) == Value("TimeTicks", 0)
        assert twin.value("c32") == 5 and twin.value("c64") == 5 and twin.value("energy") == 0.5
        twin.clock.advance(2)
        assert twin.value("c32") == 205 and twin.value("energy") == 0.5
        assert twin.raw_value(SYS_UPTIME) == Value("TimeTicks", 200)


async def test_a_wrap_and_a_restart_give_sane_rates_in_the_core() -> None:
    async with frozen() as twin, polled(twin) as driver:
        points = driver.ctx.points
        norm = Normalizer("d", points)
        i = [p.id for p in points].index("c32_rate")
        rates = []
        for at in (0, 10, 20):  # the wrap is between the first and the second poll
            batch = norm.normalize(await poll(driver), at * 1000)
            rates.append((batch.values[batch.index.index(i)], batch.qualities[batch.index.index(i)]))
            twin.clock.advance(10)
        assert rates == [(None, "uncertain"), (100.0, "good"), (100.0, "good")]
        twin.restart()
        batch = norm.normalize(await poll(driver), 30_000)
        assert batch.qualities[batch.index.index(i)] == "uncertain"  # a reset, not a 4e8/s spike


# --- SET ----------------------------------------------------------------------------------------


async def test_v2c_set_with_the_write_community() -> None:
    async with SnmpTwin.create("schneider-bcpme-snmp", vars={"channels": 4}, writable="all") as twin:
        status, _, vbs = await snmp_set(twin, CommunityData("private"), (FREQUENCY, rfc1902.Gauge32(5001)))
        assert status == "noError" and vbs[0][0] == FREQUENCY and int(vbs[0][1]) == 5001
        assert twin.writes[-1].point == "panel1.mains.frequency"
        assert twin.writes[-1].value == 50.01 and twin.writes[-1].raw == 5001 and twin.writes[-1].target is None
        assert twin.value("panel1.mains.frequency") == 50.01  # pinned
        twin.clock.advance(30)
        assert int(await snmp_get(twin, CommunityData("public"), FREQUENCY)) == 5001
        # two varbinds in one SET, read back through our driver
        status, _, _ = await snmp_set(
            twin,
            CommunityData("private"),
            (LOCATION, rfc1902.OctetString("Room 4")),
            (CT_LAYOUT, rfc1902.Integer32(2)),
        )
        assert status == "noError"
        assert [(w.point, w.value) for w in twin.writes[-2:]] == [
            ("panel1.location", "Room 4"),
            ("panel1.ct_layout", 2),
        ]
        assert twin.writes[-2].raw == b"Room 4"
        async with polled(twin) as driver:
            values = by_id(driver, await poll(driver))
        assert values["panel1.location"] == "Room 4" and values["panel1.ct_layout"] == 2
        assert values["panel1.mains.frequency"] == 5001
        assert twin.requests["set"] == 2
        # under a fault the SET is applied; only its answer is lost, as with a real agent
        twin.faults.set(Fault.SILENT)
        status, _, _ = await snmp_set(twin, CommunityData("private"), (CT_LAYOUT, rfc1902.Integer32(3)))
        assert status.startswith("No SNMP response")
        assert twin.writes[-1].point == "panel1.ct_layout" and twin.writes[-1].value == 3


async def test_v3_auth_priv_set() -> None:
    users = [V3User("edgegw", AUTH_KEY, PRIV_KEY), V3User("viewer", AUTH_KEY, PRIV_KEY, read_only=True)]
    async with SnmpTwin.create(
        "schneider-bcpme-snmp", vars={"channels": 4}, users=users, writable=["panel1.location"]
    ) as twin:
        status, _, _ = await snmp_set(twin, v3_auth(), (LOCATION, rfc1902.OctetString("Over v3")))
        assert status == "noError" and twin.value("panel1.location") == "Over v3"
        assert twin.writes == [Write("panel1.location", "Over v3", b"Over v3", None, ts=twin.writes[0].ts)]
        assert bytes(await snmp_get(twin, v3_auth(), LOCATION)) == b"Over v3"
        status, index, _ = await snmp_set(twin, v3_auth("viewer"), (LOCATION, rfc1902.OctetString("nope")))
        assert (status, index) == ("noAccess", 1) and len(twin.writes) == 1


async def test_set_errors_are_the_agents() -> None:
    pts: list[dict[str, Any]] = [
        {
            "id": "setpoint",
            "oid": "1.3.6.1.4.1.9999.3.1.0",
            "type": "integer",
            "scale": 0.1,
            "quantity": "temperature",
            "unit": "degC",
            "sim": {"value": 21},
        },
        {
            "id": "limit",
            "oid": "1.3.6.1.4.1.9999.3.2.0",
            "type": "octets",
            "format": "number",
            "quantity": "other",
            "sim": {"value": 5},
        },
        {"id": "reading", "oid": "1.3.6.1.4.1.9999.3.3.0", "type": "gauge32", "quantity": "other"},
    ]
    writable = ["setpoint", "1.3.6.1.4.1.9999.3.2.0"]
    async with SnmpTwin.create(points=pts, writable=writable, limits={"setpoint": (5, 30)}) as twin:
        setpoint = "1.3.6.1.4.1.9999.3.1.0"
        cases: list[tuple[CommunityData, tuple[str, Any], str]] = [
            (CommunityData("public"), (setpoint, rfc1902.Integer32(200)), "noAccess"),  # the read community
            (CommunityData("private"), ("1.3.6.1.4.1.9999.3.3.0", rfc1902.Gauge32(1)), "notWritable"),
            (CommunityData("private"), ("1.3.6.1.4.1.9999.3.9.0", rfc1902.Integer32(1)), "notWritable"),  # no such
            (CommunityData("private"), (setpoint, rfc1902.OctetString("22")), "wrongType"),
            (CommunityData("private"), (setpoint, rfc1902.Integer32(400)), "wrongValue"),  # 40 °C > 30
            (CommunityData("private"), ("1.3.6.1.4.1.9999.3.2.0", rfc1902.OctetString("five")), "wrongValue"),
        ]
        for auth, varbind, expected in cases:
            status, index, _ = await snmp_set(twin, auth, varbind)
            assert (status, index) == (expected, 1), varbind
        # all or nothing: a bad second varbind leaves the first unwritten
        status, index, _ = await snmp_set(
            twin,
            CommunityData("private"),
            (setpoint, rfc1902.Integer32(250)),
            ("1.3.6.1.4.1.9999.3.3.0", rfc1902.Gauge32(1)),
        )
        assert (status, index) == ("notWritable", 2)
        assert twin.writes == [] and twin.value("setpoint") == 21
        status, _, _ = await snmp_set(twin, CommunityData("private"), (setpoint, rfc1902.Integer32(250)))
        assert status == "noError" and twin.value("setpoint") == 25 and twin.writes[0].value == 25
        # SNMPv1 has no noAccess / notWritable: the agent says noSuchName, as v1 agents do
        status, _, _ = await snmp_set(
            twin, CommunityData("private", mpModel=0), ("1.3.6.1.4.1.9999.3.3.0", rfc1902.Gauge32(1))
        )
        assert status == "noSuchName"


async def test_writable_names_must_exist() -> None:
    with pytest.raises(KeyError, match="no point 'nope'"):
        SnmpTwin.create("mib2-system", writable=["nope"])
    twin = SnmpTwin.create("schneider-bcpme-snmp", vars={"channels": 1}, writable="all")
    names = {twin._store.entries[oid].point.id for oid in twin.writable}  # type: ignore[union-attr]
    assert "panel1.location" in names and "panel1.mains.frequency" in names
    assert "panel1.aux.energy" not in names and "uptime" not in names  # counters and uptime are read-only
    assert "panel1.ch1.current" not in names  # table cells are not scalars


# --- edgegw simulate ---------------------------------------------------------------------------


async def test_simulate_serves_takes_sets_and_sends_informs() -> None:
    section = SnmpSection.model_validate(
        {"traps": {"listen": f"127.0.0.1:{free_udp_port()}", "communities_env": "EDGEGW_TEST_SNMP_COMMUNITY"}}
    )
    runtime = SnmpRuntime(section, structlog.get_logger("test"))
    await runtime.start()
    assert runtime.listener is not None
    port = free_udp_port()
    script = (
        "import sys; from gateway.twin import simulate; from drivers.snmp.twin import SnmpTwin; "
        "sys.exit(simulate(SnmpTwin, 'schneider-bcpme-snmp', sys.argv[1:]))"
    )
    args = ["--port", str(port), "--var", "panels=1", "--var", "channels=2", "--writable", "panel1.location"]
    args += ["--trap-target", f"127.0.0.1:{runtime.listener.address[1]}", "--trap-every", "200ms", "--inform"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, *args, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert f"on udp 127.0.0.1:{port}" in line and "v2c" in line, line
        events = Events()
        device = parse_device(
            {
                "id": "sim",
                "driver": "snmp",
                "profile": "schneider-bcpme-snmp",
                "profile_vars": {"panels": 1, "channels": 2},
                "host": "127.0.0.1",
                "port": port,
                "community_env": "EDGEGW_TEST_SNMP_COMMUNITY",
                "timeout": 1,
            }
        )
        driver = build_driver(device, Bus("sim"), StateStore(None), runtime, structlog.get_logger("test"))
        driver.ctx.emit_event = events
        await driver.start()
        result = await poll(driver)
        assert good(result) == len(result.values)
        peer = SnmpTwin.create()
        peer.port = port  # pysnmp's client aimed at the process
        status, _, _ = await snmp_set(peer, CommunityData("private"), (LOCATION, rfc1902.OctetString("Lab")))
        assert status == "noError" and by_id(driver, await poll(driver))["panel1.location"] == "Lab"
        await wait_until(lambda: len(events) >= 2, timeout=10, what="two informs from the twin process")
        assert events[0]["type"] == "inform" and events[0]["source"] == f"127.0.0.1:{port}"
        await driver.stop()
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await runtime.stop()
