"""Configuration: every error names file, line and field; secrets stay secret; `edgegw check` exits 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.models import parse_duration, parse_size

GOOD = """\
site: dc1
mqtt:
  url: mqtt://127.0.0.1:1883
  username: edgegw
  password_file: mqtt.secret
buses:
  - {id: rs485-1, serial: {port: /dev/ttyUSB0, baudrate: 9600}}
devices:
  - id: m1
    driver: modbus
    tcp: {host: 127.0.0.1, port: 5020}
    interval: 500ms
    points:
      - {id: v1, address: 0, type: float32, quantity: voltage, unit: V, phase: L1}
  - id: m2
    driver: modbus
    bus: rs485-1
    unit: 3
    interval: 15min
    points:
      - {id: c1, address: 10, type: int16, quantity: current, unit: A, scale: 0.01}
"""


def write(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    (tmp_path / "mqtt.secret").write_text("s3cret-value\n", encoding="utf-8")
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def issues(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    return [str(i) for i in exc.value.issues]


def test_good_config_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.site == "dc1"
    assert [d.interval for d in cfg.devices] == [0.5, 900.0]
    assert cfg.mqtt.password == "s3cret-value"
    assert "s3cret" not in repr(cfg.mqtt) and "s3cret" not in cfg.mqtt.model_dump_json()
    assert cfg.devices[1].resolved_points[0].scale == 0.01


def test_errors_name_file_line_and_field(tmp_path: Path) -> None:
    text = GOOD.replace("interval: 15min", "interval: 15 parsecs").replace("unit: A,", "unit: amps,")
    text = text.replace("baudrate: 9600", "baudrate: 9600, speed: 1")
    path = write(tmp_path, text)
    found = issues(path)
    assert f"{path}:7 buses[0].serial.speed: Extra inputs are not permitted" in found
    assert any(i.startswith(f"{path}:19 devices[1].interval: not a duration") for i in found), found


def test_point_errors_after_the_model_is_valid(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("unit: A,", "unit: amps,").replace("bus: rs485-1", "bus: rs485-9"))
    found = issues(path)
    assert any(i.startswith(f"{path}:21 devices[1].points[0].unit: unknown unit 'amps'") for i in found), found
    assert any(i.startswith(f"{path}:17 devices[1].bus: no bus 'rs485-9'") for i in found), found


def test_unknown_driver_and_duplicate_ids(tmp_path: Path) -> None:
    text = GOOD + "  - {id: m1, driver: canbus}\n"
    found = issues(write(tmp_path, text))
    assert any("devices[2]" in i and "canbus" in i for i in found), found
    text = GOOD.replace("id: m2", "id: m1")
    found = issues(write(tmp_path, text))
    assert any("duplicate device id 'm1'" in i for i in found), found


def test_missing_secret_file_is_named_but_secret_never_printed(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("mqtt.secret", "missing.secret"))
    found = issues(path)
    assert any(f"{path}:5 mqtt" in i and "missing.secret" in i for i in found), found


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "site: [unclosed\n")
    found = issues(path)
    assert found and found[0].startswith(f"{path}:")


def test_profile_points_and_inline_override(tmp_path: Path) -> None:
    profile = tmp_path / "my.yaml"
    profile.write_text(
        "profile: my\ndriver: modbus\nvars: {n: 2}\ndevice: {word_order: little}\npoints:\n"
        "  - repeat: {c: [1, n]}\n    points:\n"
        "      - {id: 'ch{c}.i', address: '{2*c}', type: float32, quantity: current, unit: A, circuit: '{c}'}\n",
        encoding="utf-8",
    )
    text = GOOD.replace(
        "    points:\n      - {id: v1, address: 0, type: float32, quantity: voltage, unit: V, phase: L1}\n",
        "    profile: my.yaml\n    profile_vars: {n: 3}\n    points:\n      - {id: ch2.i, scale: 0.5}\n",
    )
    cfg = load_config(write(tmp_path, text))
    dev = cfg.devices[0]
    assert [p.id for p in dev.resolved_points] == ["ch1.i", "ch2.i", "ch3.i"]
    assert dev.resolved_points[1].scale == 0.5 and dev.resolved_points[1].address == 4  # type: ignore[attr-defined]
    assert dev.word_order == "little"  # type: ignore[attr-defined]
    assert dev.profile_meta["name"] == "my"


def test_unknown_profile_var_is_an_error(tmp_path: Path) -> None:
    profile = tmp_path / "my.yaml"
    profile.write_text("driver: modbus\nvars: {n: 1}\npoints: []\n", encoding="utf-8")
    text = GOOD.replace(
        "    points:\n      - {id: v1, address: 0, type: float32, quantity: voltage, unit: V, phase: L1}\n",
        "    profile: my.yaml\n    profile_vars: {m: 3}\n",
    )
    found = issues(write(tmp_path, text))
    assert any("devices[0].profile_vars" in i and "'m'" in i for i in found), found


def test_durations_and_sizes() -> None:
    assert parse_duration("500ms") == 0.5
    assert parse_duration("15min") == 900
    assert parse_duration(2) == 2.0
    assert parse_size("512MiB") == 512 * 2**20
    with pytest.raises(ValueError):
        parse_duration("-1s")


def test_check_command_exit_codes(tmp_path: Path) -> None:
    good = write(tmp_path, GOOD)
    bad = write(tmp_path, GOOD.replace("interval: 500ms", "interval: soon"), "bad.yaml")
    ok = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", str(good)], capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0, ok.stderr
    assert "ok (2 devices" in ok.stdout
    res = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", str(bad)], capture_output=True, text=True, check=False
    )
    assert res.returncode == 2
    assert f"{bad}:12 devices[0].interval: not a duration" in res.stderr
    assert "s3cret" not in res.stderr + res.stdout
