"""HDLC on a serial line (a socat pty pair): two meters on one RS-485 bus, and the optical probe."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from drivers.dlms.transport import OpticalChannel
from drivers.dlms.twin import DlmsTwin
from gateway.buses import Bus, BusConfig
from gateway.driver import DeviceTimeout
from tests.dlms.util import (
    KEYS,
    KEYS_TEXT,
    POINTS,
    PROFILE_POINTS,
    T0,
    device,
    driver,
    meter_objects,
    normalized,
    series_of,
)

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed"),
]


async def test_two_meters_on_one_bus_one_dead(line: tuple[str, str]) -> None:
    meter_side, gw_side = line
    async with DlmsTwin(objects=meter_objects(), transport="hdlc", serial=meter_side, addresses=[17, 4321]) as twin:
        bus = Bus("rs485-2", BusConfig.model_validate({"id": "rs485-2", "serial": {"port": gw_side}}))
        # one meter by its physical address, the other by its serial number (4321 = 3321 mod 10000 + 1000)
        d1 = driver(device(id="m17", bus="rs485-2", physical_address=17, timeout=0.4), bus=bus)
        d2 = driver(device(id="m4321", bus="rs485-2", serial_number=3321, timeout=0.4), bus=bus)
        assert d2.config.physical == 4321
        r1, r2 = await asyncio.wait_for(asyncio.gather(d1.read(), d2.read()), 10)
        assert normalized(d1, r1)["energy.import"] == (123456.7, "good")
        assert normalized(d2, r2)["voltage.l1"] == (230.1, "good")
        assert d1.client.link.channel is d2.client.link.channel
        twin.set_value("1.0.32.7.0.255", 228.8, target=4321)
        # the second meter dies: it costs one timeout per poll, the first one goes on
        twin.kill(4321)
        for _ in range(2):
            t0 = time.monotonic()
            results = await asyncio.wait_for(asyncio.gather(d1.read(), d2.read(), return_exceptions=True), 10)
            assert isinstance(results[1], DeviceTimeout)
            assert not isinstance(results[0], BaseException)
            assert normalized(d1, results[0])["voltage.l1"] == (230.1, "good")
            assert time.monotonic() - t0 < 1.5
        twin.revive(4321)
        assert normalized(d2, await d2.read())["voltage.l1"] == (228.8, "good")
        await d1.stop()
        await d2.stop()
        assert twin.meters[17].disconnects == 1 and twin.meters[4321].disconnects == 1
        await bus.close()


async def test_hdlc_segmentation_and_window_on_a_serial_line(line: tuple[str, str], tmp_path: Path) -> None:
    """Small frames and a window of 3 both ways (the HLS AARQ is segmented too), ciphered."""
    meter_side, gw_side = line
    keys = tmp_path / "meter.keys"
    keys.write_text(KEYS_TEXT)
    async with DlmsTwin(
        objects=meter_objects(),
        transport="hdlc",
        serial=meter_side,
        start=T0,
        max_info=64,
        window=3,
        max_pdu=1024,
        keys=KEYS,
    ) as twin:
        twin.freeze()
        bus = Bus(
            "rs485-1", BusConfig.model_validate({"id": "rs485-1", "serial": {"port": gw_side, "baudrate": 19200}})
        )
        dev = device(
            [*POINTS, *PROFILE_POINTS],
            bus="rs485-1",
            physical_address=17,
            timeout=1.0,
            window=7,
            max_info=256,
            backfill="1d",
            auth="high_gmac",
            keys_file=str(keys),
        )
        drv = driver(dev, bus=bus)
        raw = await asyncio.wait_for(drv.read(), 15)
        link = drv.client.link
        # negotiated down to what the meter's UA offers, in both directions
        assert link.params.max_info_rx == 64 and link.params.window_rx == 3  # type: ignore[attr-defined]
        assert link.params.max_info_tx == 64 and link.params.window_tx == 3  # type: ignore[attr-defined]
        assert twin.meter.associations == 1 and twin.meter.ic_violations == 0
        assert len(series_of(drv, raw, "load_profile.energy")) == 97
        assert normalized(drv, raw)["energy.import"] == (123456.7, "good")
        await drv.stop()
        await bus.close()


async def test_optical_probe_mode_e_opening(line: tuple[str, str]) -> None:
    meter_side, gw_side = line
    async with DlmsTwin(objects=meter_objects(), transport="hdlc", serial=meter_side, mode_e=True) as twin:
        dev = device(optical={"port": gw_side}, physical_address=17, timeout=1.0, interval="15min")
        bus = Bus(dev.implicit_bus() or "optical")
        drv = driver(dev, bus=bus)
        got = normalized(drv, await asyncio.wait_for(drv.read(), 15))
        assert got["energy.import"] == (123456.7, "good")
        channel = drv.client.link.channel
        assert isinstance(channel, OpticalChannel) and "EDGEGW-TWIN" in channel.identification
        # released after the poll (interval 15min): the next poll opens the port with mode E again
        assert twin.mode_e_sessions == 1
        got = normalized(drv, await asyncio.wait_for(drv.read(), 15))
        assert got["voltage.l1"] == (230.1, "good")
        assert twin.mode_e_sessions == 2
        await drv.stop()
        await bus.close()
