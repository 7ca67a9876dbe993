"""`edgegw scan KIND --help` and `edgegw simulate PROFILE --help` show the tool's own options."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import split_tool_argv
from gateway.profiles import shipped_profiles
from gateway.registry import DRIVERS

REPO = Path(__file__).resolve().parent.parent

# An option only that kind's scanner has, so the test tells one tool's help from another's.
SCANNER_OPTION = {"modbus": "--rtu-over-tcp", "bacnet": "--bbmd", "snmp": "--community-env"}


def edgegw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


def test_every_scanner_is_covered() -> None:
    assert {k for k, spec in DRIVERS.items() if spec.scanner} == set(SCANNER_OPTION)


@pytest.mark.parametrize("kind", sorted(SCANNER_OPTION))
def test_scan_kind_help_is_the_scanners(kind: str) -> None:
    res = edgegw("scan", kind, "--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"usage: edgegw scan {kind} "), res.stdout
    assert SCANNER_OPTION[kind] in res.stdout


@pytest.mark.parametrize("kind", sorted(DRIVERS))
def test_simulate_profile_help_is_the_twins(kind: str) -> None:
    spec = DRIVERS[kind]
    module = (spec.twin or "").partition(":")[0]
    if not module or importlib.util.find_spec(module) is None:
        pytest.skip(f"the {kind} twin ({spec.twin}) is not there yet")
    profile = next(iter(shipped_profiles(kind)))
    res = edgegw("simulate", profile, "--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"usage: edgegw simulate {profile} "), res.stdout
    # The shared twin options (gateway/twin.py), not edgegw's own `--driver`.
    assert "--fault" in res.stdout and "--var" in res.stdout and "--driver" not in res.stdout


def test_our_own_help_before_the_positional() -> None:
    res = edgegw("scan", "--help")
    assert res.returncode == 0 and res.stdout.startswith("usage: edgegw scan [-h] kind"), res.stdout
    res = edgegw("simulate", "-h")
    assert res.returncode == 0 and "--driver" in res.stdout, res.stdout


def test_split_between_edgegw_and_the_tool() -> None:
    assert split_tool_argv(["scan", "modbus", "--help"]) == (["scan", "modbus"], ["--help"])
    assert split_tool_argv(["scan", "-h"]) == (["scan", "-h"], [])
    assert split_tool_argv(["simulate", "p", "--port", "5020", "--driver", "modbus"]) == (
        ["simulate", "p", "--driver", "modbus"],
        ["--port", "5020"],
    )
    assert split_tool_argv(["simulate", "--driver", "dlms", "p.yaml", "-h"]) == (
        ["simulate", "--driver", "dlms", "p.yaml"],
        ["-h"],
    )
    assert split_tool_argv(["simulate", "p", "--driver=snmp", "--var", "a=1"]) == (
        ["simulate", "p", "--driver=snmp"],
        ["--var", "a=1"],
    )
