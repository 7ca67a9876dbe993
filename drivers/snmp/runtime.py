"""The SNMP runtime shared by all SNMP devices: the polling engine, the MIB library, the trap listener.

One pysnmp engine (one UDP socket, one timer) serves every device: requests to different agents
are independent datagrams matched by request id, so a silent agent costs only its own requests.
A second engine appears only when two devices use the same SNMPv3 user name with different keys:
pysnmp keys its USM table by user name until it has learnt each agent's engine ID, so such users
cannot share an engine.

The optional listener has an engine of its own, so that the communities and users it accepts are
exactly the configured ones and never the polling credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.snmp import codec
from drivers.snmp.codec import Oid
from gateway.driver import DriverRuntime

if TYPE_CHECKING:
    import structlog
    from pysnmp.entity.engine import SnmpEngine

    from drivers.snmp.config import SnmpSection, TrapSettings
    from drivers.snmp.mib import MibLibrary

EventSink = Callable[[dict[str, Any]], None]

_VERSIONS = {0: "1", 1: "2c", 3: "3"}
_INFORM_MEMORY = 60.0  # seconds an inform's request id is remembered, to drop retransmissions
_INFORM_MEMORY_SIZE = 4096


@dataclass(slots=True)
class _Route:
    device: str
    sink: EventSink


@dataclass(slots=True)
class ListenerStats:
    received: int = 0
    routed: int = 0
    unknown: int = 0
    duplicates: int = 0
    errors: int = 0
    malformed: int = 0
    unknown_senders: dict[str, int] = field(default_factory=dict)


def guard_engine(engine: Any, stats: ListenerStats) -> None:
    """Drop datagrams pysnmp cannot decode instead of letting its error escape into the event loop.

    pysnmp's BER path raises TypeError (not its own decoding errors) on some malformed datagrams;
    unguarded, every one of them prints a traceback from the loop's exception handler. Counted in
    `malformed`, never logged per datagram.
    """
    dispatcher = engine.message_dispatcher
    receive = dispatcher.receive_message

    def safe_receive(*args: Any, **kwargs: Any) -> Any:
        try:
            return receive(*args, **kwargs)
        except Exception:  # noqa: BLE001 - garbage from the network must cost one datagram, nothing more
            stats.malformed += 1
            return b""

    dispatcher.receive_message = safe_receive


class SnmpRuntime(DriverRuntime):
    """Shared SNMP resources; handed to every SNMP driver as `ctx.runtime`."""

    def counters(self) -> dict[str, float]:
        st = self.stats
        return {
            "notifications_received": st.received,
            "notifications_routed": st.routed,
            "notifications_unknown_sender": st.unknown,
            "notifications_duplicate": st.duplicates,
            "notifications_errors": st.errors,
            "datagrams_malformed": st.malformed,
        }

    section: SnmpSection | None

    def __init__(self, section: Any, log: structlog.typing.FilteringBoundLogger) -> None:
        super().__init__(section, log)
        self._engines: list[tuple[SnmpEngine, dict[str, str]]] = []
        self._mibs: MibLibrary | None = None
        self._mib_lock = asyncio.Lock()
        self._routes: dict[str, list[_Route]] = {}
        self.listener: TrapListener | None = None
        self.stats = ListenerStats()

    async def start(self) -> None:
        traps = self.section.traps if self.section is not None else None
        if traps is not None:
            listener = TrapListener(traps, self, self.log)
            try:
                await listener.start()
            except OSError as exc:
                # Another process (the daemon, when this is `edgegw read`) may hold the port.
                self.log.error("SNMP trap listener not started", listen=traps.listen, error=str(exc))
            else:
                self.listener = listener
                self.log.info("SNMP trap listener started", listen=f"{listener.address[0]}:{listener.address[1]}")
        if self.section is not None and (self.section.mib_modules or traps is not None):
            # Load the section's MIBs up front so trap varbinds are named from the first one.
            errors = await self.load_modules(self.section.mib_modules, [])
            for module, error in errors.items():
                self.log.error("MIB module not loaded", module=module, error=error)

    async def stop(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        engines, self._engines = self._engines, []
        for engine, _users in engines:
            with contextlib.suppress(Exception):
                engine.close_dispatcher()
        if self._mibs is not None:
            self._mibs.close()
            self._mibs = None

    # --- engines ------------------------------------------------------------------------

    def engine_for(self, user: str | None = None, credentials: Sequence[str | None] = ()) -> SnmpEngine:
        """The polling engine for an agent; v3 users with clashing keys get separate engines."""
        from pysnmp.entity.engine import SnmpEngine

        fingerprint = hashlib.sha256("\x00".join(c or "" for c in credentials).encode()).hexdigest()
        for engine, users in self._engines:
            if user is None or users.get(user, fingerprint) == fingerprint:
                if user is not None:
                    users[user] = fingerprint
                return engine
        engine = SnmpEngine()
        guard_engine(engine, self.stats)
        self._engines.append((engine, {user: fingerprint} if user is not None else {}))
        if len(self._engines) > 1:
            self.log.info("extra SNMP engine for a v3 user name with other keys", user=user)
        return engine

    # --- MIBs ---------------------------------------------------------------------------

    async def mibs(self) -> MibLibrary:
        async with self._mib_lock:
            if self._mibs is None:
                from drivers.snmp.mib import MibLibrary

                cache = self.section.mib_cache if self.section is not None else None
                self._mibs = await asyncio.to_thread(MibLibrary, cache)
            return self._mibs

    def _dirs(self, dirs: Sequence[Path]) -> list[Path]:
        return [*dirs, *(self.section.mib_dirs if self.section is not None else [])]

    async def load_modules(self, modules: Sequence[str], dirs: Sequence[Path]) -> dict[str, str]:
        """Load (compiling when needed) MIB modules; returns module -> error."""
        library = await self.mibs()
        return await asyncio.to_thread(library.ensure, modules, self._dirs(dirs))

    async def resolve(self, symbols: Sequence[str], dirs: Sequence[Path]) -> dict[str, Oid | str]:
        """`MODULE::symbol.index` -> numeric OID, or the reason it cannot be resolved."""
        from drivers.snmp.mib import symbol_modules

        library = await self.mibs()
        all_dirs = self._dirs(dirs)

        def work() -> dict[str, Oid | str]:
            errors = library.ensure(symbol_modules(symbols), all_dirs)
            out: dict[str, Oid | str] = {}
            for text in symbols:
                module = text.partition("::")[0]
                if module in errors:
                    out[text] = errors[module]
                    continue
                try:
                    out[text] = library.resolve(text)
                except LookupError as exc:
                    out[text] = str(exc)
            return out

        return await asyncio.to_thread(work)

    def name(self, oid: Oid) -> str | None:
        """A MIB name for an OID (loaded MIBs, then the well-known MIB-2 names)."""
        if self._mibs is not None:
            return self._mibs.name(oid)
        return codec.well_known_name(oid)

    # --- notification routing -----------------------------------------------------------

    def register(self, device: str, address: str, sink: EventSink) -> Callable[[], None]:
        """Route notifications from `address` to a device; returns the function that undoes it."""
        route = _Route(device, sink)
        self._routes.setdefault(address, []).append(route)

        def unregister() -> None:
            routes = self._routes.get(address, [])
            if route in routes:
                routes.remove(route)
            if not routes:
                self._routes.pop(address, None)

        return unregister

    def deliver(self, event: dict[str, Any], sender: str, agent_address: str | None = None) -> int:
        """Hand an event to the devices at the sender's address; returns how many got it."""
        routes = self._routes.get(sender)
        if not routes and agent_address:
            # A v1 trap relayed by a proxy names the originating agent in its agent-addr field.
            routes = self._routes.get(agent_address)
        if not routes:
            self.stats.unknown += 1
            count = self.stats.unknown_senders.get(sender, 0) + 1
            self.stats.unknown_senders[sender] = count
            if count == 1:
                self.log.warning(
                    "SNMP notification from a sender that is no configured device; ignored",
                    source=event.get("source"),
                    trap_oid=event.get("trap_oid"),
                )
            return 0
        for route in list(routes):
            try:
                route.sink(event)
            except Exception as exc:  # noqa: BLE001 - one device's sink must not stop the others
                self.stats.errors += 1
                self.log.warning("cannot hand over an SNMP event", device=route.device, error=str(exc))
        self.stats.routed += 1
        return len(routes)


class TrapListener:
    """A notification receiver (v1/v2c traps, v2c/v3 informs and v3 traps) on one UDP port."""

    def __init__(
        self, settings: TrapSettings, runtime: SnmpRuntime, log: structlog.typing.FilteringBoundLogger
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.log = log
        self.engine: SnmpEngine | None = None
        self.address: tuple[str, int] = ("", 0)
        self._receiver: Any = None
        self._informs: OrderedDict[tuple[Any, ...], float] = OrderedDict()
        self._logged_error = False

    async def start(self) -> None:
        from pysnmp.carrier.asyncio.dgram import udp, udp6
        from pysnmp.entity import config as pconfig
        from pysnmp.entity.engine import SnmpEngine
        from pysnmp.entity.rfc3413 import ntfrcv
        from pysnmp.proto import rfc1902

        from drivers.snmp.client import AUTH, PRIV
        from drivers.snmp.config import split_listen

        host, port = split_listen(self.settings.listen)
        v6 = ":" in host
        # Bind here rather than in pysnmp: its bind happens later in a task and a busy port
        # would go unnoticed.
        sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        engine = SnmpEngine()
        guard_engine(engine, self.runtime.stats)
        module = udp6 if v6 else udp
        transport = module.UdpAsyncioTransport().open_server_mode(sock=sock)
        pconfig.add_transport(engine, module.DOMAIN_NAME, transport)
        for i, community in enumerate(self.settings.communities):
            pconfig.add_v1_system(engine, f"edgegw-trap-{i}", community)
        for user in self.settings.users:
            auth = AUTH[user.auth_protocol] if user.auth_key and user.auth_protocol else pconfig.USM_AUTH_NONE
            priv = PRIV[user.priv_protocol] if user.priv_key and user.priv_protocol else pconfig.USM_PRIV_NONE
            # Without an engine ID the user serves informs (we are their authoritative engine).
            pconfig.add_v3_user(engine, user.user, auth, user.auth_key, priv, user.priv_key)
            for engine_id in user.engine_ids:
                pconfig.add_v3_user(
                    engine,
                    user.user,
                    auth,
                    user.auth_key,
                    priv,
                    user.priv_key,
                    securityEngineId=rfc1902.OctetString(hexValue=engine_id),
                )
        self._receiver = ntfrcv.NotificationReceiver(engine, self._received)
        engine.transport_dispatcher.job_started(1)
        self.engine = engine
        name = sock.getsockname()
        self.address = (str(name[0]), int(name[1]))

    @property
    def engine_id(self) -> str:
        """This listener's snmpEngineID in hex: what v3 inform senders discover."""
        return bytes(self.engine.snmpEngineID.asOctets()).hex() if self.engine is not None else ""

    def close(self) -> None:
        if self.engine is None:
            return
        with contextlib.suppress(Exception):
            if self._receiver is not None:
                self._receiver.close(self.engine)
            self.engine.transport_dispatcher.job_finished(1)
            self.engine.close_dispatcher()
        self.engine = None

    def _received(
        self, engine: Any, _state: Any, _ctx_engine: Any, _ctx_name: Any, varbinds: Any, _cb_ctx: Any
    ) -> None:
        # Called by pysnmp inside its datagram handler: nothing may escape from here.
        try:
            self._handle(engine, varbinds)
        except Exception as exc:  # noqa: BLE001 - a malformed notification must not stop the listener
            self.runtime.stats.errors += 1
            if not self._logged_error:
                self._logged_error = True
                self.log.warning("cannot decode an SNMP notification", error=str(exc))

    def _handle(self, engine: Any, varbinds: Any) -> None:
        from pysnmp.proto import rfc1905
        from pysnmp.proto.api import v2c

        from drivers.snmp.client import to_value

        stats = self.runtime.stats
        stats.received += 1
        ctx = engine.observer.get_execution_context("rfc3412.receiveMessage:request")
        address = ctx["transportAddress"]
        sender, port = str(address[0]), int(address[1])
        version = _VERSIONS.get(int(ctx["messageProcessingModel"]), "?")
        pdu = ctx["pdu"]
        inform = pdu.tagSet == rfc1905.InformRequestPDU.tagSet
        user = str(ctx["securityName"]) if version == "3" else None
        if inform and self._seen(sender, port, version, user, int(v2c.apiPDU.get_request_id(pdu))):
            stats.duplicates += 1
            return
        values = [(tuple(int(a) for a in oid), to_value(val)) for oid, val in varbinds]
        event = codec.build_event(
            ts_ms=int(time.time() * 1000),
            kind="inform" if inform else "trap",
            version=version,
            source=(sender, port),
            varbinds=values,
            namer=self.runtime.name,
            user=user,
        )
        agent = event.get("agent_address")
        self.runtime.deliver(event, sender, agent if isinstance(agent, str) else None)

    def _seen(self, *key: Any) -> bool:
        """True when this inform was already received (the sender retransmits until acknowledged)."""
        now = time.monotonic()
        while self._informs:
            oldest, at = next(iter(self._informs.items()))
            if now - at < _INFORM_MEMORY and len(self._informs) < _INFORM_MEMORY_SIZE:
                break
            del self._informs[oldest]
        if key in self._informs:
            return True
        self._informs[key] = now
        return False
