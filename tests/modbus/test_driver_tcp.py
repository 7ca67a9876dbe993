"""The driver against the twin over real TCP (and RTU over TCP) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.modbus.config import ModbusPoint
from drivers.modbus.twin import ModbusTwin
from gateway.buses import Bus, BusConfig
from gateway.driver import DeviceError, DeviceTimeout, PointError
from tests.modbus.util import METER, assert_values, bus_for, device, driver, link_of, points, wait_until

pytestmark = pytest.mark.asyncio

TIMEOUT = 0.2


@pytest.fixture
async def twin() -> AsyncIterator[ModbusTwin]:
    async with ModbusTwin(points(), units=[1, 2], update_interval=0) as t:
        yield t


async def test_reads_every_type_and_order(twin: ModbusTwin) -> None:
    pts = points()
    d = await driver(device(twin.port), pts)
    raw = await d.read()
    assert_values(twin, 1, pts, raw.values)
    by_id = dict(zip((p.id for p in pts), raw.values, strict=True))
    assert by_id["status"] == 5 and by_id["status.b0"] is True and by_id["status.b1"] is False
    assert by_id["name"] == "BM-SM" and by_id["breaker"] is True
    # holding 0-31 in one read, 200 apart, the coil on its own
    assert [(r.function, r.start, r.count) for r in d.plan.reads] == [
        ("coil", 3, 1),
        ("holding", 0, 34),
        ("holding", 200, 2),
    ]
    twin.set_value("v1", 241.5, 1)
    twin.set_value("e", 123456000, 1)
    twin.set_value("status.b1", True, 1)
    raw = await d.read()
    assert raw.values[0] == 241.5 and raw.values[4] == 123456 and raw.values[7] is True and raw.values[5] == 7
    await d.ctx.bus.close()


async def test_two_units_share_one_connection(twin: ModbusTwin) -> None:
    pts = points()
    dev1 = device(twin.port, id="m1", unit=1)
    dev2 = device(twin.port, id="m2", unit=2)
    assert dev1.implicit_bus() == dev2.implicit_bus()
    bus = bus_for(dev1)
    d1, d2 = await driver(dev1, pts, bus), await driver(dev2, pts, bus)
    twin.set_value("i1", 42.5, 2)
    r1, r2 = await asyncio.gather(d1.read(), d2.read())
    assert_values(twin, 1, pts, r1.values)
    assert_values(twin, 2, pts, r2.values)
    assert r2.values[2] == 42.5 and r1.values[2] != 42.5
    assert link_of(d1) is link_of(d2)
    assert twin.connections == 1 and bus.transactions == 6
    await bus.close()
    await wait_until(lambda: twin.connections == 0, what="connection closed by bus.close()")


async def test_exception_reply_marks_only_that_request(twin: ModbusTwin) -> None:
    pts = points()
    twin.inject_exception(200, 201, code=2, unit=1)
    d = await driver(device(twin.port), pts)
    raw = await d.read()
    far = pts.index(next(p for p in pts if p.id == "far"))
    err = raw.values[far]
    assert isinstance(err, PointError) and "illegal data address" in err.message and "holding 200+2" in err.message
    good = [p for i, p in enumerate(pts) if i != far]
    assert_values(twin, 1, good, [v for i, v in enumerate(raw.values) if i != far])
    await d.ctx.bus.close()


async def test_dead_unit_costs_the_others_at_most_one_timeout(twin: ModbusTwin) -> None:
    pts = points()
    dev1 = device(twin.port, id="m1", unit=1, timeout=TIMEOUT)
    dev2 = device(twin.port, id="m2", unit=2, timeout=TIMEOUT, max_gap=0)  # several requests per poll
    bus = bus_for(dev1)
    d1, d2 = await driver(dev1, pts, bus), await driver(dev2, pts, bus)
    assert len(d2.plan.reads) >= 4
    twin.faults.set("silent", target=2)

    async def timed(coro: object) -> tuple[float, object]:
        t0 = time.monotonic()
        try:
            result: object = await coro  # type: ignore[misc]
        except DeviceError as exc:
            result = exc
        return time.monotonic() - t0, result

    for _ in range(4):
        # the dead unit goes first and holds the bus for one timeout
        (t2, r2), (t1, r1) = await asyncio.gather(timed(d2.read()), timed(d1.read()))
        assert isinstance(r2, DeviceTimeout), r2
        assert TIMEOUT * 0.9 <= t2 < 2 * TIMEOUT, f"dead unit took {t2:.3f}s for one poll"
        assert not isinstance(r1, BaseException), r1
        assert t1 < TIMEOUT + 0.25, f"live unit waited {t1:.3f}s"
        assert_values(twin, 1, pts, r1.values)  # type: ignore[attr-defined]
    # the shared connection survived the dead unit's timeouts
    assert link_of(d1).reconnects == 1 and twin.connections == 1
    twin.faults.clear(2)
    assert_values(twin, 2, pts, (await d2.read()).values)
    await bus.close()


async def test_never_answering_units_do_not_cost_a_reconnect() -> None:
    raw = [{**p, "id": f"u{u}.{p['id']}", "unit_id": u} for u in range(1, 6) for p in METER[:3]]
    pts = points(raw)
    async with ModbusTwin(points(METER[:3]), units=range(1, 6), update_interval=0) as twin:
        for u in (2, 3, 4):
            twin.faults.set("silent", target=u)
        d = await driver(device(twin.port, timeout=0.05), pts)
        for _ in range(3):
            values = (await d.read()).values
            assert [isinstance(v, PointError) for v in values] == [p.unit_id in (2, 3, 4) for p in pts]
        assert link_of(d).reconnects == 1
        await d.ctx.bus.close()


async def test_a_connection_where_live_units_fall_silent_is_reopened() -> None:
    pts = points(METER[:3])
    async with ModbusTwin(pts, units=[1, 2, 3], update_interval=0) as twin3:
        devs = [device(twin3.port, id=f"m{u}", unit=u, timeout=0.05) for u in (1, 2, 3)]
        bus = bus_for(devs[0])
        drivers = [await driver(dev, pts, bus) for dev in devs]
        for d in drivers:
            await d.read()
        for u in (1, 2, 3):
            twin3.faults.set("silent", target=u)  # as a half-open connection looks: nobody answers any more
        for d in drivers:
            with pytest.raises(DeviceTimeout):
                await d.read()
        link = link_of(drivers[0])
        assert not link.connected
        for u in (1, 2, 3):
            twin3.faults.clear(u)
        for u, d in zip((1, 2, 3), drivers, strict=True):
            assert_values(twin3, u, pts, (await d.read()).values)
        assert link.reconnects == 2
        await bus.close()


async def test_device_over_several_units_keeps_the_live_ones(twin: ModbusTwin) -> None:
    raw = [{**p, "id": f"u{u}.{p['id']}", "unit_id": u} for u in (1, 2) for p in METER if p.get("function") != "coil"]
    pts = points(raw)
    d = await driver(device(twin.port, timeout=TIMEOUT), pts)
    twin.faults.set("silent", target=2)
    t0 = time.monotonic()
    result = await d.read()
    assert time.monotonic() - t0 < 2 * TIMEOUT
    for p, v in zip(pts, result.values, strict=True):
        if p.unit_id == 2:
            assert isinstance(v, PointError) and "unit 2 did not answer" in v.message
        else:
            assert not isinstance(v, PointError)
    twin.faults.set("silent", target=1)
    with pytest.raises(DeviceTimeout, match="no unit answered"):
        await d.read()
    await d.ctx.bus.close()


async def test_gateway_exceptions_fail_the_device(twin: ModbusTwin) -> None:
    twin.inject_exception(0, 65535, code=11, unit=2)
    twin.inject_exception(0, 65535, code=10, unit=1)
    pts = points()
    with pytest.raises(DeviceTimeout, match="gateway target device failed"):
        await (await driver(device(twin.port, unit=2), pts)).read()
    d1 = await driver(device(twin.port, unit=1), pts)
    with pytest.raises(DeviceError, match="gateway path unavailable"):
        await d1.read()
    await d1.ctx.bus.close()


async def test_retries_and_late_replies_are_discarded(twin: ModbusTwin) -> None:
    pts = points()
    d = await driver(device(twin.port, timeout=TIMEOUT, retries=1), pts)
    twin.faults.set("slow", delay=0.3, target=1)
    t0 = time.monotonic()
    with pytest.raises(DeviceTimeout):
        await d.read()
    elapsed = time.monotonic() - t0
    assert 2 * TIMEOUT * 0.9 <= elapsed < 2 * TIMEOUT + 0.2
    twin.faults.clear(1)
    twin.set_value("v1", 230.25, 1)
    # the late replies to the timed-out requests arrive during this poll and must not be taken for its answers
    for _ in range(3):
        raw = await d.read()
        assert_values(twin, 1, pts, raw.values)
        await asyncio.sleep(0.05)
    await d.ctx.bus.close()


async def test_reconnects_after_the_connection_drops(twin: ModbusTwin) -> None:
    pts = points()
    d = await driver(device(twin.port), pts)
    await d.read()
    twin.drop_connections()
    await wait_until(lambda: not link_of(d).connected, what="the link to notice the drop")
    assert_values(twin, 1, pts, (await d.read()).values)
    assert link_of(d).reconnects == 2
    await d.ctx.bus.close()


async def test_refused_connection_is_a_device_error_and_backs_off() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = await driver(device(port), points())
    with pytest.raises(DeviceError, match="cannot connect"):
        await d.read()
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="next attempt"):
        await d.read()
    assert time.monotonic() - t0 < 0.05
    await d.ctx.bus.close()


async def test_missing_serial_port_is_a_device_error(tmp_path: Path) -> None:
    bus_cfg = BusConfig.model_validate({"id": "rs485-9", "serial": {"port": str(tmp_path / "ttyNOPE")}})
    dev = device(bus="rs485-9")
    d = await driver(dev, points(), bus_for(dev, bus_cfg))
    with pytest.raises(DeviceError, match="cannot connect"):
        await d.read()


async def test_close_after_poll_and_pause(twin: ModbusTwin) -> None:
    pts = points()
    d = await driver(device(twin.port, close_after_poll=True, pause=0.05), pts)
    t0 = time.monotonic()
    assert_values(twin, 1, pts, (await d.read()).values)
    assert time.monotonic() - t0 >= 0.1  # three requests, two pauses
    assert not link_of(d).connected
    await wait_until(lambda: twin.connections == 0, what="the twin to see the close")
    assert_values(twin, 1, pts, (await d.read()).values)
    await d.ctx.bus.close()


async def test_unreadable_points_are_rejected_and_replan(twin: ModbusTwin) -> None:
    pts = points()
    d = await driver(device(twin.port, unreadable=[[30, 33]]), pts)
    raw = await d.read()
    name = raw.values[8]
    assert isinstance(name, PointError) and "not read" in name.message and "unreadable" in name.message
    assert [(r.start, r.count) for r in d.plan.reads if r.function == "holding"] == [(0, 21), (200, 2)]
    d.ctx.points = pts[:3]
    await d.replan()
    assert_values(twin, 1, pts[:3], (await d.read()).values)
    await d.ctx.bus.close()


async def test_no_transport_is_a_device_error() -> None:
    dev = device(bus="rs485-9")
    d = await driver(dev, points(), Bus("rs485-9"))
    with pytest.raises(DeviceError, match="no connection"):
        await d.read()


async def test_rtu_over_tcp_two_units_one_connection() -> None:
    pts = points()
    async with ModbusTwin(pts, units=[1, 2], framing="rtu", update_interval=0) as twin:
        dev1 = device(twin.port, id="m1", unit=1, transport="rtu_over_tcp", timeout=TIMEOUT)
        dev2 = device(twin.port, id="m2", unit=2, transport="rtu_over_tcp", timeout=TIMEOUT)
        assert dev1.implicit_bus() == f"modbus-rtu:127.0.0.1:{twin.port}"
        bus = bus_for(dev1)
        d1, d2 = await driver(dev1, pts, bus), await driver(dev2, pts, bus)
        r1, r2 = await asyncio.gather(d1.read(), d2.read())
        assert_values(twin, 1, pts, r1.values)
        assert_values(twin, 2, pts, r2.values)
        twin.faults.set("silent", target=2)
        with pytest.raises(DeviceTimeout):
            await d2.read()
        assert_values(twin, 1, pts, (await d1.read()).values)
        assert twin.connections == 1
        await bus.close()


class _Rogue(asyncio.Protocol):
    """A Modbus TCP server that answers reads at address 100 with too few bytes and at 300 with junk."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        while len(data) >= 12:
            tid, _, _, unit, fc, address, count = struct.unpack(">HHHBBHH", data[:12])
            data = data[12:]
            if address == 300:
                self.t.write(b"\x00\x01\x00\x00\xff\xff\x01")
                continue
            n = 2 * count - (2 if address == 100 else 0)
            pdu = bytes((fc, n)) + bytes(n)
            self.t.write(struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu)


async def test_malformed_replies_never_escape() -> None:
    server = await asyncio.get_running_loop().create_server(_Rogue, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pts = [
        ModbusPoint.model_validate({"id": "a", "address": 0, "type": "uint16", "quantity": "other"}),
        ModbusPoint.model_validate({"id": "b", "address": 100, "type": "float32", "quantity": "other"}),
        ModbusPoint.model_validate({"id": "c", "address": 300, "type": "uint16", "quantity": "other"}),
    ]
    d = await driver(device(port, max_gap=0), pts[:2])
    raw = await d.read()
    assert raw.values[0] == 0
    assert isinstance(raw.values[1], PointError) and "expected 4" in raw.values[1].message
    d3 = await driver(device(port, max_gap=0), pts, d.ctx.bus)
    with pytest.raises(DeviceError, match="garbled"):
        await d3.read()
    raw = await d.read()  # reconnects
    assert raw.values[0] == 0
    await d.ctx.bus.close()
    server.close()


async def test_interoperates_with_pymodbus_server() -> None:
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    regs = [0x4049, 0x0FD0, 0xFFFE, 0x0001, 0x0002]
    sim = SimDevice(
        id=7,
        simdata=(
            [SimData(0, values=[True, False, True] + [False] * 13, datatype=DataType.BITS)],
            [SimData(0, count=16, values=False, datatype=DataType.BITS)],
            [SimData(0, values=regs, datatype=DataType.REGISTERS)],
            [SimData(0, values=[9], datatype=DataType.REGISTERS)],
        ),
    )
    server = ModbusTcpServer(sim, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    try:
        port = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        raw_points = [
            {"id": "pi", "address": 0, "type": "float32", "quantity": "other"},
            {"id": "neg", "address": 2, "type": "int16", "quantity": "other"},
            {"id": "u32", "address": 3, "type": "uint32", "quantity": "other"},
            {"id": "in", "address": 0, "type": "uint16", "function": "input", "quantity": "other"},
            {"id": "c2", "address": 2, "type": "bool", "function": "coil", "quantity": "other"},
            {"id": "gone", "address": 50, "type": "uint16", "quantity": "other"},
        ]
        d = await driver(device(port, unit=7, max_gap=0), points(raw_points))
        raw = await d.read()
        pi, neg, u32, inp, c2, gone = raw.values
        assert isinstance(pi, float) and abs(pi - 3.14159) < 1e-6
        assert (neg, u32, inp, c2) == (-2, 0x00010002, 9, True)
        assert isinstance(gone, PointError) and "exception 2" in gone.message
        await d.ctx.bus.close()
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]
