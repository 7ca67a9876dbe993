"""HDLC framing: FCS, addresses, frames, the stream reader, parameters, the server link."""

from __future__ import annotations

import pytest
from gurux_dlms import GXByteBuffer, GXDLMSClient, GXReplyData
from gurux_dlms.enums import Authentication, InterfaceType

from drivers.dlms import hdlc
from drivers.dlms.hdlc import Frame, FrameReader, HdlcError, LinkParams, ServerLink


def test_fcs_check_value() -> None:
    # CRC-16/X-25 check value of "123456789"
    assert hdlc.fcs16(b"123456789") == 0x906E


def test_addresses() -> None:
    assert hdlc.client_address(16) == b"\x21"
    assert hdlc.client_address(1) == b"\x03"
    assert hdlc.server_address(1, 17) == bytes([0x02, 0x23])
    assert hdlc.server_address(1, 4321) == bytes([0x00, 0x02, 0x42, 0xC3])
    assert hdlc.server_address(1, None) == b"\x03"
    assert hdlc.parse_server_address(hdlc.server_address(1, 4321)) == (1, 4321)
    assert hdlc.parse_server_address(hdlc.server_address(1, 17, 4)) == (1, 17)
    with pytest.raises(HdlcError):
        hdlc.server_address(1, 200, 2)


def test_our_frames_are_gurux_frames() -> None:
    """gurux's SNRM decodes here, and gurux parses the UA we build."""
    c = GXDLMSClient(True, 16, GXDLMSClient.getServerAddress(1, 17), Authentication.NONE, None, InterfaceType.HDLC)
    snrm = bytes(c.snrmRequest())
    (frame,) = FrameReader().feed(snrm)
    assert frame.kind == hdlc.SNRM and frame.pf
    assert frame.dst == hdlc.server_address(1, 17) and frame.src == hdlc.client_address(16)
    ua = hdlc.encode_frame(frame.src, frame.dst, hdlc.UA | hdlc.PF, hdlc.encode_params(LinkParams(100, 90, 1, 1)))
    reply = GXReplyData()
    assert c.getData(GXByteBuffer(ua), reply, None)
    c.parseUAResponse(reply.data)
    assert (c.hdlcSettings.maxInfoRX, c.hdlcSettings.maxInfoTX) == (100, 90)


def test_reader_resynchronises_on_noise_split_and_broken_frames() -> None:
    f1 = hdlc.encode_frame(b"\x21", b"\x02\x23", hdlc.i_control(0, 1, True), b"\xe6\xe7\x00hello")
    f2 = hdlc.encode_frame(b"\x21", b"\x02\x23", hdlc.rr_control(3))
    broken = bytearray(f1)
    broken[10] ^= 0xFF
    stream = b"\x00\xff" + bytes(broken) + f1 + f2[:5]
    reader = FrameReader()
    frames = reader.feed(stream)
    assert [fr.info for fr in frames] == [b"\xe6\xe7\x00hello"]
    assert reader.bad_frames == 1 and reader.noise_bytes >= 2 and reader.pending > 0
    frames = reader.feed(f2[5:])
    assert len(frames) == 1 and frames[0].kind == hdlc.RR and frames[0].nr == 3
    # frames sharing one flag
    shared = f1[:-1] + f2
    assert len(FrameReader().feed(shared)) == 2


def test_decode_errors() -> None:
    good = hdlc.encode_frame(b"\x21", b"\x03", hdlc.UA | hdlc.PF)[1:-1]
    assert hdlc.decode_frame(good).kind == hdlc.UA
    for bad in (good[:5], b"\x80" + good[1:], good[:-1] + b"\x00", b"\xa0\x07\x20\x20\x20\x20\x73" + b"\x00\x00"):
        with pytest.raises(HdlcError):
            hdlc.decode_frame(bad)


def test_parameters() -> None:
    p = LinkParams(256, 1024, 7, 3)
    assert hdlc.decode_params(hdlc.encode_params(p)) == p
    assert hdlc.decode_params(b"") == LinkParams()
    with pytest.raises(HdlcError):
        hdlc.decode_params(b"\x81\x80\x03\x05\x01\x05")  # max info 5: out of range
    with pytest.raises(HdlcError):
        hdlc.decode_params(b"\x81\x80\x05\x07\x01\x09")


def test_server_link_segments_with_windows() -> None:
    own, peer = hdlc.server_address(1, 17), hdlc.client_address(16)
    link = ServerLink(own=own, peer=peer, max_info=32, window=2)
    snrm = Frame(own, peer, hdlc.SNRM | hdlc.PF, hdlc.encode_params(LinkParams(128, 128, 7, 7)))
    out, req = link.handle(snrm)
    ua = hdlc.decode_frame(out[0][1:-1])
    assert ua.kind == hdlc.UA and hdlc.decode_params(ua.info) == LinkParams(32, 32, 2, 2)
    # a segmented request of two frames
    payload = hdlc.LLC_REQUEST + bytes(range(40))
    out, req = link.handle(Frame(own, peer, hdlc.i_control(0, 0, True), payload[:32], segmented=True))
    assert req is None and hdlc.decode_frame(out[0][1:-1]).kind == hdlc.RR
    out, req = link.handle(Frame(own, peer, hdlc.i_control(1, 0, True), payload[32:]))
    assert req == bytes(range(40)) and out == []
    # a 100-byte answer: 4 segments, sent two per window
    frames = [hdlc.decode_frame(f[1:-1]) for f in link.respond(bytes(100))]
    assert [f.segmented for f in frames] == [True, True] and [f.pf for f in frames] == [False, True]
    out, _ = link.handle(Frame(own, peer, hdlc.rr_control(2)))
    frames += [hdlc.decode_frame(f[1:-1]) for f in out]
    assert [f.segmented for f in frames] == [True, True, True, False]
    assert b"".join(f.info for f in frames) == hdlc.LLC_RESPONSE + bytes(100)
    # DISC
    out, _ = link.handle(Frame(own, peer, hdlc.DISC | hdlc.PF))
    assert hdlc.decode_frame(out[0][1:-1]).kind == hdlc.UA and not link.connected
    out, _ = link.handle(Frame(own, peer, hdlc.i_control(2, 0, True), b"\xe6\xe6\x00x"))
    assert hdlc.decode_frame(out[0][1:-1]).kind == hdlc.DM
