"""Pure parts of the BACnet driver: references, units, status flags, request packing, discovery, config."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.bacnet import codec
from drivers.bacnet.codec import (
    ObjectInfo,
    bacnet_units_for,
    canonical_object,
    canonical_property,
    discovered_points,
    guess_phase,
    guess_quantity,
    map_units,
    plan_reads,
    point_id,
    split_object,
    split_property,
    status_quality,
)
from drivers.bacnet.config import BacnetDevice, BacnetPoint, BacnetSection
from gateway.points import QUANTITIES, UNITS, Quality


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("analog-value,3", "analog-value,3"),
        ("analogValue:3", "analog-value,3"),
        ("AV,3", "analog-value,3"),
        ("av3", "analog-value,3"),
        (" binary-input , 7 ", "binary-input,7"),
        ("2,3", "analog-value,3"),
        ("130,5", "130,5"),
        ("device,4194303", "device,4194303"),
        ("msv,1", "multi-state-value,1"),
    ],
)
def test_canonical_object(text: str, expected: str) -> None:
    assert canonical_object(text) == expected


@pytest.mark.parametrize("text", ["analog-value", "analog-value,4194304", "bogus,1", "1024,1", "", "av,-1"])
def test_bad_objects(text: str) -> None:
    with pytest.raises(ValueError):
        canonical_object(text)


def test_split_references() -> None:
    assert split_object("AI,12") == ("analog-input", 12)
    assert split_object("200,1") == (200, 1)
    assert canonical_property("presentValue") == "present-value"
    assert canonical_property("present_value") == "present-value"
    assert canonical_property("priority-array[8]") == "priority-array[8]"
    assert split_property("priorityArray[ 3 ]") == ("priority-array", 3)
    assert split_property("512") == (512, None)
    with pytest.raises(ValueError):
        canonical_property("present value")


@pytest.mark.parametrize(
    ("bacnet", "unit", "scale"),
    [
        ("kilowatts", "W", 1000.0),
        ("kilowattHours", "Wh", 1000.0),
        ("kilowatt-hours", "Wh", 1000.0),
        ("volts", "V", 1.0),
        ("amperes", "A", 1.0),
        ("milliamperes", "A", 0.001),
        ("hertz", "Hz", 1.0),
        ("percent", "%", 1.0),
        ("degrees-celsius", "degC", 1.0),
        ("power-factor", "", 1.0),
        ("no-units", "", 1.0),
        ("kilovolt-amperes", "VA", 1000.0),
        ("kilovolt-amperes-reactive", "var", 1000.0),
        ("percent-relative-humidity", "%RH", 1.0),
        ("ohms", "ohm", 1.0),
    ],
)
def test_unit_mapping(bacnet: str, unit: str, scale: float) -> None:
    mapped = map_units(bacnet)
    assert mapped is not None
    assert (mapped.unit, mapped.scale) == (unit, scale)


def test_every_mapped_unit_is_in_the_vocabulary() -> None:
    for mapped in codec.BACNET_UNITS.values():
        assert mapped.unit in UNITS
    assert map_units("cubic-feet-per-minute") is None
    assert map_units(None) is None


def test_fahrenheit_and_kelvin_convert_to_celsius() -> None:
    f = map_units("degrees-fahrenheit")
    k = map_units("degrees-kelvin")
    assert f is not None and k is not None
    assert 212 * f.scale + f.offset == pytest.approx(100.0)
    assert 273.15 * k.scale + k.offset == pytest.approx(0.0)


def test_reverse_units_for_the_twin() -> None:
    assert bacnet_units_for("W", 1000) == "kilowatts"
    assert bacnet_units_for("Wh", 1000) == "kilowatt-hours"
    assert bacnet_units_for("A") == "amperes"
    assert bacnet_units_for("", 1) == "no-units"
    assert bacnet_units_for("W", 7) is None


@pytest.mark.parametrize(
    ("flags", "quality"),
    [
        ([0, 0, 0, 0], None),
        ([1, 0, 0, 0], None),  # in alarm: the value is real
        ([0, 1, 0, 0], Quality.BAD),
        ([1, 1, 1, 1], Quality.BAD),
        ([0, 0, 1, 0], Quality.UNCERTAIN),
        ([0, 0, 0, 1], Quality.UNCERTAIN),
        ([], None),
        (None, None),
    ],
)
def test_status_flags(flags: list[int] | None, quality: Quality | None) -> None:
    assert status_quality(flags) is quality


def _size(specs: list[tuple[str, list[str]]]) -> tuple[int, int]:
    req = ans = 0
    for obj, props in specs:
        for prop in props:
            r, a = codec._property_sizes(prop, codec.object_type_of(obj))
            req, ans = req + r, ans + a
        req += codec._OBJECT_OVERHEAD
        ans += codec._OBJECT_OVERHEAD
    return req + codec._REQUEST_HEADER, ans + codec._ACK_HEADER


_PROPS = st.lists(
    st.sampled_from(["present-value", "status-flags", "object-name", "units", "85", "priority-array[3]"]),
    min_size=1,
    max_size=4,
    unique=True,
)
_SPECS = st.lists(
    st.tuples(st.sampled_from(["analog-value", "binary-input", "large-analog-value"]), _PROPS), max_size=120
)


@given(_SPECS, st.sampled_from([50, 128, 206, 480, 1024, 1476, 5904]), st.integers(1, 60))
def test_plan_covers_every_spec_in_order_within_budget(
    specs: list[tuple[str, list[str]]], max_apdu: int, max_objects: int
) -> None:
    items = [(f"{t},{i}", props) for i, (t, props) in enumerate(specs)]
    chunks = plan_reads(items, max_apdu, max_objects)
    assert [i for chunk in chunks for i in chunk] == list(range(len(items)))
    for chunk in chunks:
        assert len(chunk) <= max_objects
        req, ans = _size([items[i] for i in chunk])
        assert len(chunk) == 1 or (req <= max_apdu and ans <= max_apdu)


def test_plan_fills_a_480_byte_answer() -> None:
    items = [(f"analog-value,{i}", ["present-value", "status-flags"]) for i in range(1, 101)]
    chunks = plan_reads(items, 480)
    assert len(chunks[0]) == 20  # (7 + 9 + 7) bytes per object into 477
    assert sum(len(c) for c in chunks) == 100


@pytest.mark.parametrize(
    ("otype", "unit", "text", "quantity", "kind"),
    [
        ("analog-input", "W", "branch 3 kw", "active_power", "gauge"),
        ("analog-input", "W", "max kw demand", "active_power_demand_max", "gauge"),
        ("analog-input", "W", "kw demand", "active_power_demand", "gauge"),
        ("analog-input", "W", "peak power", "active_power_max", "gauge"),
        ("analog-value", "Wh", "energy", "active_energy_import", "counter"),
        ("analog-value", "Wh", "export energy", "active_energy_export", "counter"),
        ("analog-value", "A", "neutral current", "current", "gauge"),
        ("analog-value", "A", "residual current", "leakage_current", "gauge"),
        ("analog-value", "A", "max current demand", "current_demand_max", "gauge"),
        ("analog-value", "%", "voltage thd", "thd_voltage", "gauge"),
        ("analog-value", "%", "thd current", "thd_current", "gauge"),
        ("analog-value", "%", "battery soc", "state_of_charge", "gauge"),
        ("analog-value", "%", "something", "other", "gauge"),
        ("analog-value", "", "pf total", "power_factor", "gauge"),
        ("analog-value", "", "setpoint", "other", "gauge"),
        ("analog-value", "Hz", "freq", "frequency", "gauge"),
        ("analog-value", "degC", "inlet", "temperature", "gauge"),
        ("binary-input", "", "breaker 4 trip", "breaker_trip", "state"),
        ("binary-input", "", "breaker 4", "breaker_state", "state"),
        ("binary-value", "", "fan run", "status", "state"),
        ("multi-state-value", "", "mode", "status", "state"),
        ("accumulator", "", "pulses", "counter", "counter"),
    ],
)
def test_guess_quantity(otype: str, unit: str, text: str, quantity: str, kind: str) -> None:
    assert guess_quantity(otype, unit, text) == (quantity, kind)
    assert quantity in QUANTITIES


@pytest.mark.parametrize(
    ("text", "phase"),
    [
        ("volts a-n", "L1-N"),
        ("voltage l2-l3", "L2-L3"),
        ("current phase b", "L2"),
        ("total kw", "total"),
        ("neutral current", "N"),
        ("ch 12 current", "none"),
    ],
)
def test_guess_phase(text: str, phase: str) -> None:
    assert guess_phase(text) == phase


def test_point_ids_are_unique_and_safe() -> None:
    used: set[str] = set()
    assert point_id("Main Power (kW)", "analog-value,1", used) == "main_power_kw"
    assert point_id("Main Power (kW)", "analog-value,2", used) == "main_power_kw_av2"
    assert point_id(None, "analog-input,7", used) == "ai7"
    assert point_id("!!!", "130,9", used) == "obj1309"
    assert len(used) == 4


def test_discovered_points_validate_as_point_model() -> None:
    infos = [
        ObjectInfo("analog-value,101", "Branch 1 kW", "kilowatts", "Branch kW, channel 1"),
        ObjectInfo("analog-value,201", "Branch 1 kWh", "kilowatt-hours", None),
        ObjectInfo("analog-input,5", "Supply Air", "degrees-fahrenheit", "SAT"),
        ObjectInfo("analog-input,6", "Flow", "cubic-feet-per-minute", None),
        ObjectInfo("binary-input,1", "CB 7 Trip", None, None),
        ObjectInfo("device,50001", "Node_1", None, None),
        ObjectInfo("network-port,1", "NP", None, None),
    ]
    points = discovered_points(infos)
    assert [p["object"] for p in points] == [i.object for i in infos[:5]]
    by_obj: dict[str, dict[str, Any]] = {p["object"]: p for p in points}
    kw = by_obj["analog-value,101"]
    assert kw == {
        "id": "branch_1_kw",
        "object": "analog-value,101",
        "quantity": "active_power",
        "unit": "W",
        "scale": 1000.0,
        "circuit": "1",
        "description": "Branch kW, channel 1",
    }
    assert by_obj["analog-value,201"]["kind"] == "counter"
    assert by_obj["analog-input,5"]["unit"] == "degC" and by_obj["analog-input,5"]["offset"] == pytest.approx(
        -17.777778
    )
    assert by_obj["analog-input,6"]["quantity"] == "other"
    assert "cubic-feet-per-minute" in by_obj["analog-input,6"]["description"]
    assert by_obj["binary-input,1"]["quantity"] == "breaker_trip"
    for p in points:
        BacnetPoint.model_validate(p)


def _device(**kw: Any) -> BacnetDevice:
    return BacnetDevice.model_validate({"id": "d", "driver": "bacnet", "address": "10.0.0.5", **kw})


def test_device_config() -> None:
    d = _device()
    assert d.address == "10.0.0.5:47808"
    assert d.bacnet_address() == "10.0.0.5:47808"
    assert d.implicit_bus() is None
    r = _device(network=50, mac=1, device_instance=50001)
    assert r.bacnet_address() == "50:1"
    assert r.protocol_address() == {"address": "10.0.0.5:47808", "network": 50, "mac": 1, "device_instance": 50001}
    assert _device(network=5, mac="0x0A0B").bacnet_address() == "5:0x0a0b"
    assert _device(network=5, mac="10.0.1.7").bacnet_address() == "5:10.0.1.7:47808"
    assert _device(network=5, mac="7").mac == 7


@pytest.mark.parametrize(
    "kw",
    [
        {"network": 50},
        {"mac": 1},
        {"network": 50, "mac": 300},
        {"network": 50, "mac": True},
        {"network": 65535, "mac": 1},
        {"address": "host.example:47808"},
        {"address": "10.0.0.5:70000"},
        {"rpm": "maybe"},
        {"cov_lifetime": "1s"},
    ],
)
def test_bad_device_config(kw: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        _device(**kw)


def test_section_config() -> None:
    s = BacnetSection.model_validate({"local_address": "10.0.0.2/24", "bbmd": {"address": "10.1.0.1", "ttl": "5min"}})
    assert s.local_address == "10.0.0.2/24:47808"
    assert s.bbmd is not None and s.bbmd.address == "10.1.0.1:47808" and s.bbmd.ttl == 300
    assert BacnetSection().local_address == "0.0.0.0/32:47808"
    for bad in (
        {"local_address": "10.0.0.2/40"},
        {"local_address": "eth0"},
        {"apdu_timeout": "10ms"},
        {"max_segments": 3},
        {"bogus": 1},
    ):
        with pytest.raises(ValidationError):
            BacnetSection.model_validate(bad)


def test_point_config() -> None:
    p = BacnetPoint.model_validate({"id": "x", "object": "AV,3", "property": "presentValue", "quantity": "current"})
    assert (p.object, p.property) == ("analog-value,3", "present-value")
    assert p.protocol_address() == {"object": "analog-value,3", "property": "present-value"}
    with pytest.raises(ValidationError):
        BacnetPoint.model_validate({"id": "x", "object": "nope", "quantity": "current"})
