"""Device twin: a pysnmp agent serving a profile's OIDs over v1/v2c/v3, and sending traps/informs.

`edgegw simulate schneider-bcpme-snmp --port 1161` serves every point of the profile with values
that change over time (from each point's `sim` hints, in engineering units, turned into raw agent
values with the point's scale), plus the MIB-2 system group. Tests use the Python API::

    async with SnmpTwin("schneider-bcpme-snmp", port=0, community="public",
                        v3_users=[V3User("edgegw", "authkey123", "privkey123")]) as twin:
        twin.set_value("1.3.6.1.4.1.3833.1.30.1.5.1.1.2.1", 1234, "gauge32")
        await twin.send_trap(("127.0.0.1", 10162), inform=True)
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import math
import signal
import socket
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pysnmp.carrier.asyncio.dgram import udp, udp6
from pysnmp.entity import config as pconfig
from pysnmp.entity.engine import SnmpEngine
from pysnmp.entity.rfc3413 import cmdrsp
from pysnmp.entity.rfc3413 import context as rcontext
from pysnmp.error import PySnmpError
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
from drivers.snmp.client import AUTH, PRIV, from_value, usm_user
from drivers.snmp.codec import Oid, Value, parse_oid
from drivers.snmp.config import (
    AUTH_ALIASES,
    PRIV_ALIASES,
    TYPE_ALIASES,
    SnmpPoint,
    is_symbolic,
    norm_protocol,
    split_listen,
)
from gateway.models import parse_duration
from gateway.points import Kind
from gateway.profiles import expand, load_profile, resolve_profile_path

BCPME_ROOT: Oid = (1, 3, 6, 1, 4, 1, 3833, 1, 30)
DEFAULT_TRAP_OID: Oid = (*BCPME_ROOT, 0, 1)
SYSTEM: Oid = (1, 3, 6, 1, 2, 1, 1)

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
_LIMITS = {
    codec.INTEGER: (-(2**31), 2**31 - 1),
    codec.GAUGE32: (0, 2**32 - 1),
    codec.TIMETICKS: (0, 2**32 - 1),
}


@dataclass(frozen=True, slots=True)
class V3User:
    """An SNMPv3 user of the twin (keys are passphrases of at least 8 characters)."""

    user: str
    auth_key: str | None = None
    priv_key: str | None = None
    auth_protocol: str = "SHA-256"
    priv_protocol: str = "AES-128"


Source = Callable[[float], int | bytes | Oid]


@dataclass(slots=True)
class _Entry:
    syntax: str
    source: Source


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


def _raw(syntax: str, value: Any) -> int | bytes | Oid:
    """A Python value as the payload of an SNMP syntax (clamped/wrapped to its range)."""
    if syntax in (codec.OCTETS, codec.OPAQUE, codec.BITS):
        return value if isinstance(value, bytes) else str(value).encode()
    if syntax == codec.IPADDRESS:
        if isinstance(value, bytes):
            return value
        return bytes(int(p) for p in str(value).split("."))
    if syntax == codec.OBJECT_ID:
        return _as_oid(value)
    # ints stay exact (a Counter64 does not fit a float's 53 bits)
    number = value if isinstance(value, int) and not isinstance(value, bool) else round(float(value))
    if syntax in codec.COUNTER_BITS:
        return number % (1 << codec.COUNTER_BITS[syntax])
    lo, hi = _LIMITS.get(syntax, (-(2**63), 2**64 - 1))
    return min(max(number, lo), hi)


class _Instrumentation:
    """The agent's data: a sorted OID -> value store answering GET and GETNEXT (GETBULK uses GETNEXT)."""

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

    def value(self, oid: Oid) -> Value | None:
        entry = self.entries.get(oid)
        if entry is None:
            return None
        return Value(entry.syntax, entry.source(self.twin.elapsed()))

    def _pysnmp(self, oid: Oid) -> Any:
        value = self.value(oid)
        return from_value(value if value is not None else Value(codec.NO_SUCH_INSTANCE))

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

    def write_variables(self, *var_binds: Any, **_context: Any) -> list[tuple[Any, Any]]:
        raise smi_error.NotWritableError(name=var_binds[0][0] if var_binds else None, idx=0)


class SnmpTwin:
    """A live SNMP agent for tests and demos; see the module docstring."""

    def __init__(
        self,
        profile_ref: str | Path | None = "schneider-bcpme-snmp",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        community: str | None = "public",
        v3_users: Sequence[V3User] = (),
        profile_vars: Mapping[str, Any] | None = None,
        engine_id: str | None = None,
        max_get_varbinds: int | None = None,
        max_bulk_varbinds: int = 64,
        sys_object_id: str = "1.3.6.1.4.1.3833.1.30",
    ) -> None:
        self.profile_ref = profile_ref
        self.host = host
        self.requested_port = port
        self.community = community
        self.v3_users = list(v3_users)
        self.profile_vars = dict(profile_vars or {})
        self.requested_engine_id = engine_id
        self.max_get_varbinds = max_get_varbinds
        self.max_bulk_varbinds = max_bulk_varbinds
        self.sys_object_id = parse_oid(sys_object_id)
        self.requests: Counter[str] = Counter()
        self.drop_requests = False
        self.silent_after: int | None = None  # answer this many more requests, then drop the rest
        self.points: list[SnmpPoint] = []
        self.skipped: list[str] = []
        self.name = str(profile_ref) if profile_ref is not None else "empty"
        self._store = _Instrumentation(self)
        self._engine: Any = None
        self._started = 0.0
        self.port = 0

    # --- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> SnmpTwin:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def engine_id(self) -> str:
        """The agent's snmpEngineID in hex (what a receiver of its v3 traps must know)."""
        return bytes(self._engine.snmpEngineID.asOctets()).hex() if self._engine is not None else ""

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    async def start(self) -> None:
        self._started = time.monotonic()
        self._load_profile()
        self._system_group()
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
        module = udp6 if v6 else udp
        pconfig.add_transport(engine, module.DOMAIN_NAME, module.UdpAsyncioTransport().open_server_mode(sock=sock))
        if self.community is not None:
            pconfig.add_v1_system(engine, "twin-area", self.community)
        for user in self.v3_users:
            auth_name = norm_protocol(user.auth_protocol, AUTH_ALIASES)
            priv_name = norm_protocol(user.priv_protocol, PRIV_ALIASES)
            pconfig.add_v3_user(
                engine,
                user.user,
                AUTH[auth_name] if user.auth_key else pconfig.USM_AUTH_NONE,
                user.auth_key,
                PRIV[priv_name] if user.priv_key else pconfig.USM_PRIV_NONE,
                user.priv_key,
            )
        snmp_context = rcontext.SnmpContext(engine)
        # The default context serves this twin's store instead of pysnmp's own MIB tree.
        snmp_context.unregister_context_name(b"")
        snmp_context.register_context_name(b"", self._store)
        twin = self

        def counting(base: Any, kind: str) -> Any:
            class Responder(base):  # type: ignore[misc]
                def handle_management_operation(self, *args: Any) -> None:
                    twin.requests[kind] += 1
                    if twin.silent_after is not None:
                        twin.drop_requests = twin.drop_requests or twin.silent_after <= 0
                        twin.silent_after -= 1
                    if twin.drop_requests:
                        # pysnmp drops a request whose handler raises a plain PySnmpError.
                        raise PySnmpError("twin told to stay silent")
                    super().handle_management_operation(*args)

            return Responder

        cmdrsp_get = counting(cmdrsp.GetCommandResponder, "get")
        cmdrsp_next = counting(cmdrsp.NextCommandResponder, "getnext")
        cmdrsp_bulk = counting(cmdrsp.BulkCommandResponder, "getbulk")
        cmdrsp_set = counting(cmdrsp.SetCommandResponder, "set")
        cmdrsp_get(engine, snmp_context)
        cmdrsp_next(engine, snmp_context)
        bulk = cmdrsp_bulk(engine, snmp_context)
        bulk.max_varbinds = self.max_bulk_varbinds
        cmdrsp_set(engine, snmp_context)
        engine.transport_dispatcher.job_started(1)
        self._engine = engine

    async def stop(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            with contextlib.suppress(Exception):
                engine.transport_dispatcher.job_finished(1)
                engine.close_dispatcher()

    # --- data ---------------------------------------------------------------------------

    def _load_profile(self) -> None:
        if self.profile_ref is None:
            return
        path = resolve_profile_path(str(self.profile_ref), "snmp")
        profile = load_profile(path)
        self.name = profile.name
        env = {**profile.vars, **self.profile_vars}
        for raw, _file, _line in expand(profile.points, env):
            try:
                point = SnmpPoint.model_validate(raw)
            except ValidationError as exc:
                raise ValueError(f"profile {profile.name}: point {raw.get('id')!r}: {exc}") from None
            if is_symbolic(point.oid):
                self.skipped.append(point.id)  # a MIB symbol: the twin serves numeric OIDs only
                continue
            oid = parse_oid(point.oid)
            self.points.append(point)
            if oid[: len(SYSTEM)] == SYSTEM and not point.sim:
                continue  # the twin's own system group answers these
            self._store.put(oid, self._entry_for(point))

    def _entry_for(self, point: SnmpPoint) -> _Entry:
        sim = dict(point.sim or {})
        if point.type is not None:
            syntax = _SYNTAX_OF_TYPE[point.type]
        elif isinstance(sim.get("value"), str):
            syntax = codec.OCTETS
        elif point.kind is Kind.COUNTER or point.rate:
            syntax = codec.COUNTER32
        elif point.quantity == "uptime":
            syntax = codec.TIMETICKS
        else:
            syntax = codec.INTEGER
        seed = zlib.crc32(point.id.encode())

        def raw_of(engineering: float) -> float:
            return (engineering - point.offset) / point.scale if point.scale else engineering

        if syntax in (codec.OCTETS, codec.IPADDRESS, codec.OBJECT_ID, codec.OPAQUE):
            constant = _raw(syntax, sim.get("value", point.id if syntax == codec.OCTETS else "0.0.0.0"))
            return _Entry(syntax, lambda _t: constant)
        if "value" in sim:
            fixed = _raw(syntax, raw_of(float(sim["value"])))
            return _Entry(syntax, lambda _t: fixed)
        if syntax in codec.COUNTER_BITS:
            start = raw_of(float(sim.get("start", seed % 1000)))
            per_second = float(sim.get("rate", 1.0)) / (point.scale or 1.0)
            return _Entry(syntax, lambda t: _raw(syntax, start + per_second * t))
        if syntax == codec.TIMETICKS:
            return _Entry(syntax, lambda t: _raw(syntax, t * 100))
        if "min" in sim or "max" in sim:
            lo = float(sim.get("min", 0.0))
            hi = float(sim.get("max", lo + 1.0))
        else:
            base = 100 + seed % 900
            lo, hi = base * 0.95, base * 1.05
        period = parse_duration(sim.get("period", 60 + seed % 60))
        phase = (seed % 360) / 360 * 2 * math.pi

        def wave(t: float) -> int | bytes | Oid:
            engineering = lo + (hi - lo) * (0.5 + 0.5 * math.sin(2 * math.pi * t / max(period, 0.1) + phase))
            return _raw(syntax, raw_of(engineering) if ("min" in sim or "max" in sim) else engineering)

        return _Entry(syntax, wave)

    def _system_group(self) -> None:
        descr = f"edgegw SNMP twin of {self.name}".encode()
        defaults: dict[int, _Entry] = {
            1: _Entry(codec.OCTETS, lambda _t: descr),
            2: _Entry(codec.OBJECT_ID, lambda _t: self.sys_object_id),
            3: _Entry(codec.TIMETICKS, lambda t: _raw(codec.TIMETICKS, t * 100)),
            4: _Entry(codec.OCTETS, lambda _t: b"edgegw"),
            5: _Entry(codec.OCTETS, lambda _t: b"twin"),
            6: _Entry(codec.OCTETS, lambda _t: b"lab"),
            7: _Entry(codec.INTEGER, lambda _t: 72),
        }
        for arc, entry in defaults.items():
            oid = (*SYSTEM, arc, 0)
            if oid not in self._store.entries:
                self._store.put(oid, entry)

    def set_value(self, oid: str | Sequence[int], value: Any, syntax: str | None = None) -> None:
        """Serve a fixed value at an OID (created when new); `syntax` like "counter32" or "Gauge32"."""
        key = _as_oid(oid)
        if syntax is not None:
            name = _syntax(syntax)
        elif key in self._store.entries:
            name = self._store.entries[key].syntax
        elif isinstance(value, str | bytes):
            name = codec.OCTETS
        else:
            name = codec.INTEGER
        raw = _raw(name, value)
        self._store.put(key, _Entry(name, lambda _t: raw))

    def delete(self, oid: str | Sequence[int]) -> None:
        """Remove an OID: GET then answers noSuchInstance."""
        self._store.remove(_as_oid(oid))

    def value(self, oid: str | Sequence[int]) -> Value | None:
        """What the agent would answer now at an OID."""
        return self._store.value(_as_oid(oid))

    def oids(self) -> list[Oid]:
        return list(self._store.keys)

    def _default_varbinds(self) -> list[tuple[str | Sequence[int], Any]]:
        """A current point (else any served point) and its value now, as an alarm would carry."""
        served = [p for p in self.points if parse_oid(p.oid) in self._store.entries]
        chosen = next((p for p in served if p.quantity == "current"), served[0] if served else None)
        if chosen is None:
            return []
        oid = parse_oid(chosen.oid)
        return [(oid, self._store.value(oid))]

    # --- notifications ------------------------------------------------------------------

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
        host, port = _split_target(target)
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
            text = community or self.community or "public"
            auth = CommunityData(text, mpModel=0 if version == "1" else 1)
        if varbinds is None:
            varbinds = self._default_varbinds()
        objects = []
        for oid, value in varbinds:
            snmp_value = from_value(value) if isinstance(value, Value) else from_value(_guess(value))
            objects.append(ObjectType(ObjectIdentity(codec.format_oid(_as_oid(oid))), snmp_value))
        notification = NotificationType(ObjectIdentity(codec.format_oid(_as_oid(trap_oid)))).add_varbinds(*objects)
        transport = await UdpTransportTarget.create((host, port), timeout=timeout, retries=retries)
        indication, status, _index, _vbs = await send_notification(
            self._engine, auth, transport, ContextData(), "inform" if inform else "trap", notification
        )
        if indication:
            if inform:
                return False
            raise RuntimeError(f"cannot send the trap: {indication}")
        return not status


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


def _split_target(target: tuple[str, int] | str) -> tuple[str, int]:
    if isinstance(target, tuple):
        return target[0], int(target[1])
    return split_listen(target)


# --- the `edgegw simulate` entry point -------------------------------------------------------


def _arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgegw simulate PROFILE", description="SNMP device twin")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1161, help="UDP port (default 1161; 161 needs root)")
    p.add_argument("--community", default="public", help="v1/v2c community of the twin (default public)")
    p.add_argument("--community-file", type=Path)
    p.add_argument("--no-community", action="store_true", help="v3 only")
    p.add_argument("--v3-user")
    p.add_argument("--auth-protocol", default="SHA-256")
    p.add_argument("--auth-key")
    p.add_argument("--auth-key-file", type=Path)
    p.add_argument("--priv-protocol", default="AES-128")
    p.add_argument("--priv-key")
    p.add_argument("--priv-key-file", type=Path)
    p.add_argument("--engine-id", help="the agent's snmpEngineID in hex")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="a profile variable")
    p.add_argument("--trap-target", metavar="HOST:PORT", help="send notifications there")
    p.add_argument("--trap-every", default="10s", help="time between notifications (default 10s)")
    p.add_argument("--trap-version", choices=["1", "2c", "3"], default="2c")
    p.add_argument("--inform", action="store_true", help="send informs (acknowledged) instead of traps")
    return p


def _read_key(text: str | None, file: Path | None) -> str | None:
    if file is not None:
        return file.read_text(encoding="utf-8").strip("\r\n")
    return text


def _vars(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--var {item!r}: use NAME=VALUE")
        try:
            out[name] = int(value)
        except ValueError:
            try:
                out[name] = float(value)
            except ValueError:
                out[name] = value
    return out


def main(profile_ref: str, argv: list[str]) -> int:
    """`edgegw simulate PROFILE [options]`: serve the profile until interrupted."""
    args = _arguments().parse_args(argv)
    try:
        return asyncio.run(_serve(profile_ref, args))
    except KeyboardInterrupt:
        return 0
    except (OSError, ValueError) as exc:
        print(f"edgegw simulate: {exc}", file=sys.stderr)
        return 1


async def _serve(profile_ref: str, args: argparse.Namespace) -> int:
    community = None if args.no_community else (_read_key(None, args.community_file) or args.community)
    users = []
    if args.v3_user:
        users.append(
            V3User(
                args.v3_user,
                _read_key(args.auth_key, args.auth_key_file),
                _read_key(args.priv_key, args.priv_key_file),
                args.auth_protocol,
                args.priv_protocol,
            )
        )
    twin = SnmpTwin(
        profile_ref,
        host=args.host,
        port=args.port,
        community=community,
        v3_users=users,
        profile_vars=_vars(args.var),
        engine_id=args.engine_id,
    )
    await twin.start()
    versions = (["v1", "v2c"] if community is not None else []) + (["v3"] if users else [])
    print(
        f"SNMP twin of {twin.name}: {len(twin.points)} points on udp {twin.host}:{twin.port} "
        f"({', '.join(versions) or 'no access'}; engine id {twin.engine_id})",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    sender: asyncio.Task[None] | None = None
    if args.trap_target:
        sender = asyncio.create_task(_send_periodically(twin, args))
    try:
        await stop.wait()
    finally:
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        await twin.stop()
    return 0


async def _send_periodically(twin: SnmpTwin, args: argparse.Namespace) -> None:
    every = parse_duration(args.trap_every)
    kind = "inform" if args.inform else "trap"
    while True:
        await asyncio.sleep(every)
        try:
            ok = await twin.send_trap(args.trap_target, inform=args.inform, version=args.trap_version)
        except (RuntimeError, ValueError, OSError) as exc:
            print(f"{kind} not sent: {exc}", file=sys.stderr, flush=True)
            continue
        if args.inform and not ok:
            print("inform not acknowledged", file=sys.stderr, flush=True)
