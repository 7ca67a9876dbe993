"""Codec: known register layouts, encode/decode round trips, total decoding, block decoding."""

from __future__ import annotations

import math
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.codec import (
    BlockDecoder,
    ValueSpec,
    compile_decoder,
    decode,
    decode_registers,
    encode,
    spec_for,
    spec_of,
)
from drivers.modbus.config import ModbusDevice, ModbusPoint
from gateway.driver import PointError, RawValue

ORDERS = ("big", "little")
NUMERIC = ("int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64")


def regs(*words: int) -> bytes:
    return struct.pack(f">{len(words)}H", *words)


# --- known layouts ------------------------------------------------------------------------------


def test_float32_in_all_four_layouts() -> None:
    # 3.14159 is 0x40490FD0: ABCD, CDAB (word swap), BADC (byte swap), DCBA.
    assert decode(spec_for("float32"), regs(0x4049, 0x0FD0)) == struct.unpack(">f", bytes.fromhex("40490fd0"))[0]
    pi = decode(spec_for("float32"), regs(0x4049, 0x0FD0))
    assert decode(spec_for("float32", word_order="little"), regs(0x0FD0, 0x4049)) == pi
    assert decode(spec_for("float32", byte_order="little"), regs(0x4940, 0xD00F)) == pi
    assert decode(spec_for("float32", byte_order="little", word_order="little"), regs(0xD00F, 0x4940)) == pi
    assert isinstance(pi, float) and abs(pi - 3.14159) < 1e-6


def test_integers() -> None:
    assert decode(spec_for("int16"), regs(0xFFFE)) == -2
    assert decode(spec_for("uint16"), regs(0xFFFE)) == 65534
    assert decode(spec_for("int16"), regs(0x8000)) == -32768
    assert decode(spec_for("uint32"), regs(0x0001, 0x0002)) == 0x00010002
    assert decode(spec_for("uint32", word_order="little"), regs(0x0002, 0x0001)) == 0x00010002
    assert decode(spec_for("int32"), regs(0xFFFF, 0xFFFF)) == -1
    assert decode(spec_for("int64"), regs(0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE)) == -2
    assert decode(spec_for("uint64", word_order="little"), regs(4, 3, 2, 1)) == 0x0001000200030004
    assert decode(spec_for("float64"), struct.pack(">d", -1.5)) == -1.5
    # BM-SM master: uint32 with the low word first
    assert decode(spec_for("uint32", word_order="little"), regs(0x5678, 0x1234)) == 0x12345678


def test_offsets_and_bools() -> None:
    data = regs(0, 7, 0, 9)
    assert decode(spec_for("uint16"), data, 1) == 7
    assert decode(spec_for("bool"), data, 0) is False
    assert decode(spec_for("bool"), data, 3) is True
    assert decode(spec_for("uint32"), data, 2) == 9


def test_string_strips_nul_and_spaces() -> None:
    raw = b"Panel 1\x00\x00\x00"
    assert decode(spec_for("string", length=5), raw) == "Panel 1"
    assert decode(spec_for("string", length=2), b"  AB") == "AB"
    swapped = bytes(b for pair in zip(raw[1::2], raw[0::2], strict=True) for b in pair)
    assert decode(spec_for("string", length=5, byte_order="little"), swapped) == "Panel 1"
    assert decode(spec_for("string", length=1), b"\xff\x41") == "\ufffdA"


def test_bit_and_bit_fields() -> None:
    word = 0b1010_0000_0010_0110
    data = regs(word)
    assert decode(spec_for("uint16", bit=1), data) is True
    assert decode(spec_for("uint16", bit=0), data) is False
    assert decode(spec_for("uint16", bit=15), data) is True
    assert decode(spec_for("uint16", bits=(1, 2)), data) == 0b11
    assert decode(spec_for("uint16", bits=(13, 15)), data) == 0b101
    # little byte order: the register value is read first, then the bit taken
    assert decode(spec_for("uint16", bit=1, byte_order="little"), bytes([word & 0xFF, word >> 8])) is True
    # a 32-bit status word (iBSM-style): bits 20-25 breaker trip
    status = 0b111111 << 20
    assert decode(spec_for("uint32", bits=(20, 25)), regs(status >> 16, status & 0xFFFF)) == 63
    assert decode(spec_for("uint32", bits=(20, 25), word_order="little"), regs(status & 0xFFFF, status >> 16)) == 63


def test_coil_bits() -> None:
    spec = spec_for("bool", is_bit=True)
    data = bytes([0b0000_0101, 0b1000_0000])
    assert [decode(spec, data, i) for i in range(3)] == [True, False, True]
    assert decode(spec, data, 15) is True
    assert isinstance(decode(spec, data, 16), PointError)


def test_nan_and_inf_come_back_as_floats() -> None:
    nan = decode(spec_for("float32"), regs(0x7FC0, 0x0000))
    assert isinstance(nan, float) and math.isnan(nan)
    assert decode(spec_for("float32"), regs(0x7F80, 0)) == math.inf
    assert decode(spec_for("float64"), struct.pack(">d", -math.inf)) == -math.inf


def test_short_data_is_a_point_error() -> None:
    assert isinstance(decode(spec_for("float32"), regs(1)), PointError)
    assert isinstance(decode(spec_for("uint16"), b""), PointError)
    assert isinstance(decode(spec_for("uint16"), regs(1), -1), PointError)
    assert isinstance(decode_registers(spec_for("uint16"), [70000]), PointError)
    assert decode_registers(spec_for("uint32"), [1, 2]) == 65538


def test_spec_of_takes_device_defaults() -> None:
    device = ModbusDevice.model_validate(
        {"id": "d", "driver": "modbus", "tcp": {"host": "127.0.0.1"}, "word_order": "little", "function": "input"}
    )
    p = ModbusPoint.model_validate({"id": "a", "quantity": "voltage", "address": 1, "type": "float32"})
    assert spec_of(p, device) == ValueSpec("float32", 2, "big", "little")
    q = ModbusPoint.model_validate(
        {"id": "b", "quantity": "alarm", "address": 1, "type": "bool", "function": "coil", "byte_order": "little"}
    )
    assert spec_of(q, device).is_bit and spec_of(q, device).span == 1


# --- round trips ------------------------------------------------------------------------------

orders = st.sampled_from(ORDERS)


def _value_for(type_: str) -> st.SearchStrategy[Any]:
    if type_ == "float32":
        return st.floats(width=32, allow_nan=False)
    if type_ == "float64":
        return st.floats(allow_nan=False)
    bits = int(type_.lstrip("uint")) if type_.startswith("u") else int(type_[3:])
    if type_.startswith("u"):
        return st.integers(0, 2**bits - 1)
    return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


@st.composite
def numeric_cases(draw: st.DrawFn) -> tuple[ValueSpec, Any]:
    type_ = draw(st.sampled_from(NUMERIC))
    spec = spec_for(type_, byte_order=draw(orders), word_order=draw(orders))
    return spec, draw(_value_for(type_))


@settings(max_examples=300, deadline=None)
@given(numeric_cases(), st.integers(0, 3))
def test_numeric_round_trip(case: tuple[ValueSpec, Any], pad: int) -> None:
    spec, value = case
    wire = encode(spec, value)
    assert len(wire) == 2 * spec.words
    back = decode(spec, bytes(2 * pad) + wire, pad)
    assert back == value
    assert type(back) is type(value)


@settings(max_examples=100, deadline=None)
@given(st.floats(width=32) | st.floats(), orders, orders)
def test_non_finite_floats_round_trip(value: float, bo: str, wo: str) -> None:
    spec = spec_for("float64", byte_order=bo, word_order=wo)
    back = decode(spec, encode(spec, value))
    assert isinstance(back, float)
    assert back == value or (math.isnan(back) and math.isnan(value))


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20), orders)
def test_string_round_trip(text: str, bo: str) -> None:
    spec = spec_for("string", length=10, byte_order=bo)
    assert decode(spec, encode(spec, text)) == text


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["uint16", "uint32", "int64"]),
    orders,
    orders,
    st.data(),
)
def test_bit_fields_round_trip_and_keep_the_other_bits(type_: str, bo: str, wo: str, data: st.DataObject) -> None:
    words = {"uint16": 1, "uint32": 2, "int64": 4}[type_]
    lo = data.draw(st.integers(0, 16 * words - 1))
    hi = data.draw(st.integers(lo, 16 * words - 1))
    field_value = data.draw(st.integers(0, 2 ** (hi - lo + 1) - 1))
    before = data.draw(st.binary(min_size=2 * words, max_size=2 * words))
    spec = spec_for(type_, bits=(lo, hi), byte_order=bo, word_order=wo)
    after = encode(spec, field_value, before)
    assert decode(spec, after) == field_value
    whole = spec_for(f"uint{16 * words}", byte_order=bo, word_order=wo)
    mask = ((1 << (hi - lo + 1)) - 1) << lo
    old, new = decode(whole, before), decode(whole, after)
    assert isinstance(old, int) and isinstance(new, int)
    assert old & ~mask == new & ~mask


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 15), st.booleans(), st.binary(min_size=2, max_size=2), orders)
def test_single_bit_round_trip(bit: int, on: bool, before: bytes, bo: str) -> None:
    spec = spec_for("uint16", bit=bit, byte_order=bo)
    after = encode(spec, on, before)
    assert decode(spec, after) is on
    for other in range(16):
        if other != bit:
            s = spec_for("uint16", bit=other, byte_order=bo)
            assert decode(s, after) == decode(s, before)


def test_encode_clamps_and_rounds() -> None:
    assert decode(spec_for("int16"), encode(spec_for("int16"), 1e9)) == 32767
    assert decode(spec_for("uint16"), encode(spec_for("uint16"), -5)) == 0
    assert decode(spec_for("int32"), encode(spec_for("int32"), 2.6)) == 3
    assert decode(spec_for("uint16"), encode(spec_for("uint16"), math.nan)) == 0
    assert decode(spec_for("float32"), encode(spec_for("float32"), 1e300)) == math.inf
    assert decode(spec_for("bool"), encode(spec_for("bool"), "on")) is True


# --- totality and block decoding ----------------------------------------------------------------


@st.composite
def any_spec(draw: st.DrawFn) -> ValueSpec:
    type_ = draw(st.sampled_from([*NUMERIC, "string", "bool"]))
    is_bit = draw(st.booleans()) and type_ == "bool"
    length = draw(st.integers(1, 8)) if type_ == "string" else None
    spec = spec_for(type_, length=length, byte_order=draw(orders), word_order=draw(orders), is_bit=is_bit)
    if is_bit:
        return spec
    choice = draw(st.sampled_from(["plain", "bit", "bits"]))
    if choice == "bit" and type_ in ("uint16", "int16", "bool"):
        return ValueSpec(spec.type, spec.words, spec.byte_order, spec.word_order, bit=draw(st.integers(0, 15)))
    if choice == "bits" and type_ != "string":
        lo = draw(st.integers(0, 16 * spec.words - 1))
        hi = draw(st.integers(lo, 16 * spec.words - 1))
        return ValueSpec(spec.type, spec.words, spec.byte_order, spec.word_order, bits=(lo, hi))
    return spec


@settings(max_examples=400, deadline=None)
@given(any_spec(), st.binary(max_size=24), st.integers(-2, 14))
def test_decode_never_raises(spec: ValueSpec, data: bytes, offset: int) -> None:
    result = decode(spec, data, offset)
    assert isinstance(result, int | float | bool | str | PointError)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(any_spec(), st.integers(0, 20)), min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_block_decoder_equals_point_by_point(items: list[tuple[ValueSpec, int]], rnd: Any) -> None:
    bit_data = items[0][0].is_bit
    items = [(s, o) for s, o in items if s.is_bit == bit_data]
    slots = list(range(len(items)))
    rnd.shuffle(slots)
    layout = [(slot, spec, off) for slot, (spec, off) in zip(slots, items, strict=True)]
    block = BlockDecoder(layout, bit_data=bit_data)
    data = bytes(rnd.getrandbits(8) for _ in range(block.need))
    values: list[RawValue] = [None] * len(items)
    block.decode_into(data, values)
    for slot, spec, off in layout:
        expected = decode(spec, data, off)
        got = values[slot]
        assert got == expected or (isinstance(got, float) and isinstance(expected, float) and math.isnan(got))


def test_block_decoder_uses_one_struct_for_a_plain_block() -> None:
    specs = [(i, spec_for("float32"), 2 * i) for i in range(62)]
    block = BlockDecoder(specs)
    assert block._fast is not None and block._contiguous and not block._slow
    data = struct.pack(">62f", *[float(i) for i in range(62)])
    values: list[RawValue] = [None] * 62
    block.decode_into(data, values)
    assert values == [float(i) for i in range(62)]
    # gaps become pad bytes; a word-swapped point falls back to its own decoder
    mixed = BlockDecoder(
        [(0, spec_for("uint16"), 0), (1, spec_for("int32", word_order="little"), 3), (2, spec_for("int16"), 8)]
    )
    data = regs(5, 0, 0, 0xFFFF, 0xFFFF, 0, 0, 0, 0xFFFF)
    out: list[RawValue] = [None] * 3
    mixed.decode_into(data, out)
    assert out == [5, -1, -1]
    assert compile_decoder(spec_for("uint16"))(data, 0) == 5
