"""The shipped Modbus device profiles: they load, expand, validate, and match the public maps."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.config import ModbusDevice, ModbusPoint
from drivers.modbus.planner import plan_reads
from gateway.config import ConfigError, parse_device
from gateway.models import PointConfig
from gateway.points import PHASES, QUANTITIES, UNITS, Kind
from gateway.profiles import expand, load_profile, shipped_profiles

DOCS = Path(__file__).resolve().parents[2] / "docs" / "profiles.md"

# Points per profile with its default vars (and the arithmetic that gives them).
EXPECTED_COUNTS = {
    # per panel: 6 identity + 2 demand setup + 10 alarm/health + 9 mains floats + 10 int16 mains + 8 aux
    # 3-phase + 4 x 7 aux per phase (with N) + 3 x 3 aux power per phase + 42 x (10 branch + 4 extra)
    "schneider-bcpme": 2 * (6 + 2 + 10 + 9 + 10 + 8 + 4 * 7 + 3 * 3 + 42 * (10 + 4)),
    # 1 model + 1 CT ratio + 3 x (V L-N, I, V L-L, THD V, THD I) + I N + P/Q/S + 2 signs + 4 energies + PF + f
    "legrand-emdx3": 2 + 3 * 5 + 1 + 3 + 2 + 4 + 2,
    # 1 UPS x 4 + 1 string x (15 registers + 7 alarm bits - 2: the alarm word is one of the 15) + 120 cells x 6
    "robotina-bm-sm": 4 + 20 + 120 * 6,
    # 64 tap boxes x (10 header points + 3 breakers x (4 status bits + 1 earth leakage bit + 20 + 23 measurements))
    "ibgw100-ibsm": 64 * (10 + 3 * (4 + 1 + 20 + 23)),
    # 5 status registers + 3 status bits + 2 counters + 3 phase currents + neutral (metering off)
    "legrand-breaker-interface": 5 + 3 + 2 + 3 + 1,
}
OURS = set(EXPECTED_COUNTS)

# The SI unit each quantity must carry ("" = dimensionless or a code).
UNIT_OF: dict[str, set[str]] = {
    "voltage": {"V"},
    "current": {"A"},
    "current_demand": {"A"},
    "current_demand_max": {"A"},
    "current_max": {"A"},
    "leakage_current": {"A"},
    "active_power": {"W"},
    "active_power_demand": {"W"},
    "active_power_demand_max": {"W"},
    "active_power_max": {"W"},
    "reactive_power": {"var"},
    "apparent_power": {"VA"},
    "active_energy_import": {"Wh"},
    "active_energy_export": {"Wh"},
    "active_energy_absolute": {"Wh"},
    "reactive_energy_import": {"varh"},
    "reactive_energy_export": {"varh"},
    "apparent_energy_import": {"VAh"},
    "apparent_energy_export": {"VAh"},
    "power_factor": {""},
    "frequency": {"Hz"},
    "thd_voltage": {"%"},
    "thd_current": {"%"},
    "tdd": {"%"},
    "unbalance_voltage": {"%"},
    "unbalance_current": {"%"},
    "temperature": {"degC"},
    "humidity": {"%RH"},
    "state_of_charge": {"%"},
    "state_of_health": {"%"},
    "balancing": {"%"},
    "internal_resistance": {"ohm"},
    "rating": {"A", "V", "VA", "W"},
}
ENERGY = {q for q in QUANTITIES if "energy" in q}
SIM_KEYS = {"value", "min", "max", "period"}


def _raw_device(name: str, profile_vars: dict[str, Any] | None = None, **settings: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"id": "dut", "driver": "modbus", "profile": name, "tcp": {"host": "127.0.0.1"}}
    if profile_vars:
        raw["profile_vars"] = profile_vars
    raw.update(settings)
    return raw


@cache
def _device(name: str, vars_items: tuple[tuple[str, Any], ...] = (), unit: int | None = None) -> ModbusDevice:
    settings = {} if unit is None else {"unit": unit}
    device = parse_device(_raw_device(name, dict(vars_items), **settings))
    assert isinstance(device, ModbusDevice)
    return device


def device(name: str, unit: int | None = None, **profile_vars: Any) -> ModbusDevice:
    return _device(name, tuple(sorted(profile_vars.items())), unit)


def points(name: str, unit: int | None = None, **profile_vars: Any) -> dict[str, ModbusPoint]:
    out: dict[str, ModbusPoint] = {}
    for p in device(name, unit, **profile_vars).resolved_points:
        assert isinstance(p, ModbusPoint)
        out[p.id] = p
    return out


def wire(dev: ModbusDevice, point: ModbusPoint) -> int:
    """The PDU address the driver sends for a point."""
    return point.address - dev.numbering


def test_our_profiles_are_shipped() -> None:
    assert set(shipped_profiles("modbus")) >= OURS


ALL = sorted(shipped_profiles("modbus"))


@pytest.mark.parametrize("name", ALL)
def test_header(name: str) -> None:
    profile = load_profile(shipped_profiles("modbus")[name])
    assert profile.name == name
    assert profile.driver == "modbus"
    assert profile.status in {"verified", "draft", "assumed"}
    assert profile.description and profile.source
    # A var named like a device setting would silently replace it in every expression.
    assert not set(profile.vars) & set(ModbusDevice.model_fields), "profile var shadows a device setting"
    # The profile's device defaults must be valid device settings.
    ModbusDevice.model_validate({"id": "x", "driver": "modbus", "tcp": {"host": "127.0.0.1"}, **profile.device})


@pytest.mark.parametrize("name", ALL)
def test_expands_and_validates_with_default_vars(name: str) -> None:
    profile = load_profile(shipped_profiles("modbus")[name])
    dev = ModbusDevice.model_validate({"id": "x", "driver": "modbus", "tcp": {"host": "127.0.0.1"}, **profile.device})
    env = {**{k: v for k, v in dev if isinstance(v, int | float | str) and not isinstance(v, bool)}, **profile.vars}
    raw = [p for p, _, _ in expand(profile.points, env)]
    ids = [p["id"] for p in raw]
    assert len(ids) == len(set(ids)), "duplicate point ids"
    for p in raw:
        # A calculated point has no address: the base model, as the config loader does.
        (PointConfig if "calc" in p else ModbusPoint).model_validate(p)
        for key, value in p.items():
            if isinstance(value, str):
                assert "{" not in value and "}" not in value, f"{p['id']}.{key} kept an unexpanded expression"
    # The core's own path (profile merged into a device) agrees.
    dev = device(name)
    assert len(dev.resolved_points) + len(dev.calculated_points) == len(raw)


@pytest.mark.parametrize("name", sorted(OURS))
def test_expected_point_count(name: str) -> None:
    assert len(device(name).resolved_points) == EXPECTED_COUNTS[name]


@pytest.mark.parametrize("name", ALL)
def test_vocabulary_and_units(name: str) -> None:
    for p in [*points(name).values(), *device(name).calculated_points]:
        assert p.quantity in QUANTITIES
        assert p.unit in UNITS
        assert p.phase in PHASES
        allowed = UNIT_OF.get(p.quantity, {""})
        assert p.unit in allowed, f"{p.id}: {p.quantity} in {p.unit!r}, expected one of {sorted(allowed)}"
        if p.quantity in ENERGY:
            assert p.kind == Kind.COUNTER, f"{p.id}: an energy register is a counter"
        if getattr(p, "bit", None) is not None or getattr(p, "bits", None) is not None:
            assert p.kind == Kind.STATE, f"{p.id}: a bit field is a state"


@pytest.mark.parametrize("name", ALL)
def test_exponent_points_exist_and_are_served(name: str) -> None:
    pts = points(name)
    for p in pts.values():
        if p.exponent_point is None:
            continue
        exp = pts.get(p.exponent_point)
        assert exp is not None, f"{p.id}: no exponent point {p.exponent_point}"
        assert exp.type == "int16" and exp.quantity == "scale"
        assert exp.unit_id == p.unit_id and exp.function == p.function
        assert exp.sim is not None and "value" in exp.sim, "the twin needs a plausible exponent"


@pytest.mark.parametrize("name", ALL)
def test_sim_hints_are_well_formed(name: str) -> None:
    for p in points(name).values():
        if p.sim is None:
            continue
        assert set(p.sim) <= SIM_KEYS, f"{p.id}: unknown sim keys {set(p.sim) - SIM_KEYS}"
        assert ("value" in p.sim) != ("min" in p.sim or "max" in p.sim), f"{p.id}: value, or min and max"
        if "min" in p.sim:
            assert p.sim["min"] < p.sim["max"]


def _span(p: ModbusPoint) -> range:
    return range(p.address, p.address + p.words())


@pytest.mark.parametrize("name", ALL)
def test_registers_do_not_collide(name: str) -> None:
    """Two points share registers only when one is a bit view of the other's whole register(s)."""
    dev = device(name)
    whole: dict[tuple[int, str, int], str] = {}
    views: list[tuple[tuple[int, str], ModbusPoint]] = []
    for p in points(name).values():
        space: tuple[int, str] = (p.unit_id if p.unit_id is not None else dev.unit, p.function or dev.function)
        assert wire(dev, p) >= 0 and wire(dev, p) + p.words() - 1 <= 65535
        for lo, hi in dev.unreadable:
            assert p.address > hi or p.address + p.words() - 1 < lo, f"{p.id} lies in unreadable [{lo}, {hi}]"
        if p.bit is not None or p.bits is not None:
            views.append((space, p))
            continue
        for reg in _span(p):
            key = (*space, reg)
            assert key not in whole, f"{p.id} overlaps {whole[key]} at register {reg}"
            whole[key] = p.id
    for space, p in views:
        owners = {whole.get((*space, reg)) for reg in _span(p)}
        assert len(owners) == 1 and None not in owners, f"{p.id} is not a view of one whole point"
        owner = points(name)[owners.pop() or ""]
        assert owner.address == p.address and owner.type == p.type


@pytest.mark.parametrize("name", ALL)
def test_the_planner_reads_every_point(name: str) -> None:
    dev = device(name)
    plan = plan_reads(list(points(name).values()), dev)
    assert plan.rejected == ()


def test_bcpme_reads_are_few() -> None:
    """The device defaults let the planner cover a panel in a dozen requests (floats, setup, alarms)."""
    dev = device("schneider-bcpme")
    plan = plan_reads(list(points("schneider-bcpme").values()), dev)
    assert plan.units == (1, 2)
    assert len([r for r in plan.reads if r.unit == 1]) <= 13


# --- Schneider BCPME -------------------------------------------------------------------------------


def test_bcpme_addresses_match_the_public_map() -> None:
    dev = device("schneider-bcpme")
    pts = points("schneider-bcpme")
    assert dev.numbering == 1  # document register numbers; wire = Reg - 1
    # Float current of channel 1: document Reg 2252, wire 2251 (LabSense reads 2251; BCPME client sends Reg - 1).
    ch1 = pts["panel1.ch1.current"]
    assert (ch1.address, wire(dev, ch1), ch1.type, ch1.unit, ch1.unit_id) == (2252, 2251, "float32", "A", 1)
    assert pts["panel2.ch1.current"].unit_id == 2
    assert wire(dev, pts["panel1.ch1.power"]) == 2083
    assert wire(dev, pts["panel1.ch1.power_factor"]) == 2167
    # kWh of channel 42: Reg 2000 + 2 * 41 = 2082, scaled to Wh.
    e42 = pts["panel2.ch42.energy"]
    assert (e42.address, wire(dev, e42), e42.scale, e42.unit, e42.kind) == (2082, 2081, 1000.0, "Wh", Kind.COUNTER)
    assert pts["panel1.ch42.apparent_power"].address == 2840 + 82
    freq = pts["panel1.mains.frequency"]
    assert (freq.address, wire(dev, freq), freq.unit) == (600, 599, "Hz")
    assert pts["panel1.mains.voltage_ac"].address == 616
    assert pts["panel1.aux.current_n"].address == 644 and pts["panel1.aux.current_n"].phase == "N"
    assert pts["panel1.aux.apparent_power_l3"].address == 682
    assert pts["panel1.model"].address == 5 and pts["panel1.model"].sim == {"value": 15172}
    assert (pts["panel1.serial_number"].address, pts["panel1.serial_number"].type) == (1, "uint32")
    assert pts["panel1.ch1.alarm"].address == 178 and pts["panel1.ch42.alarm"].address == 219
    assert pts["panel1.aux.alarm_n"].address == 223
    assert pts["panel1.health.strip_error"].bit == 8


def test_bcpme_sentinels_and_scale_register() -> None:
    pts = points("schneider-bcpme")
    for p in pts.values():
        if p.type == "float32":
            assert len(p.invalid) == 1 and math.isnan(p.invalid[0]), p.id
    v = pts["panel1.mains.voltage_an_int"]
    assert (v.address, v.type, v.invalid, v.exponent_point) == (248, "int16", [-32768.0], "panel1.mains.voltage_scale")
    scale = pts["panel1.mains.voltage_scale"]
    assert (scale.address, scale.publish) == (244, False)


def test_bcpme_phases_follow_the_ct_layout() -> None:
    top = points("schneider-bcpme")
    assert [top[f"panel1.ch{n}.current"].phase for n in range(1, 9)] == ["L1", "L1", "L2", "L2", "L3", "L3", "L1", "L1"]
    assert top["panel2.ch12.current"].circuit == "2-12"
    seq = points("schneider-bcpme", phase_group=1)
    assert [seq[f"panel1.ch{n}.current"].phase for n in range(1, 5)] == ["L1", "L2", "L3", "L1"]


def test_bcpme_vars_change_the_expansion() -> None:
    one = points("schneider-bcpme", panels=1)
    assert len(one) == EXPECTED_COUNTS["schneider-bcpme"] // 2
    assert not any(pid.startswith("panel2.") for pid in one)
    # The device's own unit id is panel 1; panel 2 follows it.
    shifted = points("schneider-bcpme", unit=5)
    assert (shifted["panel1.ch1.current"].unit_id, shifted["panel2.ch1.current"].unit_id) == (5, 6)
    full = points("schneider-bcpme", int_currents=1, extra_blocks=1, int_voltages=0)
    assert len(full) == EXPECTED_COUNTS["schneider-bcpme"] + 2 * 42 * 2 - 2 * 10
    cur = full["panel2.ch7.current_int"]
    assert (cur.address, cur.exponent_point) == (1342, "panel2.ch7.current_scale")
    assert full["panel2.ch7.current_scale"].address == 1006
    assert full["panel1.ch1.power_demand_max"].address == 2420
    assert "panel1.mains.voltage_an_int" not in full


def test_bcpme_multi_pole_meters() -> None:
    """The legacy 2-pole and 3-pole blocks, off by default, group channels as the register list pairs them."""
    assert not any("pole" in pid for pid in points("schneider-bcpme"))
    full = points("schneider-bcpme", two_pole=21, three_pole=14)
    assert len(full) == EXPECTED_COUNTS["schneider-bcpme"] + 2 * (21 * (8 + 2 * 7) + 14 * (8 + 3 * 7))
    dev = device("schneider-bcpme", two_pole=21, three_pole=14)
    # Top feed pairs 1+3, 2+4, 5+7: meter 3 is channels 5 (L3) and 7 (L1).
    m3 = full["panel1.twopole3.current_pole2"]
    assert (m3.address, wire(dev, m3), m3.phase, m3.circuit) == (5378 + 4, 5381, "L1", "1-5+7")
    assert full["panel1.twopole3.current_pole1"].phase == "L3"
    assert (full["panel1.twopole1.energy"].address, full["panel1.twopole1.energy"].kind) == (5000, Kind.COUNTER)
    assert full["panel2.twopole21.apparent_power_pole2"].address == 5882 + 40  # the block's last register pair
    assert full["panel2.twopole21.apparent_power_pole2"].unit_id == 2
    # Triples 1+3+5, 2+4+6, 7+9+11: every 3-pole meter has one pole on each phase.
    for k in range(1, 15):
        assert [full[f"panel1.threepole{k}.current_pole{q}"].phase for q in (1, 2, 3)] == ["L1", "L2", "L3"]
    t14 = full["panel1.threepole14.current_pole3"]
    assert (t14.address, t14.circuit) == (8336 + 26, "1-38+40+42")
    assert full["panel1.threepole14.apparent_power_pole3"].address == 8784 + 26
    assert full["panel1.threepole2.power"].phase == "total" and full["panel1.threepole2.power"].scale == 1000
    some = points("schneider-bcpme", two_pole=2, two_pole_first=5, panels=1)
    assert sorted({pid.split(".")[1] for pid in some if "pole" in pid}) == ["twopole5", "twopole6"]
    seq = points("schneider-bcpme", phase_group=1, two_pole=2, three_pole=1)
    assert seq["panel1.twopole2.current_pole1"].circuit == "1-3+4"
    assert [seq[f"panel1.twopole2.current_pole{q}"].phase for q in (1, 2)] == ["L3", "L1"]
    assert seq["panel1.threepole1.current_pole3"].circuit == "1-1+2+3"


# --- Legrand EMDX3 ---------------------------------------------------------------------------------


def test_emdx3_map_and_ct_ratio_scales() -> None:
    dev = device("legrand-emdx3")
    pts = points("legrand-emdx3")
    assert dev.numbering == 0
    assert (pts["voltage_l1n"].address, pts["voltage_l1n"].scale, pts["voltage_l1n"].type) == (4096, 0.001, "uint32")
    assert pts["current_n"].address == 4108
    assert pts["voltage_l3l1"].address == 4114 and pts["voltage_l3l1"].phase == "L3-L1"
    assert pts["thd_current_l3"].address == 4175
    assert pts["ct_ratio"].address == 4608
    assert (pts["active_power_magnitude"].scale, pts["energy_import"].scale) == (0.01, 10.0)
    big = points("legrand-emdx3", power_scale=1, energy_scale=1000)
    assert (big["active_power_magnitude"].scale, big["reactive_power_magnitude"].scale, big["energy_export"].scale) == (
        1.0,
        1.0,
        1000.0,
    )


# --- Robotina BM-GW --------------------------------------------------------------------------------


def test_robotina_unit_ids_and_cells() -> None:
    pts = points("robotina-bm-sm")
    assert pts["ups1.voltage"].unit_id == 1 and pts["ups1.voltage"].type == "int32"
    assert (pts["string1.voltage"].unit_id, pts["string1.voltage"].address) == (101, 2)
    assert pts["string1.alarm.hall_sensor"].bit == 6
    assert "string1.cell120.soh" in pts and "string1.cell121.voltage" not in pts, "120 cells by default"
    assert not any(".cell" in pid and "cell_count" not in pid for pid in points("robotina-bm-sm", cells=0))
    more = points("robotina-bm-sm", strings=2, first_string=3, ups=0, cells=120)
    assert not any(pid.startswith("ups") for pid in more)
    assert {p.unit_id for p in more.values()} == {103, 104}
    assert len(more) == 2 * (20 + 120 * 6)
    assert more["string3.cell2.voltage"].address == 111
    assert more["string4.cell120.soh"].address == 100 + 10 * 119 + 5
    blocks = points("robotina-bm-sm", cells=120, cell_stride=1, cell_field_stride=120)
    assert blocks["string1.cell2.voltage"].address == 100 + 1 + 120


# --- iBGW100 / iBSM --------------------------------------------------------------------------------


def test_ibsm_vars_change_the_expansion() -> None:
    two = points("ibgw100-ibsm", meters=2)
    assert len(two) == 2 * (10 + 3 * 48)
    assert {p.unit_id for p in two.values()} == {1, 2}
    assert "ring 1" in two["meter2.temperature"].description
    ring2 = points("ibgw100-ibsm", meters=2, first_unit=33)
    assert {p.unit_id for p in ring2.values()} == {33, 34}
    e = two["meter1.cb2.energy"]
    assert (e.address, e.type, e.scale, e.unit) == (100 + 40 + 26, "float32", 1000.0, "Wh")
    moved = points("ibgw100-ibsm", meters=1, breaker_base=200, breaker_stride=50, energy_type="uint32")
    e = moved["meter1.cb2.energy"]
    assert (e.address, e.type) == (200 + 50 + 26, "uint32")
    assert two["meter1.cb3.trip"].bits == (22, 22)
    assert two["meter1.sag"].bits == (1, 1)
    six = points("ibgw100-ibsm", meters=1, breakers=6)
    assert "meter1.cb6.trip" in six and "meter1.cb5.earth_leakage" not in six
    assert six["meter1.cb6.trip"].bits == (25, 25)


def test_ring_two_is_named() -> None:
    pts = points("ibgw100-ibsm")
    assert "ring 2" in pts["meter33.temperature"].description
    assert pts["meter64.cb3.leakage_current"].unit_id == 64


def test_unknown_profile_var_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown profile variable"):
        parse_device(_raw_device("ibgw100-ibsm", {"meter": 2}))


# --- the guide -------------------------------------------------------------------------------------


def test_guide_lists_the_vocabulary_and_every_profile() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for word in sorted(QUANTITIES | PHASES | (UNITS - {""}) | {str(k) for k in Kind}):
        assert f"`{word}`" in text, f"docs/profiles.md does not list `{word}`"
    for name in ALL:
        assert f"`{name}`" in text, f"docs/profiles.md has no section on {name}"
