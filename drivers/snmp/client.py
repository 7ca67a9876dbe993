"""The pysnmp side of the driver: one agent's credentials and transport, GET / GETNEXT / GETBULK / SET.

Requests go through pysnmp's asyncio engine (the command generators behind ``get_cmd`` and
``bulk_cmd``) with numeric OIDs. The high-level ``get_cmd`` resolves every OID through its MIB
view first, which costs about 0.18 ms per varbind on this hardware; a gateway polling thousands of
OIDs has no use for that, so the target configuration (the hlapi LCD) is shared with the high-level
API while the PDUs are built directly.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pysnmp.entity import config as pconfig
from pysnmp.entity.engine import SnmpEngine
from pysnmp.entity.rfc3413 import cmdgen
from pysnmp.error import PySnmpError
from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    Udp6TransportTarget,
    UdpTransportTarget,
    UsmUserData,
)
from pysnmp.hlapi.v3arch.asyncio.lcd import CommandGeneratorLcdConfigurator
from pysnmp.proto import errind, rfc1902, rfc1905
from pysnmp.proto.error import StatusInformation
from pysnmp.smi.error import PyAsn1Error  # pyasn1's, re-exported (pyasn1 has no type stubs)

from drivers.snmp import codec
from drivers.snmp.codec import END_OF_MIB_VIEW, NO_SUCH_NAME, TOO_BIG, Oid, Value
from gateway.driver import DeviceError, DeviceTimeout


def _protocols() -> tuple[dict[str, Any], dict[str, Any]]:
    auth = {
        "MD5": pconfig.USM_AUTH_HMAC96_MD5,
        "SHA": pconfig.USM_AUTH_HMAC96_SHA,
        "SHA-224": pconfig.USM_AUTH_HMAC128_SHA224,
        "SHA-256": pconfig.USM_AUTH_HMAC192_SHA256,
        "SHA-384": pconfig.USM_AUTH_HMAC256_SHA384,
        "SHA-512": pconfig.USM_AUTH_HMAC384_SHA512,
    }
    priv = {
        "DES": pconfig.USM_PRIV_CBC56_DES,
        "3DES": pconfig.USM_PRIV_CBC168_3DES,
        "AES-128": pconfig.USM_PRIV_CFB128_AES,
        "AES-192": pconfig.USM_PRIV_CFB192_AES_BLUMENTHAL,
        "AES-256": pconfig.USM_PRIV_CFB256_AES_BLUMENTHAL,
        "AES-192C": pconfig.USM_PRIV_CFB192_AES,
        "AES-256C": pconfig.USM_PRIV_CFB256_AES,
    }
    return auth, priv


AUTH, PRIV = _protocols()


def usm_user(
    user: str,
    auth_protocol: str | None,
    auth_key: str | None,
    priv_protocol: str | None,
    priv_key: str | None,
    engine_id: bytes | None = None,
) -> UsmUserData:
    return UsmUserData(
        user,
        authKey=auth_key,
        privKey=priv_key,
        authProtocol=AUTH[auth_protocol] if auth_key is not None and auth_protocol else pconfig.USM_AUTH_NONE,
        privProtocol=PRIV[priv_protocol] if priv_key is not None and priv_protocol else pconfig.USM_PRIV_NONE,
        securityEngineId=rfc1902.OctetString(engine_id) if engine_id is not None else None,
    )


def community_data(community: str, version: str) -> CommunityData:
    return CommunityData(community, mpModel=0 if version == "1" else 1)


_SYNTAX_BY_TAG: dict[Any, str] = {
    rfc1902.Integer32.tagSet: codec.INTEGER,
    rfc1902.Counter32.tagSet: codec.COUNTER32,
    rfc1902.Gauge32.tagSet: codec.GAUGE32,
    rfc1902.TimeTicks.tagSet: codec.TIMETICKS,
    rfc1902.Counter64.tagSet: codec.COUNTER64,
    rfc1902.IpAddress.tagSet: codec.IPADDRESS,
    rfc1902.Opaque.tagSet: codec.OPAQUE,
    rfc1902.OctetString.tagSet: codec.OCTETS,
    rfc1902.ObjectIdentifier.tagSet: codec.OBJECT_ID,
    rfc1902.Null.tagSet: codec.NULL,
    rfc1905.NoSuchObject.tagSet: codec.NO_SUCH_OBJECT,
    rfc1905.NoSuchInstance.tagSet: codec.NO_SUCH_INSTANCE,
    rfc1905.EndOfMibView.tagSet: codec.END_OF_MIB_VIEW,
}


def to_value(obj: Any) -> Value:
    """A pysnmp/pyasn1 value -> a neutral :class:`Value`."""
    syntax = _SYNTAX_BY_TAG.get(getattr(obj, "tagSet", None))
    if syntax is None:
        return Value(type(obj).__name__, None)
    if syntax in codec.EXCEPTIONS or syntax == codec.NULL:
        return Value(syntax, None)
    try:
        if syntax in (codec.OCTETS, codec.IPADDRESS, codec.OPAQUE):
            return Value(syntax, bytes(obj.asOctets()))
        if syntax == codec.OBJECT_ID:
            return Value(syntax, tuple(int(a) for a in obj))
        return Value(syntax, int(obj))
    except (PyAsn1Error, TypeError, ValueError):
        return Value(syntax, None)


_MAKERS: dict[str, Any] = {
    codec.INTEGER: rfc1902.Integer32,
    codec.COUNTER32: rfc1902.Counter32,
    codec.GAUGE32: rfc1902.Gauge32,
    codec.TIMETICKS: rfc1902.TimeTicks,
    codec.COUNTER64: rfc1902.Counter64,
    codec.IPADDRESS: rfc1902.IpAddress,
    codec.OPAQUE: rfc1902.Opaque,
    codec.OCTETS: rfc1902.OctetString,
    codec.BITS: rfc1902.OctetString,
    codec.OBJECT_ID: rfc1902.ObjectIdentifier,
}
_EXCEPTION_VALUES: dict[str, Any] = {
    codec.NO_SUCH_OBJECT: rfc1905.noSuchObject,
    codec.NO_SUCH_INSTANCE: rfc1905.noSuchInstance,
    codec.END_OF_MIB_VIEW: rfc1905.endOfMibView,
}


def from_value(value: Value) -> Any:
    """A neutral :class:`Value` -> the pysnmp object an agent sends."""
    if value.syntax in _EXCEPTION_VALUES:
        return _EXCEPTION_VALUES[value.syntax]
    maker = _MAKERS.get(value.syntax)
    if value.raw is None or maker is None:
        return rfc1902.Null("")
    return maker(value.raw)


@dataclass(slots=True)
class Response:
    status: int
    index: int
    varbinds: list[tuple[Oid, Value]]


_NULL = rfc1902.Null("")
_LCD = CommandGeneratorLcdConfigurator()


def _v3_problem(indication: Any, user: str | None) -> str | None:
    who = f"user {user!r}" if user else "the user"
    if isinstance(indication, errind.WrongDigest | errind.AuthenticationFailure | errind.AuthenticationError):
        return f"SNMPv3 authentication failed for {who}: wrong auth key or auth_protocol"
    if isinstance(indication, errind.UnknownUserName | errind.UnknownSecurityName):
        return f"SNMPv3 {who} is unknown to the agent"
    if isinstance(indication, errind.UnsupportedSecurityLevel):
        return f"the agent does not allow this security level for {who} (check auth/priv settings)"
    if isinstance(indication, errind.DecryptionError):
        return f"SNMPv3 decryption failed for {who}: wrong priv key or priv_protocol"
    if isinstance(indication, errind.NotInTimeWindow):
        return "SNMPv3 message not in time window (agent engine boots/time out of step)"
    if isinstance(indication, errind.EncryptionError | errind.NoEncryption):
        return "SNMPv3 privacy unavailable: install the `cryptography` package"
    if isinstance(indication, errind.UnknownEngineID):
        return "SNMPv3 engine ID discovery failed"
    return None


def route_source(host: str, port: int, family: int) -> str:
    """The local address the kernel sends from to host:port: connecting a UDP socket sends nothing."""
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((host, port))
        return str(probe.getsockname()[0])


# Per engine: (base transport domain, source address) -> the transport domain of its socket.
_DOMAINS: weakref.WeakKeyDictionary[SnmpEngine, dict[tuple[tuple[int, ...], str], tuple[int, ...]]] = (
    weakref.WeakKeyDictionary()
)


def _domain_for(engine: SnmpEngine, base: tuple[int, ...], source: str) -> tuple[int, ...]:
    """A transport domain of its own per source address: pysnmp opens one client socket per domain."""
    domains = _DOMAINS.setdefault(engine, {})
    key = (tuple(base), source)
    if key not in domains:
        domains[key] = (*base, len(domains) + 1)
    return domains[key]


class Agent:
    """One SNMP agent as seen from the gateway: where it is, who we are to it, and its requests."""

    def __init__(
        self,
        engine: SnmpEngine,
        auth: CommunityData | UsmUserData,
        host: str,
        port: int,
        *,
        version: str,
        timeout: float,
        retries: int,
        context: str = "",
    ) -> None:
        self.engine = engine
        self.auth = auth
        self.host = host
        self.port = port
        self.version = version
        self.timeout = timeout
        self.retries = retries
        self.context = context.encode()
        self.address: tuple[str, int] | None = None
        self.source: str | None = None  # the local address requests leave from
        self._domain: tuple[int, ...] | None = None
        self._target_name: str | None = None
        self._user = auth.userName if isinstance(auth, UsmUserData) else None

    async def connect(self) -> tuple[str, int]:
        """Resolve the host and register the target with the engine (once)."""
        if self.address is not None:
            return self.address
        cls: Any = UdpTransportTarget
        family = socket.AF_INET
        try:
            if ipaddress.ip_address(self.host).version == 6:
                cls, family = Udp6TransportTarget, socket.AF_INET6
        except ValueError:
            pass  # a host name: resolved as IPv4
        try:
            target = await cls.create((self.host, self.port), timeout=self.timeout, retries=self.retries)
            addr = target.transport_address
            # pysnmp's client socket binds the wildcard (every interface) unless told otherwise:
            # bind the address the kernel would send from to this agent (127.0.0.1 for a
            # loopback agent), one socket per source address of the engine.
            self.source = route_source(str(addr[0]), int(addr[1]), family)
            target.TRANSPORT_DOMAIN = _domain_for(self.engine, cls.TRANSPORT_DOMAIN, self.source)
            target.set_local_address((self.source, 0))
            self._target_name, _ = _LCD.configure(self.engine, self.auth, target, self.context)
        except (PySnmpError, OSError) as exc:
            raise DeviceError(f"cannot use {self.host}:{self.port}: {exc}") from None
        self._domain = target.TRANSPORT_DOMAIN
        self.address = (str(addr[0]), int(addr[1]))
        return self.address

    def local_address(self) -> tuple[str, int] | None:
        """Where the socket that talks to this agent is bound (after the first request), or None."""
        if self._domain is None:
            return None
        transport = self.engine.transport_dispatcher.get_transport(self._domain)
        sock = getattr(getattr(transport, "transport", None), "get_extra_info", lambda _name: None)("sockname")
        return (str(sock[0]), int(sock[1])) if sock else None

    async def get(self, oids: Sequence[Oid]) -> Response:
        return await self._request(cmdgen.GetCommandGenerator(), oids)

    async def next(self, oids: Sequence[Oid]) -> Response:
        return await self._request(cmdgen.NextCommandGeneratorSingleRun(), oids)

    async def bulk(self, oids: Sequence[Oid], max_repetitions: int, non_repeaters: int = 0) -> Response:
        return await self._request(cmdgen.BulkCommandGeneratorSingleRun(), oids, (non_repeaters, max_repetitions))

    async def set(self, varbinds: Sequence[tuple[Oid, Value]]) -> Response:
        """One SET request with every varbind (the agent applies them all or none)."""
        pdu = [(rfc1902.ObjectName(oid), from_value(value)) for oid, value in varbinds]
        return await self._send(cmdgen.SetCommandGenerator(), (pdu,))

    async def _request(self, generator: Any, oids: Sequence[Oid], bulk: tuple[int, int] | None = None) -> Response:
        varbinds = [(rfc1902.ObjectName(oid), _NULL) for oid in oids]
        return await self._send(generator, (*bulk, varbinds) if bulk is not None else (varbinds,))

    async def _send(self, generator: Any, args: tuple[Any, ...]) -> Response:
        await self.connect()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Any, int, int, Any]] = loop.create_future()

        def done(
            _engine: Any, _handle: Any, indication: Any, status: Any, index: Any, varbinds: Any, _ctx: Any
        ) -> None:
            if not future.done():
                future.set_result((indication, int(status or 0), int(index or 0), varbinds))

        try:
            generator.send_varbinds(self.engine, self._target_name, None, self.context, *args, done)
        except StatusInformation as exc:
            raise DeviceError(self._describe(exc.get("errorIndication"))) from None
        except (PySnmpError, PyAsn1Error) as exc:
            raise DeviceError(f"cannot send the request: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a library failure is a failed poll, not a daemon crash
            raise DeviceError(f"SNMP library error: {exc!r}") from None
        # pysnmp's own timer answers RequestTimedOut; the outer guard only covers a lost callback.
        guard = self.timeout * (self.retries + 1) + 2.0
        try:
            async with asyncio.timeout(guard):
                indication, status, index, answer = await future
        except TimeoutError:
            raise DeviceTimeout(self._timeout_text()) from None
        if indication:
            if isinstance(indication, errind.RequestTimedOut):
                raise DeviceTimeout(self._timeout_text())
            raise DeviceError(self._describe(indication))
        try:
            out = [(tuple(int(a) for a in name), to_value(val)) for name, val in answer]
        except (PyAsn1Error, TypeError, ValueError) as exc:
            raise DeviceError(f"malformed answer: {exc}") from None
        return Response(status, index, out)

    def _timeout_text(self) -> str:
        tries = self.retries + 1
        text = f"no answer from {self.host}:{self.port} ({tries} x {self.timeout:g}s)"
        if self.version != "3":
            text += "; a wrong community looks the same"
        return text

    def _describe(self, indication: Any) -> str:
        problem = _v3_problem(indication, self._user)
        if problem is not None:
            return problem
        if isinstance(indication, errind.RequestTimedOut):
            return self._timeout_text()
        return f"SNMP error from {self.host}:{self.port}: {indication}"

    async def walk(
        self, root: Oid, *, bulk: bool, max_repetitions: int = 25, limit: int = 10000
    ) -> list[tuple[Oid, Value]]:
        """Every instance under `root`, in order (GETBULK on v2c/v3, GETNEXT on v1), at most `limit`."""
        out: list[tuple[Oid, Value]] = []
        cursor = root
        repetitions = max_repetitions
        while len(out) < limit:
            if bulk:
                resp = await self.bulk([cursor], repetitions)
            else:
                resp = await self.next([cursor])
            if resp.status == TOO_BIG and bulk and repetitions > 1:
                repetitions = max(1, repetitions // 2)
                continue
            if resp.status == NO_SUCH_NAME and self.version == "1":
                return out  # v1's end of the MIB view
            if resp.status:
                raise DeviceError(f"the agent answered {codec.error_status_name(resp.status)} while walking")
            if not resp.varbinds:
                return out
            for oid, value in resp.varbinds:
                if value.syntax == END_OF_MIB_VIEW or not codec.in_subtree(oid, root) or oid <= cursor:
                    return out
                out.append((oid, value))
                cursor = oid
                if len(out) >= limit:
                    break
        return out
