"""Config models of the Modbus driver: the device's connection and its points."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from gateway.buses import TcpSettings
from gateway.models import DeviceConfig, Duration, PointConfig

Function = Literal["holding", "input", "coil", "discrete"]
DataType = Literal["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string", "bool"]
Order = Literal["big", "little"]

# Registers each type spans; a string's span is its `length`.
TYPE_WORDS: dict[str, int] = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "int64": 4,
    "uint64": 4,
    "float32": 2,
    "float64": 4,
    "bool": 1,
}


class ModbusPoint(PointConfig):
    """A Modbus point: where it is (function, address, unit id) and how to decode it."""

    address: Annotated[int, Field(ge=0, le=65535)]
    function: Function | None = None  # default: the device's
    type: DataType = "uint16"
    length: Annotated[int, Field(ge=1, le=125)] | None = None  # registers, for strings
    bit: Annotated[int, Field(ge=0, le=15)] | None = None  # one bit of a 16-bit register -> bool
    bits: tuple[Annotated[int, Field(ge=0, le=63)], Annotated[int, Field(ge=0, le=63)]] | None = None
    byte_order: Order | None = None  # default: the device's
    word_order: Order | None = None  # default: the device's
    unit_id: Annotated[int, Field(ge=0, le=255)] | None = None  # default: the device's `unit`

    @model_validator(mode="after")
    def _consistent(self) -> ModbusPoint:
        if self.type == "string" and self.length is None:
            raise ValueError("a string point needs `length` (registers)")
        if self.type != "string" and self.length is not None:
            raise ValueError("`length` is for string points only")
        if self.bit is not None and self.bits is not None:
            raise ValueError("give `bit` or `bits`, not both")
        if self.bits is not None:
            lo, hi = self.bits
            if lo > hi or hi >= 16 * TYPE_WORDS.get(self.type, 1):
                raise ValueError("`bits: [low, high]` must lie inside the point's type")
        if self.bit is not None and self.type not in ("int16", "uint16", "bool"):
            raise ValueError("`bit` selects a bit of a 16-bit register: use type uint16 or bool")
        return self

    def float_digits(self) -> int | None:
        return 9 if self.type == "float32" else None

    def counter_width(self) -> int | None:
        if self.counter_bits is not None:
            return self.counter_bits
        return {"uint16": 16, "uint32": 32, "uint64": 64}.get(self.type)

    def words(self) -> int:
        return self.length if self.type == "string" and self.length else TYPE_WORDS[self.type]

    def protocol_address(self) -> dict[str, Any]:
        out: dict[str, Any] = {"address": self.address, "type": self.type}
        if self.function:
            out["function"] = self.function
        if self.unit_id is not None:
            out["unit"] = self.unit_id
        if self.bit is not None:
            out["bit"] = self.bit
        return out


class ModbusDevice(DeviceConfig):
    """A Modbus device (one unit id, or several through per-point `unit_id`)."""

    point_model: ClassVar[type[PointConfig]] = ModbusPoint

    driver: Literal["modbus"]
    tcp: TcpSettings | None = None
    transport: Literal["tcp", "rtu_over_tcp"] = "tcp"
    unit: Annotated[int, Field(ge=0, le=255)] = 1
    function: Function = "holding"
    byte_order: Order = "big"
    word_order: Order = "big"
    numbering: Literal[0, 1] = Field(default=0, description="1 when the profile's addresses are 1-based")
    max_registers: Annotated[int, Field(ge=1, le=125)] = 125
    max_bits: Annotated[int, Field(ge=1, le=2000)] = 2000
    max_gap: Annotated[int, Field(ge=0, le=124)] = Field(
        default=16, description="registers read through to merge two reads"
    )
    unreadable: list[tuple[int, int]] = Field(
        default_factory=list, description="inclusive address ranges never read (numbering as the points)"
    )
    pause: Duration = 0.0  # between two requests, for slow gateways
    close_after_poll: bool = False
    retries: Annotated[int, Field(ge=0, le=5)] = 0

    @model_validator(mode="after")
    def _one_transport(self) -> ModbusDevice:
        if (self.tcp is None) == (self.bus is None):
            raise ValueError("a Modbus device needs either `tcp: {host, port}` or `bus: <bus id>`")
        for lo, hi in self.unreadable:
            if lo > hi:
                raise ValueError(f"unreadable range [{lo}, {hi}] is reversed")
        return self

    def implicit_bus(self) -> str | None:
        if self.tcp is None:
            return None
        framing = "rtu" if self.transport == "rtu_over_tcp" else "tcp"
        return f"modbus-{framing}:{self.tcp.host}:{self.tcp.port}"

    def protocol_address(self) -> dict[str, Any]:
        out: dict[str, Any] = {"unit": self.unit}
        if self.tcp is not None:
            out.update(host=self.tcp.host, port=self.tcp.port, transport=self.transport)
        else:
            out["bus"] = self.bus
        return out


DeviceModel = ModbusDevice
