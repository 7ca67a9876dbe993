"""Shared encoding: OBIS, A-XDR data, date-time, security suite 0, the client-side APDUs, keys files.

What only the meter parses and builds is tested in test_server.py.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest
from gurux_dlms.enums import Authentication, InterfaceType, Security
from gurux_dlms.objects import GXDLMSRegister
from gurux_dlms.secure import GXDLMSSecureClient

from drivers.dlms import codec
from drivers.dlms.codec import CodecError, Data, DataType
from drivers.dlms.config import DlmsPoint, normalize_obis, parse_keys, physical_from_serial
from tests.dlms.util import KEYS, KEYS_TEXT

UTC = ZoneInfo("UTC")
PARIS = ZoneInfo("Europe/Paris")


def test_obis_forms() -> None:
    assert normalize_obis("1.0.1.8.0.255") == "1.0.1.8.0.255"
    assert normalize_obis("1-0:1.8.0*255") == "1.0.1.8.0.255"
    assert normalize_obis("1-0:32.7.0") == "1.0.32.7.0.255"
    assert codec.obis_bytes("1.0.99.1.0.255") == bytes([1, 0, 99, 1, 0, 255])
    assert codec.obis_text(bytes([0, 0, 1, 0, 0, 255])) == "0.0.1.0.0.255"
    for bad in ("1.0.1.8.0", "1.0.1.8.0.256", "abc", 5):
        with pytest.raises(ValueError):
            normalize_obis(bad)


def test_point_model_class_alias_and_profile_columns() -> None:
    p = DlmsPoint.model_validate({"id": "x", "obis": "1-0:1.8.0", "class": 3, "quantity": "active_energy_import"})
    assert p.class_id == 3 and p.attribute == 2 and p.obis == "1.0.1.8.0.255"
    assert (
        DlmsPoint.model_validate({"id": "x", "obis": "1.0.1.8.0.255", "class_id": 4, "quantity": "other"}).class_id == 4
    )
    lp = DlmsPoint.model_validate(
        {"id": "lp", "obis": "1.0.99.1.0.255", "class": 7, "column": "1-0:1.8.0*255", "quantity": "other"}
    )
    assert lp.column == "1.0.1.8.0.255" and lp.protocol_address()["column"] == "1.0.1.8.0.255"
    with pytest.raises(ValueError, match="column"):
        DlmsPoint.model_validate({"id": "lp", "obis": "1.0.99.1.0.255", "class": 7, "quantity": "other"})
    with pytest.raises(ValueError, match="class 71"):
        DlmsPoint.model_validate({"id": "x", "obis": "0.0.17.0.0.255", "class": 71, "quantity": "other"})
    with pytest.raises(ValueError, match="Clock"):
        DlmsPoint.model_validate({"id": "x", "obis": "1.0.1.8.0.255", "quantity": "clock_drift", "unit": "s"})


def test_physical_address_formula() -> None:
    assert physical_from_serial(12345678) == 6678
    assert physical_from_serial(3321) == 4321


def test_axdr_round_trip_and_known_encodings() -> None:
    value = codec.structure(codec.i8(-1), codec.enum(30))
    assert codec.encode_data(value) == bytes.fromhex("02020fff161e")
    assert codec.encode_data(codec.u32(1234567)) == bytes.fromhex("060012d687")
    assert codec.encode_data(Data(DataType.INT16, -5)) == bytes.fromhex("10fffb")
    big = codec.octets(bytes(300))
    assert codec.encode_data(big)[:4] == bytes.fromhex("09820" + "12c")
    samples = [
        codec.null(),
        Data(DataType.BOOLEAN, True),
        Data(DataType.INT64, -(2**40)),
        Data(DataType.UINT64, 2**63),
        Data(DataType.FLOAT64, 1.5),
        Data(DataType.VISIBLE_STRING, "SED302"),
        Data(DataType.BIT_STRING, "1011001"),
        codec.array([codec.structure(codec.u16(3), big) for _ in range(3)]),
    ]
    for d in samples:
        raw = codec.encode_data(d)
        back, end = codec.decode_data(raw)
        assert back == d and end == len(raw)


def test_axdr_decoding_errors() -> None:
    for raw in (b"", b"\x06\x00", b"\x01\x85\x00\x00\x00\x00\x01", b"\x63", b"\x02\x05\x00", b"\x09\x05ab"):
        with pytest.raises(CodecError):
            codec.decode_data(raw)
    deep = b"\x02\x01" * 40 + b"\x00"
    with pytest.raises(CodecError, match="deep"):
        codec.decode_data(deep)


def test_datetime_conventions() -> None:
    # 2026-01-15 13:00 in Paris (UTC+1): standard deviation = UTC - local = -60
    dt = codec.datetime_from_epoch_ms(1768478400000, PARIS)
    assert (dt.hour, dt.deviation, dt.status) == (13, -60, 0)
    raw = dt.encode()
    assert len(raw) == 12
    back = codec.decode_datetime(raw)
    assert back.to_epoch_ms(UTC) == 1768478400000
    # inverted meters give local - UTC
    inv = codec.datetime_from_epoch_ms(1768478400000, PARIS, inverted=True)
    assert inv.deviation == 60 and codec.decode_datetime(inv.encode()).to_epoch_ms(UTC, inverted=True) == 1768478400000
    # summer: DST flag in the status
    summer = codec.datetime_from_epoch_ms(1783000000000, PARIS)
    assert summer.deviation == -120 and summer.status == 0x80
    # no deviation: the configured zone decides
    plain = codec.datetime_from_epoch_ms(1768478400000, PARIS, with_deviation=False)
    assert codec.decode_datetime(plain.encode()).to_epoch_ms(PARIS) == 1768478400000
    with pytest.raises(CodecError):
        codec.decode_datetime(bytes.fromhex("ffff0101ff000000ff800000")).to_epoch_ms(UTC)
    with pytest.raises(CodecError):
        codec.decode_datetime(b"\x07\xea\x0d" + bytes(9))


def test_security_suite_0_matches_gurux() -> None:
    """What gurux's client sends ciphered, codec.unprotect opens; and our GMAC challenge matches."""
    c = GXDLMSSecureClient(True, 1, 1, Authentication.HIGH_GMAC, None, InterfaceType.PDU)
    c.ciphering.security = Security.AUTHENTICATION_ENCRYPTION
    c.ciphering.systemTitle = bytearray(KEYS.system_title)
    c.ciphering.blockCipherKey = bytearray(KEYS.encryption_key)
    c.ciphering.authenticationKey = bytearray(KEYS.authentication_key)
    c.ciphering.invocationCounter = 41
    c.aarqRequest()  # uses counter 41
    get = bytes(c.read(GXDLMSRegister("1.0.1.8.0.255"), 2)[0])
    tag, body = codec.split_glo(get)
    assert tag == codec.GET_REQUEST
    sc, ic, plain = codec.unprotect(KEYS.system_title, KEYS.encryption_key, KEYS.authentication_key, body)
    assert (sc, ic) == (0x30, 42)
    # the plain request is the GET gurux sends unciphered (invoke-id byte aside)
    assert plain[:2] == bytes([codec.GET_REQUEST, 1]) and plain[3:] == bytes.fromhex("00030100010800ff0200")
    # tampering is caught
    with pytest.raises(codec.SecurityError):
        codec.unprotect(KEYS.system_title, KEYS.encryption_key, KEYS.authentication_key, body[:-1] + b"\x00")
    # our protect / unprotect round trip, authenticated only
    sealed = codec.protect(
        codec.SC_AUTH, b"SEN00001", 7, KEYS.encryption_key, KEYS.authentication_key, b"\xc4\x01\xc1\x00\x00"
    )
    assert (
        codec.unprotect(b"SEN00001", KEYS.encryption_key, KEYS.authentication_key, sealed)[2] == b"\xc4\x01\xc1\x00\x00"
    )
    # f(challenge) as gurux computes it
    challenge = bytes(range(16))
    ours = codec.gmac_challenge_reply(KEYS.system_title, 9, KEYS.encryption_key, KEYS.authentication_key, challenge)
    c.ciphering.invocationCounter = 9
    assert ours == bytes(c.ciphering.generateGmacPassword(challenge))


def test_client_side_apdus_are_gurux_apdus() -> None:
    """The codec's client-side encoders say, byte for byte, what gurux's client says."""
    public = GXDLMSSecureClient(True, 16, 1, Authentication.NONE, None, InterfaceType.PDU)
    theirs = bytes(public.read(GXDLMSRegister("1.0.32.7.0.255"), 3)[0])
    ours = codec.build_get_request(theirs[2], codec.AttributeRef(3, codec.obis_bytes("1.0.32.7.0.255"), 3))
    assert ours == theirs
    # gurux's default proposal: general-protection, block transfer with get/set/action, multiple
    # references, attribute-0 with get, get, set, selective access, action (Green Book bits)
    conf = codec.conformance(
        codec.CONF_GENERAL_PROTECTION,
        codec.CONF_BLOCK_TRANSFER_GET,
        codec.CONF_BLOCK_TRANSFER_SET,
        13,
        codec.CONF_MULTIPLE_REFERENCES,
        17,
        codec.CONF_GET,
        codec.CONF_SET,
        codec.CONF_SELECTIVE_ACCESS,
        codec.CONF_ACTION,
    )
    initiate = codec.build_initiate_request(conf, 0xFFFF)
    assert codec.build_aarq(user_information=initiate) == bytes(public.aarqRequest()[0])
    lls = GXDLMSSecureClient(True, 1, 1, Authentication.LOW, "12345678", InterfaceType.PDU)
    aarq = codec.build_aarq(mechanism=codec.MECH_LOW, auth_value=b"12345678", user_information=initiate)
    assert aarq == bytes(lls.aarqRequest()[0])


def test_keys_file() -> None:
    keys = parse_keys(KEYS_TEXT + "# comment\ninvocation_counter = 0x10\n")
    assert (
        keys.system_title == b"EDG00001" and keys.encryption_key == bytes(range(16)) and keys.invocation_counter == 16
    )
    assert "D0D1" not in repr(keys) and "hidden" in repr(keys)
    with pytest.raises(ValueError, match="encryption_key is missing"):
        parse_keys("authentication_key = " + "00" * 16 + "\nsystem_title = 4142434445464748\n")
    with pytest.raises(ValueError, match="line 1") as err:
        parse_keys("secret_thing = 00112233\n")
    assert "00112233" not in str(err.value)
    with pytest.raises(ValueError, match="16 bytes"):
        parse_keys(KEYS_TEXT.replace("0E0F", "0E"))
