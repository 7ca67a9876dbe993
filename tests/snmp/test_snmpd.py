"""Interoperability with a real agent: net-snmp's snmpd on a free loopback port (v2c and v3)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from drivers.snmp import scan
from drivers.snmp.config import SnmpPoint
from gateway.driver import DeviceError, DeviceTimeout
from gateway.normalize import Normalizer
from tests.snmp.util import AUTH_KEY, COMMUNITY, PRIV_KEY, SNMPD, Snmpd, by_id, device, driver, profiled, run_snmpd, v3

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(SNMPD is None, reason="net-snmp snmpd is not installed (Debian: apt-get install snmpd)"),
]


@pytest.fixture
async def snmpd(tmp_path: Path) -> AsyncIterator[Snmpd]:
    async with run_snmpd(
        tmp_path,
        f"rocommunity {COMMUNITY} 127.0.0.1\n"
        f'createUser edgegw SHA-256 "{AUTH_KEY}" AES "{PRIV_KEY}"\n'
        f'createUser strong SHA-512 "{AUTH_KEY}" AES-256 "{PRIV_KEY}"\n'
        "rouser edgegw priv\n"
        "rouser strong priv\n"
        "sysName edgegw-snmpd\n"
        "sysLocation edgegw-lab\n",
    ) as agent:
        yield agent


async def test_v2c_system_group_and_interface_tables(snmpd: Snmpd) -> None:
    system = profiled(snmpd.port, "mib2-system")
    d = await driver(system)
    v = by_id(system.resolved_points, (await d.read()).values)
    assert isinstance(v["uptime"], int) and v["uptime"] >= 0
    assert v["sys_name"] == "edgegw-snmpd" and v["sys_location"] == "edgegw-lab"
    assert v["sys_object_id"].startswith("1.3.6.1.4.1.8072.")  # net-snmp's enterprise
    await d.stop()

    interfaces = profiled(snmpd.port, "mib2-interfaces", id="ifaces")
    assert interfaces.resolved_points == () and len(interfaces.tables) == 6
    d = await driver(interfaces)
    found = await d.discover()
    ids = {p["id"]: p for p in found}
    assert ids["if1.descr"]["oid"] == "1.3.6.1.2.1.2.2.1.2.1" and ids["if1.descr"]["circuit"] == "if1"
    assert ids["if1.in_octets"]["type"] == "counter64" and ids["if1.in_rate"]["rate"] == "per_second"
    d.ctx.points = [SnmpPoint.model_validate(p) for p in found]
    await d.replan()
    norm = Normalizer("ifaces", d.ctx.points)
    raw = await d.read()
    first = by_id(d.ctx.points, raw.values)
    assert first["if1.descr"] == "lo" and first["if1.oper_status"] == 1
    assert isinstance(first["if1.in_octets"], int) and isinstance(first["if1.in_rate"], int)
    rates = {r["point"]: r for r in norm.normalize(raw, 1000).as_dicts()}
    assert rates["if1.in_rate"]["quality"] == "uncertain"  # the rate is known from the next poll
    second = {r["point"]: r for r in norm.normalize(await d.read(), 2000).as_dicts()}
    assert second["if1.in_rate"]["quality"] == "good" and float(str(second["if1.in_rate"]["value"])) >= 0
    await d.stop()


async def test_v3_auth_priv_sha256_aes128_and_sha512_aes256(snmpd: Snmpd) -> None:
    pts = profiled(snmpd.port, "mib2-system").resolved_points
    d = await driver(v3(snmpd.port), pts)
    v = by_id(pts, (await d.read()).values)
    assert v["sys_name"] == "edgegw-snmpd" and isinstance(v["uptime"], int)
    await d.stop()
    strong = await driver(
        v3(snmpd.port, id="strong", user="strong", auth_protocol="SHA-512", priv_protocol="AES-256"), pts
    )
    v = by_id(pts, (await strong.read()).values)
    assert v["sys_location"] == "edgegw-lab"
    await strong.stop()


async def test_v3_failures_are_clear(snmpd: Snmpd) -> None:
    pts = profiled(snmpd.port, "mib2-system").resolved_points
    wrong_key = await driver(v3(snmpd.port, id="wk", auth_key_env="EDGEGW_TEST_SNMP_WRONG", timeout=0.3), pts)
    with pytest.raises(DeviceError, match="authentication failed for user 'edgegw'"):
        await wrong_key.read()
    await wrong_key.stop()
    unknown = await driver(v3(snmpd.port, id="uu", user="nobody", timeout=0.3), pts)
    with pytest.raises(DeviceError, match="'nobody' is unknown to the agent"):
        await unknown.read()
    await unknown.stop()
    community = await driver(
        device(snmpd.port, id="wc", community_env="EDGEGW_TEST_SNMP_WRONG", timeout=0.2, retries=0), pts
    )
    with pytest.raises(DeviceTimeout, match="wrong community looks the same"):
        await community.read()
    await community.stop()


async def test_scan_walks_the_agent(snmpd: Snmpd) -> None:
    out = io.StringIO()

    def run() -> int:
        with redirect_stdout(out):
            return scan.main(
                ["127.0.0.1", "--port", str(snmpd.port), "--oid", "1.3.6.1.2.1.1", "--oid", "1.3.6.1.2.1.2.2.1.2"]
            )

    assert await asyncio.to_thread(run) == 0
    text = out.getvalue()
    assert "SNMPv2-MIB::sysName.0" in text and "'edgegw-snmpd'" in text
    assert "IF-MIB::ifDescr.1" in text and "'lo'" in text
    assert "-- " in text.splitlines()[-1]

    yaml_out = io.StringIO()

    def run_v3() -> int:
        with redirect_stdout(yaml_out):
            return scan.main(
                [
                    "127.0.0.1",
                    "--port",
                    str(snmpd.port),
                    "--version",
                    "3",
                    "--user",
                    "edgegw",
                    "--auth-key-env",
                    "EDGEGW_TEST_SNMP_AUTH",
                    "--priv-key-env",
                    "EDGEGW_TEST_SNMP_PRIV",
                    "--oid",
                    "1.3.6.1.2.1.1",
                    "--profile",
                ]
            )

    assert await asyncio.to_thread(run_v3) == 0
    import yaml

    doc = yaml.safe_load(yaml_out.getvalue())
    assert doc["driver"] == "snmp"
    for point in doc["points"]:
        SnmpPoint.model_validate(point)
    assert any(p["id"] == "sysUpTime.0" and p["quantity"] == "uptime" for p in doc["points"])
