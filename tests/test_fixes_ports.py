"""Every port field of every config model takes 1-65535 only, and `edgegw check` names file, line and field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config_text
from gateway.models import port_number

REPO = Path(__file__).resolve().parent.parent

# One config with a port in every place a config can have one; @@ is replaced per case.
PORTS = """\
site: s
mqtt: {url: "mqtt://127.0.0.1:@@"}
health: {listen: "127.0.0.1:@@"}
bacnet: {local_address: "127.0.0.1/24:@@", bbmd: {address: "10.0.0.1:@@"}}
snmp:
  traps: {listen: "127.0.0.1:@@", communities_env: EDGEGW_TEST_COMMUNITY}
buses:
  - {id: b1, tcp: {host: 10.0.0.7, port: @@}}
devices:
  - {id: m1, driver: modbus, tcp: {host: 10.0.0.5, port: @@}, points: []}
  - {id: d1, driver: dlms, tcp: {host: 10.0.0.6, port: @@}}
  - {id: s1, driver: snmp, host: 10.0.0.8, port: @@, community_env: EDGEGW_TEST_COMMUNITY}
  - {id: b2, driver: bacnet, address: "10.0.0.9:@@", device_instance: 5}
  - {id: b3, driver: bacnet, address: "10.0.0.9", network: 5, mac: "10.0.0.10:@@", device_instance: 6}
"""
FIELDS = [
    (2, "mqtt.url"),
    (3, "health.listen"),
    (4, "bacnet.local_address"),
    (4, "bacnet.bbmd.address"),
    (6, "snmp.traps.listen"),
    (8, "buses[0].tcp.port"),
    (10, "devices[0].tcp.port"),
    (11, "devices[1].tcp.port"),
    (12, "devices[2].port"),
    (13, "devices[3].address"),
    (14, "devices[4].mac"),
]
LISTEN_FIELDS = {"bacnet.local_address", "snmp.traps.listen"}
ENV = {"PATH": "/usr/bin:/bin", "EDGEGW_TEST_COMMUNITY": "public"}


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        cwd=REPO,
        check=False,
    )


@pytest.mark.parametrize("port", ["0", "-1", "65536", "99999"])
def test_check_rejects_every_out_of_range_port(tmp_path: Path, port: str) -> None:
    path = tmp_path / "ports.yaml"
    path.write_text(PORTS.replace("@@", port), encoding="utf-8")
    res = check(path)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.splitlines()
    # Port 0 is an ephemeral port: fine for what the gateway binds itself, never for a destination.
    fields = [f for f in FIELDS if port != "0" or f[1] not in LISTEN_FIELDS]
    for line, field in fields:
        assert any(x.startswith(f"{path}:{line} {field}: ") for x in lines), (field, res.stderr)
    assert f"({len(fields)} errors)" in res.stderr


@pytest.mark.parametrize("port", ["1", "65535"])
def test_check_accepts_the_ends_of_the_range(tmp_path: Path, port: str) -> None:
    path = tmp_path / "ports.yaml"
    path.write_text(PORTS.replace("@@", port), encoding="utf-8")
    res = check(path)
    assert res.returncode == 0, res.stderr


def test_a_port_is_a_number_not_a_flag() -> None:
    assert port_number("502") == 502
    assert port_number(502.0) == 502
    for bad in (True, False, 0, 1.5, "5o2", "", None, 65536):
        with pytest.raises(ValueError, match="1-65535"):
            port_number(bad)
    assert port_number("0", listen=True) == 0  # a port the gateway binds may be ephemeral
    text = "site: s\ndevices:\n  - {id: m1, driver: modbus, tcp: {host: h, port: true}, points: []}\n"
    with pytest.raises(ConfigError) as exc:
        load_config_text(text, "t.yaml")
    assert [str(i) for i in exc.value.issues] == ["t.yaml:3 devices[0].tcp.port: not a port: True (a port is 1-65535)"]
