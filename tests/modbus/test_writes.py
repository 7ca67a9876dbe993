"""Driver writes and actions: every function code against our twin and a pymodbus server, read back.

The twin is watched through its own request log (a subclass that notes each request's function
code); the pymodbus server through its `action` hook, which sees every request it serves.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.modbus.driver import ModbusDriver
from drivers.modbus.twin import ModbusTwin
from gateway.buses import BusConfig
from gateway.driver import DeviceError, DeviceTimeout, PointError, WriteRefused, WriteRequest
from gateway.models import ActionConfig
from gateway.twin import Write
from tests.modbus.util import bus_for, device, driver, link_of, points

H: dict[str, Any] = {"function": "holding", "writable": True, "quantity": "other"}

POINTS: list[dict[str, Any]] = [
    {"id": "relay", "address": 0, "function": "coil", "type": "bool", "writable": True, "quantity": "breaker_state"},
    {
        "id": "relay_m",
        "address": 1,
        "function": "coil",
        "writable": True,
        "write_function": "multiple",
        "quantity": "other",
    },
    {"id": "setpoint", "address": 10, "type": "int16", **H},
    {"id": "limit16", "address": 11, "type": "uint16", "write_function": "multiple", **H},
    {"id": "flag", "address": 12, "type": "bool", **H},
    {"id": "f32", "address": 20, "type": "float32", **H},
    {"id": "f32le", "address": 22, "type": "float32", "word_order": "little", **H},
    {"id": "i32le", "address": 24, "type": "int32", "word_order": "little", **H},
    {"id": "u32", "address": 26, "type": "uint32", **H},
    {"id": "i64", "address": 28, "type": "int64", **H},
    {"id": "u64le", "address": 32, "type": "uint64", "word_order": "little", "byte_order": "little", **H},
    {"id": "f64", "address": 36, "type": "float64", **H},
    {"id": "name", "address": 50, "type": "string", "length": 4, **H},
    {"id": "mode", "address": 70, "type": "uint16", "quantity": "other", "sim": {"value": 0xF0}},
    {"id": "mode.b0", "address": 70, "type": "uint16", "bit": 0, "write_function": "mask", **H},
    {"id": "mode.nib", "address": 70, "type": "uint16", "bits": [8, 11], "write_function": "mask", **H},
    {"id": "st32", "address": 80, "type": "uint32", "word_order": "little", "quantity": "other", "sim": {"value": 0}},
    {
        "id": "st32.f",
        "address": 80,
        "type": "uint32",
        "word_order": "little",
        "bits": [20, 23],
        "write_function": "mask",
        **H,
    },
    {"id": "volts", "address": 90, "type": "float32", "function": "input", "quantity": "voltage", "unit": "V"},
]
IDS = [p["id"] for p in POINTS]


def f32(x: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


def words_of(fmt: str, value: float | int, swap_words: bool = False) -> list[int]:
    raw = struct.pack(">" + fmt, value)
    words = list(struct.unpack(f">{len(raw) // 2}H", raw))
    return words[::-1] if swap_words else words


# point id, raw value written, function code on the wire, value read back, registers the twin got
CASES: list[tuple[str, Any, int, Any, list[int] | list[bool]]] = [
    ("relay", False, 5, False, [False]),
    ("relay_m", True, 15, True, [True]),
    ("setpoint", -215, 6, -215, [0x10000 - 215]),
    ("limit16", 54321, 16, 54321, [54321]),
    ("flag", True, 6, True, [1]),
    ("f32", 0.1, 16, f32(0.1), words_of("f", 0.1)),
    ("f32le", 12.5, 16, 12.5, words_of("f", 12.5, swap_words=True)),
    ("i32le", -2, 16, -2, [0xFFFE, 0xFFFF]),
    ("u32", 0x12345678, 16, 0x12345678, [0x1234, 0x5678]),
    ("i64", -(2**63), 16, -(2**63), [0x8000, 0, 0, 0]),
    ("u64le", 0x0102030405060708, 16, 0x0102030405060708, [0x0807, 0x0605, 0x0403, 0x0201]),
    ("f64", -1e300, 16, -1e300, words_of("d", -1e300)),
    ("name", "Hall", 16, "Hall", [0x4861, 0x6C6C, 0, 0]),  # NUL padded
    ("mode.b0", True, 22, True, [0xF1]),
]


class SpyTwin(ModbusTwin):
    """The twin, noting the function code of every request it is sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.codes: list[int] = []

    def handle(self, unit: int, pdu: bytes) -> bytes | None:
        if pdu:
            self.codes.append(pdu[0])
        return super().handle(unit, pdu)


@pytest.fixture(params=["tcp", "rtu"])
async def twin(request: pytest.FixtureRequest) -> AsyncIterator[SpyTwin]:
    async with SpyTwin(points(POINTS), units=[1, 2], framing=request.param, update_interval=0) as t:
        yield t


async def twin_driver(twin: ModbusTwin, **kw: Any) -> ModbusDriver:
    transport = "rtu_over_tcp" if twin.framing == "rtu" else "tcp"
    return await driver(device(twin.port, transport=transport, timeout=0.3, **kw), points(POINTS))


def last(twin: ModbusTwin) -> tuple[str, Any, Any, Any]:
    w = twin.writes[-1]
    assert isinstance(w, Write)
    return w.point, w.value, w.raw, w.target


# --- the twin ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("point", "raw", "code", "back", "registers"), CASES, ids=[c[0] for c in CASES])
async def test_each_function_code_against_the_twin(
    twin: SpyTwin, point: str, raw: Any, code: int, back: Any, registers: list[Any]
) -> None:
    d = await twin_driver(twin)
    bus = d.ctx.bus
    before = bus.transactions
    got = await d.write(WriteRequest(IDS.index(point), raw))
    assert got == back and type(got) is type(back)
    assert twin.codes == [code, 1 if code in (5, 15) else 3]  # the write, then its read-back
    assert bus.transactions == before + 1  # one bus transaction for both
    name, _, wrote, unit = last(twin)
    assert unit == 1
    if code != 22:
        assert wrote == registers
    else:
        assert name == "mode" and wrote == registers  # FC 22: the register's new value
    await bus.close()


async def test_mask_writes_keep_the_other_bits(twin: SpyTwin) -> None:
    d = await twin_driver(twin)
    assert twin.value("mode") == 0xF0
    assert await d.write(WriteRequest(IDS.index("mode.nib"), 0x5)) == 0x5
    assert twin.value("mode") == 0x5F0
    assert await d.write(WriteRequest(IDS.index("mode.b0"), True)) is True
    assert await d.write(WriteRequest(IDS.index("mode.nib"), 0xA)) == 0xA
    assert twin.value("mode") == 0xAF1
    assert await d.write(WriteRequest(IDS.index("mode.b0"), False)) is False
    assert twin.value("mode") == 0xAF0
    # bits 20-23 of a low-word-first uint32: the mask lands on the second register (81)
    twin.set_value("st32", 0x12345678)
    assert await d.write(WriteRequest(IDS.index("st32.f"), 0xC)) == 0xC
    assert twin.value("st32") == 0x12C45678
    assert twin.codes[-2:] == [22, 3]
    w = twin.writes[-1]
    assert w.point == "holding:81" and w.raw == [0x12C4]
    await d.ctx.bus.close()


async def test_the_read_back_decodes_like_a_poll(twin: SpyTwin) -> None:
    d = await twin_driver(twin)
    for point, raw, _, back, _ in CASES:
        await d.write(WriteRequest(IDS.index(point), raw))
        values = (await d.read()).values
        assert values[IDS.index(point)] == back, point
    await d.ctx.bus.close()


async def test_refusals_carry_the_exception_code(twin: SpyTwin) -> None:
    d = await twin_driver(twin)
    twin.inject_exception(10, 10, code=2, unit=1, function="holding")
    twin.inject_exception(20, 21, code=3, unit=1, function="holding")
    twin.inject_exception(0, 0, code=4, unit=1, function="coil")
    with pytest.raises(WriteRefused, match=r"^exception 2 \(illegal data address\)"):
        await d.write(WriteRequest(IDS.index("setpoint"), 1))
    with pytest.raises(WriteRefused, match=r"^exception 3 \(illegal data value\)"):
        await d.write(WriteRequest(IDS.index("f32"), 1.5))
    with pytest.raises(WriteRefused, match=r"^exception 4 \(server device failure\)"):
        await d.write(WriteRequest(IDS.index("relay"), True))
    assert twin.writes == []
    # a gateway saying the unit behind it is gone is no refusal: the device did not answer
    twin.inject_exception(11, 11, code=11, unit=1)
    twin.inject_exception(12, 12, code=10, unit=1)
    with pytest.raises(DeviceTimeout, match="exception 11"):
        await d.write(WriteRequest(IDS.index("limit16"), 1))
    with pytest.raises(DeviceError, match="exception 10") as info:
        await d.write(WriteRequest(IDS.index("flag"), True))
    assert not isinstance(info.value, WriteRefused | DeviceTimeout)
    await d.ctx.bus.close()


async def test_a_silent_unit_is_a_timeout_in_bounded_time(twin: SpyTwin) -> None:
    d = await twin_driver(twin, retries=1)
    twin.faults.set("silent", target=1)
    start = time.monotonic()
    with pytest.raises(DeviceTimeout, match="did not answer"):
        await d.write(WriteRequest(IDS.index("setpoint"), 5))
    assert time.monotonic() - start < 2 * 0.3 + 0.5  # timeout x (retries + 1), plus slack
    twin.faults.clear()
    assert await d.write(WriteRequest(IDS.index("setpoint"), 5)) == 5  # the same driver goes on
    await d.ctx.bus.close()


async def test_values_the_type_cannot_hold_never_reach_the_device(twin: SpyTwin) -> None:
    d = await twin_driver(twin)
    bad: list[tuple[str, Any, str]] = [
        ("setpoint", 40000, "out of range for int16"),
        ("setpoint", 2.5, "not an integer"),
        ("setpoint", True, "not an integer"),
        ("u32", -1, "out of range for uint32"),
        ("f32", 1e39, "beyond the range of float32"),
        ("f32", "1.5", "not a number"),
        ("relay", 2, "not a boolean"),
        ("name", "Hall A, B", "9 characters do not fit 4 registers"),
        ("name", "Zürich", "not ASCII"),
        ("mode.nib", 16, r"out of range for bits \[8, 11\]"),
        ("volts", 230.0, "not writable"),
        ("setpoint", None, "no relinquish"),
    ]
    for point, raw, why in bad:
        with pytest.raises(ValueError, match=why):
            await d.write(WriteRequest(IDS.index(point), raw))
    assert twin.codes == []
    await d.ctx.bus.close()


async def test_a_point_that_is_never_read_is_written_but_not_read_back(twin: SpyTwin) -> None:
    d = await twin_driver(twin, unreadable=[(10, 10)])
    got = await d.write(WriteRequest(IDS.index("setpoint"), 7))
    assert isinstance(got, PointError) and "not read back" in got.message
    assert twin.codes == [6] and last(twin)[2] == [7]
    await d.ctx.bus.close()


async def test_the_device_pause_lies_between_a_write_and_its_read_back(twin: SpyTwin) -> None:
    d = await twin_driver(twin, pause=0.1)
    start = time.monotonic()
    assert await d.write(WriteRequest(IDS.index("setpoint"), 4)) == 4
    assert time.monotonic() - start >= 0.1
    await d.ctx.bus.close()


async def test_write_multiple_devices_use_fc_15_and_16(twin: SpyTwin) -> None:
    d = await twin_driver(twin, write_multiple=True)
    await d.write(WriteRequest(IDS.index("setpoint"), 3))
    await d.write(WriteRequest(IDS.index("relay"), True))
    await d.write(WriteRequest(IDS.index("mode.b0"), True))  # a mask write stays a mask write
    assert twin.codes == [16, 3, 15, 1, 22, 3]
    await d.ctx.bus.close()


async def test_a_write_takes_its_turn_on_the_bus(twin: SpyTwin) -> None:
    d = await twin_driver(twin)
    bus = d.ctx.bus
    async with bus.transaction():  # another device's request holds the bus
        task = asyncio.create_task(d.write(WriteRequest(IDS.index("setpoint"), 9)))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not task.done() and twin.codes == []
    assert await task == 9
    assert twin.codes == [6, 3]
    await bus.close()


async def test_writes_on_a_serial_line() -> None:
    """RTU on a pty the twin makes, with wire time: the write replies are framed and timed as on RS-485."""
    async with SpyTwin(
        points(POINTS), units=[1], serial="pty", baudrate=19200, wire_time=True, update_interval=0
    ) as twin:
        bus_cfg = BusConfig.model_validate({**twin.bus_config(), "turnaround": 0.005})
        dev = device(bus=bus_cfg.id, unit=1, timeout=0.5)
        d = await driver(dev, points(POINTS), bus_for(dev, bus_cfg))
        assert await d.write(WriteRequest(IDS.index("relay"), False)) is False
        assert await d.write(WriteRequest(IDS.index("f32le"), -7.25)) == -7.25
        assert await d.write(WriteRequest(IDS.index("mode.nib"), 3)) == 3
        assert await d.action(
            "a", action({"writes": [{"address": 0, "function": "coil", "value": [True, True]}]}), {}
        ) == {"written": 1}
        assert twin.codes == [5, 1, 16, 3, 22, 3, 15]
        assert twin.value("mode") == 0x3F0
        await d.ctx.bus.close()


# --- actions --------------------------------------------------------------------------------------


def action(spec: dict[str, Any]) -> ActionConfig:
    """An action through the config loader, as a profile or device config defines it."""
    from gateway.config import parse_device

    dev = parse_device({"id": "d", "driver": "modbus", "tcp": {"host": "127.0.0.1"}, "actions": {"a": spec}})
    return dev.resolved_actions["a"]


async def test_an_action_writes_in_order_in_one_transaction(twin: SpyTwin) -> None:
    d = await twin_driver(twin)
    spec = action(
        {
            "description": "set up",
            "args": {
                "level": {"type": "integer", "min": 0, "max": 100},
                "on": {"type": "boolean", "required": False, "default": True},
            },
            "writes": [
                {"address": 10, "value": 7},
                {"address": 11, "arg": "level"},
                {"address": 20, "type": "float32", "word_order": "little", "value": 2.5},
                {"address": 0, "function": "coil", "value": [True, False, True]},
                {"address": 3, "function": "coil", "arg": "on"},
                {"address": 10, "value": 1, "unit_offset": 1},
            ],
        }
    )
    before = d.ctx.bus.transactions
    assert await d.action("a", spec, {"level": 42}) == {"written": 6}
    assert d.ctx.bus.transactions == before + 1
    assert twin.codes == [6, 6, 16, 15, 5, 6]
    got = [(w.point, w.raw, w.target) for w in twin.writes]
    assert got == [
        ("setpoint", [7], 1),
        ("limit16", [42], 1),
        ("f32", words_of("f", 2.5, swap_words=True), 1),
        ("relay", [True, False, True], 1),
        ("coil:3", [True], 1),
        ("setpoint", [1], 2),
    ]
    await d.ctx.bus.close()


async def test_an_action_with_a_bad_argument_sends_nothing(twin: SpyTwin) -> None:
    d = await twin_driver(twin)
    spec = action(
        {"args": {"n": {"type": "number"}}, "writes": [{"address": 10, "value": 1}, {"address": 11, "arg": "n"}]}
    )
    with pytest.raises(ValueError, match=r"unit 1 holding 11: 1.5 is not an integer"):
        await d.action("a", spec, {"n": 1.5})
    with pytest.raises(ValueError, match="'n' is missing"):
        await d.action("a", spec, {})
    assert twin.codes == []
    await d.ctx.bus.close()


async def test_an_action_refused_half_way_says_where(twin: SpyTwin) -> None:
    d = await twin_driver(twin)
    twin.inject_exception(11, 11, code=2, unit=1, function="holding")
    spec = action({"writes": [{"address": 10, "value": 1}, {"address": 11, "value": 2}, {"address": 12, "value": 3}]})
    with pytest.raises(WriteRefused) as info:
        await d.action("reset", spec, {})
    assert (
        str(info.value)
        == "exception 2 (illegal data address) (reset: write 2 of 3 (unit 1 holding 11); 1 of them written before)"
    )
    assert [w.raw for w in twin.writes] == [[1]]
    twin.faults.set("silent", target=1)
    with pytest.raises(DeviceTimeout, match="write 1 of 3"):
        await d.action("reset", spec, {})
    await d.ctx.bus.close()


async def test_shipped_bcpme_actions_and_writable_points_against_its_twin() -> None:
    # The twin refuses writes inside `unreadable` ranges; the real command registers 294-295 are write-only.
    ranges = [[226, 235], [296, 530], [533, 538], [544, 599], [684, 999], [1126, 1167], [1672, 1999]]
    async with ModbusTwin.create(
        "schneider-bcpme", vars={"channels": 2}, units=[1], unreadable=ranges, update_interval=0
    ) as twin:
        from gateway.config import parse_device

        dev = parse_device({"id": "bcpme", **twin.device_config(), "unreadable": ranges, "timeout": 0.5})
        pts = list(dev.resolved_points)
        ids = [p.id for p in pts]
        d = await driver(dev, pts)  # type: ignore[arg-type]
        actions = dev.resolved_actions
        assert await d.action("panel1.reset_energy", actions["panel1.reset_energy"], {}) == {"written": 1}
        assert last(twin) == ("holding:295", 10203, [10203], 1)
        assert await d.action("panel2.reset_maxima", actions["panel2.reset_maxima"], {}) == {"written": 1}
        assert last(twin) == ("holding:295", 29877, [29877], 2)
        assert await d.action("panel1.reset_aux_energy", actions["panel1.reset_aux_energy"], {}) == {"written": 1}
        assert last(twin) == ("holding:294", 10203, [10203], 1)
        assert await d.write(WriteRequest(ids.index("panel1.location"), "Hall A, board 3")) == "Hall A, board 3"
        assert await d.write(WriteRequest(ids.index("panel2.ch2.breaker_rating"), 32)) == 32
        assert last(twin) == ("panel2.ch2.breaker_rating", 32, [32], 2)
        await d.ctx.bus.close()


# --- a pymodbus server, the reference peer -----------------------------------------------------------


class PymodbusPeer:
    """A pymodbus simulator on 127.0.0.1 with coils 0-15 and holding registers 0-99 on unit 1.

    Registers 60-63 are read-only (exception 2 on a write); `refuse` maps a (function code,
    address) to the exception the server answers; `requests` are (function code, address).
    """

    def __init__(self) -> None:
        self.requests: list[tuple[int, int]] = []
        self.refuse: dict[tuple[int, int], int] = {}
        self.hold: asyncio.Event | None = None  # while set to an unset event, replies wait for it
        self.server: Any = None
        self.port = 0

    async def _action(self, fc: int, _start: int, address: int, _count: int, _regs: list[int], values: Any) -> Any:
        from pymodbus.constants import ExcCodes

        if values is not None or fc in (1, 3):
            self.requests.append((fc, address))
        if self.hold is not None:
            await self.hold.wait()
        code = self.refuse.get((fc, address))
        return ExcCodes(code) if code else None

    async def __aenter__(self) -> PymodbusPeer:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        sim = SimDevice(
            id=1,
            simdata=(
                [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [
                    SimData(0, values=[0] * 60, datatype=DataType.REGISTERS),
                    SimData(60, values=[0] * 4, datatype=DataType.REGISTERS, readonly=True),
                    SimData(64, values=[0] * 6 + [0x00F0] + [0] * 29, datatype=DataType.REGISTERS),
                ],
                [SimData(0, values=[0] * 100, datatype=DataType.REGISTERS)],
            ),
            action=self._action,
        )
        self.server = ModbusTcpServer(sim, address=("127.0.0.1", 0))
        await self.server.serve_forever(background=True)
        self.port = self.server.transport.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.shutdown()

    def written(self) -> list[int]:
        """The function codes of the writes served, in order."""
        return [fc for fc, _ in self.requests if fc not in (1, 3)]


@pytest.fixture
async def peer() -> AsyncIterator[PymodbusPeer]:
    async with PymodbusPeer() as p:
        yield p


async def peer_driver(peer: PymodbusPeer, **kw: Any) -> ModbusDriver:
    return await driver(device(peer.port, timeout=0.3, **kw), points(POINTS))


@pytest.mark.parametrize(("point", "raw", "code", "back", "registers"), CASES, ids=[c[0] for c in CASES])
async def test_each_function_code_against_pymodbus(
    peer: PymodbusPeer, point: str, raw: Any, code: int, back: Any, registers: list[Any]
) -> None:
    d = await peer_driver(peer)
    got = await d.write(WriteRequest(IDS.index(point), raw))
    assert got == back and type(got) is type(back)
    assert peer.written() == [code]
    p = points(POINTS)[IDS.index(point)]
    if p.function == "coil":
        data = await link_of(d).read(1, 1, p.address, 1, 0.3)
        assert [bool(data[0] & 1)] == registers
    else:
        n = len(registers)
        data = await link_of(d).read(1, 3, p.address, n, 0.3)
        assert list(struct.unpack(f">{n}H", data)) == ([0xF1] if code == 22 else registers)
    await d.ctx.bus.close()


async def test_float_and_int_word_orders_on_pymodbus(peer: PymodbusPeer) -> None:
    d = await peer_driver(peer)
    await d.write(WriteRequest(IDS.index("f32"), 3.14159))
    await d.write(WriteRequest(IDS.index("f32le"), 3.14159))
    await d.write(WriteRequest(IDS.index("i32le"), -123456789))
    await d.write(WriteRequest(IDS.index("u32"), 3000000000))
    regs = struct.unpack(">8H", await link_of(d).read(1, 3, 20, 8, 0.3))
    assert regs[0:2] == (0x4049, 0x0FD0)  # MSW first: the BCPME's own example of pi
    assert regs[2:4] == (0x0FD0, 0x4049)  # low word first
    assert regs[4:6] == tuple(words_of("i", -123456789, swap_words=True))
    assert regs[6:8] == tuple(words_of("I", 3000000000))
    values = (await d.read()).values
    assert values[IDS.index("f32")] == f32(3.14159) == values[IDS.index("f32le")]
    assert values[IDS.index("i32le")] == -123456789 and values[IDS.index("u32")] == 3000000000
    await d.ctx.bus.close()


async def test_mask_write_on_pymodbus(peer: PymodbusPeer) -> None:
    d = await peer_driver(peer)
    assert await d.write(WriteRequest(IDS.index("mode.nib"), 0x9)) == 0x9
    assert await d.write(WriteRequest(IDS.index("mode.b0"), True)) is True
    assert struct.unpack(">H", await link_of(d).read(1, 3, 70, 1, 0.3)) == (0x9F1,)
    assert peer.written() == [22, 22]
    await d.ctx.bus.close()


async def test_refusals_from_pymodbus(peer: PymodbusPeer) -> None:
    ro = [{"id": "ro", "address": 60, "type": "uint16", **H}, {"id": "x", "address": 5, "type": "float32", **H}]
    d = await driver(device(peer.port, timeout=0.3), points(ro))
    with pytest.raises(WriteRefused, match=r"^exception 2 \(illegal data address\)"):
        await d.write(WriteRequest(0, 1))
    peer.refuse[(16, 5)] = 3
    with pytest.raises(WriteRefused, match=r"^exception 3 \(illegal data value\)"):
        await d.write(WriteRequest(1, 1.0))
    # the write goes through, its read-back is refused: the result says so, the write stands
    del peer.refuse[(16, 5)]
    peer.refuse[(3, 5)] = 2
    got = await d.write(WriteRequest(1, 1.0))
    assert isinstance(got, PointError) and got.message == "written, not read back: exception 2 (illegal data address)"
    await d.ctx.bus.close()


async def test_no_reply_from_pymodbus_is_a_timeout_in_bounded_time(peer: PymodbusPeer) -> None:
    # pymodbus' simulator answers an unknown unit id with exception 4 even with ignore_missing_devices,
    # so "no reply" is a reply held back past the timeout (and dropped when it comes).
    d = await peer_driver(peer)
    peer.hold = asyncio.Event()
    start = time.monotonic()
    with pytest.raises(DeviceTimeout, match=r"unit 1 did not answer within 0\.3s"):
        await d.write(WriteRequest(IDS.index("setpoint"), 1))
    assert time.monotonic() - start < 0.3 + 0.5
    peer.hold.set()
    peer.hold = None
    assert await d.write(WriteRequest(IDS.index("setpoint"), 2)) == 2  # the late reply is not taken for this one
    await d.ctx.bus.close()


async def test_an_action_on_pymodbus(peer: PymodbusPeer) -> None:
    d = await peer_driver(peer)
    spec = action(
        {
            "writes": [
                {"address": 40, "value": 1},
                {"address": 41, "type": "int32", "value": -5},
                {"address": 2, "function": "coil", "value": True},
            ]
        }
    )
    assert await d.action("a", spec, {}) == {"written": 3}
    assert peer.written() == [6, 16, 5]
    assert struct.unpack(">Hhh", await link_of(d).read(1, 3, 40, 3, 0.3)) == (1, -1, -5)
    await d.ctx.bus.close()


# --- config --------------------------------------------------------------------------------------


def _point_error(raw: dict[str, Any]) -> str:
    from pydantic import ValidationError

    from drivers.modbus.config import ModbusPoint

    with pytest.raises(ValidationError) as info:
        ModbusPoint.model_validate({"id": "p", "address": 1, "quantity": "other", **raw})
    return str(info.value)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ({"function": "input", "writable": True}, "input registers are read-only"),
        ({"function": "discrete", "writable": True}, "discrete registers are read-only"),
        ({"writable": True}, "a writable point names its table"),
        ({"function": "holding", "bit": 3, "writable": True}, "not writable without a mask write"),
        ({"function": "holding", "bits": [2, 5], "writable": True}, "not writable without a mask write"),
        ({"function": "coil", "write_function": "mask", "writable": True}, "mask` \\(FC 22\\) writes a `bit`"),
        ({"function": "holding", "write_function": "mask", "writable": True}, "writes a `bit` or `bits`"),
        (
            {"function": "holding", "type": "uint32", "bits": [12, 19], "write_function": "mask", "writable": True},
            "span two",
        ),
        ({"function": "holding", "type": "float32", "write_function": "single", "writable": True}, "FC 6 writes one"),
        ({"function": "coil", "bit": 1, "writable": True}, "a coil is one bit"),
        ({"function": "holding", "write_function": "multiple"}, "for writable points"),
    ],
)
def test_point_write_options_are_checked_at_load(raw: dict[str, Any], why: str) -> None:
    import re

    assert re.search(why, _point_error(raw)), _point_error(raw)


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ({"writes": []}, "at least 1 item"),
        ({"writes": [{"address": 1}]}, "a `value` or an `arg`"),
        ({"writes": [{"address": 1, "value": 1, "arg": "x"}], "args": {"x": {}}}, "a `value` or an `arg`"),
        ({"writes": [{"address": 1, "arg": "x"}]}, "not in the action's `args`"),
        ({"writes": [{"address": 1, "arg": "t"}], "args": {"t": {"type": "datetime"}}}, "not a datetime"),
        ({"writes": [{"address": 1, "value": 70000}]}, "out of range for uint16"),
        ({"writes": [{"address": 1, "value": 1.5, "type": "int16"}]}, "not an integer"),
        ({"writes": [{"address": 1, "value": [True], "function": "holding"}]}, "consecutive coils"),
        ({"writes": [{"address": 1, "value": 1, "function": "input"}]}, "holding' or 'coil'"),
        ({"writes": [{"address": 1, "value": 1.0, "type": "float32", "write_function": "single"}]}, "FC 5/6"),
        ({"writes": [{"address": 1, "value": 1, "unit_id": 2, "unit_offset": 1}]}, "not both"),
        ({"writes": [{"address": 1, "value": "x", "type": "string"}]}, "needs `length`"),
        ({"writes": [{"address": 1, "value": True, "function": "coil", "type": "float32"}]}, "a coil is a boolean"),
        ({"writes": [{"address": 1, "value": 1}], "extra": 1}, "Extra inputs"),
    ],
)
def test_actions_are_checked_at_load(spec: dict[str, Any], why: str) -> None:
    from gateway.config import ConfigError, parse_device

    with pytest.raises(ConfigError, match=why):
        parse_device(
            {"id": "d", "driver": "modbus", "tcp": {"host": "127.0.0.1"}, "points": [], "actions": {"a": spec}}
        )


def test_profile_writable_points_load_and_explain() -> None:
    from gateway.config import ConfigError, parse_device

    raw = {"id": "d", "driver": "modbus", "profile": "legrand-emdx3", "tcp": {"host": "127.0.0.1"}}
    dev = parse_device(raw)
    assert dev.write_multiple is True  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="a writable point names its table"):
        parse_device({**raw, "points": [{"id": "ct_ratio", "writable": True}]})
    dev = parse_device({**raw, "points": [{"id": "ct_ratio", "writable": True, "function": "holding", "min": 1}]})
    assert any(p.writable for p in dev.resolved_points)


# --- exactness ---------------------------------------------------------------------------------


def test_write_requests_on_the_wire() -> None:
    from drivers.modbus.client import coils_pdu, mask_pdu, registers_pdu

    assert coils_pdu(3, b"\x01") == bytes.fromhex("050003ff00")
    assert coils_pdu(3, b"\x00") == bytes.fromhex("0500030000")
    assert coils_pdu(19, bytes([1, 0, 1, 1, 0, 0, 1, 1, 1, 0])) == bytes.fromhex(
        "0f0013000a02cd01"
    )  # the spec's example
    assert registers_pdu(1, b"\x00\x03") == bytes.fromhex("0600010003")
    assert registers_pdu(1, b"\x00\x0a\x01\x02") == bytes.fromhex("100001000204000a0102")  # the spec's example
    assert registers_pdu(1, b"\x00\x03", multiple=True) == bytes.fromhex("1000010001020003")
    assert mask_pdu(4, 0xF2, 0x25) == bytes.fromhex("16000400f20025")
    with pytest.raises(ValueError, match="2 coils"):
        coils_pdu(65535, b"\x01\x01")  # past the last address
    with pytest.raises(ValueError, match="248 bytes"):
        registers_pdu(0, bytes(248))  # 124 registers: more than a request holds
    with pytest.raises(ValueError, match="1 bytes"):
        registers_pdu(0, b"\x01")
