"""The SNMP device twin: a pysnmp agent serving a profile's points, taking SETs, sending notifications.

``edgegw simulate schneider-bcpme-snmp --port 1161`` serves every point of the profile over
v1/v2c/v3 with values that move over time, plus the MIB-2 system group; the tests use
:meth:`SnmpTwin.create` (see its class docstring for the whole API).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import math
import os
import socket
import struct
import sys
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import ValidationError
from pysnmp.carrier.asyncio.dgram import udp, udp6
from pysnmp.entity import config as pconfig
from pysnmp.entity.engine import SnmpEngine
from pysnmp.entity.rfc3413 import cmdrsp
from pysnmp.entity.rfc3413 import context as rcontext
from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    NotificationType,
    ObjectIdentity,
    ObjectType,
    UdpTransportTarget,
    send_notification,
)
from pysnmp.proto import rfc1902, rfc1905
from pysnmp.smi import error as smi_error

from drivers.snmp import codec
from drivers.snmp.client import AUTH, PRIV, from_value, to_value, usm_user
from drivers.snmp.codec import Oid, Value, format_oid, parse_oid
from drivers.snmp.config import (
    AUTH_ALIASES,
    PRIV_ALIASES,
    TYPE_ALIASES,
    SnmpPoint,
    is_symbolic,
    norm_protocol,
    split_listen,
)
from gateway.driver import PointError
from gateway.models import parse_duration
from gateway.points import Kind
from gateway.profiles import expand, load_profile, resolve_profile_path
from gateway.twin import (
    DemoDevice,
    Fault,
    FaultState,
    Signal,
    Twin,
    TwinValue,
    Write,
    check_sim,
    faulty_reply,
    signal_for,
)

BCPME_ROOT: Oid = (1, 3, 6, 1, 4, 1, 3833, 1, 30)
DEFAULT_TRAP_OID: Oid = (*BCPME_ROOT, 0, 1)
SYSTEM: Oid = (1, 3, 6, 1, 2, 1, 1)
SYS_UPTIME: Oid = (*SYSTEM, 3, 0)

#: Environment variables :meth:`SnmpTwin.device_config` names for the twin's secrets (set by the
#: twin when it is made; a second twin with another secret gets ``..._2``, ``..._3``...).
COMMUNITY_ENV = "EDGEGW_TWIN_COMMUNITY"
AUTH_KEY_ENV = "EDGEGW_TWIN_AUTH_KEY"
PRIV_KEY_ENV = "EDGEGW_TWIN_PRIV_KEY"

_READ_INDEX = "twin-read"  # pysnmp community index (= security name) of the read community
_WRITE_INDEX = "twin-write"

Payload = int | bytes | Oid

_SYNTAX_OF_TYPE = {
    "integer": codec.INTEGER,
    "gauge32": codec.GAUGE32,
    "counter32": codec.COUNTER32,
    "counter64": codec.COUNTER64,
    "timeticks": codec.TIMETICKS,
    "octets": codec.OCTETS,
    "ipaddress": codec.IPADDRESS,
    "oid": codec.OBJECT_ID,
    "opaque": codec.OPAQUE,
}
_CLAMPED = {codec.INTEGER: (-(2**31), 2**31 - 1), codec.GAUGE32: (0, 2**32 - 1)}
# Real agents wrap these instead of saturating (sysUpTime wraps after 497 days).
_WRAPPED = {codec.COUNTER32: 32, codec.COUNTER64: 64, codec.TIMETICKS: 32}
_TEXT_SYNTAXES = frozenset({codec.OCTETS, codec.IPADDRESS, codec.OBJECT_ID})


@dataclass(frozen=True, slots=True)
class V3User:
    """An SNMPv3 user of the twin (keys are passphrases of at least 8 characters)."""

    user: str
    auth_key: str | None = None
    priv_key: str | None = None
    auth_protocol: str = "SHA-256"
    priv_protocol: str = "AES-128"
    read_only: bool = False  # a SET from a read-only user is answered noAccess


DEFAULT_V3_USER = V3User("edgegw", "edgegw-twin-auth", "edgegw-twin-priv")


@dataclass(slots=True)
class _Counter:
    """A running counter in raw units, exact in integers (a Counter64 does not fit a float)."""

    base: int
    per_second: float
    origin: float  # twin time at which the counter was `base`

    def at(self, t: float) -> int:
        return self.base + math.floor(self.per_second * max(0.0, t - self.origin))


@dataclass(slots=True)
class _Entry:
    """What the agent serves at one OID: a pinned value, else a counter, the uptime or a signal."""

    syntax: str
    point: SnmpPoint | None = None
    signal: Signal | None = None
    counter: _Counter | None = None
    uptime: bool = False  # ticks since the agent (re)started
    pinned: Payload | None = None


def _syntax(name: str) -> str:
    key = name.strip().lower()
    key = TYPE_ALIASES.get(key, key)
    if key in _SYNTAX_OF_TYPE:
        return _SYNTAX_OF_TYPE[key]
    if name in codec.SYNTAX_TYPES:
        return name
    raise ValueError(f"unknown SNMP type {name!r}")


def _as_oid(oid: str | Sequence[int]) -> Oid:
    return parse_oid(oid) if isinstance(oid, str) else tuple(int(a) for a in oid)


def _looks_like_oid(text: str) -> bool:
    return all(part.isdigit() for part in text.lstrip(".").split("."))


def _fit(syntax: str, number: int) -> int:
    if syntax in _WRAPPED:
        return number % (1 << _WRAPPED[syntax])
    lo, hi = _CLAMPED.get(syntax, (-(2**63), 2**64 - 1))
    return min(max(number, lo), hi)


def _payload(syntax: str, value: Any) -> Payload:
    """A raw Python value as the payload of an SNMP syntax (wrapped or clamped to its range)."""
    if syntax in (codec.OCTETS, codec.OPAQUE, codec.BITS):
        return value if isinstance(value, bytes) else str(value).encode()
    if syntax == codec.IPADDRESS:
        if isinstance(value, bytes):
            return value
        parts = str(value).split(".")
        if len(parts) != 4:
            raise ValueError(f"not an IPv4 address: {value!r}")
        return bytes(int(p) for p in parts)
    if syntax == codec.OBJECT_ID:
        return _as_oid(value)
    if isinstance(value, str):
        value = float(value)
    # ints stay exact (a Counter64 does not fit a float's 53 bits)
    number = value if isinstance(value, int) and not isinstance(value, bool) else round(float(value))
    return _fit(syntax, int(number))


def _point_syntax(point: SnmpPoint) -> str:
    if point.type is not None:
        return _SYNTAX_OF_TYPE[point.type]
    sim = point.sim or {}
    if isinstance(sim.get("value"), str) or "text" in sim:
        return codec.OCTETS
    if point.kind is Kind.COUNTER or point.rate:
        return codec.COUNTER32
    if point.quantity == "uptime":
        return codec.TIMETICKS
    return codec.INTEGER


def _numeric(point: SnmpPoint | None, syntax: str) -> bool:
    """Whether the point's engineering value is a number (an octets point may carry one as text)."""
    if syntax in _TEXT_SYNTAXES:
        return syntax == codec.OCTETS and point is not None and point.format == "number"
    return True


def _to_raw(point: SnmpPoint | None, value: float | int) -> float | int:
    if point is None or (point.scale == 1 and point.offset == 0):
        return value
    return (value - point.offset) / point.scale


def _scaled(point: SnmpPoint | None, raw: int | float) -> int | float:
    """raw x scale + offset, without float noise (1234 x 0.01 is 12.34)."""
    if point is None or (point.scale == 1 and point.offset == 0):
        return raw
    return float(Fraction(raw) * Fraction(str(point.scale)) + Fraction(str(point.offset)))


def _number_text(raw: float | int) -> str:
    return str(raw) if isinstance(raw, int) else f"{raw:.6g}"


def _claim_env(name: str, value: str) -> str:
    """Set `name` (or the first free ``name_N``) to `value` and return the name used."""
    candidate, n = name, 1
    while os.environ.get(candidate, value) != value:
        n += 1
        candidate = f"{name}_{n}"
    os.environ[candidate] = value
    return candidate


class _Store:
    """The agent's data: a sorted OID -> entry map answering GET, GETNEXT (GETBULK uses GETNEXT) and SET."""

    def __init__(self, twin: SnmpTwin) -> None:
        self.twin = twin
        self.keys: list[Oid] = []
        self.entries: dict[Oid, _Entry] = {}

    def put(self, oid: Oid, entry: _Entry) -> None:
        if oid not in self.entries:
            bisect.insort(self.keys, oid)
        self.entries[oid] = entry

    def remove(self, oid: Oid) -> None:
        if self.entries.pop(oid, None) is not None:
            self.keys.remove(oid)

    def _pysnmp(self, oid: Oid) -> Any:
        value = self.twin.raw_value(oid)
        return from_value(value if value is not None else Value(codec.NO_SUCH_INSTANCE))

    # pysnmp's instrumentation interface (the context of the twin's responders)

    def read_variables(self, *var_binds: Any, **_context: Any) -> list[tuple[Any, Any]]:
        limit = self.twin.max_get_varbinds
        if limit is not None and len(var_binds) > limit:
            raise smi_error.TooBigError()
        return [(name, self._pysnmp(tuple(name))) for name, _ in var_binds]

    def read_next_variables(self, *var_binds: Any, **_context: Any) -> list[tuple[Any, Any]]:
        out: list[tuple[Any, Any]] = []
        for name, _ in var_binds:
            i = bisect.bisect_right(self.keys, tuple(name))
            if i < len(self.keys):
                oid = self.keys[i]
                out.append((rfc1902.ObjectName(oid), self._pysnmp(oid)))
            else:
                out.append((name, rfc1905.endOfMibView))
        return out

    def write_variables(self, *var_binds: Any, **context: Any) -> list[tuple[Any, Any]]:
        return self.twin._set(var_binds, context["snmpEngine"])


class _FaultyUdp:
    """Mixed into pysnmp's UDP transport: every datagram sent while answering one goes through the fault."""

    twin: SnmpTwin
    loop: asyncio.AbstractEventLoop
    _callback_function: Any

    def datagram_received(self, datagram: bytes, address: Any) -> None:
        self.loop.call_soon(self._answer, address, datagram)

    def _answer(self, address: Any, datagram: bytes) -> None:
        # pysnmp answers a request synchronously inside this callback (reports, responses, errors),
        # so the fault that applies to this datagram's reply is known for the length of the call.
        twin = self.twin
        twin._reply_fault = twin.faults.of(None)
        try:
            if self._callback_function is not None:
                self._callback_function(self, address, datagram)
        finally:
            twin._reply_fault = None

    def send_message(self, message: bytes, address: Any) -> None:
        fault = self.twin._reply_fault
        if fault is None or fault.mode is Fault.NONE:
            super().send_message(message, address)  # type: ignore[misc]
            return
        reply = faulty_reply(fault, bytes(message), self.twin.rng)
        if reply.data is None:
            return
        if reply.delay > 0:
            handle = self.loop.call_later(reply.delay, self._late, reply.data, address)
            self.twin._late.add(handle)
        else:
            super().send_message(reply.data, address)  # type: ignore[misc]

    def _late(self, data: bytes, address: Any) -> None:
        now = self.loop.time()
        self.twin._late = {h for h in self.twin._late if h.when() > now}
        with contextlib.suppress(Exception):  # the twin may have stopped meanwhile
            super().send_message(data, address)  # type: ignore[misc]


class _Udp(_FaultyUdp, udp.UdpAsyncioTransport):  # type: ignore[misc]
    pass


class _Udp6(_FaultyUdp, udp6.Udp6AsyncioTransport):  # type: ignore[misc]
    pass


class SnmpTwin(Twin):
    """A live SNMP agent (v1, v2c, v3 USM) for tests, demos and ``edgegw simulate``.

    Make one with :meth:`create` (a profile by name or path, or inline ``points``), serve it with
    ``async with``; :meth:`device_config` is what a device config needs to poll it.

    Values: every point serves the signal of its ``sim`` hint (:func:`gateway.twin.signal_for`,
    engineering units), encoded to the agent's raw value with the point's ``scale`` and ``offset``
    and its SNMP type (``type``, else guessed: octets for text, Counter32 for counters, TimeTicks
    for uptime, else Integer32). Integer32 and Gauge32 saturate at their range. A TimeTicks point
    without a hint serves the agent's uptime. Time is ``self.clock`` (freeze, advance, speed up).

    Counters behave like a real agent's:

    * Counter32 is served modulo 2**32 and Counter64 modulo 2**64, so a fast counter wraps (exact
      integers: a Counter64 near 2**64 keeps its low digits). TimeTicks wrap at 2**32 too.
    * ``set_counter(point, value, rate=None)``: the counter is `value` now and keeps counting (at
      `rate` per second when given) -- start one just below the wrap and let it run, or
      ``clock.advance()`` it across.
    * ``set_value(point, value)`` pins a counter (it stops counting) until ``release(point)``.
    * ``restart(counter_value=0)``: an agent restart. sysUpTime (and hint-less TimeTicks points)
      start again from 0, every counter is `counter_value` (pinned ones stay pinned, at that
      value) and running ones count on from there; ``restarts`` counts them.

    A point is named by its id (values in engineering units) or by its OID (raw agent values,
    optionally with ``syntax=`` for a new OID): ``value``, ``set_value``, ``release``,
    ``set_counter``, ``raw_value`` (a :class:`~drivers.snmp.codec.Value`, e.g. for trap
    varbinds), ``delete`` (the OID then answers noSuchInstance), ``oids()``.

    Access: v1/v2c with ``community`` (read, default "public") and ``write_community`` (read and
    SET, default "private"; ``community=None`` turns v1/v2c off), v3 with ``users`` (a
    :class:`V3User` may be ``read_only``; ``version="3"`` without users adds
    ``DEFAULT_V3_USER``). ``device_config()`` gives the version asked for at create
    (``version``): the community through ``community_env`` (the twin sets the variable
    ``EDGEGW_TWIN_COMMUNITY``, or ``EDGEGW_TWIN_COMMUNITY_2``... when another twin of the process
    holds another community), or for v3 the first user with ``auth_key_env`` / ``priv_key_env``
    (``EDGEGW_TWIN_AUTH_KEY`` / ``EDGEGW_TWIN_PRIV_KEY``, same rule).

    SET: OIDs in ``writable`` (point ids or OIDs; ``"all"``: every scalar point, OID ending in
    .0, that is not a counter or an uptime) accept a SET of their own type; the value is pinned
    (GET answers it) and recorded in ``self.writes`` as a :class:`~gateway.twin.Write` (point id,
    engineering value, raw value, target None). The rest is answered as a real agent does:
    noAccess for a read community or a read-only user, notWritable for other OIDs, wrongType for a
    value of another type, wrongValue outside ``limits`` (engineering (lo, hi) per point id or OID)
    or for text that is not a number on a ``format: number`` point. A SET is all or nothing.

    Faults: ``self.faults.set(mode)`` applies to every reply datagram of the agent (silent, slow,
    garbage, disconnect = half a datagram); ``target=`` a community or a v3 user name limits it to
    the requests of that community or user. ``silence_after(n)`` answers n more requests, then
    goes silent. ``requests`` counts requests by kind (get, getnext, getbulk, set). A SET that
    arrives under a fault is applied; only its reply suffers. Notifications are not faulted.

    Notifications: ``await send_trap(target, ...)`` sends a trap (or an inform, acknowledged);
    with ``trap_target`` given at create the twin sends one every ``trap_every`` itself.
    """

    kind: ClassVar[str] = "snmp"
    default_profile: ClassVar[str] = "schneider-bcpme-snmp"
    default_vars: ClassVar[Mapping[str, Any]] = {"panels": 1, "channels": 4}
    demo: ClassVar[Sequence[DemoDevice]] = (
        DemoDevice(
            id="bcpme-3-snmp",
            profile="schneider-bcpme-snmp",
            vars={"panels": 1},
            config={"interval": "2s", "timeout": "1s", "version": "2c"},
            show=("panel1.mains.frequency", "panel1.ch1.current"),
        ),
    )

    def __init__(
        self,
        points: Sequence[SnmpPoint] = (),
        *,
        name: str = "empty",
        profile: str | None = None,
        profile_vars: Mapping[str, Any] | None = None,
        inline_points: Sequence[Mapping[str, Any]] | None = None,
        skipped: Sequence[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        version: str = "2c",
        community: str | None = "public",
        write_community: str | None = "private",
        users: Sequence[V3User] = (),
        writable: str | Iterable[str] = (),
        limits: Mapping[str, tuple[float, float]] | None = None,
        community_env: str = COMMUNITY_ENV,
        engine_id: str | None = None,
        max_get_varbinds: int | None = None,
        max_bulk_varbinds: int = 64,
        sys_object_id: str = "1.3.6.1.4.1.3833.1.30",
        trap_target: str | tuple[str, int] | None = None,
        trap_every: float = 10.0,
        trap_version: str = "2c",
        inform: bool = False,
        seed: int | None = 0,
    ) -> None:
        super().__init__(seed=seed)
        version = str(version).lower().removeprefix("v")
        version = "2c" if version == "2" else version
        if version not in ("1", "2c", "3"):
            raise ValueError(f"SNMP version {version!r}: use 1, 2c or 3")
        users = list(users)
        if version == "3" and not users:
            users = [DEFAULT_V3_USER]
        if version != "3" and community is None:
            raise ValueError(f"SNMPv{version} needs a community")
        self.name = name
        self.profile = profile
        self.profile_vars = dict(profile_vars or {})
        self.inline_points = [dict(p) for p in inline_points] if inline_points is not None else None
        self.points = list(points)
        self.skipped = list(skipped)
        self.host = host
        self.requested_port = port
        self.port = 0
        self.version = version
        self.community = community
        self.write_community = write_community if community is not None else None
        self.v3_users = users
        self.requested_engine_id = engine_id
        self.max_get_varbinds = max_get_varbinds
        self.max_bulk_varbinds = max_bulk_varbinds
        self.sys_object_id = parse_oid(sys_object_id)
        self.trap_target = trap_target
        self.trap_every = trap_every
        self.trap_version = trap_version
        self.inform = inform
        self.requests: Counter[str] = Counter()
        self.restarts = 0
        self._silent_after: int | None = None
        self._boot = 0.0  # twin time of the last (re)start of the agent
        self._store = _Store(self)
        self._by_id: dict[str, SnmpPoint] = {}
        self._engine: Any = None
        self._trap_task: asyncio.Task[None] | None = None
        self._reply_fault: FaultState | None = None
        self._late: set[asyncio.TimerHandle] = set()
        self._serve_points()
        self._system_group()
        self.writable = self._writable_oids(writable)
        self.limits = {self._oid_of(k): (float(lo), float(hi)) for k, (lo, hi) in (limits or {}).items()}
        self.community_env: str | None = None
        self.auth_key_env: str | None = None
        self.priv_key_env: str | None = None
        if version == "3":
            user = users[0]
            if user.auth_key is not None:
                self.auth_key_env = _claim_env(AUTH_KEY_ENV, user.auth_key)
            if user.priv_key is not None:
                self.priv_key_env = _claim_env(PRIV_KEY_ENV, user.priv_key)
        else:
            assert community is not None
            self.community_env = _claim_env(community_env, community)

    # --- the registry's factory --------------------------------------------------------

    @classmethod
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
        """A twin of a profile (name or path), or of inline points, or of the system group only.

        Options: ``version`` ("1", "2c", "3"), ``community``, ``write_community``, ``users``
        (:class:`V3User`), ``writable``, ``limits``, ``community_env``, ``engine_id``,
        ``max_get_varbinds``, ``max_bulk_varbinds``, ``sys_object_id``, ``trap_target``,
        ``trap_every`` (seconds or "10s"), ``trap_version``, ``inform``, ``seed``.
        """
        if profile is not None and points is not None:
            raise ValueError("give a profile or points, not both")
        raw: list[dict[str, Any]] = []
        name = "empty"
        profile_ref: str | None = None
        env = dict(vars or {})
        if profile is not None:
            loaded = load_profile(resolve_profile_path(str(profile), "snmp"))
            name = loaded.name
            profile_ref = str(profile)
            raw = [p for p, _file, _line in expand(loaded.points, {**loaded.vars, **env})]
        elif points is not None:
            name = "inline points"
            raw = [p for p, _file, _line in expand(list(points), env)]
        parsed: list[SnmpPoint] = []
        skipped: list[str] = []
        for item in raw:
            if item.get("calc") is not None:
                continue  # a calculated point: the gateway computes it, the agent serves its inputs
            try:
                point = SnmpPoint.model_validate(item)
            except ValidationError as exc:
                raise ValueError(f"{name}: point {item.get('id')!r}: {exc}") from None
            if is_symbolic(point.oid):
                skipped.append(point.id)  # a MIB symbol: the twin serves numeric OIDs only
                continue
            parsed.append(point)
        if "trap_every" in options and isinstance(options["trap_every"], str):
            options["trap_every"] = parse_duration(options["trap_every"])
        return cls(
            parsed,
            name=name,
            profile=profile_ref,
            profile_vars=env if profile_ref is not None else None,
            inline_points=raw if points is not None else None,
            skipped=skipped,
            host=host,
            port=port,
            **options,
        )

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def engine_id(self) -> str:
        """The agent's snmpEngineID in hex (what a receiver of its v3 traps must know)."""
        return bytes(self._engine.snmpEngineID.asOctets()).hex() if self._engine is not None else ""

    async def start(self) -> None:
        if self._engine is not None:
            return
        v6 = ":" in self.host
        sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.host, self.requested_port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self.port = int(sock.getsockname()[1])
        engine_id = rfc1902.OctetString(hexValue=self.requested_engine_id) if self.requested_engine_id else None
        engine = SnmpEngine(snmpEngineID=engine_id) if engine_id is not None else SnmpEngine()
        transport: Any = (_Udp6 if v6 else _Udp)()
        transport.twin = self
        domain = udp6.DOMAIN_NAME if v6 else udp.DOMAIN_NAME
        pconfig.add_transport(engine, domain, transport.open_server_mode(sock=sock))
        if self.community is not None:
            pconfig.add_v1_system(engine, _READ_INDEX, self.community)
        if self.write_community is not None:
            pconfig.add_v1_system(engine, _WRITE_INDEX, self.write_community)
        for user in self.v3_users:
            pconfig.add_v3_user(
                engine,
                user.user,
                AUTH[norm_protocol(user.auth_protocol, AUTH_ALIASES)] if user.auth_key else pconfig.USM_AUTH_NONE,
                user.auth_key,
                PRIV[norm_protocol(user.priv_protocol, PRIV_ALIASES)] if user.priv_key else pconfig.USM_PRIV_NONE,
                user.priv_key,
            )
        snmp_context = rcontext.SnmpContext(engine)
        # The default context serves this twin's store instead of pysnmp's own MIB tree.
        snmp_context.unregister_context_name(b"")
        snmp_context.register_context_name(b"", self._store)
        for base, kind in (
            (cmdrsp.GetCommandResponder, "get"),
            (cmdrsp.NextCommandResponder, "getnext"),
            (cmdrsp.BulkCommandResponder, "getbulk"),
            (cmdrsp.SetCommandResponder, "set"),
        ):
            responder = self._responder(base, kind)(engine, snmp_context)
            if kind == "getbulk":
                responder.max_varbinds = self.max_bulk_varbinds
        engine.transport_dispatcher.job_started(1)
        self._engine = engine
        if self.trap_target is not None:
            self._trap_task = asyncio.create_task(self._send_periodically())

    def _responder(self, base: Any, kind: str) -> Any:
        twin = self

        class Responder(base):  # type: ignore[misc]
            def handle_management_operation(self, engine: Any, *args: Any) -> None:
                twin._on_request(kind, engine)
                super().handle_management_operation(engine, *args)

        return Responder

    def _on_request(self, kind: str, engine: Any) -> None:
        self.requests[kind] += 1
        if self._silent_after is not None:
            if self._silent_after <= 0:
                self._silent_after = None
                self.faults.set(Fault.SILENT)
            else:
                self._silent_after -= 1
        if self._reply_fault is not None:  # a fault of this community or user, else the twin's
            self._reply_fault = self.faults.of(self._requester(engine)[1])

    async def stop(self) -> None:
        task, self._trap_task = self._trap_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for handle in self._late:
            handle.cancel()
        self._late.clear()
        engine, self._engine = self._engine, None
        if engine is not None:
            with contextlib.suppress(Exception):
                engine.transport_dispatcher.job_finished(1)
                engine.close_dispatcher()

    # --- the Twin contract ---------------------------------------------------------------

    def device_config(self, target: Hashable | None = None) -> dict[str, Any]:
        """Driver, profile (or points), host, port, version and credentials (through env variables)."""
        if target is not None:
            raise ValueError("an SNMP twin is one agent: it has no targets")
        if not self.port:
            raise RuntimeError("the twin is not started: its port is not known yet")
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        cfg: dict[str, Any] = {"driver": "snmp"}
        if self.profile is not None:
            cfg["profile"] = self.profile
            cfg["profile_vars"] = dict(self.profile_vars)
        elif self.inline_points is not None:
            cfg["points"] = [dict(p) for p in self.inline_points]
        cfg.update(host=host, port=self.port, version=self.version)
        if self.version == "3":
            user = self.v3_users[0]
            cfg["user"] = user.user
            if self.auth_key_env is not None:
                cfg.update(
                    auth_protocol=norm_protocol(user.auth_protocol, AUTH_ALIASES), auth_key_env=self.auth_key_env
                )
            if self.priv_key_env is not None:
                cfg.update(
                    priv_protocol=norm_protocol(user.priv_protocol, PRIV_ALIASES), priv_key_env=self.priv_key_env
                )
        else:
            cfg["community_env"] = self.community_env
        return cfg

    def describe(self) -> str:
        versions = (["v1", "v2c"] if self.community is not None else []) + (["v3"] if self.v3_users else [])
        where = f"udp {self.host}:{self.port or self.requested_port}"
        return (
            f"SNMP twin of {self.name}: {len(self.points)} points on {where} "
            f"({', '.join(versions) or 'no access'}; engine id {self.engine_id or 'not started'})"
        )

    def value(self, point: str, target: Hashable | None = None) -> Any:
        """A point's engineering value now (by id), or the agent's decoded raw value (by OID)."""
        oid, pt = self._lookup(point)
        entry = self._store.entries.get(oid)
        if entry is None:
            raise KeyError(f"nothing is served at {format_oid(oid)}")
        return self._decoded(entry, pt, self._payload_now(entry))

    def set_value(self, point: str, value: Any, target: Hashable | None = None, *, syntax: str | None = None) -> None:
        """Pin a point (by id: engineering value) or an OID (raw value; `syntax` like "gauge32" for a new one)."""
        oid, pt = self._lookup(point)
        entry = self._store.entries.get(oid)
        if pt is not None and entry is not None and syntax is None:
            entry.pinned = self._encode(entry.syntax, pt, value)
            return
        name = _syntax(syntax) if syntax is not None else None
        if entry is not None and (name is None or name == entry.syntax):
            entry.pinned = _payload(entry.syntax, value)
            return
        if name is None:
            name = codec.OCTETS if isinstance(value, str | bytes) else codec.INTEGER
        self._store.put(oid, _Entry(name, point=entry.point if entry else None, pinned=_payload(name, value)))

    # --- more control for tests ----------------------------------------------------------

    def release(self, point: str) -> None:
        """Undo :meth:`set_value`: the point follows its signal (or counts) again."""
        oid, _pt = self._lookup(point)
        entry = self._store.entries.get(oid)
        if entry is not None:
            entry.pinned = None

    def set_counter(self, point: str, value: int | float, *, rate: float | None = None) -> None:
        """A counter is `value` now and counts on (per second: `rate`, else its own), unpinned.

        By point id in engineering units, by OID in raw units.
        """
        oid, pt = self._lookup(point)
        entry = self._store.entries.get(oid)
        if entry is None or entry.syntax not in codec.COUNTER_BITS:
            raise ValueError(f"{point!r} is not a counter of this twin")
        raw = _to_raw(pt, value)
        base = raw if isinstance(raw, int) else round(raw)
        if entry.counter is None:
            entry.counter = _Counter(0, 0.0, 0.0)
        if rate is not None:
            entry.counter.per_second = float(rate) if pt is None else rate / (pt.scale or 1.0)
        entry.counter.base = base
        entry.counter.origin = self.clock.elapsed()
        entry.pinned = None

    def restart(self, counter_value: int = 0) -> None:
        """An agent restart: sysUpTime from 0 again and every counter at `counter_value` (raw)."""
        now = self.clock.elapsed()
        self._boot = now
        self.restarts += 1
        for entry in self._store.entries.values():
            if entry.syntax not in codec.COUNTER_BITS:
                continue
            if entry.counter is not None:
                entry.counter.base = counter_value
                entry.counter.origin = now
            if entry.pinned is not None or entry.counter is None:
                entry.pinned = _fit(entry.syntax, counter_value)

    def silence_after(self, requests: int) -> None:
        """Answer `requests` more requests, then go silent (``faults.set("silent")``)."""
        self._silent_after = requests

    def raw_value(self, oid: str | Sequence[int]) -> Value | None:
        """What the agent answers now at an OID (or a point id), as a codec Value; None when nothing is there."""
        key = self._lookup(oid)[0] if isinstance(oid, str) else _as_oid(oid)
        entry = self._store.entries.get(key)
        if entry is None:
            return None
        return Value(entry.syntax, self._payload_now(entry))

    def delete(self, oid: str | Sequence[int]) -> None:
        """Remove an OID (or a point id's OID): GET then answers noSuchInstance."""
        self._store.remove(self._lookup(oid)[0] if isinstance(oid, str) else _as_oid(oid))

    def oids(self) -> list[Oid]:
        return list(self._store.keys)

    # --- values ---------------------------------------------------------------------------

    def _serve_points(self) -> None:
        for point in self.points:
            try:
                check_sim(point.sim, self.sim_extras)
            except ValueError as exc:
                raise ValueError(f"{self.name}: point {point.id!r}: {exc}") from None
            self._by_id.setdefault(point.id, point)
            oid = parse_oid(point.oid)
            if oid in self._store.entries:
                continue  # a second point on one OID (a counter and its rate) reads the first's entry
            if oid[: len(SYSTEM)] == SYSTEM and not point.sim:
                continue  # the twin's own system group answers these
            self._store.put(oid, self._entry_for(point))

    def _entry_for(self, point: SnmpPoint) -> _Entry:
        syntax = _point_syntax(point)
        sim = dict(point.sim or {})
        if syntax == codec.TIMETICKS and not sim:
            return _Entry(syntax, point=point, uptime=True)
        if syntax in (codec.IPADDRESS, codec.OBJECT_ID) and "value" not in sim and "text" not in sim:
            default = "0.0.0.0" if syntax == codec.IPADDRESS else format_oid(self.sys_object_id)
            return _Entry(syntax, point=point, signal=Signal(text=default))
        counter = syntax in codec.COUNTER_BITS
        signal = signal_for(
            sim,
            quantity=point.quantity,
            phase=point.phase,
            kind=Kind.COUNTER.value if counter else point.kind.value,
            value_type="number" if _numeric(point, syntax) else "string",
            name=point.id,
            rng=self.rng,
        )
        if counter and signal.text is None:
            start = sim.get("value")
            exact = start if isinstance(start, int) and not isinstance(start, bool) else None
            base = exact if exact is not None and point.scale == 1 and point.offset == 0 else None
            if base is None:
                base = round(_to_raw(point, float(signal.value)))
            per_second = signal.rate / (point.scale or 1.0)
            return _Entry(syntax, point=point, counter=_Counter(base, per_second, 0.0))
        return _Entry(syntax, point=point, signal=signal)

    def _system_group(self) -> None:
        descr = f"edgegw SNMP twin of {self.name}"
        defaults: dict[int, _Entry] = {
            1: _Entry(codec.OCTETS, signal=Signal(text=descr)),
            2: _Entry(codec.OBJECT_ID, signal=Signal(text=format_oid(self.sys_object_id))),
            3: _Entry(codec.TIMETICKS, uptime=True),
            4: _Entry(codec.OCTETS, signal=Signal(text="edgegw")),
            5: _Entry(codec.OCTETS, signal=Signal(text="twin")),
            6: _Entry(codec.OCTETS, signal=Signal(text="lab")),
            7: _Entry(codec.INTEGER, signal=Signal(value=72)),
        }
        for arc, entry in defaults.items():
            oid = (*SYSTEM, arc, 0)
            if oid not in self._store.entries:
                entry.point = self._point_at(oid)
                self._store.put(oid, entry)

    def _point_at(self, oid: Oid) -> SnmpPoint | None:
        return next((p for p in self.points if parse_oid(p.oid) == oid), None)

    def _payload_now(self, entry: _Entry) -> Payload:
        if entry.pinned is not None:
            return entry.pinned
        t = self.clock.elapsed()
        if entry.counter is not None:
            return _fit(entry.syntax, entry.counter.at(t))
        if entry.uptime:
            return _fit(codec.TIMETICKS, math.floor((t - self._boot) * 100))
        signal = entry.signal or Signal()
        return self._encode(entry.syntax, entry.point, signal.at(t))

    def _encode(self, syntax: str, point: SnmpPoint | None, value: TwinValue | bytes) -> Payload:
        """An engineering value of `point` as the raw payload the agent serves."""
        if isinstance(value, bytes):
            return _payload(syntax, value)
        if syntax == codec.OCTETS:
            if _numeric(point, syntax) and not isinstance(value, str):
                return _number_text(_to_raw(point, value)).encode()
            return str(value).encode()
        if syntax == codec.OPAQUE:
            if isinstance(value, str):
                return value.encode()
            return b"\x9f\x78\x04" + struct.pack(">f", float(_to_raw(point, value)))  # net-snmp's opaque float
        if syntax in (codec.IPADDRESS, codec.OBJECT_ID):
            return _payload(syntax, str(value))
        if isinstance(value, str):
            value = float(value)
        raw = _to_raw(point, value)
        exact = raw if isinstance(raw, int) and not isinstance(raw, bool) else round(raw)
        return _fit(syntax, int(exact))

    def _decoded(self, entry: _Entry, point: SnmpPoint | None, payload: Payload) -> Any:
        fmt = point.format if point is not None else "auto"
        raw = codec.decode(Value(entry.syntax, payload), None, fmt)
        if isinstance(raw, int | float) and not isinstance(raw, bool) and point is not None:
            return _scaled(point, raw)
        return raw

    def _lookup(self, name: str) -> tuple[Oid, SnmpPoint | None]:
        """A point id -> (its OID, the point); an OID -> (the OID, None)."""
        point = self._by_id.get(name)
        if point is not None:
            return parse_oid(point.oid), point
        if _looks_like_oid(name):
            return parse_oid(name), None
        raise KeyError(f"no point {name!r} in {self.name} (and not an OID)")

    def _oid_of(self, name: str) -> Oid:
        return self._lookup(name)[0]

    # --- SET --------------------------------------------------------------------------------

    def _writable_oids(self, writable: str | Iterable[str]) -> set[Oid]:
        if isinstance(writable, str):
            if writable != "all":
                return {self._oid_of(writable)}
            return {
                oid
                for oid, entry in self._store.entries.items()
                if entry.point is not None
                and oid[-1] == 0
                and entry.syntax not in codec.COUNTER_BITS
                and not entry.uptime
            }
        return {self._oid_of(name) for name in writable}

    def _requester(self, engine: Any) -> tuple[bool, str | None]:
        """(may it write, the community or user name) of the request being answered."""
        ctx = engine.observer.get_execution_context("rfc3412.receiveMessage:request")
        model = int(ctx["securityModel"])
        name = str(ctx["securityName"])
        if model in (1, 2):
            community = self.write_community if name == _WRITE_INDEX else self.community
            return name == _WRITE_INDEX, community
        user = next((u for u in self.v3_users if u.user == name), None)
        return user is not None and not user.read_only, name

    def _set(self, var_binds: Sequence[tuple[Any, Any]], engine: Any) -> list[tuple[Any, Any]]:
        may_write, _who = self._requester(engine)
        if not may_write:
            raise smi_error.NoAccessError(name=var_binds[0][0] if var_binds else None, idx=0)
        accepted: list[tuple[_Entry, Oid, Payload, Any]] = []
        for idx, (name, obj) in enumerate(var_binds):
            oid = tuple(name)
            entry = self._store.entries.get(oid)
            if entry is None or oid not in self.writable:
                raise smi_error.NotWritableError(name=name, idx=idx)
            incoming = to_value(obj)
            if incoming.syntax != entry.syntax or incoming.raw is None:
                raise smi_error.WrongTypeError(name=name, idx=idx)
            engineering = self._decoded(entry, entry.point, incoming.raw)
            if not self._acceptable(oid, engineering):
                raise smi_error.WrongValueError(name=name, idx=idx)
            accepted.append((entry, oid, incoming.raw, engineering))
        for entry, oid, payload, engineering in accepted:
            entry.pinned = payload
            point_id = entry.point.id if entry.point is not None else format_oid(oid)
            self.record_write(Write(point=point_id, value=engineering, raw=payload, target=None))
        return list(var_binds)

    def _acceptable(self, oid: Oid, engineering: Any) -> bool:
        if isinstance(engineering, PointError):
            return False
        limits = self.limits.get(oid)
        if limits is None:
            return True
        return isinstance(engineering, int | float) and limits[0] <= engineering <= limits[1]

    # --- notifications ------------------------------------------------------------------

    def _default_varbinds(self) -> list[tuple[str | Sequence[int], Any]]:
        """A current point (else any served point) and its value now, as an alarm would carry."""
        served = [p for p in self.points if parse_oid(p.oid) in self._store.entries]
        chosen = next((p for p in served if p.quantity == "current"), served[0] if served else None)
        if chosen is None:
            return []
        oid = parse_oid(chosen.oid)
        return [(oid, self.raw_value(oid))]

    async def send_trap(
        self,
        target: tuple[str, int] | str,
        trap_oid: str | Sequence[int] = DEFAULT_TRAP_OID,
        varbinds: Sequence[tuple[str | Sequence[int], Any]] | None = None,
        *,
        inform: bool = False,
        version: str = "2c",
        community: str | None = None,
        user: V3User | None = None,
        timeout: float = 2.0,
        retries: int = 1,
    ) -> bool:
        """Send a trap (returns True once sent) or an inform (True when acknowledged).

        `varbinds` are (OID, value) pairs; a value may be a :class:`Value`. By default the
        notification carries a current point of the profile and its value now.
        """
        if self._engine is None:
            raise RuntimeError("the twin is not started")
        host, port = target if isinstance(target, tuple) else split_listen(target)
        if version == "3":
            v3 = user or (self.v3_users[0] if self.v3_users else None)
            if v3 is None:
                raise ValueError("an SNMPv3 notification needs a V3User")
            auth: Any = usm_user(
                v3.user,
                norm_protocol(v3.auth_protocol, AUTH_ALIASES),
                v3.auth_key,
                norm_protocol(v3.priv_protocol, PRIV_ALIASES),
                v3.priv_key,
            )
        else:
            auth = CommunityData(community or self.community or "public", mpModel=0 if version == "1" else 1)
        if varbinds is None:
            varbinds = self._default_varbinds()
        objects = []
        for oid, value in varbinds:
            snmp_value = from_value(value if isinstance(value, Value) else _guess(value))
            objects.append(ObjectType(ObjectIdentity(format_oid(_as_oid(oid))), snmp_value))
        notification = NotificationType(ObjectIdentity(format_oid(_as_oid(trap_oid)))).add_varbinds(*objects)
        transport = await UdpTransportTarget.create((host, int(port)), timeout=timeout, retries=retries)
        indication, status, _index, _vbs = await send_notification(
            self._engine, auth, transport, ContextData(), "inform" if inform else "trap", notification
        )
        if indication:
            if inform:
                return False
            raise RuntimeError(f"cannot send the trap: {indication}")
        return not status

    async def _send_periodically(self) -> None:
        assert self.trap_target is not None
        kind = "inform" if self.inform else "trap"
        while True:
            await asyncio.sleep(self.trap_every)
            try:
                ok = await self.send_trap(self.trap_target, inform=self.inform, version=self.trap_version)
            except (RuntimeError, ValueError, OSError) as exc:
                print(f"{kind} not sent: {exc}", file=sys.stderr, flush=True)
                continue
            if self.inform and not ok:
                print("inform not acknowledged", file=sys.stderr, flush=True)

    # --- edgegw simulate ------------------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        p = parser
        p.add_argument("--community", default="public", help="read community of v1/v2c (default public)")
        p.add_argument("--community-file", type=Path, help="read the read community from this file")
        p.add_argument("--write-community", default="private", help="community that may SET (default private)")
        p.add_argument("--no-community", action="store_true", help="v3 only")
        p.add_argument("--writable", action="append", default=[], metavar="ID|OID|all", help="accept SETs there")
        p.add_argument("--v3-user", help="an SNMPv3 user of the agent")
        p.add_argument("--auth-protocol", default="SHA-256")
        p.add_argument("--auth-key")
        p.add_argument("--auth-key-file", type=Path)
        p.add_argument("--priv-protocol", default="AES-128")
        p.add_argument("--priv-key")
        p.add_argument("--priv-key-file", type=Path)
        p.add_argument("--engine-id", help="the agent's snmpEngineID in hex")
        p.add_argument("--trap-target", metavar="HOST:PORT", help="send notifications there")
        p.add_argument("--trap-every", default="10s", help="time between notifications (default 10s)")
        p.add_argument("--trap-version", choices=["1", "2c", "3"], default="2c")
        p.add_argument("--inform", action="store_true", help="send informs (acknowledged) instead of traps")

    @classmethod
    def options_from_args(cls, args: argparse.Namespace) -> dict[str, Any]:
        def secret(text: str | None, file: Path | None) -> str | None:
            return file.read_text(encoding="utf-8").strip("\r\n") if file is not None else text

        users = []
        if args.v3_user:
            users.append(
                V3User(
                    args.v3_user,
                    secret(args.auth_key, args.auth_key_file),
                    secret(args.priv_key, args.priv_key_file),
                    args.auth_protocol,
                    args.priv_protocol,
                )
            )
        community = None if args.no_community else secret(args.community, args.community_file)
        writable: str | list[str] = "all" if "all" in args.writable else list(args.writable)
        return {
            "version": "3" if community is None else "2c",
            "community": community,
            "write_community": None if args.no_community else args.write_community,
            "users": users,
            "writable": writable,
            "engine_id": args.engine_id,
            "trap_target": args.trap_target,
            "trap_every": parse_duration(args.trap_every),
            "trap_version": args.trap_version,
            "inform": args.inform,
        }


def _guess(value: Any) -> Value:
    if isinstance(value, bool):
        return Value(codec.INTEGER, int(value))
    if isinstance(value, int):
        return Value(codec.INTEGER, value)
    if isinstance(value, float):
        return Value(codec.INTEGER, round(value))
    if isinstance(value, tuple):
        return Value(codec.OBJECT_ID, value)
    return Value(codec.OCTETS, value if isinstance(value, bytes) else str(value).encode())
