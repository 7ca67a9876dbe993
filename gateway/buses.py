"""Shared transports: one RS-485 port or one TCP endpoint, one transaction at a time, fair."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import model_validator

from gateway.models import Duration, Identifier, Port, Strict

T = TypeVar("T")


class SerialSettings(Strict):
    port: str
    baudrate: int = 9600
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    framing: Literal["rtu", "ascii"] = "rtu"  # Modbus: ASCII lines default to 7 data bits, even parity

    @model_validator(mode="before")
    @classmethod
    def _ascii_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("framing") == "ascii":
            return {"bytesize": 7, "parity": "E", **data}
        return data


class TcpSettings(Strict):
    host: str
    port: Port = 502


class BusConfig(Strict):
    """A named transport shared by several devices (an RS-485 port or a serial-to-Ethernet converter)."""

    id: Identifier
    serial: SerialSettings | None = None
    tcp: TcpSettings | None = None
    # Some converters need a quiet time between transactions (RS-485 turnaround).
    turnaround: Duration = 0.0


class _Transaction:
    """The bus held for one exchange; a plain class because it runs for every request."""

    __slots__ = ("bus", "start")

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.start = 0.0

    async def __aenter__(self) -> None:
        bus = self.bus
        await bus._lock.acquire()
        turnaround = bus.config.turnaround if bus.config else 0.0
        if turnaround:
            wait = bus._last_end + turnaround - time.monotonic()
            if wait > 0:
                try:
                    await asyncio.sleep(wait)
                except BaseException:
                    bus._lock.release()
                    raise
        self.start = time.monotonic()

    async def __aexit__(self, *exc: object) -> None:
        bus = self.bus
        bus._last_end = end = time.monotonic()
        bus.busy_seconds += end - self.start
        bus.transactions += 1
        bus._lock.release()


class Bus:
    """The unit of concurrency: devices on one bus take turns, devices on different buses run in parallel.

    The lock is FIFO, so devices waiting for the bus are served in arrival order and none can
    starve another; each transaction holds it for at most the device's timeout.
    """

    def __init__(self, id: str, config: BusConfig | None = None) -> None:
        self.id = id
        self.config = config
        self._lock = asyncio.Lock()
        self._resources: dict[str, Any] = {}
        self._last_end = 0.0
        self.busy_seconds = 0.0
        self.transactions = 0
        self.created = time.monotonic()

    @property
    def serial(self) -> SerialSettings | None:
        return self.config.serial if self.config else None

    @property
    def tcp(self) -> TcpSettings | None:
        return self.config.tcp if self.config else None

    def transaction(self) -> _Transaction:
        """Hold the bus for one request/response exchange: `async with bus.transaction(): ...`."""
        return _Transaction(self)

    def shared(self, key: str, factory: Callable[[], T]) -> T:
        """One object per bus and key (a protocol client on the shared connection)."""
        if key not in self._resources:
            self._resources[key] = factory()
        return self._resources[key]  # type: ignore[no-any-return]

    def utilisation(self) -> float:
        elapsed = time.monotonic() - self.created
        return self.busy_seconds / elapsed if elapsed > 0 else 0.0

    async def close(self) -> None:
        resources, self._resources = self._resources, {}
        for res in resources.values():
            for name in ("aclose", "close"):
                fn = getattr(res, name, None)
                if fn is None:
                    continue
                try:
                    result = fn()
                    if inspect.isawaitable(result):
                        await result
                except Exception:  # noqa: BLE001 - closing must not stop the others
                    pass
                break
