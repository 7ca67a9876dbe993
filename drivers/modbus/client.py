"""The Modbus client: one connection (TCP socket or serial port) shared by every device on it.

A lean asyncio implementation of the read functions (1-4), the write functions (5, 6, 15, 16,
22) and Read Device Identification (43 / MEI 14, :func:`read_identification`) with MBAP framing (Modbus TCP), RTU framing and ASCII framing (serial lines, or RTU / ASCII over
TCP through a converter). The framings differ only in how a PDU is wrapped and found in the byte
stream (:meth:`ModbusLink._frame` and the parsers); matching a reply to its request, timeouts,
retries and late replies are one code path. Why not pymodbus' client: on a shared connection
each device needs its own timeout and retries per request, a dead unit id must not make the
client drop the connection that the other units use (pymodbus drops it after retries+3 misses in
a row, whoever missed), and a reply is wanted as its raw bytes, which the codec unpacks in one
struct call instead of a list of ints built register by register. Measured on loopback it costs
less than half of pymodbus' client CPU time per request (see drivers/modbus/README.md).

Errors: :class:`LinkTimeout` (no answer), :class:`LinkError` (no connection), both about the
connection; :class:`ReplyError` / :class:`ExceptionReply` are about one request's answer.
"""

from __future__ import annotations

import asyncio
import struct
import termios
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

from drivers.modbus.codec import (
    FC_MEI,
    READ_BASIC,
    READ_REGULAR,
    DeviceIdReply,
    Identification,
    device_id_length,
    device_id_request,
    object_text,
    parse_device_id,
)
from gateway.buses import FifoLock, Path, PathSet
from gateway.crc import crc16_reflected

_MBAP_HEADER = struct.Struct(">HHHB")
_READ_PDU = struct.Struct(">BHH")
_MAX_COUNT = {1: 2000, 2: 2000, 3: 125, 4: 125}
MAX_WRITE_COILS = 1968  # what one request PDU holds
MAX_WRITE_REGISTERS = 123
_BUFFER_LIMIT = 1024
_TIMER_SLACK = 0.001

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
GATEWAY_EXCEPTIONS = frozenset({10, 11})


class LinkError(Exception):
    """The connection could not be opened or was lost."""


class LinkTimeout(LinkError):
    """No answer within the timeout."""


class ReplyError(Exception):
    """The answer to one request was unusable (wrong length, wrong function)."""


class ExceptionReply(ReplyError):
    """The device answered with a Modbus exception code."""

    def __init__(self, code: int, function: int) -> None:
        self.code = code
        self.function = function
        super().__init__(f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})")


_modbus_crc = crc16_reflected(0xA001)


def crc16(data: bytes | bytearray | memoryview) -> bytes:
    """The Modbus RTU CRC of `data`, as the two bytes sent after it (low byte first)."""
    crc = _modbus_crc(data)
    return bytes((crc & 0xFF, crc >> 8))


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    body = bytes((unit,)) + pdu
    return body + crc16(body)


def lrc(data: bytes | bytearray | memoryview) -> int:
    """The Modbus ASCII LRC of `data`: the two's complement of its byte sum."""
    return -sum(data) & 0xFF


def ascii_frame(unit: int, pdu: bytes) -> bytes:
    """':' + the hex of unit, PDU and LRC + CRLF (upper case, as the standard writes it)."""
    body = bytes((unit,)) + pdu
    return b":" + (body + bytes((lrc(body),))).hex().upper().encode() + b"\r\n"


def parse_ascii(line: bytes | bytearray) -> bytes | None:
    """The unit + PDU of one ASCII frame's hex characters (between ':' and CRLF); None if corrupt."""
    if len(line) < 6 or len(line) % 2:
        return None
    try:
        raw = bytes.fromhex(line.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return raw[:-1] if lrc(raw[:-1]) == raw[-1] else None


def expected_bytes(code: int, count: int) -> int:
    """Data bytes of a successful reply to a read of `count` bits or registers."""
    return (count + 7) // 8 if code in (1, 2) else 2 * count


# --- write requests (PDUs); ModbusLink.write sends them and checks the echo ---------------------


def coils_pdu(address: int, bits: bytes, multiple: bool = False) -> bytes:
    """FC 5 (one coil, unless `multiple`) or FC 15; `bits` holds one byte 0/1 per coil."""
    count = len(bits)
    if not 1 <= count <= MAX_WRITE_COILS or not 0 <= address <= 65536 - count:
        raise ValueError(f"bad coil write: address {address}, {count} coils")
    if count == 1 and not multiple:
        return struct.pack(">BHH", 5, address, 0xFF00 if bits[0] else 0)
    packed = bytearray((count + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            packed[i >> 3] |= 1 << (i & 7)
    return struct.pack(">BHHB", 15, address, count, len(packed)) + bytes(packed)


def registers_pdu(address: int, data: bytes, multiple: bool = False) -> bytes:
    """FC 6 (one register, unless `multiple`) or FC 16; `data` is the registers' wire bytes."""
    count = len(data) // 2
    if len(data) % 2 or not 1 <= count <= MAX_WRITE_REGISTERS or not 0 <= address <= 65536 - count:
        raise ValueError(f"bad register write: address {address}, {len(data)} bytes")
    if count == 1 and not multiple:
        return struct.pack(">BH", 6, address) + data
    return struct.pack(">BHHB", 16, address, count, len(data)) + data


def mask_pdu(address: int, and_mask: int, or_mask: int) -> bytes:
    """FC 22: register = (register AND and_mask) OR (or_mask AND NOT and_mask)."""
    if not 0 <= address <= 65535:
        raise ValueError(f"bad mask write: address {address}")
    return struct.pack(">BHHH", 22, address, and_mask & 0xFFFF, or_mask & 0xFFFF)


def _echo_of(pdu: bytes) -> bytes:
    """What a good reply to a write repeats: all of FC 5/6/22, function, address and count of FC 15/16."""
    return pdu[:5] if pdu[0] in (15, 16) else pdu


@dataclass(frozen=True, slots=True)
class TcpEndpoint:
    host: str
    port: int = 502
    framing: Literal["tcp", "rtu", "ascii"] = "tcp"
    # The bus' endpoints when there are several (host and port are then the preferred one).
    paths: PathSet | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        return f"modbus-{self.framing}:{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SerialEndpoint:
    port: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1
    framing: Literal["rtu", "ascii"] = "rtu"

    @property
    def key(self) -> str:
        return f"modbus-{self.framing}:{self.port}"


Endpoint = TcpEndpoint | SerialEndpoint


class _Pending:
    __slots__ = ("code", "count", "deadline", "echo", "future", "tid", "unit")

    def __init__(
        self,
        future: asyncio.Future[bytes],
        tid: int,
        unit: int,
        code: int,
        count: int,
        echo: bytes | None = None,
        deadline: float = 0.0,
    ) -> None:
        self.future = future
        self.tid = tid
        self.unit = unit
        self.code = code
        self.count = count
        self.echo = echo  # a write: the reply PDU that acknowledges it
        self.deadline = deadline  # loop time at which it has timed out


class _Protocol(asyncio.Protocol):
    def __init__(self, link: ModbusLink) -> None:
        self.link = link

    def data_received(self, data: bytes) -> None:
        self.link._on_data(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._on_lost(self, exc)


class ModbusLink:
    """One Modbus connection; requests are serialised (Modbus has one outstanding request)."""

    # A stream connection is reopened after this many timeouts in a row when they come from as many
    # units that answered before (or from all of them, if fewer): then the connection, not a unit,
    # is likely dead (a half-open TCP connection to a rebooted gateway). Units that never answered
    # prove nothing, and one silent unit among live ones costs its own timeout, never a reconnect.
    SILENT_LIMIT = 3
    # The standard's largest gap between two characters of an ASCII frame; a frame that stalls
    # longer (or longer than the request's timeout) is incomplete and dropped.
    ASCII_CHAR_TIMEOUT = 1.0

    def __init__(self, endpoint: Endpoint, paths: PathSet | None = None) -> None:
        self.endpoint = endpoint
        # Several endpoints to one set of devices: the bus' PathSet says which one to use.
        if paths is None and isinstance(endpoint, TcpEndpoint):
            paths = endpoint.paths
        self.paths = paths if paths is not None and paths.redundant else None
        self._on: Path | None = None  # the path of the open connection
        self._retry_path: Path | None = None
        self.framing: Literal["tcp", "rtu", "ascii"] = endpoint.framing
        self._char_timeout = self.ASCII_CHAR_TIMEOUT
        self._last_data = 0.0
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the open connection's
        self._protocol: _Protocol | None = None
        self._lock = FifoLock()
        self._buf = bytearray()
        self._pending: _Pending | None = None
        # The timeout timer (see _transact): when it fires, and on which loop.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._tid = 0
        self._retry_at = 0.0
        self._failures = 0
        self._last_error = ""
        self._silent = 0
        self._silent_units: set[int] = set()
        self._answered: set[int] = set()
        self.requests = 0
        self.timeouts = 0
        self.reconnects = 0

    @property
    def name(self) -> str:
        e = self.endpoint
        if isinstance(e, SerialEndpoint):
            return e.port + (" (ascii)" if e.framing == "ascii" else "")
        where = str(self.paths.active) if self.paths is not None else f"{e.host}:{e.port}"
        return where + (f" ({e.framing})" if e.framing != "tcp" else "")

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def read(
        self, unit: int, code: int, address: int, count: int, timeout: float, retries: int = 0
    ) -> Coroutine[Any, Any, bytes]:
        """Read `count` registers or bits; await it for the reply's data bytes.

        Raises LinkTimeout, LinkError, ExceptionReply or ReplyError (ValueError at once, for a
        request that cannot be sent). Not a coroutine itself: it hands out the request's, one
        coroutine fewer on every read of every poll.
        """
        if code not in _MAX_COUNT or not 1 <= count <= _MAX_COUNT[code] or not 0 <= address <= 65535:
            raise ValueError(f"bad read: function {code}, address {address}, count {count}")
        return self._retrying(unit, _READ_PDU.pack(code, address, count), count, None, timeout, retries)

    async def write(self, unit: int, pdu: bytes, timeout: float, retries: int = 0) -> None:
        """Send a write request PDU (see coils_pdu, registers_pdu, mask_pdu) and check its echo.

        A write sets absolute values, so repeating it after a timeout is harmless. Raises like read.
        """
        if not pdu or pdu[0] not in (5, 6, 15, 16, 22):
            raise ValueError(f"not a write request: {pdu[:1].hex()}")
        await self._retrying(unit, pdu, 0, _echo_of(pdu), timeout, retries)

    async def read_device_id(
        self, unit: int, code: int, object_id: int, timeout: float, retries: int = 0
    ) -> DeviceIdReply:
        """One Read Device Identification request (FC 43 / MEI 14); see :func:`read_identification`.

        Raises like read; a reply that is not a well-formed identification is a ReplyError.
        """
        pdu = device_id_request(code, object_id)
        data = await self._retrying(unit, pdu, 0, None, timeout, retries)
        try:
            return parse_device_id(bytes((FC_MEI,)) + data)
        except ValueError as exc:
            raise ReplyError(str(exc)) from None

    async def _retrying(
        self, unit: int, pdu: bytes, count: int, echo: bytes | None, timeout: float, retries: int
    ) -> bytes:
        """One request under the link's lock, sent again after a timeout, at most `retries` times.

        A timeout that ends the request counts against the unit's silence (the half-open rule); any
        reply, an exception reply included, proves the unit answers.
        """
        lock = self._lock
        # `async with lock` without its coroutines when the lock is free (the common case).
        if not lock.try_acquire():
            await lock.acquire()
        try:
            for attempt in range(retries + 1):
                # _open returns at once on an open connection without paths: no coroutine for it.
                if self.paths is not None or not self.connected:
                    await self._open(timeout)
                try:
                    result = await self._transact(unit, pdu, count, echo, timeout)
                except LinkTimeout:
                    if attempt == retries:
                        self._note_silence(unit)
                        raise
                    continue
                except ReplyError:
                    self._note_answer(unit)
                    raise
                self._note_answer(unit)
                return result
        finally:
            lock.release()
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        """Close the connection; the next request reopens it."""
        self._drop(LinkError(f"{self.name}: connection closed"))

    async def aclose(self) -> None:
        await self.close()

    # --- internals ------------------------------------------------------------------------------

    async def _open(self, timeout: float, again: bool = True) -> None:
        paths = self.paths
        path = None
        if paths is not None:
            # Called before every exchange, with the bus held: the only place the path changes.
            path = paths.current()
            if path is not self._on and self.connected:
                self._drop(LinkError(f"{self.name}: the bus moved to another path"))
        if self.connected:
            return
        now = time.monotonic()
        # The back-off is for the endpoint that failed; another path is tried at once.
        if now < self._retry_at and path is self._retry_path:
            raise LinkError(f"{self.name}: {self._last_error} (next attempt in {self._retry_at - now:.1f}s)")
        loop = asyncio.get_running_loop()
        protocol = _Protocol(self)
        began = time.monotonic()
        try:
            async with asyncio.timeout(max(timeout, 0.05)):
                if isinstance(self.endpoint, SerialEndpoint):
                    transport = await self._open_serial(loop, protocol)
                else:
                    host, port = (
                        (path.host, path.port) if path is not None else (self.endpoint.host, self.endpoint.port)
                    )
                    transport, _ = await loop.create_connection(lambda: protocol, host, port)
        # termios.error is no OSError: a port that refuses its character format (a pty told 7E1).
        except (OSError, TimeoutError, ValueError, termios.error) as exc:
            self._failures += 1
            # Several devices on one dead endpoint: one attempt per back-off step, not one per device.
            self._retry_at = time.monotonic() + min(0.2 * 2 ** (self._failures - 1), 5.0)
            if isinstance(exc, TimeoutError):
                reason = "timed out"
            elif isinstance(exc, termios.error):
                reason = f"the port refuses its settings ({exc.args[-1]})"
            else:
                reason = getattr(exc, "strerror", None) or str(exc)
            self._last_error = f"cannot connect: {reason}"
            self._retry_path = path
            error = LinkError(f"{self.name}: {self._last_error}")
            if paths is not None:
                paths.connect_failed(reason)
                # A refused connection is quick: the next path gets its chance within this request.
                left = timeout - (time.monotonic() - began)
                if again and paths.active is not path and left > timeout / 2:
                    return await self._open(left, again=False)
            raise error from None
        if paths is not None:
            paths.connected()
        self._on = path
        self._failures = 0
        self._transport = transport  # type: ignore[assignment]
        self._loop = loop
        self._protocol = protocol
        self._buf.clear()
        self._silent = 0
        self._silent_units.clear()
        self.reconnects += 1

    async def _open_serial(self, loop: asyncio.AbstractEventLoop, protocol: _Protocol) -> asyncio.BaseTransport:
        import serial_asyncio

        e = self.endpoint
        assert isinstance(e, SerialEndpoint)
        transport, _ = await serial_asyncio.create_serial_connection(
            loop,
            lambda: protocol,
            e.port,
            baudrate=e.baudrate,
            bytesize=e.bytesize,
            parity=e.parity,
            stopbits=e.stopbits,
        )
        return transport  # type: ignore[no-any-return]

    async def _transact(self, unit: int, pdu: bytes, count: int, echo: bytes | None, timeout: float) -> bytes:
        """Send one request and wait for its reply (what _on_data resolves) or the timeout.

        One coroutine per request and its future: this runs for every read of every poll. The
        timeout is one timer per link, left running when a reply comes: it is moved only to an
        earlier deadline, and when it fires it expires the request in flight if that one's time is
        up, or waits for it. Requests one after another then cost one timer per timeout period
        instead of one created and cancelled per request (5k instructions each).
        """
        transport = self._transport
        if transport is None:
            raise LinkError(f"{self.name}: not connected")
        # The connection's loop: asyncio.get_running_loop() costs a getpid system call each time.
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        frame, tid = self._frame(unit, pdu)
        self._char_timeout = min(self.ASCII_CHAR_TIMEOUT, timeout)
        deadline = loop.time() + timeout
        pending = _Pending(future, tid, unit, pdu[0], count, echo, deadline)
        self._buf.clear()
        self._pending = pending
        if self._timer is None or self._timer_at > deadline or self._timer_loop is not loop:
            if self._timer is not None and self._timer_loop is loop:
                self._timer.cancel()
            self._arm(loop, deadline)
        self.requests += 1
        try:
            transport.write(frame)
            return await future
        except LinkTimeout:
            self.timeouts += 1
            raise LinkTimeout(f"{self.name}: unit {unit} did not answer within {timeout:g}s") from None
        finally:
            self._pending = None

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._timer = loop.call_at(when, self._on_timer)
        self._timer_at = when
        self._timer_loop = loop

    def _on_timer(self) -> None:
        self._timer = None
        pending = self._pending
        loop = self._timer_loop
        if pending is None or pending.future.done() or loop is None:
            return  # the next request arms it again
        # A timer may fire a little before its time (the loop's clock has millisecond steps).
        if loop.time() + _TIMER_SLACK >= pending.deadline:
            _expire(pending.future)
        else:
            self._arm(loop, pending.deadline)

    def _frame(self, unit: int, pdu: bytes) -> tuple[bytes, int]:
        """The request on the wire and the transaction id its reply carries (0: none, a serial framing)."""
        if self.framing == "rtu":
            return rtu_frame(unit, pdu), 0
        if self.framing == "ascii":
            return ascii_frame(unit, pdu), 0
        self._tid = tid = self._tid % 65535 + 1
        return _MBAP_HEADER.pack(tid, 0, len(pdu) + 1, unit) + pdu, tid

    def _note_answer(self, unit: int) -> None:
        self._silent = 0
        self._silent_units.clear()
        self._answered.add(unit)
        if self.paths is not None:
            self.paths.answered()

    def _note_silence(self, unit: int) -> None:
        self._silent += 1
        if unit in self._answered:
            self._silent_units.add(unit)
            # The same evidence as the reconnect below: a unit that never answered says nothing
            # about the path. The bus counts these and moves to another path after enough of them.
            if self.paths is not None:
                self.paths.timed_out()
        if isinstance(self.endpoint, SerialEndpoint) or self._silent < self.SILENT_LIMIT:
            return
        if len(self._silent_units) >= min(self.SILENT_LIMIT, len(self._answered)):
            self._drop(LinkError(f"{self.name}: units that answered before went silent, reconnecting"))

    def _drop(self, exc: LinkError) -> None:
        transport, self._transport, self._protocol = self._transport, None, None
        self._buf.clear()
        self._silent = 0
        self._silent_units.clear()
        if self._pending is not None and not self._pending.future.done():
            self._pending.future.set_exception(exc)
        if transport is not None:
            transport.close()

    def _on_lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if protocol is not self._protocol:
            return
        self._drop(LinkError(f"{self.name}: connection lost" + (f" ({exc})" if exc else "")))

    def _on_data(self, protocol: _Protocol, data: bytes) -> None:
        if protocol is not self._protocol:
            return
        buf = self._buf
        pending = self._pending
        if (
            not buf
            and pending is not None
            and self.framing == "tcp"
            and 8 <= len(data) <= 260  # an MBAP length of 2-254, as _parse_mbap wants it
            and len(data) == 6 + ((data[4] << 8) | data[5])
            and not data[2]
            and not data[3]
            and ((data[0] << 8) | data[1]) == pending.tid
            and not pending.future.done()
        ):
            # The common case: the awaited reply, whole and alone. _parse_mbap would find it the
            # same way, after a copy into the buffer and out again.
            _resolve(pending, data[7:])
            return
        if self.framing == "ascii":
            now = time.monotonic()
            if buf and now - self._last_data > self._char_timeout:
                buf.clear()  # the frame in progress stalled: incomplete, whatever follows
            self._last_data = now
        buf += data
        if pending is None or pending.future.done():
            # A late answer to a request that already timed out: nobody wants it.
            if self.framing == "tcp":
                self._skip_mbap()
            else:
                buf.clear()
            return
        if self.framing == "tcp":
            self._parse_mbap(pending)
            return
        if self.framing == "rtu":
            self._parse_rtu(pending)
        else:
            self._parse_ascii(pending)
        if len(buf) > _BUFFER_LIMIT:
            del buf[:-_BUFFER_LIMIT]  # line noise; a reply is never this long

    def _skip_mbap(self) -> None:
        buf = self._buf
        while len(buf) >= 7:
            length = (buf[4] << 8) | buf[5]
            if length < 2 or length > 254:
                self._drop(LinkError(f"{self.name}: garbled stream (bad MBAP length {length})"))
                return
            if len(buf) < 6 + length:
                return
            del buf[: 6 + length]

    def _parse_mbap(self, pending: _Pending) -> None:
        buf = self._buf
        while len(buf) >= 7:
            length = (buf[4] << 8) | buf[5]
            if length < 2 or length > 254 or buf[2] or buf[3]:
                self._drop(LinkError(f"{self.name}: garbled stream (bad MBAP header)"))
                return
            total = 6 + length
            if len(buf) < total:
                return
            tid = (buf[0] << 8) | buf[1]
            pdu = bytes(buf[7:total])
            del buf[:total]
            if tid == pending.tid:
                _resolve(pending, pdu)
                return

    def _parse_rtu(self, pending: _Pending) -> None:
        buf = self._buf
        unit, code = pending.unit, pending.code
        n = len(buf)
        # Hunt for a CRC-valid frame from the expected unit with the expected function (or its
        # exception): a late reply of another unit or line noise before it is skipped.
        for i in range(n - 4):
            if buf[i] != unit:
                continue
            f = buf[i + 1]
            if f == code == FC_MEI:
                length = device_id_length(buf, i + 1)
                if not length:
                    continue
                size = 3 + length
            elif f == code:
                size = 3 + len(pending.echo) if pending.echo is not None else 5 + buf[i + 2]
            elif f == code | 0x80:
                size = 5
            else:
                continue
            if i + size > n:
                continue
            if crc16(buf[i : i + size - 2]) != buf[i + size - 2 : i + size]:
                continue
            pdu = bytes(buf[i + 1 : i + size - 2])
            del buf[: i + size]
            _resolve(pending, pdu)
            return

    def _parse_ascii(self, pending: _Pending) -> None:
        buf = self._buf
        while True:
            start = buf.find(b":")
            if start < 0:
                buf.clear()  # no frame begins here: noise
                return
            end = buf.find(b"\r\n", start)
            nxt = buf.find(b":", start + 1)
            if nxt >= 0 and (end < 0 or nxt < end):
                del buf[:nxt]  # a new ':' restarts the frame (the standard's resynchronisation)
                continue
            if end < 0:
                del buf[:start]
                return
            line = bytes(buf[start + 1 : end])
            del buf[: end + 2]
            body = parse_ascii(line)
            if body is None:
                # A corrupt frame that claims to be the answer fails the request now; one that
                # does not (another unit's late reply, noise) is skipped like an RTU one.
                head = line[:4].decode("ascii", "replace").upper()
                if head in (f"{pending.unit:02X}{pending.code:02X}", f"{pending.unit:02X}{pending.code | 0x80:02X}"):
                    if not pending.future.done():
                        pending.future.set_exception(ReplyError(f"corrupt ASCII frame (bad LRC): {line[:40]!r}"))
                    return
                continue
            if len(body) < 2 or body[0] != pending.unit or body[1] & 0x7F != pending.code:
                continue
            _resolve(pending, body[1:])
            return


def _expire(future: asyncio.Future[bytes]) -> None:
    if not future.done():
        future.set_exception(LinkTimeout())


def _resolve(pending: _Pending, pdu: bytes) -> None:
    future = pending.future
    if future.done():
        return
    fc = pdu[0] if pdu else 0
    if fc == pending.code | 0x80 and len(pdu) >= 2:
        future.set_exception(ExceptionReply(pdu[1], pending.code))
        return
    if fc != pending.code or len(pdu) < 2:
        future.set_exception(ReplyError(f"reply with function {fc} to a function {pending.code} request"))
        return
    if fc == FC_MEI:
        future.set_result(pdu[1:])  # its structure is checked by the codec's parser
        return
    if pending.echo is not None:
        if pdu != pending.echo:
            future.set_exception(ReplyError(f"reply {pdu.hex()} does not acknowledge the write {pending.echo.hex()}"))
        else:
            future.set_result(b"")
        return
    want = expected_bytes(pending.code, pending.count)
    if pdu[1] != want or len(pdu) != 2 + want:
        future.set_exception(ReplyError(f"reply carries {len(pdu) - 2} data bytes (count {pdu[1]}), expected {want}"))
        return
    future.set_result(pdu[2:])


class IdentificationUnsupported(ReplyError):
    """The device does not answer Read Device Identification (exception 1: illegal function)."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(
            f"device identification (FC 43 / MEI 14) is not supported: exception {code} "
            f"({EXCEPTION_NAMES.get(code, 'unknown')})"
        )


# A device streams at most 256 objects; more rounds than this is a device that does not progress.
_MAX_ROUNDS = 64


async def read_identification(
    link: ModbusLink, unit: int, timeout: float, retries: int = 0, *, regular: bool = True
) -> Identification:
    """The device's identification objects, basic (0-2) and, when `regular`, regular (3-6).

    Stream access: a reply with "more follows" is continued from its "next object id" until the
    device says it is done. A device whose conformity level is basic, or that refuses the regular
    category (exception 2 or 3), is read as basic. Exception 1 (or another refusal of the basic
    category) raises IdentificationUnsupported; gateway exceptions 10/11 stay ExceptionReply.
    Raises LinkTimeout, LinkError, ReplyError like a read.
    """
    code = READ_REGULAR if regular else READ_BASIC
    try:
        return await _stream(link, unit, code, timeout, retries)
    except ExceptionReply as exc:
        if exc.code in GATEWAY_EXCEPTIONS:
            raise
        if code == READ_BASIC or exc.code not in (2, 3):
            raise IdentificationUnsupported(exc.code) from None
    try:
        return await _stream(link, unit, READ_BASIC, timeout, retries)
    except ExceptionReply as exc:
        if exc.code in GATEWAY_EXCEPTIONS:
            raise
        raise IdentificationUnsupported(exc.code) from None


async def _stream(link: ModbusLink, unit: int, code: int, timeout: float, retries: int) -> Identification:
    objects: dict[int, str] = {}
    object_id = 0
    conformity = 0
    for _ in range(_MAX_ROUNDS):
        reply = await link.read_device_id(unit, code, object_id, timeout, retries)
        # Some devices answer a regular request as basic (their conformity level); another code is wrong.
        if reply.code not in (READ_BASIC, code):
            raise ReplyError(f"device identification reply for code {reply.code} to a code {code} request")
        conformity = reply.conformity
        for oid, value in reply.objects:
            objects[oid] = object_text(value)
        if not reply.more:
            return Identification(conformity, objects)
        if reply.next_object <= object_id:
            raise ReplyError(
                f"device identification does not progress: next object 0x{reply.next_object:02x} "
                f"after a request from 0x{object_id:02x}"
            )
        object_id = reply.next_object
    raise ReplyError(f"device identification still not complete after {_MAX_ROUNDS} replies")


def describe(exc: BaseException) -> str:
    """A one-line text for a link or reply error."""
    return str(exc) or type(exc).__name__


def endpoint_of(device: Any, bus: Any) -> Endpoint | None:
    """The device's connection: its own `tcp`, else its bus' `tcp` or `serial` settings."""
    transport = getattr(device, "transport", "tcp")
    framing: Literal["tcp", "rtu", "ascii"] = (
        "rtu" if transport == "rtu_over_tcp" else "ascii" if transport == "ascii_over_tcp" else "tcp"
    )
    # With several endpoints, host and port are the preferred one's and the bus' PathSet chooses.
    if device.tcp is not None:
        use = getattr(bus, "use_paths", None)
        paths = use(device.tcp, getattr(device, "failover", None)) if use is not None else None
        return TcpEndpoint(device.tcp.host, device.tcp.port, framing, paths)
    if bus is not None and bus.tcp is not None:
        return TcpEndpoint(bus.tcp.host, bus.tcp.port, framing, getattr(bus, "paths", None))
    if bus is not None and bus.serial is not None:
        s = bus.serial
        return SerialEndpoint(s.port, s.baudrate, s.bytesize, s.parity, s.stopbits, getattr(s, "framing", "rtu"))
    return None
