"""Writes to the twin (FC 5, 6, 15, 16, 22): raw frames of our own, and pymodbus' client as the reference peer."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.modbus.client import crc16
from drivers.modbus.twin import ModbusTwin
from gateway.twin import Write
from tests.modbus.util import device, driver, points

pytestmark = pytest.mark.asyncio

POINTS: list[dict[str, Any]] = [
    {"id": "relay1", "address": 0, "function": "coil", "type": "bool", "quantity": "breaker_state", "kind": "state"},
    {"id": "relay2", "address": 1, "function": "coil", "type": "bool", "quantity": "alarm", "kind": "state"},
    {"id": "setpoint", "address": 10, "type": "int16", "scale": 0.1, "quantity": "temperature", "unit": "degC"},
    {"id": "limit", "address": 20, "type": "float32", "word_order": "little", "quantity": "current", "unit": "A"},
    {"id": "mode", "address": 30, "type": "uint16", "quantity": "other", "kind": "state", "sim": {"value": 0xF0}},
    {"id": "mode.b0", "address": 30, "type": "uint16", "bit": 0, "quantity": "alarm", "kind": "state"},
    {"id": "energy", "address": 40, "type": "uint32", "scale": 1000, "quantity": "active_energy_import", "unit": "Wh"},
]


@pytest.fixture
async def twin() -> AsyncIterator[ModbusTwin]:
    async with ModbusTwin(points(POINTS), units=[1, 2], unreadable=[(100, 109)], update_interval=0) as t:
        yield t


class RawClient:
    """Request PDUs in MBAP (Modbus TCP) or RTU frames on one TCP connection: the bytes exactly as given."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rtu: bool) -> None:
        self.reader, self.writer, self.rtu = reader, writer, rtu
        self.tid = 0

    @classmethod
    async def connect(cls, port: int, rtu: bool = False) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, rtu)

    async def request(self, unit: int, pdu: bytes, reply_size: int = 0) -> bytes:
        """The reply PDU (RTU: `reply_size` is the expected PDU length of a good reply)."""
        async with asyncio.timeout(2):
            if self.rtu:
                body = bytes((unit,)) + pdu
                self.writer.write(body + crc16(body))
                head = await self.reader.readexactly(2)
                size = 1 if head[1] & 0x80 else reply_size - 1
                rest = await self.reader.readexactly(size + 2)
                frame = head + rest
                assert crc16(frame[:-2]) == frame[-2:], frame.hex()
                assert frame[0] == unit
                return frame[1:-2]
            self.tid += 1
            self.writer.write(struct.pack(">HHHB", self.tid, 0, len(pdu) + 1, unit) + pdu)
            tid, proto, length, got_unit = struct.unpack(">HHHB", await self.reader.readexactly(7))
            assert (tid, proto, got_unit) == (self.tid, 0, unit)
            return await self.reader.readexactly(length - 1)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def fc5(address: int, on: bool | int) -> bytes:
    value = on if isinstance(on, int) and not isinstance(on, bool) else (0xFF00 if on else 0)
    return struct.pack(">BHH", 5, address, value)


def fc6(address: int, value: int) -> bytes:
    return struct.pack(">BHH", 6, address, value)


def fc15(address: int, bits: list[bool], count: int | None = None, size: int | None = None) -> bytes:
    packed = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        packed[i >> 3] |= int(b) << (i & 7)
    n = len(bits) if count is None else count
    return struct.pack(">BHHB", 15, address, n, len(packed) if size is None else size) + bytes(packed)


def fc16(address: int, words: list[int], count: int | None = None, size: int | None = None) -> bytes:
    n = len(words) if count is None else count
    data = struct.pack(f">{len(words)}H", *words)
    return struct.pack(">BHHB", 16, address, n, len(data) if size is None else size) + data


def fc22(address: int, and_mask: int, or_mask: int) -> bytes:
    return struct.pack(">BHHH", 22, address, and_mask, or_mask)


def float_words_little(value: float) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [lo, hi]


def last(twin: ModbusTwin) -> tuple[str, Any, Any, Any]:
    w = twin.writes[-1]
    assert isinstance(w, Write)
    return w.point, w.value, w.raw, w.target


@pytest.mark.parametrize("rtu", [False, True], ids=["tcp", "rtu"])
async def test_every_write_function_with_raw_frames(rtu: bool) -> None:
    async with ModbusTwin(points(POINTS), units=[1, 2], framing="rtu" if rtu else "tcp", update_interval=0) as twin:
        c = await RawClient.connect(twin.port, rtu)
        try:
            await _write_each_function(twin, c)
        finally:
            await c.close()


async def _write_each_function(twin: ModbusTwin, c: RawClient) -> None:
    # FC 5: echo; the coil reads back, stops moving, and the write is remembered
    assert twin.value("relay1", 2) is True  # a breaker shows closed until told otherwise
    assert await c.request(2, fc5(0, False), 5) == fc5(0, False)
    assert await c.request(2, b"\x01\x00\x00\x00\x02", 3) == b"\x01\x01\x00"
    twin.update()
    assert twin.value("relay1", 2) is False and twin.value("relay1", 1) is True
    assert last(twin) == ("relay1", False, [False], 2)
    # FC 6: a scaled int16, decoded through the point's scale
    assert await c.request(1, fc6(10, 215), 5) == fc6(10, 215)
    twin.update()
    assert twin.value("setpoint") == pytest.approx(21.5)
    assert last(twin) == ("setpoint", pytest.approx(21.5), [215], 1)
    assert await c.request(1, b"\x03\x00\x0a\x00\x01", 4) == b"\x03\x02\x00\xd7"
    # FC 16: a float32 low word first, decoded through the point's word order
    words = float_words_little(12.5)
    assert await c.request(1, fc16(20, words), 5) == fc16(20, words)[:5]
    twin.update()
    assert twin.value("limit") == 12.5
    assert last(twin) == ("limit", 12.5, words, 1)
    # FC 15: ten coils at once; the first is a point's start
    bits = [True, True, False, True, False, False, False, True, True, False]
    assert await c.request(1, fc15(0, bits), 5) == fc15(0, bits)[:5]
    assert await c.request(1, b"\x01\x00\x00\x00\x0a", 4) == b"\x01\x02\x8b\x01"
    assert twin.value("relay1") is True and twin.value("relay2") is True
    assert last(twin) == ("relay1", True, bits, 1)
    # FC 22: (current AND and_mask) OR (or_mask AND NOT and_mask), the example of the specification
    twin.set_value("mode", 0x12)
    assert await c.request(1, fc22(30, 0xF2, 0x25), 7) == fc22(30, 0xF2, 0x25)
    twin.update()
    assert twin.value("mode") == 0x17 and twin.value("mode.b0") is True
    assert last(twin) == ("mode", 0x17, [0x17], 1)
    # a register that is no point's start: named by its address
    assert await c.request(1, fc16(41, [7]), 5) == fc16(41, [7])[:5]
    assert last(twin) == ("holding:41", 7, [7], 1)
    assert twin.value("energy") == 7 * 1000  # the point under it shows what its registers hold now
    assert await c.request(1, fc5(500, True), 5) == fc5(500, True)
    assert last(twin) == ("coil:500", True, [True], 1)
    assert len(twin.writes) == 7


async def test_refused_writes_answer_the_right_exception(twin: ModbusTwin) -> None:
    c = await RawClient.connect(twin.port)
    try:
        cases: list[tuple[bytes, int]] = [
            # 1: a function the twin does not serve
            (b"\x08\x00\x00\x12\x34", 1),  # diagnostics
            (b"\x2b\x0e\x01\x00", 1),  # read device identification
            (b"\x17\x00\x00\x00\x01\x00\x00\x00\x01\x02\x00\x00", 1),  # read/write multiple
            (b"\x07", 1),
            # 2: outside what is served, or in an unreadable range
            (fc6(105, 1), 2),
            (fc5(100, True), 2),
            (fc16(108, [1, 2, 3]), 2),
            (fc15(95, [True] * 6), 2),
            (fc22(109, 0, 0), 2),
            (fc16(65535, [1, 2]), 2),
            (fc15(65530, [True] * 7), 2),
            # 3: bad quantities, byte counts or values
            (fc5(0, 0x1234), 3),
            (fc5(0, True)[:4], 3),
            (fc6(10, 1)[:4], 3),
            (fc16(10, [], count=0, size=0), 3),
            (fc16(10, [0] * 124), 3),
            (fc16(10, [1, 2], size=3), 3),
            (fc16(10, [1, 2], count=3), 3),
            (fc15(0, [True] * 3, count=9), 3),
            (fc15(0, [True], size=2), 3),
            (fc15(0, [], count=0, size=0), 3),
            (fc22(30, 0, 0)[:6], 3),
        ]
        for pdu, code in cases:
            reply = await c.request(1, pdu)
            assert reply == bytes((pdu[0] | 0x80, code)), (pdu.hex(), reply.hex())
        assert twin.writes == []  # nothing refused was remembered
    finally:
        await c.close()


async def test_a_written_value_is_what_the_driver_reads(twin: ModbusTwin) -> None:
    c = await RawClient.connect(twin.port)
    await c.request(1, fc16(20, float_words_little(-3.25)))
    await c.request(1, fc6(10, 0xFFF6))  # -1.0 degC as int16 -10 x 0.1
    await c.close()
    pts = points(POINTS)
    d = await driver(device(twin.port, unit=1), pts)
    twin.update()
    by_id = dict(zip((p.id for p in pts), (await d.read()).values, strict=True))
    assert by_id["limit"] == -3.25 and by_id["setpoint"] == -10
    twin.release("limit")
    twin.update()
    assert (await d.read()).values[3] != -3.25  # released: it moves again
    await d.ctx.bus.close()


@pytest.mark.parametrize("framer", ["socket", "rtu"])
async def test_pymodbus_client_writes_to_the_twin(framer: str) -> None:
    from pymodbus import FramerType
    from pymodbus.client import AsyncModbusTcpClient

    async with ModbusTwin(
        points(POINTS),
        units=[1],
        unreadable=[(100, 109)],
        framing="rtu" if framer == "rtu" else "tcp",
        update_interval=0,
    ) as twin:
        client = AsyncModbusTcpClient("127.0.0.1", port=twin.port, framer=FramerType(framer), timeout=1, retries=0)
        await client.connect()
        try:
            assert not (await client.write_coil(1, True, device_id=1)).isError()
            assert (await client.read_coils(1, count=1, device_id=1)).bits[0] is True
            assert last(twin) == ("relay2", True, [True], 1)

            assert not (await client.write_register(10, 215, device_id=1)).isError()
            assert (await client.read_holding_registers(10, count=1, device_id=1)).registers == [215]
            assert twin.value("setpoint") == pytest.approx(21.5)

            bits = [False, True, True, False, True]
            assert not (await client.write_coils(0, bits, device_id=1)).isError()
            assert (await client.read_coils(0, count=5, device_id=1)).bits[:5] == bits
            assert last(twin) == ("relay1", False, bits, 1)

            words = float_words_little(99.5)
            assert not (await client.write_registers(20, words, device_id=1)).isError()
            assert (await client.read_holding_registers(20, count=2, device_id=1)).registers == words
            assert last(twin) == ("limit", 99.5, words, 1)

            twin.set_value("mode", 0x12)
            rr = await client.mask_write_register(address=30, and_mask=0xF2, or_mask=0x25, device_id=1)
            assert not rr.isError()
            assert (await client.read_holding_registers(30, count=1, device_id=1)).registers == [0x17]

            rr = await client.write_register(105, 1, device_id=1)
            assert rr.isError() and rr.exception_code == 2
            rr = await client.write_coil(0, True, device_id=1)
            assert not rr.isError()
            rr = await client.write_registers(10, [0] * 124, device_id=1)
            assert rr.isError() and rr.exception_code == 3
            rr = await client.diag_read_diagnostic_register(device_id=1)
            assert rr.isError() and rr.exception_code == 1
            assert len(twin.writes) == 6
        finally:
            client.close()
