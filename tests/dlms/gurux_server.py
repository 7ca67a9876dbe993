"""gurux's own COSEM server on a real socket (TCP wrapper): the driver's commands meet a peer it shares no code with.

gurux parses what our client sends (SET and ACTION requests, the values our codec encodes) and
builds the replies our client decodes. It holds a writable register, a read-only one, the clock,
the disconnect control and the billing script table; what it accepted is kept in ``events``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from gurux_dlms import GXDateTime, GXDLMSLNParameters, GXServerReply
from gurux_dlms.enums import AccessMode, DataType, ErrorCode, InterfaceType, MethodAccessMode, SourceDiagnostic, Unit
from gurux_dlms.objects import (
    GXDLMSAssociationLogicalName,
    GXDLMSClock,
    GXDLMSDisconnectControl,
    GXDLMSObject,
    GXDLMSRegister,
    GXDLMSScriptTable,
)
from gurux_dlms.objects.enums import ControlMode, ControlState
from gurux_dlms.secure import GXDLMSSecureServer
from gurux_dlms.ValueEventArgs import ValueEventArgs

WRITABLE_OBIS = "0.0.17.0.0.255"
READ_ONLY_OBIS = "1.0.1.8.0.255"
DISCONNECT_OBIS = "0.0.96.3.10.255"
SCRIPT_OBIS = "0.0.10.0.1.255"
CLOCK_OBIS = "0.0.1.0.0.255"


class _ReadRefusing:
    """An object whose reads fail while its OBIS is in ``unreadable`` (gurux answers hardware-fault)."""

    unreadable: set[str] = set()
    logicalName: str

    def getValue(self, settings: Any, e: Any) -> Any:
        if self.logicalName in self.unreadable and e.index != 1:
            raise ValueError("this attribute is not readable now")
        return super().getValue(settings, e)  # type: ignore[misc]


class _Register(_ReadRefusing, GXDLMSRegister):  # type: ignore[misc]
    pass


class _DisconnectControl(_ReadRefusing, GXDLMSDisconnectControl):  # type: ignore[misc]
    pass


@dataclass
class GuruxObjects:
    """The objects one gurux meter serves (shared by its connections) and what it accepted.

    ``unreadable``: OBIS codes whose GET fails (a SET still works); ``clock_writable``: False
    makes the clock read-only.
    """

    limit: GXDLMSRegister = field(default_factory=lambda: _Register(WRITABLE_OBIS))
    energy: GXDLMSRegister = field(default_factory=lambda: _Register(READ_ONLY_OBIS))
    clock: GXDLMSClock = field(default_factory=lambda: GXDLMSClock(CLOCK_OBIS))
    relay: GXDLMSDisconnectControl = field(default_factory=lambda: _DisconnectControl(DISCONNECT_OBIS))
    scripts: GXDLMSScriptTable = field(default_factory=lambda: GXDLMSScriptTable(SCRIPT_OBIS))
    events: list[tuple[str, Any]] = field(default_factory=list)
    unreadable: set[str] = field(default_factory=set)
    clock_writable: bool = True

    def __post_init__(self) -> None:
        for obj in (self.limit, self.energy, self.relay):
            obj.unreadable = self.unreadable
        self.limit.value = 500
        self.limit.setDataType(2, DataType.UINT16)
        self.limit.scaler, self.limit.unit = 10, Unit.ACTIVE_POWER
        self.energy.value = 1234567
        self.energy.setDataType(2, DataType.UINT32)
        self.energy.scaler, self.energy.unit = 0.1, Unit.ACTIVE_ENERGY
        self.relay.controlMode = ControlMode.MODE_1
        self.relay.controlState = ControlState.CONNECTED
        self.relay.outputState = True

    def all(self) -> list[GXDLMSObject]:
        return [self.limit, self.energy, self.clock, self.relay, self.scripts]


def _complete_gurux_server_api() -> None:
    """gurux 1.0.203's server side calls accessors its own classes do not define; add just those.

    Only methods that do not exist are added, so the client side (which never calls them) is
    unchanged.
    """
    params: Any = GXDLMSLNParameters
    if not hasattr(params, "isMultipleBlocks"):
        params.isMultipleBlocks = lambda self: bool(self.multipleBlocks)
    if not hasattr(params, "setStatus"):
        params.setStatus = lambda self, value: setattr(self, "status", value)
    event: Any = ValueEventArgs
    if not hasattr(event, "__iter__"):
        # the SET and ACTION handlers pass `list(e)` of one event where a list of it is meant
        event.__iter__ = lambda self: iter([self])


_complete_gurux_server_api()


class _Reply(GXServerReply):  # type: ignore[misc]
    """gurux's server calls accessors that this gurux version's GXServerReply lacks."""

    def setReply(self, value: Any) -> None:
        self.reply = value

    def getConnectionInfo(self) -> Any:
        return self.connectionInfo

    def getCount(self) -> int:
        return int(self.count)

    def setCount(self, value: int) -> None:
        self.count = value


class _Server(GXDLMSSecureServer):  # type: ignore[misc]
    """One connection's gurux server over the shared objects (no authentication, public client)."""

    def __init__(self, objects: GuruxObjects) -> None:
        association = GXDLMSAssociationLogicalName()
        super().__init__(association, InterfaceType.WRAPPER)
        self.objects = objects
        # gurux's initialize() would append the whole collection as one object: fill the list here.
        for obj in [association, *objects.all()]:
            self.items.append(obj)
            association.objectList.append(obj)
        self.initialize()

    # accessors gurux's command handler calls and this gurux version's server lacks
    def notifyRead(self) -> None:
        pass

    def notifyConnected(self, connectionInfo: Any) -> None:
        self.onConnected(connectionInfo)

    def getTransaction(self) -> Any:
        return self.transaction

    def setTransaction(self, value: Any) -> None:
        self.transaction = value

    # what gurux asks of a server
    def isTarget(self, serverAddress: int, clientAddress: int) -> bool:
        return True

    def onValidateAuthentication(self, authentication: Any, password: Any) -> Any:
        return SourceDiagnostic.NONE

    def onFindObject(self, objectType: Any, sn: Any, ln: Any) -> None:
        return None

    def onGetAttributeAccess(self, arg: Any) -> Any:
        writable = (arg.target is self.objects.limit and arg.index == 2) or (
            arg.target is self.objects.clock and arg.index == 2 and self.objects.clock_writable
        )
        return AccessMode.READ_WRITE if writable else AccessMode.READ

    def onGetMethodAccess(self, arg: Any) -> Any:
        if arg.target is self.objects.relay or arg.target is self.objects.scripts:
            return MethodAccessMode.ACCESS
        return MethodAccessMode.NO_ACCESS

    def onPreWrite(self, args: Any) -> None:
        for e in args:
            if e.target is self.objects.clock:
                # gurux hands a date-time SET over as its octets: keep them, the client reads them back
                raw = bytes(e.value) if isinstance(e.value, bytes | bytearray) else None
                if raw is None or len(raw) != 12:
                    e.error = ErrorCode.UNMATCH_TYPE
                    continue
                self.objects.events.append(("clock", raw))

    def onPostWrite(self, args: Any) -> None:
        for e in args:
            if e.target is self.objects.limit and e.error == ErrorCode.OK:
                self.objects.events.append(("limit", e.target.value))

    def onPreAction(self, args: Any) -> None:
        for e in args:
            relay = self.objects.relay
            if e.target is relay:
                if e.index == 1:
                    relay.outputState, relay.controlState = False, ControlState.DISCONNECTED
                else:
                    relay.outputState, relay.controlState = True, ControlState.CONNECTED
                self.objects.events.append((f"relay:{e.index}", e.parameters))
            elif e.target is self.objects.scripts:
                self.objects.events.append(("script", e.parameters))
            e.handled = True
            e.value = 0  # no return parameters

    def onPreGet(self, args: Any = None) -> None:
        pass

    def onPostGet(self, args: Any = None) -> None:
        pass

    def onPreRead(self, args: Any) -> None:
        for e in args:
            if e.target is self.objects.clock and e.index == 2 and self.objects.clock.time is None:
                self.objects.clock.time = GXDateTime.now()

    def onPostRead(self, args: Any = None) -> None:
        pass

    def onConnected(self, connectionInfo: Any) -> None:
        pass

    def onInvalidConnection(self, connectionInfo: Any) -> None:
        pass

    def onDisconnected(self, connectionInfo: Any) -> None:
        pass

    def onPostAction(self, args: Any = None) -> None:
        pass


class GuruxMeter:
    """gurux's server on 127.0.0.1 (TCP wrapper, logical device 1); ``async with`` serves it."""

    def __init__(self, *, clock_writable: bool = True) -> None:
        self.objects = GuruxObjects(clock_writable=clock_writable)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def __aenter__(self) -> GuruxMeter:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._connections.values():
            writer.transport.abort()
        # The handlers end once their socket is gone; cancelling them would log a spurious error.
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=1.0)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        server = _Server(self.objects)
        try:
            while data := await reader.read(4096):
                reply = _Reply(bytearray(data))
                with contextlib.redirect_stdout(None):
                    server.handleRequest(reply)
                if reply.reply:
                    writer.write(bytes(reply.reply))
        except ConnectionError:
            pass
        finally:
            writer.close()
            self._connections.pop(task, None)
