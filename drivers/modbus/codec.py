"""Register words <-> values: pure functions, precompiled per point, total on device data.

Data is always the wire bytes of a reply: registers as big-endian 16-bit words one after the
other (what the PDU carries), or for coils / discrete inputs the packed bit bytes (LSB first).

Byte order is the order of the two bytes inside each 16-bit word, word order the order of the
words of a multi-register value. Both are folded into one `struct` format: with equal orders the
value is a plain big- or little-endian number over its bytes; with different orders the words
are reversed first (``CDAB`` and ``BADC`` layouts).

Decoders never raise on device data: a compiled decoder assumes the caller checked that the
data covers the point (the driver does, once per reply); :func:`decode` checks it itself.

Encoding is the inverse. The twin encodes leniently (rounded, clamped: a simulated value always
fits); a write encodes strictly (``strict=True``): a value the type cannot hold exactly is a
ValueError, never a clamped number on a real device. Floats are the one rounding: a float32
register gets the nearest float32, which is what the read-back then shows.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drivers.modbus.config import TYPE_WORDS
from gateway.driver import PointError, RawValue
from gateway.interning import interned

if TYPE_CHECKING:
    from drivers.modbus.config import ModbusDevice, ModbusPoint, ModbusWrite

# struct codes of the numeric types, and of the unsigned integer of the same width (bit fields).
_NUMERIC: dict[str, str] = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}
_UNSIGNED_BY_WORDS = {1: "H", 2: "I", 4: "Q"}
_WORDS = TYPE_WORDS

_INT_RANGE = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
BIT_FUNCTIONS = frozenset({"coil", "discrete"})
FUNCTION_CODES = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}

# A compiled decoder: (reply data, byte offset for registers / bit index for bits) -> value.
Decoder = Callable[[bytes, int], RawValue]


@dataclass(frozen=True, slots=True)
class ValueSpec:
    """How one point's value sits in the registers (or bits) of a reply."""

    type: str = "uint16"
    words: int = 1
    byte_order: str = "big"
    word_order: str = "big"
    bit: int | None = None
    bits: tuple[int, int] | None = None
    is_bit: bool = False  # a coil or discrete input: one bit, decoded as bool

    @property
    def simple(self) -> bool:
        """A plain number that one struct format decodes in place (no bits, no word swap)."""
        return (
            not self.is_bit
            and self.bit is None
            and self.bits is None
            and self.type in _NUMERIC
            and (self.words == 1 or self.byte_order == self.word_order)
        )

    @property
    def endian(self) -> str:
        return ">" if self.byte_order == "big" else "<"

    @property
    def span(self) -> int:
        """Registers (or bits) the point occupies."""
        return 1 if self.is_bit else self.words


def spec_of(point: ModbusPoint, device: ModbusDevice) -> ValueSpec:
    """The point's value layout, with the device's defaults filled in."""
    function = point.function or device.function
    return ValueSpec(
        type=point.type,
        words=point.words(),
        byte_order=point.byte_order or device.byte_order,
        word_order=point.word_order or device.word_order,
        bit=point.bit,
        bits=point.bits,
        is_bit=function in BIT_FUNCTIONS,
    )


def spec_for(
    type: str = "uint16",
    *,
    length: int | None = None,
    byte_order: str = "big",
    word_order: str = "big",
    bit: int | None = None,
    bits: tuple[int, int] | None = None,
    is_bit: bool = False,
) -> ValueSpec:
    """A ValueSpec from its parts (tests, tools)."""
    words = (length or 1) if type == "string" else _WORDS[type]
    return ValueSpec(type, words, byte_order, word_order, bit, bits, is_bit)


# --- decoding ---------------------------------------------------------------------------------


def _swap_words(nwords: int) -> Callable[[bytes, int], bytes]:
    """Bytes of `nwords` registers at an offset, last word first."""
    if nwords == 2:
        return lambda d, o: d[o + 2 : o + 4] + d[o : o + 2]
    if nwords == 4:
        return lambda d, o: d[o + 6 : o + 8] + d[o + 4 : o + 6] + d[o + 2 : o + 4] + d[o : o + 2]
    return lambda d, o: b"".join(d[i : i + 2] for i in range(o + 2 * nwords - 2, o - 1, -2))


def _swap_bytes(raw: bytes) -> bytes:
    out = bytearray(len(raw))
    out[0::2] = raw[1::2]
    out[1::2] = raw[0::2]
    return bytes(out)


def _unsigned_reader(spec: ValueSpec) -> Callable[[bytes, int], int]:
    """The point's registers as one unsigned integer, in the point's byte and word order."""
    words = spec.words if spec.words in _UNSIGNED_BY_WORDS else 1
    unpack = struct.Struct(spec.endian + _UNSIGNED_BY_WORDS[words]).unpack_from
    if words > 1 and spec.byte_order != spec.word_order:
        swap = _swap_words(words)
        return lambda d, o: unpack(swap(d, o))[0]
    return lambda d, o: unpack(d, o)[0]


def compile_decoder(spec: ValueSpec) -> Decoder:
    """A fast decoder for one point; the data must cover the point (see module docstring)."""
    if spec.is_bit:
        return lambda d, i: (d[i >> 3] >> (i & 7)) & 1 == 1
    if spec.type == "string":
        n = 2 * spec.words
        little = spec.byte_order == "little"

        def text(d: bytes, o: int) -> str:
            raw = d[o : o + n]
            if little:
                raw = _swap_bytes(raw)
            return raw.decode("ascii", "replace").strip("\x00 ")

        return text
    if spec.bit is not None:
        reg = _unsigned_reader(ValueSpec("uint16", 1, spec.byte_order, spec.word_order))
        bit = spec.bit
        return lambda d, o: (reg(d, o) >> bit) & 1 == 1
    if spec.bits is not None:
        lo, hi = spec.bits
        mask = (1 << (hi - lo + 1)) - 1
        whole = _unsigned_reader(spec)
        return lambda d, o: (whole(d, o) >> lo) & mask
    if spec.type == "bool":
        reg = _unsigned_reader(spec)
        return lambda d, o: reg(d, o) != 0
    fmt = struct.Struct(spec.endian + _NUMERIC[spec.type])
    unpack = fmt.unpack_from
    if spec.words > 1 and spec.byte_order != spec.word_order:
        swap = _swap_words(spec.words)
        unpack_bytes = fmt.unpack
        return lambda d, o: unpack_bytes(swap(d, o))[0]
    return lambda d, o: unpack(d, o)[0]


def decode(spec: ValueSpec, data: bytes, offset: int = 0) -> RawValue:
    """Decode one value at a register offset (or bit index); never raises.

    Data that does not cover the point gives a PointError.
    """
    if spec.is_bit:
        if offset < 0 or (offset >> 3) >= len(data):
            return PointError("reply too short")
        return compile_decoder(spec)(data, offset)
    start = 2 * offset
    if offset < 0 or start + 2 * spec.words > len(data):
        return PointError("reply too short")
    return compile_decoder(spec)(bytes(data), start)


def decode_registers(spec: ValueSpec, words: Sequence[int], offset: int = 0) -> RawValue:
    """Decode from a list of 16-bit register values (as other Modbus libraries return them)."""
    try:
        data = struct.pack(f">{len(words)}H", *words)
    except (struct.error, TypeError):
        return PointError("register values must be 0..65535")
    return decode(spec, data, offset)


def block_decoder(items: tuple[tuple[int, ValueSpec, int], ...], bit_data: bool = False) -> BlockDecoder:
    """The decoder of these items: one object for every device that reads the same block (it holds no state)."""
    return _block_decoder(interned(items), bit_data)


@functools.lru_cache(maxsize=4096)
def _block_decoder(items: tuple[tuple[int, ValueSpec, int], ...], bit_data: bool) -> BlockDecoder:
    return BlockDecoder(items, bit_data=bit_data)


class BlockDecoder:
    """Decodes every point one reply serves into its slot of the values list.

    Plain numbers that do not overlap are decoded by one precompiled struct format (pad bytes for
    the gaps); points whose slots are consecutive are stored with one slice assignment. The rest
    (bits, bit fields, strings, swapped words, overlaps) use their own compiled decoders.
    """

    __slots__ = ("_base", "_contiguous", "_fast", "_first", "_last", "_need", "_slots", "_slow")

    def __init__(self, items: Sequence[tuple[int, ValueSpec, int]], bit_data: bool = False) -> None:
        """`items`: (slot, spec, offset in registers or bits from the start of the read)."""
        slow: list[tuple[int, Decoder, int]] = []
        fast: list[tuple[int, ValueSpec, int]] = []
        need = 0
        if bit_data:
            for slot, spec, off in items:
                slow.append((slot, compile_decoder(spec), off))
                need = max(need, (off >> 3) + 1)
        else:
            endian_votes: dict[str, int] = {}
            for _, spec, _ in items:
                if spec.simple:
                    endian_votes[spec.endian] = endian_votes.get(spec.endian, 0) + 1
            endian = max(endian_votes, key=lambda e: endian_votes[e]) if endian_votes else ">"
            end = -1
            for slot, spec, off in sorted(items, key=lambda it: (it[2], it[0])):
                need = max(need, 2 * (off + spec.words))
                if spec.simple and spec.endian == endian and off >= end:
                    fast.append((slot, spec, off))
                    end = off + spec.words
                else:
                    slow.append((slot, compile_decoder(spec), 2 * off))
        self._need = need
        self._slow = tuple(slow)
        self._fast: struct.Struct | None = None
        self._base = 0
        self._slots: tuple[int, ...] = ()
        self._contiguous = False
        self._first = self._last = 0
        if fast:
            fmt = [endian]
            pos = fast[0][2]
            for _, spec, off in fast:
                if off > pos:
                    fmt.append(f"{2 * (off - pos)}x")
                fmt.append(_NUMERIC[spec.type])
                pos = off + spec.words
            self._fast = struct.Struct("".join(fmt))
            self._base = 2 * fast[0][2]
            self._slots = tuple(slot for slot, _, _ in fast)
            first = self._slots[0]
            self._contiguous = self._slots == tuple(range(first, first + len(self._slots)))
            self._first, self._last = first, first + len(self._slots)

    @property
    def need(self) -> int:
        """Bytes of reply data the points need."""
        return self._need

    def decode_into(self, data: bytes, values: list[RawValue]) -> None:
        """Decode the reply `data` (checked to be at least `need` bytes long) into `values`."""
        fast = self._fast
        if fast is not None:
            decoded = fast.unpack_from(data, self._base)
            if self._contiguous:
                values[self._first : self._last] = decoded
            else:
                for slot, value in zip(self._slots, decoded, strict=True):
                    values[slot] = value
        for slot, dec, off in self._slow:
            values[slot] = dec(data, off)


# --- encoding (the twin's values, and writes) ---------------------------------------------------


def _to_int(value: float | int | bool | str, type: str) -> int:
    lo, hi = _INT_RANGE.get(type, (0, 2**64 - 1))
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            value = 0
    if isinstance(value, float):
        if math.isnan(value):
            return 0
        if math.isinf(value):
            return hi if value > 0 else lo
        value = round(value)
    return min(max(int(value), lo), hi)


def _to_float(value: float | int | bool | str, type: str) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return math.nan
    if type == "float32" and math.isfinite(f) and abs(f) > 3.4028234663852886e38:
        return math.copysign(math.inf, f)
    return f


def _order(raw_big: bytes, spec: ValueSpec) -> bytes:
    """Big-endian value bytes -> wire bytes in the spec's byte and word order."""
    words = [raw_big[i : i + 2] for i in range(0, len(raw_big), 2)]
    if spec.word_order == "little":
        words.reverse()
    if spec.byte_order == "little":
        words = [w[::-1] for w in words]
    return b"".join(words)


def _unsigned_bytes(value: int, spec: ValueSpec) -> bytes:
    words = spec.words if spec.words in _UNSIGNED_BY_WORDS else 1
    return _order((value & ((1 << (16 * words)) - 1)).to_bytes(2 * words, "big"), spec)


def encode(
    spec: ValueSpec, value: float | int | bool | str, current: bytes | None = None, *, strict: bool = False
) -> bytes:
    """The wire bytes of a value: 2*words bytes, or one byte 0/1 for a bit point.

    Integers are rounded and clamped to the type's range, unless `strict`: then a value the type
    cannot hold exactly raises ValueError (see the module docstring). A `bit` or `bits` point
    changes only its bits of `current` (the registers it shares with other points; zeros when not
    given).
    """
    if strict:
        check_value(spec, value)
    if spec.is_bit:
        return b"\x01" if _truthy(value) else b"\x00"
    if spec.type == "string":
        text = str(value).encode("ascii", "replace")[: 2 * spec.words].ljust(2 * spec.words, b"\x00")
        return _swap_bytes(text) if spec.byte_order == "little" else text
    if spec.bit is not None or spec.bits is not None:
        reg_spec = spec if spec.bits is not None else ValueSpec("uint16", 1, spec.byte_order, spec.word_order)
        size = 2 * reg_spec.words
        old = current if current is not None and len(current) >= size else bytes(size)
        whole = _unsigned_reader(reg_spec)(old, 0)
        if spec.bit is not None:
            lo, width, field = spec.bit, 1, 1 if _truthy(value) else 0
        else:
            assert spec.bits is not None
            lo, width = spec.bits[0], spec.bits[1] - spec.bits[0] + 1
            field = _to_int(value, "uint64") & ((1 << width) - 1)
        mask = ((1 << width) - 1) << lo
        return _unsigned_bytes((whole & ~mask) | (field << lo), reg_spec)
    if spec.type == "bool":
        return _order((1 if _truthy(value) else 0).to_bytes(2, "big"), spec)
    code = _NUMERIC[spec.type]
    if code in "fd" and strict:
        try:
            raw = struct.pack(">" + code, float(value))  # float32: the nearest one (IEEE round to even)
        except OverflowError:
            raise ValueError(f"{value!r} is beyond the range of {spec.type}") from None
    elif code in "fd":
        raw = struct.pack(">" + code, _to_float(value, spec.type))
    else:
        raw = struct.pack(">" + code, _to_int(value, spec.type))
    return _order(raw, spec)


def check_value(spec: ValueSpec, value: object) -> None:
    """Raise ValueError unless `value` is a raw value the point's type holds exactly (float32: nearest)."""
    if spec.is_bit or spec.bit is not None or (spec.type == "bool" and spec.bits is None):
        if not (isinstance(value, bool) or (type(value) is int and value in (0, 1))):
            raise ValueError(f"{value!r} is not a boolean")
        return
    if spec.type == "string":
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not text")
        if not value.isascii():
            raise ValueError(f"{value!r} is not ASCII text")
        if len(value) > 2 * spec.words:
            raise ValueError(f"{len(value)} characters do not fit {spec.words} registers ({2 * spec.words} at most)")
        return
    if spec.bits is not None:
        width = spec.bits[1] - spec.bits[0] + 1
        lo, hi = 0, (1 << width) - 1
        what = f"bits [{spec.bits[0]}, {spec.bits[1]}]"
    elif spec.type in _INT_RANGE:
        lo, hi = _INT_RANGE[spec.type]
        what = spec.type
    else:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{value!r} is not a number")
        return
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer")
    if not lo <= value <= hi:
        raise ValueError(f"{value} is out of range for {what} ({lo}..{hi})")


def mask_write(spec: ValueSpec, value: bool | int) -> tuple[int, int, int]:
    """An FC 22 write of a `bit` / `bits` point: (register offset in the point, AND mask, OR mask).

    The masks are worked out on the wire bytes, so the point's byte and word order place them.
    """
    if spec.bit is None and spec.bits is None:
        raise ValueError("a mask write is for a `bit` or `bits` point")
    words = 1 if spec.bit is not None else spec.words
    zeros = bytes(2 * words)
    ones = (1 << (spec.bits[1] - spec.bits[0] + 1)) - 1 if spec.bits is not None else True
    field = encode(spec, value, zeros, strict=True)
    mask = encode(spec, ones, zeros)
    hit = [i for i in range(words) if mask[2 * i : 2 * i + 2] != b"\x00\x00"]
    if len(hit) != 1:
        raise ValueError("a mask write (FC 22) changes one register: the bits span several")
    i = hit[0]
    m = int.from_bytes(mask[2 * i : 2 * i + 2], "big")
    return i, ~m & 0xFFFF, int.from_bytes(field[2 * i : 2 * i + 2], "big")


def write_spec(write: ModbusWrite, byte_order: str, word_order: str) -> ValueSpec:
    """The value layout of an action's write, with the device's orders filled in."""
    return ValueSpec(
        type="bool" if write.function == "coil" else write.type,
        words=1 if write.function == "coil" else write.words(),
        byte_order=write.byte_order or byte_order,
        word_order=write.word_order or word_order,
        is_bit=write.function == "coil",
    )


def write_words(spec: ValueSpec, value: object) -> bytes:
    """The wire data of a write: register bytes, or one byte 0/1 per coil (a list: consecutive coils)."""
    if isinstance(value, list):
        if not spec.is_bit or not value:
            raise ValueError("a list of values is for consecutive coils")
        return b"".join(encode(spec, v, strict=True) for v in value)
    if not isinstance(value, int | float | str):
        raise ValueError(f"{value!r} cannot be written")
    return encode(spec, value, strict=True)


def _truthy(value: float | int | bool | str) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "on", "yes", "closed")
    return bool(value) and not (isinstance(value, float) and math.isnan(value))


def type_range(type: str) -> tuple[float, float]:
    """The raw values a type can hold (floats: the finite range)."""
    if type in _INT_RANGE:
        lo, hi = _INT_RANGE[type]
        return float(lo), float(hi)
    if type == "float32":
        return -3.4028234663852886e38, 3.4028234663852886e38
    if type == "float64":
        return -1.7976931348623157e308, 1.7976931348623157e308
    return 0.0, 1.0


# --- device identification (FC 43 / MEI type 14) -------------------------------------------------

FC_MEI = 0x2B
MEI_DEVICE_ID = 0x0E
# Read Device ID codes: basic stream (objects 0-2), regular stream (0-6), extended stream, one object.
READ_BASIC, READ_REGULAR, READ_EXTENDED, READ_ONE = 1, 2, 3, 4
# The standard's object ids and the names the profiles' `identity:` key uses for them.
OBJECT_NAMES: dict[int, str] = {
    0: "vendor_name",
    1: "product_code",
    2: "revision",
    3: "vendor_url",
    4: "product_name",
    5: "model_name",
    6: "user_application_name",
}
BASIC_OBJECTS = (0, 1, 2)  # mandatory for every device that answers FC 43
MAX_PDU = 253
_ID_HEADER = 7  # function, MEI type, read code, conformity, more follows, next object id, count


def device_id_request(code: int, object_id: int) -> bytes:
    """The request PDU of a Read Device Identification (`code`: READ_BASIC .. READ_ONE)."""
    if not READ_BASIC <= code <= READ_ONE or not 0 <= object_id <= 255:
        raise ValueError(f"bad device identification request: code {code}, object {object_id}")
    return bytes((FC_MEI, MEI_DEVICE_ID, code, object_id))


@dataclass(frozen=True, slots=True)
class DeviceIdReply:
    """One Read Device Identification reply: part of the objects, and where the stream goes on."""

    code: int
    conformity: int
    more: bool
    next_object: int
    objects: tuple[tuple[int, bytes], ...]


def device_id_length(buf: bytes | bytearray, start: int = 0) -> int | None:
    """The length of the reply PDU that begins at `buf[start]` (its function code).

    None while `buf` does not yet hold enough to tell; 0 when it cannot be such a reply. RTU has
    no length field for FC 43: the reply is as long as its objects say.
    """
    n = len(buf)
    if n - start < _ID_HEADER:
        return None
    if buf[start] != FC_MEI or buf[start + 1] != MEI_DEVICE_ID:
        return 0
    pos = start + _ID_HEADER
    for _ in range(buf[start + 6]):
        if pos + 2 > n:
            return None
        pos += 2 + buf[pos + 1]
        if pos - start > MAX_PDU:
            return 0
    return pos - start


def parse_device_id(pdu: bytes) -> DeviceIdReply:
    """Decode a Read Device Identification reply PDU (from its function code); ValueError if malformed."""
    length = device_id_length(pdu)
    if length is None or length == 0 or length != len(pdu):
        raise ValueError(f"malformed device identification reply: {pdu[:16].hex()}{'...' if len(pdu) > 16 else ''}")
    code, conformity, more, next_object, count = pdu[2:7]
    if more not in (0x00, 0xFF):
        raise ValueError(f"malformed device identification reply: 'more follows' is 0x{more:02x}")
    if conformity & 0x7F not in (1, 2, 3):
        raise ValueError(f"device identification conformity level 0x{conformity:02x} is not 1, 2 or 3 (+0x80)")
    objects: list[tuple[int, bytes]] = []
    pos = _ID_HEADER
    for _ in range(count):
        oid, size = pdu[pos], pdu[pos + 1]
        objects.append((oid, bytes(pdu[pos + 2 : pos + 2 + size])))
        pos += 2 + size
    return DeviceIdReply(code, conformity, more == 0xFF, next_object, tuple(objects))


def object_text(value: bytes) -> str:
    """An identification object as text: ASCII by the standard, anything else shown, never raised on."""
    return value.decode("latin-1").strip("\x00 ")


@dataclass(frozen=True, slots=True)
class Identification:
    """What a device answered to Read Device Identification: object id -> text, and its conformity."""

    conformity: int
    objects: dict[int, str]

    def get(self, name: str) -> str | None:
        """An object by its profile name (`vendor_name`, `product_code`, ...)."""
        for oid, oname in OBJECT_NAMES.items():
            if oname == name:
                return self.objects.get(oid)
        raise KeyError(name)

    @property
    def level(self) -> str:
        return {1: "basic", 2: "regular", 3: "extended"}.get(self.conformity & 0x7F, "unknown")

    @property
    def missing(self) -> list[str]:
        """The mandatory (basic) objects the device did not give."""
        return [OBJECT_NAMES[o] for o in BASIC_OBJECTS if not self.objects.get(o)]

    def as_dict(self) -> dict[str, str]:
        """Named objects (standard names; others as `object_0xNN`), in object id order."""
        return {OBJECT_NAMES.get(oid, f"object_0x{oid:02x}"): text for oid, text in sorted(self.objects.items())}
