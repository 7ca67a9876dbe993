"""Fixtures of the BACnet tests: the BCPME twin on one loopback port, the gateway's stack on another."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import structlog

from drivers.bacnet.config import BacnetSection
from drivers.bacnet.driver import BacnetDriver
from drivers.bacnet.runtime import BacnetRuntime
from drivers.bacnet.twin import BacnetTwin, free_udp_port
from gateway.buses import Bus
from gateway.config import parse_device
from gateway.driver import DriverContext, Pushed
from gateway.state import StateStore

TIMEOUT = 0.5  # seconds per request: keeps the unreachable-device cases short


def device_config(twin: BacnetTwin, panel: int, **extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "id": f"bcpme-p{panel}",
        "driver": "bacnet",
        "address": twin.address,
        "network": twin.network,
        "mac": twin.mac_of(twin.offset + panel),
        "device_instance": twin.offset + panel,
        "timeout": TIMEOUT,
    }
    raw.update(extra)
    return raw


async def wait_for(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """Wait until `condition()` holds, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class Drivers:
    """Builds started drivers against the twin; remembers what each one pushed."""

    def __init__(self, twin: BacnetTwin, runtime: BacnetRuntime) -> None:
        self.twin = twin
        self.runtime = runtime
        self.started: list[BacnetDriver] = []
        self.pushed: dict[int, list[Pushed]] = {}

    async def make(self, panel: int = 1, *, start: bool = True, **extra: Any) -> BacnetDriver:
        device = parse_device(device_config(self.twin, panel, **extra))
        pushed: list[Pushed] = []
        ctx = DriverContext(
            device=device,
            points=list(device.resolved_points),
            log=structlog.get_logger(),
            bus=Bus(f"bacnet-{panel}"),
            state=StateStore(None),
            runtime=self.runtime,
            emit=pushed.extend,
        )
        driver = BacnetDriver(ctx)
        self.pushed[id(driver)] = pushed
        if start:
            await driver.start()
        self.started.append(driver)
        return driver

    def pushed_by(self, driver: BacnetDriver) -> list[Pushed]:
        return self.pushed[id(driver)]

    async def close(self) -> None:
        for d in self.started:
            await d.stop()


# Most cases need a few objects only: building bacpypes3 objects costs ~1 ms each.
SMALL = {"channels": 4, "extra_blocks": 0}


@pytest.fixture
async def twin() -> AsyncIterator[BacnetTwin]:
    async with BacnetTwin.create(vars=SMALL, panels=2, animate=False) as t:
        yield t


@pytest.fixture
async def full_twin() -> AsyncIterator[BacnetTwin]:
    """Both panels with every object of the profile (504 each)."""
    async with BacnetTwin.create(panels=2, animate=False) as t:
        yield t


@pytest.fixture
async def runtime() -> AsyncIterator[BacnetRuntime]:
    rt = BacnetRuntime(BacnetSection(local_address=f"127.0.0.1/24:{free_udp_port()}"), structlog.get_logger())
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


@pytest.fixture
async def drivers(twin: BacnetTwin, runtime: BacnetRuntime) -> AsyncIterator[Drivers]:
    d = Drivers(twin, runtime)
    try:
        yield d
    finally:
        await d.close()
