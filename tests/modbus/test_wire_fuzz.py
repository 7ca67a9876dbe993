"""Whatever a peer sends back, a poll ends in readings (some bad) or a DeviceError, never anything else."""

from __future__ import annotations

import asyncio
import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.driver import DeviceError, PointError, RawReadings
from tests.modbus.util import device, driver, points

# A reply: the request's own transaction id and unit echoed (so it is taken as the answer) plus
# arbitrary bytes, or arbitrary bytes outright, cut into arbitrary TCP segments.
replies = st.lists(
    st.tuples(st.booleans(), st.binary(max_size=300), st.integers(1, 40)),
    min_size=1,
    max_size=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(replies)
def test_any_reply_bytes_end_in_readings_or_a_device_error(script: list[tuple[bool, bytes, int]]) -> None:
    asyncio.run(_poll_against(script))


async def _poll_against(script: list[tuple[bool, bytes, int]]) -> None:
    steps = iter(script)

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                request = await reader.readexactly(12)
                step = next(steps, None)
                if step is None:
                    break
                echo, body, cut = step
                data = (request[:2] + b"\x00\x00" + body) if echo else body
                for i in range(0, len(data), cut):
                    writer.write(data[i : i + cut])
                    await writer.drain()
        writer.close()

    server = await asyncio.start_server(peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        dev = device(port, timeout=0.05)
        drv = await driver(dev, points())
        try:
            result = await asyncio.wait_for(drv.read(), 5)
        except DeviceError:
            return
        finally:
            await drv.ctx.bus.close()
        assert isinstance(result, RawReadings) and len(result.values) == len(drv.ctx.points)
        for value in result.values:
            assert value is None or isinstance(value, int | float | bool | str | PointError)
    finally:
        server.close()
        await server.wait_closed()
