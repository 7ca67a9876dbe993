"""Config models: versions, credentials from files and the environment, points, tables, traps, profiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from drivers.snmp.config import SnmpDevice, SnmpPoint, SnmpSection, SnmpTable, split_listen
from gateway.config import ConfigError, load_config_text, parse_device
from gateway.points import Kind
from gateway.profiles import shipped_profiles
from tests.snmp.util import AUTH_KEY, COMMUNITY, PRIV_KEY

BASE: dict[str, Any] = {"id": "ups", "driver": "snmp", "host": "10.0.0.9"}


def make(**kw: Any) -> SnmpDevice:
    return SnmpDevice.model_validate({**BASE, **kw})


def error_of(**kw: Any) -> str:
    with pytest.raises(ValidationError) as info:
        make(**kw)
    return str(info.value)


def test_versions_and_communities(tmp_path: Path) -> None:
    secret = tmp_path / "community"
    secret.write_text("s3cret-community\n")
    for given, version in [(2, "2c"), ("v2c", "2c"), ("1", "1"), (1, "1")]:
        dev = make(version=given, community_file=str(secret))
        assert dev.version == version and dev.community == "s3cret-community"
    assert make(community_env="EDGEGW_TEST_SNMP_COMMUNITY").community == COMMUNITY
    assert "needs community_file or community_env" in error_of()
    assert "give community_file or community_env, not both" in error_of(
        community_file=str(secret), community_env="EDGEGW_TEST_SNMP_COMMUNITY"
    )
    assert "is for SNMPv3" in error_of(community_env="EDGEGW_TEST_SNMP_COMMUNITY", user="x")
    dev = make(community_file=str(secret))
    # the secret is nowhere in what gets printed, dumped or published
    for text in (repr(dev), str(dev.model_dump()), str(dev.protocol_address())):
        assert "s3cret" not in text
    assert dev.protocol_address() == {"host": "10.0.0.9", "port": 161, "version": "2c"}


def test_v3_users() -> None:
    dev = make(
        version=3,
        user="edgegw",
        auth_protocol="sha256",
        auth_key_env="EDGEGW_TEST_SNMP_AUTH",
        priv_protocol="aes",
        priv_key_env="EDGEGW_TEST_SNMP_PRIV",
    )
    assert (dev.auth_protocol, dev.priv_protocol, dev.security_level) == ("SHA-256", "AES-128", "authPriv")
    assert dev.auth_key == AUTH_KEY and dev.priv_key == PRIV_KEY
    assert AUTH_KEY not in repr(dev) and dev.protocol_address()["security"] == "authPriv"
    assert make(version=3, user="ro").security_level == "noAuthNoPriv"
    assert "SNMPv3 needs `user`" in error_of(version=3)
    assert "needs authentication too" in error_of(
        version=3, user="u", priv_key_env="EDGEGW_TEST_SNMP_PRIV", priv_protocol="AES-128"
    )
    assert "needs `auth_protocol`" in error_of(version=3, user="u", auth_key_env="EDGEGW_TEST_SNMP_AUTH")
    assert "no auth key is given" in error_of(version=3, user="u", auth_protocol="SHA")
    assert "not a community" in error_of(version=3, user="u", community_env="EDGEGW_TEST_SNMP_COMMUNITY")
    assert "Input should be" in error_of(
        version=3, user="u", auth_protocol="SHA-3", auth_key_env="EDGEGW_TEST_SNMP_AUTH"
    )


def test_short_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEGW_TEST_SHORT_KEY", "short")
    assert "at least 8 characters" in error_of(
        version=3, user="u", auth_protocol="SHA", auth_key_env="EDGEGW_TEST_SHORT_KEY"
    )


def test_points() -> None:
    counter = SnmpPoint.model_validate(
        {"id": "c", "oid": ".1.3.6.1.2.1.2.2.1.10.1", "type": "Counter32", "quantity": "traffic"}
    )
    assert counter.oid == "1.3.6.1.2.1.2.2.1.10.1" and counter.kind is Kind.COUNTER and counter.type == "counter32"
    rate = SnmpPoint.model_validate(
        {"id": "r", "oid": "1.3.6.1.9", "type": "counter64", "rate": True, "quantity": "traffic"}
    )
    assert rate.kind is Kind.GAUGE and rate.rate == "per_second" and rate.counter_width() == 64
    assert rate.protocol_address() == {"oid": "1.3.6.1.9", "type": "counter64"}
    assert rate.to_def().meta()["rate"] == "per_second"
    named = SnmpPoint.model_validate({"id": "n", "oid": "BCPME-MIB::branchCurrent.12", "quantity": "current"})
    assert named.oid == "BCPME-MIB::branchCurrent.12"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"oid": "branchCurrent.1"}, "not an OID"),
        ({"oid": "1.3.6.1", "rate": True, "type": "gauge32"}, "counter of known width"),
        ({"oid": "1.3.6.1", "rate": True, "kind": "counter"}, "a rate is a gauge"),
        ({"oid": "1.3.6.1", "format": "seconds", "type": "gauge32"}, "timeticks"),
        ({"oid": "1.3.6.1", "format": "hex", "type": "integer"}, "octets"),
        ({"oid": "1.3.6.1", "type": "float"}, "Input should be"),
    ]
    for bad, why in cases:
        with pytest.raises(ValidationError, match=why):
            SnmpPoint.model_validate({"id": "x", "quantity": "other", **bad})


def test_tables() -> None:
    table = SnmpTable.model_validate(
        {"table": "1.3.6.1.2.1.2.2", "column": 2, "id": "if{index}.descr", "quantity": "identity"}
    )
    assert table.entry == 1 and table.point == {"id": "if{index}.descr", "quantity": "identity"}
    for bad, why in [
        ({"id": "x{nope}"}, "unknown variable"),
        ({"quantity": "other"}, "needs an `id` template"),
        ({"id": "a{index}", "oid": "1.3.6.1"}, "takes its OID"),
        ({"id": "a{index}", "quantity": "speed"}, "unknown quantity"),
    ]:
        with pytest.raises(ValidationError, match=why):
            SnmpTable.model_validate({"table": "1.3.6.1.2.1.2.2", "column": 2, "quantity": "other", **bad})


def test_trap_section(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGEGW_TEST_TRAP_COMMUNITIES", "c-alpha1, c-beta2,,c-gamma3")
    section = SnmpSection.model_validate(
        {"traps": {"listen": "0.0.0.0:162", "communities_env": "EDGEGW_TEST_TRAP_COMMUNITIES"}}
    )
    assert section.traps is not None and section.traps.communities == ["c-alpha1", "c-beta2", "c-gamma3"]
    assert "c-alpha1" not in repr(section)
    listed = tmp_path / "communities"
    listed.write_text("# trap communities\nalpha\n\nbeta\n")
    section = SnmpSection.model_validate({"traps": {"listen": "[::1]:10162", "communities_file": str(listed)}})
    assert section.traps is not None and section.traps.communities == ["alpha", "beta"]
    assert split_listen("[::1]:10162") == ("::1", 10162)
    with pytest.raises(ValidationError, match="accepts nothing"):
        SnmpSection.model_validate({"traps": {"listen": "127.0.0.1:162"}})
    with pytest.raises(ValidationError, match="use host:port"):
        SnmpSection.model_validate({"traps": {"listen": "162", "communities_env": "EDGEGW_TEST_TRAP_COMMUNITIES"}})
    user = {"user": "u", "auth_protocol": "SHA-512", "auth_key_env": "EDGEGW_TEST_SNMP_AUTH"}
    section = SnmpSection.model_validate(
        {"traps": {"listen": "127.0.0.1:162", "users": [{**user, "engine_ids": ["0x80:00:1F:88:80:01:02:03"]}]}}
    )
    assert section.traps is not None and section.traps.users[0].engine_ids == ["80001f8880010203"]
    with pytest.raises(ValidationError, match="not an engine ID"):
        SnmpSection.model_validate({"traps": {"listen": "127.0.0.1:162", "users": [{**user, "engine_ids": ["xyz"]}]}})
    assert SnmpSection.model_validate({}).traps is None


def test_shipped_profiles_load_through_the_config() -> None:
    shipped = shipped_profiles("snmp")
    assert {"schneider-bcpme-snmp", "mib2-system", "mib2-interfaces"} <= set(shipped)
    raw = {**BASE, "community_env": "EDGEGW_TEST_SNMP_COMMUNITY", "profile": "schneider-bcpme-snmp"}
    resolved = parse_device({**raw, "profile_vars": {"panels": 1, "flex_circuits": 2}})
    ids = {p.id for p in resolved.resolved_points}
    assert "panel1.ch42.current" in ids and "panel2.ch1.current" not in ids and "panel1.flex2.energy" in ids
    assert isinstance(resolved, SnmpDevice) and resolved.max_repetitions == 42  # the profile's device defaults
    interfaces = parse_device({**BASE, "community_env": "EDGEGW_TEST_SNMP_COMMUNITY", "profile": "mib2-interfaces"})
    assert isinstance(interfaces, SnmpDevice) and not interfaces.resolved_points and len(interfaces.tables) == 6


def test_gateway_config_with_the_snmp_section() -> None:
    text = """
site: lab
snmp:
  traps: {listen: "127.0.0.1:10162", communities_env: EDGEGW_TEST_SNMP_COMMUNITY}
devices:
  - {id: ups-room-2, driver: snmp, host: 10.0.0.9, version: 2c, community_env: EDGEGW_TEST_SNMP_COMMUNITY,
     points: [{id: uptime, oid: 1.3.6.1.2.1.1.3.0, quantity: uptime, unit: s, scale: 0.01}]}
"""
    cfg = load_config_text(text)
    section = cfg.section("snmp")
    assert isinstance(section, SnmpSection) and section.traps is not None
    assert section.traps.communities == [COMMUNITY]
    with pytest.raises(ConfigError, match="needs community_file or community_env"):
        load_config_text("site: lab\ndevices:\n  - {id: x, driver: snmp, host: 10.0.0.9}\n")


def test_sample_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EDGEGW_SNMP_COMMUNITY", "EDGEGW_SNMP_TRAP_COMMUNITIES"):
        monkeypatch.setenv(name, "sample-community")
    for name in ("EDGEGW_SNMP_AUTH", "EDGEGW_SNMP_PRIV"):
        monkeypatch.setenv(name, "sample-key-123")
    from gateway.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "drivers" / "snmp" / "sample.yaml")
    devices = {d.id: d for d in cfg.devices}
    assert len(devices["bcpme-1-snmp"].resolved_points) == 2 + 12 + 9 + 37 + 42 * 12
    assert len(devices["ups-room-2"].resolved_points) == 4
    assert devices["switch-a1"].resolved_points == ()
