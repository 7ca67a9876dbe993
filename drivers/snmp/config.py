"""Config models of the snmp driver (placeholder until the driver lands)."""

from __future__ import annotations

from typing import ClassVar, Literal

from gateway.models import DeviceConfig, PointConfig


class Device(DeviceConfig):
    point_model: ClassVar[type[PointConfig]] = PointConfig

    driver: Literal["snmp"]


DeviceModel = Device
