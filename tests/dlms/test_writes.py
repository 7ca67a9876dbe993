"""SET and ACTION against the twin: the clock, a writable register, the disconnector, the billing
script; what a meter refuses; every accepted write remembered in ``twin.writes``.

SET goes through our client (drivers/dlms/client.py has ``set``); ACTION through gurux's own
client over a real socket (our client has no ``action``).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from gurux_dlms.objects import (
    GXDLMSDemandRegister,
    GXDLMSDisconnectControl,
    GXDLMSRegister,
    GXDLMSScriptTable,
)
from gurux_dlms.objects.enums import ControlMode, ControlState

from drivers.dlms import codec
from drivers.dlms.client import CosemClient, CosemError, Ref
from drivers.dlms.codec import DataType
from drivers.dlms.transport import TcpChannel, WrapperLink
from drivers.dlms.twin import BILLING_SCRIPT_OBIS, DISCONNECT_OBIS, DlmsTwin
from gateway.twin import Write
from tests.dlms.gurux_peer import open_session
from tests.dlms.util import POINTS, T0, device, driver, meter_objects, normalized

pytestmark = [pytest.mark.timeout(30)]

LIMIT = {"id": "limiter.threshold", "obis": "0.0.17.0.0.255", "quantity": "active_power", "unit": "W",
         "sim": {"value": 5000, "scaler": 1, "type": "uint16"}}  # fmt: skip


async def our_client(twin: DlmsTwin) -> CosemClient:
    client = CosemClient(WrapperLink(TcpChannel("127.0.0.1", twin.port), 16, 1), client_sap=16, logical=1)
    await client.associate(2.0)
    return client


async def close(client: CosemClient) -> None:
    await client.release(2.0)
    await client.link.channel.aclose()


async def test_clock_set_moves_the_twins_clock() -> None:
    async with DlmsTwin.create("sensemi-sed102", start=T0) as twin:
        twin.freeze()
        client = await our_client(twin)
        target = T0 + 3600.5
        octets = codec.datetime_from_epoch_ms(int(target * 1000), twin.meter.zone).encode()
        await client.set(Ref(8, "0.0.1.0.0.255", 2), codec.octets(octets), 2.0)
        assert twin.now() == target  # frozen at the time set
        read = await client.get(Ref(8, "0.0.1.0.0.255", 2), 2.0)
        assert codec.decode_datetime(bytes(read)).to_epoch_ms(twin.meter.zone) == int(target * 1000)
        twin.run()
        # the profile's clock point names the write; the value is the time set (epoch seconds)
        assert twin.writes == [Write("clock.drift", target, octets, 17, ts=twin.writes[0].ts)]
        # the time zone attribute is the meter's own: refused
        with pytest.raises(CosemError) as err:
            await client.set(Ref(8, "0.0.1.0.0.255", 3), codec.Data(DataType.INT16, 60), 2.0)
        assert err.value.dar == codec.DAR_READ_WRITE_DENIED
        await close(client)
        assert len(twin.writes) == 1


async def test_set_of_a_writable_register_and_what_a_meter_refuses() -> None:
    async with DlmsTwin.create(points=[*POINTS[:5], LIMIT], writable=["limiter.threshold"]) as twin:
        client = await our_client(twin)
        ref = Ref(3, "0.0.17.0.0.255", 2)
        assert await client.get(ref, 2.0) == 500  # 5000 W with scaler 1
        await client.set(ref, codec.u16(420), 2.0)
        assert twin.value("limiter.threshold") == 4200
        assert twin.writes[-1].point == "limiter.threshold" and twin.writes[-1].value == 4200
        assert twin.writes[-1].raw == 420 and twin.writes[-1].target == 17 and not twin.writes[-1].action
        refusals = [
            (Ref(3, "1.0.1.8.0.255", 2), codec.u32(1), codec.DAR_READ_WRITE_DENIED),  # an energy register
            (Ref(3, "0.0.17.0.0.255", 1), codec.octets(bytes(6)), codec.DAR_READ_WRITE_DENIED),  # logical name
            (Ref(3, "0.0.17.0.0.255", 3), codec.structure(codec.i8(0), codec.enum(27)), codec.DAR_READ_WRITE_DENIED),
            (Ref(3, "0.0.17.0.0.255", 9), codec.u16(1), codec.DAR_OBJECT_UNDEFINED),  # no such attribute
            (Ref(3, "1.0.99.99.0.255", 2), codec.u16(1), codec.DAR_OBJECT_UNDEFINED),  # no such object
            (Ref(4, "0.0.17.0.0.255", 2), codec.u16(1), codec.DAR_CLASS_INCONSISTENT),
            (ref, codec.u32(1), codec.DAR_TYPE_UNMATCHED),  # the register is a uint16
        ]
        for target, value, dar in refusals:
            with pytest.raises(CosemError) as err:
                await client.set(target, value, 2.0)
            assert err.value.dar == dar, target
        assert len(twin.writes) == 1 and twin.value("limiter.threshold") == 4200
        await close(client)
        # the driver reads what was set
        drv = driver(device([*POINTS[:5], LIMIT], tcp={"host": "127.0.0.1", "port": twin.port}))
        assert normalized(drv, await drv.read())["limiter.threshold"] == (4200, "good")
        await drv.ctx.bus.close()


async def test_disconnect_control_by_gurux(capsys: pytest.CaptureFixture[str]) -> None:
    async with DlmsTwin(objects=meter_objects(), transport="hdlc", password="12345678") as twin:
        s = await open_session(twin.port, "hdlc", "low")
        dc = GXDLMSDisconnectControl(DISCONNECT_OBIS)

        async def state() -> tuple[Any, Any]:
            out = (await s.request(s.c.read(dc, 2))).value
            control = (await s.request(s.c.read(dc, 3))).value
            return out, control

        assert await state() == (True, ControlState.CONNECTED)
        assert (await s.request(dc.remoteDisconnect(s.c))).error == 0
        assert await state() == (False, ControlState.DISCONNECTED)
        assert (await s.request(dc.remoteReconnect(s.c))).error == 0  # mode 1: direct reconnection
        assert await state() == (True, ControlState.CONNECTED)
        # mode 2: a remote reconnection waits for the customer's button
        dc.controlMode = ControlMode.MODE_2
        assert (await s.request(s.c.write(dc, 4))).error == 0
        await s.request(dc.remoteDisconnect(s.c))
        await s.request(dc.remoteReconnect(s.c))
        assert await state() == (False, ControlState.READY_FOR_RECONNECTION)
        twin.manual_reconnect()
        assert await state() == (True, ControlState.CONNECTED)
        # mode 0: the disconnector is always connected, the methods are refused
        dc.controlMode = ControlMode.NONE
        await s.request(s.c.write(dc, 4))
        assert (await s.request(dc.remoteDisconnect(s.c))).error == codec.DAR_READ_WRITE_DENIED
        # output_state is the meter's to say
        dc.outputState = False
        assert (await s.request(s.c.write(dc, 2))).error == codec.DAR_READ_WRITE_DENIED
        await s.close(True)
        actions = [(w.point, w.value, w.action) for w in twin.writes]
        assert actions == [
            (f"{DISCONNECT_OBIS}:1", 0, True),
            (f"{DISCONNECT_OBIS}:2", 0, True),
            (f"{DISCONNECT_OBIS}:4", 2, False),
            (f"{DISCONNECT_OBIS}:1", 0, True),
            (f"{DISCONNECT_OBIS}:2", 0, True),
            (f"{DISCONNECT_OBIS}:4", 0, False),
        ]
    capsys.readouterr()


async def test_billing_script_resets_the_maxima_and_demand(capsys: pytest.CaptureFixture[str]) -> None:
    async with DlmsTwin(objects=meter_objects()) as twin:
        twin.freeze(T0 + 300)
        points = [p for p in POINTS if p["id"] in ("demand.max", "demand.last", "voltage.l1")]
        drv = driver(device(points, tcp={"host": "127.0.0.1", "port": twin.port}))
        got = normalized(drv, await drv.read())
        assert (got["demand.max"], got["demand.last"]) == ((2500, "good"), (800, "good"))
        s = await open_session(twin.port)
        table = GXDLMSScriptTable(BILLING_SCRIPT_OBIS)
        s.c.updateValue(table, 2, (await s.request(s.c.read(table, 2))).value)
        (script,) = table.scripts
        assert script.id == 1
        assert sorted((a.target.logicalName if a.target else a.logicalName, a.index) for a in script.actions) == [
            ("1.0.1.4.0.255", 1),
            ("1.0.1.6.0.255", 1),
        ]
        assert (await s.request(table.execute(s.c, 1))).error == 0
        # refused: a script the table does not hold, a parameter of the wrong type
        assert (await s.request(table.execute(s.c, 7))).error == codec.DAR_OTHER
        assert (await s.request(s.c.method(table, 1, 1, DataType.UINT8))).error == codec.DAR_TYPE_UNMATCHED
        # a method of an object that has none to offer, a method the class does not have, no object
        energy = GXDLMSRegister("1.0.1.8.0.255")
        assert (await s.request(s.c.method(energy, 1, 0, DataType.INT8))).error == codec.DAR_READ_WRITE_DENIED
        assert (await s.request(s.c.method(energy, 5, 0, DataType.INT8))).error == codec.DAR_OBJECT_UNDEFINED
        nothing = GXDLMSRegister("1.0.99.99.0.255")
        assert (await s.request(s.c.method(nothing, 1, 0, DataType.INT8))).error == codec.DAR_OBJECT_UNDEFINED
        # the demand register's own reset (method 1) is one a client may call directly
        demand = GXDLMSDemandRegister("1.0.1.4.0.255")
        assert (await s.request(s.c.method(demand, 1, 0, DataType.INT8))).error == 0
        await s.close(False)
        # the maxima read 0 until the demand period of the reset ends, stamped with the reset
        raw = await drv.read()
        got = normalized(drv, raw)
        assert (got["demand.max"], got["demand.last"]) == ((0, "good"), (0, "good"))
        assert raw.timestamps is not None and raw.timestamps[1:] == [int((T0 + 300) * 1000)] * 2
        assert twin.meter.billing_resets == [T0 + 300]
        twin.advance(seconds=600)  # T0 + 900: a new demand period
        got = normalized(drv, await drv.read())
        assert (got["demand.max"], got["demand.last"]) == ((2500, "good"), (800, "good"))
        assert [(w.point, w.value, w.action) for w in twin.writes] == [
            (f"{BILLING_SCRIPT_OBIS}:1", 1, True),
            ("1.0.1.4.0.255:1", 0, True),
        ]
        await drv.ctx.bus.close()
    capsys.readouterr()


async def test_twin_writes_are_remembered_with_their_time() -> None:
    async with DlmsTwin(objects=meter_objects()) as twin:
        before = time.time()
        client = await our_client(twin)
        octets = codec.datetime_from_epoch_ms(int(T0 * 1000), twin.meter.zone).encode()
        await client.set(Ref(8, "0.0.1.0.0.255", 2), codec.octets(octets), 2.0)
        await close(client)
        (write,) = twin.writes
        assert write.point == "0.0.1.0.0.255:2" and write.value == T0 and before <= write.ts <= time.time()
