"""COSEM encoding shared by the client and the twin: A-XDR data, date-time, OBIS, units, security
suite 0 (AES-GCM-128), and the client's side of ACSE and xDLMS (AARQ, AARE parsing, the
conformance block, GET requests with selective access, data-access-results).

Every decoder here raises :class:`CodecError` (a ValueError) and nothing else on malformed
input; the fuzz tests hold it to that. The daemon's client has gurux encode and decode its APDUs
(client.py) and uses this module for values and selective-access parameters. What only a meter
builds or parses (AARE, initiate response, GET/SET/ACTION requests and responses, exception
responses) lives with the twin, in ``drivers/dlms/twin/server.py``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any
from zoneinfo import ZoneInfo

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


class CodecError(ValueError):
    """Malformed or unsupported COSEM data."""


# --- OBIS ----------------------------------------------------------------------------------------


def obis_bytes(obis: str) -> bytes:
    """`1.0.1.8.0.255` -> 6 bytes (the text is already normalised by the config)."""
    parts = obis.split(".")
    if len(parts) != 6:
        raise CodecError(f"not an OBIS code: {obis!r}")
    try:
        return bytes(int(p) for p in parts)
    except ValueError:
        raise CodecError(f"not an OBIS code: {obis!r}") from None


def obis_text(raw: bytes) -> str:
    if len(raw) != 6:
        raise CodecError(f"an OBIS code is 6 bytes, not {len(raw)}")
    return ".".join(str(b) for b in raw)


# --- units ---------------------------------------------------------------------------------------

# DLMS unit enumeration (Blue Book) -> the gateway's unit symbols; only those the gateway knows.
UNIT_SYMBOLS: dict[int, str] = {
    7: "s",
    9: "degC",
    27: "W",
    28: "VA",
    29: "var",
    30: "Wh",
    31: "VAh",
    32: "varh",
    33: "A",
    35: "V",
    38: "ohm",
    44: "Hz",
    56: "%",
    57: "Ah",
    255: "",
}
UNIT_CODES: dict[str, int] = {v: k for k, v in UNIT_SYMBOLS.items()}


def unit_symbol(code: int) -> str | None:
    """The gateway symbol of a DLMS unit code, or None for a unit the gateway has no name for."""
    return UNIT_SYMBOLS.get(code)


# --- A-XDR data ----------------------------------------------------------------------------------


class DataType(IntEnum):
    NULL = 0
    ARRAY = 1
    STRUCTURE = 2
    BOOLEAN = 3
    BIT_STRING = 4
    INT32 = 5
    UINT32 = 6
    OCTET_STRING = 9
    VISIBLE_STRING = 10
    UTF8_STRING = 12
    BCD = 13
    INT8 = 15
    INT16 = 16
    UINT8 = 17
    UINT16 = 18
    COMPACT_ARRAY = 19
    INT64 = 20
    UINT64 = 21
    ENUM = 22
    FLOAT32 = 23
    FLOAT64 = 24
    DATETIME = 25
    DATE = 26
    TIME = 27


_INT_FORMATS: dict[DataType, str] = {
    DataType.INT8: ">b",
    DataType.UINT8: ">B",
    DataType.ENUM: ">B",
    DataType.BCD: ">B",
    DataType.INT16: ">h",
    DataType.UINT16: ">H",
    DataType.INT32: ">i",
    DataType.UINT32: ">I",
    DataType.INT64: ">q",
    DataType.UINT64: ">Q",
}
_FIXED_OCTETS = {DataType.DATETIME: 12, DataType.DATE: 5, DataType.TIME: 4}
MAX_DEPTH = 16


@dataclass(frozen=True, slots=True)
class Data:
    """A typed A-XDR value: ints, floats, bools, bytes (octet strings, date-times), str, lists."""

    type: DataType
    value: Any = None

    def plain(self) -> Any:
        """The value without types: lists for arrays and structures."""
        if self.type in (DataType.ARRAY, DataType.STRUCTURE):
            return [item.plain() for item in self.value]
        return self.value


def null() -> Data:
    return Data(DataType.NULL)


def u8(v: int) -> Data:
    return Data(DataType.UINT8, v)


def u16(v: int) -> Data:
    return Data(DataType.UINT16, v)


def u32(v: int) -> Data:
    return Data(DataType.UINT32, v)


def i8(v: int) -> Data:
    return Data(DataType.INT8, v)


def enum(v: int) -> Data:
    return Data(DataType.ENUM, v)


def octets(v: bytes) -> Data:
    return Data(DataType.OCTET_STRING, bytes(v))


def structure(*items: Data) -> Data:
    return Data(DataType.STRUCTURE, list(items))


def array(items: Sequence[Data]) -> Data:
    return Data(DataType.ARRAY, list(items))


#: The A-XDR types a config names (a point's `type`, an action's parameter): name -> type.
TYPE_NAMES: dict[str, DataType] = {
    "null": DataType.NULL,
    "boolean": DataType.BOOLEAN,
    "int8": DataType.INT8,
    "int16": DataType.INT16,
    "int32": DataType.INT32,
    "int64": DataType.INT64,
    "uint8": DataType.UINT8,
    "uint16": DataType.UINT16,
    "uint32": DataType.UINT32,
    "uint64": DataType.UINT64,
    "enum": DataType.ENUM,
    "float32": DataType.FLOAT32,
    "float64": DataType.FLOAT64,
    "octet_string": DataType.OCTET_STRING,
    "visible_string": DataType.VISIBLE_STRING,
    "utf8_string": DataType.UTF8_STRING,
}
_WRITABLE_INTS = frozenset(
    {
        DataType.INT8,
        DataType.INT16,
        DataType.INT32,
        DataType.INT64,
        DataType.UINT8,
        DataType.UINT16,
        DataType.UINT32,
        DataType.UINT64,
        DataType.ENUM,
    }
)


def value_of_type(dtype: DataType, value: Any) -> Data:
    """A plain value (a raw reading's form) as A-XDR data of `dtype`; CodecError when it has no such form.

    Integers (and enums) take ints and whole floats, within the type's range; booleans take bools
    (or 0/1); floats take numbers; octet strings take text (its ASCII bytes) or bytes; visible and
    UTF-8 strings take text. Checked by encoding, so what is returned goes on the wire as is.
    """
    what = f"{value!r} as {dtype.name.lower()}"
    if dtype in (DataType.OCTET_STRING, DataType.VISIBLE_STRING, DataType.UTF8_STRING):
        out = _text_of_type(dtype, value, what)
    else:
        out = _scalar_of_type(dtype, value, what)
    try:
        encode_data(out)
    except (CodecError, struct.error, OverflowError):
        raise CodecError(f"{value!r} does not fit a {dtype.name.lower()}") from None
    return out


def _scalar_of_type(dtype: DataType, value: Any, what: str) -> Data:
    if dtype == DataType.NULL:
        if value is not None:
            raise CodecError(f"{what}: a null parameter carries no value")
        return null()
    if dtype == DataType.BOOLEAN:
        if not isinstance(value, bool) and value not in (0, 1):
            raise CodecError(f"{what}: true or false is expected")
        return Data(dtype, bool(value))
    if dtype in _WRITABLE_INTS:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise CodecError(f"{what}: a whole number is expected")
        return Data(dtype, int(value))
    if dtype in (DataType.FLOAT32, DataType.FLOAT64):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CodecError(f"{what}: a number is expected")
        return Data(dtype, float(value))
    raise CodecError(f"a {dtype.name.lower()} value cannot be written from a plain value")


def _text_of_type(dtype: DataType, value: Any, what: str) -> Data:
    if dtype == DataType.OCTET_STRING:
        if isinstance(value, str):
            if not value.isascii():
                raise CodecError(f"{what}: an octet string is written from ASCII text")
            value = value.encode("ascii")
        if not isinstance(value, bytes | bytearray):
            raise CodecError(f"{what}: text is expected")
        return Data(dtype, bytes(value))
    if not isinstance(value, str) or (dtype == DataType.VISIBLE_STRING and not value.isascii()):
        raise CodecError(f"{what}: {'ASCII ' if dtype == DataType.VISIBLE_STRING else ''}text is expected")
    return Data(dtype, value)


def encode_length(n: int) -> bytes:
    """A-XDR / BER length: one byte below 128, else 0x80|count then the count's bytes."""
    if n < 0:
        raise CodecError("negative length")
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def decode_length(buf: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(buf):
        raise CodecError("truncated length")
    first = buf[pos]
    pos += 1
    if first < 0x80:
        return first, pos
    count = first & 0x7F
    if count == 0 or count > 4 or pos + count > len(buf):
        raise CodecError("bad length field")
    return int.from_bytes(buf[pos : pos + count], "big"), pos + count


def encode_data(d: Data) -> bytes:
    out = bytearray()
    _encode_into(d, out)
    return bytes(out)


def _encode_into(d: Data, out: bytearray) -> None:
    t = d.type
    out.append(int(t))
    if t == DataType.NULL:
        return
    if t in (DataType.ARRAY, DataType.STRUCTURE):
        items: list[Data] = d.value
        out += encode_length(len(items))
        for item in items:
            _encode_into(item, out)
        return
    if t == DataType.BOOLEAN:
        out.append(1 if d.value else 0)
        return
    if t in _INT_FORMATS:
        try:
            out += struct.pack(_INT_FORMATS[t], d.value)
        except struct.error as exc:
            raise CodecError(f"{t.name} cannot hold {d.value!r}") from exc
        return
    if t == DataType.FLOAT32:
        out += struct.pack(">f", d.value)
        return
    if t == DataType.FLOAT64:
        out += struct.pack(">d", d.value)
        return
    if t in _FIXED_OCTETS:
        raw = bytes(d.value)
        if len(raw) != _FIXED_OCTETS[t]:
            raise CodecError(f"{t.name} is {_FIXED_OCTETS[t]} bytes")
        out += raw
        return
    if t in (DataType.OCTET_STRING, DataType.VISIBLE_STRING, DataType.UTF8_STRING):
        raw = d.value.encode("utf-8" if t == DataType.UTF8_STRING else "ascii") if isinstance(d.value, str) else d.value
        out += encode_length(len(raw))
        out += raw
        return
    if t == DataType.BIT_STRING:
        bits: str = d.value
        out += encode_length(len(bits))
        padded = bits + "0" * (-len(bits) % 8)
        out += bytes(int(padded[i : i + 8], 2) for i in range(0, len(padded), 8))
        return
    raise CodecError(f"cannot encode {t.name}")


def decode_data(buf: bytes, pos: int = 0, depth: int = 0) -> tuple[Data, int]:
    """One A-XDR value at `pos` -> (value, position after it)."""
    if depth > MAX_DEPTH:
        raise CodecError("data nested too deeply")
    if pos >= len(buf):
        raise CodecError("truncated data")
    tag = buf[pos]
    pos += 1
    try:
        t = DataType(tag)
    except ValueError:
        raise CodecError(f"unknown data type {tag}") from None
    if t == DataType.NULL:
        return Data(t), pos
    if t in (DataType.ARRAY, DataType.STRUCTURE):
        count, pos = decode_length(buf, pos)
        if count > len(buf) - pos:  # every element takes at least one byte
            raise CodecError("element count beyond the data")
        items = []
        for _ in range(count):
            item, pos = decode_data(buf, pos, depth + 1)
            items.append(item)
        return Data(t, items), pos
    if t in (DataType.OCTET_STRING, DataType.VISIBLE_STRING, DataType.UTF8_STRING, DataType.BIT_STRING):
        return _decode_string(t, buf, pos)
    return _decode_fixed(t, buf, pos)


def _decode_fixed(t: DataType, buf: bytes, pos: int) -> tuple[Data, int]:
    """A value of fixed size: boolean, integers, floats, date/time octets."""
    if t == DataType.BOOLEAN:
        _need(buf, pos, 1)
        return Data(t, buf[pos] != 0), pos + 1
    if t in _INT_FORMATS:
        fmt = _INT_FORMATS[t]
        size = struct.calcsize(fmt)
        _need(buf, pos, size)
        return Data(t, struct.unpack_from(fmt, buf, pos)[0]), pos + size
    if t == DataType.FLOAT32:
        _need(buf, pos, 4)
        return Data(t, struct.unpack_from(">f", buf, pos)[0]), pos + 4
    if t == DataType.FLOAT64:
        _need(buf, pos, 8)
        return Data(t, struct.unpack_from(">d", buf, pos)[0]), pos + 8
    if t in _FIXED_OCTETS:
        size = _FIXED_OCTETS[t]
        _need(buf, pos, size)
        return Data(t, bytes(buf[pos : pos + size])), pos + size
    raise CodecError(f"unsupported data type {t.name}")


def _decode_string(t: DataType, buf: bytes, pos: int) -> tuple[Data, int]:
    """A length-prefixed value: octet, visible and UTF-8 strings, bit strings."""
    if t == DataType.BIT_STRING:
        nbits, pos = decode_length(buf, pos)
        nbytes = (nbits + 7) // 8
        _need(buf, pos, nbytes)
        bits = "".join(f"{b:08b}" for b in buf[pos : pos + nbytes])[:nbits]
        return Data(t, bits), pos + nbytes
    n, pos = decode_length(buf, pos)
    _need(buf, pos, n)
    raw = bytes(buf[pos : pos + n])
    if t == DataType.OCTET_STRING:
        return Data(t, raw), pos + n
    try:
        return Data(t, raw.decode("utf-8" if t == DataType.UTF8_STRING else "latin-1")), pos + n
    except UnicodeDecodeError:
        raise CodecError("bad UTF-8 string") from None


def _need(buf: bytes, pos: int, n: int) -> None:
    if n < 0 or pos + n > len(buf):
        raise CodecError("truncated data")


# --- date-time -----------------------------------------------------------------------------------

DEVIATION_UNSPECIFIED = -0x8000
CLOCK_STATUS_DST = 0x80


@dataclass(frozen=True, slots=True)
class CosemDateTime:
    """The 12-byte COSEM date-time; None in a field means 'not specified' (0xFF)."""

    year: int | None
    month: int | None
    day: int | None
    hour: int | None
    minute: int | None
    second: int | None
    hundredths: int | None
    deviation: int | None  # minutes, as on the wire (sign convention: see to_epoch_ms)
    status: int | None
    weekday: int | None = None

    def to_epoch_ms(self, zone: ZoneInfo, inverted: bool = False) -> int:
        """Epoch ms; the deviation, when given, wins over `zone`.

        Standard convention: deviation = UTC - local, in minutes (Europe/Paris winter: -60).
        `inverted` reads it as local - UTC, as some meters do.
        """
        if None in (self.year, self.month, self.day):
            raise CodecError("date not fully specified")
        hour, minute, second = self.hour or 0, self.minute or 0, self.second or 0
        hundredths = self.hundredths or 0
        try:
            local = datetime(self.year, self.month, self.day, hour, minute, second, hundredths * 10000)  # type: ignore[arg-type]
        except ValueError as exc:
            raise CodecError(f"bad date-time: {exc}") from None
        if self.deviation is not None:
            utc_minus_local = -self.deviation if inverted else self.deviation
            moment = local.replace(tzinfo=UTC) + timedelta(minutes=utc_minus_local)
        else:
            moment = local.replace(tzinfo=zone)
        return _epoch_ms(moment)

    def encode(self) -> bytes:
        return encode_datetime_fields(self)


def _epoch_ms(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000


def decode_datetime(raw: bytes) -> CosemDateTime:
    if len(raw) != 12:
        raise CodecError(f"a date-time is 12 bytes, not {len(raw)}")
    year = int.from_bytes(raw[0:2], "big")
    deviation = int.from_bytes(raw[9:11], "big", signed=True)

    def field_(v: int, hi: int) -> int | None:
        if v == 0xFF:
            return None
        if v > hi:
            raise CodecError("date-time field out of range")
        return v

    month = raw[2]
    if month in (0xFD, 0xFE):
        raise CodecError("a date-time with DST begin/end month is a schedule, not a time")
    if deviation != DEVIATION_UNSPECIFIED and not -840 <= deviation <= 840:
        raise CodecError("deviation out of range")
    return CosemDateTime(
        year=None if year == 0xFFFF else year,
        month=field_(month, 12),
        day=field_(raw[3], 31) if raw[3] not in (0xFD, 0xFE) else None,
        weekday=field_(raw[4], 7),
        hour=field_(raw[5], 23),
        minute=field_(raw[6], 59),
        second=field_(raw[7], 59),
        hundredths=field_(raw[8], 99),
        deviation=None if deviation == DEVIATION_UNSPECIFIED else deviation,
        status=None if raw[11] == 0xFF else raw[11],
    )


def encode_datetime_fields(dt: CosemDateTime) -> bytes:
    def b(v: int | None) -> int:
        return 0xFF if v is None else v

    out = bytearray()
    out += (0xFFFF if dt.year is None else dt.year).to_bytes(2, "big")
    out += bytes([b(dt.month), b(dt.day), b(dt.weekday), b(dt.hour), b(dt.minute), b(dt.second), b(dt.hundredths)])
    out += (DEVIATION_UNSPECIFIED if dt.deviation is None else dt.deviation).to_bytes(2, "big", signed=True)
    out.append(b(dt.status))
    return bytes(out)


def datetime_from_epoch_ms(
    ts_ms: int, zone: ZoneInfo, *, with_deviation: bool = True, inverted: bool = False, status: int | None = 0
) -> CosemDateTime:
    """The local time in `zone` of an instant, with its deviation (unless told not to give one)."""
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC).astimezone(zone)
    offset = moment.utcoffset() or timedelta(0)
    local_minus_utc = int(offset.total_seconds() // 60)
    deviation: int | None = None
    if with_deviation:
        deviation = local_minus_utc if inverted else -local_minus_utc
    dst = moment.dst()
    st = status
    if st is not None and dst:
        st |= CLOCK_STATUS_DST
    return CosemDateTime(
        year=moment.year,
        month=moment.month,
        day=moment.day,
        weekday=moment.isoweekday(),
        hour=moment.hour,
        minute=moment.minute,
        second=moment.second,
        hundredths=(ts_ms % 1000) // 10,
        deviation=deviation,
        status=st,
    )


# --- security suite 0 (AES-GCM-128) --------------------------------------------------------------

SC_AUTH = 0x10
SC_ENC = 0x20
SC_AUTH_ENC = 0x30
TAG_LEN = 12


class SecurityError(CodecError):
    """A protected APDU that does not authenticate or decrypt."""


def _gcm_encrypt(key: bytes, iv: bytes, aad: bytes, plaintext: bytes) -> tuple[bytes, bytes]:
    enc = Cipher(algorithms.AES(key), modes.GCM(iv)).encryptor()
    enc.authenticate_additional_data(aad)
    ct = enc.update(plaintext) + enc.finalize()
    return ct, enc.tag[:TAG_LEN]


def _gcm_decrypt(key: bytes, iv: bytes, aad: bytes, ciphertext: bytes, tag: bytes) -> bytes:
    dec = Cipher(algorithms.AES(key), modes.GCM(iv, tag, min_tag_length=TAG_LEN)).decryptor()
    dec.authenticate_additional_data(aad)
    try:
        return dec.update(ciphertext) + dec.finalize()
    except InvalidTag:
        raise SecurityError("authentication tag does not match (wrong key or tampered data)") from None


def protect(sc: int, system_title: bytes, ic: int, ek: bytes, ak: bytes, apdu: bytes) -> bytes:
    """SC || IC || (ciphertext or plaintext) || tag, as carried by a glo-* APDU."""
    if len(system_title) != 8:
        raise CodecError("a system title is 8 bytes")
    iv = system_title + ic.to_bytes(4, "big")
    header = bytes([sc]) + ic.to_bytes(4, "big")
    if sc & 0x30 == SC_AUTH_ENC:
        ct, tag = _gcm_encrypt(ek, iv, bytes([sc]) + ak, apdu)
        return header + ct + tag
    if sc & 0x30 == SC_AUTH:
        _, tag = _gcm_encrypt(ek, iv, bytes([sc]) + ak + apdu, b"")
        return header + apdu + tag
    if sc & 0x30 == SC_ENC:
        ct = Cipher(algorithms.AES(ek), modes.CTR(iv + b"\x00\x00\x00\x02")).encryptor().update(apdu)
        return header + ct
    raise CodecError(f"unsupported security control {sc:#x}")


def unprotect(system_title: bytes, ek: bytes, ak: bytes, body: bytes) -> tuple[int, int, bytes]:
    """SC || IC || payload -> (sc, ic, apdu); raises SecurityError when it does not authenticate."""
    if len(body) < 5:
        raise CodecError("protected APDU too short")
    sc = body[0]
    ic = int.from_bytes(body[1:5], "big")
    if sc & 0x0F:
        raise CodecError(f"security suite {sc & 0x0F} is not supported (suite 0 only)")
    iv = system_title + body[1:5]
    payload = body[5:]
    if sc & 0x30 == SC_AUTH_ENC:
        if len(payload) < TAG_LEN:
            raise CodecError("protected APDU too short")
        return sc, ic, _gcm_decrypt(ek, iv, bytes([sc]) + ak, payload[:-TAG_LEN], payload[-TAG_LEN:])
    if sc & 0x30 == SC_AUTH:
        if len(payload) < TAG_LEN:
            raise CodecError("protected APDU too short")
        apdu = payload[:-TAG_LEN]
        _gcm_decrypt(ek, iv, bytes([sc]) + ak + apdu, b"", payload[-TAG_LEN:])
        return sc, ic, apdu
    if sc & 0x30 == SC_ENC:
        return sc, ic, Cipher(algorithms.AES(ek), modes.CTR(iv + b"\x00\x00\x00\x02")).decryptor().update(payload)
    raise CodecError(f"unsupported security control {sc:#x}")


def gmac_challenge_reply(system_title: bytes, ic: int, ek: bytes, ak: bytes, challenge: bytes) -> bytes:
    """HLS-GMAC f(challenge) = SC(0x10) || IC || GMAC(SC || AK || challenge)."""
    iv = system_title + ic.to_bytes(4, "big")
    _, tag = _gcm_encrypt(ek, iv, bytes([SC_AUTH]) + ak + challenge, b"")
    return bytes([SC_AUTH]) + ic.to_bytes(4, "big") + tag


# Plain xDLMS tag -> its global-key ciphered tag (and back).
GLO_TAGS: dict[int, int] = {
    0x01: 0x21,  # initiate-request
    0x08: 0x28,  # initiate-response
    0xC0: 0xC8,  # get-request
    0xC1: 0xC9,  # set-request
    0xC3: 0xCB,  # action-request
    0xC4: 0xCC,  # get-response
    0xC5: 0xCD,  # set-response
    0xC7: 0xCF,  # action-response
    0x0E: 0x2E,  # confirmed-service-error (glo)
}
PLAIN_TAGS: dict[int, int] = {v: k for k, v in GLO_TAGS.items()}


def wrap_glo(apdu: bytes, protected: bytes) -> bytes:
    tag = GLO_TAGS.get(apdu[0]) if apdu else None
    if tag is None:
        raise CodecError("this APDU has no ciphered form")
    return bytes([tag]) + encode_length(len(protected)) + protected


def split_glo(apdu: bytes) -> tuple[int, bytes]:
    """A glo-* APDU -> (plain tag it stands for, SC || IC || payload)."""
    if not apdu or apdu[0] not in PLAIN_TAGS:
        raise CodecError("not a ciphered APDU")
    n, pos = decode_length(apdu, 1)
    if pos + n != len(apdu):
        raise CodecError("ciphered APDU length mismatch")
    return PLAIN_TAGS[apdu[0]], apdu[pos:]


# --- ACSE (AARQ / AARE / RLRQ / RLRE) ------------------------------------------------------------

CONTEXT_OID = bytes([0x60, 0x85, 0x74, 0x05, 0x08, 0x01])  # joint-iso-ctt ... application-context-name
MECHANISM_OID = bytes([0x60, 0x85, 0x74, 0x05, 0x08, 0x02])  # ... mechanism-name

CONTEXT_LN = 1
CONTEXT_SN = 2
CONTEXT_LN_CIPHERED = 3
CONTEXT_SN_CIPHERED = 4

MECH_NONE = 0
MECH_LOW = 1
MECH_HIGH = 2
MECH_HIGH_GMAC = 5

# AARE result and acse-service-user diagnostics
RESULT_ACCEPTED = 0
RESULT_REJECTED_PERMANENT = 1
RESULT_REJECTED_TRANSIENT = 2
DIAG_NULL = 0
DIAG_NO_REASON = 1
DIAG_CONTEXT_NOT_SUPPORTED = 2
DIAG_MECHANISM_NOT_RECOGNISED = 11
DIAG_MECHANISM_REQUIRED = 12
DIAG_AUTHENTICATION_FAILURE = 13
DIAG_AUTHENTICATION_REQUIRED = 14


def ber_items(buf: bytes) -> list[tuple[int, bytes]]:
    """The (tag, body) items of a BER-encoded sequence of components."""
    items = []
    pos = 0
    while pos < len(buf):
        tag = buf[pos]
        n, pos = decode_length(buf, pos + 1)
        if pos + n > len(buf):
            raise CodecError("BER component beyond the APDU")
        items.append((tag, bytes(buf[pos : pos + n])))
        pos += n
    return items


def ber(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + encode_length(len(body)) + body


def acse_fields(apdu: bytes, tag: int, name: str) -> list[tuple[int, bytes]]:
    """The tagged fields of an ACSE APDU (AARQ 0x60, AARE 0x61), after checking its header and length."""
    if len(apdu) < 2 or apdu[0] != tag:
        raise CodecError(f"not an {name}")
    n, pos = decode_length(apdu, 1)
    if pos + n != len(apdu):
        raise CodecError(f"{name} length mismatch")
    return ber_items(apdu[pos:])


def ber_single(body: bytes, what: str, tags: tuple[int, ...] | None = None) -> bytes:
    """The one inner item of a constructed field (optionally of an expected tag)."""
    inner = ber_items(body)
    if len(inner) != 1 or (tags is not None and inner[0][0] not in tags):
        raise CodecError(f"bad {what}")
    return inner[0][1]


def build_aarq(
    *,
    context: int = CONTEXT_LN,
    calling_ap_title: bytes | None = None,
    mechanism: int = MECH_NONE,
    auth_value: bytes | None = None,
    user_information: bytes,
) -> bytes:
    """An AARQ, as a client sends it (the daemon's client is gurux's; this one serves the tests)."""
    body = ber(0xA1, bytes([0x06, 0x07]) + CONTEXT_OID + bytes([context]))
    if calling_ap_title is not None:
        body += ber(0xA6, ber(0x04, calling_ap_title))
    if mechanism != MECH_NONE:
        body += bytes([0x8A, 0x02, 0x07, 0x80])
        body += ber(0x8B, MECHANISM_OID + bytes([mechanism]))
        if auth_value is not None:
            body += ber(0xAC, ber(0x80, auth_value))
    body += ber(0xBE, ber(0x04, user_information))
    return ber(0x60, body)


@dataclass(slots=True)
class Aare:
    context: int = CONTEXT_LN
    result: int = RESULT_ACCEPTED
    diagnostic: int = DIAG_NULL
    responding_ap_title: bytes | None = None
    mechanism: int = MECH_NONE
    stoc: bytes | None = None
    user_information: bytes | None = None


def parse_aare(apdu: bytes) -> Aare:
    out = Aare()
    for tag, body in acse_fields(apdu, 0x61, "AARE"):
        if tag == 0xA1:
            if len(body) != 9 or body[2:8] != CONTEXT_OID:
                raise CodecError("bad application-context-name")
            out.context = body[8]
        elif tag == 0xA2:
            if len(body) != 3 or body[0] != 0x02 or body[1] != 1:
                raise CodecError("bad result")
            out.result = body[2]
        elif tag == 0xA3:
            diagnostic = ber_single(body, "result-source-diagnostic")
            if len(diagnostic) != 3:
                raise CodecError("bad result-source-diagnostic")
            out.diagnostic = diagnostic[2]
        elif tag == 0xA4:
            out.responding_ap_title = ber_single(body, "responding-AP-title")
        elif tag == 0x89:
            if len(body) != 7:
                raise CodecError("bad mechanism-name")
            out.mechanism = body[6]
        elif tag == 0xAA:
            out.stoc = ber_single(body, "responding-authentication-value")
        elif tag == 0xBE:
            out.user_information = ber_single(body, "user-information", (0x04,))
    return out


def build_rlrq() -> bytes:
    return bytes([0x62, 0x03, 0x80, 0x01, 0x00])


# --- xDLMS initiate ------------------------------------------------------------------------------

# Conformance bits as numbered in the Green Book (bit 0 is the most significant of 24).
CONF_GENERAL_PROTECTION = 1
CONF_BLOCK_TRANSFER_GET = 11
CONF_BLOCK_TRANSFER_SET = 12
CONF_MULTIPLE_REFERENCES = 14
CONF_GET = 19
CONF_SET = 20
CONF_SELECTIVE_ACCESS = 21
CONF_ACTION = 23
CONF_PRIORITY_MGMT = 9


def conformance(*bits: int) -> int:
    value = 0
    for bit in bits:
        value |= 1 << (23 - bit)
    return value


def has_conformance(value: int, bit: int) -> bool:
    return bool(value & (1 << (23 - bit)))


def build_initiate_request(conf: int, max_pdu: int) -> bytes:
    return (
        bytes([0x01, 0x00, 0x00, 0x00, 0x06, 0x5F, 0x1F, 0x04, 0x00])
        + conf.to_bytes(3, "big")
        + max_pdu.to_bytes(2, "big")
    )


# --- xDLMS services ------------------------------------------------------------------------------

GET_REQUEST, SET_REQUEST, ACTION_REQUEST = 0xC0, 0xC1, 0xC3
GET_RESPONSE, SET_RESPONSE, ACTION_RESPONSE = 0xC4, 0xC5, 0xC7
EXCEPTION_RESPONSE = 0xD8

# data-access-result
DAR_SUCCESS = 0
DAR_HARDWARE_FAULT = 1
DAR_TEMPORARY_FAILURE = 2
DAR_READ_WRITE_DENIED = 3
DAR_OBJECT_UNDEFINED = 4
DAR_CLASS_INCONSISTENT = 9
DAR_OBJECT_UNAVAILABLE = 11
DAR_TYPE_UNMATCHED = 12
DAR_SCOPE_VIOLATED = 13
DAR_BLOCK_UNAVAILABLE = 14
DAR_LONG_GET_ABORTED = 15
DAR_NO_LONG_GET = 16
DAR_OTHER = 250

DAR_TEXT: dict[int, str] = {
    DAR_HARDWARE_FAULT: "hardware fault",
    DAR_TEMPORARY_FAILURE: "temporary failure",
    DAR_READ_WRITE_DENIED: "read-write denied",
    DAR_OBJECT_UNDEFINED: "object undefined",
    DAR_CLASS_INCONSISTENT: "object class inconsistent",
    DAR_OBJECT_UNAVAILABLE: "object unavailable",
    DAR_TYPE_UNMATCHED: "type unmatched",
    DAR_SCOPE_VIOLATED: "scope of access violated",
    DAR_BLOCK_UNAVAILABLE: "data block unavailable",
    DAR_LONG_GET_ABORTED: "long get aborted",
    DAR_NO_LONG_GET: "no long get in progress",
    DAR_OTHER: "other reason",
}
#: The Green Book's names of the data-access-result and action-result values (what a refusal says).
DAR_NAMES: dict[int, str] = {
    DAR_SUCCESS: "success",
    DAR_HARDWARE_FAULT: "hardware-fault",
    DAR_TEMPORARY_FAILURE: "temporary-failure",
    DAR_READ_WRITE_DENIED: "read-write-denied",
    DAR_OBJECT_UNDEFINED: "object-undefined",
    DAR_CLASS_INCONSISTENT: "object-class-inconsistent",
    DAR_OBJECT_UNAVAILABLE: "object-unavailable",
    DAR_TYPE_UNMATCHED: "type-unmatched",
    DAR_SCOPE_VIOLATED: "scope-of-access-violated",
    DAR_BLOCK_UNAVAILABLE: "data-block-unavailable",
    DAR_LONG_GET_ABORTED: "long-get-aborted",
    DAR_NO_LONG_GET: "no-long-get-in-progress",
    DAR_OTHER: "other-reason",
}
ACTION_RESULT_NAMES: dict[int, str] = {
    **DAR_NAMES,
    DAR_LONG_GET_ABORTED: "long-action-aborted",
    DAR_NO_LONG_GET: "no-long-action-in-progress",
}


@dataclass(frozen=True, slots=True)
class AttributeRef:
    class_id: int
    obis: bytes
    attribute: int

    @property
    def name(self) -> str:
        return f"{self.class_id}/{obis_text(self.obis)}/{self.attribute}"


@dataclass(frozen=True, slots=True)
class Access:
    """Selective access: selector 1 range_descriptor, 2 entry_descriptor, and its parameters."""

    selector: int
    parameters: Data


def build_get_request(invoke: int, ref: AttributeRef, access: Access | None = None) -> bytes:
    out = (
        bytes([GET_REQUEST, 1, invoke]) + ref.class_id.to_bytes(2, "big") + ref.obis + struct.pack(">b", ref.attribute)
    )
    if access is None:
        return out + b"\x00"
    return out + bytes([1, access.selector]) + encode_data(access.parameters)
