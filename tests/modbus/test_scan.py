"""`edgegw scan modbus` against the twin on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket

import pytest

from drivers.modbus.client import TcpEndpoint
from drivers.modbus.scan import main, scan
from drivers.modbus.twin import ModbusTwin
from tests.modbus.util import points

pytestmark = pytest.mark.asyncio


async def test_scan_lists_units_that_answer() -> None:
    async with ModbusTwin(points(), units=[1, 3, 4], update_interval=0) as twin:
        twin.inject_exception(0, 0, code=2, unit=3)
        twin.inject_exception(0, 65535, code=11, unit=4)  # the gateway speaking for a missing unit
        seen: list[int] = []
        found = await scan(
            TcpEndpoint("127.0.0.1", twin.port), [1, 2, 3, 4, 5], timeout=0.05, on_found=lambda u, _: seen.append(u)
        )
        assert sorted(found) == [1, 3] and seen == [1, 3]
        assert found[1].startswith("answers: holding 0 = 0x")
        assert "exception 2 (illegal data address)" in found[3]
        assert twin.connections <= 1


async def test_scan_main(capsys: pytest.CaptureFixture[str]) -> None:
    async with ModbusTwin(points(), units=[2], update_interval=0) as twin:
        args = ["--host", "127.0.0.1", "--port", str(twin.port), "--units", "1-3", "--timeout", "0.05"]
        assert await asyncio.to_thread(main, args) == 0
        out = capsys.readouterr().out
        assert "unit   2: answers" in out and "1 unit(s) answered" in out
        assert await asyncio.to_thread(main, [*args[:4], "--units", "5", "--timeout", "0.05"]) == 1
        assert "no unit answered" in capsys.readouterr().out
        assert await asyncio.to_thread(main, [*args[:4], "--units", "2", "--function", "coil", "--register", "3"]) == 0
        assert "coil 3 = True" in capsys.readouterr().out
    assert main(["--host", "127.0.0.1", "--units", "999"]) == 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert await asyncio.to_thread(main, ["--host", "127.0.0.1", "--port", str(port), "--units", "1"]) == 2
    assert "cannot connect" in capsys.readouterr().err
