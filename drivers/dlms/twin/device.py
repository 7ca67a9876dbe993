"""The DLMS/COSEM meter twin: :class:`DlmsTwin`, one or several meters on TCP or a serial line."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import os
import tempfile
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import ValidationError

from drivers.dlms import codec
from drivers.dlms.config import PROFILE_GENERIC, DlmsKeys, DlmsPoint, normalize_obis, parse_keys
from drivers.dlms.twin.line import Line
from drivers.dlms.twin.meter import DEFAULT_SERVER_TITLE, Meter
from drivers.dlms.twin.objects import TwinObject, copy_object, objects_from_points, profile_path
from gateway.points import ENERGY_QUANTITIES
from gateway.profiles import expand, load_profile
from gateway.twin import DemoDevice, Fault, Twin, TwinClock, check_sim

#: Where :meth:`DlmsTwin.device_config` tells the driver to find an LLS password (the twin sets
#: it; a second twin with another password in the same process gets ``..._2``, ``..._3``...).
PASSWORD_ENV = "EDGEGW_TWIN_DLMS_PASSWORD"

Transport = Literal["wrapper", "hdlc"]
Auth = Literal["none", "low", "high_gmac"]

_keys_dir: Path | None = None


def _claim_env(name: str, value: str) -> str:
    candidate, n = name, 1
    while os.environ.get(candidate, value) != value:
        n += 1
        candidate = f"{name}_{n}"
    os.environ[candidate] = value
    return candidate


def _write_keys_file(keys: DlmsKeys, server_title: bytes) -> Path:
    """The twin's keys as a keys file a device config can name (removed when the process ends)."""
    global _keys_dir
    if _keys_dir is None:
        _keys_dir = Path(tempfile.mkdtemp(prefix="edgegw-dlms-twin-"))
        atexit.register(_remove_keys_dir, _keys_dir)
    fd, name = tempfile.mkstemp(suffix=".keys", dir=_keys_dir)
    text = (
        f"authentication_key = {keys.authentication_key.hex()}\n"
        f"encryption_key = {keys.encryption_key.hex()}\n"
        f"system_title = {keys.system_title.hex()}\n"
        f"server_system_title = {server_title.hex()}\n"
    )
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Path(name)


def _remove_keys_dir(path: Path) -> None:
    for item in path.glob("*"):
        with contextlib.suppress(OSError):
            item.unlink()
    with contextlib.suppress(OSError):
        path.rmdir()


def _points_of(
    profile: str | Path | None, points: Sequence[Mapping[str, Any]] | None, vars: Mapping[str, Any] | None
) -> tuple[str, list[DlmsPoint]]:
    """(a name for it, the points): the profile's, expanded with its vars, overridden by inline points by id."""
    raw: dict[str, dict[str, Any]] = {}
    env: dict[str, Any] = dict(vars or {})
    name = "inline points"
    if profile is not None:
        loaded = load_profile(profile_path(profile))
        unknown = set(env) - set(loaded.vars)
        if unknown:
            raise ValueError(f"unknown profile variable(s) {sorted(unknown)}; {loaded.name} has: {sorted(loaded.vars)}")
        env = {**loaded.vars, **env}
        name = loaded.name
        raw = {str(p.get("id")): dict(p) for p, _file, _line in expand(loaded.points, env)}
    for p, _file, _line in expand([dict(p) for p in points or ()], env):
        pid = str(p.get("id"))
        raw[pid] = {**raw.get(pid, {}), **p}
    out: list[DlmsPoint] = []
    for item in raw.values():
        try:
            point = DlmsPoint.model_validate(item)
        except ValidationError as exc:
            raise ValueError(f"{name}: point {item.get('id')!r}: {exc}") from None
        try:
            check_sim(point.sim, DlmsTwin.sim_extras)
        except ValueError as exc:
            raise ValueError(f"{name}: point {point.id}: {exc}") from None
        out.append(point)
    return name, out


class DlmsTwin(Twin):
    """A DLMS/COSEM meter (or several on one HDLC line) on TCP or a serial device.

    Make one with :meth:`create` (a shipped profile by name, a profile file, or inline points)
    or with ``DlmsTwin(objects=[TwinObject(...)])``; serve it with ``async with``. See
    drivers/dlms/README.md and docs/dlms.md ("The twin") for the whole API.
    """

    kind: ClassVar[str] = "dlms"
    default_profile: ClassVar[str] = "sensemi-sed102"
    sim_extras: ClassVar[frozenset[str]] = frozenset({"type", "scaler", "capture_period", "entries"})
    demo: ClassVar[Sequence[DemoDevice]] = (
        DemoDevice(
            id="sed302-17",
            profile="sensemi-sed302",
            options={"transport": "wrapper"},
            config={"interval": "2s", "timeout": "1s", "backfill": "6h"},
            show=("voltage.l1", "energy.active_import", "power.active_import"),
        ),
    )

    def __init__(
        self,
        profile: str | Path | None = None,
        *,
        points: Sequence[Mapping[str, Any]] | None = None,
        vars: Mapping[str, Any] | None = None,
        objects: Sequence[TwinObject] | None = None,
        transport: Transport | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        serial: str | None = None,
        peer: str | None = None,
        addresses: Sequence[int] = (17,),
        logical: int = 1,
        auth: Auth | None = None,
        password: str | None = None,
        keys: DlmsKeys | str | Path | None = None,
        server_title: bytes = DEFAULT_SERVER_TITLE,
        start: float | None = None,
        speed: float = 1.0,
        clock: TwinClock | None = None,
        max_pdu: int = 512,
        max_info: int = 128,
        window: int = 1,
        mode_e: bool = False,
        timezone: str = "UTC",
        profile_vars: Mapping[str, Any] | None = None,
        with_list: bool = True,
        writable: str | Iterable[str] = (),
        control_mode: int | None = 1,
        identification: str = "EDGEGW-TWIN",
        password_env: str = PASSWORD_ENV,
        seed: int | None = 0,
    ) -> None:
        super().__init__(clock=clock or TwinClock(start, speed), seed=seed)
        if objects is not None and (profile is not None or points is not None):
            raise ValueError("give objects, or a profile and/or points, not both")
        if vars is not None and profile_vars is not None:
            raise ValueError("give vars or profile_vars, not both")
        resolved_transport: Transport = transport or ("hdlc" if serial is not None else "wrapper")
        if resolved_transport == "wrapper" and serial is not None:
            raise ValueError("the wrapper (IEC 62056-47) runs over TCP; a serial line speaks hdlc")
        if not addresses:
            raise ValueError("a twin serves at least one meter address")
        keys_path: Path | None = None
        if isinstance(keys, str | Path):
            keys_path = Path(keys).resolve()
            keys = parse_keys(keys_path.read_text(encoding="utf-8"))
        if auth == "low" and password is None:
            raise ValueError("a twin with auth low needs a password")
        if auth == "high_gmac" and keys is None:
            raise ValueError("a twin with auth high_gmac needs keys")
        self.profile = profile
        self.vars = dict(vars if vars is not None else profile_vars or {})
        self.inline = [dict(p) for p in points or ()]
        self.name = "objects"
        self.points: list[DlmsPoint] = []
        if objects is None and (profile is not None or points is not None):
            self.name, self.points = _points_of(profile, points, self.vars)
            objects = objects_from_points(self.points, self.rng)
        objects = list(objects or ())
        self._by_id = {p.id: p for p in self.points}
        self.transport: Transport = resolved_transport
        self.host = host
        self.port = port
        self.serial = serial
        self.peer = peer
        self.max_info = max_info
        self.window = window
        self.mode_e = mode_e
        self.timezone = timezone
        self.identification = identification
        self.auth = auth
        self.password = password
        self.keys = keys
        self.server_title = server_title
        self._keys_path = keys_path
        self.password_env = _claim_env(password_env, password) if password is not None else None
        names = {(p.obis, p.attribute): p.id for p in reversed(self.points) if p.class_id != PROFILE_GENERIC}
        writable_obis = self._writable(writable, objects)
        several = len(addresses) > 1
        self.meters: dict[int, Meter] = {}
        for addr in addresses:
            meter = Meter(
                [copy_object(o) for o in objects],
                self.clock,
                physical=addr,
                logical=addr if several and self.wrapper else logical,
                password=password,
                keys=keys,
                server_title=server_title,
                max_pdu=max_pdu,
                timezone=timezone,
                auth=auth,
                writable=writable_obis,
                control_mode=control_mode,
                names=names,
                record=self.record_write,
            )
            if not with_list:
                meter.conformance &= ~codec.conformance(codec.CONF_MULTIPLE_REFERENCES)
            self.meters[addr] = meter
        self.mode_e_sessions = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._serial_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[Any] = []

    # --- the registry's factory -----------------------------------------------------------------

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
        """A twin of a profile (name or path) and/or inline points, listening on host:port (0: free).

        Options: ``transport`` ("wrapper" on TCP by default, "hdlc"), ``serial`` (a device path:
        HDLC on a serial line) and ``peer`` (the gateway's end of that line, for
        :meth:`device_config`), ``addresses`` (meters served: HDLC physical addresses; on the
        wrapper each meter's logical address), ``logical``, ``auth``, ``password`` (accept LLS),
        ``keys`` (a DlmsKeys or a keys file: accept HLS-GMAC), ``server_title``, ``start`` and
        ``speed`` (the clock), ``clock``, ``max_pdu``, ``max_info``, ``window``, ``mode_e``,
        ``timezone``, ``with_list``, ``writable`` (point ids or OBIS codes whose value accepts
        SET, or "all"), ``control_mode`` (the disconnector's, None: no disconnector),
        ``identification``, ``objects`` (TwinObjects instead of points), ``seed``.
        """
        return cls(profile, points=points, vars=vars, host=host, port=port, **options)

    @property
    def wrapper(self) -> bool:
        return self.transport == "wrapper"

    def _writable(self, writable: str | Iterable[str], objects: Sequence[TwinObject]) -> set[str]:
        by_obis = {o.obis: o for o in objects}
        if isinstance(writable, str) and writable == "all":
            return {
                o.obis
                for o in objects
                if o.class_id in (1, 3) and not o.counter and o.quantity not in ENERGY_QUANTITIES
            }
        names = [writable] if isinstance(writable, str) else list(writable)
        out: set[str] = set()
        for name in names:
            obis = self._by_id[name].obis if name in self._by_id else normalize_obis(name)
            if obis not in by_obis or by_obis[obis].class_id not in (1, 3, 4):
                raise ValueError(f"writable {name!r}: no Data or Register object {obis} in {self.name}")
            out.add(obis)
        return out

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None or self._serial_task is not None:
            return
        if self.serial is not None:
            import serial_asyncio

            # Open before returning: pyserial flushes the input on open, so a request written
            # to the line before that would be lost.
            reader, writer = await serial_asyncio.open_serial_connection(url=self.serial, baudrate=9600)
            self._serial_task = asyncio.create_task(self._serve_serial(reader, writer), name="dlms-twin-serial")
            return
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()
        # Connection handlers end by themselves once their socket is closed; cancelling them
        # instead makes asyncio's stream callback log a spurious error.
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=1.0)
            for task in pending:
                task.cancel()
        serial_task, self._serial_task = self._serial_task, None
        if serial_task is not None:
            serial_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await serial_task
        if server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self.connections += 1
        self._writers.append(writer)
        line = Line(self, writer, closable=True)
        try:
            while not line.closed:
                data = await reader.read(4096)
                if not data:
                    break
                await line.feed(data)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            if task is not None:
                self._tasks.discard(task)
            if writer in self._writers:
                self._writers.remove(writer)

    async def _serve_serial(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        line = Line(self, writer, closable=False)
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    await asyncio.sleep(0.01)
                    continue
                await line.feed(data)
        finally:
            writer.close()

    # --- what the registry's users ask ----------------------------------------------------------

    def _meter(self, target: Hashable | None) -> Meter:
        if target is None:
            return self.meter
        if target not in self.meters:
            raise KeyError(f"no meter {target!r} (the twin serves {sorted(self.meters)})")
        return self.meters[target]

    def _targets(self, target: Hashable | None) -> list[Meter]:
        return list(self.meters.values()) if target is None else [self._meter(target)]

    @property
    def meter(self) -> Meter:
        """The first (or only) meter."""
        return next(iter(self.meters.values()))

    def device_config(self, target: Hashable | None = None) -> dict[str, Any]:
        """The device keys that reach one meter (default the first): driver, profile, link, address, security.

        A serial twin gives its link only for an optical port (``mode_e``) whose gateway end
        (``peer``) it was told; otherwise add ``bus:`` (and the bus) yourself.
        """
        meter = self._meter(target)
        out: dict[str, Any] = {"driver": "dlms"}
        if self.profile is not None:
            out["profile"] = str(self.profile)
            if self.vars:
                out["profile_vars"] = dict(self.vars)
        if self.inline:
            out["points"] = [dict(p) for p in self.inline]
        if self.serial is None:
            out["tcp"] = {"host": "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host, "port": self.port}
        elif self.mode_e and self.peer is not None:
            out["optical"] = {"port": self.peer}
        out["transport"] = self.transport
        if not self.wrapper:
            out["physical_address"] = meter.physical
        if meter.logical != 1:
            out["logical_address"] = meter.logical
        out.update(self._security_config())
        if self.timezone != "UTC":
            out["timezone"] = self.timezone
        return out

    def _security_config(self) -> dict[str, Any]:
        mech = self.auth or ("high_gmac" if self.keys is not None else "low" if self.password is not None else "none")
        if mech == "low":
            return {"auth": "low", "password_env": self.password_env}
        if mech == "high_gmac":
            assert self.keys is not None
            if self._keys_path is None:
                self._keys_path = _write_keys_file(self.keys, self.server_title)
            return {"auth": "high_gmac", "keys_file": str(self._keys_path)}
        return {}

    def describe(self) -> str:
        where = self.serial if self.serial is not None else f"{self.host}:{self.port}"
        what = "physical" if not self.wrapper else "logical"
        addresses = ", ".join(str(m.physical if not self.wrapper else m.logical) for m in self.meters.values())
        return f"DLMS meter twin of {self.name} ({self.transport}) on {where}, {what} address {addresses}"

    def _resolve(self, name: str, meter: Meter) -> tuple[TwinObject, int, DlmsPoint | None]:
        """A point id or an OBIS code (``obis`` or ``obis:attribute``) -> (object, attribute, point)."""
        point = self._by_id.get(name)
        if point is not None:
            if point.class_id == PROFILE_GENERIC and point.column is not None:
                return meter.objects[point.column], point.column_attribute, point
            return meter.objects[point.obis], point.attribute, point
        code, _, attr = name.partition(":")
        try:
            obis = normalize_obis(code)
        except ValueError:
            raise KeyError(f"no point {name!r} in {self.name} (and not an OBIS code)") from None
        if obis not in meter.objects:
            raise KeyError(f"no object {obis} in {self.name}")
        return meter.objects[obis], int(attr) if attr else 2, None

    def value(self, point: str, target: Hashable | None = None) -> Any:
        """What a point (or an OBIS code's attribute) shows now, in engineering units.

        A clock shows epoch seconds (a ``clock_drift`` point: meter minus real time, in s); a
        profile column its newest entry.
        """
        meter = self._meter(target)
        obj, attr, p = self._resolve(point, meter)
        now = self.clock.now()
        if obj.class_id == 8 and p is not None and p.quantity == "clock_drift":
            return now - time.time()
        if p is not None and p.class_id == PROFILE_GENERIC:
            profile = meter.objects[p.obis]
            now = meter.entry_times(profile, int(now * 1000))[-1] / 1000
        return meter.engineering(obj, attr, now)

    def set_value(self, point: str, value: Any, target: Hashable | None = None) -> None:
        """Pin a point (every meter's, or one meter's) to an engineering value.

        A ``clock_drift`` point sets the clock to real time plus `value` seconds; another clock
        point to `value` (epoch seconds or ISO 8601).
        """
        for meter in self._targets(target):
            obj, _attr, p = self._resolve(point, meter)
            if obj.class_id == 8:
                self._set_clock_value(value, drift=p is not None and p.quantity == "clock_drift")
            else:
                meter.pin(obj, value)

    def release(self, point: str, target: Hashable | None = None) -> None:
        """Let a pinned point move with its signal again."""
        for meter in self._targets(target):
            self._resolve(point, meter)[0].pinned = None

    def _set_clock_value(self, value: Any, *, drift: bool) -> None:
        if drift:
            self.clock.set(time.time() + float(value))
        elif isinstance(value, str):
            moment = datetime.fromisoformat(value)
            self.clock.set((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())
        else:
            self.clock.set(float(value))

    # --- control (tests) ------------------------------------------------------------------------

    def now(self) -> float:
        return self.clock.now()

    def advance(self, *, seconds: float = 0, minutes: float = 0, hours: float = 0, days: float = 0) -> None:
        self.clock.advance(seconds + 60 * minutes + 3600 * hours + 86400 * days)

    def set_time(self, t: float) -> None:
        self.clock.set(t)

    def freeze(self, at: float | None = None) -> None:
        self.clock.freeze(at)

    def run(self, speed: float | None = None) -> None:
        self.clock.run(speed)

    def kill(self, address: int | None = None) -> None:
        """Stop answering (the meter is dead or unplugged): the silent fault."""
        self.faults.set(Fault.SILENT, target=address)

    def revive(self, address: int | None = None) -> None:
        """Clear the fault of one meter, or every fault."""
        self.faults.clear(address)

    def slow(self, delay: float, address: int | None = None) -> None:
        """Answer `delay` seconds late: the slow fault."""
        self.faults.set(Fault.SLOW, delay=delay, target=address)

    def corrupt(self, on: bool = True, address: int | None = None) -> None:
        """Answer with damaged frames: the garbage fault (HDLC flags kept, so the frame checks fail)."""
        if on:
            self.faults.set(Fault.GARBAGE, target=address)
        else:
            self.faults.clear(address)

    def drop_associations(self, address: int | None = None) -> None:
        """Forget every association, as a meter does after its inactivity timeout."""
        for m in self._targets(address):
            m.generation += 1

    def drop_connections(self) -> None:
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()

    def manual_reconnect(self, address: int | None = None) -> None:
        """The customer's button on the disconnector: ready_for_reconnection -> connected."""
        for m in self._targets(address):
            m.manual_reconnect()

    def log_event(self, log: int, code: int, at: float | None = None, address: int | None = None) -> None:
        """Log event `code` in event log 0.0.99.98.`log`.255 at twin time `at` (default now)."""
        for m in self._targets(address):
            m.log_event(log, code, at)

    def power_failure(self, seconds: float, address: int | None = None) -> None:
        """An outage from now on: power down (1) now and power up (2) `seconds` later, in twin time."""
        now = self.clock.now()
        for m in self._targets(address):
            m.log_event(0, 1, now)
            m.log_event(0, 2, now + seconds)

    def tamper(self, code: int = 44, address: int | None = None) -> None:
        """A fraud event now (default 44, meter cover removed) in the fraud log 0.0.99.98.1.255."""
        self.log_event(1, code, address=address)

    # --- edgegw simulate ------------------------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        p = parser
        p.add_argument("--serial", help="serve HDLC on this serial device (e.g. one end of a socat pty pair)")
        p.add_argument(
            "--transport", choices=["wrapper", "hdlc"], default=None, help="default: wrapper on TCP, hdlc on serial"
        )
        p.add_argument("--address", type=int, action="append", help="meter address (repeat for several meters)")
        p.add_argument("--logical", type=int, default=1, help="logical device address (default 1)")
        p.add_argument(
            "--auth", choices=["none", "low", "high_gmac"], help="the mechanism a management client must use"
        )
        p.add_argument("--password-file", type=Path, help="accept LLS (client 1) with this password")
        p.add_argument("--keys-file", type=Path, help="accept HLS-GMAC with these keys (and the server_system_title)")
        p.add_argument("--start", help="the meter clock at start, ISO 8601 (default: now; no zone: UTC)")
        p.add_argument("--mode-e", action="store_true", help="expect the IEC 62056-21 mode E opening (optical)")
        p.add_argument("--max-pdu", type=int, default=512, help="the meter's largest APDU (default 512)")
        p.add_argument("--timezone", default="UTC", help="the meter's time zone (default UTC)")
        p.add_argument("--writable", action="append", default=[], metavar="ID|OBIS|all", help="accept SET there")
        p.add_argument("--control-mode", type=int, default=1, help="the disconnector's control mode (default 1)")

    @classmethod
    def options_from_args(cls, args: argparse.Namespace) -> dict[str, Any]:
        password = args.password_file.read_text(encoding="utf-8").strip("\r\n") if args.password_file else None
        keys = parse_keys(args.keys_file.read_text(encoding="utf-8")) if args.keys_file else None
        start: float | None = None
        if args.start:
            moment = datetime.fromisoformat(args.start)
            start = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
        writable: str | list[str] = "all" if "all" in args.writable else list(args.writable)
        return {
            "serial": args.serial,
            "transport": args.transport,
            "addresses": args.address or [17],
            "logical": args.logical,
            "auth": args.auth,
            "password": password,
            "keys": keys,
            "server_title": keys.server_system_title if keys and keys.server_system_title else DEFAULT_SERVER_TITLE,
            "start": start,
            "max_pdu": args.max_pdu,
            "mode_e": args.mode_e,
            "timezone": args.timezone,
            "writable": writable,
            "control_mode": args.control_mode,
        }
