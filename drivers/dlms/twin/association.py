"""The application layer of one client's association with a twin meter: ACSE, security, xDLMS.

No authentication (the public client 16), LLS (password in the AARQ) and HLS-GMAC (security
suite 0: ciphered APDUs, the StoC/CtoS challenge exchange, client invocation counters checked
for replay across associations); GET normal / with-list / with data blocks, SET, ACTION, RLRQ.
"""

from __future__ import annotations

import secrets
from typing import Literal

from drivers.dlms import codec
from drivers.dlms.codec import Data, DataType
from drivers.dlms.twin import server
from drivers.dlms.twin.meter import Meter
from drivers.dlms.twin.objects import ASSOCIATION_OBIS

_MECHANISMS = {"none": codec.MECH_NONE, "low": codec.MECH_LOW, "high_gmac": codec.MECH_HIGH_GMAC}


class Association:
    """One client's association with a meter (per connection and client address)."""

    def __init__(self, meter: Meter, client_sap: int) -> None:
        self.meter = meter
        self.client_sap = client_sap
        self.state: Literal["none", "pending", "associated"] = "none"
        self.ciphered = False
        self.client_title: bytes | None = None
        self.stoc = b""
        self.max_pdu = meter.max_pdu
        self.generation = meter.generation
        self._long: tuple[int, bytes, int] | None = None  # (invoke, raw, next block)
        self._long_pos = 0
        self._sc = codec.SC_AUTH_ENC
        self._ctos = b""

    # -- security ------------------------------------------------------------------------------

    def _next_server_ic(self) -> int:
        ic = self.meter.server_ic
        self.meter.server_ic += 1
        return ic

    def _protect(self, apdu: bytes) -> bytes:
        keys = self.meter.keys
        assert keys is not None
        body = codec.protect(
            self._sc,
            self.meter.server_title,
            self._next_server_ic(),
            keys.encryption_key,
            keys.authentication_key,
            apdu,
        )
        return codec.wrap_glo(apdu, body)

    def _unprotect(self, apdu: bytes) -> bytes | None:
        """A ciphered request -> plain; None when it must not be answered (bad tag or replayed IC)."""
        keys = self.meter.keys
        if keys is None or self.client_title is None:
            return None
        _, body = codec.split_glo(apdu)
        sc, ic, plain = codec.unprotect(self.client_title, keys.encryption_key, keys.authentication_key, body)
        last = self.meter.last_client_ic.get(self.client_title, -1)
        if ic <= last:
            self.meter.ic_violations += 1
            return None
        self.meter.last_client_ic[self.client_title] = ic
        self._sc = sc & 0x30
        return plain

    # -- entry point ---------------------------------------------------------------------------

    def handle(self, apdu: bytes) -> bytes | None:
        """A request APDU -> the response APDU (None: stay silent)."""
        self.meter.requests += 1
        if not apdu:
            return None
        if self.generation != self.meter.generation:
            self.state = "none"
            self.generation = self.meter.generation
        tag = apdu[0]
        try:
            if tag == 0x60:
                return self._aarq(apdu)
            if tag == 0x62:
                self.meter.releases += 1
                self.state = "none"
                self._long = None
                return server.RLRE
            ciphered = tag in codec.PLAIN_TAGS
            if self.state == "none" or self.ciphered != ciphered:
                return server.build_exception_response(1, 2)
            if not ciphered:
                self.meter.received.append(apdu)
                return self._service(apdu)
            try:
                plain = self._unprotect(apdu)
            except codec.CodecError:
                plain = None
            if plain is None:
                return server.build_exception_response(1, 3)
            self.meter.received.append(plain)
            answer = self._service(plain)
            return self._protect(answer) if answer[0] in codec.GLO_TAGS else answer
        except codec.CodecError:
            return server.build_exception_response(2, 2)

    # -- ACSE ----------------------------------------------------------------------------------

    def _reject(self, context: int, diagnostic: int) -> bytes:
        self.state = "none"
        return server.build_aare(context=context, result=codec.RESULT_REJECTED_PERMANENT, diagnostic=diagnostic)

    def _authentication_problem(self, req: server.Aarq) -> int | None:
        """The diagnostic that refuses this AARQ's authentication, or None when it may go on."""
        meter = self.meter
        mech = req.mechanism
        wanted = _MECHANISMS.get(meter.auth or "")
        if self.client_sap != 16 and wanted is not None and mech != wanted:
            return codec.DIAG_MECHANISM_NOT_RECOGNISED
        # The public client, and every client of a twin told `auth="none"`, needs no authentication.
        if self.client_sap == 16 or wanted == codec.MECH_NONE:
            return None if mech == codec.MECH_NONE else codec.DIAG_MECHANISM_NOT_RECOGNISED
        if mech == codec.MECH_LOW:
            if meter.password is None:
                return codec.DIAG_MECHANISM_NOT_RECOGNISED
            return None if req.auth_value == meter.password else codec.DIAG_AUTHENTICATION_FAILURE
        if mech == codec.MECH_HIGH_GMAC:
            if meter.keys is None or req.context != codec.CONTEXT_LN_CIPHERED:
                return codec.DIAG_MECHANISM_NOT_RECOGNISED
            if req.calling_ap_title is None or len(req.calling_ap_title) != 8 or not req.auth_value:
                return codec.DIAG_AUTHENTICATION_FAILURE
            return None
        return codec.DIAG_MECHANISM_REQUIRED if mech == 0 else codec.DIAG_MECHANISM_NOT_RECOGNISED

    def _user_information(self, req: server.Aarq) -> bytes | None:
        """The AARQ's InitiateRequest, deciphered for a ciphered context (None: it does not open)."""
        info = req.user_information
        if info is None or req.context != codec.CONTEXT_LN_CIPHERED:
            return info
        self.ciphered = True
        try:
            plain = self._unprotect(info) if info[:1] == b"\x21" else None
        except codec.CodecError:
            plain = None
        if plain is None:
            self.ciphered = False
        return plain

    def _aarq(self, apdu: bytes) -> bytes:
        self.state = "none"
        self._long = None
        self.ciphered = False
        try:
            req = server.parse_aarq(apdu)
        except codec.CodecError:
            return self._reject(codec.CONTEXT_LN, codec.DIAG_NO_REASON)
        if req.context not in (codec.CONTEXT_LN, codec.CONTEXT_LN_CIPHERED):
            return self._reject(codec.CONTEXT_LN, codec.DIAG_CONTEXT_NOT_SUPPORTED)
        problem = self._authentication_problem(req)
        if problem is not None:
            return self._reject(req.context, problem)
        if req.user_information is None:
            return self._reject(req.context, codec.DIAG_NO_REASON)
        self.client_title = req.calling_ap_title
        info = self._user_information(req)
        if info is None:
            return self._reject(req.context, codec.DIAG_AUTHENTICATION_FAILURE)
        try:
            init = server.parse_initiate_request(info)
        except codec.CodecError:
            return self._reject(req.context, codec.DIAG_NO_REASON)
        if init.version < 6:
            return server.build_aare(
                context=req.context,
                result=codec.RESULT_REJECTED_PERMANENT,
                diagnostic=codec.DIAG_NO_REASON,
                user_information=server.build_initiate_error(1),
            )
        return self._accept(req, init)

    def _accept(self, req: server.Aarq, init: server.InitiateRequest) -> bytes:
        meter = self.meter
        conf = init.conformance & meter.conformance
        self.max_pdu = max(64, min(init.max_pdu or 0xFFFF, meter.max_pdu))
        response = server.build_initiate_response(conf, meter.max_pdu)
        if self.ciphered:
            response = self._protect(response)
        if req.mechanism == codec.MECH_HIGH_GMAC:
            self.stoc = secrets.token_bytes(16)
            self.state = "pending"
            self._ctos = req.auth_value or b""
            return server.build_aare(
                context=req.context,
                result=codec.RESULT_ACCEPTED,
                diagnostic=codec.DIAG_AUTHENTICATION_REQUIRED,
                responding_ap_title=meter.server_title,
                mechanism=req.mechanism,
                stoc=self.stoc,
                user_information=response,
            )
        self.state = "associated"
        meter.associations += 1
        return server.build_aare(
            context=req.context,
            result=codec.RESULT_ACCEPTED,
            diagnostic=codec.DIAG_NULL,
            responding_ap_title=meter.server_title if self.ciphered else None,
            user_information=response,
        )

    # -- xDLMS services ------------------------------------------------------------------------

    def _service(self, apdu: bytes) -> bytes:
        req = server.parse_request(apdu)
        if self.state == "pending":
            if req.service == codec.ACTION_REQUEST:
                return self._hls_reply(req)
            return server.build_exception_response(1, 2)
        if req.service == codec.GET_REQUEST:
            return self._get(req)
        ref, _ = req.items[0]
        obis = codec.obis_text(ref.obis)
        if req.service == codec.SET_REQUEST:
            assert req.value is not None
            return server.build_set_response(
                req.invoke, self.meter.set_attribute(ref.class_id, obis, ref.attribute, req.value)
            )
        dar, value = self.meter.action(ref.class_id, obis, ref.attribute, req.value)
        return server.build_action_response(req.invoke, dar, value)

    def _hls_reply(self, req: server.Request) -> bytes:
        ref, _ = req.items[0]
        keys = self.meter.keys
        ok = False
        if (
            keys is not None
            and self.client_title is not None
            and ref.class_id == 15
            and codec.obis_text(ref.obis) == ASSOCIATION_OBIS
            and ref.attribute == 1
            and req.value is not None
            and req.value.type == DataType.OCTET_STRING
            and len(req.value.value) == 17
        ):
            f_stoc: bytes = req.value.value
            ic = int.from_bytes(f_stoc[1:5], "big")
            expected = codec.gmac_challenge_reply(
                self.client_title, ic, keys.encryption_key, keys.authentication_key, self.stoc
            )
            ok = secrets.compare_digest(expected, f_stoc)
        if not ok:
            self.state = "none"
            return server.build_action_response(req.invoke, codec.DAR_OTHER)
        assert keys is not None
        self.state = "associated"
        self.meter.associations += 1
        f_ctos = codec.gmac_challenge_reply(
            self.meter.server_title, self._next_server_ic(), keys.encryption_key, keys.authentication_key, self._ctos
        )
        return server.build_action_response(req.invoke, codec.DAR_SUCCESS, codec.octets(f_ctos))

    def _room(self) -> int:
        """Bytes of raw data one GET-response-with-datablock may carry."""
        overhead = 4 + 4 + 1 + 3 + (5 + codec.TAG_LEN + 4 if self.ciphered else 0)
        return max(16, self.max_pdu - overhead)

    def _get(self, req: server.Request) -> bytes:
        t_ms = self.meter.now_ms()
        if req.kind == 2:
            if self._long is None:
                return server.build_get_response_block_error(req.invoke, req.block, codec.DAR_NO_LONG_GET)
            _, _raw, block = self._long
            if req.block != block - 1:
                self._long = None
                return server.build_get_response_block_error(req.invoke, req.block, codec.DAR_LONG_GET_ABORTED)
            return self._next_block(req.invoke)
        self._long = None
        if req.kind == 1:
            ref, access = req.items[0]
            result = self.meter.attribute(ref.class_id, codec.obis_text(ref.obis), ref.attribute, access, t_ms)
            answer = server.build_get_response_normal(req.invoke, result)
            if len(answer) + (40 if self.ciphered else 0) <= self.max_pdu:
                return answer
            assert isinstance(result, Data)
            return self._start_blocks(req.invoke, codec.encode_data(result))
        results = [
            self.meter.attribute(ref.class_id, codec.obis_text(ref.obis), ref.attribute, access, t_ms)
            for ref, access in req.items
        ]
        answer = server.build_get_response_list(req.invoke, results)
        if len(answer) + (40 if self.ciphered else 0) <= self.max_pdu:
            return answer
        return self._start_blocks(req.invoke, answer[3:])

    def _start_blocks(self, invoke: int, raw: bytes) -> bytes:
        self._long = (invoke, raw, 1)
        self._long_pos = 0
        return self._next_block(invoke)

    def _next_block(self, invoke: int) -> bytes:
        assert self._long is not None
        inv, raw, block = self._long
        chunk = raw[self._long_pos : self._long_pos + self._room()]
        self._long_pos += len(chunk)
        last = self._long_pos >= len(raw)
        self._long = None if last else (inv, raw, block + 1)
        return server.build_get_response_block(invoke, last, block, chunk)
