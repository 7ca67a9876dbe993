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


# Event logs (profile generic 0.0.99.98.n.255) by log number n, and the Data object each one's
# event-code column normally captures (0.0.96.11.n.255). The numbering follows the DLMS UA
# Blue Book / IDIS layout; 3 (M-Bus) is left out, the Sensemi meters have no M-Bus port.
EVENT_LOGS: dict[int, str] = {
    0: "standard",
    1: "fraud",
    2: "disconnector",
    4: "power_quality",
    5: "communication",
}

# Event codes whose meaning is common to the DLMS UA standard event set and IDIS / DSMR
# (codes where those specifications disagree are left out and published by number only).
EVENT_CODES: dict[int, str] = {
    1: "power_down",
    2: "power_up",
    3: "dst_changed",
    4: "clock_adjusted_old_time",
    5: "clock_adjusted_new_time",
    6: "clock_invalid",
    7: "replace_battery",
    8: "battery_voltage_low",
    9: "tariff_activated",
    10: "error_register_cleared",
    11: "alarm_register_cleared",
    12: "program_memory_error",
    13: "ram_error",
    14: "nv_memory_error",
    15: "watchdog_error",
    16: "measurement_system_error",
    17: "firmware_ready_for_activation",
    18: "firmware_activated",
    19: "passive_tariff_programmed",
    20: "successful_selfcheck_after_firmware_update",
    40: "terminal_cover_removed",
    41: "terminal_cover_closed",
    42: "strong_dc_field_detected",
    43: "strong_dc_field_gone",
    44: "meter_cover_removed",
    45: "meter_cover_closed",
    46: "authentication_failure",
    59: "ready_for_manual_reconnection",
    60: "manual_disconnection",
    61: "manual_connection",
    62: "remote_disconnection",
    63: "remote_connection",
    64: "local_disconnection",
    65: "limiter_threshold_exceeded",
    66: "limiter_threshold_ok",
    67: "limiter_threshold_changed",
    255: "event_log_cleared",
}


def event_log_obis(n: int) -> str:
    return f"0.0.99.98.{n}.255"


def event_code_obis(n: int) -> str:
    return f"0.0.96.11.{n}.255"


def event_log_number(obis: str) -> int | None:
    """n of an event log 0.0.99.98.n.255, or None when `obis` is not one."""
    parts = _code(obis)
    if len(parts) == 6 and parts[:4] == [0, 0, 99, 98] and parts[5] == 255:
        return parts[4]
    return None


def event_name(code: int) -> str | None:
    return EVENT_CODES.get(code)
