"""Load and billing profiles: range reads from a cursor, restarts without duplicates, backfill."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest

from drivers.dlms.twin import EPOCH_2024, DlmsTwin
from gateway.state import StateStore
from tests.dlms.util import PROFILE_POINTS, T0, device, driver, meter_objects, normalized, series_of

pytestmark = [pytest.mark.timeout(30)]
Q = 900_000  # 15 minutes in ms


def counter_at(ts_ms: int) -> int:
    """The twin's 1.0.1.8.1.255: 1 000 000 Wh + 1000 Wh per hour since 2024 (exact integers)."""
    return 1_000_000 + (ts_ms - int(EPOCH_2024 * 1000)) * 1000 // 3_600_000


def profile_device(twin: DlmsTwin, **kw: Any) -> Any:
    return device(PROFILE_POINTS, tcp={"host": "127.0.0.1", "port": twin.port}, **kw)


def safe(drv: Any, raw: Any) -> Any:
    """What the core does once a poll's message is acknowledged: store the state the poll carries."""
    if raw.commit is not None:
        drv.ctx.state.commit(raw.commit)
    return raw


def check_entries(entries: list[tuple[int, Any]], first: int, last: int) -> None:
    """Every 15-minute stamp from first to last exactly once, with the meter's values."""
    stamps = [ts for ts, _ in entries]
    assert stamps == list(range(first, last + 1, Q)), (stamps[:3], stamps[-3:])
    for ts, value in entries:
        assert value == counter_at(ts)


@pytest.mark.parametrize("transport", ["wrapper", "hdlc"])
async def test_range_read_then_resume_from_the_cursor_across_restarts(
    tmp_path: Path, transport: Literal["wrapper", "hdlc"]
) -> None:
    state_file = tmp_path / "state.json"
    t0_ms = int(T0 * 1000)
    async with DlmsTwin(objects=meter_objects(), transport=transport, start=T0) as twin:
        twin.freeze()
        dev = profile_device(twin, transport=transport, backfill="6h")
        drv = driver(dev, state=StateStore(state_file))
        await drv.start()
        raw = safe(drv, await drv.read())
        entries = series_of(drv, raw, "load_profile.energy")
        check_entries(entries, t0_ms - 6 * 3600_000, t0_ms)
        volts = series_of(drv, raw, "load_profile.voltage")
        assert len(volts) == 25 and all(v == 230.1 for _, v in volts)
        # the newest entry is the point's value, stamped with the meter's capture time
        assert raw.timestamps is not None and raw.timestamps[0] == t0_ms
        # nothing new: no entry again, and nothing is published for the point
        raw = safe(drv, await drv.read())
        assert series_of(drv, raw, "load_profile.energy") == []
        assert "load_profile.energy" not in normalized(drv, raw)
        twin.advance(hours=1)
        raw = safe(drv, await drv.read())
        check_entries(series_of(drv, raw, "load_profile.energy"), t0_ms + Q, t0_ms + 4 * Q)
        await drv.stop()
        assert StateStore(state_file).get("profile_cursors") == {"1.0.99.1.0.255": t0_ms + 4 * Q}
        # a new gateway process: the cursor survives, no entry is repeated
        twin.advance(minutes=30)
        drv2 = driver(dev, bus=drv.ctx.bus, state=StateStore(state_file))
        await drv2.start()
        check_entries(series_of(drv2, await drv2.read(), "load_profile.energy"), t0_ms + 5 * Q, t0_ms + 6 * Q)
        await drv2.stop()
        await drv.ctx.bus.close()


async def test_a_crash_before_the_message_is_safe_repeats_the_entries(tmp_path: Path) -> None:
    """At-least-once: the cursor on disk moves only when the core says the poll's message is safe."""
    state_file = tmp_path / "state.json"
    t0_ms = int(T0 * 1000)
    async with DlmsTwin(objects=meter_objects(), start=T0) as twin:
        twin.freeze()
        dev = profile_device(twin, backfill="1h")
        drv = driver(dev, state=StateStore(state_file))
        await drv.start()
        raw = await drv.read()
        first = series_of(drv, raw, "load_profile.energy")
        assert len(first) == 5 and raw.commit is not None
        # the process dies here, before the broker acknowledged the message: nothing was stored
        assert not state_file.exists()
        drv2 = driver(dev, bus=drv.ctx.bus, state=StateStore(state_file))
        await drv2.start()
        raw = await drv2.read()
        assert series_of(drv2, raw, "load_profile.energy") == first
        # this time the message is safe: the core stores the cursor
        safe(drv2, raw)
        assert series_of(drv2, await drv2.read(), "load_profile.energy") == []
        twin.advance(minutes=15)
        # and the process dies again
        drv3 = driver(dev, bus=drv.ctx.bus, state=StateStore(state_file))
        await drv3.start()
        check_entries(series_of(drv3, await drv3.read(), "load_profile.energy"), t0_ms + Q, t0_ms + Q)
        await drv.ctx.bus.close()


async def test_backfill_after_a_day_down_has_no_holes() -> None:
    t0_ms = int(T0 * 1000)
    async with DlmsTwin(objects=meter_objects(), start=T0) as twin:
        twin.freeze()
        drv = driver(profile_device(twin, backfill="2d", profile_chunk="6h", profile_chunks_per_poll=8))
        await drv.start()
        first = series_of(drv, await drv.read(), "load_profile.energy")
        check_entries(first, t0_ms - 2 * 86400_000, t0_ms)
        twin.advance(days=1)  # the gateway (or the link) was down for a day
        raw = await drv.read()
        check_entries(series_of(drv, raw, "load_profile.energy"), t0_ms + Q, t0_ms + 86400_000)
        await drv.ctx.bus.close()


async def test_backfill_is_read_in_bounded_chunks() -> None:
    t0_ms = int(T0 * 1000)
    async with DlmsTwin(objects=meter_objects(), start=T0) as twin:
        twin.freeze()
        drv = driver(profile_device(twin, backfill="3d", profile_chunk="6h", profile_chunks_per_poll=2))
        await drv.start()
        polls: list[list[tuple[int, Any]]] = []
        for _ in range(7):
            polls.append(series_of(drv, await drv.read(), "load_profile.energy"))
        # 12 hours per poll (the first one includes the entry at the backfill horizon), then nothing new
        assert [len(p) for p in polls] == [49, 48, 48, 48, 48, 48, 0]
        check_entries([e for p in polls for e in p], t0_ms - 3 * 86400_000, t0_ms)
        await drv.ctx.bus.close()


async def test_billing_profile_monthly_values() -> None:
    async with DlmsTwin(objects=meter_objects(), start=T0) as twin:
        twin.freeze()
        points = [
            {
                "id": "billing.energy",
                "obis": "0.0.98.1.0.255",
                "class": 7,
                "column": "1.0.1.8.1.255",
                "quantity": "active_energy_import",
                "unit": "Wh",
                "kind": "counter",
            }
        ]
        drv = driver(device(points, tcp={"host": "127.0.0.1", "port": twin.port}, backfill="100d"))
        entries = series_of(drv, await drv.read(), "billing.energy")
        # 2026-03-10: the billing resets of December, January, February and March
        assert [ts for ts, _ in entries] == [1764547200000, 1767225600000, 1769904000000, 1772323200000]
        assert all(v == counter_at(ts) for ts, v in entries)
        await drv.ctx.bus.close()


async def test_missing_column_and_missing_profile_are_point_errors() -> None:
    async with DlmsTwin(objects=meter_objects(), start=T0) as twin:
        points = [
            *PROFILE_POINTS,
            {"id": "lp.nothing", "obis": "1.0.99.1.0.255", "class": 7, "column": "1.0.2.8.0.255", "quantity": "other"},
            {"id": "lp2.energy", "obis": "1.0.99.2.0.255", "class": 7, "column": "1.0.1.8.0.255", "quantity": "other"},
        ]
        drv = driver(device(points, tcp={"host": "127.0.0.1", "port": twin.port}, backfill="1h"))
        got = normalized(drv, await drv.read())
        assert got["lp.nothing"][1] == "bad" and got["lp2.energy"][1] == "bad"
        assert got["load_profile.energy"][1] == "good"
        await drv.ctx.bus.close()
