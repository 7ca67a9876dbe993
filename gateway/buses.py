"""Shared transports: one RS-485 port or one TCP endpoint, one transaction at a time, fair.

A TCP transport may have several endpoints (the two LAN ports of one gateway, two gateways on one
ring): the bus owns them as a :class:`PathSet`, which decides which one is in use, fails over and
fails back; drivers only ask it for the current endpoint and tell it what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import structlog
from pydantic import Field, GetCoreSchemaHandler, TypeAdapter, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, core_schema

from gateway.models import Duration, Identifier, Port, Strict, parse_duration

T = TypeVar("T")


class SerialSettings(Strict):
    port: str = Field(description="the serial device, e.g. /dev/ttyUSB0")
    baudrate: int = Field(default=9600, description="line speed, bit/s")
    bytesize: Literal[7, 8] = Field(default=8, description="data bits")
    parity: Literal["N", "E", "O"] = Field(default="N", description="none, even or odd")
    stopbits: Literal[1, 2] = 1
    # Modbus: ASCII lines default to 7 data bits, even parity
    framing: Literal["rtu", "ascii"] = Field(default="rtu", description="Modbus framing on the line")

    @model_validator(mode="before")
    @classmethod
    def _ascii_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("framing") == "ascii":
            return {"bytesize": 7, "parity": "E", **data}
        return data


class TcpSettings(Strict):
    host: str
    port: Port = 502


MAX_PATHS = 8


class TcpPaths(tuple[TcpSettings, ...]):
    """`tcp:` as configured: one endpoint (a mapping) or several in order of preference (a list).

    `host` and `port` are the preferred (first) endpoint's, so code that knows one endpoint reads it
    as before; iterating gives every endpoint.
    """

    endpoint_model: ClassVar[type[TcpSettings]] = TcpSettings

    @property
    def host(self) -> str:
        return self[0].host

    @property
    def port(self) -> int:
        return self[0].port

    @property
    def key(self) -> str:
        """`host:port`, or the endpoints joined by commas: what names the transport."""
        return ",".join(f"{e.host}:{e.port}" for e in self)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        one = TypeAdapter(cls.endpoint_model)
        many = TypeAdapter(list[cls.endpoint_model])  # type: ignore[name-defined]

        def validate(value: Any) -> TcpPaths:
            if isinstance(value, cls):
                return value
            if isinstance(value, dict):
                # A single mapping keeps its error locations (`tcp.port`, not `tcp[0].port`).
                return cls((one.validate_python(value),))
            if not isinstance(value, list):
                raise PydanticCustomError("tcp_paths", "give `{host, port}` or a list of them, preferred first")
            if not value:
                raise PydanticCustomError("tcp_paths", "an empty list: give at least one `{host, port}`")
            if len(value) > MAX_PATHS:
                raise PydanticCustomError("tcp_paths", f"at most {MAX_PATHS} endpoints")
            items: list[TcpSettings] = many.validate_python(value)
            seen: dict[tuple[str, int], int] = {}
            for i, e in enumerate(items):
                first = seen.setdefault((e.host.lower(), e.port), i)
                if first != i:
                    err = PydanticCustomError("tcp_paths", f"{e.host}:{e.port} is listed twice (also [{first}])")
                    detail: InitErrorDetails = {"type": err, "loc": (i,), "input": value[i]}
                    raise ValidationError.from_exception_data("tcp", [detail])
            return cls(items)

        # What the validator accepts, for the JSON Schema (gateway/schema.py); duplicates it cannot say.
        endpoint = handler.generate_schema(cls.endpoint_model)
        accepted = core_schema.union_schema(
            [endpoint, core_schema.list_schema(endpoint, min_length=1, max_length=MAX_PATHS)]
        )
        return core_schema.no_info_plain_validator_function(
            validate,
            json_schema_input_schema=accepted,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda v: [e.model_dump() for e in v] if len(v) > 1 else v[0].model_dump()
            ),
        )


class FailoverSettings(Strict):
    """When a TCP transport with several endpoints leaves the one in use, and when it returns."""

    after_timeouts: Annotated[int, Field(ge=1, le=100)] = Field(
        default=3, description="timeouts in a row (from devices that answered before) that abandon a path"
    )
    failback_after: Duration = Field(
        default=60.0, description="the preferred path must be reachable this long before it is used again"
    )
    probe_interval: Duration = Field(
        default=5.0, description="how often the preferred path is probed while away (at most failback_after)"
    )

    @model_validator(mode="before")
    @classmethod
    def _short_failback(cls, data: Any) -> Any:
        # A failback time under the default probe interval probes as often as it needs to.
        if isinstance(data, dict) and "probe_interval" not in data and "failback_after" in data:
            with contextlib.suppress(ValueError, TypeError):
                fb = parse_duration(data["failback_after"])
                if 0 < fb < 5.0:
                    return {**data, "probe_interval": fb}
        return data

    @model_validator(mode="after")
    def _sane(self) -> FailoverSettings:
        if self.probe_interval <= 0:
            raise ValueError("probe_interval must be positive")
        if self.failback_after < self.probe_interval:
            raise ValueError("failback_after must be at least probe_interval")
        return self


def check_failover(tcp: TcpPaths | None, failover: FailoverSettings | None) -> None:
    """`failover` only makes sense with two or more endpoints (a model validator's check)."""
    if failover is not None and (tcp is None or len(tcp) < 2):
        raise ValueError("`failover` needs a list of two or more endpoints, preferred first")


def path_conflicts(devices: Sequence[Any]) -> list[tuple[int, str, str]]:
    """(device index, key, message) for devices that reach one endpoint but would not share its bus.

    Devices behind the same endpoints switch together only if they share one bus: the same
    endpoints in the same order and the same `failover` (the implicit bus' key names the endpoints).
    """
    out: list[tuple[int, str, str]] = []
    by_key: dict[str, int] = {}
    by_endpoint: dict[tuple[str, str], int] = {}
    for i, dev in enumerate(devices):
        tcp = getattr(dev, "tcp", None)
        key = dev.implicit_bus() if isinstance(tcp, TcpPaths) else None
        if tcp is None or key is None:
            continue
        first = by_key.setdefault(key, i)
        if first != i:
            if getattr(devices[first], "failover", None) != getattr(dev, "failover", None):
                out.append((i, "failover", f"devices[{first}] has the same endpoints with another `failover`"))
            continue
        kind = key.split(":", 1)[0]
        for e in tcp:
            other = by_endpoint.setdefault((kind, f"{e.host.lower()}:{e.port}"), i)
            # Two single endpoints on two buses is how it always was (e.g. a name and its address).
            if other != i and (len(tcp) > 1 or len(devices[other].tcp) > 1):
                msg = (
                    f"{e.host}:{e.port} is also an endpoint of devices[{other}], which lists other endpoints: "
                    "list the same ones in the same order, or put both devices on one named bus"
                )
                out.append((i, "tcp", msg))
                break
    return out


class BusConfig(Strict):
    """A named transport shared by several devices (an RS-485 port or a serial-to-Ethernet converter)."""

    id: Identifier
    serial: SerialSettings | None = None
    tcp: TcpPaths | None = None
    failover: FailoverSettings | None = None
    # Some converters need a quiet time between transactions (RS-485 turnaround).
    turnaround: Duration = 0.0

    @model_validator(mode="after")
    def _failover(self) -> BusConfig:
        check_failover(self.tcp, self.failover)
        return self


@dataclass(frozen=True, slots=True)
class Path:
    """One endpoint of a transport; `index` 0 is the preferred one."""

    index: int
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


Probe = Callable[[str, int, float], Awaitable[bool]]


async def tcp_probe(host: str, port: int, timeout: float) -> bool:
    """True when a TCP connection to host:port opens within `timeout` (it is closed at once)."""
    try:
        async with asyncio.timeout(timeout):
            _reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


class PathSet:
    """The endpoints of one TCP transport, the one in use, and when to change it.

    Drivers call :meth:`current` before each exchange (a transaction boundary: the only place the
    path changes) and report what happened: :meth:`connected`, :meth:`connect_failed`,
    :meth:`timed_out` (only timeouts that say something about the path, e.g. from a device that
    answered before), :meth:`answered`.

    * A connection that cannot be opened moves to the next endpoint at once.
    * `after_timeouts` timeouts in a row move to the next endpoint; after such a move, timeouts move
      it again only once something answered: when the devices are silent on every path the
      devices are the problem, and the bus stays where it is.
    * Away from the preferred endpoint, a task probes it (a TCP connect, off the bus lock) every
      `probe_interval`; once it has been reachable for `failback_after` without a failed probe the
      bus returns to it. If the preferred path then fails again within that time, the next return
      waits twice as long (up to 16 times): a path that accepts connections but does not carry
      traffic costs a switch per hold time, never a flap per poll.
    """

    MAX_HOLD_FACTOR = 16

    def __init__(
        self,
        bus_id: str,
        endpoints: Sequence[TcpSettings],
        settings: FailoverSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        probe: Probe | None = tcp_probe,
        log: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        self.bus_id = bus_id
        self.paths = tuple(Path(i, e.host, e.port) for i, e in enumerate(endpoints))
        self.settings = settings or FailoverSettings()
        self._clock = clock
        self._probe = probe
        self.log = log or structlog.get_logger("edgegw").bind(component="bus", bus=bus_id)
        self.active = self.paths[0]
        self.switches = 0
        self.failovers = 0
        self.failbacks = 0
        self._timeouts = 0
        self._armed = True
        self._unreachable: set[int] = set()
        self._all_down_logged = False
        self._healthy_since: float | None = None  # the preferred path's probes, while away from it
        self._hold_factor = 1
        self._failback_at: float | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._watchers: list[Callable[[PathSet], None]] = []
        self.announced = self.active

    @property
    def redundant(self) -> bool:
        return len(self.paths) > 1

    @property
    def hold(self) -> float:
        """How long the preferred path must stay reachable before the bus returns to it."""
        return self.settings.failback_after * self._hold_factor

    def watch(self, callback: Callable[[PathSet], None]) -> None:
        """Call `callback(self)` after every switch (the device status carries the path)."""
        self._watchers.append(callback)

    def unwatch(self, callback: Callable[[PathSet], None]) -> None:
        with contextlib.suppress(ValueError):
            self._watchers.remove(callback)

    # -- what drivers call --------------------------------------------------------------------

    def current(self) -> Path:
        """The endpoint to use for the next exchange; fails back here when the preferred one is healthy."""
        active = self.active
        if active.index and self._healthy_since is not None and self._clock() - self._healthy_since >= self.hold:
            self._switch(self.paths[0], f"preferred path reachable for {self.hold:g}s", failback=True)
        return self.active

    def connected(self) -> None:
        """A connection to the current endpoint opened."""
        if not self._unreachable:
            return
        self._unreachable.clear()
        if self._all_down_logged:
            self._all_down_logged = False
            self.log.info("path reachable again", path=str(self.active))
        self._announce()

    def connect_failed(self, reason: str) -> None:
        """A connection to the current endpoint could not be opened: the next one is tried."""
        if not self.redundant:
            return
        self._unreachable.add(self.active.index)
        quiet = len(self._unreachable) >= len(self.paths)
        if quiet and not self._all_down_logged:
            self._all_down_logged = True
            self.log.warning("no path reachable", paths=[str(p) for p in self.paths], error=reason)
        self._switch(self._next(), f"cannot connect: {reason}", quiet=quiet)

    def timed_out(self) -> None:
        """A timeout that points at the path (a device that answered before fell silent)."""
        if not self.redundant:
            return
        self._timeouts += 1
        if self._timeouts >= self.settings.after_timeouts and self._armed:
            self._armed = False
            self._switch(self._next(), f"{self._timeouts} timeouts in a row")

    def answered(self) -> None:
        """A device answered on the current path."""
        self._timeouts = 0
        self._armed = True

    # -- the preferred path's health, while away from it ---------------------------------------

    def probe_result(self, ok: bool) -> None:
        """One probe of the preferred endpoint (the probe task calls it; tests may too)."""
        if not self.active.index:
            return
        if not ok:
            self._healthy_since = None
        elif self._healthy_since is None:
            self._healthy_since = self._clock()

    async def _probe_loop(self) -> None:
        probe = self._probe
        assert probe is not None
        interval = self.settings.probe_interval
        preferred = self.paths[0]
        while self.active.index:
            await asyncio.sleep(interval)
            ok = await probe(preferred.host, preferred.port, min(interval, 5.0))
            self.probe_result(ok)

    def _start_probe(self) -> None:
        if self._probe is None or (self._probe_task is not None and not self._probe_task.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._probe_task = loop.create_task(self._probe_loop(), name=f"probe:{self.bus_id}")

    async def close(self) -> None:
        task, self._probe_task = self._probe_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- internals -------------------------------------------------------------------------------

    def _next(self) -> Path:
        return self.paths[(self.active.index + 1) % len(self.paths)]

    def _switch(self, to: Path, reason: str, *, failback: bool = False, quiet: bool = False) -> None:
        old = self.active
        if to == old:
            return
        now = self._clock()
        if not old.index and self._failback_at is not None:
            # Leaving the preferred path soon after returning to it: the next return waits longer.
            if now - self._failback_at < self.hold:
                self._hold_factor = min(self._hold_factor * 2, self.MAX_HOLD_FACTOR)
            else:
                self._hold_factor = 1
        self.active = to
        self.switches += 1
        self._timeouts = 0
        self._healthy_since = None
        if failback:
            self.failbacks += 1
            self._failback_at = now
            self.log.info("path failback", path_from=str(old), path_to=str(to), reason=reason)
        else:
            self.failovers += 1
            if not quiet:
                self.log.warning("path failover", path_from=str(old), path_to=str(to), reason=reason)
        if to.index:
            self._start_probe()
        if not quiet:
            self._announce()

    def _announce(self) -> None:
        """Tell the watchers about a new path (not while cycling through paths that are all down)."""
        if self.active == self.announced:
            return
        self.announced = self.active
        for callback in list(self._watchers):
            try:
                callback(self)
            except Exception as exc:  # noqa: BLE001 - a watcher must not break the switch
                self.log.error("path watcher failed", error=str(exc))


class FifoLock(asyncio.Lock):
    """asyncio.Lock (FIFO, cancel-safe), plus taking it without a coroutine when nobody holds it."""

    def try_acquire(self) -> bool:
        """Take the lock if `acquire` would not wait (then no coroutine is spent); False otherwise.

        Only when it is free and nobody waits: waiters, even cancelled ones, are left to
        `acquire`, which serves them in order.
        """
        if self.locked() or self._waiters:
            return False
        self._locked = True
        return True


class _Transaction:
    """The bus held for one exchange; a plain class because it runs for every request."""

    __slots__ = ("bus", "start")

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.start = 0.0

    async def __aenter__(self) -> None:
        bus = self.bus
        # A free bus is taken without the lock's coroutine (2k instructions per request).
        if not bus._lock.try_acquire():
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
        self._lock = FifoLock()
        self._resources: dict[str, Any] = {}
        self._last_end = 0.0
        self.busy_seconds = 0.0
        self.transactions = 0
        self.created = time.monotonic()
        self.paths: PathSet | None = None
        if config is not None and config.tcp is not None:
            self.paths = PathSet(id, config.tcp, config.failover)

    def use_paths(self, endpoints: Sequence[TcpSettings], settings: FailoverSettings | None = None) -> PathSet:
        """The bus' endpoints: a named bus has them from its config, a device's own `tcp` gives them here.

        Every device on an implicit bus lists the same endpoints (its key names them all), so the
        first device to ask sets them up.
        """
        if self.paths is None:
            self.paths = PathSet(self.id, endpoints, settings)
        return self.paths

    @property
    def path(self) -> str | None:
        """The endpoint in use (`host:port`), for a TCP transport."""
        # The path announced to watchers: not every step while cycling through paths that are all down.
        return str(self.paths.announced) if self.paths is not None else None

    @property
    def serial(self) -> SerialSettings | None:
        return self.config.serial if self.config else None

    @property
    def tcp(self) -> TcpPaths | None:
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
        if self.paths is not None:
            await self.paths.close()
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
