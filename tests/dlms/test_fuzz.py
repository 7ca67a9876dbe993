"""Property tests: the HDLC and COSEM decoding paths raise only their documented errors."""

from __future__ import annotations

import contextlib
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from gurux_dlms import GXReplyData
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from drivers.dlms import codec, hdlc
from drivers.dlms.client import AssociationLost, CosemClient, CosemError, ProtocolError
from drivers.dlms.codec import CodecError, Data, DataType
from drivers.dlms.driver import _raw
from drivers.dlms.hdlc import FrameReader, HdlcError
from drivers.dlms.transport import TcpChannel, WrapperLink
from drivers.dlms.twin import Association, Meter, server
from gateway.driver import PointError
from gateway.twin import TwinClock
from tests.dlms.util import KEYS, meter_objects

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=300))
def test_decode_frame(raw: bytes) -> None:
    try:
        frame = hdlc.decode_frame(raw)
    except HdlcError:
        return
    assert len(frame.dst) in (1, 2, 4) and len(frame.src) in (1, 2, 4)


@FUZZ
@given(st.lists(st.binary(max_size=80), max_size=8))
def test_frame_reader_never_raises(chunks: list[bytes]) -> None:
    reader = FrameReader()
    for chunk in chunks:
        for frame in reader.feed(chunk):
            assert isinstance(frame.info, bytes)


frames = st.builds(
    lambda info, ctl, seg: hdlc.encode_frame(b"\x21", b"\x02\x23", ctl, info, seg),
    st.binary(max_size=60),
    st.integers(0, 255),
    st.booleans(),
)


@FUZZ
@given(
    st.lists(st.tuples(st.binary(max_size=20).map(lambda b: b.replace(b"\x7e", b"")), frames), max_size=6),
    st.integers(1, 40),
)
def test_frames_in_noise_are_all_found(items: list[tuple[bytes, bytes]], split: int) -> None:
    """Noise between frames (without flags) never hides a good frame, however the bytes arrive."""
    stream = b"".join(noise + frame for noise, frame in items)
    reader = FrameReader()
    found = []
    for k in range(0, len(stream), split):
        found += reader.feed(stream[k : k + split])
    assert len(found) == len(items)


@FUZZ
@given(st.binary(max_size=40))
def test_decode_params(raw: bytes) -> None:
    with contextlib.suppress(HdlcError):
        hdlc.decode_params(raw)


def data_trees() -> st.SearchStrategy[Data]:
    leaves = st.one_of(
        st.just(codec.null()),
        st.booleans().map(lambda b: Data(DataType.BOOLEAN, b)),
        st.integers(-128, 127).map(codec.i8),
        st.integers(0, 2**32 - 1).map(codec.u32),
        st.integers(-(2**63), 2**63 - 1).map(lambda v: Data(DataType.INT64, v)),
        st.floats(allow_nan=False, width=64).map(lambda v: Data(DataType.FLOAT64, v)),
        st.binary(max_size=200).map(codec.octets),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20).map(
            lambda t: Data(DataType.VISIBLE_STRING, t)
        ),
        st.binary(min_size=12, max_size=12).map(lambda b: Data(DataType.DATETIME, b)),
        st.text(alphabet="01", max_size=30).map(lambda t: Data(DataType.BIT_STRING, t)),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=5).map(codec.array),
            st.lists(inner, max_size=5).map(lambda x: Data(DataType.STRUCTURE, x)),
        ),
        max_leaves=30,
    )


@FUZZ
@given(data_trees())
def test_axdr_round_trip(value: Data) -> None:
    raw = codec.encode_data(value)
    back, end = codec.decode_data(raw)
    assert back == value and end == len(raw)


@FUZZ
@given(st.binary(max_size=200))
def test_cosem_decoders_raise_only_codec_errors(raw: bytes) -> None:
    for fn in (
        codec.decode_data,
        server.parse_aarq,
        codec.parse_aare,
        server.parse_request,
        server.parse_initiate_request,
        codec.split_glo,
    ):
        with contextlib.suppress(CodecError):
            fn(raw)
    with contextlib.suppress(CodecError):
        codec.decode_datetime(raw[:12]).to_epoch_ms(ZoneInfo("UTC"))
    with contextlib.suppress(CodecError):
        codec.unprotect(b"SEN00001", KEYS.encryption_key, KEYS.authentication_key, raw)


def _association(state: str) -> Association:
    meter = Meter(meter_objects(), TwinClock(1773144000.0), keys=KEYS, password="12345678")
    assoc = Association(meter, 1)
    assoc.state = state  # type: ignore[assignment]
    return assoc


mutated_requests = (
    st.sampled_from(
        [
            bytes.fromhex("c001c100030100010800ff0200"),
            bytes.fromhex(
                "c001c100070100630100ff0201010204020412000809060000010000ff0f02120000090c07ea030a02000000ff800000"
            ),
            bytes.fromhex("c003c10200030100010800ff020000030100200700ff0200"),
            bytes.fromhex("c002c100000001"),
            bytes.fromhex("c101c100080000010000ff0200090c07ea030a02000000ff800000"),
            bytes.fromhex("c301c1000f0000280000ff0101091110000000010203040506070809101112"),
            bytes.fromhex("601da109060760857405080101be10040e01000000065f1f0400401e5dffff"),
            bytes.fromhex("6203800100"),
        ]
    )
    .flatmap(
        lambda base: st.tuples(
            st.just(base), st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=4), st.integers(0, 90)
        )
    )
    .map(lambda t: _mutate(*t))
)


def _mutate(base: bytes, changes: list[tuple[int, int]], cut: int) -> bytes:
    b = bytearray(base)
    for pos, val in changes:
        if b:
            b[pos % len(b)] = val
    return bytes(b[: max(1, len(b) - cut % (len(b) + 1))])


@FUZZ
@given(st.one_of(st.binary(max_size=120), mutated_requests), st.sampled_from(["none", "associated", "pending"]))
def test_twin_server_answers_or_stays_silent(apdu: bytes, state: str) -> None:
    """The twin's COSEM server never raises on a request, however broken."""
    answer = _association(state).handle(apdu)
    assert answer is None or isinstance(answer, bytes)


def _client() -> CosemClient:
    return CosemClient(WrapperLink(TcpChannel("127.0.0.1", 9), 16, 1), client_sap=16, logical=1)


replies = st.one_of(
    st.binary(max_size=150),
    st.builds(lambda body: bytes([0xC4, 0x01, 0xC1, 0x00]) + body, st.binary(max_size=100)),
    st.builds(lambda body: bytes([0xC4, 0x02, 0xC1]) + body, st.binary(max_size=100)),
    st.builds(lambda body: bytes([0xC4, 0x03, 0xC1]) + body, st.binary(max_size=100)),
    st.builds(lambda body: bytes([0xCC]) + body, st.binary(max_size=100)),
    st.builds(lambda v: bytes([0xC4, 0x01, 0xC1, 0x00]) + codec.encode_data(v), data_trees()),
)


@FUZZ
@given(replies)
@example(bytes.fromhex("c401000019000000000000000000" + "05a000"))  # a date-time with a deviation of +24 h
def test_client_decoding_raises_only_documented_errors(raw: bytes) -> None:
    client = _client()
    reply: Any = GXReplyData()
    try:
        client._feed(raw, reply)
    except (ProtocolError, CosemError, AssociationLost):
        return
    converted = _raw(reply.value)
    assert converted is None or isinstance(converted, int | float | bool | str | PointError)


@FUZZ
@given(st.binary(min_size=12, max_size=12))
def test_datetime_decoding_is_total(raw: bytes) -> None:
    try:
        dt = codec.decode_datetime(raw)
        dt.to_epoch_ms(ZoneInfo("Europe/Paris"))
    except CodecError:
        pass


@pytest.mark.parametrize("apdu", [b"", b"\x60", b"\xc0", b"\xcb\x05\x30\x00\x00\x00\x01"])
def test_twin_server_edge_cases(apdu: bytes) -> None:
    answer = _association("associated").handle(apdu)
    assert answer is None or isinstance(answer, bytes)
