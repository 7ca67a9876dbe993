"""Pure BACnet helpers: object and property references, units, status flags, request packing, discovery.

Nothing here imports bacpypes3 or does I/O, so it is cheap to import from the config module and easy
to test exhaustively.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.points import QUANTITIES, Quality

# --- object and property references ----------------------------------------------------------

# The standard object types (ASHRAE 135 clause 21, BACnetObjectType), by their hyphenated names.
OBJECT_TYPES: dict[str, int] = {
    name: number
    for number, name in enumerate(
        [
            "analog-input", "analog-output", "analog-value", "binary-input", "binary-output",
            "binary-value", "calendar", "command", "device", "event-enrollment", "file", "group",
            "loop", "multi-state-input", "multi-state-output", "notification-class", "program",
            "schedule", "averaging", "multi-state-value", "trend-log", "life-safety-point",
            "life-safety-zone", "accumulator", "pulse-converter", "event-log", "global-group",
            "trend-log-multiple", "load-control", "structured-view", "access-door", "timer",
            "access-credential", "access-point", "access-rights", "access-user", "access-zone",
            "credential-data-input", "network-security", "bitstring-value", "characterstring-value",
            "date-pattern-value", "date-value", "datetime-pattern-value", "datetime-value",
            "integer-value", "large-analog-value", "octetstring-value", "positive-integer-value",
            "time-pattern-value", "time-value", "notification-forwarder", "alert-enrollment",
            "channel", "lighting-output", "binary-lighting-output", "network-port",
            "elevator-group", "escalator", "lift", "staging", "audit-log", "audit-reporter",
        ]
    )
}  # fmt: skip
OBJECT_TYPE_NAMES: dict[int, str] = {v: k for k, v in OBJECT_TYPES.items()}

ABBREVIATIONS: dict[str, str] = {
    "ai": "analog-input",
    "ao": "analog-output",
    "av": "analog-value",
    "bi": "binary-input",
    "bo": "binary-output",
    "bv": "binary-value",
    "mi": "multi-state-input",
    "msi": "multi-state-input",
    "mo": "multi-state-output",
    "mso": "multi-state-output",
    "mv": "multi-state-value",
    "msv": "multi-state-value",
    "acc": "accumulator",
    "pc": "pulse-converter",
    "iv": "integer-value",
    "lav": "large-analog-value",
    "piv": "positive-integer-value",
    "csv": "characterstring-value",
    "dev": "device",
    "np": "network-port",
}
SHORT_NAMES: dict[str, str] = {v: k for k, v in reversed(ABBREVIATIONS.items())}

ANALOG_TYPES = frozenset(
    {"analog-input", "analog-output", "analog-value", "large-analog-value", "integer-value", "positive-integer-value"}
)
BINARY_TYPES = frozenset({"binary-input", "binary-output", "binary-value"})
MULTISTATE_TYPES = frozenset({"multi-state-input", "multi-state-output", "multi-state-value"})
COUNTER_TYPES = frozenset({"accumulator", "pulse-converter"})
# Object types whose present value is a measurement worth a point when discovering.
MEASUREMENT_TYPES = ANALOG_TYPES | BINARY_TYPES | MULTISTATE_TYPES | COUNTER_TYPES | {"characterstring-value"}
# Types whose objects carry a `units` property.
UNITS_TYPES = ANALOG_TYPES | COUNTER_TYPES | {"loop", "averaging"}

# Present values that are always commandable (a priority array is required of these objects) ...
OUTPUT_TYPES = frozenset(
    {"analog-output", "binary-output", "multi-state-output", "lighting-output", "binary-lighting-output", "access-door"}
)
# ... and those that are when the object has the (optional) priority array: the value objects.
VALUE_TYPES = frozenset(
    {
        "analog-value", "binary-value", "multi-state-value", "integer-value", "large-analog-value",
        "positive-integer-value", "characterstring-value", "bitstring-value", "octetstring-value", "date-value",
        "time-value", "datetime-value", "date-pattern-value", "time-pattern-value", "datetime-pattern-value",
    }
)  # fmt: skip

MAX_INSTANCE = 4194303  # 22 bits; 4194303 itself is the "this device" wildcard for device objects

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_OBJECT = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_-]*|\d+)\s*[,:]\s*(\d+)\s*$")
_OBJECT_SHORT = re.compile(r"^\s*([A-Za-z]{2,3})\s*(\d+)\s*$")
_PROPERTY = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_-]*|\d+)\s*(?:\[\s*(\d+)\s*\])?\s*$")


def _hyphenate(name: str) -> str:
    return _CAMEL.sub("-", name).lower().replace("_", "-")


def _object_type(text: str) -> str | int:
    if text.isdigit():
        number = int(text)
        if number > 1023:
            raise ValueError(f"object type {number} out of range (0-1023)")
        return OBJECT_TYPE_NAMES.get(number, number)
    name = _hyphenate(text)
    if name in OBJECT_TYPES:
        return name
    if name in ABBREVIATIONS:
        return ABBREVIATIONS[name]
    raise ValueError(f"unknown object type {text!r}; use e.g. analog-value, binary-input or a number")


def canonical_object(text: str) -> str:
    """`analog-value,3`, `analogValue:3`, `AV,3`, `av3`, `2,3` -> `analog-value,3`; a proprietary type stays a number."""
    m = _OBJECT.match(text) or _OBJECT_SHORT.match(text)
    if not m:
        raise ValueError(f"not an object reference: {text!r} (use type,instance such as analog-value,3)")
    otype = _object_type(m.group(1))
    instance = int(m.group(2))
    if instance > MAX_INSTANCE:
        raise ValueError(f"object instance {instance} out of range (0-{MAX_INSTANCE})")
    return f"{otype},{instance}"


def split_object(text: str) -> tuple[str | int, int]:
    """A canonical object reference -> (type name or proprietary number, instance)."""
    otype, _, instance = canonical_object(text).partition(",")
    return (int(otype) if otype.isdigit() else otype), int(instance)


def canonical_property(text: str) -> str:
    """`presentValue`, `present_value`, `85`, `priority-array[8]` -> hyphenated names, index kept."""
    m = _PROPERTY.match(text)
    if not m:
        raise ValueError(f"not a property reference: {text!r} (use e.g. present-value or priority-array[8])")
    name = m.group(1) if m.group(1).isdigit() else _hyphenate(m.group(1))
    if name.isdigit() and int(name) > 4194303:
        raise ValueError(f"property identifier {name} out of range")
    return f"{name}[{int(m.group(2))}]" if m.group(2) is not None else name


def split_property(text: str) -> tuple[str | int, int | None]:
    """A canonical property reference -> (name or number, array index or None)."""
    m = _PROPERTY.match(canonical_property(text))
    assert m is not None
    name = m.group(1)
    index = int(m.group(2)) if m.group(2) is not None else None
    return (int(name) if name.isdigit() else name), index


def object_type_of(obj: str) -> str:
    return obj.partition(",")[0]


def commandable(obj: str, prop: str) -> bool | None:
    """Whether a write to this property goes through a priority array: True, False, or None (maybe).

    Only present values are commanded (clause 19.2). An output's always is; a value object's is
    when it has a priority array, which the device says when it is read; a proprietary type may
    be either. Inputs, accumulators, the device object and other properties never are.
    """
    if prop != "present-value":
        return False
    otype = object_type_of(obj)
    if otype in OUTPUT_TYPES:
        return True
    if otype in VALUE_TYPES or otype.isdigit():
        return None
    return False


# --- units ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnitMap:
    """How a BACnet engineering unit maps onto the point model: engineering = raw * scale + offset."""

    unit: str
    scale: float = 1.0
    offset: float = 0.0


BACNET_UNITS: dict[str, UnitMap] = {
    # power
    "milliwatts": UnitMap("W", 0.001),
    "watts": UnitMap("W"),
    "kilowatts": UnitMap("W", 1e3),
    "megawatts": UnitMap("W", 1e6),
    "volt-amperes": UnitMap("VA"),
    "kilovolt-amperes": UnitMap("VA", 1e3),
    "megavolt-amperes": UnitMap("VA", 1e6),
    "volt-amperes-reactive": UnitMap("var"),
    "kilovolt-amperes-reactive": UnitMap("var", 1e3),
    "megavolt-amperes-reactive": UnitMap("var", 1e6),
    # energy
    "watt-hours": UnitMap("Wh"),
    "kilowatt-hours": UnitMap("Wh", 1e3),
    "megawatt-hours": UnitMap("Wh", 1e6),
    "watt-hours-reactive": UnitMap("varh"),
    "kilowatt-hours-reactive": UnitMap("varh", 1e3),
    "megawatt-hours-reactive": UnitMap("varh", 1e6),
    "volt-ampere-hours": UnitMap("VAh"),
    "kilovolt-ampere-hours": UnitMap("VAh", 1e3),
    "megavolt-ampere-hours": UnitMap("VAh", 1e6),
    "volt-ampere-hours-reactive": UnitMap("varh"),
    "kilovolt-ampere-hours-reactive": UnitMap("varh", 1e3),
    "megavolt-ampere-hours-reactive": UnitMap("varh", 1e6),
    "joules": UnitMap("Wh", 1 / 3600),
    "kilojoules": UnitMap("Wh", 1e3 / 3600),
    "megajoules": UnitMap("Wh", 1e6 / 3600),
    # electrical
    "millivolts": UnitMap("V", 0.001),
    "volts": UnitMap("V"),
    "kilovolts": UnitMap("V", 1e3),
    "megavolts": UnitMap("V", 1e6),
    "milliamperes": UnitMap("A", 0.001),
    "amperes": UnitMap("A"),
    "milliohms": UnitMap("ohm", 0.001),
    "ohms": UnitMap("ohm"),
    "kilohms": UnitMap("ohm", 1e3),
    "megohms": UnitMap("ohm", 1e6),
    "hertz": UnitMap("Hz"),
    "kilohertz": UnitMap("Hz", 1e3),
    "megahertz": UnitMap("Hz", 1e6),
    "power-factor": UnitMap(""),
    # other
    "percent": UnitMap("%"),
    "percent-relative-humidity": UnitMap("%RH"),
    "degrees-celsius": UnitMap("degC"),
    "degrees-kelvin": UnitMap("degC", 1.0, -273.15),
    "degrees-fahrenheit": UnitMap("degC", 5 / 9, -32 * 5 / 9),
    "milliseconds": UnitMap("ms"),
    "hundredths-seconds": UnitMap("s", 0.01),
    "seconds": UnitMap("s"),
    "minutes": UnitMap("s", 60.0),
    "hours": UnitMap("s", 3600.0),
    "days": UnitMap("s", 86400.0),
    "no-units": UnitMap(""),
}

# The preferred BACnet unit for a point unit and scale, for the device twin.
_REVERSE_UNITS: dict[tuple[str, float], str] = {}
for _name, _map in BACNET_UNITS.items():
    if _map.offset == 0.0:
        _REVERSE_UNITS.setdefault((_map.unit, _map.scale), _name)
_REVERSE_UNITS[("", 1.0)] = "no-units"


def map_units(bacnet_units: str | None) -> UnitMap | None:
    """The point-model unit of a BACnet `units` value (its hyphenated name); None when unknown."""
    if not bacnet_units:
        return None
    return BACNET_UNITS.get(_hyphenate(bacnet_units))


def bacnet_units_for(unit: str, scale: float = 1.0) -> str | None:
    """The BACnet engineering unit that, with `scale`, gives the point-model `unit` (twin side)."""
    for (u, s), name in _REVERSE_UNITS.items():
        if u == unit and math.isclose(s, scale, rel_tol=1e-9):
            return name
    return None


# --- status flags --------------------------------------------------------------------------------


def status_quality(flags: Sequence[int] | None) -> Quality | None:
    """Quality from BACnet status-flags [in-alarm, fault, overridden, out-of-service].

    In-alarm alone says the value is real (and alarming): good. Fault: bad. Overridden or
    out-of-service: the value is not the process value: uncertain. None means good.
    """
    if not flags or len(flags) < 4:
        return None
    if flags[1]:
        return Quality.BAD
    if flags[2] or flags[3]:
        return Quality.UNCERTAIN
    return None


def status_text(flags: Sequence[int]) -> str:
    names = ("in-alarm", "fault", "overridden", "out-of-service")
    return ",".join(n for n, bit in zip(names, flags, strict=False) if bit) or "normal"


# --- ReadPropertyMultiple packing -------------------------------------------------------------

# Encoded sizes in bytes, used to keep each request and its answer within the device's max APDU.
_OBJECT_OVERHEAD = 7  # object identifier (5) + opening/closing tags of the property list (2)
_PROPERTY_REQUEST = 2  # context-tagged property identifier (up to 4 for proprietary numbers)
_PROPERTY_RESULT = 4  # property identifier (2) + opening/closing tags of the value or error (2)
_INDEX = 3
_ACK_HEADER = 3  # complex-ack PCI
_REQUEST_HEADER = 4  # confirmed-request PCI
_VALUE_SIZES: dict[str, int] = {
    "present-value": 5,  # REAL, enumerated, unsigned, signed: at most 5 bytes
    "status-flags": 3,
    "units": 3,
    "reliability": 3,
    "out-of-service": 1,
    "event-state": 2,
    "object-identifier": 5,
    "object-type": 2,
    "max-apdu-length-accepted": 3,
    "segmentation-supported": 2,
    "vendor-identifier": 3,
    "cov-increment": 5,
}
_TEXT_SIZE = 68  # object-name, description, ...: a short string; devices may return up to 255
_UNKNOWN_SIZE = 24


def value_size(prop: str, object_type: str = "") -> int:
    name = prop.partition("[")[0]
    if name == "present-value" and object_type == "large-analog-value":
        return 10  # Double
    if name == "present-value" and object_type in ("characterstring-value", "octetstring-value"):
        return _TEXT_SIZE
    if name in _VALUE_SIZES:
        return _VALUE_SIZES[name]
    if name in ("object-name", "description", "vendor-name", "model-name", "firmware-revision", "location"):
        return _TEXT_SIZE
    return _UNKNOWN_SIZE


def _property_sizes(prop: str, object_type: str) -> tuple[int, int]:
    extra = _INDEX if "[" in prop else 0
    request = _PROPERTY_REQUEST + extra + (2 if prop.partition("[")[0].isdigit() else 0)
    result = _PROPERTY_RESULT + extra + value_size(prop, object_type)
    return request, result


def plan_reads(items: Sequence[tuple[str, Sequence[str]]], max_apdu: int, max_objects: int = 200) -> list[list[int]]:
    """Pack (object, [properties]) specs into ReadPropertyMultiple requests; returns lists of spec indices.

    Both the request and the expected answer must fit `max_apdu` (the smaller of the device's and
    ours, or the segmented limit when both sides segment). A spec too large on its own still gets
    a request of its own: the device answers it or says why not.
    """
    request_budget = max_apdu - _REQUEST_HEADER
    answer_budget = max_apdu - _ACK_HEADER
    chunks: list[list[int]] = []
    current: list[int] = []
    req = ans = 0
    for i, (obj, props) in enumerate(items):
        sizes = [_property_sizes(p, object_type_of(obj)) for p in props]
        r = _OBJECT_OVERHEAD + sum(s[0] for s in sizes)
        a = _OBJECT_OVERHEAD + sum(s[1] for s in sizes)
        if current and (req + r > request_budget or ans + a > answer_budget or len(current) >= max_objects):
            chunks.append(current)
            current, req, ans = [], 0, 0
        current.append(i)
        req += r
        ans += a
    if current:
        chunks.append(current)
    return chunks


# --- discovery -----------------------------------------------------------------------------------


@dataclass(slots=True)
class ObjectInfo:
    """What discovery learned about one object of the device."""

    object: str
    name: str | None = None
    units: str | None = None
    description: str | None = None


_PHASE_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b(?:l1-?l2|a-?b|ph(?:ase)?\s*a-?b|vab|uab)\b"), "L1-L2"),
    (re.compile(r"\b(?:l2-?l3|b-?c|ph(?:ase)?\s*b-?c|vbc|ubc)\b"), "L2-L3"),
    (re.compile(r"\b(?:l3-?l1|c-?a|a-?c|ph(?:ase)?\s*c-?a|vca|uca|vac)\b"), "L3-L1"),
    (re.compile(r"\b(?:l1-?n|a-?n|van|v1n)\b"), "L1-N"),
    (re.compile(r"\b(?:l2-?n|b-?n|vbn|v2n)\b"), "L2-N"),
    (re.compile(r"\b(?:l3-?n|c-?n|vcn|v3n)\b"), "L3-N"),
    (re.compile(r"\bneutral\b"), "N"),
    (re.compile(r"\b(?:l1|ph(?:ase)?\s*(?:a|1))\b"), "L1"),
    (re.compile(r"\b(?:l2|ph(?:ase)?\s*(?:b|2))\b"), "L2"),
    (re.compile(r"\b(?:l3|ph(?:ase)?\s*(?:c|3))\b"), "L3"),
    (re.compile(r"\b(?:total|3-?ph(?:ase)?|three[- ]phase|sum)\b"), "total"),
]
_CIRCUIT = re.compile(r"\b(?:ch|chan|channel|circuit|ckt|branch|breaker|cb|meter)\s*[#_.-]?\s*(\d+)\b")


def _words(*texts: str | None) -> str:
    return " ".join(t for t in texts if t).lower().replace("_", " ")


def guess_phase(text: str) -> str:
    for pattern, phase in _PHASE_PATTERNS:
        if pattern.search(text):
            return phase
    return "none"


def guess_circuit(text: str) -> str | None:
    m = _CIRCUIT.search(text)
    return str(int(m.group(1))) if m else None


def _has(text: str, *words: str) -> bool:
    return any(re.search(rf"\b{w}", text) for w in words)


# A unit that names its quantity whatever the object's name says.
_UNIT_QUANTITY: dict[str, tuple[str, str]] = {
    "var": ("reactive_power", "gauge"),
    "VA": ("apparent_power", "gauge"),
    "V": ("voltage", "gauge"),
    "Hz": ("frequency", "gauge"),
    "degC": ("temperature", "gauge"),
    "%RH": ("humidity", "gauge"),
    "ohm": ("internal_resistance", "gauge"),
}
_ENERGY_UNITS = {"Wh": "active_energy", "varh": "reactive_energy", "VAh": "apparent_energy"}


def guess_quantity(object_type: str, unit: str, text: str, bacnet_units: str | None = None) -> tuple[str, str]:
    """(quantity, kind) from the point-model unit and the object's name and description."""
    if object_type in BINARY_TYPES:
        return _binary_quantity(text), "state"
    if object_type in MULTISTATE_TYPES:
        return ("alarm" if _has(text, "alarm") else "status"), "state"
    counter_kind = "counter" if object_type in COUNTER_TYPES or unit in _ENERGY_UNITS else "gauge"
    if unit in _UNIT_QUANTITY:
        return _UNIT_QUANTITY[unit]
    if unit in _ENERGY_UNITS:
        export = _has(text, "export", "received", "reverse", "negative", "generated")
        return f"{_ENERGY_UNITS[unit]}_{'export' if export else 'import'}", "counter"
    if unit in ("W", "A"):
        return _power_or_current(unit, text), "gauge"
    if unit == "%":
        return _percent_quantity(text), "gauge"
    if unit in ("s", "ms"):
        return ("uptime" if _has(text, "uptime", "up time", "run time", "runtime") else "other"), counter_kind
    if unit == "":
        if bacnet_units == "power-factor" or _has(text, "pf", "power factor", "powerfactor", "cos"):
            return "power_factor", "gauge"
        if object_type in COUNTER_TYPES:
            return "counter", "counter"
    return "other", counter_kind


def _binary_quantity(text: str) -> str:
    if _has(text, "trip"):
        return "breaker_trip"
    if _has(text, "breaker", "cb"):
        return "breaker_state"
    if _has(text, "alarm", "fault", "fail"):
        return "alarm"
    return "status"


def _power_or_current(unit: str, text: str) -> str:
    """W or A: demand, maximum (peak) demand, maximum, or the present value."""
    if unit == "A" and _has(text, "leak", "residual", "earth", "ground"):
        return "leakage_current"
    base = "active_power" if unit == "W" else "current"
    peak = _has(text, "max", "peak", "highest")
    if _has(text, "demand", "dmd"):
        return f"{base}_demand_max" if peak else f"{base}_demand"
    return f"{base}_max" if peak else base


def _percent_quantity(text: str) -> str:
    volt = _has(text, "volt", "v ", "u ")
    curr = _has(text, "curr", "amp", "i ")
    for words, what in (
        (("thd", "distortion", "harmonic"), "thd"),
        (("unbalance", "imbalance", "asymmetr"), "unbalance"),
    ):
        if _has(text, *words) and (volt or curr):
            return f"{what}_{'voltage' if volt else 'current'}"
    if _has(text, "soc", "state of charge", "charge"):
        return "state_of_charge"
    if _has(text, "soh", "health"):
        return "state_of_health"
    if _has(text, "humid"):
        return "humidity"
    return "other"


# Quantities that belong to a phase (or a pair, or the total); a frequency "from phase A" does not.
_PHASED = frozenset(
    q
    for q in QUANTITIES
    if q.startswith(("voltage", "current", "active_", "reactive_", "apparent_", "power_factor", "thd_", "leakage"))
)

_ID_CLEAN = re.compile(r"[^a-z0-9_.-]+")


def point_id(name: str | None, obj: str, used: set[str]) -> str:
    """A stable point id from the object's name (lower case, safe characters), unique in `used`."""
    otype, _, instance = obj.partition(",")
    fallback = f"{SHORT_NAMES.get(otype, 'obj' + otype if otype.isdigit() else otype)}{instance}"
    base = _ID_CLEAN.sub("_", (name or "").strip().lower()).strip("_.-")[:120] or fallback
    if not re.match(r"^[a-z0-9_]", base):
        base = fallback
    candidate = base
    if candidate in used:
        candidate = f"{base}_{fallback}"
    n = 2
    while candidate in used:
        candidate = f"{base}_{fallback}_{n}"
        n += 1
    used.add(candidate)
    return candidate


def discovered_points(objects: Iterable[ObjectInfo]) -> list[dict[str, Any]]:
    """Point dicts (BacnetPoint form, ready for a profile) for the measurement objects of a device."""
    points: list[dict[str, Any]] = []
    used: set[str] = set()
    for info in objects:
        otype = object_type_of(info.object)
        if otype not in MEASUREMENT_TYPES:
            continue
        text = _words(info.name, info.description)
        mapped = map_units(info.units) if otype in UNITS_TYPES else None
        unit = mapped.unit if mapped else ""
        quantity, kind = guess_quantity(otype, unit, text, _hyphenate(info.units) if info.units else None)
        point: dict[str, Any] = {"id": point_id(info.name, info.object, used), "object": info.object}
        point["quantity"] = quantity
        point["unit"] = unit
        if mapped and mapped.scale != 1.0:
            point["scale"] = mapped.scale
        if mapped and mapped.offset != 0.0:
            point["offset"] = round(mapped.offset, 6)
        if quantity in _PHASED:
            phase = guess_phase(text)
            if phase != "none":
                point["phase"] = phase
        circuit = guess_circuit(text)
        if circuit is not None:
            point["circuit"] = circuit
        if kind != "gauge":
            point["kind"] = kind
        description = (info.description or info.name or "").strip()
        if info.units and otype in UNITS_TYPES and mapped is None:
            description = f"{description} [BACnet units: {info.units}]".strip()
        if description:
            point["description"] = description[:200]
        points.append(point)
    return points
