"""Commands over SNMP: SET + read-back and one-PDU actions, against the twin and net-snmp's snmpd.

Real UDP on 127.0.0.1: v2c with the write community (only with `allow_set_v1_v2c`), v3 authPriv
with the device's user, the agents' refusals (notWritable, wrongType, wrongValue, noAccess,
v1 noSuchName), timeouts, and the config rules that keep SETs in clear off by default.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.snmp import codec
from drivers.snmp.config import SnmpAction, SnmpDevice, SnmpPoint
from drivers.snmp.driver import SnmpDriver
from drivers.snmp.twin import SnmpTwin, V3User
from gateway.buses import Bus
from gateway.config import ConfigError, load_config_text
from gateway.driver import DeviceError, DeviceTimeout, PointError, RawValue, WriteRefused, WriteRequest
from gateway.models import ActionConfig
from tests.snmp.util import (
    AUTH_KEY,
    PRIV_KEY,
    SNMPD,
    Snmpd,
    device,
    driver,
    points,
    profiled,
    run_snmpd,
    silent_udp,
    v3,
)

TWIN_WRITE = "private"  # the twin's default write community
SNMPD_WRITE = "edgegw-rw"
os.environ.setdefault("EDGEGW_TEST_SNMP_TWIN_WRITE", TWIN_WRITE)
os.environ.setdefault("EDGEGW_TEST_SNMPD_WRITE", SNMPD_WRITE)
SET_V2C: dict[str, Any] = {"allow_set_v1_v2c": True, "write_community_env": "EDGEGW_TEST_SNMP_TWIN_WRITE"}

BASE = "1.3.6.1.4.1.99999.1"
# (point, a raw value to write, what the driver reads back)
WRITABLE: list[tuple[dict[str, Any], Any, Any]] = [
    ({"id": "setpoint", "type": "integer", "quantity": "temperature", "unit": "degC", "scale": 0.1}, -215, -215),
    ({"id": "level", "type": "gauge32", "quantity": "other"}, 4_000_000_000, 4_000_000_000),
    ({"id": "hold", "type": "timeticks", "format": "seconds", "quantity": "other", "unit": "s"}, 12.34, 12.34),
    ({"id": "label", "type": "octets", "quantity": "identity", "kind": "state"}, "Raum 4, Süd", "Raum 4, Süd"),
    ({"id": "limit_text", "type": "octets", "format": "number", "quantity": "other"}, 42.5, 42.5),
    ({"id": "peer", "type": "ipaddress", "quantity": "identity", "kind": "state"}, "192.168.7.20", "192.168.7.20"),
    (
        {"id": "mode", "type": "oid", "quantity": "identity", "kind": "state"},
        "1.3.6.1.4.1.99999.9.3",
        "1.3.6.1.4.1.99999.9.3",
    ),
]
SIMS: dict[str, Any] = {
    "setpoint": 21.5,
    "level": 7,
    "hold": 1,
    "label": "lab",
    "limit_text": 5,
    "peer": "10.0.0.1",
    "mode": "1.3.6.1.4.1.99999.9.1",
}


def _oid(n: int) -> str:
    return f"{BASE}.{n}.0"


def _device_points() -> list[dict[str, Any]]:
    """What the gateway is configured with: the writable points, plus three the twin will refuse."""
    out = [{**p, "oid": _oid(i), "writable": True} for i, (p, _, _) in enumerate(WRITABLE, start=1)]
    out += [
        {"id": "locked", "oid": _oid(20), "type": "integer", "quantity": "other", "writable": True},
        # configured as gauge32 where the agent has an Integer32: the agent answers wrongType
        {"id": "typo", "oid": _oid(21), "type": "gauge32", "quantity": "other", "writable": True},
        {"id": "bounded", "oid": _oid(22), "type": "integer", "quantity": "other", "writable": True},
        {"id": "events", "oid": _oid(23), "type": "counter32", "quantity": "counter"},
    ]
    return out


def _twin_points() -> list[dict[str, Any]]:
    """What the twin serves at those OIDs (its own view: `typo` is an Integer32 there)."""
    out = []
    for p in _device_points():
        served = {k: v for k, v in p.items() if k != "writable"}
        if p["id"] == "typo":
            served["type"] = "integer"
        served["sim"] = {"value": SIMS.get(p["id"], 3)}
        out.append(served)
    return out


READER = V3User("reader", AUTH_KEY, PRIV_KEY, read_only=True)


@pytest.fixture
async def twin() -> AsyncIterator[SnmpTwin]:
    writable = [p["id"] for p, _, _ in WRITABLE] + ["typo", "bounded"]
    async with SnmpTwin.create(
        points=_twin_points(),
        writable=writable,
        limits={"bounded": (0, 100)},
        users=[V3User("edgegw", AUTH_KEY, PRIV_KEY), READER],
    ) as t:
        yield t


def _index(pts: Sequence[Any], pid: str) -> int:
    return next(i for i, p in enumerate(pts) if p.id == pid)


async def _driver_for(port: int, *, version: str = "2c", **kw: Any) -> SnmpDriver:
    base: dict[str, Any] = {"points": _device_points(), "timeout": 0.5}
    dev = (
        v3(port, **{**base, **kw}) if version == "3" else device(port, **{**base, "version": version, **SET_V2C, **kw})
    )
    return await driver(dev, _resolved(dev))


def _resolved(dev: SnmpDevice) -> list[SnmpPoint]:
    return [SnmpPoint.model_validate(p) for p in dev.points]


# --- the twin: v2c ----------------------------------------------------------------------------


class CountingBus(Bus):
    """A bus that counts the transactions taken on it."""

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.taken = 0

    def transaction(self) -> Any:
        self.taken += 1
        return super().transaction()


async def test_v2c_write_every_settable_type_and_read_it_back(twin: SnmpTwin) -> None:
    d = await _driver_for(twin.port)
    bus = d.ctx.bus = CountingBus("counted")
    try:
        pts = d.ctx.points
        for n, (point, raw, back) in enumerate(WRITABLE, start=1):
            i = _index(pts, point["id"])
            gets = twin.requests["get"]
            got = await d.write(WriteRequest(i, raw))
            assert got == back and type(got) is type(back), point["id"]
            # one SET and one GET, inside one bus transaction
            assert (twin.requests["set"], twin.requests["get"] - gets, bus.taken) == (n, 1, n)
            last = twin.writes[-1]
            assert last.point == point["id"]
        # the twin keeps what was set: a poll reads it too
        values = {p.id: v for p, v in zip(pts, (await d.read()).values, strict=True)}
        for point, _raw, back in WRITABLE:
            assert values[point["id"]] == back
        # engineering values as the twin sees them (scale applied), raw as it came off the wire
        by_point = {w.point: w for w in twin.writes}
        assert by_point["setpoint"].value == pytest.approx(-21.5) and by_point["setpoint"].raw == -215
        assert by_point["label"].raw == "Raum 4, Süd".encode()
        assert by_point["peer"].raw == bytes([192, 168, 7, 20])
        assert by_point["hold"].raw == 1234  # 12.34 s in hundredths, exact
        assert by_point["limit_text"].raw == b"42.5"
    finally:
        await d.stop()


async def test_v1_write_with_the_write_community(twin: SnmpTwin) -> None:
    d = await _driver_for(twin.port, version="1")
    try:
        i = _index(d.ctx.points, "label")
        assert await d.write(WriteRequest(i, "v1 label")) == "v1 label"
        with pytest.raises(WriteRefused, match=r"noSuchName|notWritable"):
            await d.write(WriteRequest(_index(d.ctx.points, "locked"), 5))
    finally:
        await d.stop()


async def test_refusals_name_the_agents_status(twin: SnmpTwin) -> None:
    d = await _driver_for(twin.port)
    try:
        pts = d.ctx.points
        with pytest.raises(WriteRefused, match=rf"locked: the agent answered notWritable for {_oid(20)}"):
            await d.write(WriteRequest(_index(pts, "locked"), 5))
        with pytest.raises(WriteRefused, match=r"typo: the agent answered wrongType .*check the point's `type`"):
            await d.write(WriteRequest(_index(pts, "typo"), 5))
        with pytest.raises(WriteRefused, match="bounded: the agent answered wrongValue"):
            await d.write(WriteRequest(_index(pts, "bounded"), 101))
        assert await d.write(WriteRequest(_index(pts, "bounded"), 100)) == 100
        assert [w.point for w in twin.writes] == ["bounded"]
    finally:
        await d.stop()
    # the read community as the write community: the agent reads fine and refuses to write
    assert twin.community_env is not None
    ro = await _driver_for(twin.port, write_community_env=twin.community_env)
    try:
        with pytest.raises(WriteRefused, match=r"noAccess .*may not write"):
            await ro.write(WriteRequest(_index(ro.ctx.points, "label"), "nope"))
    finally:
        await ro.stop()
    assert [w.point for w in twin.writes] == ["bounded"]


async def test_a_value_without_a_wire_form_is_refused_before_sending(twin: SnmpTwin) -> None:
    d = await _driver_for(twin.port)
    try:
        pts = d.ctx.points
        cases: list[tuple[str, RawValue]] = [
            ("setpoint", 2**31),
            ("setpoint", 1.5),
            ("setpoint", True),
            ("level", -1),
            ("hold", 0.001),
            ("label", 12),
            ("peer", "300.1.1.1"),
            ("mode", "not.an.oid"),
        ]
        for pid, raw in cases:
            with pytest.raises(ValueError):
                await d.write(WriteRequest(_index(pts, pid), raw))
        with pytest.raises(DeviceError, match="not a writable SNMP point"):
            await d.write(WriteRequest(_index(pts, "events"), 1))
        assert twin.requests["set"] == 0
    finally:
        await d.stop()


async def test_timeout_is_device_timeout(twin: SnmpTwin) -> None:
    d = await _driver_for(twin.port, timeout=0.2, retries=0)
    try:
        twin.faults.set("silent")
        started = time.monotonic()
        with pytest.raises(DeviceTimeout, match="no answer"):
            await d.write(WriteRequest(_index(d.ctx.points, "label"), "late"))
        spec = SnmpAction.model_validate({"sets": [{"oid": _oid(4), "type": "octets", "value": "x"}]})
        with pytest.raises(DeviceTimeout):
            await d.action("relabel", spec, {})
        assert time.monotonic() - started < 3
        # the SET is answered, the read-back is not: written, but not read back
        twin.faults.clear()
        twin.silence_after(1)
        back = await d.write(WriteRequest(_index(d.ctx.points, "label"), "half"))
        assert isinstance(back, PointError) and "written; the read-back failed: no answer" in back.message
        assert twin.writes[-1].raw == b"half"
    finally:
        await d.stop()
    with contextlib.closing(silent_udp()) as sock:
        port = int(sock.getsockname()[1])
        dead = await _driver_for(port, timeout=0.2, retries=0)
        try:
            with pytest.raises(DeviceTimeout):
                await dead.write(WriteRequest(_index(dead.ctx.points, "label"), "x"))
        finally:
            await dead.stop()


# --- the twin: v3 authPriv --------------------------------------------------------------------


async def test_v3_auth_priv_write_and_one_pdu_action(twin: SnmpTwin) -> None:
    d = await _driver_for(twin.port, version="3")
    try:
        assert d.config.security_level == "authPriv"
        i = _index(d.ctx.points, "label")
        assert await d.write(WriteRequest(i, "over v3")) == "over v3"
        spec = SnmpAction.model_validate(
            {
                "description": "relabel and set the level",
                "args": {"text": {"type": "string"}, "level": {"type": "integer", "min": 0, "max": 10}},
                "sets": [
                    {"oid": _oid(4), "type": "octets", "arg": "text"},
                    {"oid": _oid(2), "type": "gauge32", "arg": "level"},
                    {"oid": _oid(1), "type": "integer", "value": 190},
                ],
            }
        )
        sets_before = twin.requests["set"]
        answer = await d.action("relabel", spec, {"text": "both", "level": 9})
        assert twin.requests["set"] == sets_before + 1  # one SET request for the three
        assert answer == {_oid(4): "both", _oid(2): 9, _oid(1): 190}
        assert [w.point for w in twin.writes[-3:]] == ["label", "level", "setpoint"]
        assert twin.value("setpoint") == pytest.approx(19.0)
    finally:
        await d.stop()


async def test_an_action_is_all_or_nothing(twin: SnmpTwin) -> None:
    d = await _driver_for(twin.port, version="3")
    try:
        spec = SnmpAction.model_validate(
            {
                "sets": [
                    {"oid": _oid(4), "type": "octets", "value": "half"},
                    {"oid": _oid(20), "type": "integer", "value": 1},
                ]
            }
        )
        with pytest.raises(WriteRefused, match=rf"action 'pair': the agent answered notWritable for {_oid(20)}"):
            await d.action("pair", spec, {})
        assert twin.writes == [] and twin.value("label") == "lab"
    finally:
        await d.stop()


async def test_v3_read_only_user_is_refused_no_access(twin: SnmpTwin) -> None:
    d = await _driver_for(twin.port, version="3", user="reader")
    try:
        values = (await d.read()).values
        assert values[_index(d.ctx.points, "label")] == "lab"  # it reads
        with pytest.raises(WriteRefused, match="noAccess"):
            await d.write(WriteRequest(_index(d.ctx.points, "label"), "no"))
        assert twin.writes == []
    finally:
        await d.stop()


async def test_bcpme_profile_location_and_reset_action_over_v3() -> None:
    reset = "1.3.6.1.4.1.3833.1.30.1.1.6.0"
    async with SnmpTwin.create(
        "schneider-bcpme-snmp",
        vars={"panels": 1, "channels": 2},
        version="3",
        users=[V3User("edgegw", AUTH_KEY, PRIV_KEY)],
        writable=["panel1.location", reset],
    ) as t:
        t.set_value(reset, 0, syntax="integer")  # the assumed reset object, served for the test
        dev = profiled(
            t.port,
            version="3",
            community_env=None,
            user="edgegw",
            auth_protocol="SHA-256",
            auth_key_env="EDGEGW_TEST_SNMP_AUTH",
            priv_protocol="AES-128",
            priv_key_env="EDGEGW_TEST_SNMP_PRIV",
            profile_vars={"panels": 1, "channels": 2},
        )
        assert {p.id for p in dev.resolved_points if p.writable} == {"panel1.location"}
        assert "panel1.reset_energy" in dev.resolved_actions
        d = await driver(dev)
        try:
            i = _index(d.ctx.points, "panel1.location")
            assert await d.write(WriteRequest(i, "Hall B")) == "Hall B"
            spec = dev.resolved_actions["panel1.reset_energy"]
            assert await d.action("panel1.reset_energy", spec, {}) == {reset: 10203}
            assert [(w.point, w.raw) for w in t.writes] == [("panel1.location", b"Hall B"), (reset, 10203)]
        finally:
            await d.stop()


# --- the config: SET in clear is off unless the device says so --------------------------------


async def test_v2c_profile_writes_stay_off_without_permission(twin: SnmpTwin) -> None:
    dev = profiled(twin.port, profile="mib2-system")
    assert not dev.set_allowed and not any(p.writable for p in dev.resolved_points)
    bcpme = profiled(twin.port)
    assert bcpme.resolved_actions == {} and not any(p.writable for p in bcpme.resolved_points)
    d = await driver(dev)
    try:
        i = _index(d.ctx.points, "sys_location")
        with pytest.raises(DeviceError, match="not a writable SNMP point"):
            await d.write(WriteRequest(i, "x"))
        spec = SnmpAction.model_validate({"sets": [{"oid": "1.3.6.1.2.1.1.6.0", "type": "octets", "value": "x"}]})
        with pytest.raises(DeviceError, match=r"SET over SNMPv2c is off .*allow_set_v1_v2c"):
            await d.action("x", spec, {})
        assert twin.requests["set"] == 0
    finally:
        await d.stop()
    allowed = profiled(twin.port, profile="mib2-system", **SET_V2C)
    assert {p.id for p in allowed.resolved_points if p.writable} == {"sys_name", "sys_location", "sys_contact"}
    assert allowed.write_community == TWIN_WRITE and TWIN_WRITE not in repr(allowed)


def _site(extra: str = "", point: str = "writable: true", actions: str = "") -> str:
    return f"""
site: lab
devices:
  - id: ups
    driver: snmp
    host: 10.0.0.9
    community_env: EDGEGW_TEST_SNMP_COMMUNITY{extra}
    points:
      - {{id: contact, oid: 1.3.6.1.2.1.1.4.0, type: octets, quantity: identity, {point}}}{actions}
"""


def test_config_refuses_v2c_writes_without_permission() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(_site(), "site.yaml")
    issue = info.value.issues[0]
    assert (issue.file, issue.line) == ("site.yaml", 8), issue
    assert "writable points (contact) need SET" in issue.message and "allow_set_v1_v2c: true" in issue.message
    action = "\n    actions:\n      reset: {sets: [{oid: 1.3.6.1.2.1.1.4.0, type: octets, value: x}]}"
    with pytest.raises(ConfigError, match=r"actions \(reset\) need SET"):
        load_config_text(_site(point="writable: false", actions=action), "site.yaml")
    allow = "\n    allow_set_v1_v2c: true\n    write_community_env: EDGEGW_TEST_SNMP_TWIN_WRITE"
    (dev,) = load_config_text(_site(allow, actions=action)).devices
    assert isinstance(dev, SnmpDevice) and [p.id for p in dev.resolved_points if p.writable] == ["contact"]
    assert list(dev.resolved_actions) == ["reset"] and isinstance(dev.resolved_actions["reset"], SnmpAction)


def _device_error(**kw: Any) -> str:
    raw = {"id": "d", "driver": "snmp", "host": "10.0.0.9", "community_env": "EDGEGW_TEST_SNMP_COMMUNITY", **kw}
    with pytest.raises(ValidationError) as info:
        SnmpDevice.model_validate(raw)
    return str(info.value)


def test_config_rules_for_set_credentials() -> None:
    assert "allow_set_v1_v2c needs write_community_file or write_community_env" in _device_error(allow_set_v1_v2c=True)
    assert "SET over SNMPv1/v2c is off" in _device_error(write_community_env="EDGEGW_TEST_SNMP_TWIN_WRITE")
    v3_keys = {"version": "3", "community_env": None, "user": "u"}
    assert "are for v1/v2c" in _device_error(**v3_keys, allow_set_v1_v2c=True)
    assert "are for v1/v2c" in _device_error(**v3_keys, write_community_env="EDGEGW_TEST_SNMP_TWIN_WRITE")
    assert "is not set" in _device_error(allow_set_v1_v2c=True, write_community_env="EDGEGW_TEST_SNMP_NOT_SET")
    repeat = {"repeat": {"n": [1, 2]}, "points": [{"id": "x{n}", "oid": "1.3.6.1.4.1.1.{n}.0", "writable": True}]}
    assert "writable points (x{n}) need SET" in _device_error(points=[repeat])


def test_a_writable_point_needs_a_settable_type() -> None:
    base = {"id": "p", "oid": "1.3.6.1.4.1.1.1.0", "quantity": "other", "writable": True}
    for extra, message in [
        ({}, "a writable point needs `type`"),
        ({"type": "counter32"}, "counter32 is counted by the agent: it is never writable"),
        ({"type": "counter64"}, "never writable"),
        ({"type": "opaque"}, "`type: opaque` cannot be written"),
    ]:
        with pytest.raises(ValidationError, match=message):
            SnmpPoint.model_validate({**base, **extra})
    assert SnmpPoint.model_validate({**base, "type": "unsigned32"}).type == "gauge32"


def test_action_format() -> None:
    ok = SnmpAction.model_validate(
        {
            "args": {"code": {"type": "integer", "enum": [1, 2]}},
            "sets": [{"oid": ".1.3.6.1.4.1.1.1.0", "type": "int", "arg": "code"}],
        }
    )
    assert isinstance(ok, ActionConfig) and ok.sets[0].oid == "1.3.6.1.4.1.1.1.0" and ok.sets[0].type == "integer"
    for spec, message in [
        ({"sets": []}, "at least 1 item"),
        ({"sets": [{"oid": "1.3.6.1.4.1.1.1.0", "type": "integer"}]}, "either `value`"),
        ({"sets": [{"oid": "1.3.6.1.4.1.1.1.0", "type": "integer", "value": 1, "arg": "a"}]}, "either `value`"),
        ({"sets": [{"oid": "1.3.6.1.4.1.1.1.0", "type": "integer", "arg": "a"}]}, "no argument 'a'"),
        ({"sets": [{"oid": "1.3.6.1.4.1.1.1.0", "type": "counter32", "value": 0}]}, "never writable"),
        ({"sets": [{"oid": "1.3.6.1.4.1.1.1.0", "type": "integer", "value": 2**40}]}, "outside the range"),
        ({"sets": [{"oid": "1.3.6.1.4.1.1.1.0", "type": "integer", "value": True}]}, "TruthValue"),
        ({"sets": [{"oid": "1.3.6.1.4.1.1.1.0", "type": "ipaddress", "value": "x"}]}, "not an IPv4 address"),
        (
            {
                "args": {"on": {"type": "boolean"}},
                "sets": [{"oid": "1.3.6.1.4.1.1.1.0", "type": "integer", "arg": "on"}],
            },
            "a boolean argument cannot be sent as integer",
        ),
        (
            {"args": {"n": {"required": False}}, "sets": [{"oid": "1.3.6.1.4.1.1.1.0", "type": "integer", "arg": "n"}]},
            "make it required or give a default",
        ),
    ]:
        with pytest.raises(ValidationError, match=message):
            SnmpAction.model_validate(spec)


# --- the codec: encode is decode's inverse ----------------------------------------------------


@given(st.integers(-(2**31), 2**31 - 1))
def test_integer_round_trip(n: int) -> None:
    assert codec.decode(codec.encode(n, "integer"), "integer") == n


@given(st.integers(0, 2**32 - 1))
def test_unsigned_round_trip(n: int) -> None:
    assert codec.decode(codec.encode(n, "gauge32"), "gauge32") == n
    assert codec.decode(codec.encode(n, "timeticks"), "timeticks") == n
    assert codec.decode(codec.encode(n / 100, "timeticks", "seconds"), "timeticks", "seconds") == n / 100


@given(st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**30), 10**30))
def test_number_as_text_round_trip(x: float) -> None:
    back = codec.decode(codec.encode(x, "octets", "number"), "octets", "number")
    assert back == x and type(back) is type(x)


@given(
    st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=64).filter(
        lambda t: not t.endswith("\x00")
    )
)
def test_text_round_trip(text: str) -> None:
    value = codec.encode(text, "octets", "text")
    assert codec.decode(value, "octets", "text") == text


@given(st.binary(max_size=32))
def test_hex_and_address_round_trip(data: bytes) -> None:
    assert codec.decode(codec.encode(data.hex(), "octets", "hex"), "octets", "hex") == data.hex()
    if len(data) >= 4:
        dotted = ".".join(str(b) for b in data[:4])
        assert codec.decode(codec.encode(dotted, "ipaddress"), "ipaddress") == dotted


def test_out_of_range_and_wrong_kinds() -> None:
    for raw, type_name, fmt in [
        (2**31, "integer", "auto"),
        (-(2**31) - 1, "integer", "auto"),
        (2**32, "gauge32", "auto"),
        (-1, "timeticks", "auto"),
        (0.005, "timeticks", "seconds"),
        (math.inf, "octets", "number"),
        ("zz", "octets", "hex"),
        (1, "counter64", "auto"),
        (1, "opaque", "auto"),
    ]:
        with pytest.raises(ValueError):
            codec.encode(raw, type_name, fmt)


# --- net-snmp's snmpd: a third-party agent with writable objects ------------------------------

needs_snmpd = pytest.mark.skipif(SNMPD is None, reason="net-snmp snmpd is not installed (apt-get install snmpd)")
SYS_CONTACT, SYS_NAME, SYS_LOCATION, SYS_DESCR = (f"1.3.6.1.2.1.1.{n}.0" for n in (4, 5, 6, 1))


@pytest.fixture
async def snmpd(tmp_path: Path) -> AsyncIterator[Snmpd]:
    # sysContact and sysLocation stay writable only while snmpd.conf does not set them; sysName is
    # set here, so the agent refuses it (notWritable), as it refuses the read-only sysDescr.
    async with run_snmpd(
        tmp_path,
        "rocommunity public 127.0.0.1\n"
        f"rwcommunity {SNMPD_WRITE} 127.0.0.1\n"
        f'createUser edgegw SHA-256 "{AUTH_KEY}" AES "{PRIV_KEY}"\n'
        f'createUser reader SHA-256 "{AUTH_KEY}" AES "{PRIV_KEY}"\n'
        "rwuser edgegw priv\n"
        "rouser reader priv\n"
        "sysName edgegw-snmpd\n",
    ) as agent:
        yield agent


def _system_points() -> list[SnmpPoint]:
    return points(
        {"id": "contact", "oid": SYS_CONTACT, "type": "octets", "quantity": "identity", "writable": True},
        {"id": "location", "oid": SYS_LOCATION, "type": "octets", "quantity": "identity", "writable": True},
        {"id": "name", "oid": SYS_NAME, "type": "octets", "quantity": "identity", "writable": True},
        {"id": "descr", "oid": SYS_DESCR, "type": "octets", "quantity": "identity", "writable": True},
        {"id": "location_as_int", "oid": SYS_LOCATION, "type": "integer", "quantity": "other", "writable": True},
    )


def _snmpd_v2c(port: int, **kw: Any) -> SnmpDevice:
    return device(port, allow_set_v1_v2c=True, write_community_env="EDGEGW_TEST_SNMPD_WRITE", **kw)


@needs_snmpd
async def test_snmpd_v2c_and_v3_write_and_read_back(snmpd: Snmpd) -> None:
    system = profiled(
        snmpd.port, profile="mib2-system", allow_set_v1_v2c=True, write_community_env="EDGEGW_TEST_SNMPD_WRITE"
    )
    d = await driver(system)
    try:
        i = _index(d.ctx.points, "sys_location")
        assert await d.write(WriteRequest(i, "Hall A, rack 7")) == "Hall A, rack 7"
        values = {p.id: v for p, v in zip(d.ctx.points, (await d.read()).values, strict=True)}
        assert values["sys_location"] == "Hall A, rack 7" and values["sys_name"] == "edgegw-snmpd"
    finally:
        await d.stop()
    secure = await driver(v3(snmpd.port, id="v3"), _system_points())
    try:
        assert await secure.write(WriteRequest(0, "ops@example.net")) == "ops@example.net"
        assert (await secure.read()).values[0] == "ops@example.net"
    finally:
        await secure.stop()


@needs_snmpd
async def test_snmpd_action_sets_both_or_neither(snmpd: Snmpd) -> None:
    d = await driver(v3(snmpd.port), _system_points())
    try:
        both = SnmpAction.model_validate(
            {
                "args": {"where": {"type": "string"}},
                "sets": [
                    {"oid": SYS_CONTACT, "type": "octets", "value": "noc"},
                    {"oid": SYS_LOCATION, "type": "octets", "arg": "where"},
                ],
            }
        )
        assert await d.action("tag", both, {"where": "cage 3"}) == {SYS_CONTACT: "noc", SYS_LOCATION: "cage 3"}
        assert (await d.read()).values[:2] == ["noc", "cage 3"]
        half = SnmpAction.model_validate(
            {
                "sets": [
                    {"oid": SYS_CONTACT, "type": "octets", "value": "lost"},
                    {"oid": SYS_DESCR, "type": "octets", "value": "x"},
                ]
            }
        )
        with pytest.raises(WriteRefused, match=rf"notWritable for {SYS_DESCR}"):
            await d.action("half", half, {})
        assert (await d.read()).values[0] == "noc"
    finally:
        await d.stop()


@needs_snmpd
async def test_snmpd_refusals(snmpd: Snmpd) -> None:
    pts = _system_points()
    d = await driver(_snmpd_v2c(snmpd.port), pts)
    try:
        with pytest.raises(WriteRefused, match=rf"name: the agent answered notWritable for {SYS_NAME}"):
            await d.write(WriteRequest(2, "renamed"))
        with pytest.raises(WriteRefused, match=rf"descr: the agent answered notWritable for {SYS_DESCR}"):
            await d.write(WriteRequest(3, "x"))
        with pytest.raises(WriteRefused, match="location_as_int: the agent answered wrongType"):
            await d.write(WriteRequest(4, 7))
    finally:
        await d.stop()
    v1 = await driver(_snmpd_v2c(snmpd.port, id="v1", version="1"), pts)
    try:
        assert await v1.write(WriteRequest(1, "v1 room")) == "v1 room"
        with pytest.raises(WriteRefused, match=r"noSuchName .*SNMPv1"):
            await v1.write(WriteRequest(3, "x"))
    finally:
        await v1.stop()
    # the read-only community, and the read-only v3 user: noAccess
    read_only = await driver(
        device(snmpd.port, id="ro", allow_set_v1_v2c=True, write_community_env="EDGEGW_TEST_SNMP_COMMUNITY"), pts
    )
    try:
        with pytest.raises(WriteRefused, match="noAccess"):
            await read_only.write(WriteRequest(1, "nope"))
    finally:
        await read_only.stop()
    reader = await driver(v3(snmpd.port, id="reader", user="reader"), pts)
    try:
        assert (await reader.read()).values[1] == "v1 room"
        with pytest.raises(WriteRefused, match="noAccess"):
            await reader.write(WriteRequest(1, "nope"))
    finally:
        await reader.stop()


@needs_snmpd
async def test_snmpd_wrong_write_community_times_out(snmpd: Snmpd) -> None:
    d = await driver(
        device(
            snmpd.port,
            allow_set_v1_v2c=True,
            write_community_env="EDGEGW_TEST_SNMP_WRONG",
            timeout=0.2,
            retries=0,
        ),
        _system_points(),
    )
    try:
        with pytest.raises(DeviceTimeout, match="wrong community looks the same"):
            await d.write(WriteRequest(1, "x"))
    finally:
        await d.stop()
