"""Pure SNMP logic: OIDs, decoded values, the read planner, GETBULK cursors, counters, events.

Nothing here does I/O or imports pysnmp: the client turns pysnmp objects into :class:`Value`
and everything after that is plain data, so it can be tested (and fuzzed) on its own.
"""

from __future__ import annotations

import ipaddress
import math
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

from gateway.driver import PointError, RawValue

Oid = tuple[int, ...]

# Syntax names, as pysnmp's classes call them.
INTEGER = "Integer"
GAUGE32 = "Gauge32"
COUNTER32 = "Counter32"
COUNTER64 = "Counter64"
TIMETICKS = "TimeTicks"
OCTETS = "OctetString"
IPADDRESS = "IpAddress"
OBJECT_ID = "ObjectIdentifier"
OPAQUE = "Opaque"
BITS = "Bits"
NULL = "Null"
NO_SUCH_OBJECT = "noSuchObject"
NO_SUCH_INSTANCE = "noSuchInstance"
END_OF_MIB_VIEW = "endOfMibView"
EXCEPTIONS = frozenset({NO_SUCH_OBJECT, NO_SUCH_INSTANCE, END_OF_MIB_VIEW})

# A point's `type` hint -> the syntaxes that satisfy it.
TYPE_SYNTAXES: dict[str, frozenset[str]] = {
    "integer": frozenset({INTEGER}),
    "gauge32": frozenset({GAUGE32}),
    "counter32": frozenset({COUNTER32}),
    "counter64": frozenset({COUNTER64}),
    "timeticks": frozenset({TIMETICKS}),
    "octets": frozenset({OCTETS, BITS}),
    "ipaddress": frozenset({IPADDRESS}),
    "oid": frozenset({OBJECT_ID}),
    "opaque": frozenset({OPAQUE}),
}
# The reverse, for discovery: the type hint to write for a syntax.
SYNTAX_TYPES: dict[str, str] = {
    INTEGER: "integer",
    GAUGE32: "gauge32",
    COUNTER32: "counter32",
    COUNTER64: "counter64",
    TIMETICKS: "timeticks",
    OCTETS: "octets",
    BITS: "octets",
    IPADDRESS: "ipaddress",
    OBJECT_ID: "oid",
    OPAQUE: "opaque",
}
COUNTER_BITS = {COUNTER32: 32, COUNTER64: 64}

_EXCEPTION_TEXT = {
    NO_SUCH_OBJECT: "no such object (the agent does not implement this OID)",
    NO_SUCH_INSTANCE: "no such instance (no value at this OID)",
    END_OF_MIB_VIEW: "end of MIB view",
}

# RFC 3416 error-status names, for messages.
ERROR_STATUS = (
    "noError",
    "tooBig",
    "noSuchName",
    "badValue",
    "readOnly",
    "genErr",
    "noAccess",
    "wrongType",
    "wrongLength",
    "wrongEncoding",
    "wrongValue",
    "noCreation",
    "inconsistentValue",
    "resourceUnavailable",
    "commitFailed",
    "undoFailed",
    "authorizationError",
    "notWritable",
    "inconsistentName",
)
TOO_BIG = 1
NO_SUCH_NAME = 2


def error_status_name(status: int) -> str:
    return ERROR_STATUS[status] if 0 <= status < len(ERROR_STATUS) else f"error {status}"


@dataclass(frozen=True, slots=True)
class Value:
    """One SNMP value: its syntax name and its payload (int, bytes, OID tuple or None)."""

    syntax: str
    raw: int | bytes | Oid | None = None

    @property
    def is_exception(self) -> bool:
        return self.syntax in EXCEPTIONS


# --- OIDs -----------------------------------------------------------------------------------


def parse_oid(text: str) -> Oid:
    """`1.3.6.1.2.1.1.3.0` or `.1.3.6...` -> a tuple of ints."""
    parts = text.strip().lstrip(".").split(".")
    try:
        oid = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"not a numeric OID: {text!r}") from None
    if len(oid) < 2 or oid[0] > 2 or any(a < 0 or a > 0xFFFFFFFF for a in oid):
        raise ValueError(f"not a numeric OID: {text!r}")
    return oid


def format_oid(oid: Sequence[int]) -> str:
    return ".".join(str(a) for a in oid)


def split_symbol(text: str) -> tuple[str, str, Oid]:
    """`MODULE-MIB::symbol.1.2` -> ("MODULE-MIB", "symbol", (1, 2))."""
    module, _, rest = text.partition("::")
    symbol, *index = rest.split(".")
    return module, symbol, tuple(int(i) for i in index)


def in_subtree(oid: Oid, root: Oid) -> bool:
    return oid[: len(root)] == root and len(oid) > len(root)


# --- values ---------------------------------------------------------------------------------


def _printable(text: str) -> bool:
    return all(c.isprintable() or c in "\t\r\n" for c in text)


def octets_text(data: bytes) -> str | None:
    """The bytes as text when they are printable UTF-8 (trailing NULs dropped), else None."""
    try:
        text = data.rstrip(b"\x00").decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if _printable(text) else None


def _opaque_number(data: bytes) -> float | None:
    # net-snmp wraps floats in Opaque (RFC draft "opaque float": 9f 78 04 <ieee754>).
    if len(data) == 7 and data[:3] == b"\x9f\x78\x04":
        return float(struct.unpack(">f", data[3:])[0])
    if len(data) == 11 and data[:3] == b"\x9f\x79\x08":
        return float(struct.unpack(">d", data[3:])[0])
    return None


def decode(value: Value, type_hint: str | None = None, fmt: str = "auto") -> RawValue:
    """A point's raw value from the agent's answer, or a PointError saying why there is none."""
    if value.is_exception:
        return PointError(_EXCEPTION_TEXT[value.syntax])
    if type_hint is not None and value.syntax not in TYPE_SYNTAXES.get(type_hint, frozenset()):
        return PointError(f"expected {type_hint} but the agent answered {value.syntax}")
    raw = value.raw
    syntax = value.syntax
    if syntax == NULL or raw is None:
        return PointError(f"the agent answered {syntax} without a value")
    if syntax in (INTEGER, GAUGE32, COUNTER32, COUNTER64) and isinstance(raw, int):
        return raw
    if syntax == TIMETICKS and isinstance(raw, int):
        return raw / 100.0 if fmt == "seconds" else raw
    if syntax == IPADDRESS and isinstance(raw, bytes):
        return ".".join(str(b) for b in raw) if len(raw) == 4 else raw.hex()
    if syntax == OBJECT_ID and isinstance(raw, tuple):
        return format_oid(raw)
    if syntax in (OCTETS, BITS, OPAQUE) and isinstance(raw, bytes):
        return _decode_octets(raw, syntax, fmt)
    return PointError(f"cannot decode {syntax} value")


_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")


def _decode_octets(raw: bytes, syntax: str, fmt: str) -> RawValue:
    if fmt == "hex":
        return raw.hex()
    if syntax == OPAQUE and fmt in ("auto", "number"):
        number = _opaque_number(raw)
        if number is not None:
            return number if math.isfinite(number) else PointError("the agent answered a non-finite float")
        if fmt == "number":
            return PointError("Opaque value is not a float")
        return raw.hex()
    if fmt == "number":
        text = octets_text(raw)
        if text is None:
            return PointError("expected a number as text, got binary data")
        stripped = text.strip()
        if _INTEGER_TEXT.fullmatch(stripped):
            return int(stripped)  # exact: through a float, 2**53 + 1 would read as 2**53
        try:
            number = float(stripped)
        except ValueError:
            return PointError(f"expected a number as text, got {stripped[:40]!r}")
        if not math.isfinite(number):
            return PointError("the agent answered a non-finite number")
        return number
    if fmt == "text":
        return raw.rstrip(b"\x00").decode("utf-8", errors="replace")
    text = octets_text(raw)
    return text if text is not None else raw.hex()


# A point's `type` -> the syntax a SET sends (the writable ones: see config.WRITABLE_TYPES).
SET_SYNTAX: dict[str, str] = {
    "integer": INTEGER,
    "gauge32": GAUGE32,
    "timeticks": TIMETICKS,
    "octets": OCTETS,
    "ipaddress": IPADDRESS,
    "oid": OBJECT_ID,
}
_SET_RANGE = {INTEGER: (-(2**31), 2**31 - 1), GAUGE32: (0, 2**32 - 1), TIMETICKS: (0, 2**32 - 1)}


def _whole(raw: Any, what: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(f"{what} takes a whole number, not {raw!r}")
    if isinstance(raw, float) and not raw.is_integer():
        raise ValueError(f"{what} takes a whole number, not {raw!r}")
    return int(raw)


def encode(raw: Any, type_name: str, fmt: str = "auto") -> Value:
    """The value a SET sends so that :func:`decode` reads `raw` back: its inverse, exact.

    Raises ValueError when `raw` has no form in the type (out of range, a fraction for an
    integer, text that is no IPv4 address or OID).
    """
    syntax = SET_SYNTAX.get(type_name)
    if syntax is None:
        raise ValueError(f"a {type_name} cannot be written")
    if syntax in _SET_RANGE:
        if syntax == TIMETICKS and fmt == "seconds":
            if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
                raise ValueError(f"timeticks in seconds takes a number, not {raw!r}")
            ticks = Fraction(Decimal(repr(raw))) * 100
            if ticks.denominator != 1:
                raise ValueError(f"{raw!r} s is not a whole number of hundredths")
            number = int(ticks)
        else:
            number = _whole(raw, type_name)
        lo, hi = _SET_RANGE[syntax]
        if not lo <= number <= hi:
            raise ValueError(f"{number} is outside the range of {type_name} ({lo}..{hi})")
        return Value(syntax, number)
    if syntax == IPADDRESS:
        try:
            return Value(syntax, ipaddress.IPv4Address(str(raw).strip()).packed)
        except ValueError:
            raise ValueError(f"not an IPv4 address: {raw!r}") from None
    if syntax == OBJECT_ID:
        if not isinstance(raw, str):
            raise ValueError(f"an OID is dotted text, not {raw!r}")
        return Value(syntax, parse_oid(raw))
    return Value(syntax, _encode_octets(raw, fmt))


def _encode_octets(raw: Any, fmt: str) -> bytes:
    if fmt == "number":
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            raise ValueError(f"a number is expected, not {raw!r}")
        # repr keeps a float's decimal point, so that decode gives a float back, an int an int
        return (str(raw) if isinstance(raw, int) else repr(raw)).encode()
    if not isinstance(raw, str):
        raise ValueError(f"octets take text, not {raw!r}")
    if fmt == "hex":
        text = raw.strip().removeprefix("0x").replace(" ", "").replace(":", "")
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise ValueError(f"not hex: {raw!r}") from None
    return raw.encode("utf-8")


def json_value(value: Value) -> Any:
    """A JSON-ready form of a value for events and scans (text, int, dotted OID; None for exceptions)."""
    raw = value.raw
    if value.is_exception or raw is None:
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, tuple):
        return format_oid(raw)
    if value.syntax == IPADDRESS and len(raw) == 4:
        return ".".join(str(b) for b in raw)
    if value.syntax == OPAQUE:
        number = _opaque_number(raw)
        if number is not None and math.isfinite(number):
            return number
    text = octets_text(raw)
    return text if text is not None else "0x" + raw.hex()


def display(value: Value) -> str:
    """One-line text of a value for `edgegw scan`."""
    if value.is_exception:
        return value.syntax
    if value.syntax == TIMETICKS and isinstance(value.raw, int):
        return f"{value.raw} ({_ticks_text(value.raw)})"
    if value.syntax in (OCTETS, BITS) and isinstance(value.raw, bytes):
        text = octets_text(value.raw)
        return repr(text) if text is not None else "0x" + value.raw.hex()
    return str(json_value(value))


def _ticks_text(ticks: int) -> str:
    seconds, hundredths = divmod(ticks, 100)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    return f"{days}d {hours:02d}:{minutes:02d}:{seconds:02d}.{hundredths:02d}"


# --- counters -------------------------------------------------------------------------------


# --- read planning --------------------------------------------------------------------------


@dataclass(slots=True)
class Run:
    """Consecutive instances under one parent (rows of a table column), read with GETBULK."""

    parent: Oid
    arcs: list[int]

    @property
    def start(self) -> Oid:
        """The OID a GETBULK starts after: just before the first wanted instance."""
        first = self.arcs[0]
        return (*self.parent, first - 1) if first > 0 else self.parent

    @property
    def wanted(self) -> list[Oid]:
        return [(*self.parent, a) for a in self.arcs]


@dataclass(slots=True)
class Plan:
    gets: list[Oid] = field(default_factory=list)  # sorted; packed into GETs when read
    runs: list[Run] = field(default_factory=list)


def plan_reads(oids: Iterable[Oid], *, bulk: bool, min_run: int = 3, max_gap: int = 2) -> Plan:
    """Split the OIDs to read into GETBULK runs (table columns) and single GETs.

    A run is at least `min_run` instances under the same parent whose last arcs are at most
    `max_gap` apart: reading the few rows in between costs less than a second request.
    """
    unique = sorted(set(oids))
    plan = Plan()
    if not bulk:
        plan.gets = unique
        return plan
    groups: dict[Oid, list[int]] = {}
    for oid in unique:
        groups.setdefault(oid[:-1], []).append(oid[-1])
    singles: list[Oid] = []
    for parent, arcs in groups.items():
        chunk = [arcs[0]]
        for arc in arcs[1:]:
            if arc - chunk[-1] <= max_gap:
                chunk.append(arc)
                continue
            _emit(plan, singles, parent, chunk, min_run)
            chunk = [arc]
        _emit(plan, singles, parent, chunk, min_run)
    plan.gets = sorted(singles)
    plan.runs.sort(key=lambda r: r.start)
    return plan


def _emit(plan: Plan, singles: list[Oid], parent: Oid, arcs: list[int], min_run: int) -> None:
    if len(arcs) >= min_run:
        plan.runs.append(Run(parent, list(arcs)))
    else:
        singles.extend((*parent, a) for a in arcs)


def pack(oids: Sequence[Oid], size: int) -> list[list[Oid]]:
    size = max(1, size)
    return [list(oids[i : i + size]) for i in range(0, len(oids), size)]


class RunCursor:
    """Follows one run through successive GETBULK answers.

    GETBULK answers with the next existing OIDs in lexicographic order, so a wanted instance the
    answer skipped over does not exist; an answer past the last wanted instance ends the run.
    """

    __slots__ = ("cursor", "done", "found", "missing", "pos", "run")

    def __init__(self, run: Run) -> None:
        self.run = run
        self.cursor: Oid = run.start
        self.pos = 0
        self.done = False
        self.found: dict[Oid, Value] = {}
        self.missing: dict[Oid, str] = {}

    @property
    def remaining(self) -> int:
        return len(self.run.arcs) - self.pos

    def absorb(self, oid: Oid, value: Value) -> bool:
        """Take one varbind of this run's column of the answer; False if it made no progress."""
        if self.done:
            return False
        if value.syntax == END_OF_MIB_VIEW:
            self.finish(_EXCEPTION_TEXT[NO_SUCH_INSTANCE])
            return True
        if oid <= self.cursor:
            self.finish("the agent answered a non-increasing OID")
            return False
        self.cursor = oid
        parent, arcs = self.run.parent, self.run.arcs
        while self.pos < len(arcs):
            want = (*parent, arcs[self.pos])
            if want < oid:
                self.missing[want] = _EXCEPTION_TEXT[NO_SUCH_INSTANCE]
                self.pos += 1
                continue
            if want == oid:
                self.found[want] = value
                self.pos += 1
            break
        if self.pos >= len(arcs):
            self.done = True
        return True

    def finish(self, reason: str) -> None:
        for arc in self.run.arcs[self.pos :]:
            self.missing[(*self.run.parent, arc)] = reason
        self.pos = len(self.run.arcs)
        self.done = True


def spread_bulk(cursors: Sequence[RunCursor], varbinds: Sequence[tuple[Oid, Value]]) -> set[int]:
    """Hand a GETBULK answer (R repeaters, rows of R varbinds) to its cursors; returns who progressed."""
    progressed: set[int] = set()
    width = len(cursors)
    if width == 0:
        return progressed
    for i, (oid, value) in enumerate(varbinds):
        j = i % width
        if cursors[j].absorb(oid, value):
            progressed.add(j)
    return progressed


# --- names ----------------------------------------------------------------------------------

SYS_UPTIME: Oid = (1, 3, 6, 1, 2, 1, 1, 3, 0)
SNMP_TRAP_OID: Oid = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)
SNMP_TRAP_ENTERPRISE: Oid = (1, 3, 6, 1, 6, 3, 1, 1, 4, 3, 0)
SNMP_TRAP_ADDRESS: Oid = (1, 3, 6, 1, 6, 3, 18, 1, 3, 0)
SNMP_TRAP_COMMUNITY: Oid = (1, 3, 6, 1, 6, 3, 18, 1, 4, 0)

# Names of the MIB-2 objects every agent has, so scans and events are readable without MIB files
# (pysnmp ships SNMPv2-MIB compiled but not IF-MIB).
_WELL_KNOWN: dict[Oid, str] = {
    (1, 3, 6, 1, 2, 1, 1, 1): "SNMPv2-MIB::sysDescr",
    (1, 3, 6, 1, 2, 1, 1, 2): "SNMPv2-MIB::sysObjectID",
    (1, 3, 6, 1, 2, 1, 1, 3): "SNMPv2-MIB::sysUpTime",
    (1, 3, 6, 1, 2, 1, 1, 4): "SNMPv2-MIB::sysContact",
    (1, 3, 6, 1, 2, 1, 1, 5): "SNMPv2-MIB::sysName",
    (1, 3, 6, 1, 2, 1, 1, 6): "SNMPv2-MIB::sysLocation",
    (1, 3, 6, 1, 2, 1, 1, 7): "SNMPv2-MIB::sysServices",
    (1, 3, 6, 1, 2, 1, 2, 1): "IF-MIB::ifNumber",
    (1, 3, 6, 1, 6, 3, 1, 1, 4, 1): "SNMPv2-MIB::snmpTrapOID",
    (1, 3, 6, 1, 6, 3, 1, 1, 4, 3): "SNMPv2-MIB::snmpTrapEnterprise",
    (1, 3, 6, 1, 6, 3, 18, 1, 3): "SNMP-COMMUNITY-MIB::snmpTrapAddress",
    (1, 3, 6, 1, 6, 3, 1, 1, 5, 1): "SNMPv2-MIB::coldStart",
    (1, 3, 6, 1, 6, 3, 1, 1, 5, 2): "SNMPv2-MIB::warmStart",
    (1, 3, 6, 1, 6, 3, 1, 1, 5, 3): "IF-MIB::linkDown",
    (1, 3, 6, 1, 6, 3, 1, 1, 5, 4): "IF-MIB::linkUp",
    (1, 3, 6, 1, 6, 3, 1, 1, 5, 5): "SNMPv2-MIB::authenticationFailure",
}
_IF_COLUMNS = [
    "ifIndex", "ifDescr", "ifType", "ifMtu", "ifSpeed", "ifPhysAddress", "ifAdminStatus", "ifOperStatus",
    "ifLastChange", "ifInOctets", "ifInUcastPkts", "ifInNUcastPkts", "ifInDiscards", "ifInErrors",
    "ifInUnknownProtos", "ifOutOctets", "ifOutUcastPkts", "ifOutNUcastPkts", "ifOutDiscards", "ifOutErrors",
    "ifOutQLen", "ifSpecific",
]  # fmt: skip
_IFX_COLUMNS = [
    "ifName", "ifInMulticastPkts", "ifInBroadcastPkts", "ifOutMulticastPkts", "ifOutBroadcastPkts",
    "ifHCInOctets", "ifHCInUcastPkts", "ifHCInMulticastPkts", "ifHCInBroadcastPkts", "ifHCOutOctets",
    "ifHCOutUcastPkts", "ifHCOutMulticastPkts", "ifHCOutBroadcastPkts", "ifLinkUpDownTrapEnable", "ifHighSpeed",
    "ifPromiscuousMode", "ifConnectorPresent", "ifAlias", "ifCounterDiscontinuityTime",
]  # fmt: skip
for _i, _name in enumerate(_IF_COLUMNS, start=1):
    _WELL_KNOWN[(1, 3, 6, 1, 2, 1, 2, 2, 1, _i)] = f"IF-MIB::{_name}"
for _i, _name in enumerate(_IFX_COLUMNS, start=1):
    _WELL_KNOWN[(1, 3, 6, 1, 2, 1, 31, 1, 1, 1, _i)] = f"IF-MIB::{_name}"
_WELL_KNOWN_LENGTHS = sorted({len(k) for k in _WELL_KNOWN}, reverse=True)


def well_known_name(oid: Oid) -> str | None:
    """`IF-MIB::ifInOctets.3` for the common MIB-2 objects, else None."""
    for n in _WELL_KNOWN_LENGTHS:
        if len(oid) >= n and (name := _WELL_KNOWN.get(oid[:n])) is not None:
            suffix = oid[n:]
            return name + ("." + format_oid(suffix) if suffix else "")
    return None


def generic_point(oid: Oid, value: Value, name: str | None) -> dict[str, Any]:
    """A point dict for a walked OID with no table template (discovery, `edgegw scan --profile`)."""
    point: dict[str, Any] = {"id": point_id(oid, name), "oid": format_oid(oid)}
    syntax = value.syntax
    if syntax == TIMETICKS:
        point.update(quantity="uptime", unit="s", scale=0.01)
    elif syntax in COUNTER_BITS:
        point.update(quantity="counter", kind="counter")
    elif syntax in (OCTETS, IPADDRESS, OBJECT_ID, BITS):
        point.update(quantity="identity", kind="state")
    else:
        point.update(quantity="other")
    if syntax in SYNTAX_TYPES:
        point["type"] = SYNTAX_TYPES[syntax]
    if name:
        point["description"] = name
    return point


def point_id(oid: Oid, name: str | None) -> str:
    """A point id for a discovered OID: the MIB name without its module, else the numeric OID."""
    if name:
        return name.partition("::")[2] or name
    return format_oid(oid)


# --- notifications --------------------------------------------------------------------------

Namer = Callable[[Oid], "str | None"]


def build_event(
    *,
    ts_ms: int,
    kind: str,
    version: str,
    source: tuple[str, int],
    varbinds: Sequence[tuple[Oid, Value]],
    namer: Namer = well_known_name,
    user: str | None = None,
) -> dict[str, Any]:
    """The event dict published for one trap or inform (see docs/snmp.md for the format)."""
    trap_oid: Oid | None = None
    uptime: float | None = None
    extra: dict[str, Any] = {}
    rest: list[dict[str, Any]] = []
    for oid, value in varbinds:
        if oid == SNMP_TRAP_OID and isinstance(value.raw, tuple):
            trap_oid = value.raw
        elif oid == SYS_UPTIME and value.syntax == TIMETICKS and isinstance(value.raw, int):
            uptime = value.raw / 100.0
        elif oid == SNMP_TRAP_COMMUNITY:
            continue  # the v1 community, added by the v1->v2 translation: a secret
        elif oid == SNMP_TRAP_ADDRESS and version == "1":
            extra["agent_address"] = json_value(value)
        elif oid == SNMP_TRAP_ENTERPRISE and version == "1":
            extra["enterprise"] = json_value(value)
        else:
            rest.append({"oid": format_oid(oid), "type": value.syntax, "value": json_value(value), "name": namer(oid)})
    event: dict[str, Any] = {
        "ts": ts_ms,
        "type": kind,
        "version": version,
        "trap_oid": format_oid(trap_oid) if trap_oid is not None else None,
        "trap_name": namer(trap_oid) if trap_oid is not None else None,
        "uptime": uptime,
        "source": f"{source[0]}:{source[1]}",
        "varbinds": rest,
    }
    if user is not None:
        event["user"] = user
    event.update(extra)
    return event
