"""The fake kind's driver: one TCP connection per device, one ``READ`` of every register per poll."""

from __future__ import annotations

import asyncio
import contextlib

from gateway.driver import DeviceError, DeviceTimeout, Driver, DriverContext, PointError, RawReadings, RawValue
from tests.fakekind.config import FakeDevice, FakePoint


def _number(text: str) -> RawValue:
    if text == "?":
        return PointError("the device has no such register")
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return PointError(f"not a number: {text[:20]!r}")


class FakeDriver(Driver[FakeDevice, None]):
    def __init__(self, ctx: DriverContext) -> None:
        super().__init__(ctx)
        registers = [p.reg for p in ctx.points if isinstance(p, FakePoint)]
        self._request = ("READ " + " ".join(registers) + "\n").encode()
        self._count = len(registers)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def read(self) -> RawReadings:
        cfg = self.config
        async with self.ctx.bus.transaction():
            try:
                async with asyncio.timeout(cfg.timeout):
                    line = await self._exchange()
            except TimeoutError:
                await self._drop()
                raise DeviceTimeout(f"no reply within {cfg.timeout:g}s") from None
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                # A reply cut short, a refused connection, a line without end: the connection is
                # in an unknown state, so the next poll starts on a new one.
                await self._drop()
                raise DeviceError(f"{type(exc).__name__}: {exc}") from None
        words = line.decode("ascii", "replace").split()
        if not words or words[0] != "VALUES" or len(words) != self._count + 1:
            await self._drop()
            raise DeviceError("garbled reply")
        return RawReadings([_number(w) for w in words[1:]])

    async def _exchange(self) -> bytes:
        if self._writer is None or self._reader is None:
            self._reader, self._writer = await asyncio.open_connection(self.config.host, self.config.port)
        self._writer.write(self._request)
        await self._writer.drain()
        return await self._reader.readuntil(b"\n")

    async def _drop(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self) -> None:
        await self._drop()
