"""The DLMS/COSEM meter twin: `edgegw simulate <dlms-profile> --port N | --serial DEV`.

Its own COSEM server (gurux's server class is incomplete in the published release): ACSE with no
authentication, LLS and HLS-GMAC (security suite 0 ciphering), GET normal / with-list / with
data blocks, selective access by range and by entry on profile buffers, SET on the clock, ACTION
for the HLS reply, RLRQ; HDLC (SNRM/UA/I/RR/DISC with segmentation and windows) on a serial
device or TCP, with several physical addresses on one line; the TCP wrapper; the IEC 62056-21
mode E opening on an optical line. A simulated clock (time acceleration, a fixed "now",
`advance()`) drives the registers and fills the load profile every capture period.

Python API for tests::

    async with DlmsTwin("sensemi-sed302", transport="wrapper") as twin:
        twin.port; twin.advance(hours=24); twin.kill(); twin.slow(2.0); twin.corrupt()
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from drivers.dlms import codec, hdlc
from drivers.dlms.codec import Data, DataType
from drivers.dlms.config import CLOCK_OBIS, DlmsKeys, normalize_obis, parse_keys

ASSOCIATION_OBIS = "0.0.40.0.0.255"
EPOCH_2024 = 1704067200.0  # counters start here, so their values stay plausible
SUPPORTED_CONFORMANCE = codec.conformance(
    codec.CONF_BLOCK_TRANSFER_GET,
    codec.CONF_MULTIPLE_REFERENCES,
    codec.CONF_GET,
    codec.CONF_SET,
    codec.CONF_SELECTIVE_ACCESS,
    codec.CONF_ACTION,
    codec.CONF_PRIORITY_MGMT,
)
DEFAULT_SERVER_TITLE = b"SEN00001"


# --- simulated time -----------------------------------------------------------------------------


class SimClock:
    """Wall-clock time, shifted, accelerated or frozen on demand."""

    def __init__(self, start: float | None = None, speed: float = 1.0) -> None:
        self._base = time.time() if start is None else start
        self._mono = time.monotonic()
        self.speed = speed
        self.frozen = False

    def now(self) -> float:
        if self.frozen:
            return self._base
        return self._base + (time.monotonic() - self._mono) * self.speed

    def set(self, t: float) -> None:
        self._base = t
        self._mono = time.monotonic()

    def advance(self, seconds: float) -> None:
        self.set(self.now() + seconds)

    def freeze(self, at: float | None = None) -> None:
        self.set(self.now() if at is None else at)
        self.frozen = True

    def run(self, speed: float | None = None) -> None:
        self.set(self.now())
        self.frozen = False
        if speed is not None:
            self.speed = speed


# --- objects ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Signal:
    """A raw value as a function of time: constant, a wave between min and max, or a counter."""

    value: float = 0
    minimum: float | None = None
    maximum: float | None = None
    period: float = 3600.0
    rate: float = 0.0  # raw units per hour: a counter
    integer: bool = True

    def at(self, t: float) -> int | float:
        if self.rate:
            v: float = self.value + self.rate * max(0.0, t - EPOCH_2024) / 3600.0
            return math.floor(v) if self.integer else v
        if self.minimum is not None and self.maximum is not None:
            mid = (self.minimum + self.maximum) / 2
            amp = (self.maximum - self.minimum) / 2
            v = mid + amp * math.sin(2 * math.pi * t / max(self.period, 1.0))
            return round(v) if self.integer else v
        return int(self.value) if self.integer else float(self.value)


@dataclass(slots=True)
class TwinObject:
    """One COSEM object the twin serves."""

    class_id: int
    obis: str
    signal: Signal | None = None
    dtype: DataType = DataType.UINT32
    scaler: int = 0
    unit: int = 255
    text: str | bytes | None = None
    # Profile generic: captured columns (class, obis, attribute); the clock is added first.
    columns: list[tuple[int, str, int]] = field(default_factory=list)
    capture_period: int = 900  # seconds; 0 = monthly (billing)
    capacity: int = 9600
    override: Any = None  # a raw value set by a test

    def raw(self, t: float) -> int | float | None:
        if self.override is not None:
            return self.override  # type: ignore[no-any-return]
        return self.signal.at(t) if self.signal is not None else 0


def _typed(dtype: DataType, raw: int | float | None) -> Data:
    if raw is None:
        return codec.null()
    if dtype in (DataType.FLOAT32, DataType.FLOAT64):
        return Data(dtype, float(raw))
    return Data(dtype, int(raw))


def _month_start(ts: float, zone: ZoneInfo, back: int = 0) -> float:
    d = datetime.fromtimestamp(ts, tz=zone)
    y, m = d.year, d.month - back
    while m < 1:
        m += 12
        y -= 1
    return datetime(y, m, 1, tzinfo=zone).timestamp()


class Meter:
    """One logical device: its objects, its clock and its security material."""

    def __init__(
        self,
        objects: Sequence[TwinObject],
        clock: SimClock,
        *,
        physical: int = 17,
        logical: int = 1,
        password: str | None = None,
        keys: DlmsKeys | None = None,
        server_title: bytes = DEFAULT_SERVER_TITLE,
        max_pdu: int = 512,
        timezone: str = "UTC",
    ) -> None:
        self.clock = clock
        self.physical = physical
        self.logical = logical
        self.password = password.encode() if password is not None else None
        self.keys = keys
        self.server_title = server_title
        self.max_pdu = max_pdu
        self.zone = ZoneInfo(timezone)
        self.objects: dict[str, TwinObject] = {}
        for obj in objects:
            self.objects[obj.obis] = obj
        self.objects.setdefault(CLOCK_OBIS, TwinObject(8, CLOCK_OBIS))
        self.objects.setdefault(ASSOCIATION_OBIS, TwinObject(15, ASSOCIATION_OBIS))
        for obj in list(self.objects.values()):
            if obj.class_id == 7 and not any(c[1] == CLOCK_OBIS for c in obj.columns):
                obj.columns.insert(0, (8, CLOCK_OBIS, 2))
        # liveness and fault injection
        self.dead = False
        self.delay = 0.0
        self.corrupt = False
        # security state that outlives connections
        self.server_ic = 1
        self.last_client_ic: dict[bytes, int] = {}
        self.ic_violations = 0
        self.associations = 0
        self.requests = 0
        self.sets = 0
        self.generation = 0  # bumps to drop every open association
        self.conformance = SUPPORTED_CONFORMANCE
        self.auth: str | None = None  # the one mechanism the management client must use, if set
        self.releases = 0
        self.disconnects = 0
        self.pending = 0  # answers being held back by slow()

    def now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    # -- attribute values --------------------------------------------------------------------------

    def datetime_octets(self, ts_ms: int) -> bytes:
        return codec.datetime_from_epoch_ms(ts_ms, self.zone).encode()

    def attribute(self, class_id: int, obis: str, attr: int, access: codec.Access | None, t_ms: int) -> Data | int:
        obj = self.objects.get(obis)
        if obj is None:
            return codec.DAR_OBJECT_UNDEFINED
        if obj.class_id != class_id:
            return codec.DAR_CLASS_INCONSISTENT
        if attr == 1:
            return codec.octets(codec.obis_bytes(obis))
        if obj.class_id == 7 and attr == 2:
            return self.buffer(obj, access, t_ms)
        if access is not None:
            return codec.DAR_OTHER
        return self.value(obj, attr, t_ms)

    def value(self, obj: TwinObject, attr: int, t_ms: int) -> Data | int:
        t = t_ms / 1000
        cid = obj.class_id
        if cid == 1 and attr == 2:
            if obj.text is not None:
                if isinstance(obj.text, bytes) or obj.dtype == DataType.OCTET_STRING:
                    raw = obj.text if isinstance(obj.text, bytes) else obj.text.encode()
                    return codec.octets(raw)
                return Data(DataType.VISIBLE_STRING, obj.text)
            return _typed(obj.dtype, obj.raw(t))
        if cid in (3, 4) and attr == 2:
            return _typed(obj.dtype, obj.raw(t))
        if (cid in (3, 4) and attr == 3) or (cid == 5 and attr == 4):
            return codec.structure(codec.i8(obj.scaler), codec.enum(obj.unit))
        if cid == 4 and attr == 4:
            return codec.u8(0)
        if cid == 4 and attr == 5:
            return codec.octets(self.datetime_octets(int(t // 900 * 900 * 1000)))
        if cid == 5:
            period = 900
            start = t // period * period
            if attr == 2:
                return _typed(obj.dtype, obj.raw(t))
            if attr == 3:
                return _typed(obj.dtype, obj.raw(start))
            if attr == 5:
                return codec.u8(0)
            if attr == 6:
                return codec.octets(self.datetime_octets(int(start * 1000)))
            if attr == 7:
                return codec.octets(self.datetime_octets(int(start * 1000)))
            if attr == 8:
                return codec.u32(period)
            if attr == 9:
                return codec.u16(1)
        if cid == 8:
            if attr == 2:
                return codec.octets(self.datetime_octets(t_ms))
            if attr == 3:
                dt = codec.datetime_from_epoch_ms(t_ms, self.zone)
                return Data(DataType.INT16, dt.deviation or 0)
            if attr == 4:
                return codec.u8(0)
            if attr == 9:
                return codec.enum(1)
        if cid == 7:
            if attr == 3:
                return codec.array(
                    [
                        codec.structure(codec.u16(c), codec.octets(codec.obis_bytes(o)), codec.i8(a), codec.u16(0))
                        for c, o, a in obj.columns
                    ]
                )
            if attr == 4:
                return codec.u32(obj.capture_period)
            if attr == 5:
                return codec.enum(1)
            if attr == 6:
                return codec.structure(
                    codec.u16(8), codec.octets(codec.obis_bytes(CLOCK_OBIS)), codec.i8(2), codec.u16(0)
                )
            if attr == 7:
                return codec.u32(len(self.entry_times(obj, t_ms)))
            if attr == 8:
                return codec.u32(obj.capacity)
        if cid == 15 and attr == 2:
            return self.object_list()
        return codec.DAR_OBJECT_UNDEFINED

    def object_list(self) -> Data:
        attrs = {1: 2, 3: 3, 4: 5, 5: 9, 7: 8, 8: 9, 15: 2}
        items = []
        for obj in self.objects.values():
            access = codec.array(
                [
                    codec.structure(codec.i8(a), codec.enum(1), codec.null())
                    for a in range(1, attrs.get(obj.class_id, 2) + 1)
                ]
            )
            items.append(
                codec.structure(
                    codec.u16(obj.class_id),
                    codec.u8(0),
                    codec.octets(codec.obis_bytes(obj.obis)),
                    codec.structure(access, codec.array([])),
                )
            )
        return codec.array(items)

    # -- profiles ----------------------------------------------------------------------------------

    def entry_times(self, obj: TwinObject, t_ms: int) -> list[int]:
        """Capture times (ms) of the buffer's entries, oldest first."""
        t = t_ms / 1000
        if obj.capture_period <= 0:
            return [int(_month_start(t, self.zone, back) * 1000) for back in range(obj.capacity - 1, -1, -1)]
        p = obj.capture_period
        last = math.floor(t / p) * p
        return [int((last - k * p) * 1000) for k in range(obj.capacity - 1, -1, -1)]

    def _range_times(self, obj: TwinObject, t_ms: int, lo: int, hi: int) -> list[int]:
        if obj.capture_period <= 0:
            return [x for x in self.entry_times(obj, t_ms) if lo <= x <= hi]
        p = obj.capture_period * 1000
        last = t_ms // p * p
        first = last - (obj.capacity - 1) * p
        lo = max(lo, first)
        hi = min(hi, last)
        if lo > hi:
            return []
        start = -(-lo // p) * p
        return list(range(start, hi + 1, p))

    def _column(self, col: tuple[int, str, int], ts_ms: int) -> Data:
        cid, obis, attr = col
        if cid == 8 and attr == 2:
            return codec.octets(self.datetime_octets(ts_ms))
        target = self.objects.get(obis)
        if target is None:
            return codec.null()
        value = self.value(target, attr, ts_ms)
        return value if isinstance(value, Data) else codec.null()

    def buffer(self, obj: TwinObject, access: codec.Access | None, t_ms: int) -> Data | int:
        columns = list(range(len(obj.columns)))
        if access is None:
            times = self.entry_times(obj, t_ms)
        elif access.selector == 1:
            try:
                _restricting, lo_d, hi_d, selected = access.parameters.value
                lo = self._selective_time(lo_d)
                hi = self._selective_time(hi_d)
            except (TypeError, ValueError, AttributeError):
                return codec.DAR_OTHER
            times = self._range_times(obj, t_ms, lo, hi)
            if selected.value:
                wanted = []
                for item in selected.value:
                    c, o, a = item.value[0].value, codec.obis_text(item.value[1].value), item.value[2].value
                    matches = [k for k, col in enumerate(obj.columns) if col == (c, o, a)]
                    if not matches:
                        return codec.DAR_OTHER
                    wanted.append(matches[0])
                columns = wanted
        elif access.selector == 2:
            try:
                first, last, col_from, col_to = (d.value for d in access.parameters.value)
            except (TypeError, ValueError, AttributeError):
                return codec.DAR_OTHER
            all_times = self.entry_times(obj, t_ms)
            last = len(all_times) if last == 0 else min(last, len(all_times))
            times = all_times[max(first, 1) - 1 : last]
            col_to = len(obj.columns) if col_to == 0 else min(col_to, len(obj.columns))
            columns = list(range(max(col_from, 1) - 1, col_to))
        else:
            return codec.DAR_OTHER
        rows = [codec.structure(*(self._column(obj.columns[k], ts) for k in columns)) for ts in times]
        return codec.array(rows)

    def _selective_time(self, d: Data) -> int:
        if d.type not in (DataType.OCTET_STRING, DataType.DATETIME):
            raise ValueError("not a date-time")
        return codec.decode_datetime(d.value).to_epoch_ms(self.zone)

    def set_attribute(self, class_id: int, obis: str, attr: int, value: Data) -> int:
        obj = self.objects.get(obis)
        if obj is None:
            return codec.DAR_OBJECT_UNDEFINED
        if obj.class_id != class_id:
            return codec.DAR_CLASS_INCONSISTENT
        if class_id == 8 and attr == 2:
            if value.type not in (DataType.OCTET_STRING, DataType.DATETIME) or len(value.value) != 12:
                return codec.DAR_TYPE_UNMATCHED
            try:
                ts = codec.decode_datetime(value.value).to_epoch_ms(self.zone)
            except codec.CodecError:
                return codec.DAR_OTHER
            self.clock.set(ts / 1000)
            self.sets += 1
            return codec.DAR_SUCCESS
        return codec.DAR_READ_WRITE_DENIED


# --- the application layer of one association ---------------------------------------------------


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

    # -- helpers -------------------------------------------------------------------------------

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
                return codec.RLRE
            ciphered = tag in codec.PLAIN_TAGS
            if self.state == "none" or (self.ciphered and not ciphered) or (ciphered and not self.ciphered):
                return codec.build_exception_response(1, 2)
            if ciphered:
                try:
                    plain = self._unprotect(apdu)
                except codec.CodecError:
                    return codec.build_exception_response(1, 3)
                if plain is None:
                    return codec.build_exception_response(1, 3)
                answer = self._service(plain)
                return self._protect(answer) if answer[0] in codec.GLO_TAGS else answer
            return self._service(apdu)
        except codec.CodecError:
            return codec.build_exception_response(2, 2)

    # -- ACSE ----------------------------------------------------------------------------------

    def _reject(self, context: int, diagnostic: int) -> bytes:
        self.state = "none"
        return codec.build_aare(context=context, result=codec.RESULT_REJECTED_PERMANENT, diagnostic=diagnostic)

    def _aarq(self, apdu: bytes) -> bytes:
        self.state = "none"
        self._long = None
        self.ciphered = False
        try:
            req = codec.parse_aarq(apdu)
        except codec.CodecError:
            return self._reject(codec.CONTEXT_LN, codec.DIAG_NO_REASON)
        if req.context not in (codec.CONTEXT_LN, codec.CONTEXT_LN_CIPHERED):
            return self._reject(codec.CONTEXT_LN, codec.DIAG_CONTEXT_NOT_SUPPORTED)
        meter = self.meter
        mech = req.mechanism
        wanted = {"none": codec.MECH_NONE, "low": codec.MECH_LOW, "high_gmac": codec.MECH_HIGH_GMAC}.get(
            meter.auth or ""
        )
        if self.client_sap != 16 and wanted is not None and mech != wanted:
            return self._reject(req.context, codec.DIAG_MECHANISM_NOT_RECOGNISED)
        # The public client, and every client of a twin told `auth="none"`, needs no authentication.
        if self.client_sap == 16 or wanted == codec.MECH_NONE:
            if mech != codec.MECH_NONE:
                return self._reject(req.context, codec.DIAG_MECHANISM_NOT_RECOGNISED)
        elif mech == codec.MECH_LOW:
            if meter.password is None:
                return self._reject(req.context, codec.DIAG_MECHANISM_NOT_RECOGNISED)
            if req.auth_value != meter.password:
                return self._reject(req.context, codec.DIAG_AUTHENTICATION_FAILURE)
        elif mech == codec.MECH_HIGH_GMAC:
            if meter.keys is None or req.context != codec.CONTEXT_LN_CIPHERED:
                return self._reject(req.context, codec.DIAG_MECHANISM_NOT_RECOGNISED)
            if req.calling_ap_title is None or len(req.calling_ap_title) != 8 or not req.auth_value:
                return self._reject(req.context, codec.DIAG_AUTHENTICATION_FAILURE)
        else:
            return self._reject(
                req.context, codec.DIAG_MECHANISM_REQUIRED if mech == 0 else codec.DIAG_MECHANISM_NOT_RECOGNISED
            )
        if req.user_information is None:
            return self._reject(req.context, codec.DIAG_NO_REASON)
        info = req.user_information
        self.client_title = req.calling_ap_title
        if req.context == codec.CONTEXT_LN_CIPHERED:
            self.ciphered = True
            try:
                plain = self._unprotect(info) if info[:1] == b"\x21" else None
            except codec.CodecError:
                plain = None
            if plain is None:
                self.ciphered = False
                return self._reject(req.context, codec.DIAG_AUTHENTICATION_FAILURE)
            info = plain
        try:
            init = codec.parse_initiate_request(info)
        except codec.CodecError:
            return self._reject(req.context, codec.DIAG_NO_REASON)
        if init.version < 6:
            return codec.build_aare(
                context=req.context,
                result=codec.RESULT_REJECTED_PERMANENT,
                diagnostic=codec.DIAG_NO_REASON,
                user_information=codec.build_initiate_error(1),
            )
        conf = init.conformance & meter.conformance
        self.max_pdu = max(64, min(init.max_pdu or 0xFFFF, meter.max_pdu))
        response = codec.build_initiate_response(conf, meter.max_pdu)
        if self.ciphered:
            response = self._protect(response)
        if mech == codec.MECH_HIGH_GMAC:
            self.stoc = secrets.token_bytes(16)
            self.state = "pending"
            self._ctos = req.auth_value or b""
            return codec.build_aare(
                context=req.context,
                result=codec.RESULT_ACCEPTED,
                diagnostic=codec.DIAG_AUTHENTICATION_REQUIRED,
                responding_ap_title=meter.server_title,
                mechanism=mech,
                stoc=self.stoc,
                user_information=response,
            )
        self.state = "associated"
        meter.associations += 1
        return codec.build_aare(
            context=req.context,
            result=codec.RESULT_ACCEPTED,
            diagnostic=codec.DIAG_NULL,
            responding_ap_title=meter.server_title if self.ciphered else None,
            user_information=response,
        )

    # -- xDLMS services ------------------------------------------------------------------------

    def _service(self, apdu: bytes) -> bytes:
        req = codec.parse_request(apdu)
        if self.state == "pending":
            if req.service == codec.ACTION_REQUEST:
                return self._hls_reply(req)
            return codec.build_exception_response(1, 2)
        if req.service == codec.GET_REQUEST:
            return self._get(req)
        if req.service == codec.SET_REQUEST:
            ref, _ = req.items[0]
            assert req.value is not None
            dar = self.meter.set_attribute(ref.class_id, codec.obis_text(ref.obis), ref.attribute, req.value)
            return codec.build_set_response(req.invoke, dar)
        return codec.build_action_response(req.invoke, codec.DAR_READ_WRITE_DENIED)

    def _hls_reply(self, req: codec.Request) -> bytes:
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
            return codec.build_action_response(req.invoke, codec.DAR_OTHER)
        assert keys is not None
        self.state = "associated"
        self.meter.associations += 1
        f_ctos = codec.gmac_challenge_reply(
            self.meter.server_title, self._next_server_ic(), keys.encryption_key, keys.authentication_key, self._ctos
        )
        return codec.build_action_response(req.invoke, codec.DAR_SUCCESS, codec.octets(f_ctos))

    def _room(self) -> int:
        """Bytes of raw data one GET-response-with-datablock may carry."""
        overhead = 4 + 4 + 1 + 3 + (5 + codec.TAG_LEN + 4 if self.ciphered else 0)
        return max(16, self.max_pdu - overhead)

    def _get(self, req: codec.Request) -> bytes:
        t_ms = self.meter.now_ms()
        if req.kind == 2:
            if self._long is None:
                return codec.build_get_response_block_error(req.invoke, req.block, codec.DAR_NO_LONG_GET)
            _, _raw, block = self._long
            if req.block != block - 1:
                self._long = None
                return codec.build_get_response_block_error(req.invoke, req.block, codec.DAR_LONG_GET_ABORTED)
            return self._next_block(req.invoke)
        self._long = None
        if req.kind == 1:
            ref, access = req.items[0]
            result = self.meter.attribute(ref.class_id, codec.obis_text(ref.obis), ref.attribute, access, t_ms)
            answer = codec.build_get_response_normal(req.invoke, result)
            if len(answer) + (40 if self.ciphered else 0) <= self.max_pdu:
                return answer
            assert isinstance(result, Data)
            self._long = (req.invoke, codec.encode_data(result), 1)
            self._long_pos = 0
            return self._next_block(req.invoke)
        results = [
            self.meter.attribute(ref.class_id, codec.obis_text(ref.obis), ref.attribute, access, t_ms)
            for ref, access in req.items
        ]
        answer = codec.build_get_response_list(req.invoke, results)
        if len(answer) + (40 if self.ciphered else 0) <= self.max_pdu:
            return answer
        self._long = (req.invoke, answer[3:], 1)
        self._long_pos = 0
        return self._next_block(req.invoke)

    def _next_block(self, invoke: int) -> bytes:
        assert self._long is not None
        inv, raw, block = self._long
        chunk = raw[self._long_pos : self._long_pos + self._room()]
        self._long_pos += len(chunk)
        last = self._long_pos >= len(raw)
        self._long = None if last else (inv, raw, block + 1)
        return codec.build_get_response_block(invoke, last, block, chunk)


# --- line protocols -----------------------------------------------------------------------------


def _corrupt(data: bytes, wrapper: bool) -> bytes:
    """Damage a reply where a check must catch it: a bit error inside an HDLC frame (FCS), a
    broken wrapper header (no checksum protects a wrapper's payload)."""
    if len(data) < 4:
        return data
    b = bytearray(data)
    if wrapper:
        b[1] ^= 0x02
    else:
        b[-4] ^= 0x5A  # the last frame's last byte before its FCS
    return bytes(b)


class _Line:
    """One byte stream (a TCP connection or a serial device) and the meters reachable on it."""

    def __init__(self, twin: DlmsTwin, writer: Any) -> None:
        self.twin = twin
        self.writer = writer
        self.sessions: dict[tuple[bytes, bytes], tuple[hdlc.ServerLink, Association]] = {}
        self.wrapper_sessions: dict[int, Association] = {}
        self.reader = hdlc.FrameReader()
        self._wbuf = bytearray()
        self.iec_mode = twin.mode_e
        self._iec = bytearray()

    async def _send(self, meter: Meter, data: bytes) -> None:
        if meter.delay:
            meter.pending += 1
            try:
                await asyncio.sleep(meter.delay)
            finally:
                meter.pending -= 1
        if meter.dead:
            return
        if meter.corrupt:
            data = _corrupt(data, self.twin.transport == "wrapper")
        self.writer.write(data)
        drain = getattr(self.writer, "drain", None)
        if drain is not None:
            with contextlib.suppress(ConnectionError):
                await drain()

    async def feed(self, data: bytes) -> None:
        if self.twin.transport == "wrapper":
            await self._feed_wrapper(data)
        elif self.iec_mode:
            await self._feed_iec(data)
        else:
            await self._feed_hdlc(data)

    # -- IEC 62056-21 mode E opening -------------------------------------------------------------

    async def _feed_iec(self, data: bytes) -> None:
        self._iec += data
        while b"\r\n" in self._iec:
            line, _, rest = bytes(self._iec).partition(b"\r\n")
            self._iec = bytearray(rest)
            start = line.find(b"/?")
            if start >= 0 and line.endswith(b"!"):
                meter = next(iter(self.twin.meters.values()))
                if meter.dead:
                    continue
                await self._send(meter, b"/SEN5\\2" + self.twin.identification.encode() + b"\r\n")
            elif line[:1] == b"\x06" and len(line) >= 4 and line[1:2] == b"2" and line[3:4] == b"2":
                self.iec_mode = False
                self.twin.mode_e_sessions += 1
                rest_bytes = bytes(self._iec)
                self._iec.clear()
                if rest_bytes:
                    await self._feed_hdlc(rest_bytes)
                return

    # -- HDLC ----------------------------------------------------------------------------------

    async def _feed_hdlc(self, data: bytes) -> None:
        for frame in self.reader.feed(data):
            try:
                logical, physical = hdlc.parse_server_address(frame.dst)
            except hdlc.HdlcError:
                continue
            meter = self.twin.meters.get(physical if physical is not None else -1)
            if meter is None or meter.logical != logical or meter.dead:
                continue
            key = (frame.src, frame.dst)
            if key not in self.sessions:
                link = hdlc.ServerLink(
                    own=frame.dst, peer=frame.src, max_info=self.twin.max_info, window=self.twin.window
                )
                self.sessions[key] = (link, Association(meter, frame.src[0] >> 1))
            link, assoc = self.sessions[key]
            try:
                out, request = link.handle(frame)
            except hdlc.HdlcError:
                out, request = [hdlc.encode_frame(frame.src, frame.dst, hdlc.FRMR | hdlc.PF)], None
            if frame.kind in (hdlc.SNRM, hdlc.DISC):
                assoc.state = "none"
            if frame.kind == hdlc.DISC:
                meter.disconnects += 1
            if frame.kind == hdlc.DISC and self.twin.mode_e:
                self.iec_mode = True
            if request is not None:
                answer = assoc.handle(request)
                if answer is not None:
                    out = out + link.respond(answer)
            if out:
                await self._send(meter, b"".join(out))

    # -- wrapper -------------------------------------------------------------------------------

    async def _feed_wrapper(self, data: bytes) -> None:
        self._wbuf += data
        while len(self._wbuf) >= 8:
            version = int.from_bytes(self._wbuf[0:2], "big")
            src = int.from_bytes(self._wbuf[2:4], "big")
            dst = int.from_bytes(self._wbuf[4:6], "big")
            length = int.from_bytes(self._wbuf[6:8], "big")
            if version != 1:
                self._wbuf.clear()
                return
            if len(self._wbuf) < 8 + length:
                return
            apdu = bytes(self._wbuf[8 : 8 + length])
            del self._wbuf[: 8 + length]
            meter = next((m for m in self.twin.meters.values() if m.logical == dst), None)
            if meter is None or meter.dead:
                continue
            assoc = self.wrapper_sessions.get(src)
            if assoc is None or assoc.meter is not meter:
                assoc = self.wrapper_sessions[src] = Association(meter, src)
            answer = assoc.handle(apdu)
            if answer is None:
                continue
            header = (1).to_bytes(2, "big") + dst.to_bytes(2, "big") + src.to_bytes(2, "big")
            await self._send(meter, header + len(answer).to_bytes(2, "big") + answer)


# --- the twin -----------------------------------------------------------------------------------


class DlmsTwin:
    """A DLMS/COSEM meter (or several on one HDLC line) on TCP or a serial device."""

    def __init__(
        self,
        profile: str | Path | None = None,
        *,
        objects: Sequence[TwinObject] | None = None,
        transport: Literal["wrapper", "hdlc"] = "wrapper",
        host: str = "127.0.0.1",
        port: int = 0,
        serial: str | None = None,
        addresses: Sequence[int] = (17,),
        logical: int = 1,
        auth: Literal["none", "low", "high_gmac"] | None = None,
        password: str | None = None,
        keys: DlmsKeys | str | Path | None = None,
        server_title: bytes = DEFAULT_SERVER_TITLE,
        start: float | None = None,
        speed: float = 1.0,
        max_pdu: int = 512,
        max_info: int = 128,
        window: int = 1,
        mode_e: bool = False,
        timezone: str = "UTC",
        profile_vars: dict[str, Any] | None = None,
        with_list: bool = True,
    ) -> None:
        if objects is None:
            objects = objects_from_profile(profile, profile_vars or {}) if profile is not None else []
        if isinstance(keys, str | Path):
            keys = parse_keys(Path(keys).read_text(encoding="utf-8"))
        if auth == "low" and password is None:
            raise ValueError("a twin with auth low needs a password")
        if auth == "high_gmac" and keys is None:
            raise ValueError("a twin with auth high_gmac needs keys")
        self.transport = transport
        self.host = host
        self.port = port
        self.serial = serial
        self.max_info = max_info
        self.window = window
        self.mode_e = mode_e
        self.identification = "EDGEGW-TWIN"
        self.clock = SimClock(start, speed)
        self.meters: dict[int, Meter] = {}
        for addr in addresses:
            self.meters[addr] = Meter(
                _copy_objects(objects),
                self.clock,
                physical=addr,
                logical=logical,
                password=password,
                keys=keys,
                server_title=server_title,
                max_pdu=max_pdu,
                timezone=timezone,
            )
            self.meters[addr].auth = auth
            if not with_list:
                self.meters[addr].conformance &= ~codec.conformance(codec.CONF_MULTIPLE_REFERENCES)
        self.mode_e_sessions = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._serial_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[Any] = []

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.serial is not None:
            import serial_asyncio

            # Open before returning: pyserial flushes the input on open, so a request written
            # to the line before that would be lost.
            reader, writer = await serial_asyncio.open_serial_connection(url=self.serial, baudrate=9600)
            self._serial_task = asyncio.create_task(self._serve_serial(reader, writer), name="dlms-twin-serial")
            return
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()
        # Connection handlers end by themselves once their socket is closed; cancelling them
        # instead makes asyncio's stream callback log a spurious error.
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=1.0)
            for task in pending:
                task.cancel()
        if self._serial_task is not None:
            self._serial_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._serial_task
            self._serial_task = None
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> DlmsTwin:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self.connections += 1
        self._writers.append(writer)
        line = _Line(self, writer)
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                await line.feed(data)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            if task is not None:
                self._tasks.discard(task)
            if writer in self._writers:
                self._writers.remove(writer)

    async def _serve_serial(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        line = _Line(self, writer)
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    await asyncio.sleep(0.01)
                    continue
                await line.feed(data)
        finally:
            writer.close()

    # -- control -------------------------------------------------------------------------------

    def _targets(self, address: int | None) -> list[Meter]:
        return list(self.meters.values()) if address is None else [self.meters[address]]

    @property
    def meter(self) -> Meter:
        """The first (or only) meter."""
        return next(iter(self.meters.values()))

    def now(self) -> float:
        return self.clock.now()

    def advance(self, *, seconds: float = 0, minutes: float = 0, hours: float = 0, days: float = 0) -> None:
        self.clock.advance(seconds + 60 * minutes + 3600 * hours + 86400 * days)

    def set_time(self, t: float) -> None:
        self.clock.set(t)

    def freeze(self, at: float | None = None) -> None:
        self.clock.freeze(at)

    def run(self, speed: float | None = None) -> None:
        self.clock.run(speed)

    def kill(self, address: int | None = None) -> None:
        """Stop answering (the meter is dead or unplugged)."""
        for m in self._targets(address):
            m.dead = True

    def revive(self, address: int | None = None) -> None:
        for m in self._targets(address):
            m.dead = False
            m.delay = 0.0
            m.corrupt = False

    def slow(self, delay: float, address: int | None = None) -> None:
        for m in self._targets(address):
            m.delay = delay

    def corrupt(self, on: bool = True, address: int | None = None) -> None:
        for m in self._targets(address):
            m.corrupt = on

    def drop_associations(self, address: int | None = None) -> None:
        """Forget every association, as a meter does after its inactivity timeout."""
        for m in self._targets(address):
            m.generation += 1

    def set_value(self, obis: str, raw: Any, address: int | None = None) -> None:
        for m in self._targets(address):
            m.objects[normalize_obis(obis)].override = raw

    def drop_connections(self) -> None:
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()


def _copy_objects(objects: Sequence[TwinObject]) -> list[TwinObject]:
    return [
        TwinObject(
            o.class_id,
            o.obis,
            o.signal,
            o.dtype,
            o.scaler,
            o.unit,
            o.text,
            list(o.columns),
            o.capture_period,
            o.capacity,
            o.override,
        )
        for o in objects
    ]


# --- building the twin's objects from a profile -------------------------------------------------

# Plausible defaults per quantity: (scaler, signal) - raw values, so scaled by 10**scaler.
_DEFAULTS: dict[str, tuple[int, Signal]] = {
    "voltage": (-1, Signal(minimum=2280, maximum=2320, period=600)),
    "current": (-3, Signal(minimum=2000, maximum=8000, period=900)),
    "active_power": (0, Signal(minimum=500, maximum=1800, period=900)),
    "reactive_power": (0, Signal(minimum=100, maximum=300, period=900)),
    "apparent_power": (0, Signal(minimum=550, maximum=1900, period=900)),
    "power_factor": (-3, Signal(minimum=900, maximum=990, period=1200)),
    "frequency": (-2, Signal(minimum=4995, maximum=5005, period=300)),
    "active_power_demand": (0, Signal(minimum=800, maximum=1500, period=3600)),
    "active_power_demand_max": (0, Signal(value=2500)),
    "active_energy_import": (0, Signal(value=1_000_000, rate=1150)),
    "active_energy_export": (0, Signal(value=10_000, rate=20)),
    "active_energy_absolute": (0, Signal(value=1_010_000, rate=1170)),
    "reactive_energy_import": (0, Signal(value=200_000, rate=210)),
    "reactive_energy_export": (0, Signal(value=5_000, rate=10)),
    "apparent_energy_import": (0, Signal(value=1_100_000, rate=1200)),
    "apparent_energy_export": (0, Signal(value=12_000, rate=22)),
}
_TYPES = {
    "uint8": DataType.UINT8,
    "uint16": DataType.UINT16,
    "uint32": DataType.UINT32,
    "uint64": DataType.UINT64,
    "int8": DataType.INT8,
    "int16": DataType.INT16,
    "int32": DataType.INT32,
    "int64": DataType.INT64,
    "float32": DataType.FLOAT32,
    "float64": DataType.FLOAT64,
    "octet_string": DataType.OCTET_STRING,
    "visible_string": DataType.VISIBLE_STRING,
    "enum": DataType.ENUM,
}


def _signal_from(sim: dict[str, Any] | None, quantity: str) -> tuple[int | None, Signal | None]:
    scaler, default = _DEFAULTS.get(quantity, (None, None))
    if not sim:
        return scaler, default
    from gateway.models import parse_duration

    float_type = sim.get("type") in ("float32", "float64")
    has_float = any(isinstance(sim.get(k), float) for k in ("value", "min", "max", "rate"))
    sig = Signal(
        value=sim.get("value", 0),
        minimum=sim.get("min"),
        maximum=sim.get("max"),
        period=parse_duration(sim.get("period", 3600)),
        rate=float(sim.get("rate", 0)),
        integer=not float_type and not has_float,
    )
    return sim.get("scaler", scaler), sig


def twin_object_for_point(point: dict[str, Any]) -> TwinObject | None:
    """A profile point -> the COSEM object serving it (None for profile columns)."""
    obis = normalize_obis(point["obis"])
    class_id = int(point.get("class", point.get("class_id", 3)))
    if class_id == 7:
        return None
    sim = point.get("sim") or {}
    quantity = str(point.get("quantity", "other"))
    unit = codec.UNIT_CODES.get(str(point.get("unit", "")), 255)
    if class_id == 1:
        text = sim.get("text")
        if text is None and "value" not in sim:
            text = {
                "serial_number": "12345678",
                "firmware": "SEN-1.0.0",
                "model": "SENSEMI",
                "identity": "SEN0012345678",
            }.get(quantity, "edgegw-twin")
        dtype = _TYPES.get(str(sim.get("type", "visible_string" if text is not None else "uint32")), DataType.UINT32)
        return TwinObject(1, obis, Signal(value=sim.get("value", 0)), dtype=dtype, text=text)
    if class_id == 8:
        return TwinObject(8, obis)
    scaler, sig = _signal_from(sim, quantity)
    if sig is None:
        sig = Signal(value=0)
    value_is_float = not sig.integer
    dtype_name = sim.get("type")
    if dtype_name is not None:
        dtype = _TYPES[str(dtype_name)]
    elif value_is_float:
        dtype = DataType.FLOAT32
    elif sig.rate or (sig.minimum is not None and sig.minimum >= 0) or sig.value >= 0:
        dtype = DataType.UINT32
    else:
        dtype = DataType.INT32
    if dtype in (DataType.FLOAT32, DataType.FLOAT64):
        sig.integer = False
    return TwinObject(class_id, obis, sig, dtype=dtype, scaler=int(scaler or 0), unit=unit)


def objects_from_points(points: Sequence[dict[str, Any]]) -> list[TwinObject]:
    objects: dict[str, TwinObject] = {}
    profiles: dict[str, TwinObject] = {}
    for p in points:
        obj = twin_object_for_point(p)
        if obj is not None:
            objects.setdefault(obj.obis, obj)
    for p in points:
        if int(p.get("class", p.get("class_id", 3))) != 7:
            continue
        obis = normalize_obis(p["obis"])
        column = normalize_obis(p["column"])
        prof = profiles.get(obis)
        if prof is None:
            sim = p.get("sim") or {}
            period = {"1.0.99.1.0.255": 900, "1.0.99.2.0.255": 86400, "0.0.98.1.0.255": 0}.get(obis, 900)
            from gateway.models import parse_duration

            if "capture_period" in sim:
                period = int(parse_duration(sim["capture_period"]))
            capacity = int(sim.get("entries", 9600 if period == 900 else 400 if period else 24))
            prof = profiles[obis] = TwinObject(7, obis, capture_period=period, capacity=capacity)
        col_class = int(p.get("column_class") or (objects[column].class_id if column in objects else 3))
        prof.columns.append((col_class, column, int(p.get("column_attribute", 2))))
        if column not in objects:
            obj = twin_object_for_point({**p, "obis": column, "class": col_class})
            if obj is not None:
                objects[column] = obj
    return [*objects.values(), *profiles.values()]


def objects_from_profile(ref: str | Path, profile_vars: dict[str, Any]) -> list[TwinObject]:
    from gateway.profiles import expand, load_profile, resolve_profile_path

    path = Path(ref) if isinstance(ref, Path) else resolve_profile_path(ref, "dlms")
    prof = load_profile(path)
    env = {**prof.vars, **profile_vars}
    return objects_from_points([point for point, _, _ in expand(prof.points, env)])


# --- CLI ----------------------------------------------------------------------------------------


def main(profile_ref: str, argv: list[str]) -> int:
    """`edgegw simulate <dlms-profile> --port N [--transport wrapper|hdlc] | --serial DEV`."""
    parser = argparse.ArgumentParser(prog=f"edgegw simulate {profile_ref}", description="DLMS/COSEM meter twin")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--port", type=int, default=4059, help="TCP port (default 4059)")
    where.add_argument("--serial", help="serial device (e.g. one end of a socat pty pair)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--transport", choices=["wrapper", "hdlc"], default=None, help="default: wrapper on TCP, hdlc on serial"
    )
    parser.add_argument(
        "--address", type=int, action="append", help="HDLC physical address (repeat for several meters)"
    )
    parser.add_argument("--logical", type=int, default=1)
    parser.add_argument("--password-file", type=Path, help="accept LLS (client 1) with this password")
    parser.add_argument("--keys-file", type=Path, help="accept HLS-GMAC with these keys (and the server_system_title)")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    parser.add_argument("--start", help="simulated start time, ISO 8601 (default: now)")
    parser.add_argument("--mode-e", action="store_true", help="expect the IEC 62056-21 mode E opening (optical)")
    parser.add_argument("--max-pdu", type=int, default=512)
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="profile variable")
    args = parser.parse_args(argv)
    try:
        profile_vars: dict[str, Any] = {}
        for item in args.var:
            name, _, value = item.partition("=")
            profile_vars[name] = int(value) if value.lstrip("-").isdigit() else value
        password = args.password_file.read_text(encoding="utf-8").strip("\r\n") if args.password_file else None
        keys = parse_keys(args.keys_file.read_text(encoding="utf-8")) if args.keys_file else None
        start = datetime.fromisoformat(args.start).replace(tzinfo=UTC).timestamp() if args.start else None
        transport: Literal["wrapper", "hdlc"] = "hdlc" if args.serial else "wrapper"
        if args.transport in ("wrapper", "hdlc"):
            transport = args.transport
        twin = DlmsTwin(
            profile_ref,
            transport=transport,
            host=args.host,
            port=args.port if not args.serial else 0,
            serial=args.serial,
            addresses=args.address or [17],
            logical=args.logical,
            password=password,
            keys=keys,
            server_title=keys.server_system_title if keys and keys.server_system_title else DEFAULT_SERVER_TITLE,
            start=start,
            speed=args.speed,
            max_pdu=args.max_pdu,
            mode_e=args.mode_e,
            profile_vars=profile_vars,
        )
    except (OSError, ValueError) as exc:
        print(f"edgegw simulate: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run_forever(twin))


async def _run_forever(twin: DlmsTwin) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await twin.start()
    except OSError as exc:
        print(f"edgegw simulate: {exc}", file=sys.stderr)
        return 1
    where = twin.serial if twin.serial else f"{twin.host}:{twin.port}"
    addresses = ", ".join(str(a) for a in twin.meters)
    print(f"dlms twin ({twin.transport}) on {where}, physical address(es) {addresses}, pid {os.getpid()}", flush=True)
    await stop.wait()
    await twin.stop()
    return 0
