"""Names for standard OBIS codes (IEC 62056-6-1): point id, quantity, unit, phase, kind.

Used by discovery to turn a meter's object list into profile points; codes it does not know
become `other` points named after the code, for the integrator to complete.
"""

from __future__ import annotations

from typing import Any

# C group -> (what, phase)
_C: dict[int, tuple[str, str]] = {
    1: ("active_import", "total"),
    2: ("active_export", "total"),
    3: ("reactive_import", "total"),
    4: ("reactive_export", "total"),
    9: ("apparent_import", "total"),
    10: ("apparent_export", "total"),
    11: ("current", "total"),
    12: ("voltage", "none"),
    13: ("power_factor", "total"),
    14: ("frequency", "none"),
    15: ("active_absolute", "total"),
    16: ("active_net", "total"),
    91: ("current", "N"),
}
for _offset, _phase in ((20, "L1"), (40, "L2"), (60, "L3")):
    for _c, _what in (
        (1, "active_import"),
        (2, "active_export"),
        (3, "reactive_import"),
        (4, "reactive_export"),
        (9, "apparent_import"),
        (10, "apparent_export"),
        (11, "current"),
        (12, "voltage"),
        (13, "power_factor"),
    ):
        _C[_offset + _c] = (_what, _phase)

_ENERGY: dict[str, tuple[str, str]] = {
    "active_import": ("active_energy_import", "Wh"),
    "active_export": ("active_energy_export", "Wh"),
    "reactive_import": ("reactive_energy_import", "varh"),
    "reactive_export": ("reactive_energy_export", "varh"),
    "apparent_import": ("apparent_energy_import", "VAh"),
    "apparent_export": ("apparent_energy_export", "VAh"),
    "active_absolute": ("active_energy_absolute", "Wh"),
}
_INSTANT: dict[str, tuple[str, str]] = {
    "active_import": ("active_power", "W"),
    "active_export": ("active_power", "W"),
    "active_net": ("active_power", "W"),
    "active_absolute": ("active_power", "W"),
    "reactive_import": ("reactive_power", "var"),
    "reactive_export": ("reactive_power", "var"),
    "apparent_import": ("apparent_power", "VA"),
    "apparent_export": ("apparent_power", "VA"),
    "current": ("current", "A"),
    "voltage": ("voltage", "V"),
    "power_factor": ("power_factor", ""),
    "frequency": ("frequency", "Hz"),
}
_SPECIAL: dict[str, dict[str, Any]] = {
    "0.0.1.0.0.255": {"id": "clock", "quantity": "clock", "unit": "", "kind": "state", "description": "meter clock"},
    "0.0.96.1.0.255": {"id": "serial_number", "quantity": "serial_number", "unit": "", "kind": "state"},
    "0.0.96.1.1.255": {"id": "serial_number_2", "quantity": "serial_number", "unit": "", "kind": "state"},
    "0.0.42.0.0.255": {"id": "logical_device_name", "quantity": "identity", "unit": "", "kind": "state"},
    "1.0.0.2.0.255": {"id": "firmware", "quantity": "firmware", "unit": "", "kind": "state"},
    "0.0.0.1.0.255": {"id": "billing_period_counter", "quantity": "counter", "unit": "", "kind": "counter"},
    "0.0.96.14.0.255": {"id": "current_tariff", "quantity": "status", "unit": "", "kind": "state"},
    "0.0.96.3.10.255": {"id": "disconnect_control", "quantity": "breaker_state", "unit": "", "kind": "state"},
}
PROFILE_NAMES: dict[str, str] = {
    "1.0.99.1.0.255": "load_profile",
    "1.0.99.2.0.255": "load_profile_2",
    "0.0.98.1.0.255": "billing",
    "0.0.98.2.0.255": "billing_daily",
}


def _code(obis: str) -> list[int]:
    return [int(x) for x in obis.split(".")]


def describe(obis: str, class_id: int) -> dict[str, Any]:
    """Point fields (id, quantity, unit, phase, kind, description) for a standard code."""
    if obis in _SPECIAL:
        return {"phase": "none", "description": "", **_SPECIAL[obis]}
    a, b, c, d, e, f = _code(obis)
    base = {"phase": "none", "kind": "gauge", "description": f"OBIS {obis}"}
    if a == 1 and c in _C and f == 255:
        what, phase = _C[c]
        suffix = "" if phase in ("total", "none") else "." + phase.lower()
        tariff = f".t{e}" if e else ""
        if d == 8 and what in _ENERGY:
            quantity, unit = _ENERGY[what]
            return {
                **base,
                "id": f"energy.{what}{tariff}{suffix}",
                "quantity": quantity,
                "unit": unit,
                "phase": phase,
                "kind": "counter",
                "description": f"{quantity.replace('_', ' ')}{f', tariff {e}' if e else ''}",
            }
        if d == 7 and what in _INSTANT:
            quantity, unit = _INSTANT[what]
            name = {
                "voltage": "voltage",
                "current": "current",
                "power_factor": "power_factor",
                "frequency": "frequency",
            }
            pid = name.get(what, f"power.{what}")
            return {**base, "id": f"{pid}{suffix}", "quantity": quantity, "unit": unit, "phase": phase}
        if d in (4, 5) and what in ("active_import", "current"):
            quantity, unit = ("active_power_demand", "W") if what == "active_import" else ("current_demand", "A")
            kind = "current" if d == 4 else "last"
            return {**base, "id": f"demand.{what}.{kind}{suffix}", "quantity": quantity, "unit": unit, "phase": phase}
        if d == 6 and what in ("active_import", "current"):
            quantity, unit = (
                ("active_power_demand_max", "W") if what == "active_import" else ("current_demand_max", "A")
            )
            return {
                **base,
                "id": f"demand.{what}.max{tariff}{suffix}",
                "quantity": quantity,
                "unit": unit,
                "phase": phase,
            }
    pid = "obis_" + "_".join(str(x) for x in (a, b, c, d, e, f))
    return {**base, "id": pid, "quantity": "other", "unit": ""}


def profile_name(obis: str) -> str:
    return PROFILE_NAMES.get(obis, "profile_" + obis.replace(".", "_"))
