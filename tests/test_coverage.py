"""Every element the source documents list for a device maps to points of its shipped profile, or says why not.

The tables are tests/coverage/<profile>.yaml: one row per element, `points` a list of point ids (the
profile expanded with the table's `vars` and the row's own `vars`) or "n/a: <reason>". Each set of
vars the rows use is also served by the device twin and read back by the driver, so a mapped point
is one the gateway really reads.

A table names its driver (`driver:`, default modbus). The BCPME's BACnet and SNMP tables list the
elements of its Modbus table (`same_elements_as`), so every element of the source document is
answered once per interface; the Sensemi (DLMS) tables list the standard OBIS codes of
device-maps.md section 5. Their twin and driver are the kind's, built as the daemon builds them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from drivers.modbus.config import ModbusDevice, ModbusPoint
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.twin import ModbusTwin
from gateway.buses import Bus
from gateway.calc import compile_expr
from gateway.config import parse_device
from gateway.driver import DriverContext, NoValue, PointError
from gateway.models import DeviceConfig, PointConfig
from gateway.points import PHASES, QUANTITIES, UNITS
from gateway.profiles import shipped_profiles
from gateway.registry import DRIVERS
from gateway.state import StateStore
from tests.modbus.util import assert_reads_the_twin
from tests.test_contract import built, read

TABLES = Path(__file__).resolve().parent / "coverage"
NA = "n/a:"


def load_table(path: Path) -> dict[str, Any]:
    table = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(table, dict) and isinstance(table.get("rows"), list), f"{path.name}: no rows"
    return table


def kind_of(table: dict[str, Any]) -> str:
    return str(table.get("driver", "modbus"))


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


#: How a table's device is addressed in the config, per kind (the coverage test only parses it).
ADDRESS: dict[str, dict[str, Any]] = {
    "modbus": {"tcp": {"host": "127.0.0.1", "port": 502}},
    "bacnet": {"address": "127.0.0.1", "device_instance": 50001},
    "snmp": {"host": "127.0.0.1", "community_env": "EDGEGW_TEST_COVERAGE_COMMUNITY"},
    "dlms": {"tcp": {"host": "127.0.0.1", "port": 4059}},
}
os.environ.setdefault("EDGEGW_TEST_COVERAGE_COMMUNITY", "public")  # the config only checks it is set


def any_device(kind: str, profile: str, profile_vars: dict[str, Any]) -> DeviceConfig:
    """The profile expanded by the core's config loader, as a device of the table's kind."""
    if kind == "modbus":
        return device(profile, profile_vars)
    raw: dict[str, Any] = {"id": "x", "driver": kind, "profile": profile, **ADDRESS[kind]}
    if profile_vars:
        raw["profile_vars"] = profile_vars
    return parse_device(raw)


def cases(paths: list[Path]) -> list[Any]:
    return [
        pytest.param(path.stem, dict(key), id=f"{path.stem}-{'-'.join(f'{k}={v}' for k, v in key) or 'default'}")
        for path in paths
        for key in sorted({_key(row_vars(load_table(path), row)) for row in load_table(path)["rows"]}, key=str)
    ]


TABLE_FILES = sorted(TABLES.glob("*.yaml"))
MODBUS_FILES = [p for p in TABLE_FILES if kind_of(load_table(p)) == "modbus"]
OTHER_FILES = [p for p in TABLE_FILES if kind_of(load_table(p)) != "modbus"]
CASES = cases(MODBUS_FILES)
OTHER_CASES = cases(OTHER_FILES)


def test_one_table_per_modbus_profile_of_issue_11() -> None:
    names = {p.stem for p in MODBUS_FILES}
    assert names >= {"schneider-bcpme", "legrand-emdx3", "robotina-bm-sm", "ibgw100-ibsm"}
    for path in MODBUS_FILES:
        table = load_table(path)
        assert table["profile"] == path.stem and path.stem in shipped_profiles("modbus")


def test_the_other_kinds_tables_answer_every_element_of_their_source() -> None:
    names = {p.stem: kind_of(load_table(p)) for p in OTHER_FILES}
    assert {"schneider-bcpme-bacnet": "bacnet", "schneider-bcpme-snmp": "snmp"}.items() <= names.items()
    assert {name: "dlms" for name in shipped_profiles("dlms")}.items() <= names.items()
    for path in OTHER_FILES:
        table = load_table(path)
        kind = kind_of(table)
        assert kind in DRIVERS and table["profile"] == path.stem and path.stem in shipped_profiles(kind)
        if "same_elements_as" in table:
            source = load_table(TABLES / f"{table['same_elements_as']}.yaml")
            missing = [
                r["element"] for r in source["rows"] if r["element"] not in {x["element"] for x in table["rows"]}
            ]
            assert not missing, f"{path.name} does not answer: {missing}"


@pytest.mark.parametrize("path", TABLE_FILES, ids=[p.stem for p in TABLE_FILES])
def test_every_row_maps_to_points_or_says_why_not(path: Path) -> None:
    table = load_table(path)
    kind = kind_of(table)
    errors: list[str] = []
    devices: dict[tuple[tuple[str, Any], ...], dict[str, PointConfig]] = {}
    for row in table["rows"]:
        v = row_vars(table, row)
        if _key(v) not in devices:
            dev = any_device(kind, table["profile"], v)
            # Calculated points count too: the gateway computes them from points the driver reads.
            pts = [p for p in dev.resolved_points if kind != "modbus" or isinstance(p, ModbusPoint)]
            devices[_key(v)] = {p.id: p for p in [*pts, *dev.calculated_points]}
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


def mapped_ids(profile: str, profile_vars: dict[str, Any]) -> set[str]:
    """The point ids the rows with exactly these vars map to."""
    table = load_table(TABLES / f"{profile}.yaml")
    return {
        pid
        for row in table["rows"]
        if _key(row_vars(table, row)) == _key(profile_vars) and isinstance(row.get("points"), list)
        for pid in row["points"]
    }


@pytest.mark.asyncio
@pytest.mark.parametrize(("profile", "profile_vars"), OTHER_CASES)
async def test_the_other_twins_serve_and_the_drivers_read_them(profile: str, profile_vars: dict[str, Any]) -> None:
    kind = kind_of(load_table(TABLES / f"{profile}.yaml"))
    cls = DRIVERS[kind].twin_class
    twin_vars = dict(profile_vars)
    options: dict[str, Any] = {}
    target: int | None = None
    if kind == "bacnet":
        # One routed device per panel: the twin serves every panel up to the one the rows read.
        panel = int(twin_vars.pop("panel", 1))
        options = {"panels": panel, "animate": False}
    async with cls.create(profile, vars=twin_vars, **options) as twin:
        twin.clock.freeze()  # values stand still between the driver's read and the twin's answer here
        if kind == "bacnet":
            target = twin.offset + panel  # type: ignore[attr-defined]
        raw = {**twin.device_config(target), "id": f"coverage-{kind}", "timeout": 2.0}
        async with built(kind, raw, twin.section_config()) as driver:
            result = await read(driver, 60)
            exps = result.exponents or [None] * len(result.values)
            values = {p.id: (p, v, e) for p, v, e in zip(driver.ctx.points, result.values, exps, strict=True)}
            calcs = {p.id: compile_expr(p.calc) for p in driver.ctx.device.calculated_points if p.calc is not None}
            wanted = mapped_ids(profile, profile_vars)
            inputs = {i for pid in wanted & set(calcs) for i in calcs[pid].inputs}
            missing = sorted(((wanted - set(calcs)) | inputs) - set(values))
            assert not missing, f"the driver does not read {missing}"
            read_ok = {
                pid: engineering(pid, values[pid], twin.value(pid, target)) for pid in (wanted | inputs) - set(calcs)
            }
            for pid in sorted(wanted & set(calcs)):
                # A calculated point: its expression over what the driver read, and over what the twin shows.
                c = calcs[pid]
                got_calc = c([read_ok[i][0] for i in c.inputs])
                want_calc = c([read_ok[i][1] for i in c.inputs])
                assert got_calc == want_calc, (pid, got_calc, want_calc)


def engineering(pid: str, read: tuple[PointConfig, Any, int | None], want: Any) -> tuple[Any, Any]:
    """(what the driver read, what the twin shows), checked to agree, in engineering units."""
    point, got, exp = read
    assert got is not None and not isinstance(got, PointError | NoValue), f"{pid}: {got}"
    if isinstance(want, str | bytes | bool) or isinstance(got, str | bytes | bool):
        assert str(got) == str(want), (pid, got, want)
        return got, want
    step = abs(point.scale) * 10.0 ** (exp or 0)
    eng = float(got) * 10.0 ** (exp or 0) * point.scale + point.offset
    if point.quantity == "clock_drift":
        step = 10.0  # the meter's frozen clock against the real one, which moves on
    # Within one step of the point's scaling (a REAL carries 24 bits).
    assert math.isclose(eng, float(want), rel_tol=1e-3, abs_tol=step), (pid, got, eng, want)
    # Bitmaps and counts: the whole number both sides mean (a scaled REAL may be off in the last bit).
    return (round(eng), round(float(want))) if float(want).is_integer() else (eng, float(want))
