"""`make demo` is the first thing a new user runs: it must end by itself and show good readings."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.registry import DRIVERS

pytestmark = pytest.mark.slow


def test_every_kind_has_a_device_in_the_demo() -> None:
    for kind, spec in DRIVERS.items():
        assert spec.twin_class.demo, f"the {kind} twin names no demo device"


def test_demo_shows_every_device_and_ends() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", "--duration", "6"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "demo ok" in res.stdout
    table = res.stdout.split("-- ", 1)[-1]  # the readings, after the banner that lists the twins
    for spec in DRIVERS.values():
        for dd in spec.twin_class.demo:
            assert dd.id in table, f"{dd.id} shows no readings"
