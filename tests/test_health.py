"""systemd notifications and the /healthz, /metrics endpoint, against the daemon as a process."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from drivers.modbus.twin import ModbusTwin
from tests.harness import Collector, Daemon, Mosquitto, free_port
from tests.test_e2e_modbus import device_yaml, twin_points
from tests.test_faults import write_config

pytestmark = pytest.mark.slow


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = (await asyncio.wait_for(reader.read(), 5)).decode()
    writer.close()
    head, _, body = data.partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_sd_notify_ready_watchdog_and_status(tmp_path: Path, broker: Mosquitto, collector: Collector) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    health = free_port()
    async with ModbusTwin(twin_points(), units=[1], port=0) as twin:
        cfg = write_config(tmp_path, broker, device_yaml("pdu-1", twin.port, 1), health=health)
        daemon = Daemon(cfg, tmp_path, env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"})
        await daemon.start()
        got: list[str] = []
        try:

            async def until(pred: str) -> None:
                while not any(pred in m for m in got):
                    got.append((await asyncio.wait_for(loop.sock_recv(sock, 4096), 15)).decode())

            await until("READY=1")
            await until("WATCHDOG=1")
            await until("STATUS=")
            await collector.wait_for(lambda: collector.data("pdu-1"), what="data")
            code, body = await http_get(health, "/healthz")
            assert code == 200 and '"ok": true' in body
            code, body = await http_get(health, "/metrics")
            assert code == 200
            assert 'edgegw_device_polls_total{device="pdu-1"}' in body
            assert "edgegw_broker_connected 1.0" in body
            code, _ = await http_get(health, "/nope")
            assert code == 404
        finally:
            await daemon.stop()
            sock.close()
        assert any("devices online" in m for m in got if m.startswith("STATUS") or "STATUS=" in m)


async def test_a_taken_health_port_is_a_clean_start_failure(tmp_path: Path, broker: Mosquitto) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        cfg = write_config(tmp_path, broker, "", health=port)
        daemon = Daemon(cfg, tmp_path)
        await daemon.start()
        assert await daemon.wait(20) == 1
        out = daemon.output()
        assert '"cannot start"' in out and "address already in use" in out
        assert "Traceback" not in out
        assert "stopping before the broker acknowledged" not in out  # nothing was queued: drain(0) says so
    finally:
        holder.close()
