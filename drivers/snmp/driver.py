"""The SNMP driver: scalars packed into GETs, table runs read with GETBULK, traps routed as events.

One poll: the planned GETs (`max_varbinds` OIDs each, halved when the agent answers tooBig), then
the GETBULK runs (consecutive rows of table columns, several columns per request). A per-OID
failure (noSuchObject, noSuchInstance, an error-status naming one varbind) costs that point only;
a device that does not answer raises DeviceTimeout. When the agent stops answering in the middle
of a poll, what was read is kept and the rest is marked bad.

Commands: a write is one SET of the point's OID with its declared type, then a GET of it, both
inside one bus transaction; an action is one SET request carrying all of its varbinds (SNMP
applies them all or none). v3 SETs go with the device's user, v1/v2c ones with the write
community, and only when the device config allows it (`allow_set_v1_v2c`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from drivers.snmp import codec
from drivers.snmp.client import Agent, Response, community_data, usm_user
from drivers.snmp.codec import (
    NO_SUCH_NAME,
    SYNTAX_TYPES,
    TOO_BIG,
    Oid,
    Plan,
    RunCursor,
    Value,
    error_status_name,
    format_oid,
    parse_oid,
    plan_reads,
    spread_bulk,
)
from drivers.snmp.config import SnmpAction, SnmpDevice, SnmpPoint, is_symbolic
from drivers.snmp.runtime import SnmpRuntime
from gateway.driver import (
    DeviceError,
    DeviceTimeout,
    Driver,
    DriverContext,
    PointError,
    RawReadings,
    RawValue,
    WriteRefused,
    WriteRequest,
)
from gateway.models import ActionConfig
from gateway.profiles import substitute

Result = Value | PointError
_RESOLVE_IN_START = 3.0  # seconds start() waits for MIB symbols before leaving the rest to the first poll

# What an error status of a SET means, beyond its name (RFC 3416 4.2.5; v1: RFC 1157 4.1.5).
_SET_STATUS_HINTS = {
    2: "SNMPv1: the agent has no such object, or it is not writable",
    3: "SNMPv1: the agent does not take this value",
    4: "SNMPv1: the object is read-only",
    6: "this community or user may not write it",
    7: "the agent wants another ASN.1 type: check the point's `type`",
    10: "the agent does not take this value",
    16: "this community or user may not write it",
    17: "the agent does not let it be written: read-only, or no such object",
}


class SnmpDriver(Driver[SnmpDevice, SnmpRuntime]):
    """Polls one SNMP agent (v1, v2c or v3) and receives its notifications through the runtime."""

    def __init__(self, ctx: DriverContext) -> None:
        super().__init__(ctx)
        self._runtime: SnmpRuntime | None = None
        self._own_runtime = False
        self._agent: Agent | None = None
        self._writer: Agent | None = None  # v1/v2c: the write community's view of the agent
        self._symbols: dict[str, Oid | str] = {}
        self._oids: list[Oid | None] = []
        self._plan = Plan()
        self._max_varbinds = self.config.max_varbinds
        self._unroute: Callable[[], None] | None = None
        self._progress = False
        self._resolving: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        runtime: SnmpRuntime | None = self.runtime
        if runtime is None:  # a driver built outside the core (a one-off read in a test)
            runtime = SnmpRuntime(None, self.ctx.log)
            await runtime.start()
            self._own_runtime = True
        self._runtime = runtime
        if cfg.version == "3":
            user = cfg.user or ""  # the config model requires a user for v3
            auth: Any = usm_user(user, cfg.auth_protocol, cfg.auth_key, cfg.priv_protocol, cfg.priv_key)
            engine = runtime.engine_for(user, (cfg.auth_protocol, cfg.auth_key, cfg.priv_protocol, cfg.priv_key))
        else:
            auth = community_data(cfg.community or "", cfg.version)
            engine = runtime.engine_for()
        self._agent = Agent(
            engine,
            auth,
            cfg.host,
            cfg.port,
            version=cfg.version,
            timeout=cfg.timeout,
            retries=cfg.retries,
            context=cfg.context,
        )
        if cfg.version != "3" and cfg.write_community is not None:
            self._writer = Agent(
                engine,
                community_data(cfg.write_community, cfg.version),
                cfg.host,
                cfg.port,
                version=cfg.version,
                timeout=cfg.timeout,
                retries=cfg.retries,
            )
        self._replan()
        # Compiling a large vendor MIB can take longer than a start may; the first poll waits
        # for the rest (its points are bad until then, and say why).
        self._resolving = asyncio.create_task(self._resolve_symbols(), name=f"snmp-mibs:{cfg.id}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_RESOLVE_IN_START):
                await asyncio.shield(self._resolving)
        try:
            await self._connect()
        except DeviceError as exc:
            # Not fatal: the address may resolve later; every poll tries again.
            self.ctx.log.warning("SNMP agent address not usable yet", error=str(exc))

    async def stop(self) -> None:
        if self._resolving is not None and not self._resolving.done():
            self._resolving.cancel()
        if self._unroute is not None:
            self._unroute()
            self._unroute = None
        if self._own_runtime and self._runtime is not None:
            await self._runtime.stop()
        self._runtime = None
        self._agent = None
        self._writer = None

    async def replan(self) -> None:
        await self._symbols_ready()
        self._replan()
        await self._resolve_symbols()

    async def _connect(self) -> Agent:
        agent = self._agent
        if agent is None or self._runtime is None:
            raise DeviceError("the SNMP driver is not started")
        address = await agent.connect()
        if self._unroute is None:
            self._unroute = self._runtime.register(self.config.id, address[0], self._event)
        return agent

    def _event(self, event: dict[str, Any]) -> None:
        self.ctx.emit_event(event)

    # --- OIDs ---------------------------------------------------------------------------

    async def _resolve_symbols(self) -> None:
        cfg = self.config
        texts = [p.oid for p in self._points() if is_symbolic(p.oid)]
        texts += [t.table for t in cfg.tables if is_symbolic(t.table)]
        texts += [o for o in cfg.discover_oids if is_symbolic(o)]
        texts += [s.oid for a in cfg.resolved_actions.values() if isinstance(a, SnmpAction) for s in a.sets]
        texts = [t for t in texts if is_symbolic(t)]
        wanted = [t for t in dict.fromkeys(texts) if t not in self._symbols]
        if not wanted or self._runtime is None:
            return
        try:
            resolved = await self._runtime.resolve(wanted, cfg.mib_dirs)
        except Exception as exc:  # noqa: BLE001 - a broken MIB folder costs its points, not the device
            resolved = dict.fromkeys(wanted, f"MIB support failed: {exc}")
        for text, result in resolved.items():
            self._symbols[text] = result
            if isinstance(result, str):
                self.ctx.log.error("MIB symbol not resolved; its points stay bad", oid=text, error=result)
        self._replan()

    async def _symbols_ready(self) -> None:
        task = self._resolving
        if task is not None and not task.done():
            await asyncio.shield(task)

    def _numeric(self, text: str) -> Oid | str:
        """The numeric OID of a configured OID, or why there is none."""
        if is_symbolic(text):
            return self._symbols.get(text, f"MIB symbol {text} not resolved yet")
        try:
            return parse_oid(text)
        except ValueError as exc:
            return str(exc)

    def _points(self) -> list[SnmpPoint]:
        return [p for p in self.ctx.points if isinstance(p, SnmpPoint)]

    def _replan(self) -> None:
        oids: list[Oid | None] = []
        for point in self.ctx.points:
            oid = self._numeric(point.oid) if isinstance(point, SnmpPoint) else None
            oids.append(oid if isinstance(oid, tuple) else None)
        self._oids = oids
        cfg = self.config
        self._plan = plan_reads((o for o in oids if o is not None), bulk=cfg.bulk and cfg.version != "1")

    # --- polling ------------------------------------------------------------------------

    async def read(self) -> RawReadings:
        await self._symbols_ready()
        agent = await self._connect()
        results: dict[Oid, Result] = {}
        self._progress = False
        interrupted: str | None = None
        try:
            pending = list(self._plan.gets)
            while pending:
                chunk, pending = pending[: self._max_varbinds], pending[self._max_varbinds :]
                await self._get(agent, chunk, results)
            if self._plan.runs:
                await self._bulk(agent, results)
        except DeviceTimeout as exc:
            if not self._progress:
                raise
            interrupted = f"{exc} (the agent stopped answering during this poll)"
        return RawReadings(self._values(results, interrupted))

    def _values(self, results: dict[Oid, Result], interrupted: str | None) -> list[RawValue]:
        values: list[RawValue] = []
        for i, point in enumerate(self.ctx.points):
            oid = self._oids[i] if i < len(self._oids) else None
            if oid is None or not isinstance(point, SnmpPoint):
                reason = self._numeric(point.oid) if isinstance(point, SnmpPoint) else "not an SNMP point"
                values.append(PointError(reason if isinstance(reason, str) else "no OID"))
                continue
            got = results.get(oid)
            if got is None:
                values.append(PointError(interrupted or "not read"))
                continue
            if isinstance(got, PointError):
                values.append(got)
                continue
            values.append(codec.decode(got, point.type, point.format))
        return values

    async def _get(self, agent: Agent, oids: list[Oid], results: dict[Oid, Result]) -> None:
        pending = [oids]
        while pending:
            request = pending.pop()
            async with self.ctx.bus.transaction():
                resp = await agent.get(request)
            self._progress = True
            if resp.status == 0:
                answered = dict(resp.varbinds)
                for oid in request:
                    got = answered.get(oid)
                    results[oid] = got if got is not None else PointError("the agent's answer left this OID out")
                continue
            if resp.status == TOO_BIG:
                if len(request) == 1:
                    results[request[0]] = PointError("the value does not fit one SNMP message (tooBig)")
                    continue
                half = len(request) // 2
                if half < self._max_varbinds:
                    self._max_varbinds = max(1, half)
                    self.ctx.log.info("agent answered tooBig: fewer OIDs per request", max_varbinds=half)
                pending += [request[half:], request[:half]]
                continue
            name = error_status_name(resp.status)
            text = "no such name (the agent has no value at this OID)" if resp.status == NO_SUCH_NAME else name
            if 1 <= resp.index <= len(request):
                # The error names one varbind (SNMPv1 style): that point is bad, ask again for the rest.
                bad = request[resp.index - 1]
                results[bad] = PointError(f"the agent answered {text}")
                rest = [o for o in request if o != bad]
                if rest:
                    pending.append(rest)
            else:
                for oid in request:
                    results[oid] = PointError(f"the agent answered {text}")

    async def _bulk(self, agent: Agent, results: dict[Oid, Result]) -> None:
        runs = self._plan.runs
        cursors = [RunCursor(run) for run in runs]
        active = list(cursors)
        width = self._max_varbinds
        repetitions = self.config.max_repetitions
        # An agent that keeps answering without ever passing the end of a run must not loop forever.
        budget = sum(len(run.arcs) for run in runs) + 4 * len(runs) + 8
        try:
            while active:
                if budget <= 0:
                    for c in active:
                        c.finish("the agent kept answering without reaching the end of the table")
                    break
                budget -= 1
                batch = active[:width]
                m = min(repetitions, max(c.remaining for c in batch))
                async with self.ctx.bus.transaction():
                    resp = await agent.bulk([c.cursor for c in batch], m)
                self._progress = True
                if resp.status == TOO_BIG:
                    if m > 1:
                        repetitions = max(1, m // 2)
                    elif width > 1:
                        width = max(1, len(batch) // 2)
                    else:
                        batch[0].finish("the value does not fit one SNMP message (tooBig)")
                elif resp.status:
                    for c in batch:
                        c.finish(f"the agent answered {error_status_name(resp.status)}")
                elif not resp.varbinds:
                    for c in batch:
                        c.finish("the agent answered GETBULK with no values")
                else:
                    progressed = spread_bulk(batch, resp.varbinds)
                    # Columns left out of a truncated answer go first next time.
                    stalled = [c for j, c in enumerate(batch) if j not in progressed and not c.done]
                    moved = [c for j, c in enumerate(batch) if j in progressed and not c.done]
                    active = stalled + moved + active[len(batch) :]
                    continue
                active = [c for c in active if not c.done]
        finally:
            for c in cursors:
                results.update(c.found)
                for oid, reason in c.missing.items():
                    results[oid] = PointError(reason)

    # --- commands -----------------------------------------------------------------------

    async def write(self, request: WriteRequest) -> RawValue:
        """SET the point's OID with its type, then GET it back, in one bus transaction."""
        await self._symbols_ready()
        index = request.index
        point = self.ctx.points[index] if 0 <= index < len(self.ctx.points) else None
        if not isinstance(point, SnmpPoint) or not point.writable or point.type is None:
            raise DeviceError(f"point {index} is not a writable SNMP point")
        oid = self._oids[index] if index < len(self._oids) else None
        if oid is None:
            reason = self._numeric(point.oid)
            raise DeviceError(f"{point.id}: {reason if isinstance(reason, str) else 'no OID'}")
        value = codec.encode(request.raw, point.type, point.format)  # ValueError: the core rejects the value
        writer, reader = await self._set_agents()
        async with self.ctx.bus.transaction():
            self._refused(await writer.set([(oid, value)]), [oid], point.id)
            try:
                back = await reader.get([oid])
            except DeviceError as exc:
                return PointError(f"written; the read-back failed: {exc}")
        if back.status:
            return PointError(f"written; the read-back was answered {error_status_name(back.status)}")
        got = dict(back.varbinds).get(oid)
        if got is None:
            return PointError("written; the read-back's answer left this OID out")
        return codec.decode(got, point.type, point.format)

    async def action(self, name: str, spec: ActionConfig, args: Mapping[str, Any]) -> Any:
        """Send the action's SETs in one request; returns what the agent answered, by OID."""
        if not isinstance(spec, SnmpAction):
            raise DeviceError(f"action {name!r} is not an SNMP action")
        await self._symbols_ready()
        varbinds: list[tuple[Oid, Value]] = []
        for item in spec.sets:
            oid = self._numeric(item.oid)
            if isinstance(oid, str):
                raise DeviceError(f"action {name!r}: {item.oid}: {oid}")
            if item.arg is not None:
                if item.arg not in args:
                    raise ValueError(f"argument {item.arg!r} is not given")
                raw = args[item.arg]
            else:
                raw = item.value
            varbinds.append((oid, codec.encode(raw, item.type, item.format)))
        writer, _reader = await self._set_agents()
        async with self.ctx.bus.transaction():
            resp = await writer.set(varbinds)
        self._refused(resp, [oid for oid, _ in varbinds], f"action {name!r}")
        return {format_oid(oid): codec.json_value(value) for oid, value in resp.varbinds}

    async def _set_agents(self) -> tuple[Agent, Agent]:
        """(who SETs, who reads back): the v3 user for both, or the write and read communities."""
        cfg = self.config
        reader = await self._connect()
        if not cfg.set_allowed:
            raise DeviceError(f"not sent: SET over SNMPv{cfg.version} is off for this device (allow_set_v1_v2c)")
        if cfg.version == "3":
            return reader, reader
        if self._writer is None:
            raise DeviceError("not sent: no write community (write_community_file / write_community_env)")
        await self._writer.connect()
        return self._writer, reader

    @staticmethod
    def _refused(resp: Response, oids: Sequence[Oid], what: str) -> None:
        if not resp.status:
            return
        status = error_status_name(resp.status)
        where = ""
        if 1 <= resp.index <= len(oids):
            where = f" for {format_oid(oids[resp.index - 1])}"
        hint = _SET_STATUS_HINTS.get(resp.status)
        raise WriteRefused(f"{what}: the agent answered {status}{where}" + (f" ({hint})" if hint else ""))

    # --- discovery ----------------------------------------------------------------------

    async def discover(self) -> list[dict[str, Any]]:
        """Walk the configured tables (one point per row) or, without tables, `discover_oids`."""
        await self._symbols_ready()
        agent = await self._connect()
        cfg = self.config
        bulk = cfg.bulk and cfg.version != "1"
        points: list[dict[str, Any]] = []
        if cfg.tables:
            for table in cfg.tables:
                base = self._numeric(table.table)
                if isinstance(base, str):
                    raise DeviceError(f"table {table.table}: {base}")
                column = (*base, table.entry, table.column)
                for oid, value in await agent.walk(column, bulk=bulk, max_repetitions=cfg.max_repetitions):
                    points.append(self._table_point(table.point, column, oid, value))
            return _unique_ids(points)
        for root_text in cfg.discover_oids:
            root = self._numeric(root_text)
            if isinstance(root, str):
                raise DeviceError(f"discover_oids {root_text}: {root}")
            for oid, value in await agent.walk(root, bulk=bulk, max_repetitions=cfg.max_repetitions):
                if not value.is_exception:
                    points.append(self._generic_point(oid, value))
        return _unique_ids(points)

    @staticmethod
    def _table_point(template: dict[str, Any], column: Oid, oid: Oid, value: Value) -> dict[str, Any]:
        index = oid[len(column) :]
        env = {"index": index[0] if len(index) == 1 else format_oid(index), "idx": list(index)}
        point: dict[str, Any] = substitute(dict(template), env)
        point["oid"] = format_oid(oid)
        if "type" not in point and value.syntax in SYNTAX_TYPES:
            point["type"] = SYNTAX_TYPES[value.syntax]
        return point

    def _generic_point(self, oid: Oid, value: Value) -> dict[str, Any]:
        name = self._runtime.name(oid) if self._runtime is not None else codec.well_known_name(oid)
        return codec.generic_point(oid, value, name)


def _unique_ids(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, int] = {}
    for point in points:
        pid = str(point.get("id", ""))
        if pid in seen:
            seen[pid] += 1
            point["id"] = f"{pid}.{seen[pid]}"
        else:
            seen[pid] = 1
    return points
