"""The twin's and the scanner's command lines."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from drivers.bacnet import scan as scan_cli
from drivers.bacnet.twin import BacnetTwin, free_udp_port
from gateway.twin import simulate

pytestmark = pytest.mark.timeout(20)


def test_simulate_runs_and_stops(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--port", "0", "--panels", "1", "--static", "--duration", "0.2"]
    assert simulate(BacnetTwin, "schneider-bcpme-bacnet", argv) == 0
    out = capsys.readouterr().out
    assert "router device 50000" in out and "50001 (50:1)" in out


def test_simulate_without_a_router(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--panels", "2", "--no-router", "--var", "channels=1", "--duration", "0.2"]
    assert simulate(BacnetTwin, "schneider-bcpme-bacnet", argv) == 0
    out = capsys.readouterr().out
    assert "BACnet/IP devices 50001 at 127.0.0.1:" in out and ", 50002 at 127.0.0.1:" in out


def test_simulate_refuses_a_busy_port(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        assert simulate(BacnetTwin, "schneider-bcpme-bacnet", ["--port", str(port), "--duration", "0"]) == 2
    assert "already in use" in capsys.readouterr().err


def test_simulate_unknown_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert simulate(BacnetTwin, "no-such-profile", ["--duration", "0"]) == 2
    assert "no shipped bacnet profile" in capsys.readouterr().err


@pytest.fixture
def twin_in_thread() -> Iterator[BacnetTwin]:
    """A twin serving from its own thread and loop, for a CLI that runs its own loop."""
    loop = asyncio.new_event_loop()
    twin = BacnetTwin.create(vars={"channels": 1}, panels=2, animate=False)
    ready = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        async with twin:
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield twin
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def test_scan_lists_routed_devices(twin_in_thread: BacnetTwin, capsys: pytest.CaptureFixture[str]) -> None:
    code = scan_cli.main(["--target", twin_in_thread.address, "--timeout", "0.3", "--config"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ADDRESS", "NETWORK", "MAC", "INSTANCE", "NAME", "VENDOR", "MAX-APDU"]
    assert any(line.split()[:4] == [twin_in_thread.address, "50", "2", "50002"] for line in lines)
    assert f'address: "{twin_in_thread.address}", network: 50, mac: 1, device_instance: 50001' in out


def test_scan_needs_somewhere_to_ask() -> None:
    with pytest.raises(SystemExit):
        scan_cli.main([])
    with pytest.raises(SystemExit):
        scan_cli.main(["--target", "not-an-address"])
    with pytest.raises(SystemExit):
        scan_cli.main(["--local", "127.0.0.1:47808"])  # no prefix: no broadcast address


def test_scan_nobody_answers(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_udp_port()
    assert scan_cli.main(["--target", f"127.0.0.1:{port}", "--timeout", "0.2"]) == 1
    assert "no BACnet device answered" in capsys.readouterr().err
