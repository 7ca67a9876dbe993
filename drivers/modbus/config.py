"""Config models of the Modbus driver: the device's connection, its points and its actions."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from gateway.buses import FailoverSettings, TcpPaths, check_failover
from gateway.models import ActionConfig, DeviceConfig, Duration, Identifier, PointConfig, Strict

Function = Literal["holding", "input", "coil", "discrete"]
# How a write goes on the wire: FC 5/6 (one coil or register), FC 15/16, or FC 22 (mask write).
WriteFunction = Literal["single", "multiple", "mask"]
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
    write_function: WriteFunction | None = Field(
        default=None,
        description="single (FC 5/6), multiple (FC 15/16) or mask (FC 22, a bit or bit field of a holding register)",
    )

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

    @model_validator(mode="after")
    def _writable_here(self) -> ModbusPoint:
        if not self.writable:
            if self.write_function is not None:
                raise ValueError("`write_function` is for writable points: add `writable: true` or drop it")
            return self
        if self.function is None:
            # The device's default table is not known here; a write must not depend on it.
            raise ValueError("a writable point names its table: `function: holding` or `function: coil`")
        if self.function in ("input", "discrete"):
            raise ValueError(f"{self.function} registers are read-only in Modbus: the point cannot be writable")
        view = self.bit is not None or self.bits is not None
        if view and self.function == "coil":
            raise ValueError("a coil is one bit: `bit` and `bits` are for registers")
        if self.write_function == "mask":
            if self.function != "holding" or not view:
                raise ValueError("`write_function: mask` (FC 22) writes a `bit` or `bits` of a holding register")
            if self.bits is not None and self.bits[0] // 16 != self.bits[1] // 16:
                raise ValueError("a mask write (FC 22) changes one register: these `bits` span two")
        elif view and self.function == "holding":
            raise ValueError(
                "a bit of a register is not writable without a mask write: add `write_function: mask` (FC 22) "
                "if the device has it; a read-modify-write would race the device's own changes"
            )
        if self.write_function == "single" and self.function == "holding" and self.words() > 1:
            raise ValueError(
                f"{self.type} spans {self.words()} registers: FC 6 writes one (use multiple or leave it out)"
            )
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


class ModbusWrite(Strict):
    """One register or coil write of an action: a constant `value` or the action argument `arg`."""

    address: Annotated[int, Field(ge=0, le=65535)]  # in the device's numbering, as the points
    function: Literal["holding", "coil"] = "holding"
    type: DataType = "uint16"  # of the holding register(s); a coil takes a boolean
    length: Annotated[int, Field(ge=1, le=123)] | None = None  # registers, for strings
    value: int | float | bool | str | list[bool] | None = Field(
        default=None, description="what is written (a list of booleans: consecutive coils, FC 15)"
    )
    arg: Identifier | None = Field(default=None, description="the action argument whose value is written")
    byte_order: Order | None = None  # default: the device's
    word_order: Order | None = None  # default: the device's
    unit_id: Annotated[int, Field(ge=0, le=255)] | None = None  # default: the device's `unit`
    unit_offset: Annotated[int, Field(ge=-255, le=255)] = Field(
        default=0, description="added to the device's `unit` (a BCPME's panel 2 is +1); not with unit_id"
    )
    write_function: Literal["single", "multiple"] | None = None  # default: the device's write_multiple

    @model_validator(mode="after")
    def _consistent(self) -> ModbusWrite:
        if (self.value is None) == (self.arg is None):
            raise ValueError("a write has a `value` or an `arg`, not both and not neither")
        if self.unit_id is not None and self.unit_offset:
            raise ValueError("give `unit_id` or `unit_offset`, not both")
        if self.type == "string" and self.length is None:
            raise ValueError("a string write needs `length` (registers)")
        if self.type != "string" and self.length is not None:
            raise ValueError("`length` is for string writes only")
        if self.function == "coil" and self.type not in ("bool", "uint16"):
            raise ValueError("a coil is a boolean: leave `type` out")
        if isinstance(self.value, list) and self.function != "coil":
            raise ValueError("a list of values is for consecutive coils (FC 15)")
        if self.write_function == "single" and (self.words() > 1 or isinstance(self.value, list)):
            raise ValueError("FC 5/6 write one coil or register")
        if self.value is not None:
            from drivers.modbus.codec import write_spec, write_words

            write_words(write_spec(self, "big", "big"), self.value)  # a constant that cannot be sent fails here
        return self

    def words(self) -> int:
        """Registers (or coils) the write covers."""
        if self.function == "coil":
            return len(self.value) if isinstance(self.value, list) else 1
        return self.length if self.type == "string" and self.length else TYPE_WORDS[self.type]


class ModbusAction(ActionConfig):
    """A named action: register and coil writes sent in order, in one bus transaction."""

    writes: Annotated[list[ModbusWrite], Field(min_length=1, max_length=32)]

    @model_validator(mode="after")
    def _args_exist(self) -> ModbusAction:
        for n, w in enumerate(self.writes):
            if w.arg is None:
                continue
            arg = self.args.get(w.arg)
            if arg is None:
                raise ValueError(f"writes[{n}] takes `arg: {w.arg}`, which is not in the action's `args`")
            if arg.type == "datetime":
                raise ValueError(f"writes[{n}]: a Modbus write takes a number, a boolean or text, not a datetime")
        return self


class ModbusDevice(DeviceConfig):
    """A Modbus device (one unit id, or several through per-point `unit_id`)."""

    point_model: ClassVar[type[PointConfig]] = ModbusPoint
    action_model: ClassVar[type[ActionConfig]] = ModbusAction

    driver: Literal["modbus"]
    tcp: TcpPaths | None = Field(default=None, description="`{host, port}`, or a list of them, preferred first")
    failover: FailoverSettings | None = Field(default=None, description="with several `tcp` endpoints")
    transport: Literal["tcp", "rtu_over_tcp", "ascii_over_tcp"] = Field(
        default="tcp",
        description="on `tcp` (the device's or its bus'): MBAP, or RTU / ASCII frames through a converter",
    )
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
    write_multiple: bool = Field(
        default=False, description="write one coil or register with FC 15/16 too (devices without FC 5/6)"
    )

    @model_validator(mode="after")
    def _one_transport(self) -> ModbusDevice:
        if (self.tcp is None) == (self.bus is None):
            raise ValueError("a Modbus device needs either `tcp: {host, port}` or `bus: <bus id>`")
        for lo, hi in self.unreadable:
            if lo > hi:
                raise ValueError(f"unreadable range [{lo}, {hi}] is reversed")
        if self.failover is not None and self.bus is not None:
            raise ValueError("`failover` of a device on a named bus goes on the bus")
        check_failover(self.tcp, self.failover)
        return self

    def implicit_bus(self) -> str | None:
        if self.tcp is None:
            return None
        framing = {"rtu_over_tcp": "rtu", "ascii_over_tcp": "ascii"}.get(self.transport, "tcp")
        return f"modbus-{framing}:{self.tcp.key}"

    def protocol_address(self) -> dict[str, Any]:
        out: dict[str, Any] = {"unit": self.unit}
        if self.tcp is not None:
            out.update(host=self.tcp.host, port=self.tcp.port, transport=self.transport)
            if len(self.tcp) > 1:
                out["paths"] = [f"{e.host}:{e.port}" for e in self.tcp]
        else:
            out["bus"] = self.bus
        return out


DeviceModel = ModbusDevice
