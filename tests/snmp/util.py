"""Helpers for the SNMP tests: devices and drivers built by hand, conditions waited on with deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from drivers.snmp.config import SnmpDevice, SnmpPoint
from drivers.snmp.driver import SnmpDriver
from drivers.snmp.runtime import SnmpRuntime
from gateway.buses import Bus
from gateway.config import parse_device
from gateway.driver import DeviceError, DriverContext
from gateway.models import PointConfig
from gateway.state import StateStore

COMMUNITY = "public"
AUTH_KEY = "authkey-123"
PRIV_KEY = "privkey-456"
# Secrets reach the config through the environment, as in production.
os.environ.setdefault("EDGEGW_TEST_SNMP_COMMUNITY", COMMUNITY)
os.environ.setdefault("EDGEGW_TEST_SNMP_AUTH", AUTH_KEY)
os.environ.setdefault("EDGEGW_TEST_SNMP_PRIV", PRIV_KEY)
os.environ.setdefault("EDGEGW_TEST_SNMP_WRONG", "wrong-key-789")

BCPME = (1, 3, 6, 1, 4, 1, 3833, 1, 30)
BRANCH_CURRENT = "1.3.6.1.4.1.3833.1.30.1.5.1.1.2"  # panel 1, column 2, + .channel


def device(port: int, **kw: Any) -> SnmpDevice:
    """A v2c device on 127.0.0.1:port (override with v3 keys etc.)."""
    base: dict[str, Any] = {"id": "agent", "driver": "snmp", "host": "127.0.0.1", "port": port, "timeout": 0.5}
    if kw.get("version") in ("3", 3):
        base.update(user="edgegw", auth_key_env="EDGEGW_TEST_SNMP_AUTH", auth_protocol="SHA-256")
    else:
        base["community_env"] = "EDGEGW_TEST_SNMP_COMMUNITY"
    return SnmpDevice.model_validate({**base, **kw})


def v3(port: int, **kw: Any) -> SnmpDevice:
    """A v3 authPriv (SHA-256 / AES-128) device."""
    base = {"version": "3", "priv_key_env": "EDGEGW_TEST_SNMP_PRIV", "priv_protocol": "AES-128"}
    return device(port, **{**base, **kw})


def profiled(port: int, profile: str = "schneider-bcpme-snmp", **kw: Any) -> SnmpDevice:
    """A device through the core's config loader: profile expanded, points resolved."""
    raw: dict[str, Any] = {
        "id": "bcpme",
        "driver": "snmp",
        "profile": profile,
        "host": "127.0.0.1",
        "port": port,
        "community_env": "EDGEGW_TEST_SNMP_COMMUNITY",
        "timeout": 0.5,
        **kw,
    }
    dev = parse_device(raw)
    assert isinstance(dev, SnmpDevice)
    return dev


def points(*raw: dict[str, Any]) -> list[SnmpPoint]:
    return [SnmpPoint.model_validate(p) for p in raw]


class Events(list[dict[str, Any]]):
    """Collects what a driver emits as events."""

    def __call__(self, event: dict[str, Any]) -> None:
        self.append(event)


async def driver(
    dev: SnmpDevice,
    pts: Sequence[PointConfig] | None = None,
    runtime: SnmpRuntime | None = None,
    events: Events | None = None,
) -> SnmpDriver:
    ctx = DriverContext(
        device=dev,
        points=list(dev.resolved_points if pts is None else pts),
        log=structlog.get_logger("test"),
        bus=Bus(f"device:{dev.id}"),
        state=StateStore(None),
        runtime=runtime,
    )
    if events is not None:
        ctx.emit_event = events
    d = SnmpDriver(ctx)
    await asyncio.wait_for(d.start(), 10)
    return d


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def silent_udp() -> socket.socket:
    """A bound UDP port on 127.0.0.1 that never answers (an agent that is down or filtered)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def by_id(pts: Sequence[Any], values: Sequence[Any]) -> dict[str, Any]:
    return {p.id: v for p, v in zip(pts, values, strict=True)}


SNMPD = shutil.which("snmpd") or ("/usr/sbin/snmpd" if Path("/usr/sbin/snmpd").exists() else None)


@dataclass
class Snmpd:
    port: int
    proc: asyncio.subprocess.Process
    log: Path


@contextlib.asynccontextmanager
async def run_snmpd(folder: Path, config: str) -> AsyncIterator[Snmpd]:
    """net-snmp's snmpd on a free loopback port with `config` (snmpd.conf lines), answering when yielded."""
    assert SNMPD is not None
    port = free_udp_port()
    conf = folder / "snmpd.conf"
    conf.write_text(f"agentAddress udp:127.0.0.1:{port}\n{config}", encoding="utf-8")
    log = folder / "snmpd.log"
    env = {**os.environ, "SNMP_PERSISTENT_DIR": str(folder / "persist"), "MIBS": ""}
    proc = await asyncio.create_subprocess_exec(
        SNMPD, "-f", "-C", "-c", str(conf), "-p", str(folder / "snmpd.pid"), "-Lf", str(log),
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    agent = Snmpd(port, proc, log)
    try:
        await _answering(agent)
        yield agent
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _answering(agent: Snmpd) -> None:
    probe = await driver(
        device(agent.port, id="probe", timeout=0.1, retries=0),
        [SnmpPoint.model_validate({"id": "up", "oid": "1.3.6.1.2.1.1.3.0", "quantity": "uptime"})],
    )
    deadline = time.monotonic() + 10
    try:
        while True:
            if agent.proc.returncode is not None:
                raise AssertionError(f"snmpd exited: {agent.log.read_text(errors='replace')[-500:]}")
            with contextlib.suppress(DeviceError):
                await probe.read()
                return
            if time.monotonic() > deadline:
                raise AssertionError("snmpd did not answer within 10 s")
            await asyncio.sleep(0.05)
    finally:
        await probe.stop()
