"""Config models of the fake kind: a TCP endpoint, and points addressed by register name."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from gateway.models import DeviceConfig, PointConfig

Register = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=32)]


class FakePoint(PointConfig):
    reg: Register

    def protocol_address(self) -> dict[str, Any]:
        return {"reg": self.reg}


class FakeDevice(DeviceConfig):
    point_model: ClassVar[type[PointConfig]] = FakePoint

    driver: Literal["fake"]
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)]

    def implicit_bus(self) -> str | None:
        return f"fake:{self.host}:{self.port}"

    def protocol_address(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port}


DeviceModel = FakeDevice
