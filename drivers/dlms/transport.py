"""Byte channels (TCP, RS-485 serial, optical probe with the IEC 62056-21 mode E opening) and the
APDU links over them: the TCP wrapper (IEC 62056-47) and HDLC (IEC 62056-46).

A channel may be shared by several meters (one RS-485 port, one serial-to-Ethernet converter):
the caller serialises exchanges with the bus lock and every exchange filters the replies by
address, so a late answer of a dead meter never reaches another meter's request.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
from typing import Any

from drivers.dlms import hdlc
from drivers.dlms.hdlc import Frame, FrameReader, LinkParams
from gateway.buses import Path, PathSet


class LinkError(Exception):
    """The link to the meter failed: refused, closed, broken frames, or the meter dropped it."""


class LinkTimeout(LinkError):
    """The meter did not answer within the timeout."""


class LinkCorrupt(LinkTimeout):
    """Only broken frames (FCS/HCS errors) came back within the timeout."""


class _Receiver(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.event = asyncio.Event()
        self.closed = False
        self.error: BaseException | None = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.event.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.error = exc
        self.event.set()


class Channel(abc.ABC):
    """A byte stream to one or more meters; reopened on demand after a failure."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.generation = 0  # bumps at every (re)open: links over it start again
        self._transport: asyncio.Transport | None = None
        self._rx: _Receiver | None = None
        self._open_lock = asyncio.Lock()

    @property
    def is_open(self) -> bool:
        return self._transport is not None and self._rx is not None and not self._rx.closed

    @property
    def reopen_after_disconnect(self) -> bool:
        """The line goes back to its opening procedure when a meter disconnects (optical mode E)."""
        return False

    async def ensure_open(self, timeout: float) -> None:
        async with self._open_lock:
            if self.is_open:
                return
            await self._drop()
            rx = _Receiver()
            try:
                async with asyncio.timeout(timeout):
                    self._transport = await self._open(rx)
            except TimeoutError:
                raise LinkTimeout(f"{self.name}: no connection within {timeout:g}s") from None
            except OSError as exc:
                raise LinkError(f"{self.name}: {exc.strerror or exc}") from None
            except LinkError:
                raise
            except Exception as exc:  # noqa: BLE001 - pyserial raises its own SerialException
                raise LinkError(f"{self.name}: {exc}") from None
            self._rx = rx
            self.generation += 1
            try:
                await self._after_open(timeout)
            except BaseException:
                await self._drop()
                raise

    @abc.abstractmethod
    async def _open(self, rx: _Receiver) -> asyncio.Transport: ...

    async def _after_open(self, timeout: float) -> None:  # noqa: B027 - optional hook
        """Protocol opening on a fresh connection (mode E)."""

    def discard_input(self) -> None:
        if self._rx is not None:
            self._rx.buf.clear()

    async def write(self, data: bytes) -> None:
        if not self.is_open or self._transport is None:
            raise LinkError(f"{self.name}: not connected")
        self._transport.write(data)

    async def read(self, timeout: float) -> bytes:
        """Whatever arrived, waiting at most `timeout`; LinkTimeout when nothing did."""
        rx = self._rx
        if rx is None:
            raise LinkError(f"{self.name}: not connected")
        if not rx.buf:
            if rx.closed:
                await self._drop()
                raise LinkError(f"{self.name}: connection closed by the peer")
            rx.event.clear()
            try:
                async with asyncio.timeout(max(0.0, timeout)):
                    await rx.event.wait()
            except TimeoutError:
                raise LinkTimeout(f"{self.name}: no answer") from None
            if not rx.buf and rx.closed:
                await self._drop()
                raise LinkError(f"{self.name}: connection closed by the peer")
        data = bytes(rx.buf)
        rx.buf.clear()
        return data

    async def _drop(self) -> None:
        transport, self._transport, self._rx = self._transport, None, None
        if transport is not None:
            transport.close()
            await asyncio.sleep(0)

    async def aclose(self) -> None:
        await self._drop()


class TcpChannel(Channel):
    """A TCP connection; with several endpoints (`paths`, the bus') it opens on the one in use."""

    def __init__(self, host: str, port: int, paths: PathSet | None = None) -> None:
        super().__init__(f"tcp {host}:{port}")
        self.host = host
        self.port = port
        self.paths = paths if paths is not None and paths.redundant else None
        self._on: Path | None = None  # the path of the open connection

    async def follow(self) -> bool:
        """Close a connection to a path the bus left (call it where an association may start); True if closed."""
        paths = self.paths
        if paths is None:
            return False
        path = paths.current()
        if self._on is path or not self.is_open:
            return False
        await self._drop()
        return True

    async def ensure_open(self, timeout: float) -> None:
        paths = self.paths
        if paths is None or self.is_open:
            await super().ensure_open(timeout)
            return
        generation = self.generation
        try:
            await super().ensure_open(timeout)
        except LinkError as exc:
            paths.connect_failed(str(exc).removeprefix(f"{self.name}: "))
            raise
        if self.generation != generation:
            paths.connected()

    async def _open(self, rx: _Receiver) -> asyncio.Transport:
        host, port = self.host, self.port
        if self.paths is not None:
            path = self._on = self.paths.active
            host, port = path.host, path.port
            self.name = f"tcp {path}"
        transport, _ = await asyncio.get_running_loop().create_connection(lambda: rx, host, port)
        return transport


class SerialChannel(Channel):
    """An RS-485 port (through pyserial); several meters share it."""

    def __init__(
        self, port: str, baudrate: int = 9600, bytesize: int = 8, parity: str = "N", stopbits: int = 1
    ) -> None:
        super().__init__(f"serial {port}")
        self.port = port
        self.settings: dict[str, Any] = {
            "baudrate": baudrate,
            "bytesize": bytesize,
            "parity": parity,
            "stopbits": stopbits,
        }

    async def _open(self, rx: _Receiver) -> asyncio.Transport:
        import serial_asyncio

        transport, _ = await serial_asyncio.create_serial_connection(
            asyncio.get_running_loop(), lambda: rx, self.port, **self.settings
        )
        return transport  # type: ignore[no-any-return]

    def _serial(self) -> Any:
        return getattr(self._transport, "serial", None)


MODE_E_BAUDS = {300: "0", 600: "1", 1200: "2", 2400: "3", 4800: "4", 9600: "5", 19200: "6"}
_BAUD_OF_CODE = {v: k for k, v in MODE_E_BAUDS.items()}


def parse_identification(line: bytes) -> tuple[str, int, bool]:
    """`/XXXZ\\2ident` -> (manufacturer, highest baud rate, mode E binary offered)."""
    text = line.strip(b"\r\n")
    if len(text) < 5 or text[:1] != b"/":
        raise LinkError(f"not an IEC 62056-21 identification: {text[:40]!r}")
    manufacturer = text[1:4].decode("ascii", "replace")
    code = chr(text[4])
    if code not in _BAUD_OF_CODE:
        raise LinkError(f"identification gives an unknown baud rate code {code!r}")
    mode_e = text[5:7] == b"\\2"
    return manufacturer, _BAUD_OF_CODE[code], mode_e


class OpticalChannel(SerialChannel):
    """The optical probe: IEC 62056-21 mode E at 300 baud 7E1, then HDLC at the agreed speed 8N1."""

    def __init__(self, port: str, baudrate: int = 9600, mode_e: bool = True, device_address: str = "") -> None:
        if mode_e:
            super().__init__(port, 300, 7, "E", 1)
        else:
            super().__init__(port, baudrate, 8, "N", 1)
        self.name = f"optical {port}"
        self.target_baud = baudrate
        self.mode_e = mode_e
        self.device_address = device_address
        self.identification = ""
        self.framing_fallback = False

    @property
    def reopen_after_disconnect(self) -> bool:
        return self.mode_e

    async def _open(self, rx: _Receiver) -> asyncio.Transport:
        if not self.mode_e:
            return await super()._open(rx)
        self.settings.update(baudrate=300, bytesize=7, parity="E")
        try:
            return await super()._open(rx)
        except Exception as exc:  # pyserial's SerialException / termios.error
            if getattr(exc, "errno", None) != 22 and "Invalid argument" not in str(exc):
                raise
        # Some serial devices (pseudo-terminals, a few USB adapters) refuse 7-bit characters:
        # the opening is plain ASCII, so 8N1 carries it as well for most probes.
        self.settings.update(bytesize=8, parity="N")
        self.framing_fallback = True
        return await super()._open(rx)

    async def _after_open(self, timeout: float) -> None:
        if not self.mode_e:
            return
        # 300 baud: the request and the meter's identification take most of a second each.
        budget = max(timeout, 2.5)
        await self.write(b"/?" + self.device_address.encode("ascii") + b"!\r\n")
        line = bytearray()
        deadline = time.monotonic() + budget
        while not line.endswith(b"\r\n"):
            try:
                line += await self.read(deadline - time.monotonic())
            except LinkTimeout:
                raise LinkTimeout(f"{self.name}: no IEC 62056-21 identification (is the probe on the meter?)") from None
            if len(line) > 128:
                raise LinkError("optical: identification too long")
            start = line.find(b"/")
            if start > 0:  # an echo of our request or noise before the identification
                del line[:start]
            if line.startswith(b"/?"):
                end = line.find(b"\r\n")
                if end < 0:
                    continue
                del line[: end + 2]
        manufacturer, max_baud, binary = parse_identification(bytes(line))
        if not binary:
            raise LinkError(f"optical: meter {manufacturer} does not offer mode E (HDLC)")
        baud = min(self.target_baud, max_baud)
        # ACK: protocol control '2' (HDLC), the baud rate code, mode control '2' (binary)
        await self.write(b"\x062" + MODE_E_BAUDS[baud].encode() + b"2\r\n")
        # The switch happens after the 6 ACK characters have left at 300 baud (10 bits each).
        await asyncio.sleep(6 * 10 / 300 + 0.05)
        ser = self._serial()
        if ser is not None:
            ser.baudrate = baud
            ser.bytesize = 8
            ser.parity = "N"
        self.settings.update(baudrate=baud, bytesize=8, parity="N")
        await asyncio.sleep(0.05)
        self.discard_input()
        self.identification = line.decode("ascii", "replace").strip()


# --- APDU links ----------------------------------------------------------------------------------


class ApduLink(abc.ABC):
    """Carries whole APDUs to one meter (logical device) over a channel."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._generation = -1

    @property
    def connected(self) -> bool:
        return self.channel.is_open and self._generation == self.channel.generation

    async def connect(self, timeout: float) -> None:
        await self.channel.ensure_open(timeout)
        await self._connect(timeout)
        self._generation = self.channel.generation

    async def _connect(self, timeout: float) -> None:  # noqa: B027 - optional hook
        """Link-level set-up (HDLC SNRM/UA)."""

    def reset(self) -> None:
        """Forget the link state: the next use starts again with connect()."""
        self._generation = -1

    @abc.abstractmethod
    async def exchange(self, apdu: bytes, timeout: float) -> bytes:
        """Send a request APDU, return the reply APDU; each wait for the meter is bounded by `timeout`."""

    async def disconnect(self, timeout: float) -> None:  # noqa: B027 - optional hook
        """Link-level release (HDLC DISC)."""

    @property
    def max_apdu(self) -> int:
        return 0xFFFF


class WrapperLink(ApduLink):
    """IEC 62056-47: an 8-byte header (version 1, source wPort, destination wPort, length)."""

    def __init__(self, channel: Channel, client_wport: int, server_wport: int) -> None:
        super().__init__(channel)
        self.client = client_wport
        self.server = server_wport
        self._buf = bytearray()

    async def _connect(self, timeout: float) -> None:
        self._buf.clear()

    async def exchange(self, apdu: bytes, timeout: float) -> bytes:
        if not self.connected:
            raise LinkError("wrapper link not connected")
        try:
            return await self._exchange(apdu, timeout)
        except LinkTimeout:
            # The wrapper has no sequence numbers: a late answer would pass for the answer to the
            # next request. Closing the connection throws it away with the connection.
            self.reset()
            await self.channel.aclose()
            raise

    async def _exchange(self, apdu: bytes, timeout: float) -> bytes:
        self.channel.discard_input()
        self._buf.clear()
        header = (1).to_bytes(2, "big") + self.client.to_bytes(2, "big") + self.server.to_bytes(2, "big")
        await self.channel.write(header + len(apdu).to_bytes(2, "big") + apdu)
        deadline = time.monotonic() + timeout
        while True:
            while len(self._buf) >= 8:
                version = int.from_bytes(self._buf[0:2], "big")
                if version != 1:
                    self.reset()
                    raise LinkError(f"wrapper: bad version {version} (not a DLMS wrapper stream)")
                src = int.from_bytes(self._buf[2:4], "big")
                dst = int.from_bytes(self._buf[4:6], "big")
                length = int.from_bytes(self._buf[6:8], "big")
                if len(self._buf) < 8 + length:
                    break
                body = bytes(self._buf[8 : 8 + length])
                del self._buf[: 8 + length]
                if src == self.server and dst == self.client and _answers(apdu, body):
                    return body
                # another logical device's or a push addressed elsewhere: not ours
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise LinkTimeout("no answer")
                self._buf += await self.channel.read(remaining)
            except LinkTimeout:
                # The same text every time, so that a dead meter is logged once, not once per poll.
                raise LinkTimeout(f"{self.channel.name}: logical device {self.server} did not answer") from None


# request tag -> the tags that may answer it (besides exception-response and confirmed-service-error)
_ANSWERS = {
    0x60: (0x61,),  # AARQ -> AARE
    0x62: (0x63,),  # RLRQ -> RLRE
    0xC0: (0xC4,),  # GET
    0xC1: (0xC5,),  # SET
    0xC3: (0xC7,),  # ACTION
    0xC8: (0xCC, 0xC4),  # glo-GET
    0xC9: (0xCD, 0xC5),
    0xCB: (0xCF, 0xC7),
}
_ALWAYS = (0xD8, 0x0E, 0x2E)  # exception-response, confirmed-service-error (plain, glo)


def _answers(request: bytes, reply: bytes) -> bool:
    """Could `reply` be the answer to `request`? (A late answer to an earlier request cannot.)"""
    if not request or not reply:
        return False
    allowed = _ANSWERS.get(request[0])
    if allowed is None or reply[0] in _ALWAYS:
        return True
    if reply[0] not in allowed:
        return False
    # plain GET/SET/ACTION carry the invoke-id-and-priority byte at the same place
    if request[0] in (0xC0, 0xC1, 0xC3) and len(request) > 2 and len(reply) > 2:
        return (request[2] & 0x0F) == (reply[2] & 0x0F)
    return True


class HdlcLink(ApduLink):
    """The client (primary station) of an HDLC link to one server address."""

    def __init__(
        self,
        channel: Channel,
        client_sap: int,
        logical: int,
        physical: int | None,
        address_size: int | None = None,
        max_info: int = hdlc.DEFAULT_MAX_INFO,
        window: int = hdlc.DEFAULT_WINDOW,
    ) -> None:
        super().__init__(channel)
        self.own = hdlc.client_address(client_sap)
        self.peer = hdlc.server_address(logical, physical, address_size)
        self.proposed = LinkParams(max_info_tx=max_info, max_info_rx=max_info, window_tx=window, window_rx=window)
        self.params = LinkParams()
        self.reader = FrameReader()
        self.vs = 0
        self.vr = 0
        self._pending: list[Frame] = []
        self.who = f"meter {logical}/{physical}" if physical is not None else f"meter {logical}"

    def _frame(self, control: int, info: bytes = b"", segmented: bool = False) -> bytes:
        return hdlc.encode_frame(self.peer, self.own, control, info, segmented)

    async def _next_frame(self, deadline: float) -> Frame:
        """The next frame from our server to us; others on the bus are skipped."""
        bad_before = self.reader.bad_frames
        while True:
            if self._pending:
                return self._pending.pop(0)
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise LinkTimeout("no answer")
                data = await self.channel.read(remaining)
            except LinkTimeout:
                # Only whole frames with a bad check sequence count: stray bytes (the cut-off tail
                # of a late answer) are no sign of a corrupting line.
                if self.reader.bad_frames > bad_before:
                    why = self.reader.last_error
                    raise LinkCorrupt(f"{self.channel.name}: {self.who} sent only broken frames ({why})") from None
                raise LinkTimeout(f"{self.channel.name}: {self.who} did not answer") from None
            for frame in self.reader.feed(data):
                if frame.dst == self.own and frame.src == self.peer:
                    self._pending.append(frame)

    async def _send_and_wait(self, frame: bytes, timeout: float) -> Frame:
        self.channel.discard_input()
        self.reader.clear()
        self._pending = []
        await self.channel.write(frame)
        return await self._next_frame(time.monotonic() + timeout)

    async def _connect(self, timeout: float) -> None:
        snrm = self._frame(hdlc.SNRM | hdlc.PF, hdlc.encode_params(self.proposed))
        deadline = time.monotonic() + timeout
        reply = await self._send_and_wait(snrm, timeout)
        while reply.is_i or reply.kind in (hdlc.RR, hdlc.RNR):
            # a late answer to an exchange that timed out: the UA follows it
            reply = await self._next_frame(deadline)
        if reply.kind == hdlc.DM:
            raise LinkError(f"meter {self.peer.hex()} refused the HDLC connection (DM)")
        if reply.kind != hdlc.UA:
            raise LinkError(f"meter {self.peer.hex()} answered SNRM with control {reply.control:#04x}")
        try:
            ua = hdlc.decode_params(reply.info)
        except hdlc.HdlcError as exc:
            raise LinkError(f"bad UA parameters: {exc}") from None
        # The UA speaks for the meter: its transmit limits are our receive limits.
        self.params = LinkParams(
            max_info_tx=min(ua.max_info_rx, self.proposed.max_info_tx),
            max_info_rx=ua.max_info_tx,
            window_tx=min(ua.window_rx, self.proposed.window_tx),
            window_rx=ua.window_tx,
        )
        self.vs = self.vr = 0

    async def exchange(self, apdu: bytes, timeout: float) -> bytes:
        if not self.connected:
            raise LinkError("HDLC link not connected")
        try:
            return await self._exchange(apdu, timeout)
        except LinkError:
            # Sequence numbers are uncertain after any failure: start the link again next time.
            self.reset()
            raise

    async def _exchange(self, apdu: bytes, timeout: float) -> bytes:
        self.channel.discard_input()
        self.reader.clear()
        self._pending = []
        parts = hdlc.segments(hdlc.LLC_REQUEST + apdu, self.params.max_info_tx)
        window = max(1, self.params.window_tx)
        i = 0
        while i < len(parts):
            batch = parts[i : i + window]
            out = bytearray()
            for k, part in enumerate(batch):
                last_of_window = k == len(batch) - 1
                more = i + k < len(parts) - 1
                out += self._frame(hdlc.i_control(self.vs, self.vr, last_of_window), part, segmented=more)
                self.vs = (self.vs + 1) & 7
            await self.channel.write(bytes(out))
            i += len(batch)
            if i < len(parts):
                frame = await self._next_frame(time.monotonic() + timeout)
                self._check_link(frame)
                if frame.kind != hdlc.RR:
                    raise LinkError(f"expected RR while sending segments, got control {frame.control:#04x}")
        return await self._receive(timeout)

    def _check_link(self, frame: Frame) -> None:
        if frame.kind == hdlc.DM:
            raise LinkError("the meter dropped the HDLC connection (DM)")
        if frame.kind == hdlc.FRMR:
            raise LinkError("the meter rejected a frame (FRMR)")
        if frame.kind == hdlc.UA:
            raise LinkError("unexpected UA")

    async def _receive(self, timeout: float) -> bytes:
        data = bytearray()
        frames = 0
        while True:
            frame = await self._next_frame(time.monotonic() + timeout)
            self._check_link(frame)
            if frame.kind in (hdlc.RR, hdlc.RNR):
                continue
            if not frame.is_i:
                raise LinkError(f"unexpected frame control {frame.control:#04x}")
            frames += 1
            if frames > 4096:
                raise LinkError("too many segments in one reply")
            if frame.ns != self.vr:
                # A repeat of a frame we already have; ask for the one we need.
                if frame.pf:
                    await self.channel.write(self._frame(hdlc.rr_control(self.vr)))
                continue
            self.vr = (self.vr + 1) & 7
            data += frame.info
            if not frame.segmented:
                break
            if frame.pf:
                await self.channel.write(self._frame(hdlc.rr_control(self.vr)))
        if data[:3] != hdlc.LLC_RESPONSE:
            raise LinkError("reply without the LLC header")
        return bytes(data[3:])

    async def disconnect(self, timeout: float) -> None:
        if not self.channel.is_open:
            self.reset()
            return
        try:
            await self._send_and_wait(self._frame(hdlc.DISC | hdlc.PF), timeout)
        except LinkError:
            pass
        finally:
            self.reset()
            if self.channel.reopen_after_disconnect:
                await self.channel.aclose()


async def close_quietly(channel: Channel) -> None:
    with contextlib.suppress(Exception):
        await channel.aclose()
