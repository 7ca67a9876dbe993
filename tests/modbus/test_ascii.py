"""Modbus ASCII: the framing, its config, our driver against our twin on a socat pty pair and on
TCP, corrupt and stalled frames, and pymodbus' ASCII framer on either side.

ASCII's 7E1 default is checked on the config and on the twin; the pty lines themselves run 8N1
(``PTY_CHARS``): a Linux pty has no character format (the kernel forces CS8 without parity into
its termios, and pyserial's later tcsetattr of 7E1 on it fails with EINVAL), so parity cannot be
exercised on a pty at all; ASCII frames are 7-bit characters and pass unchanged either way.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import termios
import time
from typing import Any

import pytest

from drivers.modbus.client import (
    LinkError,
    LinkTimeout,
    ModbusLink,
    SerialEndpoint,
    TcpEndpoint,
    ascii_frame,
    endpoint_of,
    lrc,
    parse_ascii,
    registers_pdu,
)
from drivers.modbus.config import ModbusDevice
from drivers.modbus.twin import ModbusTwin
from drivers.modbus.twin.transport import ServerBase
from gateway.buses import Bus, BusConfig
from gateway.driver import DeviceTimeout, PointError
from tests.modbus.util import assert_values, bus_for, device, driver, link_of, points

needs_socat = pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")

REGS = [{"id": f"r{i}", "address": i, "type": "uint16", "quantity": "other"} for i in range(4)]


PTY_CHARS: dict[str, Any] = {"bytesize": 8, "parity": "N", "stopbits": 1}


def ascii_bus(port: str, **serial: Any) -> BusConfig:
    return BusConfig.model_validate({"id": "rs485-a", "serial": {"port": port, "framing": "ascii", **serial}})


class TamperTwin(ModbusTwin):
    """The twin, with replies of chosen units sent with a wrong LRC or split by a pause."""

    bad_lrc: set[int]
    split: float = 0.0

    def _send_reply(self, server: ServerBase, unit: int, frame: bytes, request_len: int) -> None:
        if unit in self.bad_lrc:
            lrc_hex = frame[-4:-2]
            frame = frame[:-4] + b"%02X" % ((int(lrc_hex, 16) + 1) & 0xFF) + b"\r\n"
        if self.split:
            half = len(frame) // 2
            server.send(frame[:half], 0)
            server.send(frame[half:], self.split)
            return
        super()._send_reply(server, unit, frame, request_len)


def tamper_twin(**kw: Any) -> TamperTwin:
    twin = TamperTwin(points(REGS), update_interval=0, **kw)
    twin.bad_lrc = set()
    return twin


# --- the framing and the config -----------------------------------------------------------------


def test_frame_lrc_and_parse() -> None:
    # The standard's example: read 10 holding registers of unit 1 from 0; LRC = -(1+3+10) = 0xF2.
    assert ascii_frame(1, bytes.fromhex("030000000A")) == b":01030000000AF2\r\n"
    assert lrc(b"\x01\x03\x00\x00\x00\x0a") == 0xF2
    assert parse_ascii(b"01030000000AF2") == bytes.fromhex("01030000000A")
    assert parse_ascii(b"01030000000af2") == bytes.fromhex("01030000000A")  # lower-case hex is valid
    assert parse_ascii(b"01030000000AF3") is None  # bad LRC
    assert parse_ascii(b"01030000000AF") is None  # odd length
    assert parse_ascii(b"0103ZZ00000AF2") is None  # not hex


def test_config_framing_and_ascii_defaults() -> None:
    rtu = BusConfig.model_validate({"id": "b", "serial": {"port": "/dev/ttyS0"}}).serial
    assert rtu is not None and (rtu.framing, rtu.bytesize, rtu.parity, rtu.stopbits) == ("rtu", 8, "N", 1)
    asc = BusConfig.model_validate({"id": "b", "serial": {"port": "/dev/ttyS0", "framing": "ascii"}}).serial
    assert asc is not None and (asc.framing, asc.bytesize, asc.parity, asc.stopbits) == ("ascii", 7, "E", 1)
    own = BusConfig.model_validate(
        {"id": "b", "serial": {"port": "/dev/ttyS0", "framing": "ascii", "bytesize": 8, "parity": "N", "stopbits": 2}}
    ).serial
    assert own is not None and (own.bytesize, own.parity, own.stopbits) == (8, "N", 2)
    dev = ModbusDevice.model_validate(
        {"id": "m", "driver": "modbus", "tcp": {"host": "127.0.0.1", "port": 1502}, "transport": "ascii_over_tcp"}
    )
    assert endpoint_of(dev, None) == TcpEndpoint("127.0.0.1", 1502, "ascii")
    assert dev.implicit_bus() == "modbus-ascii:127.0.0.1:1502"
    bus = Bus("rs485-a", ascii_bus("/dev/ttyS0"))
    assert endpoint_of(device(bus="rs485-a"), bus) == SerialEndpoint("/dev/ttyS0", 9600, 7, "E", 1, "ascii")
    assert SerialEndpoint("/dev/ttyS0", framing="ascii").key != SerialEndpoint("/dev/ttyS0").key


# --- our driver, our twin -----------------------------------------------------------------------


@needs_socat
async def test_two_units_on_an_ascii_line_one_silent(line: tuple[str, str]) -> None:
    twin_side, gw_side = line
    pts = points()
    defaults = ModbusTwin(pts, serial=twin_side, framing="ascii")
    assert (defaults.bytesize, defaults.parity, defaults.stopbits) == (7, "E", 1)
    async with ModbusTwin(
        pts,
        units=[1, 2],
        serial=twin_side,
        peer=gw_side,
        framing="ascii",
        baudrate=19200,
        update_interval=0,
        **PTY_CHARS,
    ) as twin:
        assert twin.bus_config()["serial"]["framing"] == "ascii"
        bus_cfg = ascii_bus(gw_side, baudrate=19200, **PTY_CHARS)
        dev1 = device(id="m1", bus="rs485-a", unit=1, timeout=0.3)
        dev2 = device(id="m2", bus="rs485-a", unit=2, timeout=0.3)
        bus = bus_for(dev1, bus_cfg)
        d1, d2 = await driver(dev1, pts, bus), await driver(dev2, pts, bus)
        twin.set_value("v1", 231.25, 2)
        r1, r2 = await asyncio.gather(d1.read(), d2.read())
        assert_values(twin, 1, pts, r1.values)
        assert_values(twin, 2, pts, r2.values)
        assert r2.values[0] == 231.25
        link = link_of(d1)
        assert link is link_of(d2) and link.framing == "ascii"
        # A write goes the same way (FC 16, the echo checked).
        await link.write(1, registers_pdu(40, b"\x12\x34\x56\x78", multiple=True), 0.3)
        assert twin.writes[-1].raw == [0x1234, 0x5678]
        twin.faults.set("silent", target=2)
        t0 = time.monotonic()
        with pytest.raises(DeviceTimeout):
            await d2.read()
        assert time.monotonic() - t0 < 0.6
        assert_values(twin, 1, pts, (await d1.read()).values)
        await bus.close()


async def test_ascii_over_tcp() -> None:
    pts = points()
    async with ModbusTwin(pts, units=[3], framing="ascii", update_interval=0) as twin:
        cfg = twin.device_config(3)
        assert cfg["transport"] == "ascii_over_tcp"
        dev = device(twin.port, unit=3, transport="ascii_over_tcp")
        d = await driver(dev, pts)
        assert_values(twin, 3, pts, (await d.read()).values)
        assert link_of(d).framing == "ascii"
        await d.ctx.bus.close()


async def test_a_bad_lrc_fails_the_read_cleanly() -> None:
    async with tamper_twin(units=[1, 2], framing="ascii") as twin:
        pts = points(REGS)
        dev = device(twin.port, unit=1, transport="ascii_over_tcp", timeout=0.5)
        d = await driver(dev, pts)
        twin.bad_lrc = {1}
        t0 = time.monotonic()
        raw = await d.read()
        # The corrupt answer is recognised as the answer: the read fails at once, not at the timeout.
        assert time.monotonic() - t0 < 0.4
        assert all(isinstance(v, PointError) and "bad LRC" in v.message for v in raw.values)
        twin.bad_lrc = set()
        assert_values(twin, 1, pts, (await d.read()).values)
        await d.ctx.bus.close()


async def test_a_stalled_frame_is_dropped() -> None:
    async with tamper_twin(framing="ascii") as twin:
        link = ModbusLink(TcpEndpoint("127.0.0.1", twin.port, "ascii"))
        link.ASCII_CHAR_TIMEOUT = 0.1
        twin.split = 0.02  # within the inter-character timeout: one frame
        assert len(await link.read(1, 3, 0, 4, 0.5)) == 8
        twin.split = 0.25  # longer: the first half is incomplete, the second half has no ':'
        with pytest.raises(LinkTimeout):
            await link.read(1, 3, 0, 4, 0.5)
        twin.split = 0.0
        assert len(await link.read(1, 3, 0, 4, 0.5)) == 8
        await link.close()


async def test_simulate_framing_ascii_on_its_own_pty() -> None:
    """`edgegw simulate PROFILE --framing ascii --serial pty`: the options, the pty, its bus config."""
    parser = argparse.ArgumentParser()
    ModbusTwin.add_arguments(parser)
    opts = ModbusTwin.options_from_args(
        parser.parse_args(["--framing", "ascii", "--serial", "pty", "--interval", "0s"])
    )
    async with ModbusTwin.create(points=REGS, **opts) as twin:
        assert twin.framing == "ascii" and twin.describe().startswith(f"Modbus ASCII on {twin.peer} (9600 8N1)")
        bus_cfg = BusConfig.model_validate(twin.bus_config())
        dev = ModbusDevice.model_validate({**twin.device_config(1), "id": "m", "timeout": 0.5})
        d = await driver(dev, points(REGS), bus_for(dev, bus_cfg))
        twin.set_value("r3", 321, 1)
        assert (await d.read()).values[3] == 321
        await d.ctx.bus.close()


def test_a_port_that_refuses_7e1_is_a_link_error() -> None:
    import os

    import serial

    master, slave = os.openpty()
    try:
        name = os.ttyname(slave)
        serial.Serial(name, 9600).close()
        try:
            serial.Serial(name, 9600, bytesize=7, parity="E").close()
            pytest.skip("this kernel's ptys accept 7E1")
        except termios.error:
            pass
        link = ModbusLink(SerialEndpoint(name, 9600, 7, "E", 1, "ascii"))
        with pytest.raises(LinkError, match="refuses its settings"):
            asyncio.run(link.read(1, 3, 0, 1, 0.2))
    finally:
        os.close(master)
        os.close(slave)


# --- pymodbus' ASCII framer ---------------------------------------------------------------------


@needs_socat
async def test_driver_reads_a_pymodbus_ascii_server(line: tuple[str, str]) -> None:
    from pymodbus import FramerType
    from pymodbus.server import ModbusSerialServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    twin_side, gw_side = line
    sim = SimDevice(
        id=5,
        simdata=(
            [SimData(0, count=16, values=False, datatype=DataType.BITS)],
            [SimData(0, count=16, values=False, datatype=DataType.BITS)],
            [SimData(0, values=[0x4049, 0x0FD0, 0xFFFE, 7], datatype=DataType.REGISTERS)],
            [SimData(0, values=[9], datatype=DataType.REGISTERS)],
        ),
    )
    server = ModbusSerialServer(sim, framer=FramerType.ASCII, port=twin_side, baudrate=19200, **PTY_CHARS)
    await server.serve_forever(background=True)
    try:
        raw_points = [
            {"id": "pi", "address": 0, "type": "float32", "quantity": "other"},
            {"id": "neg", "address": 2, "type": "int16", "quantity": "other"},
            {"id": "seven", "address": 3, "type": "uint16", "quantity": "other"},
            {"id": "gone", "address": 50, "type": "uint16", "quantity": "other"},
        ]
        dev = device(bus="rs485-a", unit=5, timeout=1.0, max_gap=0)
        d = await driver(dev, points(raw_points), bus_for(dev, ascii_bus(gw_side, baudrate=19200, **PTY_CHARS)))
        pi, neg, seven, gone = (await d.read()).values
        assert isinstance(pi, float) and abs(pi - 3.14159) < 1e-6
        assert (neg, seven) == (-2, 7)
        assert isinstance(gone, PointError) and "exception 2" in gone.message
        await d.ctx.bus.close()
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


@needs_socat
async def test_pymodbus_ascii_client_reads_the_twin(line: tuple[str, str]) -> None:
    from pymodbus import FramerType
    from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

    twin_side, gw_side = line
    async with ModbusTwin(
        points(REGS),
        units=[4],
        serial=twin_side,
        framing="ascii",
        unreadable=[(98, 99)],
        update_interval=0,
        **PTY_CHARS,
    ) as twin:
        twin.set_value("r2", 4242, 4)
        client = AsyncModbusSerialClient(
            gw_side, framer=FramerType.ASCII, baudrate=9600, timeout=1, retries=0, **PTY_CHARS
        )
        assert await client.connect()
        try:
            rr = await client.read_holding_registers(2, count=1, device_id=4)
            assert rr.registers == [4242]
            rr = await client.read_holding_registers(98, count=2, device_id=4)
            assert rr.isError() and rr.exception_code == 2
            rr = await client.write_register(1, 77, device_id=4)
            assert not rr.isError() and twin.value("r1", 4) == 77
        finally:
            client.close()
    async with ModbusTwin(points(REGS), units=[4], framing="ascii", update_interval=0) as twin:
        twin.set_value("r0", 99, 4)
        tcp = AsyncModbusTcpClient("127.0.0.1", port=twin.port, framer=FramerType.ASCII, timeout=1, retries=0)
        assert await tcp.connect()
        try:
            rr = await tcp.read_holding_registers(0, count=4, device_id=4)
            assert rr.registers[0] == 99
        finally:
            tcp.close()


async def test_driver_reads_a_pymodbus_ascii_tcp_server() -> None:
    from pymodbus import FramerType
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    sim = SimDevice(
        id=2,
        simdata=(
            [SimData(0, count=16, values=False, datatype=DataType.BITS)],
            [SimData(0, count=16, values=False, datatype=DataType.BITS)],
            [SimData(0, values=[11, 22], datatype=DataType.REGISTERS)],
            [SimData(0, values=[0], datatype=DataType.REGISTERS)],
        ),
    )
    server = ModbusTcpServer(sim, framer=FramerType.ASCII, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    try:
        port = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        raw_points = [{"id": "a", "address": 0, "quantity": "other"}, {"id": "b", "address": 1, "quantity": "other"}]
        d = await driver(device(port, unit=2, transport="ascii_over_tcp", timeout=1.0), points(raw_points))
        assert (await d.read()).values == [11, 22]
        await d.ctx.bus.close()
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]
