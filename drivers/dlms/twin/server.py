"""What only a meter parses and builds: AARQ in, AARE out, the initiate response, xDLMS requests in,
GET/SET/ACTION/exception responses out.

The shared primitives (A-XDR, date-time, security, the BER helpers, the vocabulary of contexts,
mechanisms and data-access-results) are :mod:`drivers.dlms.codec`'s. Every parser here raises
:class:`~drivers.dlms.codec.CodecError` and nothing else on malformed input (tests/dlms/test_fuzz.py).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from drivers.dlms import codec
from drivers.dlms.codec import (
    ACTION_REQUEST,
    ACTION_RESPONSE,
    CONTEXT_LN,
    CONTEXT_OID,
    EXCEPTION_RESPONSE,
    GET_REQUEST,
    GET_RESPONSE,
    MECH_NONE,
    MECHANISM_OID,
    SET_REQUEST,
    SET_RESPONSE,
    Access,
    AttributeRef,
    CodecError,
    Data,
    ber,
    ber_single,
    decode_data,
    decode_length,
    encode_data,
    encode_length,
)

# --- ACSE ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Aarq:
    context: int = CONTEXT_LN
    calling_ap_title: bytes | None = None
    mechanism: int = MECH_NONE
    auth_value: bytes | None = None
    user_information: bytes | None = None


def parse_aarq(apdu: bytes) -> Aarq:
    out = Aarq()
    for tag, body in codec.acse_fields(apdu, 0x60, "AARQ"):
        if tag == 0xA1:
            if len(body) != 9 or body[0] != 0x06 or body[1] != 7 or body[2:8] != CONTEXT_OID:
                raise CodecError("bad application-context-name")
            out.context = body[8]
        elif tag == 0xA6:
            out.calling_ap_title = ber_single(body, "calling-AP-title", (0x04,))
        elif tag == 0x8B:
            if len(body) != 7 or body[:6] != MECHANISM_OID:
                raise CodecError("bad mechanism-name")
            out.mechanism = body[6]
        elif tag == 0xAC:
            out.auth_value = ber_single(body, "calling-authentication-value", (0x80, 0x81))
        elif tag == 0xBE:
            out.user_information = ber_single(body, "user-information", (0x04,))
        # protocol-version, called-AP-title, sender-acse-requirements ...: not needed by a server
    return out


def build_aare(
    *,
    context: int,
    result: int,
    diagnostic: int,
    responding_ap_title: bytes | None = None,
    mechanism: int = MECH_NONE,
    stoc: bytes | None = None,
    user_information: bytes | None = None,
) -> bytes:
    body = ber(0xA1, bytes([0x06, 0x07]) + CONTEXT_OID + bytes([context]))
    body += ber(0xA2, bytes([0x02, 0x01, result]))
    body += ber(0xA3, ber(0xA1, bytes([0x02, 0x01, diagnostic])))
    if responding_ap_title is not None:
        body += ber(0xA4, ber(0x04, responding_ap_title))
    if mechanism != MECH_NONE and stoc is not None:
        body += bytes([0x88, 0x02, 0x07, 0x80])
        body += ber(0x89, MECHANISM_OID + bytes([mechanism]))
        body += ber(0xAA, ber(0x80, stoc))
    if user_information is not None:
        body += ber(0xBE, ber(0x04, user_information))
    return ber(0x61, body)


RLRE = bytes([0x63, 0x03, 0x80, 0x01, 0x00])


# --- xDLMS initiate -----------------------------------------------------------------------------


@dataclass(slots=True)
class InitiateRequest:
    dedicated_key: bytes | None
    version: int
    conformance: int
    max_pdu: int


def _need(buf: bytes, pos: int, n: int) -> None:
    if n < 0 or pos + n > len(buf):
        raise CodecError("truncated data")


def parse_initiate_request(buf: bytes) -> InitiateRequest:
    if not buf or buf[0] != 0x01:
        raise CodecError("not an InitiateRequest")
    pos = 1
    _need(buf, pos, 1)
    key: bytes | None = None
    if buf[pos]:
        n, pos = decode_length(buf, pos + 1)
        _need(buf, pos, n)
        key = bytes(buf[pos : pos + n])
        pos += n
    else:
        pos += 1
    for _ in range(2):  # response-allowed, proposed-quality-of-service: flag (+ one byte)
        _need(buf, pos, 1)
        pos += 2 if buf[pos] else 1
    _need(buf, pos, 1 + 7 + 2)
    version = buf[pos]
    pos += 1
    if buf[pos : pos + 4] != bytes([0x5F, 0x1F, 0x04, 0x00]):
        raise CodecError("bad conformance block")
    conf = int.from_bytes(buf[pos + 4 : pos + 7], "big")
    pos += 7
    max_pdu = int.from_bytes(buf[pos : pos + 2], "big")
    return InitiateRequest(key, version, conf, max_pdu)


def build_initiate_response(conf: int, max_pdu: int) -> bytes:
    return (
        bytes([0x08, 0x00, 0x06, 0x5F, 0x1F, 0x04, 0x00])
        + conf.to_bytes(3, "big")
        + max_pdu.to_bytes(2, "big")
        + bytes([0x00, 0x07])
    )


def build_initiate_error(error: int = 1) -> bytes:
    """confirmed-service-error: initiate-error, service error 6 (initiate), value `error`."""
    return bytes([0x0E, 0x01, 0x06, error])


# --- xDLMS requests -----------------------------------------------------------------------------


@dataclass(slots=True)
class Request:
    """A parsed xDLMS request (GET/SET/ACTION), what a server acts on.

    For an ACTION the item's attribute is the method id.
    """

    service: int  # GET_REQUEST, SET_REQUEST or ACTION_REQUEST
    kind: int  # 1 normal, 2 next (GET) / first block (SET), 3 with-list
    invoke: int
    items: list[tuple[AttributeRef, Access | None]] = field(default_factory=list)
    block: int = 0
    value: Data | None = None  # SET value / ACTION parameter


def _descriptor(buf: bytes, pos: int) -> tuple[AttributeRef, int]:
    _need(buf, pos, 9)
    class_id = int.from_bytes(buf[pos : pos + 2], "big")
    obis = bytes(buf[pos + 2 : pos + 8])
    attr = struct.unpack_from(">b", buf, pos + 8)[0]
    return AttributeRef(class_id, obis, attr), pos + 9


def _access(buf: bytes, pos: int) -> tuple[Access | None, int]:
    _need(buf, pos, 1)
    if buf[pos] == 0:
        return None, pos + 1
    _need(buf, pos, 2)
    selector = buf[pos + 1]
    params, pos = decode_data(buf, pos + 2)
    return Access(selector, params), pos


def _parse_get(apdu: bytes, req: Request, pos: int) -> int:
    if req.kind == 1:
        ref, pos = _descriptor(apdu, pos)
        acc, pos = _access(apdu, pos)
        req.items.append((ref, acc))
    elif req.kind == 2:
        _need(apdu, pos, 4)
        req.block = int.from_bytes(apdu[pos : pos + 4], "big")
        pos += 4
    elif req.kind == 3:
        count, pos = decode_length(apdu, pos)
        if count == 0 or count * 10 > len(apdu) - pos:
            raise CodecError("bad GET-with-list count")
        for _ in range(count):
            ref, pos = _descriptor(apdu, pos)
            acc, pos = _access(apdu, pos)
            req.items.append((ref, acc))
    else:
        raise CodecError(f"unsupported GET request type {req.kind}")
    return pos


def parse_request(apdu: bytes) -> Request:
    if len(apdu) < 3:
        raise CodecError("request too short")
    service, kind, invoke = apdu[0], apdu[1], apdu[2]
    pos = 3
    req = Request(service, kind, invoke)
    if service == GET_REQUEST:
        pos = _parse_get(apdu, req, pos)
    elif service == SET_REQUEST:
        if kind != 1:
            raise CodecError(f"unsupported SET request type {kind}")
        ref, pos = _descriptor(apdu, pos)
        acc, pos = _access(apdu, pos)
        req.items.append((ref, acc))
        req.value, pos = decode_data(apdu, pos)
    elif service == ACTION_REQUEST:
        if kind != 1:
            raise CodecError(f"unsupported ACTION request type {kind}")
        ref, pos = _descriptor(apdu, pos)
        req.items.append((ref, None))
        _need(apdu, pos, 1)
        if apdu[pos]:
            req.value, pos = decode_data(apdu, pos + 1)
        else:
            pos += 1
    else:
        raise CodecError(f"unsupported service {service:#x}")
    if pos != len(apdu):
        raise CodecError("trailing bytes after the request")
    return req


# --- xDLMS responses ----------------------------------------------------------------------------

Result = Data | int  # a value, or a data-access-result code


def build_get_response_normal(invoke: int, result: Result) -> bytes:
    if isinstance(result, Data):
        return bytes([GET_RESPONSE, 1, invoke, 0]) + encode_data(result)
    return bytes([GET_RESPONSE, 1, invoke, 1, result])


def build_get_response_list(invoke: int, results: Sequence[Result]) -> bytes:
    out = bytearray([GET_RESPONSE, 3, invoke])
    out += encode_length(len(results))
    for r in results:
        if isinstance(r, Data):
            out.append(0)
            out += encode_data(r)
        else:
            out += bytes([1, r])
    return bytes(out)


def build_get_response_block(invoke: int, last: bool, block: int, raw: bytes) -> bytes:
    return (
        bytes([GET_RESPONSE, 2, invoke, 1 if last else 0])
        + block.to_bytes(4, "big")
        + b"\x00"
        + encode_length(len(raw))
        + raw
    )


def build_get_response_block_error(invoke: int, block: int, dar: int) -> bytes:
    return bytes([GET_RESPONSE, 2, invoke, 1]) + block.to_bytes(4, "big") + bytes([1, dar])


def build_set_response(invoke: int, dar: int) -> bytes:
    return bytes([SET_RESPONSE, 1, invoke, dar])


def build_action_response(invoke: int, dar: int, value: Data | None = None) -> bytes:
    out = bytes([ACTION_RESPONSE, 1, invoke, dar])
    if value is None:
        return out + b"\x00"
    return out + b"\x01\x00" + encode_data(value)


def build_exception_response(state_error: int = 1, service_error: int = 2) -> bytes:
    """state-error 1 service-not-allowed / 2 service-unknown; service-error 1 operation-not-possible,
    2 service-not-supported, 3 other-reason."""
    return bytes([EXCEPTION_RESPONSE, state_error, service_error])
