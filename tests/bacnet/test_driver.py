"""The BACnet driver against the BCPME twin over real UDP on loopback (twin and gateway on two ports)."""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections.abc import Sequence
from typing import Any

import pytest
import structlog
from bacpypes3.primitivedata import ObjectIdentifier

from drivers.bacnet.codec import map_units
from drivers.bacnet.config import BacnetPoint, BacnetSection, BbmdSettings
from drivers.bacnet.driver import BacnetDriver
from drivers.bacnet.runtime import BacnetRuntime
from drivers.bacnet.scan import scan
from drivers.bacnet.twin import BacnetTwin, free_udp_port
from gateway.driver import DeviceError, DeviceTimeout, PointError
from gateway.normalize import Normalizer
from gateway.points import Quality
from tests.bacnet.conftest import TIMEOUT, Drivers, wait_for

pytestmark = pytest.mark.timeout(20)

PROFILE: dict[str, Any] = {"profile": "schneider-bcpme-bacnet"}


def by_id(driver: BacnetDriver, values: Sequence[object]) -> dict[str, object]:
    return {p.id: v for p, v in zip(driver.ctx.points, values, strict=True)}


def twin_value(twin: BacnetTwin, instance: int, obj: str) -> float:
    return float(twin.get_value(instance, obj))


async def test_rpm_reads_both_routed_panels_with_units(full_twin: BacnetTwin, runtime: BacnetRuntime) -> None:
    twin = full_twin
    drivers = Drivers(twin, runtime)
    try:
        await _read_both_panels(twin, drivers)
    finally:
        await drivers.close()


async def _read_both_panels(twin: BacnetTwin, drivers: Drivers) -> None:
    for panel in (1, 2):
        twin.set_value(twin.offset + panel, "analog-value,101", 2.5 * panel)  # ch1 kW
        twin.set_value(twin.offset + panel, "analog-value,1", 7.25 + panel)  # ch1 current
    for panel in (1, 2):
        d = await drivers.make(
            panel,
            **PROFILE,
            profile_vars={"panel": panel},
            points=[
                {
                    "id": "units.ch1.power",
                    "object": "analog-value,101",
                    "property": "units",
                    "quantity": "other",
                    "kind": "state",
                }
            ],
        )
        raw = await d.read()
        values = by_id(d, raw.values)
        errors = [k for k, v in values.items() if isinstance(v, PointError)]
        assert errors == []
        instance = twin.offset + panel
        assert values[f"panel{panel}.ch1.power"] == pytest.approx(2.5 * panel)
        assert values[f"panel{panel}.ch1.current"] == pytest.approx(7.25 + panel)
        assert values[f"panel{panel}.mains.frequency"] == pytest.approx(twin_value(twin, instance, "analog-value,2001"))
        # The object reports kilowatts (BACnet enumeration 48); the profile scales it to W.
        assert values["units.ch1.power"] == 48
        point = next(p for p in d.ctx.points if p.id == f"panel{panel}.ch1.power")
        assert (point.unit, point.scale) == ("W", 1000.0)
        assert map_units("kilowatts") is not None and map_units("kilowatts").unit == "W"  # type: ignore[union-attr]
        counts = twin.requests(instance)
        assert counts["read-property-multiple"] >= 1
        assert counts["read-property"] <= 4  # the device information, read once


async def test_requests_fit_the_device_max_apdu() -> None:
    async with BacnetTwin.create(panels=1, animate=False, max_apdu=480) as small:
        rt = BacnetRuntime(BacnetSection(local_address=f"127.0.0.1/24:{free_udp_port()}"), structlog.get_logger())
        await rt.start()
        d = Drivers(small, rt)
        try:
            driver = await d.make(1, **PROFILE)
            raw = await driver.read()
            assert not any(isinstance(v, PointError) for v in raw.values)
            counts = small.requests(50001)
            # 336 objects with present-value and status-flags do not fit one 480-byte answer.
            assert counts["read-property-multiple"] >= 10
            assert counts["aborted-too-long"] == 0
            # Configured larger than the device accepts: the device aborts, the driver splits.
            big = await d.make(1, **PROFILE, id="big", max_apdu=1476)
            raw = await big.read()
            assert not any(isinstance(v, PointError) for v in raw.values)
            assert small.requests(50001)["aborted-too-long"] >= 1
            raw = await big.read()  # it remembers the smaller size
            assert not any(isinstance(v, PointError) for v in raw.values)
        finally:
            await d.close()
            await rt.stop()


async def test_falls_back_to_read_property(drivers: Drivers, twin: BacnetTwin) -> None:
    for app in twin.devices.values():
        app.rpm_supported = False
    twin.set_value(50001, "analog-value,3", 4.5)
    d = await drivers.make(
        1,
        points=[
            {"id": "ch3.current", "object": "analog-value,3", "quantity": "current", "unit": "A"},
            {"id": "ch3.power", "object": "av,103", "quantity": "active_power", "unit": "W", "scale": 1000},
            {"id": "ch3.flags", "object": "analog-value,3", "property": "status-flags", "quantity": "status"},
        ],
    )
    raw = await d.read()
    assert raw.values[0] == pytest.approx(4.5)
    assert isinstance(raw.values[1], float)
    assert raw.values[2] == 0  # asked for explicitly: read even in ReadProperty mode
    counts = twin.requests(50001)
    assert counts["read-property-multiple"] == 1
    assert counts["read-property"] >= 2
    raw = await d.read()  # no second try of ReadPropertyMultiple
    assert twin.requests(50001)["read-property-multiple"] == 1


async def test_rpm_off_uses_read_property_only(drivers: Drivers, twin: BacnetTwin) -> None:
    d = await drivers.make(
        2,
        rpm="off",
        points=[
            {"id": "f", "object": "analog-value,2001", "quantity": "frequency", "unit": "Hz"},
        ],
    )
    raw = await d.read()
    assert raw.values[0] == pytest.approx(twin_value(twin, 50002, "analog-value,2001"))
    assert twin.requests(50002)["read-property-multiple"] == 0


async def test_unknown_object_is_a_bad_point(drivers: Drivers, twin: BacnetTwin) -> None:
    d = await drivers.make(
        1,
        points=[
            {"id": "good", "object": "analog-value,1", "quantity": "current", "unit": "A"},
            {"id": "missing", "object": "analog-value,9999", "quantity": "current", "unit": "A"},
            {"id": "bad-prop", "object": "analog-value,1", "property": "polarity", "quantity": "other"},
        ],
    )
    raw = await d.read()
    assert isinstance(raw.values[0], float)
    assert isinstance(raw.values[1], PointError) and "unknown-object" in raw.values[1].message
    assert isinstance(raw.values[2], PointError)
    only_missing = await drivers.make(
        1,
        id="only-missing",
        points=[
            {"id": "missing", "object": "analog-value,9999", "quantity": "current", "unit": "A"},
        ],
    )
    raw = await only_missing.read()  # the whole request is refused; asked alone, the point fails alone
    assert isinstance(raw.values[0], PointError) and "unknown-object" in raw.values[0].message


async def test_status_flags_give_quality(drivers: Drivers, twin: BacnetTwin) -> None:
    d = await drivers.make(
        1,
        points=[
            {"id": f"ch{n}", "object": f"analog-value,{n}", "quantity": "current", "unit": "A"} for n in (1, 2, 3, 4)
        ],
    )
    twin.set_value(50001, "analog-value,2", 3.0)
    twin.set_flags(50001, "analog-value,1", [1, 0, 0, 0])  # in alarm: the value is real
    twin.set_flags(50001, "analog-value,2", [0, 0, 1, 0])  # overridden
    twin.set_flags(50001, "analog-value,3", [0, 1, 0, 0])  # fault
    twin.set_flags(50001, "analog-value,4", [0, 0, 0, 1])  # out of service
    raw = await d.read()
    assert raw.qualities is not None
    assert isinstance(raw.values[0], float) and raw.qualities[0] is None
    assert raw.values[1] == pytest.approx(3.0) and raw.qualities[1] is Quality.UNCERTAIN
    assert isinstance(raw.values[2], PointError) and "fault" in raw.values[2].message
    assert isinstance(raw.values[3], float) and raw.qualities[3] is Quality.UNCERTAIN


async def test_unreachable_device_then_recovery(drivers: Drivers, twin: BacnetTwin) -> None:
    p1 = await drivers.make(1, points=[{"id": "a", "object": "analog-value,1", "quantity": "current", "unit": "A"}])
    p2 = await drivers.make(2, points=[{"id": "a", "object": "analog-value,1", "quantity": "current", "unit": "A"}])
    await p1.read()
    await p2.read()
    twin.go_silent(50002)  # one panel gone, the router and the other panel still answer
    started = time.monotonic()
    with pytest.raises(DeviceTimeout):
        await p2.read()
    assert time.monotonic() - started < TIMEOUT * 3  # the device's timeout, not bacpypes3's 12 s
    assert isinstance((await p1.read()).values[0], float)
    twin.resume(50002)
    assert isinstance((await p2.read()).values[0], float)

    twin.go_silent()  # the whole board
    with pytest.raises(DeviceError):
        await p1.read()
    twin.resume()
    assert isinstance((await p1.read()).values[0], float)


async def test_first_contact_with_a_dead_device(drivers: Drivers, twin: BacnetTwin) -> None:
    twin.go_silent()
    d = await drivers.make(1, points=[{"id": "a", "object": "analog-value,1", "quantity": "current", "unit": "A"}])
    with pytest.raises(DeviceTimeout):
        await d.read()
    twin.resume()
    assert isinstance((await d.read()).values[0], float)


async def test_cov_change_is_pushed_without_a_poll(drivers: Drivers, twin: BacnetTwin) -> None:
    d = await drivers.make(
        1,
        cov=True,
        cov_lifetime="60s",
        points=[
            {"id": "ch3.current", "object": "analog-value,3", "quantity": "current", "unit": "A"},
            {"id": "ch3.units", "object": "analog-value,3", "property": "units", "quantity": "other"},
            {"id": "ch4.current", "object": "analog-value,4", "quantity": "current", "unit": "A", "cov": False},
        ],
    )
    pushed = drivers.pushed_by(d)
    await wait_for(lambda: twin.requests(50001)["subscribe-cov"] >= 1)
    await wait_for(lambda: any(p.index == 0 for p in pushed))  # the initial notification
    twin.set_value(50001, "analog-value,3", 11.5)
    await wait_for(lambda: any(p.index == 0 and p.value == pytest.approx(11.5) for p in pushed))
    assert all(p.index == 0 for p in pushed)  # only the subscribed point
    reads_before = twin.requests(50001)["read-property-multiple"]
    raw = await d.read()
    assert raw.values[0] == pytest.approx(11.5)  # from the subscription
    assert raw.values[1] == 3  # amperes, polled
    assert isinstance(raw.values[2], float)  # polled
    assert twin.requests(50001)["read-property-multiple"] == reads_before + 1
    twin.set_flags(50001, "analog-value,3", [0, 0, 0, 1])  # out of service: the value is not the process's
    await wait_for(lambda: pushed[-1].quality is Quality.UNCERTAIN)
    assert pushed[-1].value == pytest.approx(11.5)
    twin.set_flags(50001, "analog-value,3", [0, 1, 0, 0])
    await wait_for(lambda: isinstance(pushed[-1].value, PointError))


async def test_cov_refused_falls_back_to_polling(drivers: Drivers, twin: BacnetTwin) -> None:
    for app in twin.devices.values():
        app.cov_supported = False
    twin.set_value(50002, "analog-value,2", 2.0)
    d = await drivers.make(
        2,
        cov=True,
        points=[
            {"id": "ch2.current", "object": "analog-value,2", "quantity": "current", "unit": "A"},
        ],
    )
    await wait_for(lambda: twin.requests(50002)["subscribe-cov"] >= 1)
    raw = await d.read()
    assert raw.values[0] == pytest.approx(2.0)
    assert drivers.pushed_by(d) == []


async def test_cov_renewal_and_unsubscribe(drivers: Drivers, twin: BacnetTwin) -> None:
    d = await drivers.make(
        1,
        cov=True,
        cov_lifetime="10s",
        points=[
            {"id": "ch1.current", "object": "analog-value,1", "quantity": "current", "unit": "A"},
        ],
    )
    await wait_for(lambda: twin.requests(50001)["subscribe-cov"] >= 1)
    subscriptions = twin.devices[50001]._cov_detections
    await wait_for(lambda: len(subscriptions) == 1)
    # Renewal: the same subscription again (same process id), not a second one.
    state = d._cov["analog-value,1"]
    first_expiry = state.active_until
    await asyncio.sleep(0.01)
    assert await d._subscribe("analog-value,1", state, 10)
    assert twin.requests(50001)["subscribe-cov"] == 2
    assert state.active_until > first_expiry
    assert len(subscriptions) == 1 and len(subscriptions[ObjectIdentifier("analog-value,1")].cov_subscriptions) == 1
    await d.stop()  # cancels the subscription on the device
    await wait_for(lambda: len(subscriptions) == 0)


async def test_discover_builds_points_from_the_object_list(drivers: Drivers, twin: BacnetTwin) -> None:
    d = await drivers.make(1, timeout=2.0)
    assert list(d.ctx.points) == []
    found = await d.discover()
    objects = {p["object"]: p for p in found}
    assert len(found) == len(twin.devices[50001].objectIdentifier) - 2  # all but device and network port
    power = objects["analog-value,101"]
    assert power["id"] == "panel1.ch1.power"
    assert (power["quantity"], power["unit"], power["scale"]) == ("active_power", "W", 1000.0)
    energy = objects["analog-value,201"]
    assert (energy["quantity"], energy["unit"], energy["kind"]) == ("active_energy_import", "Wh", "counter")
    assert objects["analog-value,1"]["quantity"] == "current"
    assert objects["analog-value,2001"]["quantity"] == "frequency"
    assert objects["analog-value,301"]["quantity"] == "power_factor"
    assert objects["analog-value,2004"]["phase"] == "L1-N"
    points = [BacnetPoint.model_validate(p) for p in found]  # valid for the point model as they are
    d.ctx.points = points
    await d.replan()
    raw = await d.read()
    assert len(raw.values) == len(points)
    assert not any(isinstance(v, PointError) for v in raw.values)
    assert by_id(d, raw.values)["panel1.ch1.power"] == pytest.approx(twin_value(twin, 50001, "analog-value,101"))


async def test_direct_device_and_values_over_time(drivers: Drivers, twin: BacnetTwin) -> None:
    # The router's own device object, addressed directly (not routed).
    d = await drivers.make(
        1,
        id="router",
        network=None,
        mac=None,
        device_instance=twin.offset,
        points=[
            {
                "id": "name",
                "object": f"device,{twin.offset}",
                "property": "object-name",
                "quantity": "identity",
                "kind": "state",
            },
            {
                "id": "vendor",
                "object": f"device,{twin.offset}",
                "property": "vendor-identifier",
                "quantity": "identity",
                "kind": "state",
            },
        ],
    )
    raw = await d.read()
    assert raw.values == [f"BCPME-{twin.offset}", 10]
    p = await drivers.make(
        1, points=[{"id": "f", "object": "analog-value,2001", "quantity": "frequency", "unit": "Hz"}]
    )
    twin.tick(0.0)
    first = (await p.read()).values[0]
    twin.tick(15.0)
    second = (await p.read()).values[0]
    assert isinstance(first, float) and isinstance(second, float) and not math.isclose(first, second)


async def test_scan_finds_the_router_and_both_panels(twin: BacnetTwin, runtime: BacnetRuntime) -> None:
    found = await scan(runtime, twin.address, None, timeout=0.5)
    assert [(f.instance, f.network, f.mac) for f in found] == [(50000, None, None), (50001, 50, "1"), (50002, 50, "2")]
    assert found[1].name == "Node_1" and found[1].address == twin.address
    assert "network: 50, mac: 1" in found[1].config()


async def test_runtime_not_bound_is_a_device_error(twin: BacnetTwin) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        rt = BacnetRuntime(BacnetSection(local_address=f"127.0.0.1/24:{port}"), structlog.get_logger())
        await rt.start()
        try:
            d = Drivers(twin, rt)
            driver = await d.make(1, points=[{"id": "a", "object": "av,1", "quantity": "current", "unit": "A"}])
            with pytest.raises(DeviceError, match="not open"):
                await driver.read()
            await d.close()
        finally:
            await rt.stop()


async def test_driver_without_shared_runtime(twin: BacnetTwin) -> None:
    d = Drivers(twin, None)  # type: ignore[arg-type]
    try:
        driver = await d.make(2, points=[{"id": "a", "object": "av,2001", "quantity": "frequency", "unit": "Hz"}])
        raw = await asyncio.wait_for(driver.read(), 5)
        assert isinstance(raw.values[0], float)
    finally:
        await d.close()


async def test_discover_reads_a_long_object_list_item_by_item(runtime: BacnetRuntime) -> None:
    # 206-byte APDUs, no segmentation: the object list (and many answers) must be read in pieces.
    async with BacnetTwin.create(vars={"channels": 2}, panels=1, animate=False, max_apdu=206) as small:
        d = Drivers(small, runtime)
        try:
            driver = await d.make(1, timeout=2.0)
            found = await driver.discover()
            assert len(found) == len(small.devices[50001].objectIdentifier) - 2
            assert small.requests(50001)["aborted-too-long"] >= 1
            assert {p["object"] for p in found} >= {"analog-value,1", "analog-value,2", "analog-value,2001"}
        finally:
            await d.close()


async def test_foreign_device_scan_through_a_bbmd() -> None:
    async with BacnetTwin.create(vars={"channels": 1}, panels=2, animate=False, bbmd=True) as twin:
        section = BacnetSection(
            local_address=f"127.0.0.1/24:{free_udp_port()}", bbmd=BbmdSettings(address=twin.address)
        )
        rt = BacnetRuntime(section, structlog.get_logger())
        await rt.start()
        try:
            assert rt.app is not None
            link = next(iter(rt.app.link_layers.values()))
            await wait_for(lambda: link.bbmdRegistrationStatus == 0)  # registered
            found = await scan(rt, None, None, timeout=0.5)  # a broadcast Who-Is, distributed by the BBMD
            assert [f.instance for f in found] == [50000, 50001, 50002]
            assert found[2].network == 50 and found[2].address == twin.address
        finally:
            await rt.stop()


async def test_segmented_answers_when_both_sides_segment(runtime: BacnetRuntime) -> None:
    async with BacnetTwin.create(
        vars={"channels": 12}, panels=1, animate=False, max_apdu=480, segmentation="segmented-both"
    ) as seg:
        d = Drivers(seg, runtime)
        try:
            driver = await d.make(1, profile="schneider-bcpme-bacnet", profile_vars={"channels": 12})
            raw = await driver.read()
            assert not any(isinstance(v, PointError) for v in raw.values)
            # 126 objects: about 3 segmented answers instead of 7 single ones.
            assert seg.requests(50001)["read-property-multiple"] <= 4
        finally:
            await d.close()


async def test_bcpme_health_bits_have_the_modbus_ids(drivers: Drivers, twin: BacnetTwin) -> None:
    """The health bitmap (an analog value) gives its bits as calculated points with the Modbus profile's ids."""
    twin.set_value("panel1.health", 0b1_0001_1100)  # bits 2, 3, 4 and 8
    driver = await drivers.make(1, profile="schneider-bcpme-bacnet", profile_vars={"channels": 4, "extra_blocks": 0})
    dev = driver.ctx.device
    raw = await driver.read()
    norm = Normalizer(dev.id, list(dev.resolved_points), dev.calculated_points)
    got = {str(r["point"]): r["value"] for r in norm.normalize(raw, 0).as_dicts() if r["quality"] == "good"}
    assert got["panel1.health"] == 284
    assert {k.removeprefix("panel1.health."): v for k, v in got.items() if k.startswith("panel1.health.")} == {
        "frequency_out_of_range": False,
        "voltage_clipping_a": True,
        "voltage_clipping_b": True,
        "voltage_clipping_c": True,
        "current_clipping": False,
        "strip_error": True,
    }
