"""Pure encoding: OBIS, A-XDR data, date-time, security suite 0, ACSE and xDLMS APDUs, keys files."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest
from gurux_dlms import GXByteBuffer
from gurux_dlms.enums import Authentication, Conformance, InterfaceType, Security
from gurux_dlms.objects import GXDLMSProfileGeneric, GXDLMSRegister
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
    with pytest.raises(ValueError, match="class 70"):
        DlmsPoint.model_validate({"id": "x", "obis": "0.0.96.3.10.255", "class": 70, "quantity": "other"})
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
    aarq = bytes(c.aarqRequest()[0])
    req = codec.parse_aarq(aarq)
    assert req.mechanism == codec.MECH_HIGH_GMAC and req.context == codec.CONTEXT_LN_CIPHERED
    assert req.calling_ap_title == KEYS.system_title and req.auth_value is not None
    assert req.user_information is not None
    _, body = codec.split_glo(req.user_information)
    sc, ic, plain = codec.unprotect(KEYS.system_title, KEYS.encryption_key, KEYS.authentication_key, body)
    assert (sc, ic) == (0x30, 41)
    init = codec.parse_initiate_request(plain)
    assert init.version == 6 and init.max_pdu == 0xFFFF
    assert codec.has_conformance(init.conformance, codec.CONF_GET)
    # a ciphered GET
    get = bytes(c.read(GXDLMSRegister("1.0.1.8.0.255"), 2)[0])
    tag, body = codec.split_glo(get)
    assert tag == codec.GET_REQUEST
    _, ic, plain = codec.unprotect(KEYS.system_title, KEYS.encryption_key, KEYS.authentication_key, body)
    assert ic == 42
    request = codec.parse_request(plain)
    assert request.items[0][0].name == "3/1.0.1.8.0.255/2"
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


def test_gurux_requests_parse() -> None:
    c = GXDLMSSecureClient(True, 16, 1, Authentication.NONE, None, InterfaceType.PDU)
    req = codec.parse_request(bytes(c.read(GXDLMSRegister("1.0.32.7.0.255"), 3)[0]))
    assert (req.service, req.kind, req.items[0][0].attribute, req.items[0][1]) == (codec.GET_REQUEST, 1, 3, None)
    pg = GXDLMSProfileGeneric("1.0.99.1.0.255")
    import datetime as dt

    rng = bytes(c.readRowsByRange(pg, dt.datetime(2026, 1, 1), dt.datetime(2026, 1, 2))[0])
    req = codec.parse_request(rng)
    access = req.items[0][1]
    assert access is not None and access.selector == 1
    restricting, lo, hi, _cols = access.parameters.value
    assert codec.obis_text(restricting.value[1].value) == "0.0.1.0.0.255"
    assert codec.decode_datetime(lo.value).day == 1 and codec.decode_datetime(hi.value).day == 2
    items = [(GXDLMSRegister(f"1.0.{c_}.7.0.255"), 2) for c_ in (32, 52, 72)]
    c.negotiatedConformance = Conformance.MULTIPLE_REFERENCES
    (msgs,) = c.readList(items)
    req = codec.parse_request(bytes(msgs[0]))
    assert req.kind == 3 and [r.name for r, _ in req.items] == [f"3/1.0.{c_}.7.0.255/2" for c_ in (32, 52, 72)]
    # and the AARE we build is what gurux accepts
    aare = codec.build_aare(
        context=1, result=0, diagnostic=0, user_information=codec.build_initiate_response(0x1E1D, 512)
    )
    c.aarqRequest()
    c.parseAareResponse(GXByteBuffer(aare))
    assert c.settings.maxPduSize == 512


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
