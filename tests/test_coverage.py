"""Every element the source documents list for a device maps to points of its shipped profile, or says why not.

The tables are tests/coverage/<profile>.yaml: one row per element, `points` a list of point ids (the
profile expanded with the table's `vars` and the row's own `vars`) or "n/a: <reason>". Each set of
vars the rows use is also served by the device twin and read back by the driver, so a mapped point
is one the gateway really reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from drivers.modbus.config import ModbusDevice, ModbusPoint
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.twin import ModbusTwin
from gateway.buses import Bus
from gateway.config import parse_device
from gateway.driver import DriverContext
from gateway.models import PointConfig
from gateway.points import PHASES, QUANTITIES, UNITS
from gateway.profiles import shipped_profiles
from gateway.state import StateStore
from tests.modbus.util import assert_reads_the_twin

TABLES = Path(__file__).resolve().parent / "coverage"
NA = "n/a:"


def load_table(path: Path) -> dict[str, Any]:
    table = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(table, dict) and isinstance(table.get("rows"), list), f"{path.name}: no rows"
    return table


def row_vars(table: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    return {**(table.get("vars") or {}), **(row.get("vars") or {})}


def check_row(row: dict[str, Any], ids: set[str]) -> list[str]:
    """What is wrong with one row: it must name existing points, or be n/a with a reason."""
    element = row.get("element")
    if not isinstance(element, str) or not element.strip():
        return [f"row {row!r} names no element"]
    target = row.get("points")
    if isinstance(target, str):
        if not target.startswith(NA) or not target[len(NA) :].strip():
            return [f"{element}: {target!r} is neither a list of points nor 'n/a: <reason>'"]
        return []
    if not isinstance(target, list) or not target:
        return [f"{element}: maps to no point and gives no 'n/a: <reason>'"]
    return [f"{element}: no point {pid!r} in the profile" for pid in target if pid not in ids]


def _key(v: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(v.items()))


def device(profile: str, profile_vars: dict[str, Any], port: int = 502) -> ModbusDevice:
    raw = {"id": "x", "driver": "modbus", "profile": profile, "tcp": {"host": "127.0.0.1", "port": port}}
    if profile_vars:
        raw["profile_vars"] = profile_vars
    dev = parse_device(raw)
    assert isinstance(dev, ModbusDevice)
    return dev


TABLE_FILES = sorted(TABLES.glob("*.yaml"))
CASES = [
    pytest.param(path.stem, dict(key), id=f"{path.stem}-{'-'.join(f'{k}={v}' for k, v in key) or 'default'}")
    for path in TABLE_FILES
    for key in sorted({_key(row_vars(load_table(path), row)) for row in load_table(path)["rows"]}, key=str)
]


def test_one_table_per_modbus_profile_of_issue_11() -> None:
    names = {p.stem for p in TABLE_FILES}
    assert names == {"schneider-bcpme", "legrand-emdx3", "robotina-bm-sm", "ibgw100-ibsm", "legrand-breaker-interface"}
    for path in TABLE_FILES:
        table = load_table(path)
        assert table["profile"] == path.stem and path.stem in shipped_profiles("modbus")


@pytest.mark.parametrize("path", TABLE_FILES, ids=[p.stem for p in TABLE_FILES])
def test_every_row_maps_to_points_or_says_why_not(path: Path) -> None:
    table = load_table(path)
    errors: list[str] = []
    devices: dict[tuple[tuple[str, Any], ...], dict[str, PointConfig]] = {}
    for row in table["rows"]:
        v = row_vars(table, row)
        if _key(v) not in devices:
            dev = device(table["profile"], v)
            # Calculated points count too: the gateway computes them from points the driver reads.
            pts = [p for p in dev.resolved_points if isinstance(p, ModbusPoint)] + list(dev.calculated_points)
            devices[_key(v)] = {p.id: p for p in pts}
        pts_by_id = devices[_key(v)]
        errors += check_row(row, set(pts_by_id))
        if isinstance(row.get("points"), list):
            for pid in row["points"]:
                p = pts_by_id.get(pid)
                if p is not None and (p.quantity not in QUANTITIES or p.unit not in UNITS or p.phase not in PHASES):
                    errors.append(f"{row['element']}: {pid} is outside the vocabulary")
    elements = [row.get("element") for row in table["rows"]]
    assert len(elements) == len(set(elements)), "an element is listed twice"
    assert not errors, "\n".join(errors)


def test_the_check_fails_a_row_with_neither() -> None:
    ids = {"a", "b"}
    assert check_row({"element": "x", "points": ["a", "b"]}, ids) == []
    assert check_row({"element": "x", "points": "n/a: not public"}, ids) == []
    assert check_row({"element": "x"}, ids)
    assert check_row({"element": "x", "points": []}, ids)
    assert check_row({"element": "x", "points": "n/a:  "}, ids)
    assert check_row({"element": "x", "points": "later"}, ids)
    assert check_row({"element": "x", "points": ["a", "c"]}, ids) == ["x: no point 'c' in the profile"]
    assert check_row({"points": ["a"]}, ids)


@pytest.mark.asyncio
@pytest.mark.parametrize(("profile", "profile_vars"), CASES)
async def test_the_twin_serves_and_the_driver_reads_them(profile: str, profile_vars: dict[str, Any]) -> None:
    async with ModbusTwin.create(profile, vars=profile_vars, update_interval=0) as twin:
        dev = device(profile, profile_vars, twin.port)
        pts = dev.resolved_points
        bus = Bus(dev.implicit_bus() or "x")
        ctx = DriverContext(device=dev, points=pts, log=structlog.get_logger(), bus=bus, state=StateStore(None))
        driver = ModbusDriver(ctx)
        await driver.start()
        try:
            assert driver.plan.rejected == ()
            values = (await driver.read()).values
        finally:
            await driver.stop()
            await bus.close()
    assert_reads_the_twin(dev, pts, values, twin)
