"""MIB support: MIB files compiled with pysmi, points named by MIB symbol, OIDs named back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from drivers.snmp.config import SnmpSection
from drivers.snmp.mib import MibLibrary, index_mib_files
from drivers.snmp.runtime import SnmpRuntime
from drivers.snmp.twin import SnmpTwin
from gateway.driver import PointError
from tests.snmp.util import BRANCH_CURRENT, by_id, device, driver, points

DATA = Path(__file__).parent / "data"
MODULE = "EDGEGW-BCPME-TEST-MIB"


def test_index_finds_modules_by_content() -> None:
    index = index_mib_files([DATA])
    assert index[MODULE].name == "bcpme-test.mib"  # the file name does not matter
    assert index["EDGEGW-V1-TEST-MIB"].name == "EDGEGW-V1-TEST-MIB.txt"


def test_compile_resolve_and_name(tmp_path: Path) -> None:
    library = MibLibrary(tmp_path / "cache")
    try:
        errors = library.ensure([MODULE, "EDGEGW-V1-TEST-MIB", "NO-SUCH-MIB"], [DATA])
        assert set(errors) == {"NO-SUCH-MIB"} and "not found" in errors["NO-SUCH-MIB"]
        assert (tmp_path / "cache" / f"{MODULE}.py").is_file()
        assert library.resolve(f"{MODULE}::branchCurrent.7") == (*map(int, BRANCH_CURRENT.split(".")), 7)
        assert library.resolve(f"{MODULE}::panelLocation.0") == (1, 3, 6, 1, 4, 1, 3833, 1, 30, 1, 1, 1, 0)
        assert library.resolve("EDGEGW-V1-TEST-MIB::upsLoad.0") == (1, 3, 6, 1, 4, 1, 99998, 1, 2, 0)
        with pytest.raises(LookupError, match="no symbol 'branchVolts'"):
            library.resolve(f"{MODULE}::branchVolts.1")
        assert library.name((1, 3, 6, 1, 4, 1, 3833, 1, 30, 1, 5, 1, 1, 5, 42)) == f"{MODULE}::branchEnergy.42"
        assert library.name((1, 3, 6, 1, 4, 1, 3833, 1, 30, 0, 1)) == f"{MODULE}::branchCurrentAlarm"
        assert library.name((1, 3, 6, 1, 2, 1, 1, 3, 0)) == "SNMPv2-MIB::sysUpTime.0"
        assert library.name((1, 3, 6, 1, 4, 1, 424242, 1)) is None  # below `enterprises` only: no name
    finally:
        library.close()
    # a second library finds the compiled module in the cache
    again = MibLibrary(tmp_path / "cache")
    try:
        assert again.ensure([MODULE], []) == {}
    finally:
        again.close()


@pytest.fixture
async def twin() -> AsyncIterator[SnmpTwin]:
    async with SnmpTwin.create("schneider-bcpme-snmp") as t:
        yield t


@pytest.mark.asyncio
async def test_points_named_by_mib_symbol(twin: SnmpTwin) -> None:
    section = SnmpSection.model_validate({"mib_modules": [MODULE], "mib_dirs": [str(DATA)]})
    rt = SnmpRuntime(section, structlog.get_logger("test"))
    await rt.start()
    try:
        twin.set_value(f"{BRANCH_CURRENT}.7", 777)
        pts = points(
            {"id": "ch7", "oid": f"{MODULE}::branchCurrent.7", "quantity": "current", "scale": 0.01},
            {"id": "loc", "oid": f"{MODULE}::panelLocation.0", "quantity": "identity"},
            {"id": "typo", "oid": f"{MODULE}::branchCurent.7", "quantity": "current"},
            {"id": "no_module", "oid": "VENDOR-MISSING-MIB::thing.0", "quantity": "other"},
            {"id": "up", "oid": "SNMPv2-MIB::sysUpTime.0", "quantity": "uptime"},
        )
        # loaded at the runtime's start (the section's mib_modules): trap varbinds get names
        assert rt.name((1, 3, 6, 1, 4, 1, 3833, 1, 30, 1, 5, 1, 1, 2, 3)) == f"{MODULE}::branchCurrent.3"
        d = await driver(device(twin.port, mib_dirs=[str(DATA / "none")]), pts, rt)
        raw = await d.read()
        v = by_id(pts, raw.values)
        assert v["ch7"] == 777 and v["loc"] == "Panel 1" and isinstance(v["up"], int)
        assert isinstance(v["typo"], PointError) and "no symbol 'branchCurent'" in v["typo"].message
        assert isinstance(v["no_module"], PointError) and "VENDOR-MISSING-MIB not found" in v["no_module"].message
        await d.stop()
    finally:
        await rt.stop()
