"""The twin against the plain gurux client: what a real DLMS client expects of a meter."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Literal

import pytest
from gurux_dlms import GXDateTime, GXReplyData
from gurux_dlms.objects import GXDLMSClock, GXDLMSData, GXDLMSProfileGeneric, GXDLMSRegister

from drivers.dlms.twin import DlmsTwin
from tests.dlms.gurux_peer import GuruxSession, gurux_client
from tests.dlms.util import KEYS, T0, meter_objects

pytestmark = [pytest.mark.timeout(20)]


@pytest.mark.parametrize("auth", ["none", "low", "high_gmac"])
@pytest.mark.parametrize("transport", ["wrapper", "hdlc"])
async def test_gurux_client_reads_the_twin(
    transport: Literal["wrapper", "hdlc"], auth: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with DlmsTwin(objects=meter_objects(), transport=transport, password="12345678", keys=KEYS, start=T0) as twin:
        twin.freeze()
        r, w = await asyncio.open_connection("127.0.0.1", twin.port)
        s = GuruxSession(gurux_client(transport, auth), r, w)
        hdlc = transport == "hdlc"
        await s.open(hdlc)
        reg = GXDLMSRegister("1.0.1.8.0.255")
        reply = await s.request(s.c.read(reg, 3))
        s.c.updateValue(reg, 3, reply.value)
        assert reg.unit == 30
        reply = await s.request(s.c.read(reg, 2))
        assert reply.value == 1234567 and reply.error == 0
        data = GXDLMSData("0.0.96.1.0.255")
        assert bytes((await s.request(s.c.read(data, 2))).value) == b"SED3020001234"
        # clock: the simulated time
        clock = GXDLMSClock("0.0.1.0.0.255")
        reply = await s.request(s.c.read(clock, 2))
        s.c.updateValue(clock, 2, reply.value)
        assert clock.time.value.replace(tzinfo=dt.UTC).timestamp() == T0
        # an unknown object: a data-access-result, not a broken association
        reply = await s.request(s.c.read(GXDLMSRegister("1.0.99.99.0.255"), 2))
        assert reply.error == 4  # object-undefined
        # GET-with-list
        items = [(reg, 2), (GXDLMSRegister("1.0.32.7.0.255"), 2), (GXDLMSRegister("1.0.99.99.0.255"), 2)]
        (msgs,) = s.c.readList(items)
        reply = await s.request(msgs)
        assert reply.value[:2] == [1234567, 2301] and reply.error == 4
        # profile: capture objects, then the buffer by range (block transfer: 97 entries > one PDU)
        pg = GXDLMSProfileGeneric("1.0.99.1.0.255")
        s.c.updateValue(pg, 3, (await s.request(s.c.read(pg, 3))).value)
        assert [(o.logicalName, a.attributeIndex) for o, a in pg.captureObjects] == [
            ("0.0.1.0.0.255", 2),
            ("1.0.1.8.1.255", 2),
            ("1.0.32.7.0.255", 2),
        ]
        start = dt.datetime.fromtimestamp(T0 - 86400, dt.UTC).replace(tzinfo=None)
        end = dt.datetime.fromtimestamp(T0, dt.UTC).replace(tzinfo=None)
        rows = (await s.request(s.c.readRowsByRange(pg, start, end))).value
        assert len(rows) == 97
        assert rows[-1][2] == 2301
        # by entry: the last three entries
        pg.entriesInUse = 9600
        rows = (await s.request(s.c.readRowsByEntry(pg, 9598, 3))).value
        assert len(rows) == 3
        # set the clock
        clock.time = GXDateTime(dt.datetime.fromtimestamp(T0 + 3600, dt.UTC).replace(tzinfo=None))
        reply = await s.request(s.c.write(clock, 2))
        assert reply.error == 0 and twin.now() == T0 + 3600
        await s.close(hdlc)
        assert twin.meter.releases == 1
    capsys.readouterr()  # gurux prints its ciphering notes to stdout


async def test_wrong_password_is_refused() -> None:
    async with DlmsTwin(objects=meter_objects(), password="secret") as twin:
        r, w = await asyncio.open_connection("127.0.0.1", twin.port)
        s = GuruxSession(gurux_client("wrapper", "low"), r, w)
        with pytest.raises(Exception, match=r"(?i)authentication"):
            await s.open(False)
        # and nothing is served without an association
        reply = GXReplyData()
        with pytest.raises(Exception):  # noqa: B017 - gurux raises its own exception types
            await s._rt(s.c.read(GXDLMSRegister("1.0.1.8.0.255"), 2)[0], reply)
        w.close()
