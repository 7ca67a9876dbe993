"""The DLMS twin as the registry's twin: create(), device_config(), values, faults per meter, the CLI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from drivers.dlms.config import DlmsDevice
from drivers.dlms.twin import EPOCH_2024, PASSWORD_ENV, DlmsTwin
from gateway.config import parse_device
from gateway.driver import DeviceError, DeviceTimeout
from gateway.registry import DRIVERS
from gateway.twin import DemoDevice, Fault, simulate_parser
from tests.dlms.util import KEYS, KEYS_TEXT, T0, driver, meter_objects, normalized

pytestmark = [pytest.mark.timeout(30)]


def reach(twin: DlmsTwin, target: int | None = None, **extra: Any) -> DlmsDevice:
    dev = parse_device({"id": "m", "timeout": 0.5, **twin.device_config(target), **extra})
    assert isinstance(dev, DlmsDevice)
    return dev


def test_the_registry_names_this_twin() -> None:
    cls = DRIVERS["dlms"].twin_class
    assert cls is DlmsTwin and cls.kind == "dlms" and cls.default_profile == "sensemi-sed102"
    assert cls.sim_extras == frozenset({"type", "scaler", "capture_period", "entries"})
    (demo,) = cls.demo
    assert demo == DemoDevice(
        id="sed302-17",
        profile="sensemi-sed302",
        options={"transport": "wrapper"},
        config={"interval": "2s", "timeout": "1s", "backfill": "6h"},
        show=("voltage.l1", "energy.active_import", "power.active_import"),
    )


async def test_device_config_reaches_the_twin_with_each_security(tmp_path: Path) -> None:
    async with DlmsTwin.create("sensemi-sed102", start=T0) as twin:
        cfg = twin.device_config()
        assert cfg == {
            "driver": "dlms",
            "profile": "sensemi-sed102",
            "tcp": {"host": "127.0.0.1", "port": twin.port},
            "transport": "wrapper",
        }
        drv = driver(reach(twin))
        assert normalized(drv, await drv.read())["voltage.l1"][1] == "good"
        await drv.ctx.bus.close()
    async with DlmsTwin.create("sensemi-sed102", auth="low", password="pw-of-the-twin") as twin:
        cfg = twin.device_config()
        assert cfg["auth"] == "low" and os.environ[cfg["password_env"]] == "pw-of-the-twin"
        assert cfg["password_env"].startswith(PASSWORD_ENV)
        drv = driver(reach(twin))
        assert normalized(drv, await drv.read())["voltage.l1"][1] == "good"
        await drv.ctx.bus.close()
    for keys in (KEYS, tmp_path / "given.keys"):
        (tmp_path / "given.keys").write_text(KEYS_TEXT)
        async with DlmsTwin.create("sensemi-sed102", transport="hdlc", keys=keys) as twin:
            cfg = twin.device_config()
            assert cfg["auth"] == "high_gmac" and cfg["physical_address"] == 17 and cfg["transport"] == "hdlc"
            if isinstance(keys, Path):
                assert cfg["keys_file"] == str(keys.resolve())
            drv = driver(reach(twin))
            assert normalized(drv, await drv.read())["voltage.l1"][1] == "good"
            assert twin.meter.associations == 1 and twin.meter.ic_violations == 0
            await drv.ctx.bus.close()


async def test_several_meters_and_a_fault_for_one_of_them() -> None:
    async with DlmsTwin.create("sensemi-sed102", transport="hdlc", addresses=(17, 18)) as twin:
        assert "physical address 17, 18" in twin.describe()
        m17, m18 = reach(twin, 17), reach(twin, 18, id="m18")
        assert (m17.physical, m18.physical) == (17, 18)
        d17 = driver(m17)
        d18 = driver(m18, bus=d17.ctx.bus)
        twin.set_value("voltage.l1", 231.5, target=18)
        assert twin.value("voltage.l1", 18) == 231.5 and twin.value("voltage.l1", 17) != 231.5
        assert normalized(d18, await d18.read())["voltage.l1"] == (231.5, "good")
        twin.faults.set(Fault.SILENT, target=18)
        with pytest.raises(DeviceTimeout):
            await d18.read()
        assert normalized(d17, await d17.read())["voltage.l1"][1] == "good"
        twin.faults.clear(18)
        assert normalized(d18, await d18.read())["voltage.l1"] == (231.5, "good")
        await d17.ctx.bus.close()
    # the wrapper tells meters apart by their logical address
    async with DlmsTwin.create("sensemi-sed102", addresses=(17, 18)) as twin:
        assert twin.device_config(18)["logical_address"] == 18 and "logical address 17, 18" in twin.describe()
        drv = driver(reach(twin, 18))
        assert normalized(drv, await drv.read())["voltage.l1"][1] == "good"
        with pytest.raises(KeyError):
            twin.device_config(19)
        await drv.ctx.bus.close()


@pytest.mark.parametrize("transport", ["wrapper", "hdlc"])
async def test_disconnect_mid_frame_then_recovery(transport: str) -> None:
    async with DlmsTwin(objects=meter_objects(), transport=transport) as twin:  # type: ignore[arg-type]
        points = [{"id": "v", "obis": "1.0.32.7.0.255", "quantity": "voltage", "unit": "V", "phase": "L1"}]
        dev = reach(twin, points=points)
        drv = driver(dev)
        assert normalized(drv, await drv.read())["v"] == (230.1, "good")
        twin.faults.set(Fault.DISCONNECT)
        before = twin.connections
        with pytest.raises(DeviceError):
            await drv.read()
        assert twin.connections > before  # the driver reconnected (and lost the line again)
        twin.faults.clear()
        assert normalized(drv, await drv.read())["v"] == (230.1, "good")
        await drv.ctx.bus.close()


def test_values_in_engineering_units() -> None:
    twin = DlmsTwin.create("sensemi-sed302", start=T0)
    twin.freeze()
    # the shipped hints, converted from raw per hour to engineering units per second
    tariff = twin.value("energy.active_import.t1")
    assert tariff == 300000 + (T0 - EPOCH_2024) * (1150 // 4) // 3600
    twin.advance(hours=1)
    assert twin.value("energy.active_import.t1") - tariff == 1150 // 4  # Wh per hour, as before
    # the household magnitudes the twin served before its hints were in engineering units
    assert twin.value("energy.active_import") == 1_000_000 + (T0 + 3600 - EPOCH_2024) * 1150 // 3600
    for _ in range(20):
        twin.advance(minutes=7)
        assert 0 <= twin.value("current.n") <= 0.5
        assert 2 <= twin.value("current.l1") <= 8 and 500 <= twin.value("power.active_import") <= 1800
        assert 0.9 <= twin.value("power_factor.l2") <= 0.99 and 800 <= twin.value("demand.active_import") <= 1500
    assert twin.value("demand.active_import.max") == 2500
    assert twin.value("power.active_export") == 0
    assert twin.value("serial_number") == "12345678" and twin.value("firmware") == "SEN-1.0.0"
    # pinned in engineering units, served on the raw grid of the scaler (voltage: 0.1 V)
    twin.set_value("voltage.l1", 233.37)
    assert twin.value("voltage.l1") == 233.4 and twin.value("1.0.32.7.0.255") == 233.4
    twin.release("voltage.l1")
    assert twin.value("voltage.l1") != 233.4
    # a profile column shows its newest entry; a demand register's last average
    twin.set_value("energy.active_import", 1234567)
    assert twin.value("load_profile.active_import") == 1234567
    twin.set_value("demand.active_import", 4321)
    assert twin.value("demand.active_import.last") == 4321
    twin.set_value("serial_number", "SED302-XYZ")
    assert twin.value("serial_number") == "SED302-XYZ"
    # clock points: the clock itself, and the drift against real time
    twin.set_value("clock.drift", -30)
    assert twin.value("clock.drift") == pytest.approx(-30, abs=0.5)
    with pytest.raises(KeyError):
        twin.value("no.such.point")
    with pytest.raises(KeyError):
        twin.value("1.0.99.99.0.255")


def test_profiles_and_points_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown key"):
        DlmsTwin.create(points=[{"id": "x", "obis": "1.0.1.8.0.255", "quantity": "other", "sim": {"rat": 1}}])
    with pytest.raises(ValueError, match="sim type"):
        DlmsTwin.create(points=[{"id": "x", "obis": "1.0.1.8.0.255", "quantity": "other", "sim": {"type": "u32"}}])
    with pytest.raises(ValueError, match="class 1"):
        DlmsTwin.create(points=[{"id": "x", "obis": "1.0.1.8.0.255", "quantity": "other", "sim": {"text": "a"}}])
    with pytest.raises(ValueError, match="unknown profile variable"):
        DlmsTwin.create("sensemi-sed102", vars={"phases": 3})
    with pytest.raises(ValueError, match="writable"):
        DlmsTwin.create("sensemi-sed102", writable=["1.0.99.1.0.255"])
    with pytest.raises(TypeError):
        DlmsTwin.create("sensemi-sed102", colour="blue")
    # the DLMS-only keys: type, scaler, and a profile's capture period and depth
    twin = DlmsTwin.create(
        points=[
            {"id": "t", "obis": "0.0.96.9.0.255", "quantity": "temperature", "unit": "degC",
             "sim": {"value": -12.5, "type": "int16", "scaler": -1}},
            {"id": "lp.t", "obis": "1.0.99.2.0.255", "class": 7, "column": "0.0.96.9.0.255",
             "quantity": "temperature", "unit": "degC", "sim": {"capture_period": "1h", "entries": 48}},
        ]
    )  # fmt: skip
    obj = twin.meter.objects["0.0.96.9.0.255"]
    assert (obj.dtype.name, obj.scaler, obj.raw(T0)) == ("INT16", -1, -125)
    profile = twin.meter.objects["1.0.99.2.0.255"]
    assert (profile.capture_period, profile.capacity, profile.columns[0][1]) == (3600, 48, "0.0.1.0.0.255")
    # inline points override a profile's, by id
    twin = DlmsTwin.create("sensemi-sed102", points=[{"id": "voltage.l1", "sim": {"value": 240}}])
    assert twin.value("voltage.l1") == 240


def test_simulate_options() -> None:
    args = simulate_parser(DlmsTwin, "sensemi-sed302").parse_args(
        ["--port", "4059", "--transport", "hdlc", "--address", "17", "--address", "18", "--start",
         "2026-03-10T12:00:00", "--mode-e", "--max-pdu", "1024", "--writable", "all", "--control-mode", "2"]
    )  # fmt: skip
    options = DlmsTwin.options_from_args(args)
    assert options["transport"] == "hdlc" and options["addresses"] == [17, 18] and options["start"] == T0
    assert options["mode_e"] and options["max_pdu"] == 1024 and options["writable"] == "all"
    twin = DlmsTwin.create("sensemi-sed302", port=args.port, **options)
    assert sorted(twin.meters) == [17, 18] and twin.meter.control_mode == 2 and twin.now() >= T0
    assert twin.meter.writable and "1.0.1.8.0.255" not in twin.meter.writable  # energy never
