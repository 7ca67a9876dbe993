"""The twin's server side (drivers/dlms/twin/server.py): what gurux's client sends parses, what we
build gurux's client accepts."""

from __future__ import annotations

import datetime as dt

from gurux_dlms import GXByteBuffer
from gurux_dlms.enums import Authentication, Conformance, InterfaceType, Security
from gurux_dlms.objects import GXDLMSProfileGeneric, GXDLMSRegister
from gurux_dlms.secure import GXDLMSSecureClient

from drivers.dlms import codec
from drivers.dlms.twin import server
from tests.dlms.util import KEYS


def test_gurux_hls_aarq_and_ciphered_get_parse() -> None:
    c = GXDLMSSecureClient(True, 1, 1, Authentication.HIGH_GMAC, None, InterfaceType.PDU)
    c.ciphering.security = Security.AUTHENTICATION_ENCRYPTION
    c.ciphering.systemTitle = bytearray(KEYS.system_title)
    c.ciphering.blockCipherKey = bytearray(KEYS.encryption_key)
    c.ciphering.authenticationKey = bytearray(KEYS.authentication_key)
    c.ciphering.invocationCounter = 41
    req = server.parse_aarq(bytes(c.aarqRequest()[0]))
    assert req.mechanism == codec.MECH_HIGH_GMAC and req.context == codec.CONTEXT_LN_CIPHERED
    assert req.calling_ap_title == KEYS.system_title and req.auth_value is not None
    assert req.user_information is not None
    _, body = codec.split_glo(req.user_information)
    sc, ic, plain = codec.unprotect(KEYS.system_title, KEYS.encryption_key, KEYS.authentication_key, body)
    assert (sc, ic) == (0x30, 41)
    init = server.parse_initiate_request(plain)
    assert init.version == 6 and init.max_pdu == 0xFFFF
    assert codec.has_conformance(init.conformance, codec.CONF_GET)
    tag, body = codec.split_glo(bytes(c.read(GXDLMSRegister("1.0.1.8.0.255"), 2)[0]))
    assert tag == codec.GET_REQUEST
    _, ic, plain = codec.unprotect(KEYS.system_title, KEYS.encryption_key, KEYS.authentication_key, body)
    assert ic == 42
    assert server.parse_request(plain).items[0][0].name == "3/1.0.1.8.0.255/2"


def test_gurux_requests_parse_and_our_aare_is_accepted() -> None:
    c = GXDLMSSecureClient(True, 16, 1, Authentication.NONE, None, InterfaceType.PDU)
    req = server.parse_request(bytes(c.read(GXDLMSRegister("1.0.32.7.0.255"), 3)[0]))
    assert (req.service, req.kind, req.items[0][0].attribute, req.items[0][1]) == (codec.GET_REQUEST, 1, 3, None)
    pg = GXDLMSProfileGeneric("1.0.99.1.0.255")
    rng = bytes(c.readRowsByRange(pg, dt.datetime(2026, 1, 1), dt.datetime(2026, 1, 2))[0])
    req = server.parse_request(rng)
    access = req.items[0][1]
    assert access is not None and access.selector == 1
    restricting, lo, hi, _cols = access.parameters.value
    assert codec.obis_text(restricting.value[1].value) == "0.0.1.0.0.255"
    assert codec.decode_datetime(lo.value).day == 1 and codec.decode_datetime(hi.value).day == 2
    items = [(GXDLMSRegister(f"1.0.{c_}.7.0.255"), 2) for c_ in (32, 52, 72)]
    c.negotiatedConformance = Conformance.MULTIPLE_REFERENCES
    (msgs,) = c.readList(items)
    req = server.parse_request(bytes(msgs[0]))
    assert req.kind == 3 and [r.name for r, _ in req.items] == [f"3/1.0.{c_}.7.0.255/2" for c_ in (32, 52, 72)]
    # and the AARE we build is what gurux accepts (and what the codec's client-side parser reads)
    aare = server.build_aare(
        context=1, result=0, diagnostic=0, user_information=server.build_initiate_response(0x1E1D, 512)
    )
    parsed = codec.parse_aare(aare)
    assert (parsed.result, parsed.diagnostic, parsed.context) == (codec.RESULT_ACCEPTED, codec.DIAG_NULL, 1)
    c.aarqRequest()
    c.parseAareResponse(GXByteBuffer(aare))
    assert c.settings.maxPduSize == 512


def test_set_and_action_requests_of_gurux_parse() -> None:
    from gurux_dlms.objects import GXDLMSDisconnectControl, GXDLMSScriptTable

    c = GXDLMSSecureClient(True, 16, 1, Authentication.NONE, None, InterfaceType.PDU)
    reg = GXDLMSRegister("1.0.96.50.0.255")
    reg.value = 7
    reg.setDataType(2, codec.DataType.UINT16)
    req = server.parse_request(bytes(c.write(reg, 2)[0]))
    assert req.service == codec.SET_REQUEST and req.value == codec.u16(7)
    req = server.parse_request(bytes(GXDLMSDisconnectControl("0.0.96.3.10.255").remoteDisconnect(c)[0]))
    assert req.service == codec.ACTION_REQUEST and req.items[0][0].name == "70/0.0.96.3.10.255/1"
    assert req.value == codec.Data(codec.DataType.INT8, 0)
    req = server.parse_request(bytes(GXDLMSScriptTable("0.0.10.0.1.255").execute(c, 1)[0]))
    assert req.items[0][0].name == "9/0.0.10.0.1.255/1" and req.value == codec.u16(1)
    # responses: a refused SET, an ACTION with return parameters, an exception
    assert server.build_set_response(0xC1, codec.DAR_READ_WRITE_DENIED) == bytes([0xC5, 1, 0xC1, 3])
    assert server.build_action_response(0xC1, 0, codec.u8(5)) == bytes([0xC7, 1, 0xC1, 0, 1, 0, 0x11, 5])
    assert server.build_exception_response(1, 2) == bytes([0xD8, 1, 2])
