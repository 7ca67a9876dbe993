"""Helpers for the DLMS tests: a small meter for the twin, devices and drivers built by hand."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from drivers.dlms.codec import DataType
from drivers.dlms.config import DlmsDevice, DlmsKeys
from drivers.dlms.driver import DlmsDriver
from drivers.dlms.twin import TwinObject
from gateway.buses import Bus, BusConfig
from gateway.config import parse_device
from gateway.driver import DriverContext, RawReadings
from gateway.normalize import Normalizer
from gateway.state import StateStore
from gateway.twin import Signal

# 2026-03-10 12:00:00 UTC, a fixed "now" for the twin's clock
T0 = 1773144000.0

KEYS = DlmsKeys(
    authentication_key=bytes(range(0xD0, 0xE0)),
    encryption_key=bytes(range(0x00, 0x10)),
    system_title=b"EDG00001",
)
KEYS_TEXT = (
    "authentication_key = D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF\n"
    "encryption_key = 000102030405060708090A0B0C0D0E0F\n"
    "system_title = EDG00001\n"
)


def meter_objects() -> list[TwinObject]:
    """Registers with exact values and scalers (engineering units), a data object, demand, profiles."""
    return [
        TwinObject(3, "1.0.1.8.0.255", Signal(value=123456.7), scaler=-1, unit=30),  # raw 1234567
        TwinObject(3, "1.0.2.8.0.255", Signal(value=5000), scaler=3, unit=30),  # raw 5
        TwinObject(3, "1.0.32.7.0.255", Signal(value=230.1), dtype=DataType.UINT16, scaler=-1, unit=35),
        TwinObject(3, "1.0.31.7.0.255", Signal(value=-1.234), dtype=DataType.INT32, scaler=-3, unit=33),
        TwinObject(3, "1.0.14.7.0.255", Signal(value=49.99), dtype=DataType.UINT16, scaler=-2, unit=44),
        # max demand with its capture time, and a demand register: what a billing script resets
        TwinObject(4, "1.0.1.6.0.255", Signal(value=2500), unit=27, quantity="active_power_demand_max"),
        TwinObject(5, "1.0.1.4.0.255", Signal(value=800), unit=27, quantity="active_power_demand"),
        TwinObject(1, "0.0.96.1.0.255", text="SED3020001234", dtype=DataType.OCTET_STRING),
        TwinObject(3, "1.0.1.8.1.255", Signal(value=1_000_000, rate=1000 / 3600), unit=30),  # 1 kWh per hour
        TwinObject(
            7,
            "1.0.99.1.0.255",
            columns=[(3, "1.0.1.8.1.255", 2), (3, "1.0.32.7.0.255", 2)],
            capture_period=900,
            capacity=9600,
        ),
        TwinObject(7, "0.0.98.1.0.255", columns=[(3, "1.0.1.8.1.255", 2)], capture_period=0, capacity=12),
    ]


POINTS: list[dict[str, Any]] = [
    {
        "id": "energy.import",
        "obis": "1.0.1.8.0.255",
        "quantity": "active_energy_import",
        "unit": "Wh",
        "kind": "counter",
    },
    {
        "id": "energy.export",
        "obis": "1.0.2.8.0.255",
        "quantity": "active_energy_export",
        "unit": "Wh",
        "kind": "counter",
    },
    {"id": "voltage.l1", "obis": "1.0.32.7.0.255", "quantity": "voltage", "unit": "V", "phase": "L1"},
    {"id": "current.l1", "obis": "1.0.31.7.0.255", "quantity": "current", "unit": "A", "phase": "L1"},
    {"id": "frequency", "obis": "1-0:14.7.0*255", "quantity": "frequency", "unit": "Hz"},
    {"id": "demand.max", "obis": "1.0.1.6.0.255", "class": 4, "quantity": "active_power_demand_max", "unit": "W"},
    {
        "id": "demand.last",
        "obis": "1.0.1.4.0.255",
        "class": 5,
        "attribute": 3,
        "quantity": "active_power_demand",
        "unit": "W",
    },
    {"id": "serial", "obis": "0.0.96.1.0.255", "class": 1, "quantity": "serial_number", "kind": "state"},
    {"id": "clock", "obis": "0.0.1.0.0.255", "class": 8, "quantity": "clock", "kind": "state"},
    {"id": "clock.drift", "obis": "0.0.1.0.0.255", "class": 8, "quantity": "clock_drift", "unit": "s"},
]
PROFILE_POINTS: list[dict[str, Any]] = [
    {
        "id": "load_profile.energy",
        "obis": "1.0.99.1.0.255",
        "class": 7,
        "column": "1.0.1.8.1.255",
        "quantity": "active_energy_import",
        "unit": "Wh",
        "kind": "counter",
    },
    {
        "id": "load_profile.voltage",
        "obis": "1.0.99.1.0.255",
        "class": 7,
        "column": "1.0.32.7.0.255",
        "quantity": "voltage",
        "unit": "V",
    },
]


def device(points: Sequence[dict[str, Any]] = POINTS, *, base_dir: Path | None = None, **kw: Any) -> DlmsDevice:
    raw: dict[str, Any] = {"id": "meter", "driver": "dlms", "timeout": 0.5, "points": list(points), **kw}
    dev = parse_device(raw, base_dir)
    assert isinstance(dev, DlmsDevice)
    return dev


def bus_for(dev: DlmsDevice, config: BusConfig | None = None) -> Bus:
    return Bus(dev.bus or dev.implicit_bus() or f"device:{dev.id}", config)


class RecordingLog:
    """A logger that keeps its calls (structlog's interface, enough of it)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []
        self._real = structlog.get_logger()

    def _log(self, level: str, event: str, **kw: Any) -> None:
        self.records.append((level, event, kw))

    def debug(self, event: str, **kw: Any) -> None:
        self._log("debug", event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._log("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._log("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._log("error", event, **kw)

    def bind(self, **_kw: Any) -> RecordingLog:
        return self

    def events(self, level: str | None = None) -> list[str]:
        return [e for lv, e, _ in self.records if level is None or lv == level]


def driver(dev: DlmsDevice, bus: Bus | None = None, state: StateStore | None = None, log: Any = None) -> DlmsDriver:
    ctx = DriverContext(
        dev,
        list(dev.resolved_points),
        log if log is not None else RecordingLog(),  # type: ignore[arg-type]
        bus if bus is not None else bus_for(dev),
        state if state is not None else StateStore(None),
    )
    return DlmsDriver(ctx)


def normalized(drv: DlmsDriver, raw: RawReadings) -> dict[str, Any]:
    """Point id -> (value, quality) of the poll's readings as the core publishes them (no series)."""
    norm = Normalizer(drv.ctx.device.id, drv.ctx.points)
    batch = norm.normalize(raw, int(time.time() * 1000))
    out: dict[str, Any] = {}
    for i, value, quality in zip(batch.index, batch.values, batch.qualities, strict=True):
        pid = drv.ctx.points[i].id
        out.setdefault(pid, (value, quality))
    return out


def series_of(drv: DlmsDriver, raw: RawReadings, point_id: str) -> list[tuple[int, Any]]:
    """(ts, normalised value) of a profile point: its series entries and its newest value."""
    norm = Normalizer(drv.ctx.device.id, drv.ctx.points)
    batch = norm.normalize(raw, int(time.time() * 1000))
    out = []
    for i, value, quality, ts in zip(batch.index, batch.values, batch.qualities, batch.stamps, strict=True):
        if drv.ctx.points[i].id == point_id and quality == "good":
            out.append((ts, value))
    return sorted(out)


async def wait_until(pred: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.01)
