"""RTU on a serial line: the twin on one end of a socat pty pair, two unit ids, the driver on the other."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from drivers.modbus.client import SerialEndpoint
from drivers.modbus.scan import scan
from drivers.modbus.twin import ModbusTwin
from gateway.buses import BusConfig
from gateway.driver import DeviceTimeout
from tests.modbus.util import assert_values, bus_for, device, driver, points

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed"),
]


async def test_two_units_on_one_line(line: tuple[str, str]) -> None:
    twin_side, gw_side = line
    pts = points()
    async with ModbusTwin(pts, units=[1, 2], serial=twin_side, baudrate=19200, update_interval=0) as twin:
        bus_cfg = BusConfig.model_validate({"id": "rs485-1", "serial": {"port": gw_side, "baudrate": 19200}})
        dev1 = device(id="m1", bus="rs485-1", unit=1, timeout=0.3)
        dev2 = device(id="m2", bus="rs485-1", unit=2, timeout=0.3)
        bus = bus_for(dev1, bus_cfg)
        d1, d2 = await driver(dev1, pts, bus), await driver(dev2, pts, bus)
        twin.set_value("v1", 229.5, 2)
        r1, r2 = await asyncio.gather(d1.read(), d2.read())
        assert_values(twin, 1, pts, r1.values)
        assert_values(twin, 2, pts, r2.values)
        assert r2.values[0] == 229.5
        assert d1._link is d2._link
        # a dead unit on the line: one timeout for it, the other unit still answers
        twin.faults.set("silent", target=2)
        t0 = time.monotonic()
        with pytest.raises(DeviceTimeout):
            await d2.read()
        assert time.monotonic() - t0 < 0.6
        assert_values(twin, 1, pts, (await d1.read()).values)
        await bus.close()


async def test_wire_time_is_simulated(line: tuple[str, str]) -> None:
    twin_side, gw_side = line
    # 125 registers: 8-byte request + 255-byte reply = 2630 bit times at 9600 baud = 0.27 s
    pts = points([{"id": f"r{i}", "address": i, "type": "uint16", "quantity": "other"} for i in range(125)])
    async with ModbusTwin(pts, serial=twin_side, baudrate=9600, wire_time=True, update_interval=0):
        bus_cfg = BusConfig.model_validate({"id": "rs485-1", "serial": {"port": gw_side, "baudrate": 9600}})
        dev = device(bus="rs485-1", timeout=1.0)
        d = await driver(dev, pts, bus_for(dev, bus_cfg))
        t0 = time.monotonic()
        await d.read()
        assert 0.25 < time.monotonic() - t0 < 0.9
        await d.ctx.bus.close()


async def test_scan_finds_the_units_on_the_line(line: tuple[str, str]) -> None:
    twin_side, gw_side = line
    async with ModbusTwin(points(), units=[2, 5], serial=twin_side, update_interval=0):
        found = await scan(SerialEndpoint(gw_side), [1, 2, 3, 4, 5], timeout=0.05)
        assert sorted(found) == [2, 5]
