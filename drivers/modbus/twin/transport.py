"""The Modbus twin's wire: MBAP, RTU and ASCII framing over a stream, and a pseudo-terminal of its own.

The servers cut requests out of the byte stream and hand each to the twin
(:meth:`ModbusTwin.handle`); the twin decides what, when and how much of a reply goes back
(faults, wire time) and calls :meth:`ServerBase.send`.
"""

from __future__ import annotations

import asyncio
import os
import struct
import tty
from typing import TYPE_CHECKING

from drivers.modbus.client import ascii_frame, crc16, parse_ascii

if TYPE_CHECKING:
    from drivers.modbus.twin import ModbusTwin

_MBAP = struct.Struct(">HHHB")
# The standard's largest MBAP length is 254; a request a little longer (a 124-register write) is
# answered with exception 3, as devices do, instead of hanging up.
_MAX_MBAP_LENGTH = 260


class ServerBase(asyncio.Protocol):
    """One client connection (or the serial line) of a twin."""

    def __init__(self, twin: ModbusTwin, track: bool) -> None:
        self.twin = twin
        self.track = track  # TCP connections are counted and can be dropped; a serial line cannot
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.track:
            self.twin._connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.twin._connections.discard(self.transport)

    def send(self, frame: bytes, delay: float, close: bool = False) -> None:
        transport = self.transport
        if transport is None:
            return
        if delay > 0:
            self.twin._late += 1
            asyncio.get_running_loop().call_later(delay, self._late_write, transport, frame, close)
        else:
            _write(transport, frame, close)

    def _late_write(self, transport: asyncio.Transport, frame: bytes, close: bool) -> None:
        self.twin._late -= 1
        _write(transport, frame, close)


def _write(transport: asyncio.Transport, frame: bytes, close: bool) -> None:
    if not transport.is_closing():
        transport.write(frame)
        if close:
            transport.close()  # after the buffered half frame is out


class MbapServer(ServerBase):
    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 7:
            length = (buf[4] << 8) | buf[5]
            if length < 2 or length > _MAX_MBAP_LENGTH:
                if self.transport is not None:
                    self.transport.close()
                buf.clear()
                return
            if len(buf) < 6 + length:
                return
            tid, unit = (buf[0] << 8) | buf[1], buf[6]
            request = bytes(buf[7 : 6 + length])
            del buf[: 6 + length]
            reply = self.twin.handle(unit, request)
            if reply is not None:
                self.twin._send_reply(self, unit, _MBAP.pack(tid, 0, len(reply) + 1, unit) + reply, 6 + length)


def _rtu_request_size(buf: bytearray) -> int | None:
    """The length of the RTU request at the start of `buf`: 0 to drop a byte, None to wait for more."""
    fc = buf[1]
    if fc in (1, 2, 3, 4, 5, 6):
        return 8
    if fc == 22:
        return 10
    if fc == 43:
        return 7  # Read Device Identification: MEI type, code, object id
    if fc in (15, 16):
        return 9 + buf[6] if len(buf) >= 7 else None
    # A function we do not serve: the frame is as long as its CRC says (it came in one piece).
    return next((n for n in range(4, len(buf) + 1) if crc16(buf[: n - 2]) == buf[n - 2 : n]), 0)


class RtuServer(ServerBase):
    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 4:
            size = _rtu_request_size(buf)
            if size is None or len(buf) < size:
                return
            frame = bytes(buf[:size])
            if size == 0 or crc16(frame[:-2]) != frame[-2:]:
                del buf[0]  # not the start of a request: hunt for the next one
                continue
            del buf[:size]
            unit = frame[0]
            reply = self.twin.handle(unit, frame[1:-2])
            if reply is not None:
                body = bytes((unit,)) + reply
                self.twin._send_reply(self, unit, body + crc16(body), size)


# The longest ASCII request: a 123-register write is 2 * 253 hex characters plus ':', LRC, CRLF.
_MAX_ASCII = 600


class AsciiServer(ServerBase):
    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            start = buf.find(b":")
            if start < 0:
                buf.clear()
                return
            if start:
                del buf[:start]
            end = buf.find(b"\r\n")
            nxt = buf.find(b":", 1)
            if nxt >= 0 and (end < 0 or nxt < end):
                del buf[:nxt]  # a new ':' starts a new frame; the one before is dropped
                continue
            if end < 0:
                if len(buf) > _MAX_ASCII:
                    buf.clear()
                return
            body = parse_ascii(buf[1:end])
            size = end + 2
            del buf[:size]
            if body is None or len(body) < 2:
                continue  # a bad LRC: a device stays silent
            unit = body[0]
            reply = self.twin.handle(unit, body[1:])
            if reply is not None:
                self.twin._send_reply(self, unit, ascii_frame(unit, reply), size)


class PtyTransport(asyncio.Transport):
    """The twin's end of a pseudo-terminal it made; ``peer`` is the path a client opens."""

    def __init__(self, loop: asyncio.AbstractEventLoop, master: int, slave: int, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._loop = loop
        self._master = master
        self._slave = slave  # kept open: the line stays configured and reads never see a hang-up
        self._protocol = protocol
        self._out = bytearray()
        self._closing = False
        self.peer = os.ttyname(slave)

    @classmethod
    def open(cls, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol) -> PtyTransport:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing: the bytes are Modbus frames
        os.set_blocking(master, False)
        transport = cls(loop, master, slave, protocol)
        loop.add_reader(master, transport._on_readable)
        protocol.connection_made(transport)
        return transport

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # EIO while no client has the other end open
        if data:
            self._protocol.data_received(data)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        if not self._out:
            try:
                n = os.write(self._master, data)
            except (BlockingIOError, InterruptedError):
                n = 0
            data = bytes(data)[n:]
            if not data:
                return
            self._loop.add_writer(self._master, self._on_writable)
        self._out += data

    def _on_writable(self) -> None:
        try:
            n = os.write(self._master, self._out)
        except (BlockingIOError, InterruptedError):
            return
        del self._out[:n]
        if not self._out:
            self._loop.remove_writer(self._master)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._master)
        self._loop.remove_writer(self._master)
        os.close(self._master)
        os.close(self._slave)
        self._protocol.connection_lost(None)
