"""DLMS event logs (0.0.99.98.n.255): read by range from a cursor, published as events with the meter's stamps."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal

import pytest

from drivers.dlms import codec, obis
from drivers.dlms.config import DlmsDevice
from drivers.dlms.twin import DlmsTwin
from gateway.config import ConfigError, parse_device
from gateway.state import StateStore
from tests.dlms.util import POINTS, T0, device, driver, meter_objects, normalized, series_of

pytestmark = [pytest.mark.timeout(30)]
LOGS = ["0.0.99.98.0.255", "0.0.99.98.1.255", "0.0.99.98.2.255"]


def event_device(twin: DlmsTwin, **kw: Any) -> Any:
    kw.setdefault("event_logs", LOGS)
    return device(POINTS[:1], tcp={"host": "127.0.0.1", "port": twin.port}, **kw)


def safe(drv: Any, raw: Any) -> Any:
    """What the core does once the poll's messages are safe: store the state the poll carries."""
    if raw.commit is not None:
        drv.ctx.state.commit(raw.commit)
    return raw


def brief(events: list[dict[str, Any]]) -> list[tuple[str, int, int | None, str | None]]:
    return [(e["log"], e["ts"], e["code"], e["name"]) for e in events]


@pytest.mark.parametrize("transport", ["wrapper", "hdlc"])
async def test_events_read_once_with_the_meters_stamps_across_restarts(
    tmp_path: Path, transport: Literal["wrapper", "hdlc"]
) -> None:
    state_file = tmp_path / "state.json"
    t0 = int(T0 * 1000)
    async with DlmsTwin(objects=meter_objects(), transport=transport, start=T0) as twin:
        twin.freeze()
        twin.log_event(0, 1, at=T0 - 7200)
        twin.log_event(0, 2, at=T0 - 7100)
        twin.log_event(0, 3, at=T0 - 30 * 86400)  # older than the backfill depth: never read
        dev = event_device(twin, transport=transport, backfill="1d")
        drv = driver(dev, state=StateStore(state_file))
        await drv.start()
        raw = safe(drv, await drv.read())
        assert brief(raw.events) == [
            ("standard", t0 - 7_200_000, 1, "power_down"),
            ("standard", t0 - 7_100_000, 2, "power_up"),
        ]
        assert raw.events[0]["log_obis"] == "0.0.99.98.0.255" and "columns" not in raw.events[0]
        assert raw.values[0] is not None  # the register is read as before
        assert (await drv.read()).events == []
        # an outage told to the twin: power-up shows only once the meter's clock passes it
        twin.power_failure(600)
        twin.tamper()
        twin.advance(seconds=60)
        raw = safe(drv, await drv.read())
        assert brief(raw.events) == [("standard", t0, 1, "power_down"), ("fraud", t0, 44, "meter_cover_removed")]
        twin.advance(minutes=10)
        await drv.stop()
        # a new gateway process resumes from the stored cursors
        drv2 = driver(dev, bus=drv.ctx.bus, state=StateStore(state_file))
        await drv2.start()
        raw = safe(drv2, await drv2.read())
        assert brief(raw.events) == [("standard", t0 + 600_000, 2, "power_up")]
        await drv2.stop()
        await drv.ctx.bus.close()


async def test_relay_events_share_a_stamp_and_unknown_codes_keep_their_number(tmp_path: Path) -> None:
    t0 = int(T0 * 1000)
    async with DlmsTwin(objects=meter_objects(), start=T0) as twin:
        twin.freeze()
        drv = driver(event_device(twin), state=StateStore(tmp_path / "s.json"))
        await drv.start()
        safe(drv, await drv.read())
        meter = twin.meter
        assert meter.action(70, "0.0.96.3.10.255", 1, _int8())[0] == 0  # remote disconnect
        assert meter.action(70, "0.0.96.3.10.255", 2, _int8())[0] == 0  # remote reconnect
        twin.log_event(0, 231)  # a vendor code in the same second
        twin.advance(seconds=10)
        raw = safe(drv, await drv.read())
        # Two events in one second are two events (a profile would keep one entry per stamp).
        relay = [(e["code"], e["name"]) for e in raw.events if e["log"] == "disconnector"]
        assert relay == [(62, "remote_disconnection"), (63, "remote_connection")]  # control mode 1: direct
        assert ("standard", t0, 231, None) in brief(raw.events)
        twin.advance(seconds=10)
        assert (await drv.read()).events == []
        await drv.stop()
        await drv.ctx.bus.close()


async def test_a_missing_event_log_is_logged_and_the_rest_is_read(tmp_path: Path) -> None:
    async with DlmsTwin(objects=meter_objects(), start=T0) as twin:
        twin.freeze()
        twin.log_event(1, 40)
        twin.advance(seconds=5)
        dev = event_device(twin, event_logs=["0.0.99.98.7.255", "0.0.99.98.1.255"])
        drv = driver(dev, state=StateStore(tmp_path / "s.json"))
        await drv.start()
        raw = await drv.read()
        assert brief(raw.events) == [("fraud", int(T0 * 1000), 40, "terminal_cover_removed")]
        assert drv.ctx.log.events("warning").count("dlms event log unreadable") == 1  # type: ignore[attr-defined]
        assert raw.commit is not None and list(raw.commit["profile_cursors"]) == ["0.0.99.98.1.255"]
        await drv.read()
        assert drv.ctx.log.events("warning").count("dlms event log unreadable") == 1  # type: ignore[attr-defined]
        await drv.stop()
        await drv.ctx.bus.close()


def test_event_log_config_and_names() -> None:
    assert obis.event_log_number("0.0.99.98.4.255") == 4 and obis.event_log_number("1.0.99.1.0.255") is None
    assert obis.event_name(1) == "power_down" and obis.event_name(231) is None
    with pytest.raises(ConfigError, match="not an event log"):
        device(POINTS[:1], tcp={"host": "127.0.0.1", "port": 1}, event_logs=["1.0.99.1.0.255"])
    dev = device(POINTS[:1], tcp={"host": "127.0.0.1", "port": 1}, event_logs=["0-0:99.98.2*255"])
    assert dev.event_logs == ["0.0.99.98.2.255"]


def _int8() -> Any:
    return codec.i8(0)


async def test_sensemi_profile_daily_billing_reactive_tariffs_and_demand(tmp_path: Path) -> None:
    """The shipped profile's additions read from the twin: 62 daily billing entries, reactive tariffs and demand."""
    async with DlmsTwin.create("sensemi-sed302", transport="wrapper", start=T0) as twin:
        twin.clock.freeze(T0)
        raw_dev = {
            "id": "meter",
            **twin.device_config(),
            "timeout": 1.0,
            "backfill": "70d",
            "profile_chunks_per_poll": 100,
        }
        dev = parse_device(raw_dev)
        assert isinstance(dev, DlmsDevice)
        drv = driver(dev, state=StateStore(tmp_path / "s.json"))
        await drv.start()
        raw = await drv.read()
        daily = series_of(drv, raw, "billing_daily.active_import")
        stamps = [ts for ts, _ in daily]
        assert len(stamps) == 62 and all(b - a == 86_400_000 for a, b in itertools.pairwise(stamps))
        got = normalized(drv, raw)
        for pid in ("energy.reactive_import.t1", "energy.reactive_export.t4", "demand.reactive_import"):
            assert got[pid][1] == "good", (pid, got[pid])
        assert len(raw.events) == 0  # the twin's logs are empty until told
        await drv.stop()
        await drv.ctx.bus.close()


async def test_the_core_stores_the_cursor_only_once_the_polls_events_are_safe(tmp_path: Path) -> None:
    """RawReadings.events go to on_event before the data message; the commit waits for all of them."""
    import json
    from collections.abc import Callable

    import structlog

    from gateway.buses import Bus
    from gateway.driver import Driver, DriverContext, RawReadings
    from gateway.models import DeviceConfig
    from gateway.normalize import Batch
    from gateway.scheduler import DeviceRunner

    class Events(Driver[DeviceConfig, None]):
        async def read(self) -> RawReadings:
            return RawReadings([], commit={"cursor": 1}, events=[{"code": 1}, {"code": 2}])

    order: list[str] = []
    pending: list[Callable[[], None]] = []

    def sink(_batch: Batch, on_done: Callable[[], None] | None) -> None:
        assert on_done is not None
        order.append("data")
        pending.append(on_done)

    def on_event(event: dict[str, Any], on_done: Callable[[], None] | None = None) -> None:
        assert on_done is not None
        order.append(f"event {event['code']}")
        pending.append(on_done)

    path = tmp_path / "d.json"
    state = StateStore(path)
    dev = DeviceConfig.model_validate({"id": "d", "driver": "x", "interval": 60})
    ctx = DriverContext(device=dev, points=[], log=structlog.get_logger("t"), bus=Bus("b"), state=state)
    log = structlog.get_logger("t")
    runner = DeviceRunner(dev, lambda _p: Events(ctx), sink, lambda _d, _s: None, log, state, on_event=on_event)
    await runner.poll_once()
    assert order == ["event 1", "event 2", "data"]
    pending[2]()  # the data message is safe, the events not yet
    pending[0]()
    assert not path.exists()
    pending[1]()
    assert json.loads(path.read_text())["cursor"] == 1
