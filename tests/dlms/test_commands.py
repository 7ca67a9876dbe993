"""Commands through the dlms driver: writes (SET + read-back GET in one bus transaction), actions
(disconnect control, clock, the billing script), refusals, and the clock_sync policy.

Against the twin (our own COSEM server) and against gurux's own server (tests/dlms/gurux_server.py),
over real sockets on 127.0.0.1; the values our codec encodes are also decoded by gurux's parser.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo

import pytest
from gurux_dlms import GXByteBuffer, GXDateTime
from gurux_dlms.GXDLMSSettings import GXDLMSSettings
from gurux_dlms.internal._GXCommon import _GXCommon
from gurux_dlms.internal._GXDataInfo import _GXDataInfo
from pydantic import ValidationError

from drivers.dlms import codec
from drivers.dlms.codec import DataType
from drivers.dlms.config import (
    LEGACY_CLOCK_SYNC_INTERVAL,
    ClockSync,
    DlmsAction,
    DlmsDevice,
    DlmsPoint,
    ValueType,
)
from drivers.dlms.driver import DlmsDriver, DlmsRefused
from drivers.dlms.twin import BILLING_SCRIPT_OBIS, DISCONNECT_OBIS, DlmsTwin
from gateway.driver import PointError, WriteRefused, WriteRequest
from gateway.state import StateStore
from tests.dlms import gurux_server
from tests.dlms.gurux_server import GuruxMeter
from tests.dlms.util import KEYS, POINTS, T0, RecordingLog, device, driver, meter_objects, normalized

pytestmark = [pytest.mark.timeout(60)]

LIMIT = {"id": "limiter.threshold", "obis": "0.0.17.0.0.255", "quantity": "active_power", "unit": "W",
         "writable": True, "sim": {"value": 5000, "scaler": 1, "type": "uint16"}}  # fmt: skip
ENERGY_WRITABLE = {**POINTS[0], "writable": True}  # the twin refuses writes to an energy register
NOWHERE = {"id": "nowhere", "obis": "1.0.99.99.0.255", "quantity": "other", "writable": True}
SET_REQUEST = 0xC1


def sets_received(twin: DlmsTwin) -> int:
    return sum(1 for apdu in twin.meter.received if apdu[0] == SET_REQUEST)


def link(twin: DlmsTwin, target: int | None = None) -> dict[str, Any]:
    """The twin's link and security keys for a device (its points are the test's own)."""
    return {k: v for k, v in twin.device_config(target).items() if k not in ("driver", "points", "profile")}


def index_of(drv: DlmsDriver, point_id: str) -> int:
    return next(i for i, p in enumerate(drv.ctx.points) if p.id == point_id)


@asynccontextmanager
async def sensemi(**options: Any) -> AsyncIterator[tuple[DlmsTwin, DlmsDriver]]:
    """The SED102 twin and a driver of the shipped profile (its actions included)."""
    async with DlmsTwin.create("sensemi-sed102", **options) as twin:
        dev = device([], **twin.device_config(), timeout=2.0, backfill="1h")
        drv = driver(dev)
        try:
            yield twin, drv
        finally:
            await drv.stop()
            await drv.ctx.bus.close()


async def act(drv: DlmsDriver, name: str, **args: Any) -> Any:
    return await drv.action(name, drv.config.resolved_actions[name], args)


# --- writes against the twin ------------------------------------------------------------------

SECURITY: list[tuple[Literal["wrapper", "hdlc"], dict[str, Any]]] = [
    ("wrapper", {}),
    ("hdlc", {"password": "12345678"}),
    ("wrapper", {"keys": KEYS}),
]


@pytest.mark.parametrize(("transport", "security"), SECURITY, ids=["public", "lls-hdlc", "hls-gmac"])
async def test_write_sets_a_register_and_reads_it_back_in_one_bus_transaction(
    transport: Literal["wrapper", "hdlc"], security: dict[str, Any]
) -> None:
    points = [*POINTS[:5], LIMIT]
    async with DlmsTwin.create(points=points, transport=transport, writable=["limiter.threshold"], **security) as twin:
        drv = driver(device(points, **link(twin), timeout=2.0))
        assert drv.config.client_sap == (16 if not security else 1)  # LLS/HLS: the management client
        await drv.read()
        bus = drv.ctx.bus
        i = index_of(drv, "limiter.threshold")
        before, requests = bus.transactions, twin.meter.requests
        assert await drv.write(WriteRequest(i, 420)) == 420
        # the type (GET), the SET and the read-back GET held the bus once
        assert bus.transactions - before == 1 and twin.meter.requests - requests == 3
        (write,) = twin.writes
        assert (write.point, write.value, write.raw, write.action) == ("limiter.threshold", 4200, 420, False)
        assert twin.value("limiter.threshold") == 4200
        # the type is known now: SET and GET only
        before, requests = bus.transactions, twin.meter.requests
        assert await drv.write(WriteRequest(i, 421)) == 421
        assert bus.transactions - before == 1 and twin.meter.requests - requests == 2
        assert normalized(drv, await drv.read())["limiter.threshold"] == (4210, "good")
        await drv.stop()
        await bus.close()


async def test_a_declared_type_is_sent_without_asking_the_meter() -> None:
    points = [{**LIMIT, "type": "uint16"}]
    async with DlmsTwin.create(points=[LIMIT], writable="all") as twin:
        drv = driver(device(points, **link(twin)))
        await drv.read()
        requests = twin.meter.requests
        assert await drv.write(WriteRequest(0, 7)) == 7
        assert twin.meter.requests - requests == 2
        # declared wrongly: the meter says so
        wrong = driver(device([{**LIMIT, "type": "uint32"}], **link(twin)), bus=drv.ctx.bus)
        with pytest.raises(DlmsRefused) as err:
            await wrong.write(WriteRequest(0, 8))
        assert err.value.result == "type-unmatched" and "SET 0.0.17.0.0.255" in str(err.value)
        assert twin.value("limiter.threshold") == 70
        await drv.ctx.bus.close()


async def test_refusals_name_the_data_access_result() -> None:
    points = [
        *POINTS[:5],
        LIMIT,
        ENERGY_WRITABLE | {"id": "energy.writable"},
        NOWHERE,
        NOWHERE | {"id": "nowhere.typed", "type": "uint8"},
    ]
    async with DlmsTwin.create(points=[*POINTS[:5], LIMIT], writable=["limiter.threshold"]) as twin:
        drv = driver(device(points, **link(twin)))
        await drv.read()
        cases = {
            "energy.writable": "read-write-denied",  # an energy register is the meter's
            "nowhere": "object-undefined",  # asked for its type: there is no such object
            "nowhere.typed": "object-undefined",  # the SET itself
        }
        for pid, result in cases.items():
            with pytest.raises(WriteRefused) as err:
                await drv.write(WriteRequest(index_of(drv, pid), 1))
            assert isinstance(err.value, DlmsRefused) and err.value.result == result, pid
            assert str(err.value).endswith(f": {result}")
        # a value the attribute's type cannot hold is not sent at all
        sets = sets_received(twin)
        with pytest.raises(ValueError, match="uint16"):
            await drv.write(WriteRequest(index_of(drv, "limiter.threshold"), 70000))
        with pytest.raises(ValueError, match="whole number"):
            await drv.write(WriteRequest(index_of(drv, "limiter.threshold"), 1.5))
        assert sets_received(twin) == sets and twin.writes == []
        # the association is still good
        assert normalized(drv, await drv.read())["limiter.threshold"] == (5000, "good")
        await drv.ctx.bus.close()


async def test_write_after_the_meter_dropped_the_association_is_done_once() -> None:
    points = [*POINTS[:5], LIMIT]
    async with DlmsTwin.create(points=points, writable=["limiter.threshold"]) as twin:
        drv = driver(device(points, **link(twin)))
        await drv.read()
        twin.drop_associations()  # the meter forgot it: the first request is answered with an exception
        assert await drv.write(WriteRequest(index_of(drv, "limiter.threshold"), 300)) == 300
        assert len(twin.writes) == 1 and twin.meter.associations == 2
        await drv.ctx.bus.close()


async def test_a_meter_released_after_each_poll_is_released_after_a_write() -> None:
    points = [*POINTS[:5], LIMIT]
    async with DlmsTwin.create(points=points, writable=["limiter.threshold"]) as twin:
        drv = driver(device(points, **link(twin), interval="15min"))
        assert await drv.write(WriteRequest(index_of(drv, "limiter.threshold"), 12)) == 12
        assert twin.meter.associations == 1 and twin.meter.releases == 1
        with pytest.raises(DlmsRefused):
            await drv.write(WriteRequest(0, 1))
        assert twin.meter.associations == 2 and twin.meter.releases == 2
        await drv.ctx.bus.close()


async def test_a_poll_and_commands_at_once_share_the_association_and_the_bus() -> None:
    points = [*POINTS[:5], LIMIT]
    async with DlmsTwin.create(points=points, writable=["limiter.threshold"], addresses=(1, 2)) as twin:
        one = driver(device(points, **link(twin, 1), timeout=2.0))
        two = driver(device(points, **link(twin, 2), timeout=2.0), bus=one.ctx.bus)
        i = index_of(one, "limiter.threshold")

        async def polls(drv: DlmsDriver, n: int) -> list[Any]:
            return [normalized(drv, await drv.read())["voltage.l1"] for _ in range(n)]

        async def writes() -> list[Any]:
            return [await one.write(WriteRequest(i, v)) for v in range(100, 110)]

        got = await asyncio.gather(polls(one, 10), polls(two, 10), writes())
        assert all(q == "good" and 226 <= v <= 234 for v, q in got[0] + got[1])
        assert got[2] == list(range(100, 110))
        assert [w.value for w in twin.writes if w.target == 1] == [v * 10 for v in range(100, 110)]
        assert twin.value("limiter.threshold", 2) == 5000  # the other meter was not written
        await one.ctx.bus.close()


@pytest.mark.parametrize("transport", ["wrapper", "hdlc"])
async def test_a_write_cancelled_midway_leaves_a_clean_link(transport: Literal["wrapper", "hdlc"]) -> None:
    points = [*POINTS[:5], LIMIT]
    async with DlmsTwin.create(points=points, transport=transport, writable=["limiter.threshold"]) as twin:
        drv = driver(device(points, **link(twin), timeout=3.0, retries=0))  # no retry to hide a confusion
        await drv.read()
        twin.slow(0.5)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):  # the core's command budget running out
                await drv.write(WriteRequest(index_of(drv, "limiter.threshold"), 55))
        twin.revive()
        # the late answers of the cancelled request do not pass for the answers of the next ones
        got = normalized(drv, await drv.read())
        assert got["limiter.threshold"] == (twin.value("limiter.threshold"), "good")
        assert got["frequency"][1] == "good" and 49.9 < got["frequency"][0] < 50.1
        assert await drv.write(WriteRequest(index_of(drv, "limiter.threshold"), 56)) == 56
        await drv.ctx.bus.close()


# --- actions against the twin (the shipped profile's) ------------------------------------------


@pytest.mark.parametrize("security", [{}, {"keys": KEYS}], ids=["public", "hls-gmac"])
async def test_remote_disconnect_and_reconnect(security: dict[str, Any]) -> None:
    async with sensemi(**security) as (twin, drv):
        got = normalized(drv, await drv.read())
        assert (got["disconnect.output_state"], got["disconnect.control_state"]) == ((True, "good"), (1, "good"))
        assert await act(drv, "remote_disconnect") == {"output_state": False, "control_state": 0}
        got = normalized(drv, await drv.read())
        assert (got["disconnect.output_state"], got["disconnect.control_state"]) == ((False, "good"), (0, "good"))
        assert twin.value("disconnect.output_state") is False and twin.value("disconnect.control_state") == 0
        assert await act(drv, "remote_reconnect") == {"output_state": True, "control_state": 1}
        assert normalized(drv, await drv.read())["disconnect.output_state"] == (True, "good")
        assert [(w.point, w.value, w.action) for w in twin.writes] == [
            (f"{DISCONNECT_OBIS}:1", 0, True),
            (f"{DISCONNECT_OBIS}:2", 0, True),
        ]


async def test_reconnect_in_a_mode_that_waits_for_the_customer_and_a_disconnector_that_refuses() -> None:
    async with sensemi(control_mode=2) as (twin, drv):
        await act(drv, "remote_disconnect")
        assert await act(drv, "remote_reconnect") == {"output_state": False, "control_state": 2}
        twin.manual_reconnect()
        assert normalized(drv, await drv.read())["disconnect.control_state"] == (1, "good")
    async with sensemi(control_mode=0) as (twin, drv):
        with pytest.raises(DlmsRefused) as err:
            await act(drv, "remote_disconnect")
        assert err.value.result == "read-write-denied"
        assert str(err.value) == "ACTION 0.0.96.3.10.255 (class 70, method 1): read-write-denied"
        assert twin.writes == []


async def test_set_clock_to_a_given_time_and_to_now() -> None:
    async with sensemi(start=T0, timezone="Europe/Ljubljana") as (twin, drv):
        assert drv.config.timezone == "Europe/Ljubljana"
        twin.freeze()
        answer = await act(drv, "set_clock", time="2026-03-10T13:00:00.25+00:00")
        assert twin.now() == T0 + 3600.25
        assert answer == {"time": "2026-03-10T13:00:00.250Z"}
        (write,) = twin.writes
        assert write.point == "clock.drift" and write.value == T0 + 3600.25
        # the meter got its local time with the deviation (CET: UTC - local = -60 min)
        dt = codec.decode_datetime(write.raw)
        assert (dt.hour, dt.deviation) == (14, -60)
        twin.run()
        await act(drv, "set_clock")  # no time: the gateway's now
        assert abs(twin.now() - time.time()) < 1.0
        drift = normalized(drv, await drv.read())["clock.drift"][0]
        assert abs(drift) < 1.0


async def test_billing_reset_runs_the_script_and_zeroes_the_maxima() -> None:
    async with sensemi(start=T0 + 300) as (twin, drv):
        twin.freeze(T0 + 300)
        assert normalized(drv, await drv.read())["demand.active_import.max"] == (2500, "good")
        assert await act(drv, "billing_reset") is None  # the script returns nothing
        assert [(w.point, w.value, w.action) for w in twin.writes] == [(f"{BILLING_SCRIPT_OBIS}:1", 1, True)]
        assert twin.meter.billing_resets == [T0 + 300]
        assert normalized(drv, await drv.read())["demand.active_import.max"] == (0, "good")
        # a script the table does not hold
        other = DlmsAction.model_validate({"script": BILLING_SCRIPT_OBIS, "selector": 7})
        with pytest.raises(DlmsRefused) as err:
            await drv.action("bad_script", other, {})
        assert err.value.result == "other-reason"
        assert len(twin.writes) == 1


async def test_an_action_with_an_argument_parameter_and_a_set_action() -> None:
    actions = {
        # a Demand register's own reset (method 1, integer 0), given as an argument
        "demand_reset": {"class": 5, "obis": "1.0.1.4.0.255", "method": 1, "arg": "zero", "type": "int8",
                         "args": {"zero": {"type": "integer", "required": False, "default": 0}}},
        "mode": {"class": 70, "obis": DISCONNECT_OBIS, "attribute": 4, "arg": "mode", "type": "enum",
                 "args": {"mode": {"type": "integer", "min": 0, "max": 6}}},
        "wrong_type": {"class": 5, "obis": "1.0.1.4.0.255", "method": 1, "parameter": {"type": "uint8", "value": 0}},
    }  # fmt: skip
    async with DlmsTwin(objects=meter_objects()) as twin:
        twin.freeze(T0 + 300)
        points = [p for p in POINTS if p["id"] == "demand.last"]
        drv = driver(device(points, **link(twin), actions=actions))
        specs = drv.config.resolved_actions
        assert await drv.action("demand_reset", specs["demand_reset"], {}) is None
        assert normalized(drv, await drv.read())["demand.last"] == (0, "good")
        assert await drv.action("mode", specs["mode"], {"mode": 3}) == {"value": 3}
        assert twin.meter.control_mode == 3
        with pytest.raises(DlmsRefused, match="type-unmatched"):
            await drv.action("wrong_type", specs["wrong_type"], {})
        await drv.ctx.bus.close()


# --- clock_sync ---------------------------------------------------------------------------------


def clock_sets(log: RecordingLog) -> list[dict[str, Any]]:
    return [kw for _lv, event, kw in log.records if event == "dlms meter clock set"]


async def test_clock_sync_sets_a_drifted_clock_once_per_interval() -> None:
    async with DlmsTwin(objects=meter_objects()) as twin:
        log = RecordingLog()
        state = StateStore(None)
        dev = device(POINTS, **link(twin), clock_sync={"max_drift": "5s", "interval": "1d"})
        drv = driver(dev, state=state, log=log)
        twin.set_time(time.time() + 3)  # within max_drift: left alone
        assert 2 < normalized(drv, await drv.read())["clock.drift"][0] < 4
        assert twin.writes == [] and clock_sets(log) == []
        twin.set_time(time.time() + 60)
        drift, quality = normalized(drv, await drv.read())["clock.drift"]
        assert quality == "good" and 59 < drift < 61  # the drift of this poll, before the set
        assert [w.point for w in twin.writes] == ["0.0.1.0.0.255:2"]
        assert abs(twin.now() - time.time()) < 1.0
        (entry,) = clock_sets(log)
        assert 59 < entry["drift_s"] < 61 and entry["max_drift_s"] == 5 and abs(entry["drift_after_s"]) < 1
        assert isinstance(state.get("clock_set_at"), float)
        # drifted again the same day: published, not set
        twin.set_time(time.time() + 60)
        assert 59 < normalized(drv, await drv.read())["clock.drift"][0] < 61
        assert len(twin.writes) == 1 and len(clock_sets(log)) == 1
        # a restart does not reset the interval: the time of the set is in the device state
        again = driver(dev, bus=drv.ctx.bus, state=state, log=log)
        await again.read()
        assert len(twin.writes) == 1
        # a day later (as the stored time says) it is set again
        state.commit({"clock_set_at": time.time() - 86401})
        await again.read()
        assert len(twin.writes) == 2 and len(clock_sets(log)) == 2
        assert abs(twin.now() - time.time()) < 1.0
        await drv.ctx.bus.close()


async def test_clock_sync_publishes_the_drift_without_a_drift_point_in_the_profile() -> None:
    points = [p for p in POINTS if p["id"] not in ("clock.drift", "clock")]
    async with DlmsTwin(objects=meter_objects()) as twin:
        twin.set_time(time.time() + 30)
        dev = device(points, **link(twin), clock_sync={})
        assert dev.clock_sync == ClockSync(max_drift=5.0, interval=86400.0)
        assert [p.id for p in dev.resolved_points][-1] == "clock_drift"
        drv = driver(dev)
        assert 29 < normalized(drv, await drv.read())["clock_drift"][0] < 31
        assert len(twin.writes) == 1
        # without clock_sync nothing is added
        assert "clock_drift" not in [p.id for p in device(points, **link(twin)).resolved_points]
        await drv.ctx.bus.close()


async def test_clock_sync_refused_by_the_meter_is_logged_once_and_not_retried_within_the_interval() -> None:
    async with GuruxMeter(clock_writable=False) as meter:
        meter.objects.clock.time = GXDateTime(datetime(2020, 1, 1, tzinfo=UTC))
        log = RecordingLog()
        points = [{"id": "drift", "obis": "0.0.1.0.0.255", "class": 8, "quantity": "clock_drift", "unit": "s"}]
        drv = driver(device(points, tcp={"host": "127.0.0.1", "port": meter.port}, clock_sync={}, timeout=2.0), log=log)
        for _ in range(2):
            raw = await drv.read()
            assert raw.values[0] is not None and not isinstance(raw.values[0], PointError)
        refused = [kw for lv, event, kw in log.records if event == "dlms meter clock set refused"]
        assert len(refused) == 1 and "read-write denied" in refused[0]["error"]
        assert clock_sets(log) == [] and meter.objects.events == []
        await drv.ctx.bus.close()


def test_clock_sync_config_and_the_old_form() -> None:
    tcp: dict[str, Any] = {"tcp": {"host": "127.0.0.1", "port": 4059}}
    old = device(POINTS, **tcp, clock_sync=True, clock_sync_threshold="5s")
    assert old.clock_sync == ClockSync(max_drift=5.0, interval=LEGACY_CLOCK_SYNC_INTERVAL)
    assert device(POINTS, **tcp, clock_sync=True).clock_sync == ClockSync(max_drift=10.0, interval=3600.0)
    assert device(POINTS, **tcp, clock_sync=False, clock_sync_threshold="5s").clock_sync is None
    assert device(POINTS, **tcp, clock_sync={"max_drift": "2s", "interval": "12h"}).clock_sync == ClockSync(
        max_drift=2.0, interval=43200.0
    )
    for bad in (
        {"clock_sync": {"max_drift": "2s"}, "clock_sync_threshold": "5s"},
        {"clock_sync": {"interval": "10s"}},
        {"clock_sync": {"max_drift": "0s"}},
    ):
        with pytest.raises(ValueError):
            DlmsDevice.model_validate({"id": "m", "driver": "dlms", **tcp, **bad})


# --- config of commands ---------------------------------------------------------------------------


def test_action_and_writable_point_models() -> None:
    ok = [
        {"class": 70, "obis": "0-0:96.3.10", "method": 1, "read_back": {"state": 3}},
        {"class": 70, "obis": DISCONNECT_OBIS, "method": 1, "parameter": None},
        {"script": "0.0.10.0.1.255", "selector": 1},
        {"class": 8, "obis": "0.0.1.0.0.255", "attribute": 2, "arg": "t", "args": {"t": {"type": "datetime"}}},
        {"class": 1, "obis": "0.0.96.1.0.255", "attribute": 2, "parameter": {"type": "visible_string", "value": "x"}},
    ]
    for spec in ok:
        DlmsAction.model_validate(spec)
    assert DlmsAction.model_validate(ok[0]).obis == DISCONNECT_OBIS
    bad: dict[str, dict[str, Any]] = {
        "a SET action gives the value": {"class": 8, "obis": "0.0.1.0.0.255", "attribute": 2},
        "not both": {"class": 70, "obis": DISCONNECT_OBIS, "method": 1, "attribute": 2},
        "selector": {"script": "0.0.10.0.1.255"},
        "script action": {"script": "0.0.10.0.1.255", "selector": 1, "class": 9},
        "not one of the action's args": {"class": 70, "obis": DISCONNECT_OBIS, "method": 1, "arg": "x"},
        "A-XDR type": {"class": 3, "obis": "1.0.1.4.0.255", "method": 1, "arg": "n", "args": {"n": {"type": "integer"}}},
        "needs a default": {"class": 3, "obis": "1.0.1.4.0.255", "method": 1, "arg": "n", "type": "int8",
                            "args": {"n": {"type": "integer", "required": False}}},
        "null parameter": {"class": 70, "obis": DISCONNECT_OBIS, "method": 1, "parameter": {"type": "null", "value": 1}},
        "class, obis": {"method": 1},
    }  # fmt: skip
    for message, spec in bad.items():
        with pytest.raises(ValidationError, match=message):
            DlmsAction.model_validate(spec)
    base: dict[str, Any] = {"id": "x", "quantity": "other", "writable": True}
    with pytest.raises(ValidationError, match="set_clock"):
        DlmsPoint.model_validate({**base, "obis": "0.0.1.0.0.255", "class": 8})
    with pytest.raises(ValidationError, match="history"):
        DlmsPoint.model_validate({**base, "obis": "1.0.99.1.0.255", "class": 7, "column": "1.0.1.8.0.255"})
    assert DlmsPoint.model_validate({**base, "obis": "0.0.17.0.0.255", "type": "uint16"}).type == "uint16"
    # every type a config may name is one the codec encodes
    assert set(get_args(ValueType)) == set(codec.TYPE_NAMES)


def test_shipped_profiles_declare_the_relay_clock_and_billing_reset() -> None:
    for name in ("sensemi-sed102", "sensemi-sed302", "sensemi-sm120b2", "sensemi-sm306", "sensemi-sm307"):
        dev = device([], profile=name, tcp={"host": "127.0.0.1", "port": 4059})
        actions = {k: v for k, v in dev.resolved_actions.items() if isinstance(v, DlmsAction)}
        assert set(actions) == {"remote_disconnect", "remote_reconnect", "set_clock", "billing_reset"}, name
        assert (actions["remote_disconnect"].method, actions["remote_reconnect"].method) == (1, 2)
        assert actions["set_clock"].args["time"].required is False
        assert (actions["billing_reset"].script, actions["billing_reset"].selector) == (BILLING_SCRIPT_OBIS, 1)
        by_id = {p.id: p for p in dev.resolved_points if isinstance(p, DlmsPoint)}
        assert (by_id["disconnect.output_state"].attribute, by_id["disconnect.control_state"].attribute) == (2, 3)
        assert dev.profile_meta["status"] == "assumed"


# --- gurux's own server as the peer ---------------------------------------------------------------

GX_POINTS = [
    {"id": "limit", "obis": gurux_server.WRITABLE_OBIS, "quantity": "active_power", "unit": "W", "writable": True},
    {"id": "energy", "obis": gurux_server.READ_ONLY_OBIS, "quantity": "active_energy_import", "unit": "Wh",
     "kind": "counter", "writable": True},
    {"id": "relay", "obis": DISCONNECT_OBIS, "class": 70, "attribute": 2, "quantity": "breaker_state", "kind": "state"},
    {"id": "relay.state", "obis": DISCONNECT_OBIS, "class": 70, "attribute": 3, "quantity": "status", "kind": "state"},
    NOWHERE,
]  # fmt: skip


async def test_against_gurux_server_writes_and_refusals() -> None:
    async with GuruxMeter() as meter:
        drv = driver(device(GX_POINTS, tcp={"host": "127.0.0.1", "port": meter.port}, timeout=2.0))
        raw = await drv.read()
        assert raw.values[:4] == [500, 1234567, True, 1] and raw.exponents is not None and raw.exponents[0] == 1
        assert await drv.write(WriteRequest(0, 420)) == 420
        assert meter.objects.events == [("limit", 420)]
        assert normalized(drv, await drv.read())["limit"] == (4200, "good")
        with pytest.raises(DlmsRefused) as err:
            await drv.write(WriteRequest(1, 5))
        assert err.value.result == "read-write-denied"
        with pytest.raises(DlmsRefused) as err:
            await drv.write(WriteRequest(4, 5))
        assert err.value.result == "object-undefined"
        # SET accepted, read-back refused: written, but not verified
        meter.objects.unreadable.add(gurux_server.WRITABLE_OBIS)
        back = await drv.write(WriteRequest(0, 421))
        assert isinstance(back, PointError) and "read-back failed" in back.message
        assert meter.objects.events[-1] == ("limit", 421)
        await drv.ctx.bus.close()


async def test_against_gurux_server_actions() -> None:
    async with GuruxMeter() as meter:
        dev = device(GX_POINTS[2:4], profile="sensemi-sed102", tcp={"host": "127.0.0.1", "port": meter.port},
                     timeout=2.0)  # fmt: skip
        drv = driver(dev)
        assert await act(drv, "remote_disconnect") == {"output_state": False, "control_state": 0}
        assert await act(drv, "remote_reconnect") == {"output_state": True, "control_state": 1}
        assert await act(drv, "billing_reset") is None
        answer = await act(drv, "set_clock", time="2026-03-10T12:00:00+00:00")
        assert answer == {"time": "2026-03-10T12:00:00.000Z"}
        assert [e[0] for e in meter.objects.events] == ["relay:1", "relay:2", "script", "clock"]
        assert meter.objects.events[:3] == [("relay:1", 0), ("relay:2", 0), ("script", 1)]
        # gurux decodes the date-time the driver sent as the time asked for
        sent = codec.decode_datetime(meter.objects.events[3][1]).to_epoch_ms(ZoneInfo("UTC"))
        assert sent == int(T0 * 1000)
        # a read-back that fails after the meter acted: the action is done, the answer says what is missing
        meter.objects.unreadable.add(DISCONNECT_OBIS)
        answer = await act(drv, "remote_disconnect")
        assert answer["output_state"] is None and "hardware fault" in answer["read_back_error"]
        assert meter.objects.relay.outputState is False
        await drv.ctx.bus.close()


# --- the codec's values, decoded by gurux ---------------------------------------------------------

SAMPLES: dict[str, list[Any]] = {
    "boolean": [True, False],
    "int8": [-128, 0, 127],
    "int16": [-32768, 32767],
    "int32": [-(2**31), 2**31 - 1],
    "int64": [-(2**63), 2**63 - 1],
    "uint8": [0, 255],
    "uint16": [0, 65535, 5.0],
    "uint32": [0, 2**32 - 1],
    "uint64": [0, 2**64 - 1],
    "enum": [0, 6, 255],
    "float32": [0.5, -1.25, 3.4e38],
    "float64": [0.1, -1e300],
    "octet_string": ["SED302", ""],
    "visible_string": ["edgegw"],
    "utf8_string": ["Ljubljana čas"],
}
OUT_OF_RANGE: dict[str, list[Any]] = {
    "int8": [128, -129, 1.5, "1"],
    "uint16": [-1, 65536],
    "uint64": [2**64],
    "boolean": [2, "true"],
    "float32": [1e39, "1"],
    "octet_string": [5, "čas"],
    "visible_string": ["čas"],
    "null": [0],
}


def gurux_decode(raw: bytes) -> tuple[Any, int]:
    info = _GXDataInfo()
    value = _GXCommon.getData(GXDLMSSettings(False, None), GXByteBuffer(raw), info)
    return value, int(info.type_)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_values_the_driver_sends_decode_in_gurux_as_sent(name: str) -> None:
    dtype = codec.TYPE_NAMES[name]
    for sample in SAMPLES[name]:
        value, tag = gurux_decode(codec.encode_data(codec.value_of_type(dtype, sample)))
        assert tag == int(dtype), (name, sample)
        if dtype == DataType.OCTET_STRING:
            assert bytes(value) == sample.encode()
        elif dtype == DataType.UTF8_STRING:  # gurux shows UTF-8 strings as hex
            assert bytes.fromhex(value).decode() == sample
        elif dtype == DataType.FLOAT32:
            assert math.isclose(float(value), sample, rel_tol=1e-7)
        else:
            assert value == sample, (name, sample, value)


@pytest.mark.parametrize("name", sorted(OUT_OF_RANGE))
def test_values_a_type_cannot_hold_are_refused_before_the_wire(name: str) -> None:
    for sample in OUT_OF_RANGE[name]:
        with pytest.raises(ValueError):
            codec.value_of_type(codec.TYPE_NAMES[name], sample)
