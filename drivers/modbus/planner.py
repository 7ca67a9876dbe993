"""The read plan: the fewest requests that cover a device's points within its limits.

The rule, per (unit id, function):

1. A point is an interval of wire addresses ``[address - numbering, + span)`` (registers, or one
   bit for coils and discrete inputs). A point outside 0..65535, longer than the request limit, or
   touching an ``unreadable`` range is never read: it is rejected with the reason.
2. Points that share a register are read in the same request (so a register and its bit fields
   come from one instant): overlapping points form one *block*, as long as the block fits the
   limit (a pathological overlap chain longer than the limit is split).
3. Neighbouring blocks share a request when the gap between them is at most ``max_gap``
   registers (``16 * max_gap`` bits), the request spans at most ``max_registers`` (``max_bits``)
   and no unreadable address lies inside it.

Blocks are disjoint and sorted, and a request's feasibility is preserved by removing blocks from
either end (span shrinks, gaps and the unreadable test concern a subset). Under those two facts
the left-to-right greedy merge is optimal: by induction, after k requests greedy has covered at
least as many blocks as any other plan's first k requests (the rest of the other plan's k+1-th
request is itself feasible, so greedy's k+1-th reaches at least as far). A plan that groups
non-neighbouring blocks is never better: the blocks inside a group's span may join it without
breaking it, and trimming the overlaps leaves contiguous groups. The property tests compare the
count with a brute force over all partitions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drivers.modbus.codec import BIT_FUNCTIONS, FUNCTION_CODES
from gateway.interning import interned

if TYPE_CHECKING:
    from drivers.modbus.config import ModbusDevice, ModbusPoint

MAX_ADDRESS = 65535


@dataclass(frozen=True, slots=True)
class Span:
    """A point as an address interval: [start, end) in wire addresses, `key` identifies it."""

    start: int
    end: int
    key: int


@dataclass(frozen=True, slots=True)
class Group:
    """One request: [start, end) and the keys of the spans it serves."""

    start: int
    end: int
    keys: tuple[int, ...]

    @property
    def count(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class PlannedRead:
    unit: int
    function: str  # holding, input, coil, discrete
    start: int  # wire address
    count: int  # registers or bits
    items: tuple[tuple[int, int], ...]  # (point index in ctx.points, offset from start)

    @property
    def code(self) -> int:
        return FUNCTION_CODES[self.function]


@dataclass(frozen=True, slots=True)
class Plan:
    reads: tuple[PlannedRead, ...]
    rejected: tuple[tuple[int, str], ...]  # (point index, why it is never read)

    @property
    def units(self) -> tuple[int, ...]:
        return tuple(sorted({r.unit for r in self.reads}))


def _hits(lo: int, hi: int, unreadable: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """The first unreadable range (inclusive bounds) meeting addresses [lo, hi), if any."""
    for a, b in unreadable:
        if a < hi and b >= lo:
            return a, b
    return None


def merge_spans(
    spans: Iterable[Span], limit: int, max_gap: int, unreadable: Sequence[tuple[int, int]] = ()
) -> tuple[list[Group], list[tuple[int, str]]]:
    """Group spans into the fewest requests under the module's rule; also returns rejected spans.

    `unreadable` holds inclusive wire-address ranges.
    """
    rejected: list[tuple[int, str]] = []
    ok: list[Span] = []
    for s in spans:
        if s.start < 0:
            rejected.append((s.key, "address below the device's numbering base"))
        elif s.end > MAX_ADDRESS + 1:
            rejected.append((s.key, f"extends beyond address {MAX_ADDRESS}"))
        elif s.end - s.start > limit:
            rejected.append((s.key, f"spans {s.end - s.start}, more than the {limit} one request may read"))
        elif hit := _hits(s.start, s.end, unreadable):
            rejected.append((s.key, f"lies in the unreadable range {hit[0]}-{hit[1]} (wire addresses)"))
        else:
            ok.append(s)
    ok.sort(key=lambda s: (s.start, s.end, s.key))

    # Blocks: overlapping spans, read together.
    blocks: list[tuple[int, int, list[int]]] = []
    for s in ok:
        if blocks:
            bs, be, keys = blocks[-1]
            if s.start < be and max(be, s.end) - bs <= limit:
                blocks[-1] = (bs, max(be, s.end), [*keys, s.key])
                continue
        blocks.append((s.start, s.end, [s.key]))

    groups: list[Group] = []
    cur: tuple[int, int, list[int]] | None = None
    for bs, be, keys in blocks:
        if cur is not None:
            rs, re_, rkeys = cur
            end = max(re_, be)
            if bs - re_ <= max_gap and end - rs <= limit and (bs <= re_ or _hits(re_, bs, unreadable) is None):
                cur = (rs, end, rkeys + keys)
                continue
            groups.append(Group(rs, re_, tuple(rkeys)))
        cur = (bs, be, list(keys))
    if cur is not None:
        groups.append(Group(cur[0], cur[1], tuple(cur[2])))
    return groups, rejected


def plan_reads(points: Sequence[ModbusPoint], device: ModbusDevice) -> Plan:
    """The device's read plan: requests sorted by unit, function and address."""
    numbering = device.numbering
    unreadable = [(lo - numbering, hi - numbering) for lo, hi in device.unreadable]
    by_key: dict[tuple[int, str], list[Span]] = {}
    for i, p in enumerate(points):
        unit = p.unit_id if p.unit_id is not None else device.unit
        function = p.function or device.function
        start = p.address - numbering
        span = 1 if function in BIT_FUNCTIONS else p.words()
        by_key.setdefault((unit, function), []).append(Span(start, start + span, i))

    reads: list[PlannedRead] = []
    rejected: list[tuple[int, str]] = []
    for (unit, fn), spans in sorted(by_key.items()):
        bits = fn in BIT_FUNCTIONS
        limit = device.max_bits if bits else device.max_registers
        gap = 16 * device.max_gap if bits else device.max_gap
        groups, bad = merge_spans(spans, limit, gap, unreadable)
        rejected.extend(bad)
        starts = {s.key: s.start for s in spans}
        for g in groups:
            # Devices of one model plan the same items: one tuple for all of them (memory).
            items = interned(tuple(sorted((k, starts[k] - g.start) for k in g.keys)))
            reads.append(PlannedRead(unit, fn, g.start, g.count, items))
    return Plan(tuple(reads), tuple(sorted(rejected)))
