"""Property tests of Modbus writes: what is written is what a read decodes, exactly.

For every writable type and layout: the codec's strict encoding decodes back to the raw value
(a float32 register: the nearest float32, checked against its neighbours, not against the
codec's own rounding), a mask write changes only its bits, and the same holds on the wire:
through the driver, our twin and back.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.modbus.codec import ValueSpec, decode, encode, mask_write, spec_for
from drivers.modbus.config import ModbusPoint
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.twin import ModbusTwin
from gateway.driver import WriteRequest
from tests.modbus.util import device, driver

NUMERIC = ["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
ORDERS = [("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")]
RANGE = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
FLT_MAX = struct.unpack(">f", b"\x7f\x7f\xff\xff")[0]


def layouts() -> Iterator[tuple[str, str, str]]:
    """(type, byte order, word order) for every writable numeric type and layout it can have."""
    for t in NUMERIC:
        for byte_order, word_order in ORDERS:
            if t.endswith("16") and word_order == "little":
                continue  # one register: no word order
            yield t, byte_order, word_order


LAYOUTS = list(layouts())


def raw_values(t: str) -> st.SearchStrategy[Any]:
    if t in RANGE:
        return st.integers(*RANGE[t])
    if t == "float32":
        # every float32, and float64 values that need rounding (or overflow)
        return st.floats(width=32) | st.floats()
    return st.floats()


def _f32_bits(x: float) -> int:
    return int(struct.unpack(">I", struct.pack(">f", x))[0])


def _f32_from_bits(bits: int) -> float:
    return float(struct.unpack(">f", struct.pack(">I", bits & 0xFFFFFFFF))[0])


def assert_nearest_float32(x: float, got: float) -> None:
    """`got` is a float32 and no float32 next to it is nearer to `x`."""
    assert _f32_from_bits(_f32_bits(got)) == got or math.isnan(got)
    if math.isnan(x):
        assert math.isnan(got)
        return
    if math.isinf(x):
        assert got == x
        return
    assert math.isfinite(got)
    bits = _f32_bits(got)
    below = bits - 1
    if got == 0.0:  # the neighbour on the other side of zero is the smallest subnormal of the other sign
        below = 0x80000001 if math.copysign(1, got) > 0 else 0x00000001
    for n in (below, bits + 1):
        near = _f32_from_bits(n)
        if math.isfinite(near):
            assert abs(x - got) <= abs(x - near), (x, got, near)


def overflows_float32(x: float) -> bool:
    """x rounds to infinity as a float32 (beyond FLT_MAX by half an ulp or more)."""
    half_ulp = (FLT_MAX - _f32_from_bits(_f32_bits(FLT_MAX) - 1)) / 2
    return math.isfinite(x) and abs(x) >= FLT_MAX + half_ulp


def check(spec: ValueSpec, raw: Any, got: Any) -> None:
    if spec.type == "float32" and isinstance(raw, float):
        assert isinstance(got, float)
        assert_nearest_float32(raw, got)
    elif isinstance(raw, float) and math.isnan(raw):
        assert isinstance(got, float) and math.isnan(got)
    else:
        assert got == raw and type(got) is type(raw), (spec, raw, got)


# --- the codec -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("t", "byte_order", "word_order"), LAYOUTS)
@given(data=st.data())
def test_strict_encoding_decodes_to_the_raw_value(t: str, byte_order: str, word_order: str, data: Any) -> None:
    spec = spec_for(t, byte_order=byte_order, word_order=word_order)
    raw = data.draw(raw_values(t))
    if t == "float32" and overflows_float32(raw):
        with pytest.raises(ValueError, match="beyond the range of float32"):
            encode(spec, raw, strict=True)
        return
    wire = encode(spec, raw, strict=True)
    assert len(wire) == 2 * spec.words
    check(spec, raw, decode(spec, wire))


@pytest.mark.parametrize("t", [t for t in NUMERIC if t in RANGE])
@given(data=st.data())
def test_integers_outside_the_type_are_refused(t: str, data: Any) -> None:
    lo, hi = RANGE[t]
    raw = data.draw(st.integers(max_value=lo - 1) | st.integers(min_value=hi + 1))
    with pytest.raises(ValueError, match=f"out of range for {t}"):
        encode(spec_for(t), raw, strict=True)


@given(on=st.booleans(), coil=st.booleans())
def test_booleans_round_trip(on: bool, coil: bool) -> None:
    spec = spec_for("bool", is_bit=coil)
    assert decode(spec, encode(spec, on, strict=True)) is on


VIEWS = [
    ("uint16", 1, None),
    ("uint16", None, (0, 0)),
    ("uint16", None, (3, 9)),
    ("uint16", None, (12, 15)),
    ("uint32", None, (4, 11)),
    ("uint32", None, (16, 31)),
    ("uint64", None, (40, 47)),
]


@pytest.mark.parametrize(("t", "bit", "bits"), VIEWS)
@pytest.mark.parametrize(("byte_order", "word_order"), ORDERS)
@given(data=st.data())
def test_a_mask_write_changes_only_its_bits(
    t: str, bit: int | None, bits: tuple[int, int] | None, byte_order: str, word_order: str, data: Any
) -> None:
    spec = spec_for(t, byte_order=byte_order, word_order=word_order, bit=bit, bits=bits)
    width = 1 if bit is not None else bits[1] - bits[0] + 1  # type: ignore[index]
    value: bool | int = data.draw(st.booleans() if bit is not None else st.integers(0, (1 << width) - 1))
    words = spec.words if bit is None else 1
    before = bytearray(data.draw(st.binary(min_size=2 * words, max_size=2 * words)))
    offset, and_mask, or_mask = mask_write(spec, value)
    reg = int.from_bytes(before[2 * offset : 2 * offset + 2], "big")
    after = bytearray(before)
    # what the device does with FC 22 (the specification's formula)
    after[2 * offset : 2 * offset + 2] = ((reg & and_mask) | (or_mask & ~and_mask & 0xFFFF)).to_bytes(2, "big")
    assert decode(spec, bytes(after)) == value
    whole = spec_for(t, byte_order=byte_order, word_order=word_order)
    lo = bit if bit is not None else bits[0]  # type: ignore[index]
    keep = ~(((1 << width) - 1) << lo)
    if bit is not None:
        whole = spec_for("uint16", byte_order=byte_order)
    old, new = decode(whole, bytes(before)), decode(whole, bytes(after))
    assert isinstance(old, int) and isinstance(new, int)
    assert old & keep == new & keep


# --- on the wire: driver, twin, read-back --------------------------------------------------------------


def wire_points() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    address = 0
    for t, byte_order, word_order in LAYOUTS:
        out.append(
            {
                "id": f"{t}.{byte_order}.{word_order}",
                "address": address,
                "type": t,
                "byte_order": byte_order,
                "word_order": word_order,
                "function": "holding",
                "writable": True,
                "quantity": "other",
            }
        )
        address += 4
    out.append(
        {"id": "flag", "address": address, "type": "bool", "function": "holding", "writable": True, "quantity": "other"}
    )
    out.append({"id": "coil", "address": 0, "function": "coil", "writable": True, "quantity": "other"})
    return out


WIRE = wire_points()


class Rig:
    """A twin and a driver on their own event loop, kept for all examples (a test per example would be slow)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        pts = [ModbusPoint.model_validate(p) for p in WIRE]
        self.twin = ModbusTwin(pts, units=[1], update_interval=0)
        self.loop.run_until_complete(self.twin.start())
        self.driver: ModbusDriver = self.loop.run_until_complete(driver(device(self.twin.port, timeout=1.0), pts))

    def write(self, index: int, raw: Any) -> Any:
        return self.loop.run_until_complete(self.driver.write(WriteRequest(index, raw)))

    def read(self) -> list[Any]:
        return list(self.loop.run_until_complete(self.driver.read()).values)

    def close(self) -> None:
        self.loop.run_until_complete(self.driver.ctx.bus.close())
        self.loop.run_until_complete(self.twin.stop())
        self.loop.close()


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def _drawn(data: Any) -> tuple[int, Any]:
    index = data.draw(st.integers(0, len(WIRE) - 1))
    p = WIRE[index]
    if p["id"] in ("flag", "coil"):
        return index, data.draw(st.booleans())
    raw = data.draw(raw_values(p["type"]))
    if p["type"] == "float32" and overflows_float32(raw):
        raw = data.draw(st.floats(width=32))
    return index, raw


def _wire_spec(p: dict[str, Any]) -> ValueSpec:
    if p["id"] == "coil":
        return spec_for("bool", is_bit=True)
    if p["id"] == "flag":
        return spec_for("bool")
    return spec_for(p["type"], byte_order=p["byte_order"], word_order=p["word_order"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_written_then_read_back_is_the_raw_value(rig: Rig, data: Any) -> None:
    index, raw = _drawn(data)
    spec = _wire_spec(WIRE[index])
    check(spec, raw, rig.write(index, raw))
    check(spec, raw, rig.read()[index])  # a poll decodes the same
