"""One byte stream of the twin (a TCP connection or a serial line) and the meters reachable on it.

HDLC (several physical addresses on one line, one link and association per client and server
address), the TCP wrapper (a meter per logical address), and the IEC 62056-21 mode E opening of
an optical port. Every reply goes through the meter's fault (``twin.faults.of(address)``, see
:func:`gateway.twin.faulty_reply`): silent (the request is not even looked at, as with a dead
meter), slow, garbage, disconnect mid-frame (half the reply, then the connection closes; a serial
line cannot close, so its sessions are forgotten instead).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from drivers.dlms import hdlc
from drivers.dlms.twin.association import Association
from drivers.dlms.twin.meter import Meter
from gateway.twin import Fault, FaultState, Reply, faulty_reply

if TYPE_CHECKING:
    from drivers.dlms.twin.device import DlmsTwin

WRAPPER_VERSION = 1


class Line:
    """The twin's side of one stream: framing in, the meters' answers out."""

    def __init__(self, twin: DlmsTwin, writer: Any, *, closable: bool) -> None:
        self.twin = twin
        self.writer = writer
        self.closable = closable  # a TCP connection closes; a serial line stays
        self.closed = False
        self.sessions: dict[tuple[bytes, bytes], tuple[hdlc.ServerLink, Association]] = {}
        self.wrapper_sessions: dict[tuple[int, int], Association] = {}  # (client wPort, meter wPort)
        self.reader = hdlc.FrameReader()
        self._wbuf = bytearray()
        self.iec_mode = twin.mode_e
        self._iec = bytearray()

    def _silent(self, meter: Meter) -> bool:
        return self.twin.faults.of(meter.physical).mode is Fault.SILENT

    def _reply(self, meter: Meter, data: bytes) -> Reply:
        fault = self.twin.faults.of(meter.physical)
        if fault.mode is Fault.GARBAGE and not self.twin.wrapper:
            return Reply(self._garbled_frames(fault, data))
        return faulty_reply(fault, data, self.twin.rng)

    def _garbled_frames(self, fault: FaultState, data: bytes) -> bytes:
        """Line noise on HDLC: each frame keeps its flags and length, its content (HCS, FCS) does not."""
        out = bytearray()
        pos = 0
        while pos + 3 <= len(data) and data[pos] == hdlc.FLAG:
            end = pos + (((data[pos + 1] & 0x07) << 8) | data[pos + 2]) + 1  # the closing flag
            if end >= len(data):
                break
            body = faulty_reply(fault, data[pos + 3 : end], self.twin.rng).data or b""
            out += data[pos : pos + 3] + body + data[end : end + 1]
            pos = end + 1
        rest = data[pos:]
        return bytes(out) + (faulty_reply(fault, rest, self.twin.rng).data or b"" if rest else b"")

    async def _send(self, meter: Meter, data: bytes) -> None:
        reply = self._reply(meter, data)
        if reply.data is None or self.closed:
            return
        if reply.delay > 0:
            meter.pending += 1
            try:
                await asyncio.sleep(reply.delay)
            finally:
                meter.pending -= 1
        self.writer.write(reply.data)
        drain = getattr(self.writer, "drain", None)
        if drain is not None:
            with contextlib.suppress(ConnectionError):
                await drain()
        if reply.close:
            self._hang_up()

    def _hang_up(self) -> None:
        self.sessions.clear()
        self.wrapper_sessions.clear()
        self.reader.clear()
        self._wbuf.clear()
        self.iec_mode = self.twin.mode_e
        if self.closable:
            self.closed = True
            with contextlib.suppress(Exception):
                self.writer.close()

    async def feed(self, data: bytes) -> None:
        if self.closed:
            return
        if self.twin.wrapper:
            await self._feed_wrapper(data)
        elif self.iec_mode:
            await self._feed_iec(data)
        else:
            await self._feed_hdlc(data)

    # -- IEC 62056-21 mode E opening -------------------------------------------------------------

    async def _feed_iec(self, data: bytes) -> None:
        self._iec += data
        while b"\r\n" in self._iec:
            line, _, rest = bytes(self._iec).partition(b"\r\n")
            self._iec = bytearray(rest)
            meter = self.twin.meter
            if line.find(b"/?") >= 0 and line.endswith(b"!"):
                if not self._silent(meter):
                    await self._send(meter, b"/SEN5\\2" + self.twin.identification.encode() + b"\r\n")
            elif line[:1] == b"\x06" and len(line) >= 4 and line[1:2] == b"2" and line[3:4] == b"2":
                # ACK 2 . 2: protocol mode E (HDLC) at the proposed rate; what follows is HDLC
                self.iec_mode = False
                self.twin.mode_e_sessions += 1
                rest_bytes = bytes(self._iec)
                self._iec.clear()
                if rest_bytes:
                    await self._feed_hdlc(rest_bytes)
                return

    # -- HDLC ----------------------------------------------------------------------------------

    def _meter_of(self, frame: hdlc.Frame) -> Meter | None:
        try:
            logical, physical = hdlc.parse_server_address(frame.dst)
        except hdlc.HdlcError:
            return None
        meter = self.twin.meters.get(physical if physical is not None else -1)
        if meter is None or meter.logical != logical or self._silent(meter):
            return None
        return meter

    async def _feed_hdlc(self, data: bytes) -> None:
        for frame in self.reader.feed(data):
            meter = self._meter_of(frame)
            if meter is None:
                continue
            key = (frame.src, frame.dst)
            if key not in self.sessions:
                link = hdlc.ServerLink(
                    own=frame.dst, peer=frame.src, max_info=self.twin.max_info, window=self.twin.window
                )
                self.sessions[key] = (link, Association(meter, frame.src[0] >> 1))
            link, assoc = self.sessions[key]
            try:
                out, request = link.handle(frame)
            except hdlc.HdlcError:
                out, request = [hdlc.encode_frame(frame.src, frame.dst, hdlc.FRMR | hdlc.PF)], None
            if frame.kind in (hdlc.SNRM, hdlc.DISC):
                assoc.state = "none"
            if frame.kind == hdlc.DISC:
                meter.disconnects += 1
                if self.twin.mode_e:
                    self.iec_mode = True
            if request is not None:
                answer = assoc.handle(request)
                if answer is not None:
                    out = out + link.respond(answer)
            if out:
                await self._send(meter, b"".join(out))
            if self.closed:
                return

    # -- wrapper -------------------------------------------------------------------------------

    async def _feed_wrapper(self, data: bytes) -> None:
        self._wbuf += data
        while len(self._wbuf) >= 8 and not self.closed:
            version = int.from_bytes(self._wbuf[0:2], "big")
            src = int.from_bytes(self._wbuf[2:4], "big")
            dst = int.from_bytes(self._wbuf[4:6], "big")
            length = int.from_bytes(self._wbuf[6:8], "big")
            if version != WRAPPER_VERSION:
                self._wbuf.clear()
                return
            if len(self._wbuf) < 8 + length:
                return
            apdu = bytes(self._wbuf[8 : 8 + length])
            del self._wbuf[: 8 + length]
            meter = next((m for m in self.twin.meters.values() if m.logical == dst), None)
            if meter is None or self._silent(meter):
                continue
            # One association per client and meter: a client polling two meters on one connection
            # keeps both.
            assoc = self.wrapper_sessions.get((src, dst))
            if assoc is None or assoc.meter is not meter:
                assoc = self.wrapper_sessions[(src, dst)] = Association(meter, src)
            answer = assoc.handle(apdu)
            if answer is None:
                continue
            header = WRAPPER_VERSION.to_bytes(2, "big") + dst.to_bytes(2, "big") + src.to_bytes(2, "big")
            await self._send(meter, header + len(answer).to_bytes(2, "big") + answer)
