"""A new protocol touches its own folder and the registry line, nothing else.

tests/fakekind/ is a fifth kind outside drivers/ (config, driver, twin, one profile). Registered
for the duration of a test, it is picked up by the contract suite, ``edgegw simulate`` and
``edgegw demo`` with no other file changed.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

import tests.test_contract as contract
from gateway.cli import main
from gateway.config import load_config_text
from gateway.driver import DeviceError
from gateway.profiles import shipped_profiles
from gateway.registry import DRIVERS
from gateway.twin import Fault
from tests.fakekind import KIND, SPEC
from tests.fakekind.twin import FakeTwin


@pytest.fixture
def fake_kind(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(DRIVERS, KIND, SPEC)
    return KIND


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The CLI configures logging for the process; put the test process's back afterwards."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {n: lg.level for n, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    try:
        yield
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, lvl in levels.items():
            logging.getLogger(name).setLevel(lvl)
        logging.captureWarnings(False)  # pytest records the warnings itself


def _with_fault(fn: Callable[[str, Fault], Any], fault: Fault, kind: str) -> Any:
    return fn(kind, fault)


def _contract_cases() -> list[tuple[str, Callable[[str], Any]]]:
    """Every check of the contract suite, bound to its other parameters (faults), taking a kind."""
    cases: list[tuple[str, Callable[[str], Any]]] = []
    for name, fn in inspect.getmembers(contract, inspect.isfunction):
        if not name.startswith("test_") or fn.__module__ != contract.__name__:
            continue
        params = list(inspect.signature(fn).parameters)
        if params[:1] != ["kind"]:
            continue  # not a per-kind check (the import scan of gateway/)
        if params[1:] == ["fault"]:
            for fault in contract.FAULTS:
                cases.append((f"{name}[{fault}]", functools.partial(_with_fault, fn, fault)))
        else:
            assert params == ["kind"], f"{name}: a contract check takes the kind (and a fault) only"
            cases.append((name, fn))
    return cases


CASES = _contract_cases()


def test_the_fake_kind_is_not_registered_by_default() -> None:
    assert KIND not in DRIVERS
    assert len(CASES) >= 10  # the contract's checks were found


@pytest.mark.parametrize(("name", "check"), CASES, ids=[name for name, _ in CASES])
async def test_the_contract_suite_holds_the_fake_kind(fake_kind: str, name: str, check: Callable[[str], Any]) -> None:
    outcome = check(fake_kind)
    if inspect.isawaitable(outcome):
        await outcome


def test_the_config_takes_a_device_of_the_fake_kind(fake_kind: str) -> None:
    assert set(shipped_profiles(fake_kind)) == {"fake-meter"}
    cfg = load_config_text(
        "site: s\ndevices:\n  - {id: m1, driver: fake, profile: fake-meter, profile_vars: {channels: 4}, port: 1502}\n"
    )
    assert [p.id for p in cfg.devices[0].resolved_points][-1] == "ch4.current"


@pytest.mark.usefixtures("fake_kind")
async def test_a_write_through_the_protocol_reaches_the_twin() -> None:
    async with FakeTwin.create("fake-meter") as twin:
        reader, writer = await asyncio.open_connection("127.0.0.1", twin.port)
        try:
            writer.write(b"WRITE i2 12.5\nREAD i2 nope\n")
            async with asyncio.timeout(5):
                assert await reader.readline() == b"OK\n"
                assert await reader.readline() == b"VALUES 12.5 ?\n"
        finally:
            writer.close()
    assert [(w.point, w.value) for w in twin.writes] == [("ch2.current", 12.5)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _until_read(kind: str, raw: dict[str, Any], server: asyncio.Future[int], deadline: float) -> list[Any]:
    """Poll until the device answers (the simulator is starting in another thread), within a bound."""
    async with contract.built(kind, raw, None) as driver:
        while True:
            try:
                return (await contract.read(driver, 5)).values
            except DeviceError:
                if server.done() or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)


@pytest.mark.usefixtures("restore_logging")
async def test_edgegw_simulate_serves_the_fake_kind(fake_kind: str) -> None:
    port = _free_port()
    # No --driver: the CLI finds the kind from the profile name, through the registry.
    argv = ["simulate", "fake-meter", "--port", str(port), "--var", "channels=3", "--duration", "3"]
    cli = asyncio.ensure_future(asyncio.to_thread(main, argv))
    raw = {"id": "sim", "driver": fake_kind, "profile": "fake-meter", "profile_vars": {"channels": 3}, "port": port}
    try:
        values = await _until_read(fake_kind, raw, cli, time.monotonic() + 20)
    finally:
        async with asyncio.timeout(30):
            status = await cli
    assert status == 0
    assert len(values) == 6 and all(isinstance(v, int | float) for v in values)


@pytest.mark.usefixtures("restore_logging")
def test_edgegw_demo_runs_the_fake_kind(
    fake_kind: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The fake kind alone: the demo is whatever the registry holds (the four real kinds: test_demo.py).
    for kind in [k for k in DRIVERS if k != fake_kind]:
        monkeypatch.delitem(DRIVERS, kind)
    status = main(["demo", "--duration", "4"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "fake-1" in out and "demo ok" in out
