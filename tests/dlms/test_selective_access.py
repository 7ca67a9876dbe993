"""Load-profile reads by range and by entry, checked against gurux's encoder and parser.

The riskiest read path must not be tested against itself: the selective-access parameters our
client sends (built by drivers/dlms/codec.py) are compared with what gurux's own client builds
for the same selection (``readRowsByRange`` / ``readRowsByEntry``), decoded by gurux's A-XDR
parser; and the twin's buffer replies are parsed by gurux's profile-generic code
(``updateValue``), scalers and clock column included.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from typing import Any

import pytest
from gurux_dlms import GXByteBuffer, GXDateTime, GXDLMSClient
from gurux_dlms.enums import Authentication, DataType, InterfaceType
from gurux_dlms.objects import GXDLMSCaptureObject, GXDLMSProfileGeneric, GXDLMSRegister
from gurux_dlms.secure import GXDLMSSecureClient

from drivers.dlms.client import CosemClient
from drivers.dlms.transport import TcpChannel, WrapperLink
from drivers.dlms.twin import EPOCH_2024, DlmsTwin, server
from tests.dlms.gurux_peer import open_session
from tests.dlms.util import PROFILE_POINTS, T0, device, driver, meter_objects, series_of

pytestmark = [pytest.mark.timeout(30)]

PROFILE = "1.0.99.1.0.255"
Q = 900_000
T0_MS = int(T0 * 1000)


def counter_at(ts_ms: int) -> int:
    return 1_000_000 + (ts_ms - int(EPOCH_2024 * 1000)) * 1000 // 3_600_000


def gurux_public() -> Any:
    return GXDLMSSecureClient(True, 16, 1, Authentication.NONE, None, InterfaceType.PDU)


def gurux_value(raw: bytes) -> Any:
    """gurux's own A-XDR decoding of one value."""
    return GXDLMSClient.getValue(GXByteBuffer(raw), False)


def gurux_time_ms(octets: Any) -> int:
    """gurux's reading of a COSEM date-time (12 octets) as epoch ms."""
    moment = GXDLMSClient.changeType(bytearray(octets), DataType.DATETIME).value
    return int(moment.timestamp() * 1000)


def utc(ts_ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC)


def selective_gets(twin: DlmsTwin, selector: int) -> list[bytes]:
    """The plain GET requests with selective access `selector` the twin received, oldest first."""
    out = []
    for apdu in twin.meter.received:
        if apdu[:2] != b"\xc0\x01":
            continue
        access = server.parse_request(apdu).items[0][1]
        if access is not None and access.selector == selector:
            out.append(apdu)
    return out


async def test_the_drivers_range_requests_are_the_selection_gurux_makes() -> None:
    async with DlmsTwin(objects=meter_objects(), start=T0) as twin:
        twin.freeze()
        drv = driver(
            device(PROFILE_POINTS, tcp={"host": "127.0.0.1", "port": twin.port}, backfill="6h", profile_chunk="2h")
        )
        await drv.read()
        ours = selective_gets(twin, 1)
        assert len(ours) == 3  # 6 hours in chunks of 2
        gx = gurux_public()
        bounds = []
        for apdu in ours:
            header, params = apdu[:14], apdu[14:]
            # gurux decodes our parameters: {restricting object, from, to, selected columns}
            restricting, lo, hi, columns = gurux_value(params)
            assert [restricting[0], bytes(restricting[1]), restricting[2], restricting[3]] == [
                8,
                bytes([0, 0, 1, 0, 0, 255]),
                2,
                0,
            ]
            assert columns == []  # every column
            lo_ms, hi_ms = gurux_time_ms(lo), gurux_time_ms(hi)
            bounds.append((lo_ms, hi_ms))
            # gurux's own request for the same selection
            theirs = bytes(gx.readRowsByRange(GXDLMSProfileGeneric(PROFILE), utc(lo_ms), utc(hi_ms))[0])
            # GET-Request-Normal, attribute descriptor 7/1.0.99.1.0.255/2, selector 1: byte for byte
            assert header[:2] == theirs[:2] and header[3:] == theirs[3:14]
            t_restricting, t_lo, t_hi, t_columns = gurux_value(theirs[14:])
            assert t_restricting == restricting and t_columns == columns
            # the date-times may differ in fields that do not change the instant (weekday, status)
            assert (gurux_time_ms(t_lo), gurux_time_ms(t_hi)) == (lo_ms, hi_ms)
            assert len(lo) == len(t_lo) == 12
        assert bounds[0][0] == T0_MS - 6 * 3600_000 and bounds[-1][1] == T0_MS
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
        await drv.ctx.bus.close()


async def test_our_entry_request_is_gurux_entry_request() -> None:
    async with DlmsTwin(objects=meter_objects(), start=T0) as twin:
        twin.freeze()
        client = CosemClient(WrapperLink(TcpChannel("127.0.0.1", twin.port), 16, 1), client_sap=16, logical=1)
        await client.associate(2.0)
        rows = await client.get_rows_by_entry(PROFILE, 9597, 9600, 2.0)
        (ours,) = selective_gets(twin, 2)
        theirs = bytes(gurux_public().readRowsByEntry(GXDLMSProfileGeneric(PROFILE), 9597, 4)[0])
        # identical but for the invoke-id (its priority and service-class bits agree)
        assert ours[:2] + ours[3:] == theirs[:2] + theirs[3:]
        assert ours[2] & 0xF0 == theirs[2] & 0xF0
        assert [gurux_time_ms(r[0]) for r in rows] == [T0_MS - 3 * Q, T0_MS - 2 * Q, T0_MS - Q, T0_MS]
        await client.release(2.0)
        await client.link.channel.aclose()


async def _profile_with_scalers(s: Any) -> Any:
    """The profile's capture objects as gurux reads them, with each register's scaler."""
    pg = GXDLMSProfileGeneric(PROFILE)
    s.c.updateValue(pg, 3, (await s.request(s.c.read(pg, 3))).value)
    for obj, _co in pg.captureObjects:
        if isinstance(obj, GXDLMSRegister):
            s.c.updateValue(obj, 3, (await s.request(s.c.read(obj, 3))).value)
    return pg


async def test_gurux_parses_the_twins_range_and_entry_replies(capsys: pytest.CaptureFixture[str]) -> None:
    async with DlmsTwin(objects=meter_objects(), start=T0) as twin:
        twin.freeze()
        s = await open_session(twin.port)
        pg = await _profile_with_scalers(s)
        assert [(o.logicalName, c.attributeIndex) for o, c in pg.captureObjects] == [
            ("0.0.1.0.0.255", 2),
            ("1.0.1.8.1.255", 2),
            ("1.0.32.7.0.255", 2),
        ]
        start, end = T0_MS - 4 * Q, T0_MS
        reply = await s.request(s.c.readRowsByRange(pg, utc(start), utc(end)))
        s.c.updateValue(pg, 2, reply.value)
        stamps = [int(row[0].value.timestamp() * 1000) for row in pg.buffer]
        assert stamps == list(range(start, end + 1, Q))
        assert [row[1] for row in pg.buffer] == [counter_at(ts) for ts in stamps]
        assert all(row[2] == pytest.approx(230.1) for row in pg.buffer)  # 2301 x 10^-1, by gurux
        by_range = [(ts, row[1]) for ts, row in zip(stamps, pg.buffer, strict=True)]

        # the same entries by entry number (the buffer holds 9600: the newest is 9600)
        reply = await s.request(s.c.readRowsByEntry(pg, 9596, 5))
        s.c.updateValue(pg, 2, reply.value)
        assert [(int(r[0].value.timestamp() * 1000), r[1]) for r in pg.buffer] == by_range

        # a range with one selected column: only that column comes back
        voltage = next((o, c) for o, c in pg.captureObjects if o.logicalName == "1.0.32.7.0.255")
        reply = await s.request(s.c.readRowsByRange(pg, utc(start), utc(end), [voltage]))
        assert [list(r) for r in reply.value] == [[2301]] * 5
        # by entry, columns 1..2 of the last two entries. (gurux 1.0.203 sends the number of
        # columns where the Blue Book has the index of the last one; from column 1 they agree.)
        reply = await s.request(s.c.readRowsByEntry(pg, 9599, 2, [pg.captureObjects[0], pg.captureObjects[1]]))
        assert [(gurux_time_ms(r[0]), r[1]) for r in reply.value] == by_range[-2:]
        await s.close(False)

        # and the driver, over its own client, publishes the same entries
        drv = driver(device(PROFILE_POINTS, tcp={"host": "127.0.0.1", "port": twin.port}, backfill="1h"))
        assert series_of(drv, await drv.read(), "load_profile.energy") == by_range
        await drv.ctx.bus.close()
    capsys.readouterr()


async def test_a_refused_selection_is_a_data_access_result() -> None:
    async with DlmsTwin(objects=meter_objects(), start=T0) as twin:
        twin.freeze()
        s = await open_session(twin.port)
        pg = await _profile_with_scalers(s)
        # a column the profile does not capture
        other = (GXDLMSRegister("1.0.2.8.0.255"), GXDLMSCaptureObject(2, 0))
        reply = await s.request(s.c.readRowsByRange(pg, utc(T0_MS - Q), utc(T0_MS), [other]))
        assert reply.error == 250  # other reason
        # a range before the buffer's oldest entry: no rows, not an error
        old = T0_MS - 9600 * Q - 86400_000
        reply = await s.request(s.c.readRowsByRange(pg, utc(old), utc(old + Q)))
        assert reply.error == 0 and not reply.value
        await asyncio.wait_for(s.close(False), 5)


def test_gurux_date_time_decoding_agrees_with_ours() -> None:
    """The two readings of a date-time used above agree for the instants the tests use."""
    from zoneinfo import ZoneInfo

    from drivers.dlms import codec

    for ts in (T0_MS, T0_MS - 6 * 3600_000, 1783000000000):
        ours = codec.datetime_from_epoch_ms(ts, ZoneInfo("UTC"), status=None).encode()
        assert gurux_time_ms(ours) == ts
        theirs = GXByteBuffer()
        from gurux_dlms.GXDLMSSettings import GXDLMSSettings
        from gurux_dlms.internal._GXCommon import _GXCommon

        _GXCommon.setData(GXDLMSSettings(False, None), theirs, DataType.OCTET_STRING, GXDateTime(utc(ts)))
        raw = bytes(theirs.array())[2:]  # drop the octet-string tag and length
        assert codec.decode_datetime(raw).to_epoch_ms(ZoneInfo("UTC")) == ts
