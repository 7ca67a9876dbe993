"""Discover -> validate -> rebuild: the one sequence that gives a device its points from the device.

Used by the scheduler (a device configured without points) and by `edgegw read --discover`.
A driver's points are fixed when it is built, so discovery does not patch a live driver: the
discovering driver is stopped and a new one is built with the validated points.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gateway.driver import Driver
from gateway.models import PointConfig

DriverFactory = Callable[[Sequence[PointConfig]], Driver[Any, Any]]


async def discover_points(driver: Driver[Any, Any]) -> tuple[list[dict[str, Any]], list[PointConfig]]:
    """What a started driver's device says it has, raw (for a profile) and validated.

    Raises NotImplementedError for a driver that cannot discover, and pydantic's
    ValidationError when the driver returned a point its own model rejects (a driver bug).
    """
    found = await driver.discover()
    model = type(driver.config).point_model
    return found, [model.model_validate(p) for p in found]


async def rebuild(driver: Driver[Any, Any], points: Sequence[PointConfig], build: DriverFactory) -> Driver[Any, Any]:
    """Stop the discovering driver and start its successor with the discovered points."""
    await driver.stop()
    new = build(points)
    new.adopt(driver.handoff())
    await new.start()
    return new
