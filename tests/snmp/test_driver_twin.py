"""The driver against the SNMP twin over real UDP on 127.0.0.1: values, scaling, tables, errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from drivers.snmp.codec import parse_oid
from drivers.snmp.config import SnmpPoint
from drivers.snmp.runtime import SnmpRuntime
from drivers.snmp.twin import SnmpTwin, V3User
from gateway.driver import DeviceError, DeviceTimeout, PointError
from gateway.normalize import Normalizer
from gateway.points import Kind, Quality
from tests.snmp.util import (
    AUTH_KEY,
    BRANCH_CURRENT,
    PRIV_KEY,
    by_id,
    device,
    driver,
    points,
    profiled,
    silent_udp,
    v3,
)

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def twin() -> AsyncIterator[SnmpTwin]:
    async with SnmpTwin.create("schneider-bcpme-snmp", users=[V3User("edgegw", AUTH_KEY, PRIV_KEY)]) as t:
        yield t


@pytest.fixture
async def runtime() -> AsyncIterator[SnmpRuntime]:
    import structlog

    rt = SnmpRuntime(None, structlog.get_logger("test"))
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


async def test_bcpme_profile_table_rows_are_circuits(twin: SnmpTwin, runtime: SnmpRuntime) -> None:
    dev = profiled(twin.port)
    pts = dev.resolved_points
    assert len(pts) == 2 + 2 * (12 + 9 + 37) + 2 * 42 * 12
    ch7 = next(p for p in pts if p.id == "panel1.ch7.current")
    assert isinstance(ch7, SnmpPoint)
    assert ch7.oid == f"{BRANCH_CURRENT}.7" and ch7.circuit == "1-7" and ch7.phase == "L1" and ch7.scale == 0.01
    energy = next(p for p in pts if p.id == "panel2.ch42.energy")
    assert energy.kind is Kind.COUNTER and energy.circuit == "2-42"
    twin.set_value(f"{BRANCH_CURRENT}.7", 1234)
    twin.set_value("1.3.6.1.4.1.3833.1.30.2.5.1.1.5.42", 2**40 + 5)
    d = await driver(dev, runtime=runtime)
    started = time.monotonic()
    raw = await d.read()
    elapsed = time.monotonic() - started
    values = by_id(pts, raw.values)
    bad = {k: v for k, v in values.items() if isinstance(v, PointError)}
    assert not bad
    assert values["panel1.ch7.current"] == 1234
    assert values["panel2.ch42.energy"] == 2**40 + 5
    assert values["panel1.location"] == "Panel 1" and values["panel1.model"] == 15172
    assert values["sys_descr"].startswith("edgegw SNMP twin")
    # 1034 table cells (branch and aux tables) in GETBULK runs; the ~70 scalars in GETs of 20 OIDs.
    assert twin.requests["getbulk"] <= 20 and twin.requests["get"] <= 4, twin.requests
    assert elapsed < 2.0
    # the normaliser applies the profile's scale
    batch = Normalizer(dev.id, list(pts)).normalize(raw, 0).as_dicts()
    reading = next(r for r in batch if r["point"] == "panel1.ch7.current")
    assert reading["value"] == pytest.approx(12.34) and reading["quality"] == "good"
    await d.stop()


async def test_bcpme_health_bits_have_the_modbus_ids(runtime: SnmpRuntime) -> None:
    """The health bitmap's bits are calculated points with the Modbus profile's ids."""
    async with SnmpTwin.create("schneider-bcpme-snmp", vars={"panels": 1, "channels": 1}) as twin:
        twin.set_value("panel1.health", 0b1_0010_0010)  # bits 1, 5, 8
        dev = profiled(twin.port, profile_vars={"panels": 1, "channels": 1})
        d = await driver(dev, runtime=runtime)
        raw = await d.read()
        norm = Normalizer(dev.id, list(dev.resolved_points), dev.calculated_points)
        got = {str(r["point"]): r["value"] for r in norm.normalize(raw, 0).as_dicts() if r["quality"] == "good"}
        assert got["panel1.health"] == 290
        bits = {k.removeprefix("panel1.health."): v for k, v in got.items() if k.startswith("panel1.health.")}
        assert bits == {
            "frequency_out_of_range": True,
            "voltage_clipping_a": False,
            "voltage_clipping_b": False,
            "voltage_clipping_c": False,
            "current_clipping": True,
            "strip_error": True,
        }
        await d.stop()


async def test_value_types_and_formats(twin: SnmpTwin) -> None:
    base = "1.3.6.1.4.1.9999.1"
    twin.set_value(f"{base}.1.0", -42, syntax="integer")
    twin.set_value(f"{base}.2.0", 4_000_000_000, syntax="gauge32")
    twin.set_value(f"{base}.3.0", 4_294_967_295, syntax="counter32")
    twin.set_value(f"{base}.4.0", 2**63 + 7, syntax="counter64")
    twin.set_value(f"{base}.5.0", 123456, syntax="timeticks")
    twin.set_value(f"{base}.6.0", "Panel A", syntax="octets")
    twin.set_value(f"{base}.7.0", b"\x00\x1a\xff", syntax="octets")
    twin.set_value(f"{base}.8.0", "230.5", syntax="octets")
    twin.set_value(f"{base}.9.0", "10.1.2.3", syntax="ipaddress")
    twin.set_value(f"{base}.10.0", (1, 3, 6, 1, 4, 1, 3833), syntax="oid")
    pts = points(
        {"id": "int", "oid": f"{base}.1.0", "quantity": "other"},
        {"id": "gauge", "oid": f"{base}.2.0", "type": "gauge32", "quantity": "current", "unit": "A", "scale": 0.001},
        {"id": "c32", "oid": f"{base}.3.0", "type": "counter32", "quantity": "counter"},
        {"id": "c64", "oid": f"{base}.4.0", "type": "counter64", "quantity": "active_energy_import", "unit": "Wh"},
        {"id": "ticks", "oid": f"{base}.5.0", "type": "timeticks", "quantity": "uptime", "unit": "s", "scale": 0.01},
        {"id": "secs", "oid": f"{base}.5.0", "format": "seconds", "quantity": "uptime", "unit": "s"},
        {"id": "text", "oid": f"{base}.6.0", "format": "text", "quantity": "identity"},
        {"id": "hex", "oid": f"{base}.7.0", "format": "hex", "quantity": "identity"},
        {"id": "auto_bin", "oid": f"{base}.7.0", "quantity": "identity"},
        {"id": "number", "oid": f"{base}.8.0", "format": "number", "quantity": "voltage", "unit": "V"},
        {"id": "ip", "oid": f"{base}.9.0", "type": "ipaddress", "quantity": "identity"},
        {"id": "oid", "oid": f"{base}.10.0", "type": "oid", "quantity": "model"},
        {"id": "wrong_type", "oid": f"{base}.6.0", "type": "gauge32", "quantity": "other"},
    )
    assert pts[2].kind is Kind.COUNTER and pts[3].kind is Kind.COUNTER  # counters are published as counters
    d = await driver(device(twin.port), pts)
    raw = await d.read()
    v = by_id(pts, raw.values)
    assert v["int"] == -42 and v["gauge"] == 4_000_000_000 and v["c32"] == 4_294_967_295
    assert v["c64"] == 2**63 + 7 and v["ticks"] == 123456 and v["secs"] == pytest.approx(1234.56)
    assert v["text"] == "Panel A" and v["hex"] == "001aff" and v["auto_bin"] == "001aff"
    assert v["number"] == 230.5 and v["ip"] == "10.1.2.3" and v["oid"] == "1.3.6.1.4.1.3833"
    assert isinstance(v["wrong_type"], PointError) and "expected gauge32" in v["wrong_type"].message
    norm = Normalizer("agent", pts)
    readings = {r["point"]: r for r in norm.normalize(raw, 0).as_dicts()}
    assert readings["gauge"]["value"] == pytest.approx(4_000_000) and readings["ticks"]["value"] == pytest.approx(
        1234.56
    )
    await d.stop()


async def test_missing_instances_are_bad_points_only(twin: SnmpTwin) -> None:
    for n in range(1, 11):
        twin.set_value(f"{BRANCH_CURRENT}.{n}", 100 + n)
    twin.delete(f"{BRANCH_CURRENT}.4")  # a row missing in the middle of a GETBULK run
    pts = points(
        *[{"id": f"ch{n}", "oid": f"{BRANCH_CURRENT}.{n}", "quantity": "current"} for n in range(1, 11)],
        {"id": "nothing", "oid": "1.3.6.1.4.1.3833.1.30.1.3.1.7", "quantity": "other"},  # a scalar's wrong index
        {"id": "no_object", "oid": "1.3.6.1.4.1.99999.1.0", "quantity": "other"},
        {"id": "past_end", "oid": f"{BRANCH_CURRENT}.43", "quantity": "current"},
    )
    d = await driver(device(twin.port), pts)
    raw = await d.read()
    v = by_id(pts, raw.values)
    assert [v[f"ch{n}"] for n in (1, 2, 3, 5, 10)] == [101, 102, 103, 105, 110]
    for key in ("ch4", "nothing", "no_object", "past_end"):
        assert isinstance(v[key], PointError), key
        assert "no such" in v[key].message and v[key].quality is Quality.BAD
    assert twin.requests["getbulk"] >= 1
    await d.stop()


async def test_timeout_is_device_timeout_and_does_not_stall_others(twin: SnmpTwin, runtime: SnmpRuntime) -> None:
    dead = silent_udp()
    try:
        pts = points({"id": "up", "oid": "1.3.6.1.2.1.1.3.0", "quantity": "uptime"})
        slow = await driver(device(dead.getsockname()[1], id="dead", timeout=0.3, retries=1), pts, runtime)
        fast = await driver(device(twin.port, id="alive"), pts, runtime)

        async def timed_fast() -> float:
            started = time.monotonic()
            for _ in range(5):
                raw = await fast.read()
                assert isinstance(raw.values[0], int)
            return time.monotonic() - started

        started = time.monotonic()
        slow_result, fast_time = await asyncio.gather(slow.read(), timed_fast(), return_exceptions=True)
        assert isinstance(slow_result, DeviceTimeout) and "no answer" in str(slow_result)
        assert 0.5 < time.monotonic() - started < 3.0
        assert isinstance(fast_time, float) and fast_time < 0.5  # five polls while the other waits
        await slow.stop()
        await fast.stop()
    finally:
        dead.close()


async def test_agent_going_silent_mid_poll_keeps_what_was_read(twin: SnmpTwin) -> None:
    pts = points(
        *[{"id": f"s{n}", "oid": f"1.3.6.1.4.1.3833.1.30.1.3.{n}.0", "quantity": "voltage"} for n in range(1, 10)]
    )
    d = await driver(device(twin.port, max_varbinds=5, timeout=0.2, retries=0), pts)
    twin.silence_after(1)  # answers the first GET of 5 OIDs, then nothing
    raw = await d.read()
    assert all(isinstance(v, int) for v in raw.values[:5])
    for v in raw.values[5:]:
        assert isinstance(v, PointError) and "stopped answering during this poll" in v.message
    with pytest.raises(DeviceTimeout):  # nothing at all: the device as a whole failed
        await d.read()
    await d.stop()


async def test_too_big_halves_the_request() -> None:
    async with SnmpTwin.create("schneider-bcpme-snmp", max_get_varbinds=6) as twin:
        # the scalars only: table cells (branch and aux tables) are read with GETBULK
        pts = [
            p
            for p in profiled(twin.port).resolved_points
            if isinstance(p, SnmpPoint) and ".ch" not in p.id and ".4.20.1." not in p.oid
        ]
        d = await driver(device(twin.port, max_varbinds=20), pts)
        raw = await d.read()
        assert not [v for v in raw.values if isinstance(v, PointError)]
        assert d._max_varbinds <= 6
        gets = twin.requests["get"]
        raw = await d.read()  # the next poll starts with the smaller size: no tooBig round trips
        assert twin.requests["get"] - gets == -(-len(pts) // d._max_varbinds)
        await d.stop()


async def test_v3_auth_priv(twin: SnmpTwin) -> None:
    pts = points(
        {"id": "up", "oid": "1.3.6.1.2.1.1.3.0", "quantity": "uptime"},
        *[{"id": f"ch{n}", "oid": f"{BRANCH_CURRENT}.{n}", "quantity": "current"} for n in range(1, 43)],
    )
    d = await driver(v3(twin.port), pts)
    raw = await d.read()
    assert all(isinstance(v, int) for v in raw.values)
    assert twin.requests["getbulk"] >= 1
    await d.stop()
    # a wrong key: the agent drops what it cannot authenticate (net-snmp reports it, see test_snmpd)
    wrong = await driver(v3(twin.port, id="wrong", auth_key_env="EDGEGW_TEST_SNMP_WRONG", timeout=0.2, retries=0), pts)
    with pytest.raises(DeviceError):
        await wrong.read()
    await wrong.stop()


async def test_v1_gets_only_and_no_such_name(twin: SnmpTwin) -> None:
    twin.set_value(f"{BRANCH_CURRENT}.1", 7)
    pts = points(
        *[{"id": f"ch{n}", "oid": f"{BRANCH_CURRENT}.{n}", "quantity": "current"} for n in range(1, 6)],
        {"id": "missing", "oid": "1.3.6.1.4.1.3833.1.30.1.9.9.0", "quantity": "other"},
        {"id": "c64", "oid": "1.3.6.1.4.1.3833.1.30.1.4.1.0", "quantity": "other"},
    )
    d = await driver(device(twin.port, version="1"), pts)
    raw = await d.read()
    v = by_id(pts, raw.values)
    assert v["ch1"] == 7 and all(isinstance(v[f"ch{n}"], int) for n in range(2, 6))
    assert isinstance(v["missing"], PointError) and "no such name" in v["missing"].message
    # SNMPv1 cannot carry Counter64: the agent refuses it as it refuses a missing name
    assert isinstance(v["c64"], PointError)
    assert twin.requests["getbulk"] == 0 and twin.requests["get"] >= 2
    await d.stop()


async def test_rate_handles_a_counter_wrap(twin: SnmpTwin) -> None:
    oid = "1.3.6.1.4.1.9999.2.1.0"
    pts = points(
        {"id": "octets", "oid": oid, "type": "counter32", "quantity": "traffic", "unit": "B"},
        {
            "id": "rate",
            "oid": oid,
            "type": "counter32",
            "rate": True,
            "quantity": "traffic",
            "unit": "bit/s",
            "scale": 8,
        },
    )
    assert pts[0].kind is Kind.COUNTER and pts[1].kind is Kind.GAUGE
    d = await driver(device(twin.port), pts)
    # The driver hands both points the raw counter; the core's normaliser makes the rate.
    norm = Normalizer("d", list(pts))

    async def poll(at_ms: int) -> tuple[object, object, str]:
        raw = await d.read()
        assert raw.values[0] == raw.values[1]
        batch = norm.normalize(raw, at_ms)
        return raw.values[0], batch.values[1], batch.qualities[1]

    twin.set_value(oid, 2**32 - 1000, syntax="counter32")
    assert await poll(10_000) == (2**32 - 1000, None, "uncertain")  # first sample
    twin.set_value(oid, 1000, syntax="counter32")  # wrapped: 2000 octets later
    assert await poll(12_000) == (1000, 8000.0, "good")  # 2000 octets in 2 s, in bit/s
    twin.set_value(oid, 10, syntax="counter32")  # went backwards: an agent restart, not a wrap
    assert await poll(14_000) == (10, None, "uncertain")
    twin.set_value(oid, 510, syntax="counter32")
    assert await poll(16_000) == (510, 2000.0, "good")  # the rate restarted from the reset
    await d.stop()


async def test_discover_table_rows_and_generic_walk(twin: SnmpTwin) -> None:
    dev = device(
        twin.port,
        tables=[
            {
                "table": "1.3.6.1.4.1.3833.1.30.1.5.1",
                "column": 2,
                "id": "panel1.ch{index}.current",
                "circuit": "1-{index}",
                "quantity": "current",
                "unit": "A",
                "scale": 0.01,
            }
        ],
    )
    d = await driver(dev, [])
    found = await d.discover()
    assert len(found) == 42
    assert found[6] == {
        "id": "panel1.ch7.current",
        "circuit": "1-7",
        "quantity": "current",
        "unit": "A",
        "scale": 0.01,
        "oid": f"{BRANCH_CURRENT}.7",
        "type": "gauge32",
    }
    d.ctx.points = [SnmpPoint.model_validate(p) for p in found]
    await d.replan()
    twin.set_value(f"{BRANCH_CURRENT}.42", 999)
    raw = await d.read()
    assert raw.values[41] == 999 and not [v for v in raw.values if isinstance(v, PointError)]
    await d.stop()

    plain = await driver(device(twin.port, id="plain"), [])
    generic = await plain.discover()
    ids = {p["id"]: p for p in generic}
    assert ids["sysUpTime.0"]["quantity"] == "uptime" and ids["sysUpTime.0"]["scale"] == 0.01
    assert ids["sysDescr.0"]["type"] == "octets"
    for p in generic:
        SnmpPoint.model_validate(p)
    await plain.stop()


async def test_unresolvable_host_does_not_fail_start(twin: SnmpTwin, monkeypatch: pytest.MonkeyPatch) -> None:
    pts = points({"id": "up", "oid": "1.3.6.1.2.1.1.3.0", "quantity": "uptime"})
    # a host name from /etc/hosts: resolved without any DNS traffic
    named = await driver(device(twin.port, host="localhost"), pts)
    assert isinstance((await named.read()).values[0], int)
    await named.stop()

    from pysnmp.error import PySnmpError
    from pysnmp.hlapi.v3arch.asyncio import UdpTransportTarget

    async def unresolvable(*_args: object, **_kw: object) -> None:
        raise PySnmpError("Bad IPv4/UDP transport address no-such-host@161: [Errno -2] Name or service not known")

    monkeypatch.setattr(UdpTransportTarget, "create", unresolvable)
    d = await driver(device(161, host="no-such-host"), pts)  # start() logs and goes on
    with pytest.raises(DeviceError, match="cannot use no-such-host:161"):
        await d.read()
    await d.stop()
    assert parse_oid(".1.3.6") == (1, 3, 6)


async def test_same_v3_user_with_other_keys_on_two_agents(
    runtime: SnmpRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEGW_TEST_OTHER_AUTH", "other-auth-key")
    monkeypatch.setenv("EDGEGW_TEST_OTHER_PRIV", "other-priv-key")
    pts = points({"id": "up", "oid": "1.3.6.1.2.1.1.3.0", "quantity": "uptime"})
    first = SnmpTwin.create(community=None, version="3", users=[V3User("edgegw", AUTH_KEY, PRIV_KEY)])
    second = SnmpTwin.create(community=None, version="3", users=[V3User("edgegw", "other-auth-key", "other-priv-key")])
    async with first, second:
        a = await driver(v3(first.port, id="a"), pts, runtime)
        b = await driver(
            v3(second.port, id="b", auth_key_env="EDGEGW_TEST_OTHER_AUTH", priv_key_env="EDGEGW_TEST_OTHER_PRIV"),
            pts,
            runtime,
        )
        for _ in range(2):
            ra, rb = await asyncio.gather(a.read(), b.read())
            assert isinstance(ra.values[0], int) and isinstance(rb.values[0], int)
        assert a._agent is not None and b._agent is not None and a._agent.engine is not b._agent.engine
        await a.stop()
        await b.stop()
