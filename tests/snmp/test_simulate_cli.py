"""`edgegw simulate schneider-bcpme-snmp` as a process: polled by the driver, sending informs to the listener."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest
import structlog

from drivers.snmp.config import SnmpSection
from drivers.snmp.runtime import SnmpRuntime
from gateway.driver import PointError
from tests.snmp.util import Events, driver, free_udp_port, profiled, wait_until

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.asyncio


async def test_simulate_serves_and_sends_informs() -> None:
    section = SnmpSection.model_validate(
        {"traps": {"listen": f"127.0.0.1:{free_udp_port()}", "communities_env": "EDGEGW_TEST_SNMP_COMMUNITY"}}
    )
    runtime = SnmpRuntime(section, structlog.get_logger("test"))
    await runtime.start()
    assert runtime.listener is not None
    port = free_udp_port()
    listen = f"127.0.0.1:{runtime.listener.address[1]}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "simulate",
        "schneider-bcpme-snmp",
        "--port",
        str(port),
        "--var",
        "panels=1",
        "--trap-target",
        listen,
        "--trap-every",
        "200ms",
        "--inform",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert f"on udp 127.0.0.1:{port}" in line and "v2c" in line, line
        events = Events()
        # A whole panel (564 points) from a twin in another process: give a loaded machine time.
        dev = profiled(port, profile_vars={"panels": 1}, timeout=2.0)
        d = await driver(dev, runtime=runtime, events=events)
        raw = await d.read()
        assert not [v for v in raw.values if isinstance(v, PointError)]
        await wait_until(lambda: len(events) >= 2, timeout=10, what="two informs from the twin process")
        assert events[0]["type"] == "inform" and events[0]["source"] == f"127.0.0.1:{port}"
        await d.stop()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await runtime.stop()
