"""The driver against the twin over TCP (wrapper and HDLC): registers, security, faults."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import pytest

from drivers.dlms.twin import DlmsTwin, TwinObject
from gateway.driver import DeviceError, DeviceTimeout, PointError
from gateway.points import Quality
from gateway.state import StateStore
from gateway.twin import Signal
from tests.dlms.util import (
    KEYS,
    KEYS_TEXT,
    POINTS,
    T0,
    RecordingLog,
    device,
    driver,
    meter_objects,
    normalized,
    wait_until,
)

pytestmark = [pytest.mark.timeout(20)]

Transport = Literal["wrapper", "hdlc"]
TRANSPORTS: list[Transport] = ["wrapper", "hdlc"]


def tcp(twin: DlmsTwin, transport: str) -> dict[str, Any]:
    return {"tcp": {"host": "127.0.0.1", "port": twin.port}, "transport": transport}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_registers_exact_scaling_and_units(transport: Transport) -> None:
    async with DlmsTwin(objects=meter_objects(), transport=transport) as twin:
        twin.set_time(time.time() + 30)
        drv = driver(device(**tcp(twin, transport)))
        await drv.start()
        raw = await drv.read()
        got = normalized(drv, raw)
        assert got["energy.import"] == (123456.7, "good")  # 1234567 x 10^-1, exactly
        assert got["energy.export"] == (5000, "good")
        assert got["voltage.l1"] == (230.1, "good")
        assert got["current.l1"] == (-1.234, "good")
        assert got["frequency"] == (49.99, "good")
        assert got["demand.max"] == (2500, "good")
        assert got["demand.last"] == (800, "good")
        assert got["serial"] == ("SED3020001234", "good")
        assert raw.exponents is not None and raw.exponents[0] == -1 and raw.values[0] == 1234567
        drift, q = got["clock.drift"]
        assert q == "good" and 28.5 < drift < 31.5
        clock, _ = got["clock"]
        assert isinstance(clock, str) and clock.startswith(time.strftime("%Y-", time.gmtime()))
        # capture times are the Extended / Demand registers' source timestamps
        assert raw.timestamps is not None
        assert raw.timestamps[5] is not None and raw.timestamps[5] % 900_000 == 0
        assert raw.timestamps[6] is not None and raw.timestamps[6] % 900_000 == 0
        assert raw.qualities is not None and all(q in (None, Quality.GOOD) for q in raw.qualities)
        # the scaler/unit attributes are read once: a second poll costs two GET-with-list
        # (12 values and capture times, at most 10 per list)
        before = twin.meter.requests
        await drv.read()
        assert twin.meter.requests - before == 2
        await drv.stop()
        await drv.ctx.bus.close()


async def test_unknown_obis_and_unit_mismatch_are_point_errors_logged_once() -> None:
    objects = [*meter_objects(), TwinObject(3, "1.0.3.8.0.255", Signal(value=7), unit=32)]
    points = [
        *POINTS,
        {"id": "nothing", "obis": "1.0.99.99.0.255", "quantity": "other"},
        {"id": "wrong_unit", "obis": "1.0.3.8.0.255", "quantity": "active_energy_import", "unit": "Wh"},
    ]
    async with DlmsTwin(objects=objects) as twin:
        log = RecordingLog()
        drv = driver(device(points, **tcp(twin, "wrapper")), log=log)
        for _ in range(3):
            raw = await drv.read()
            got = normalized(drv, raw)
            assert got["nothing"][1] == "bad"
            assert got["wrong_unit"] == (7, "uncertain")
            assert got["energy.import"] == (123456.7, "good")
        assert isinstance(raw.values[-2], PointError) and "object undefined" in raw.values[-2].message
        assert log.events("warning").count("dlms point unreadable") == 1
        assert log.events("warning").count("dlms meter reports another unit than the profile") == 1
        await drv.ctx.bus.close()


async def test_single_gets_when_the_meter_refuses_lists() -> None:
    async with DlmsTwin(objects=meter_objects(), with_list=False) as twin:
        drv = driver(device(**tcp(twin, "wrapper")))
        got = normalized(drv, await drv.read())
        assert got["energy.import"] == (123456.7, "good")
        assert not drv.client.supports_list()
        await drv.ctx.bus.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_hls_gmac_ciphered_association(transport: Transport, tmp_path: Path) -> None:
    keys = tmp_path / "meter.keys"
    keys.write_text(KEYS_TEXT)
    state_file = tmp_path / "state.json"
    async with DlmsTwin(objects=meter_objects(), transport=transport, keys=KEYS) as twin:
        dev = device(**tcp(twin, transport), auth="high_gmac", keys_file=str(keys))
        assert dev.client_sap == 1
        drv = driver(dev, state=StateStore(state_file))
        got = normalized(drv, await drv.read())
        assert got["energy.import"] == (123456.7, "good")
        assert twin.meter.associations == 1 and twin.meter.ic_violations == 0
        # the invocation counter range is on disk before it is used
        reserved = StateStore(state_file).get("invocation_counter")
        assert isinstance(reserved, int) and reserved > drv.client.invocation_counter
        await drv.stop()
        # a new gateway process continues above every counter already used
        drv2 = driver(dev, bus=drv.ctx.bus, state=StateStore(state_file))
        assert normalized(drv2, await drv2.read())["voltage.l1"] == (230.1, "good")
        assert twin.meter.ic_violations == 0
        await drv2.stop()
        # forgetting the counter would replay old counters: the meter refuses
        drv3 = driver(dev, bus=drv.ctx.bus, state=StateStore(None))
        with pytest.raises(DeviceError, match="association refused"):
            await drv3.read()
        await drv.ctx.bus.close()


async def test_hls_with_a_wrong_key_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "meter.keys"
    keys.write_text(KEYS_TEXT.replace("D0D1", "D0D2"))
    async with DlmsTwin(objects=meter_objects(), keys=KEYS) as twin:
        drv = driver(device(**tcp(twin, "wrapper"), auth="high_gmac", keys_file=str(keys)))
        with pytest.raises(DeviceError, match="authentication failure"):
            await drv.read()
        await drv.ctx.bus.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_lls_password(transport: Transport, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METER_PW", "12345678")
    monkeypatch.setenv("METER_PW_WRONG", "87654321")
    async with DlmsTwin(objects=meter_objects(), transport=transport, password="12345678") as twin:
        drv = driver(device(**tcp(twin, transport), auth="low", password_env="METER_PW"))
        assert normalized(drv, await drv.read())["energy.import"] == (123456.7, "good")
        log = RecordingLog()
        bad = driver(
            device(**tcp(twin, transport), auth="low", password_env="METER_PW_WRONG"), bus=drv.ctx.bus, log=log
        )
        for _ in range(3):
            with pytest.raises(DeviceError, match="authentication failure") as err:
                await bad.read()
            assert "87654321" not in str(err.value)
        assert log.events("warning") == ["dlms meter failed"]
        assert all("87654321" not in repr(r) for r in log.records)
        await drv.ctx.bus.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_slow_and_dead_meter_cost_one_timeout(transport: Transport) -> None:
    async with DlmsTwin(objects=meter_objects(), transport=transport) as twin:
        log = RecordingLog()
        drv = driver(device(**tcp(twin, transport), timeout=0.4), log=log)
        await drv.read()
        twin.slow(1.0)
        t0 = time.monotonic()
        with pytest.raises(DeviceTimeout):
            await drv.read()
        assert time.monotonic() - t0 < 0.75  # one timeout, no retry
        twin.revive()
        # the late answer still comes, and must not pass for the answer to the next request
        await wait_until(lambda: twin.meter.pending == 0, what="the late answer")
        twin.kill()
        for _ in range(2):
            with pytest.raises(DeviceTimeout, match="did not answer"):
                await drv.read()
        twin.revive()
        got = normalized(drv, await drv.read())
        assert got["energy.import"] == (123456.7, "good")
        # slow, then dead: the same failure, logged once; and its end
        assert log.events() == ["dlms meter failed", "dlms meter answers again"]
        await drv.ctx.bus.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_corrupted_frames(transport: Transport) -> None:
    async with DlmsTwin(objects=meter_objects(), transport=transport) as twin:
        log = RecordingLog()
        drv = driver(device(**tcp(twin, transport), timeout=0.3), log=log)
        await drv.read()
        twin.corrupt()  # the garbage fault
        for _ in range(2):
            with pytest.raises(DeviceError) as err:
                await drv.read()
            # HDLC: frames that fail their checks; the wrapper: a header that is not one
            assert not isinstance(err.value, DeviceTimeout) or "broken" in str(err.value)
            assert "corrupted reply" in str(err.value) or "wrapper" in str(err.value)
        warnings = log.events("warning")
        # The same damage (an FCS error) is logged once; random wrapper headers differ each time.
        assert set(warnings) == {"dlms meter failed"} and (transport == "wrapper" or len(warnings) == 1)
        twin.corrupt(False)
        assert normalized(drv, await drv.read())["voltage.l1"] == (230.1, "good")
        assert log.events("info")[-1] == "dlms meter answers again"
        await drv.ctx.bus.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_reassociates_after_the_meter_drops_it(transport: Transport) -> None:
    async with DlmsTwin(objects=meter_objects(), transport=transport) as twin:
        drv = driver(device(**tcp(twin, transport)))
        await drv.read()
        twin.drop_associations()
        assert normalized(drv, await drv.read())["voltage.l1"] == (230.1, "good")
        assert twin.meter.associations == 2
        twin.drop_connections()
        assert normalized(drv, await drv.read())["voltage.l1"] == (230.1, "good")
        assert twin.meter.associations == 3 and twin.connections == 2
        await drv.ctx.bus.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_release_on_stop_and_after_each_poll(transport: Transport) -> None:
    async with DlmsTwin(objects=meter_objects(), transport=transport) as twin:
        drv = driver(device(**tcp(twin, transport)))
        await drv.read()
        await drv.stop()
        assert twin.meter.releases == 1
        assert twin.meter.disconnects == (1 if transport == "hdlc" else 0)
        slow = driver(device(**tcp(twin, transport), interval="15min"), bus=drv.ctx.bus)
        assert slow.config.release_after_poll
        await slow.read()
        await slow.read()
        assert twin.meter.releases == 3 and twin.meter.associations == 3
        await drv.ctx.bus.close()


async def test_clock_sync_writes_the_clock_when_it_drifts() -> None:
    async with DlmsTwin(objects=meter_objects()) as twin:
        twin.set_time(T0)
        drv = driver(device(**tcp(twin, "wrapper"), clock_sync=True, clock_sync_threshold="5s"))
        got = normalized(drv, await drv.read())
        assert got["clock.drift"][0] < -1000
        assert [w.point for w in twin.writes] == ["0.0.1.0.0.255:2"]
        assert abs(twin.now() - time.time()) < 2
        got = normalized(drv, await drv.read())
        assert abs(got["clock.drift"][0]) < 2
        await drv.ctx.bus.close()


async def test_discover_lists_the_association_objects() -> None:
    async with DlmsTwin(objects=meter_objects()) as twin:
        drv = driver(device([], **tcp(twin, "wrapper")))
        found = await drv.discover()
        by_id = {p["id"]: p for p in found}
        assert by_id["energy.active_import"]["obis"] == "1.0.1.8.0.255"
        assert by_id["energy.active_import"]["unit"] == "Wh"
        assert by_id["voltage.l1"]["quantity"] == "voltage" and by_id["voltage.l1"]["phase"] == "L1"
        assert by_id["clock_drift"]["class"] == 8
        lp = [p for p in found if p["obis"] == "1.0.99.1.0.255"]
        assert {p["column"] for p in lp} == {"1.0.1.8.1.255", "1.0.32.7.0.255"}
        # the discovered points are a working configuration
        drv2 = driver(device(found, **tcp(twin, "wrapper")), bus=drv.ctx.bus)
        got = normalized(drv2, await drv2.read())
        assert got["energy.active_import"] == (123456.7, "good")
        await drv.ctx.bus.close()


async def test_twin_auth_setting_and_keys_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METER_PW", "12345678")
    keys = tmp_path / "meter.keys"
    keys.write_text(KEYS_TEXT)
    async with DlmsTwin(objects=meter_objects(), auth="high_gmac", keys=str(keys)) as twin:
        # LLS is refused by a meter that wants HLS for its management client
        lls = driver(device(**tcp(twin, "wrapper"), auth="low", password_env="METER_PW"))
        with pytest.raises(DeviceError, match="mechanism not recognised"):
            await lls.read()
        # the public client still reads without authentication
        public = driver(device(**tcp(twin, "wrapper")), bus=lls.ctx.bus)
        assert normalized(public, await public.read())["voltage.l1"] == (230.1, "good")
        hls = driver(device(**tcp(twin, "wrapper"), auth="high_gmac", keys_file=str(keys)), bus=lls.ctx.bus)
        assert normalized(hls, await hls.read())["voltage.l1"] == (230.1, "good")
        await lls.ctx.bus.close()


async def test_invocation_counters_are_not_wasted_by_reassociation(tmp_path: Path) -> None:
    keys = tmp_path / "meter.keys"
    keys.write_text(KEYS_TEXT)
    state_file = tmp_path / "state.json"
    async with DlmsTwin(objects=meter_objects(), keys=KEYS) as twin:
        dev = device(**tcp(twin, "wrapper"), auth="high_gmac", keys_file=str(keys), interval="15min")
        drv = driver(dev, state=StateStore(state_file))
        for _ in range(5):  # released after every poll: five associations
            await drv.read()
        assert twin.meter.associations == 5 and twin.meter.ic_violations == 0
        used = max(twin.meter.last_client_ic.values())
        assert used < 100  # one block of 1000 serves them all
        assert StateStore(state_file).get("invocation_counter") < 2000  # one block reserved
        await drv.ctx.bus.close()
