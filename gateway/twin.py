"""The device-twin contract, and what every protocol's twin shares.

A twin is a simulated device that speaks the real protocol on a real socket or pty. Every
driver ships one (``drivers/<kind>/twin/``) and names it in its registry entry, so the contract
suite, ``edgegw simulate``, ``edgegw demo`` and the benchmarks stand any kind up the same way:

    cls = DRIVERS[kind].twin_class
    async with cls.create("schneider-bcpme", vars={"channels": 4}) as twin:
        device = {"id": "d1", **twin.device_config()}   # what a device config needs to reach it

What lives here, so that no twin writes it again:

* :class:`Signal` and :func:`signal_for`: values that move over time from one ``sim`` hint
  vocabulary (docs/profiles.md), always in the point's engineering unit; each twin encodes the
  engineering value to its protocol's raw form with the point's own scale and type.
* :class:`TwinClock`: the twin's notion of now, which a test can freeze, shift or accelerate.
* :class:`Faults` and :func:`faulty_reply`: silent, slow, garbage and disconnect-mid-frame, for
  the whole twin or one target (a unit id, a device instance, a meter address).
* :class:`Write`: every write or action the twin accepted, remembered for the tests.
* :func:`simulate`: the ``edgegw simulate PROFILE`` command line around any twin class.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import math
import random
import signal
import sys
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Self

from gateway.models import parse_duration
from gateway.points import ENERGY_QUANTITIES

TwinValue = float | int | bool | str

# --- the sim hint vocabulary ------------------------------------------------------------------

#: The keys of a point's ``sim`` hint every twin understands (docs/profiles.md, "Twins").
SIM_KEYS: frozenset[str] = frozenset({"value", "min", "max", "period", "rate", "text"})


def check_sim(sim: Mapping[str, Any] | None, extra: frozenset[str] = frozenset()) -> None:
    """Reject a ``sim`` hint with a key no twin of this kind understands (a typo would be silent)."""
    if not sim:
        return
    unknown = set(sim) - SIM_KEYS - extra
    if unknown:
        allowed = ", ".join(sorted(SIM_KEYS | extra))
        raise ValueError(f"sim: unknown key(s) {', '.join(sorted(unknown))} (allowed: {allowed})")


@dataclass(slots=True)
class Signal:
    """An engineering value as a function of twin time ``t`` (seconds since the twin started).

    A constant (``value``), a sine between ``minimum`` and ``maximum`` over ``period`` seconds,
    or a counter that starts at ``value`` and grows by ``rate`` per second. ``text`` is a fixed
    string.
    """

    value: TwinValue = 0
    minimum: float | None = None
    maximum: float | None = None
    period: float = 300.0
    rate: float = 0.0
    phase: float = 0.0  # radians, so that a hundred twins of one profile do not move in step
    text: str | None = None

    def at(self, t: float) -> TwinValue:
        if self.text is not None:
            return self.text
        if self.rate:
            return float(self.value) + self.rate * max(0.0, t)
        if self.minimum is not None and self.maximum is not None:
            mid = (self.minimum + self.maximum) / 2
            amp = (self.maximum - self.minimum) / 2
            return mid + amp * math.sin(2 * math.pi * t / max(self.period, 1e-3) + self.phase)
        return self.value


_LL_PHASES = frozenset({"L1-L2", "L2-L3", "L3-L1"})

# Plausible ranges per quantity, for points without a `sim` hint (engineering units).
_RANGES: dict[str, tuple[float, float]] = {
    "frequency": (49.95, 50.05),
    "power_factor": (0.8, 1.0),
    "current": (0.0, 80.0),
    "current_demand": (0.0, 60.0),
    "current_demand_max": (60.0, 80.0),
    "current_max": (60.0, 80.0),
    "leakage_current": (0.0, 0.03),
    "thd_voltage": (1.0, 4.0),
    "thd_current": (2.0, 15.0),
    "unbalance_voltage": (0.0, 2.0),
    "unbalance_current": (0.0, 10.0),
    "temperature": (22.0, 28.0),
    "humidity": (35.0, 55.0),
    "state_of_charge": (60.0, 100.0),
    "state_of_health": (85.0, 100.0),
    "internal_resistance": (0.0002, 0.0006),
    "balancing": (0.0, 5.0),
    "clock_drift": (0.0, 2.0),
    "other": (0.0, 100.0),
}
# Per-phase watts; a total is three times that.
_POWER: dict[str, tuple[float, float]] = {
    "active_power": (0.0, 18000.0),
    "active_power_demand": (0.0, 15000.0),
    "active_power_demand_max": (15000.0, 18000.0),
    "active_power_max": (15000.0, 18000.0),
    "reactive_power": (0.0, 5000.0),
    "apparent_power": (0.0, 19000.0),
}
_FIXED: dict[str, TwinValue] = {
    "breaker_state": 1,
    "status": 1,
    "cell_count": 40,
    "ct_ratio": 100,
    "rating": 100,
    "firmware": 100,
    "model": 1,
    "serial_number": 12345,
    "identity": 1,
}


def signal_for(
    sim: Mapping[str, Any] | None,
    *,
    quantity: str = "other",
    phase: str | None = None,
    kind: str = "gauge",
    value_type: str = "number",
    name: str = "",
    rng: random.Random | None = None,
) -> Signal:
    """The signal of one point: from its ``sim`` hint, else plausible for its quantity.

    ``value_type`` is ``number``, ``bool`` or ``string`` (what the protocol can carry for the
    point); ``name`` seeds the text of a string point without a hint.
    """
    rng = rng or random.Random(0)
    sim = sim or {}
    period = parse_duration(sim["period"]) if "period" in sim else rng.uniform(60, 600)
    wave_phase = rng.uniform(0, 2 * math.pi)
    counter = kind == "counter" or quantity in ENERGY_QUANTITIES or quantity in ("counter", "uptime", "traffic")
    if "text" in sim:
        return Signal(text=str(sim["text"]))
    if "rate" in sim:
        return Signal(value=float(sim.get("value", sim.get("min", 0.0))), rate=float(sim["rate"]))
    if "min" in sim or "max" in sim:
        lo = float(sim.get("min", 0.0))
        hi = float(sim.get("max", lo + 1.0))
        if counter:  # a counter given a range climbs through it once per period
            return Signal(value=lo, rate=(hi - lo) / max(period, 1e-3))
        return Signal(minimum=lo, maximum=hi, period=period, phase=wave_phase)
    if "value" in sim:
        value = sim["value"]
        return Signal(text=value) if isinstance(value, str) else Signal(value=value)
    if value_type == "string":
        return Signal(text=f"SIM {name}".strip())
    if value_type == "bool":
        return Signal(value=quantity in ("breaker_state", "status"))
    per_phase = 1.0 if phase not in ("total", "none", None) else 3.0
    if quantity in ENERGY_QUANTITIES:
        return Signal(value=rng.uniform(1e5, 1e6), rate=rng.uniform(1000, 8000) * per_phase / 3600)
    if quantity == "uptime":
        return Signal(value=rng.uniform(1e4, 1e6), rate=1.0)
    if counter:
        return Signal(value=rng.uniform(0, 1000), rate=rng.uniform(0.01, 1.0))
    if quantity == "voltage":
        lo, hi = (395.0, 405.0) if phase in _LL_PHASES else (226.0, 234.0)
        return Signal(minimum=lo, maximum=hi, period=period, phase=wave_phase)
    if kind != "state" and (quantity in _RANGES or quantity in _POWER):
        if quantity in _POWER:
            lo, hi = (x * per_phase for x in _POWER[quantity])
        else:
            lo, hi = _RANGES[quantity]
        return Signal(minimum=lo, maximum=hi, period=period, phase=wave_phase)
    return Signal(value=_FIXED.get(quantity, 0))


# --- time -------------------------------------------------------------------------------------


class TwinClock:
    """The twin's wall clock: real time by default, shifted, accelerated or frozen on demand."""

    def __init__(self, start: float | None = None, speed: float = 1.0) -> None:
        self._base = time.time() if start is None else start
        self._mono = time.monotonic()
        self.t0 = self._base
        self.speed = speed
        self.frozen = False

    def now(self) -> float:
        """Seconds since the epoch, as the twin sees them."""
        if self.frozen:
            return self._base
        return self._base + (time.monotonic() - self._mono) * self.speed

    def elapsed(self) -> float:
        """Twin seconds since the twin started: the ``t`` of :meth:`Signal.at`."""
        return self.now() - self.t0

    def set(self, t: float) -> None:
        self._base = t
        self._mono = time.monotonic()

    def advance(self, seconds: float) -> None:
        self.set(self.now() + seconds)

    def freeze(self, at: float | None = None) -> None:
        self.set(self.now() if at is None else at)
        self.frozen = True

    def run(self, speed: float | None = None) -> None:
        self.set(self.now())
        self.frozen = False
        if speed is not None:
            self.speed = speed


# --- faults -----------------------------------------------------------------------------------


class Fault(StrEnum):
    NONE = "none"
    SILENT = "silent"  # requests are read and never answered
    SLOW = "slow"  # answered after `delay` seconds
    GARBAGE = "garbage"  # answered with bytes of the right length that are not a valid reply
    DISCONNECT = "disconnect"  # half a reply, then the connection is closed (datagrams: half a reply)


@dataclass(frozen=True, slots=True)
class FaultState:
    mode: Fault = Fault.NONE
    delay: float = 0.0


_NO_FAULT = FaultState()


class Faults:
    """Fault injection for a whole twin (target None) or one of its targets (unit id, instance, ...)."""

    def __init__(self) -> None:
        self._by_target: dict[Hashable, FaultState] = {}

    def set(self, mode: Fault | str, *, delay: float = 0.0, target: Hashable | None = None) -> None:
        mode = Fault(mode)
        if mode is Fault.SLOW and delay <= 0:
            raise ValueError("a slow fault needs a delay > 0")
        if mode is Fault.NONE:
            self._by_target.pop(target, None)
        else:
            self._by_target[target] = FaultState(mode, delay)

    def clear(self, target: Hashable | None = None) -> None:
        """Clear the fault of one target, or every fault when target is None."""
        if target is None:
            self._by_target.clear()
        else:
            self._by_target.pop(target, None)

    def of(self, target: Hashable | None = None) -> FaultState:
        """The fault that applies to a target: its own, else the whole twin's."""
        if target is not None and target in self._by_target:
            return self._by_target[target]
        return self._by_target.get(None, _NO_FAULT)


@dataclass(frozen=True, slots=True)
class Reply:
    """How a faulty (or healthy) twin sends one reply: after `delay`, these bytes, then maybe close."""

    data: bytes | None
    delay: float = 0.0
    close: bool = False


def faulty_reply(fault: FaultState, reply: bytes, rng: random.Random | None = None) -> Reply:
    """What a twin under `fault` sends instead of `reply` (the one place fault semantics live)."""
    mode = fault.mode
    if mode is Fault.NONE:
        return Reply(reply)
    if mode is Fault.SILENT:
        return Reply(None)
    if mode is Fault.SLOW:
        return Reply(reply, delay=fault.delay)
    if mode is Fault.GARBAGE:
        r = rng or random.Random()
        # Same length, every byte changed: framing may survive, content (CRC, tags) does not.
        return Reply(bytes((b ^ (1 + r.randrange(255))) for b in reply) or b"\xff")
    return Reply(reply[: max(1, len(reply) // 2)], close=True)


# --- writes -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Write:
    """A write or an action the twin accepted (for the tests of commands)."""

    point: str  # point id where the twin knows it, else the protocol address ("holding:40", "0.0.1.0.0.255:2")
    value: Any  # the engineering value where the twin can tell it, else the raw value
    raw: Any = None  # the value as it came off the wire
    target: Hashable | None = None  # unit id, device instance, meter address
    priority: int | None = None  # BACnet priority
    action: bool = False  # a DLMS method / named action rather than a value write
    ts: float = field(default_factory=time.time)


# --- the twin ---------------------------------------------------------------------------------


class Twin(abc.ABC):
    """Base of every device twin: start/stop, clock, faults, remembered writes, the CLI hooks.

    Subclasses implement :meth:`create` (the one factory signature of the registry),
    :meth:`start`, :meth:`stop`, :meth:`device_config`, :meth:`describe`, :meth:`value` and
    :meth:`set_value`; they apply ``self.faults.of(target)`` to every reply (see
    :func:`faulty_reply`) and append to ``self.writes`` for every write they accept.
    """

    kind: ClassVar[str]
    #: The profile the contract suite, the demo and the benchmarks use when they name none.
    default_profile: ClassVar[str]
    default_vars: ClassVar[Mapping[str, Any]] = {}
    #: Kind-specific ``sim`` keys beyond :data:`SIM_KEYS` (DLMS: type, scaler, capture_period...).
    sim_extras: ClassVar[frozenset[str]] = frozenset()
    #: What ``edgegw demo`` runs of this kind: profile name, vars, twin options, points to show.
    demo: ClassVar[Sequence[DemoDevice]] = ()

    def __init__(self, *, clock: TwinClock | None = None, seed: int | None = 0) -> None:
        self.clock = clock or TwinClock()
        self.faults = Faults()
        self.writes: list[Write] = []
        self.rng = random.Random(seed)

    @classmethod
    @abc.abstractmethod
    def create(
        cls,
        profile: str | Path | None = None,
        *,
        points: Sequence[Mapping[str, Any]] | None = None,
        vars: Mapping[str, Any] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        **options: Any,
    ) -> Self:
        """A twin of a profile (name or path) or of inline points, listening on host:port (0: free)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Open the socket or pty and serve; after it, :meth:`device_config` tells where."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop serving and close every connection (idempotent)."""

    @abc.abstractmethod
    def device_config(self, target: Hashable | None = None) -> dict[str, Any]:
        """The device config keys (driver, profile, vars, address) that reach this twin (or one target)."""

    def section_config(self) -> dict[str, Any] | None:
        """The kind's gateway section a client of this twin needs (BACnet's local address), or None."""
        return None

    @abc.abstractmethod
    def describe(self) -> str:
        """One line: what is served where (``edgegw simulate`` prints it)."""

    @abc.abstractmethod
    def value(self, point: str, target: Hashable | None = None) -> Any:
        """The engineering value a point shows now."""

    @abc.abstractmethod
    def set_value(self, point: str, value: Any, target: Hashable | None = None) -> None:
        """Pin a point to a value (it stops moving) until the twin is told otherwise."""

    def record_write(self, write: Write) -> None:
        self.writes.append(write)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    # -- the command line ----------------------------------------------------------------------

    @classmethod  # noqa: B027 - an optional hook, empty by default
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Kind-specific options of ``edgegw simulate`` (units, framing, serial line, ...)."""

    @classmethod
    def options_from_args(cls, args: argparse.Namespace) -> dict[str, Any]:
        """The ``create`` options the kind-specific arguments ask for."""
        return {}


@dataclass(frozen=True, slots=True)
class DemoDevice:
    """One device of ``edgegw demo``: a twin of `profile` and the points the screen shows."""

    id: str
    profile: str
    vars: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)  # create() options (units, transport, ...)
    config: Mapping[str, Any] = field(default_factory=dict)  # extra device keys (interval, tags, ...)
    show: Sequence[str] = ()


# --- edgegw simulate --------------------------------------------------------------------------


def parse_var(text: str) -> tuple[str, int | float | str]:
    """``--var name=value``: a number where it reads as one, else text."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError("use --var name=value")
    for conv in (int, float):
        try:
            return name, conv(value)
        except ValueError:
            pass
    return name, value


def simulate_parser(cls: type[Twin], profile_ref: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=f"edgegw simulate {profile_ref}",
        description=f"Serve a {cls.kind} device twin of the profile until interrupted.",
    )
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=0, help="port to listen on (default 0: a free one, printed)")
    ap.add_argument("--var", action="append", type=parse_var, default=[], help="profile variable, name=value")
    ap.add_argument("--fault", choices=[f.value for f in Fault], default="none", help="inject a fault")
    ap.add_argument("--fault-delay", default="2s", help="reply delay of --fault slow (default 2s)")
    ap.add_argument("--speed", type=float, default=1.0, help="twin clock speed (default 1: real time)")
    ap.add_argument("--seed", type=int, default=None, help="random seed of the value shapes")
    ap.add_argument("--duration", default="0", help="stop after this long (default 0: until Ctrl-C)")
    cls.add_arguments(ap)
    return ap


def simulate(cls: type[Twin], profile_ref: str, argv: list[str]) -> int:
    """``edgegw simulate PROFILE [options]``: serve a twin of the profile until interrupted."""
    args = simulate_parser(cls, profile_ref).parse_args(argv)
    try:
        twin = cls.create(
            profile_ref,
            vars=dict(args.var),
            host=args.host,
            port=args.port,
            seed=args.seed,
            **cls.options_from_args(args),
        )
        twin.clock.run(args.speed)
        if args.fault != "none":
            twin.faults.set(args.fault, delay=parse_duration(args.fault_delay))
        duration = parse_duration(args.duration)
    except Exception as exc:  # noqa: BLE001 - any profile or argument problem is one line and exit 2
        print(f"edgegw simulate: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(twin, duration))
    except KeyboardInterrupt:
        return 0


async def _serve(twin: Twin, duration: float) -> int:
    try:
        await twin.start()
    except OSError as exc:
        print(f"edgegw simulate: cannot serve: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    print(f"simulating {twin.describe()}; Ctrl-C stops", flush=True)
    try:
        if duration > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(duration):
                    await stop.wait()
        else:
            await stop.wait()
    finally:
        await twin.stop()
    return 0
