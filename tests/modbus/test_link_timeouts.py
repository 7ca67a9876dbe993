"""The link's one timeout timer: every request still times out at its own deadline, never a later one."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest

from drivers.modbus.client import LinkTimeout, ModbusLink, TcpEndpoint

pytestmark = pytest.mark.asyncio


class _Server:
    """Answers reads of holding registers with zeros, except while `silent`."""

    def __init__(self) -> None:
        self.silent = False
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(7)
                tid, _proto, length, unit = struct.unpack(">HHHB", head)
                pdu = await reader.readexactly(length - 1)
                self.requests += 1
                if self.silent:
                    continue
                count = struct.unpack(">H", pdu[3:5])[0]
                reply = bytes((pdu[0], 2 * count)) + bytes(2 * count)
                writer.write(struct.pack(">HHHB", tid, 0, len(reply) + 1, unit) + reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
async def served() -> AsyncIterator[tuple[_Server, ModbusLink]]:
    server = _Server()
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    link = ModbusLink(TcpEndpoint("127.0.0.1", port))
    try:
        yield server, link
    finally:
        await link.close()
        srv.close()
        await srv.wait_closed()


async def test_a_short_timeout_after_long_ones_is_its_own(served: tuple[_Server, ModbusLink]) -> None:
    server, link = served
    for _ in range(20):
        assert await link.read(1, 3, 0, 2, timeout=30.0) == bytes(4)
    server.silent = True
    # The timer armed for the long requests must not hold this one for 30 s.
    async with asyncio.timeout(5):
        with pytest.raises(LinkTimeout):
            await link.read(1, 3, 0, 2, timeout=0.1)
    assert link.timeouts == 1


async def test_a_long_timeout_after_short_ones_waits_its_whole_time(served: tuple[_Server, ModbusLink]) -> None:
    server, link = served
    for _ in range(5):
        assert await link.read(1, 3, 0, 2, timeout=0.05) == bytes(4)
    # The timer armed by a short request fires while this one is in flight, and must let it be.
    server.silent = True
    request = asyncio.create_task(link.read(1, 3, 0, 2, timeout=30.0))
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(5):
        # Until the early timer has fired and moved on to this request's own deadline.
        while link._timer is None or link._timer_at < loop.time() + 20:  # noqa: ASYNC110 - bounded
            await asyncio.sleep(0.01)
    assert not request.done()
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    server.silent = False
    assert await link.read(1, 3, 0, 2, timeout=1.0) == bytes(4)


async def test_timeouts_in_a_row_each_expire(served: tuple[_Server, ModbusLink]) -> None:
    server, link = served
    server.silent = True
    async with asyncio.timeout(5):
        for _ in range(3):
            with pytest.raises(LinkTimeout):
                await link.read(7, 3, 0, 1, timeout=0.05)  # unit 7 never answered: no reconnect
    assert link.timeouts == 3
