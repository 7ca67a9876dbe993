"""Devices that misbehave on the wire: one hangs, one answers garbage, one disconnects mid-frame.

Each is a real TCP peer; the daemon must mark their readings bad, report them offline once, keep
polling the healthy device on time, and still stop cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from drivers.modbus.twin import ModbusTwin
from tests.harness import Collector, Daemon, Mosquitto
from tests.test_e2e_modbus import device_yaml, twin_points
from tests.test_faults import write_config

pytestmark = pytest.mark.slow

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def tcp_peer(handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request with bytes that are not a Modbus reply."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while True:
            await reader.readexactly(12)
            writer.write(os.urandom(3) + b"\x00\x00\x00\x07\xff\x83garbage!" + os.urandom(40))
            await writer.drain()


async def mid_frame(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Starts a plausible reply and drops the connection half way through it."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        request = await reader.readexactly(12)
        writer.write(request[:2] + b"\x00\x00\x00\xcb\x01\x03\xc8\x43\x66")
        await writer.drain()
    writer.close()


async def test_misbehaving_devices_do_not_hurt_the_healthy_one(
    tmp_path: Path, broker: Mosquitto, collector: Collector
) -> None:
    async with (
        ModbusTwin(twin_points(), units=[1], port=0) as healthy,
        ModbusTwin(twin_points(), units=[1], port=0) as hanging,
        tcp_peer(garbage) as garbage_port,
        tcp_peer(mid_frame) as mid_frame_port,
    ):
        hanging.faults.set("slow", delay=60.0, target=1)
        devices = (
            device_yaml("healthy", healthy.port, 1)
            + device_yaml("hangs", hanging.port, 1)
            + device_yaml("garbage", garbage_port, 1)
            + device_yaml("midframe", mid_frame_port, 1)
        )
        daemon = Daemon(write_config(tmp_path, broker, devices), tmp_path)
        await daemon.start()
        try:
            for dev in ("hangs", "garbage", "midframe"):
                await collector.wait_for(
                    lambda dev=dev: any(m.json()["state"] == "offline" for m in collector.on(f"/{dev}/status")),  # type: ignore[misc]
                    what=f"{dev} offline",
                )
                reading = collector.latest(dev, "mains.voltage_l1")
                assert reading is not None and reading["quality"] == "bad" and reading["value"] is None
            before = len(collector.data("healthy"))
            await collector.wait_for(
                lambda: len(collector.data("healthy")) >= before + 8,
                timeout=5,
                what="the healthy device keeps its pace",
            )
            good = collector.latest("healthy", "mains.voltage_l1")
            assert good is not None and good["quality"] == "good"
            assert daemon.proc is not None and daemon.proc.returncode is None
        finally:
            code = await daemon.stop()
        assert code == 0
        log = daemon.output()
        for dev in ("hangs", "garbage", "midframe"):
            lines = [ln for ln in log.splitlines() if '"device offline"' in ln and f'"device": "{dev}"' in ln]
            assert len(lines) == 1, lines  # a state change is logged once, not every failed poll
        assert "Traceback" not in log, log[-3000:]
