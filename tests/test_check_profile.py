"""`edgegw check --profile FILE`: a hand-written profile validated alone, errors with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import EXIT_CONFIG, EXIT_OK, main
from gateway.profiles import shipped_profiles

GOOD = """\
profile: my-meter
driver: modbus
vars: {scale: 0.1}
points:
  - {id: p_abs, address: 0, quantity: active_power, unit: W, scale: "{scale}", publish: false}
  - {id: sign_word, address: 1, quantity: status, publish: false}
  - repeat: {n: [1, 3]}
    points:
      - {id: "v{n}", address: "{10 + n}", quantity: voltage, unit: V, phase: "L{n}"}
  - id: p
    calc: "p_abs if not bit(sign_word, 0) else -p_abs"
    quantity: active_power
    unit: W
  - {id: v12, calc: "vll(v1, v2)", quantity: voltage, unit: V, phase: L1-L2}
"""


def write(tmp: Path, text: str, name: str = "my-meter.yaml") -> Path:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_good_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GOOD)
    assert main(["check", "--profile", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert out == f"{path}: ok (profile my-meter, driver modbus, 7 points, 2 calculated)\n"


def test_as_a_site_config_it_is_not_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(write(tmp_path, GOOD))]) == EXIT_CONFIG
    assert "site: Field required" in capsys.readouterr().err


def test_errors_name_file_line_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD.replace(
        "unit: V, phase: L1-L2}", 'unit: V, phase: L1-L2}\n  - {id: q, calc: "p + nope", quantity: power}'
    )
    text = text.replace("quantity: status, publish: false}", "quantity: status, publish: false, adress: 3}")
    path = write(tmp_path, text)
    other = write(tmp_path, GOOD, "fine.yaml")
    assert main(["check", "--profile", str(other), str(path)]) == EXIT_CONFIG
    captured = capsys.readouterr()
    assert f"{other}: ok" in captured.out
    err = captured.err.splitlines()
    assert f"{path}:6 profile my-meter: sign_word.adress: Extra inputs are not permitted" in err
    assert (
        f"{path}:15 profile my-meter: q.quantity: unknown quantity 'power'; see docs/profiles.md for the vocabulary"
        in err
    )
    assert err[-1] == f"{path}: invalid profile (2 errors)"
    fixed = text.replace("quantity: power", "quantity: active_power").replace(", adress: 3", "")
    assert main(["check", "--profile", str(write(tmp_path, fixed))]) == EXIT_CONFIG
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{path}:15 profile my-meter: q.calc: no point 'nope' in this device"


def test_profile_level_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_driver = write(tmp_path, GOOD.replace("driver: modbus", "driver: zigbee"), "d.yaml")
    bad_var = write(tmp_path, GOOD.replace('"{10 + n}"', '"{10 + m}"'), "v.yaml")
    bad_yaml = write(tmp_path, "profile: x\n  driver: : modbus\n", "y.yaml")
    for path in (bad_driver, bad_var, bad_yaml):
        assert main(["check", "--profile", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"{bad_driver}:1 driver: unknown driver 'zigbee'" in err
    assert f"{bad_var}:9 profile my-meter: unknown variable 'm' in '10 + m'" in err
    assert f"{bad_yaml}:" in err and "invalid profile (1 error)" in err


@pytest.mark.parametrize("name", sorted(shipped_profiles()))
def test_every_shipped_profile_checks_alone(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = shipped_profiles()[name]
    assert main(["check", "--profile", str(path)]) == EXIT_OK, capsys.readouterr().err
