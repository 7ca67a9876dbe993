"""`make demo` is the first thing a new user runs: it must end by itself and show good readings."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_shows_every_device_and_ends() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", "--duration", "6"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "demo ok" in res.stdout
    for device in ("bcpme-1", "emdx3-3", "bmgw-1", "busway-a", "bcpme-2-bacnet", "bcpme-3-snmp", "sed302-17"):
        assert device in res.stdout
