"""Planner: the fewest reads under the rule, checked by examples and against a brute-force optimum."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from drivers.modbus.config import ModbusDevice, ModbusPoint
from drivers.modbus.planner import Span, merge_spans, plan_reads


def device(**kw: Any) -> ModbusDevice:
    return ModbusDevice.model_validate({"id": "d", "driver": "modbus", "tcp": {"host": "127.0.0.1"}, **kw})


def point(pid: str, address: int, type_: str = "uint16", **kw: Any) -> ModbusPoint:
    return ModbusPoint.model_validate({"id": pid, "quantity": "other", "address": address, "type": type_, **kw})


def spans(*pairs: tuple[int, int]) -> list[Span]:
    return [Span(a, b, i) for i, (a, b) in enumerate(pairs)]


# --- examples -----------------------------------------------------------------------------------


def test_neighbours_merge_within_gap_and_limit() -> None:
    groups, rejected = merge_spans(spans((0, 2), (2, 4), (10, 12), (40, 42)), limit=125, max_gap=8)
    assert [(g.start, g.end, g.keys) for g in groups] == [(0, 12, (0, 1, 2)), (40, 42, (3,))]
    assert rejected == []


def test_gap_zero_merges_only_adjacent() -> None:
    groups, _ = merge_spans(spans((0, 1), (1, 2), (3, 4)), limit=125, max_gap=0)
    assert [(g.start, g.end) for g in groups] == [(0, 2), (3, 4)]


def test_limit_splits() -> None:
    # 84 float32 = 168 registers: two reads of at most 125
    groups, _ = merge_spans([Span(2 * i, 2 * i + 2, i) for i in range(84)], limit=125, max_gap=16)
    assert [(g.start, g.count) for g in groups] == [(0, 124), (124, 44)]


def test_never_reads_through_an_unreadable_range() -> None:
    groups, rejected = merge_spans(spans((0, 2), (4, 6), (20, 21)), limit=125, max_gap=30, unreadable=[(3, 3)])
    assert [(g.start, g.end) for g in groups] == [(0, 2), (4, 21)]
    assert rejected == []


def test_points_in_or_across_unreadable_ranges_are_rejected() -> None:
    groups, rejected = merge_spans(spans((0, 2), (9, 11), (12, 13)), limit=125, max_gap=30, unreadable=[(10, 12)])
    assert [(g.start, g.end) for g in groups] == [(0, 2)]
    assert [k for k, _ in rejected] == [1, 2]
    assert "unreadable range 10-12" in rejected[0][1]


def test_overlapping_points_share_a_read_even_when_gap_is_zero() -> None:
    # a status register and its bit fields, and a uint32 with a bits field on its high word
    groups, _ = merge_spans(spans((5, 6), (5, 6), (5, 6), (8, 10), (9, 10)), limit=125, max_gap=0)
    assert [(g.start, g.end, sorted(g.keys)) for g in groups] == [(5, 6, [0, 1, 2]), (8, 10, [3, 4])]


def test_plan_reads_numbering_units_functions_and_offsets() -> None:
    dev = device(numbering=1, max_gap=4, unit=3)
    pts = [
        point("a", 1),  # wire 0
        point("b", 3, "float32"),  # wire 2-3
        point("c", 3, "uint16", unit_id=4),
        point("d", 100, "bool", function="coil"),
        point("e", 105, "bool", function="coil"),
        point("f", 2, "uint16", function="input"),
    ]
    plan = plan_reads(pts, dev)
    got = [(r.unit, r.function, r.code, r.start, r.count, r.items) for r in plan.reads]
    assert got == [
        (3, "coil", 1, 99, 6, ((3, 0), (4, 5))),
        (3, "holding", 3, 0, 4, ((0, 0), (1, 2))),
        (3, "input", 4, 1, 1, ((5, 0),)),
        (4, "holding", 3, 2, 1, ((2, 0),)),
    ]
    assert plan.units == (3, 4)
    assert plan.rejected == ()


def test_plan_reads_rejects_what_cannot_be_read() -> None:
    dev = device(numbering=1, max_registers=10, unreadable=[[50, 59]])
    pts = [
        point("zero", 0),  # below the 1-based numbering
        point("long", 10, "string", length=12),  # longer than max_registers
        point("end", 65535, "uint32"),
        point("blocked", 55),
        point("fine", 20),
    ]
    plan = plan_reads(pts, dev)
    reasons = dict(plan.rejected)
    assert set(reasons) == {0, 1, 3}
    assert "numbering" in reasons[0] and "more than the 10" in reasons[1] and "unreadable" in reasons[3]
    # 65535 in 1-based numbering is wire 65534, a uint32 there ends at 65535: fine
    assert [r.start for r in plan.reads] == [19, 65534]
    dev0 = device(numbering=0)
    plan0 = plan_reads([point("end", 65535, "uint32")], dev0)
    assert plan0.reads == () and "beyond address 65535" in plan0.rejected[0][1]


def test_bit_functions_use_max_bits_and_a_16x_gap() -> None:
    dev = device(max_bits=40, max_gap=1)
    pts = [point(f"c{i}", a, "bool", function="discrete") for i, a in enumerate([0, 16, 17, 50, 100])]
    plan = plan_reads(pts, dev)
    assert [(r.start, r.count) for r in plan.reads] == [(0, 18), (50, 1), (100, 1)]


# --- properties ---------------------------------------------------------------------------------


def _feasible(
    group: Sequence[tuple[int, int]], limit: int, max_gap: int, unreadable: Sequence[tuple[int, int]]
) -> bool:
    """The rule for one read, restated independently of the planner."""
    lo = min(a for a, _ in group)
    hi = max(b for _, b in group)
    if hi - lo > limit:
        return False
    if any(u_lo < hi and u_hi >= lo for u_lo, u_hi in unreadable):
        return False
    covered_to = lo
    for a, b in sorted(group):
        if a - covered_to > max_gap:
            return False
        covered_to = max(covered_to, b)
    return True


def _partitions(items: list[int]) -> Iterator[list[list[int]]]:
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        yield [[first], *part]
        for i in range(len(part)):
            yield [*part[:i], [first, *part[i]], *part[i + 1 :]]


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def brute_force(
    ivs: list[tuple[int, int]], limit: int, max_gap: int, unreadable: Sequence[tuple[int, int]]
) -> int | None:
    """The fewest groups over all partitions where overlapping points share a group."""
    best: int | None = None
    for part in _partitions(list(range(len(ivs)))):
        if best is not None and len(part) >= best:
            continue
        where = {k: gi for gi, g in enumerate(part) for k in g}
        if any(_overlap(ivs[i], ivs[j]) and where[i] != where[j] for i in range(len(ivs)) for j in range(i)):
            continue
        if all(_feasible([ivs[k] for k in g], limit, max_gap, unreadable) for g in part):
            best = len(part)
    return best


@st.composite
def problems(draw: st.DrawFn) -> tuple[list[tuple[int, int]], int, int, list[tuple[int, int]]]:
    n = draw(st.integers(1, 7))
    ivs = []
    for _ in range(n):
        start = draw(st.integers(0, 50))
        ivs.append((start, start + draw(st.sampled_from([1, 1, 1, 2, 2, 4, 6]))))
    limit = draw(st.integers(1, 24))
    max_gap = draw(st.integers(0, 8))
    unreadable = []
    for _ in range(draw(st.integers(0, 2))):
        lo = draw(st.integers(0, 56))
        unreadable.append((lo, lo + draw(st.integers(0, 3))))
    return ivs, limit, max_gap, unreadable


def _clusters_fit(ivs: list[tuple[int, int]], limit: int) -> bool:
    end, start = -1, 0
    for a, b in sorted(ivs):
        if a >= end:
            start = a
        end = max(end, b)
        if end - start > limit:
            return False
    return True


@settings(max_examples=300, deadline=None)
@given(problems())
def test_merge_is_valid_and_minimal(problem: tuple[list[tuple[int, int]], int, int, list[tuple[int, int]]]) -> None:
    ivs, limit, max_gap, unreadable = problem
    groups, rejected = merge_spans([Span(a, b, i) for i, (a, b) in enumerate(ivs)], limit, max_gap, unreadable)
    rejected_keys = {k for k, _ in rejected}
    accepted = [i for i in range(len(ivs)) if i not in rejected_keys]
    # rejected exactly when too long or touching an unreadable address
    for i, (a, b) in enumerate(ivs):
        bad = b - a > limit or any(lo < b and hi >= a for lo, hi in unreadable)
        assert (i in rejected_keys) == bad
    # every accepted point in exactly one read, inside it; reads within the rule
    served = [k for g in groups for k in g.keys]
    assert sorted(served) == accepted
    for g in groups:
        assert all(g.start <= ivs[k][0] and ivs[k][1] <= g.end for k in g.keys)
        assert g.start == min(ivs[k][0] for k in g.keys) and g.end == max(ivs[k][1] for k in g.keys)
        assert g.count <= limit
        assert not any(lo < g.end and hi >= g.start for lo, hi in unreadable)
        assert _feasible([ivs[k] for k in g.keys], limit, max_gap, unreadable)
    # minimal: compare with the brute force (overlap chains that fit the limit: the rule's domain)
    kept = [ivs[i] for i in accepted]
    assume(_clusters_fit(kept, limit))
    assert len(groups) == (brute_force(kept, limit, max_gap, unreadable) or 0)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 200),
            st.sampled_from(["uint16", "float32", "int64", "bool"]),
            st.sampled_from([None, 1, 2]),
            st.sampled_from([None, "holding", "coil"]),
        ),
        min_size=1,
        max_size=30,
    ),
    st.integers(1, 60),
    st.integers(0, 10),
    st.integers(0, 1),
)
def test_plan_reads_invariants(
    raw: list[tuple[int, str, int | None, str | None]], limit: int, gap: int, numbering: int
) -> None:
    dev = device(max_registers=limit, max_bits=limit * 8, max_gap=gap, numbering=numbering, unreadable=[[90, 99]])
    pts = [point(f"p{i}", a, t, unit_id=u, function=f) for i, (a, t, u, f) in enumerate(raw)]
    plan = plan_reads(pts, dev)
    served = sorted(i for r in plan.reads for i, _ in r.items)
    assert sorted(served + [i for i, _ in plan.rejected]) == list(range(len(pts)))
    for r in plan.reads:
        bits = r.function in ("coil", "discrete")
        assert 1 <= r.count <= (dev.max_bits if bits else dev.max_registers)
        assert not (r.start < 99 - numbering + 1 and r.start + r.count > 90 - numbering)
        for i, off in r.items:
            p = pts[i]
            assert (p.unit_id or dev.unit) == r.unit and (p.function or dev.function) == r.function
            assert off == p.address - numbering - r.start
            assert off >= 0 and off + (1 if bits else p.words()) <= r.count
