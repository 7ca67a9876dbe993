"""Shape errors versus what the machine lacks: missing files and secrets warn in `check`, fail `run`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, load_config_text, parse_device

REPO = Path(__file__).resolve().parent.parent

TEXT = """\
site: s
mqtt:
  url: mqtts://broker.example:8883
  username: gw
  password_file: secret/mqtt.password
  tls: {ca_file: pki/ca.pem}
devices:
  - id: ups
    driver: snmp
    host: 10.0.0.9
    version: 3
    user: gw
    auth_protocol: SHA-256
    auth_key_env: EDGEGW_TEST_ENV_AUTH
    priv_protocol: AES-128
    priv_key_env: EDGEGW_TEST_ENV_PRIV
    points: [{id: up, oid: 1.3.6.1.2.1.1.3.0, quantity: uptime}]
  - id: meter
    driver: dlms
    tcp: {host: 10.0.0.20}
    auth: high_gmac
    keys_file: secret/meter.keys
"""
NEEDED = [
    (5, "mqtt.password_file", "cannot read password_file"),
    (6, "mqtt.tls.ca_file", "ca.pem' does not exist"),
    (14, "devices[0].auth_key_env", "'EDGEGW_TEST_ENV_AUTH' (auth_key_env) is not set"),
    (16, "devices[0].priv_key_env", "'EDGEGW_TEST_ENV_PRIV' (priv_key_env) is not set"),
    (22, "devices[1].keys_file", "cannot read keys_file"),
]


def write(tmp_path: Path, text: str = TEXT) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_check_mode_loads_and_lists_every_missing_file_and_variable(tmp_path: Path) -> None:
    path = write(tmp_path)
    cfg = load_config(path, "warn")
    assert [(w.line, w.path) for w in cfg.warnings] == [(line, key) for line, key, _ in NEEDED]
    for warning, (_, _, text) in zip(cfg.warnings, NEEDED, strict=True):
        assert warning.environment and warning.file == str(path) and text in warning.message


def test_run_mode_refuses_them_as_errors(tmp_path: Path) -> None:
    path = write(tmp_path)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert [(i.line, i.path) for i in exc.value.issues] == [(line, key) for line, key, _ in NEEDED]
    assert all(i.environment for i in exc.value.issues)


def test_present_files_and_variables_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret").mkdir()
    (tmp_path / "pki").mkdir()
    (tmp_path / "secret" / "mqtt.password").write_text("pw-value\n", encoding="utf-8")
    (tmp_path / "pki" / "ca.pem").write_text("stand-in\n", encoding="utf-8")
    keys = "authentication_key: 000102030405060708090A0B0C0D0E0F\nencryption_key: 000102030405060708090A0B0C0D0E0F\nsystem_title: 4142434445464748\n"
    (tmp_path / "secret" / "meter.keys").write_text(keys, encoding="utf-8")
    monkeypatch.setenv("EDGEGW_TEST_ENV_AUTH", "auth-key-1")
    monkeypatch.setenv("EDGEGW_TEST_ENV_PRIV", "priv-key-1")
    cfg = load_config(write(tmp_path))
    assert cfg.warnings == []
    assert cfg.mqtt.password == "pw-value"


def test_shape_errors_stay_errors_with_the_warnings_beside_them(tmp_path: Path) -> None:
    path = write(tmp_path, TEXT.replace("version: 3", "version: 3\n    retries: 9"))
    with pytest.raises(ConfigError) as exc:
        load_config(path, "warn")
    assert [(i.line, i.path) for i in exc.value.issues] == [(12, "devices[0].retries")]
    assert not exc.value.issues[0].environment
    assert {w.path for w in exc.value.warnings} == {"mqtt.password_file", "mqtt.tls.ca_file", "devices[1].keys_file"}


def test_a_content_error_in_a_present_secret_is_a_shape_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEGW_TEST_ENV_AUTH", "short")
    text = "site: s\ndevices:\n" + TEXT.split("devices:\n")[1].split("  - id: meter", maxsplit=1)[0]
    text = text.replace("    priv_protocol: AES-128\n    priv_key_env: EDGEGW_TEST_ENV_PRIV\n", "")
    with pytest.raises(ConfigError) as exc:
        load_config_text(text, "t.yaml", tmp_path, "warn")
    assert [str(i) for i in exc.value.issues] == ["t.yaml:3 devices[0]: the auth key must be at least 8 characters"]


def test_one_variable_named_twice_is_warned_at_both_places() -> None:
    device = "  - {id: ID, driver: snmp, host: 10.0.0.9, community_env: EDGEGW_TEST_ENV_NONE, points: []}\n"
    text = "site: s\ndevices:\n" + device.replace("ID", "a") + device.replace("ID", "b")
    cfg = load_config_text(text, "t.yaml", None, "warn")
    assert [(w.line, w.path) for w in cfg.warnings] == [
        (3, "devices[0].community_env"),
        (4, "devices[1].community_env"),
    ]


def test_a_device_built_in_code_still_fails_at_once() -> None:
    with pytest.raises(ConfigError, match="EDGEGW_TEST_ENV_NONE"):
        parse_device({"id": "a", "driver": "snmp", "host": "h", "community_env": "EDGEGW_TEST_ENV_NONE"})


def test_edgegw_run_fails_fast_on_a_missing_file(tmp_path: Path) -> None:
    path = write(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "XDG_STATE_HOME": str(tmp_path / "state")}
    res = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
        check=False,
    )
    assert res.returncode == 2
    for line, key, _ in NEEDED:
        assert f"{path}:{line} {key}: " in res.stderr
    assert f"{path}: invalid configuration (5 errors)" in res.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr.count("[warning: needed by edgegw run]") == 5
