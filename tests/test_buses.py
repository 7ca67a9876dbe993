"""A bus serves one transaction at a time, in arrival order, and releases on errors."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.buses import Bus, BusConfig


async def test_transactions_are_serialised_and_fifo() -> None:
    bus = Bus("b")
    order: list[str] = []
    inside = 0

    async def device(name: str, n: int) -> None:
        nonlocal inside
        for i in range(n):
            async with bus.transaction():
                inside += 1
                assert inside == 1
                order.append(f"{name}{i}")
                await asyncio.sleep(0)
                inside -= 1

    await asyncio.gather(device("a", 3), device("b", 3))
    assert order == ["a0", "b0", "a1", "b1", "a2", "b2"]  # take turns, nobody starves
    assert bus.transactions == 6


async def test_an_error_inside_releases_the_bus() -> None:
    bus = Bus("b")
    with pytest.raises(RuntimeError):
        async with bus.transaction():
            raise RuntimeError("device said no")
    async with asyncio.timeout(1):
        async with bus.transaction():
            pass


async def test_turnaround_is_kept_between_transactions() -> None:
    bus = Bus("b", BusConfig.model_validate({"id": "b", "serial": {"port": "/dev/null"}, "turnaround": "50ms"}))
    async with bus.transaction():
        pass
    start = time.monotonic()
    async with bus.transaction():
        pass
    assert time.monotonic() - start >= 0.045
