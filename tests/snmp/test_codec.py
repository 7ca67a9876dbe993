"""Pure parts: OIDs, value decoding, counters, the read planner, GETBULK cursors, events.

The read loop of the driver is also checked against an in-memory agent with GETNEXT semantics and
a response size limit, for random tables and random point sets.
"""

from __future__ import annotations

import asyncio
import bisect
import struct
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.snmp import codec
from drivers.snmp.client import Response
from drivers.snmp.codec import (
    COUNTER32,
    END_OF_MIB_VIEW,
    GAUGE32,
    INTEGER,
    NO_SUCH_INSTANCE,
    OCTETS,
    OPAQUE,
    TIMETICKS,
    Oid,
    Run,
    RunCursor,
    Value,
    decode,
    plan_reads,
    spread_bulk,
)
from drivers.snmp.config import SnmpPoint
from drivers.snmp.driver import SnmpDriver
from gateway.buses import Bus
from gateway.driver import DriverContext, PointError
from gateway.state import StateStore
from tests.snmp.util import device

oids = st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=12).map(lambda t: (1, 3, *t))


@given(oids)
def test_oid_text_round_trip(oid: tuple[int, ...]) -> None:
    assert codec.parse_oid(codec.format_oid(oid)) == oid
    assert codec.parse_oid("." + codec.format_oid(oid)) == oid


@pytest.mark.parametrize("text", ["", "1", "3.6.1", "1.3.x", "1..3", "1.3.-1"])
def test_bad_oids(text: str) -> None:
    with pytest.raises(ValueError):
        codec.parse_oid(text)


def test_decode() -> None:
    assert decode(Value(INTEGER, -5)) == -5
    assert decode(Value(GAUGE32, 7), "gauge32") == 7
    assert decode(Value(TIMETICKS, 12345)) == 12345
    assert decode(Value(TIMETICKS, 12345), fmt="seconds") == 123.45
    assert decode(Value(OCTETS, b"UPS 1\x00\x00")) == "UPS 1"
    assert decode(Value(OCTETS, b"\xff\x00\x01")) == "ff0001"
    assert decode(Value(OCTETS, b"\xff\x00\x01"), fmt="text") == "\ufffd\x00\x01"
    assert decode(Value(OCTETS, b"abc"), fmt="hex") == "616263"
    assert decode(Value(OCTETS, b" 230 "), fmt="number") == 230
    assert decode(Value(OCTETS, b"-1.5e2"), fmt="number") == -150.0
    assert decode(Value(codec.IPADDRESS, b"\x0a\x00\x00\x01")) == "10.0.0.1"
    assert decode(Value(codec.OBJECT_ID, (1, 3, 6))) == "1.3.6"
    # net-snmp's Opaque float (UCD-SNMP laLoadFloat)
    assert decode(Value(OPAQUE, b"\x9f\x78\x04" + struct.pack(">f", 0.5))) == 0.5
    for value, why in [
        (Value(NO_SUCH_INSTANCE), "no such instance"),
        (Value(codec.NO_SUCH_OBJECT), "no such object"),
        (Value(END_OF_MIB_VIEW), "end of MIB view"),
        (Value(OCTETS, b"n/a"), "expected a number"),
        (Value(OCTETS, b"nan"), "non-finite"),
        (Value(codec.NULL), "without a value"),
    ]:
        err = decode(value, fmt="number" if value.syntax == OCTETS else "auto")
        assert isinstance(err, PointError) and why in err.message, (value, err)
    err = decode(Value(COUNTER32, 5), "counter64")
    assert isinstance(err, PointError) and "expected counter64 but the agent answered Counter32" in err.message


@given(st.binary(max_size=64), st.sampled_from(["auto", "text", "hex", "number"]))
def test_decode_octets_never_raises(data: bytes, fmt: str) -> None:
    decode(Value(OCTETS, data), fmt=fmt)
    decode(Value(OPAQUE, data), fmt=fmt)
    codec.json_value(Value(OCTETS, data))
    codec.display(Value(OCTETS, data))


def test_planner_groups_table_columns() -> None:
    col: Oid = (1, 3, 6, 1, 4, 1, 3833, 1, 30, 1, 5, 1, 1)
    wanted: list[Oid] = [(*col, 2, n) for n in range(1, 43)]
    wanted += [(*col, 3, n) for n in (1, 2, 10, 40)]
    wanted += [(1, 3, 6, 1, 2, 1, 1, 3, 0), (*col, 2, 1)]
    plan = plan_reads(wanted, bulk=True)
    assert [(r.parent, r.arcs[0], len(r.arcs)) for r in plan.runs] == [((*col, 2), 1, 42)]
    assert plan.runs[0].start == (*col, 2, 0)
    assert plan.gets == sorted([(1, 3, 6, 1, 2, 1, 1, 3, 0), *[(*col, 3, n) for n in (1, 2, 10, 40)]])
    assert plan_reads(wanted, bulk=False).gets == sorted(set(wanted))
    assert Run((1, 3), [0, 1, 2]).start == (1, 3)


@given(st.lists(st.tuples(st.integers(1, 3), st.integers(0, 60)), min_size=1, max_size=80), st.booleans())
def test_planner_covers_every_oid_once(cells: list[tuple[int, int]], bulk: bool) -> None:
    wanted = [(1, 3, 6, 1, 9, col, row) for col, row in cells]
    plan = plan_reads(wanted, bulk=bulk)
    covered = list(plan.gets) + [o for run in plan.runs for o in run.wanted]
    assert sorted(covered) == sorted(set(wanted))
    for run in plan.runs:
        assert len(run.arcs) >= 3 and all(b - a <= 2 for a, b in zip(run.arcs, run.arcs[1:], strict=False))


def test_cursor_finds_rows_and_gaps() -> None:
    cursor = RunCursor(Run((1, 3, 9), [1, 2, 3, 4]))
    assert cursor.absorb((1, 3, 9, 1), Value(INTEGER, 10))
    assert cursor.absorb((1, 3, 9, 3), Value(INTEGER, 30))  # row 2 does not exist
    assert cursor.absorb((1, 3, 10, 1), Value(INTEGER, 0))  # the next column: row 4 does not exist
    assert cursor.done and cursor.found == {(1, 3, 9, 1): Value(INTEGER, 10), (1, 3, 9, 3): Value(INTEGER, 30)}
    assert set(cursor.missing) == {(1, 3, 9, 2), (1, 3, 9, 4)}
    looping = RunCursor(Run((1, 3, 9), [1, 2]))
    assert not looping.absorb((1, 3, 8), Value(INTEGER, 0))
    assert looping.done and "non-increasing" in looping.missing[(1, 3, 9, 1)]
    ended = RunCursor(Run((1, 3, 9), [1, 2]))
    spread_bulk([ended], [((1, 3, 9, 1), Value(INTEGER, 1)), ((1, 3, 9, 1), Value(END_OF_MIB_VIEW))])
    assert ended.done and (1, 3, 9, 1) in ended.found and (1, 3, 9, 2) in ended.missing


class MemoryAgent:
    """GET / GETBULK semantics over a sorted OID list, answers truncated to `limit` varbinds."""

    def __init__(self, table: dict[tuple[int, ...], int], limit: int) -> None:
        self.keys = sorted(table)
        self.table = table
        self.limit = limit
        self.requests = 0

    async def connect(self) -> tuple[str, int]:
        return ("127.0.0.1", 161)

    async def get(self, oids: list[tuple[int, ...]]) -> Response:
        self.requests += 1
        out = [(o, Value(GAUGE32, self.table[o]) if o in self.table else Value(NO_SUCH_INSTANCE)) for o in oids]
        return Response(0, 0, out)

    def _next(self, oid: tuple[int, ...]) -> tuple[tuple[int, ...], Value]:
        i = bisect.bisect_right(self.keys, oid)
        if i == len(self.keys):
            return oid, Value(END_OF_MIB_VIEW)
        key = self.keys[i]
        return key, Value(GAUGE32, self.table[key])

    async def bulk(self, oids: list[tuple[int, ...]], max_repetitions: int, non_repeaters: int = 0) -> Response:
        self.requests += 1
        out: list[tuple[tuple[int, ...], Value]] = []
        row = list(oids)
        for _ in range(max_repetitions):
            answers = [self._next(o) for o in row]
            out.extend(answers)
            row = [o for o, _ in answers]
        return Response(0, 0, out[: self.limit])


def _driver(pts: list[SnmpPoint], max_varbinds: int) -> SnmpDriver:
    dev = device(161, max_varbinds=max_varbinds, max_repetitions=10)
    ctx = DriverContext(dev, pts, structlog.get_logger("test"), Bus("test"), StateStore(None))
    d = SnmpDriver(ctx)
    d._replan()
    return d


@settings(max_examples=60, deadline=None)
@given(
    existing=st.sets(st.tuples(st.integers(1, 3), st.integers(1, 30)), max_size=60),
    wanted=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 32)), min_size=1, max_size=50, unique=True),
    limit=st.integers(1, 40),
    width=st.integers(1, 5),
)
def test_read_loop_against_a_memory_agent(
    existing: set[tuple[int, int]], wanted: list[tuple[int, int]], limit: int, width: int
) -> None:
    base = (1, 3, 6, 1, 4, 1, 9)
    table: dict[Oid, int] = {(*base, c, r): 1000 * c + r for c, r in existing}
    table[(1, 3, 6, 1, 4, 1, 10, 0)] = 1  # something after the table
    pts = [
        SnmpPoint.model_validate({"id": f"p{c}_{r}", "oid": codec.format_oid((*base, c, r)), "quantity": "other"})
        for c, r in wanted
    ]
    d = _driver(pts, width)
    agent = MemoryAgent(table, limit)

    async def connect() -> Any:
        return agent

    async def run() -> list[Any]:
        d._connect = connect  # type: ignore[method-assign]
        return (await d.read()).values

    values = asyncio.run(run())
    for (c, r), value in zip(wanted, values, strict=True):
        if (c, r) in existing:
            assert value == 1000 * c + r
        else:
            assert isinstance(value, PointError) and "no such instance" in value.message
    assert agent.requests <= len(wanted) + 12


def test_events() -> None:
    uptime = (codec.SYS_UPTIME, Value(TIMETICKS, 4200))
    trap = (codec.SNMP_TRAP_OID, Value(codec.OBJECT_ID, (1, 3, 6, 1, 6, 3, 1, 1, 5, 3)))
    index = ((1, 3, 6, 1, 2, 1, 2, 2, 1, 1, 2), Value(INTEGER, 2))
    event = codec.build_event(
        ts_ms=1, kind="inform", version="2c", source=("10.0.0.9", 1024), varbinds=[uptime, trap, index]
    )
    assert event == {
        "ts": 1,
        "type": "inform",
        "version": "2c",
        "trap_oid": "1.3.6.1.6.3.1.1.5.3",
        "trap_name": "IF-MIB::linkDown",
        "uptime": 42.0,
        "source": "10.0.0.9:1024",
        "varbinds": [{"oid": "1.3.6.1.2.1.2.2.1.1.2", "type": "Integer", "value": 2, "name": "IF-MIB::ifIndex.2"}],
    }
    v1 = codec.build_event(
        ts_ms=1,
        kind="trap",
        version="1",
        source=("10.0.0.9", 1024),
        varbinds=[
            uptime,
            trap,
            (codec.SNMP_TRAP_ADDRESS, Value(codec.IPADDRESS, b"\x0a\x00\x00\x09")),
            (codec.SNMP_TRAP_COMMUNITY, Value(OCTETS, b"secret")),
            (codec.SNMP_TRAP_ENTERPRISE, Value(codec.OBJECT_ID, (1, 3, 6, 1, 4, 1, 3833))),
        ],
        user=None,
    )
    assert v1["agent_address"] == "10.0.0.9" and v1["enterprise"] == "1.3.6.1.4.1.3833"
    assert v1["varbinds"] == [] and "secret" not in repr(v1)


def test_generic_points_validate() -> None:
    for oid, value in [
        ((1, 3, 6, 1, 2, 1, 1, 3, 0), Value(TIMETICKS, 1)),
        ((1, 3, 6, 1, 2, 1, 2, 2, 1, 10, 1), Value(COUNTER32, 1)),
        ((1, 3, 6, 1, 2, 1, 1, 1, 0), Value(OCTETS, b"x")),
        ((1, 3, 6, 1, 4, 1, 9, 9), Value(INTEGER, 1)),
    ]:
        SnmpPoint.model_validate(codec.generic_point(oid, value, codec.well_known_name(oid)))
