"""HDLC for DLMS (IEC 62056-46): frames, addresses, FCS, SNRM/UA parameters, segmentation.

Pure code: the client's async link lives in transport.py, the twin's server link is
:class:`ServerLink` here. Decoders raise :class:`HdlcError` (a ValueError) and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.crc import crc16_reflected

FLAG = 0x7E
LLC_REQUEST = bytes([0xE6, 0xE6, 0x00])
LLC_RESPONSE = bytes([0xE6, 0xE7, 0x00])

# Control field (P/F bit 0x10 cleared)
SNRM = 0x83
DISC = 0x43
UA = 0x63
DM = 0x0F
FRMR = 0x87
UI = 0x03
RR = 0x01
RNR = 0x05
PF = 0x10

DEFAULT_MAX_INFO = 128
DEFAULT_WINDOW = 1


class HdlcError(ValueError):
    """A malformed HDLC frame or parameter field."""


# CRC-16/X.25, as HDLC uses it for HCS and FCS (sent least significant byte first).
fcs16 = crc16_reflected(0x8408, init=0xFFFF, xorout=0xFFFF)


# --- addresses -----------------------------------------------------------------------------------


def client_address(sap: int) -> bytes:
    if not 0 <= sap <= 0x7F:
        raise HdlcError("a client address is 0..127")
    return bytes([(sap << 1) | 1])


def server_address(logical: int, physical: int | None, size: int | None = None) -> bytes:
    """Upper (logical) and lower (physical) HDLC address in the 1-, 2- or 4-byte form."""
    if size is None:
        if physical is None:
            size = 1
        elif logical < 0x80 and physical < 0x80:
            size = 2
        else:
            size = 4
    if size == 1:
        if logical > 0x7F or (physical is not None and physical != 0):
            raise HdlcError("the 1-byte server address holds a logical address 0..127 only")
        return bytes([(logical << 1) | 1])
    if physical is None:
        physical = 0
    if size == 2:
        if logical > 0x7F or physical > 0x7F:
            raise HdlcError("the 2-byte server address holds addresses 0..127; use 4 bytes")
        return bytes([logical << 1, (physical << 1) | 1])
    if size == 4:
        if logical > 0x3FFF or physical > 0x3FFF:
            raise HdlcError("HDLC addresses are 0..16383")
        return bytes([(logical >> 7) << 1, (logical & 0x7F) << 1, (physical >> 7) << 1, ((physical & 0x7F) << 1) | 1])
    raise HdlcError("a server address is 1, 2 or 4 bytes")


def parse_server_address(raw: bytes) -> tuple[int, int | None]:
    """Encoded server address -> (logical, physical or None for the 1-byte form)."""
    if len(raw) == 1:
        return raw[0] >> 1, None
    if len(raw) == 2:
        return raw[0] >> 1, raw[1] >> 1
    if len(raw) == 4:
        return ((raw[0] >> 1) << 7) | (raw[1] >> 1), ((raw[2] >> 1) << 7) | (raw[3] >> 1)
    raise HdlcError(f"a {len(raw)}-byte server address")


# --- frames --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    dst: bytes
    src: bytes
    control: int
    info: bytes = b""
    segmented: bool = False

    @property
    def is_i(self) -> bool:
        return self.control & 0x01 == 0

    @property
    def kind(self) -> int:
        """I frames -> 0; S and U frames -> their control without N(R) and the P/F bit."""
        if self.control & 0x01 == 0:
            return 0
        if self.control & 0x03 == 0x01:
            return self.control & 0x0F
        return self.control & ~PF & 0xFF

    @property
    def pf(self) -> bool:
        return bool(self.control & PF)

    @property
    def ns(self) -> int:
        return (self.control >> 1) & 0x07

    @property
    def nr(self) -> int:
        return (self.control >> 5) & 0x07


def i_control(ns: int, nr: int, pf: bool) -> int:
    return ((nr & 7) << 5) | (PF if pf else 0) | ((ns & 7) << 1)


def rr_control(nr: int, pf: bool = True) -> int:
    return ((nr & 7) << 5) | (PF if pf else 0) | RR


def encode_frame(dst: bytes, src: bytes, control: int, info: bytes = b"", segmented: bool = False) -> bytes:
    length = 2 + len(dst) + len(src) + 1 + 2 + (len(info) + 2 if info else 0)
    if length > 0x7FF:
        raise HdlcError("frame longer than 2047 bytes")
    head = bytearray([0xA0 | (0x08 if segmented else 0) | (length >> 8), length & 0xFF])
    head += dst
    head += src
    head.append(control)
    if info:
        hcs = fcs16(head)
        head += bytes([hcs & 0xFF, hcs >> 8])
        head += info
    fcs = fcs16(head)
    head += bytes([fcs & 0xFF, fcs >> 8])
    return bytes([FLAG]) + bytes(head) + bytes([FLAG])


def _address(raw: bytes, pos: int, end: int) -> tuple[bytes, int]:
    start = pos
    while pos < end:
        if raw[pos] & 0x01:
            out = bytes(raw[start : pos + 1])
            if len(out) not in (1, 2, 4):
                raise HdlcError(f"{len(out)}-byte HDLC address")
            return out, pos + 1
        pos += 1
        if pos - start >= 4:
            break
    raise HdlcError("HDLC address not terminated")


def decode_frame(raw: bytes) -> Frame:
    """The bytes between the two flags (format field .. FCS) -> Frame."""
    if len(raw) < 7:
        raise HdlcError("frame too short")
    if raw[0] & 0xF0 != 0xA0:
        raise HdlcError("not a type-3 frame format")
    length = ((raw[0] & 0x07) << 8) | raw[1]
    if length != len(raw):
        raise HdlcError("frame length field does not match")
    fcs = raw[-2] | (raw[-1] << 8)
    if fcs16(raw[:-2]) != fcs:
        raise HdlcError("FCS error")
    end = len(raw) - 2
    dst, pos = _address(raw, 2, end)
    src, pos = _address(raw, pos, end)
    if pos >= end:
        raise HdlcError("no control field")
    control = raw[pos]
    pos += 1
    info = b""
    if pos < end:
        if end - pos < 2:
            raise HdlcError("truncated HCS")
        hcs = raw[pos] | (raw[pos + 1] << 8)
        if fcs16(raw[:pos]) != hcs:
            raise HdlcError("HCS error")
        info = bytes(raw[pos + 2 : end])
    return Frame(dst=dst, src=src, control=control, info=info, segmented=bool(raw[0] & 0x08))


class FrameReader:
    """Finds frames in a byte stream; skips noise and broken frames (counted) and resynchronises."""

    MAX_BUFFER = 8192

    def __init__(self) -> None:
        self._buf = bytearray()
        self.bad_frames = 0
        self.noise_bytes = 0
        self.last_error: str | None = None

    def clear(self) -> None:
        self._buf.clear()

    @property
    def pending(self) -> int:
        """Bytes held while waiting for the rest of a frame."""
        return len(self._buf)

    @staticmethod
    def _complete_frame_after(buf: bytearray) -> int | None:
        """The position of a later flag that opens a whole, valid frame, if any."""
        k = buf.find(FLAG, 1)
        while k >= 0 and k + 3 <= len(buf):
            if buf[k + 1] & 0xF0 == 0xA0:
                length = ((buf[k + 1] & 0x07) << 8) | buf[k + 2]
                end = k + length + 1
                if length >= 7 and end < len(buf) and buf[end] == FLAG:
                    try:
                        decode_frame(bytes(buf[k + 1 : end]))
                        return k
                    except HdlcError:
                        pass
            k = buf.find(FLAG, k + 1)
        return None

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        buf = self._buf
        while True:
            start = buf.find(FLAG)
            if start < 0:
                self.noise_bytes += len(buf)
                buf.clear()
                break
            if start:
                self.noise_bytes += start
                del buf[:start]
            if len(buf) < 3:
                break
            if buf[1] == FLAG:  # two flags in a row: the first closes nothing
                del buf[0]
                continue
            if buf[1] & 0xF0 != 0xA0:
                self.noise_bytes += 1
                del buf[0]
                continue
            length = ((buf[1] & 0x07) << 8) | buf[2]
            if length < 7:
                self.noise_bytes += 1
                del buf[0]
                continue
            if len(buf) < length + 2:
                # Noise that looks like a frame start must not swallow a real frame behind it.
                later = self._complete_frame_after(buf)
                if later is not None or len(buf) > self.MAX_BUFFER:
                    skip = later if later is not None else 1
                    self.noise_bytes += skip
                    del buf[:skip]
                    continue
                break
            if buf[length + 1] != FLAG:
                self.noise_bytes += 1
                del buf[0]
                continue
            try:
                frames.append(decode_frame(bytes(buf[1 : length + 1])))
            except HdlcError as exc:
                self.bad_frames += 1
                self.last_error = str(exc)
                del buf[0]
                continue
            # The closing flag may open the next frame.
            del buf[: length + 1]
        return frames


# --- link parameters -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkParams:
    """HDLC parameters from the sender's point of view."""

    max_info_tx: int = DEFAULT_MAX_INFO
    max_info_rx: int = DEFAULT_MAX_INFO
    window_tx: int = DEFAULT_WINDOW
    window_rx: int = DEFAULT_WINDOW


def _param(pid: int, value: int, force_wide: bool = False) -> bytes:
    if force_wide:
        return bytes([pid, 4]) + value.to_bytes(4, "big")
    if value < 0x100:
        return bytes([pid, 1, value])
    return bytes([pid, 2]) + value.to_bytes(2, "big")


def encode_params(p: LinkParams) -> bytes:
    body = (
        _param(0x05, p.max_info_tx)
        + _param(0x06, p.max_info_rx)
        + _param(0x07, p.window_tx, True)
        + _param(0x08, p.window_rx, True)
    )
    return bytes([0x81, 0x80, len(body)]) + body


def decode_params(info: bytes) -> LinkParams:
    """An SNRM/UA information field; absent parameters keep their defaults."""
    if not info:
        return LinkParams()
    if len(info) < 3 or info[0] != 0x81 or info[1] != 0x80:
        raise HdlcError("bad HDLC parameter field")
    if info[2] != len(info) - 3:
        raise HdlcError("HDLC parameter field length mismatch")
    values = {0x05: DEFAULT_MAX_INFO, 0x06: DEFAULT_MAX_INFO, 0x07: DEFAULT_WINDOW, 0x08: DEFAULT_WINDOW}
    pos = 3
    while pos < len(info):
        if pos + 2 > len(info):
            raise HdlcError("truncated HDLC parameter")
        pid, n = info[pos], info[pos + 1]
        if n not in (1, 2, 4) or pos + 2 + n > len(info):
            raise HdlcError("bad HDLC parameter length")
        value = int.from_bytes(info[pos + 2 : pos + 2 + n], "big")
        if pid in values:
            values[pid] = value
        pos += 2 + n
    if not 1 <= values[0x07] <= 7 or not 1 <= values[0x08] <= 7:
        raise HdlcError("HDLC window size out of range")
    if not 16 <= values[0x05] <= 2030 or not 16 <= values[0x06] <= 2030:
        raise HdlcError("HDLC max information field length out of range")
    return LinkParams(values[0x05], values[0x06], values[0x07], values[0x08])


def segments(payload: bytes, max_info: int) -> list[bytes]:
    if max_info < 1:
        raise HdlcError("max_info must be positive")
    if not payload:
        return [b""]
    return [payload[i : i + max_info] for i in range(0, len(payload), max_info)]


# --- the server side of a link (the twin) --------------------------------------------------------


@dataclass(slots=True)
class ServerLink:
    """One client's HDLC connection to one server address, as a meter keeps it.

    `handle(frame)` returns (frames to send, a complete request APDU or None). The owner calls
    `respond(apdu)` with the answer, which is segmented and sent a window at a time.
    """

    own: bytes  # this server's encoded address
    peer: bytes  # the client's encoded address
    max_info: int = 128  # the largest the server accepts / sends
    window: int = 1
    connected: bool = False
    params: LinkParams = field(default_factory=LinkParams)
    vs: int = 0  # next N(S) to send
    vr: int = 0  # next N(S) expected
    _rx: bytearray = field(default_factory=bytearray)
    _tx: list[bytes] = field(default_factory=list)
    _last_sent: list[bytes] = field(default_factory=list)

    def _frame(self, control: int, info: bytes = b"", segmented: bool = False) -> bytes:
        return encode_frame(self.peer, self.own, control, info, segmented)

    def handle(self, frame: Frame) -> tuple[list[bytes], bytes | None]:
        kind = frame.kind
        if kind == SNRM:
            proposed = decode_params(frame.info)
            self.params = LinkParams(
                max_info_tx=min(proposed.max_info_rx, self.max_info),
                max_info_rx=min(proposed.max_info_tx, self.max_info),
                window_tx=min(proposed.window_rx, self.window),
                window_rx=min(proposed.window_tx, self.window),
            )
            self.connected = True
            self.vs = self.vr = 0
            self._rx.clear()
            self._tx.clear()
            self._last_sent = []
            return [self._frame(UA | PF, encode_params(self.params))], None
        if kind == DISC:
            was = self.connected
            self.connected = False
            self._rx.clear()
            self._tx.clear()
            return [self._frame((UA if was else DM) | PF)], None
        if not self.connected:
            return ([self._frame(DM | PF)] if frame.pf else []), None
        if kind == RR:
            if self._tx:
                return self._send_window(), None
            if self._last_sent and frame.nr != self.vs:
                # the client missed our last frame: send it again
                return list(self._last_sent), None
            return [self._frame(rr_control(self.vr))], None
        if kind == 0:  # I frame
            if frame.ns != self.vr:
                # A repeat of the last request (our answer was lost): answer it again.
                if self._last_sent and ((frame.ns + 1) & 7) == self.vr:
                    return list(self._last_sent), None
                return [self._frame(rr_control(self.vr))], None
            self.vr = (self.vr + 1) & 7
            self._rx += frame.info
            if frame.segmented:
                return ([self._frame(rr_control(self.vr))] if frame.pf else []), None
            data = bytes(self._rx)
            self._rx.clear()
            if data[:3] != LLC_REQUEST:
                return [self._frame(FRMR | PF)], None
            return [], data[3:]
        if kind == UI:
            return [], None
        return [self._frame(FRMR | PF)], None

    def respond(self, apdu: bytes) -> list[bytes]:
        """Queue the answer to the last request and send its first window."""
        self._tx = segments(LLC_RESPONSE + apdu, self.params.max_info_tx)
        return self._send_window()

    def _send_window(self) -> list[bytes]:
        out: list[bytes] = []
        n = min(self.params.window_tx, len(self._tx))
        for k in range(n):
            chunk = self._tx.pop(0)
            more = bool(self._tx)
            final = k == n - 1
            out.append(self._frame(i_control(self.vs, self.vr, final), chunk, segmented=more))
            self.vs = (self.vs + 1) & 7
        self._last_sent = out
        return out


def frames_bytes(frames: Iterable[bytes]) -> bytes:
    return b"".join(frames)
