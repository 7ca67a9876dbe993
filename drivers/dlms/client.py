"""The COSEM client: gurux-dlms encodes and decodes the APDUs (in PDU mode, so it does no framing
and no I/O), this class moves them over an :class:`ApduLink` under the bus lock.

Errors: :class:`AssociationError` (refused: wrong password or keys), :class:`AssociationLost`
(the meter no longer knows the association: re-associate), :class:`ProtocolError` (a reply that
does not decode), :class:`CosemError` (one attribute refused, data-access-result), and the
transport's LinkError / LinkTimeout.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

from gurux_dlms import GXByteBuffer, GXDLMSException, GXDLMSLNParameters, GXReplyData
from gurux_dlms.ActionRequestType import ActionRequestType
from gurux_dlms.enums import Authentication, Command, Conformance, InterfaceType, Security
from gurux_dlms.GXDLMS import GXDLMS
from gurux_dlms.GXDLMSConfirmedServiceError import GXDLMSConfirmedServiceError
from gurux_dlms.GXDLMSExceptionResponse import GXDLMSExceptionResponse
from gurux_dlms.secure import GXDLMSSecureClient
from gurux_dlms.SetRequestType import SetRequestType

from drivers.dlms import codec
from drivers.dlms.config import DlmsKeys
from drivers.dlms.transport import ApduLink, LinkError

# Diagnostics of a rejected association (acse-service-user), for a clear log line.
_DIAGNOSTICS = {
    1: "no reason given",
    2: "application context not supported",
    11: "authentication mechanism not recognised",
    12: "authentication mechanism required",
    13: "authentication failure (wrong password or key?)",
    14: "authentication required",
}


class CosemError(Exception):
    """The meter refused one attribute (a data-access-result other than success)."""

    def __init__(self, dar: int, what: str = "") -> None:
        self.dar = dar
        text = codec.DAR_TEXT.get(dar, f"data-access-result {dar}")
        super().__init__(f"{what}: {text}" if what else text)


class AssociationError(Exception):
    """The meter refused the association."""


class AssociationLost(Exception):
    """The meter answered as if no association existed (it timed out or was released)."""


class ProtocolError(Exception):
    """A reply that does not decode as the answer to the request."""


@dataclass(frozen=True, slots=True)
class Ref:
    """An attribute of a COSEM object."""

    class_id: int
    obis: str
    attribute: int

    def __str__(self) -> str:
        return f"{self.obis} (class {self.class_id}, attribute {self.attribute})"


class _Obj:
    """What gurux's readList needs of an object."""

    def __init__(self, class_id: int, obis: str) -> None:
        self.objectType = class_id
        self.logicalName = obis


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """gurux prints diagnostics to stdout; keep them out of the daemon's output."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        yield sink


def _no_lock() -> AbstractAsyncContextManager[None]:
    @asynccontextmanager
    async def cm() -> AsyncIterator[None]:
        yield

    return cm()


AuthKind = Literal["none", "low", "high_gmac"]
IC_BLOCK = 1000  # invocation counters reserved (and persisted) at a time

# The clients whose bus the current task holds (CosemClient.exclusive): per task, so that a
# poll running beside a command never slips an exchange into the command's transaction.
_HOLDING: ContextVar[frozenset[int]] = ContextVar("dlms_bus_held", default=frozenset())


class CosemClient:
    """One association with one logical device."""

    def __init__(
        self,
        link: ApduLink,
        *,
        client_sap: int,
        logical: int,
        auth: AuthKind = "none",
        password: bytes | None = None,
        keys: DlmsKeys | None = None,
        security: Literal["authenticated_encrypted", "authenticated"] = "authenticated_encrypted",
        max_pdu: int = 0xFFFF,
        transaction: Callable[[], AbstractAsyncContextManager[None]] = _no_lock,
        ic_load: Callable[[], int] = lambda: 0,
        ic_reserve: Callable[[int], None] = lambda _v: None,
    ) -> None:
        self.link = link
        self.client_sap = client_sap
        self.logical = logical
        self.auth = auth
        self._password = password
        self.keys = keys
        self.security = security
        self.max_pdu = max_pdu
        self.transaction = transaction
        self._ic_load = ic_load
        self._ic_reserve = ic_reserve
        self._ic_reserved = -1
        self.gx = self._new_gurux()
        self._assoc_generation = -1
        self.associations = 0
        self.requests = 0
        self.with_list_ok = True

    # -- gurux set-up ----------------------------------------------------------------------------

    def _new_gurux(self) -> Any:
        mech = {"none": Authentication.NONE, "low": Authentication.LOW, "high_gmac": Authentication.HIGH_GMAC}[
            self.auth
        ]
        gx = GXDLMSSecureClient(True, self.client_sap, self.logical, mech, self._password, InterfaceType.PDU)
        gx.maxReceivePDUSize = self.max_pdu
        # A new invoke-id per request lets a late answer to an earlier request be told apart.
        gx.autoIncreaseInvokeID = True
        if self.auth == "high_gmac":
            if self.keys is None:
                raise AssociationError("auth high_gmac without keys")
            cipher = gx.ciphering
            cipher.security = (
                Security.AUTHENTICATION_ENCRYPTION
                if self.security == "authenticated_encrypted"
                else Security.AUTHENTICATION
            )
            cipher.systemTitle = bytearray(self.keys.system_title)
            cipher.blockCipherKey = bytearray(self.keys.encryption_key)
            cipher.authenticationKey = bytearray(self.keys.authentication_key)
        return gx

    @property
    def ciphered(self) -> bool:
        return self.auth == "high_gmac"

    @property
    def associated(self) -> bool:
        return self.link.connected and self._assoc_generation == self.link.channel.generation

    @property
    def invocation_counter(self) -> int:
        return int(self.gx.ciphering.invocationCounter) if self.ciphered else 0

    @property
    def server_system_title(self) -> bytes | None:
        st = self.gx.settings.sourceSystemTitle
        return bytes(st) if st else None

    def _check_ic(self, needed: int = 1) -> None:
        """Persist a new block of invocation counters BEFORE any of them goes on the wire."""
        if not self.ciphered:
            return
        cipher = self.gx.ciphering
        if self._ic_reserved < 0:
            start = max(
                self._ic_load(), self.keys.invocation_counter if self.keys else 0, int(cipher.invocationCounter)
            )
            cipher.invocationCounter = start
            self._ic_reserved = start
        if int(cipher.invocationCounter) + needed > self._ic_reserved:
            new_limit = int(cipher.invocationCounter) + needed + IC_BLOCK
            if new_limit >= 2**32:
                raise AssociationError("invocation counter exhausted: new keys are needed")
            self._ic_reserve(new_limit)
            self._ic_reserved = new_limit

    # -- exchanges -------------------------------------------------------------------------------

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the bus across several exchanges (a write and its read-back): one bus transaction."""
        if id(self) in _HOLDING.get():
            yield
            return
        async with self.transaction():
            token = _HOLDING.set(_HOLDING.get() | {id(self)})
            try:
                yield
            finally:
                _HOLDING.reset(token)

    def _bus(self) -> AbstractAsyncContextManager[None]:
        """The bus for one exchange, unless this task already holds it."""
        return _no_lock() if id(self) in _HOLDING.get() else self.transaction()

    async def _exchange(self, apdu: bytes, timeout: float) -> bytes:
        self.requests += 1
        async with self._bus():
            return await self.link.exchange(apdu, timeout)

    def _feed(self, data: bytes, reply: Any) -> None:
        try:
            with _quiet():
                done = self.gx.getData(GXByteBuffer(data), reply, None)
        except GXDLMSExceptionResponse as exc:
            raise AssociationLost(f"the meter answered with an exception-response ({exc})") from None
        except GXDLMSConfirmedServiceError as exc:
            raise CosemError(codec.DAR_OTHER, f"confirmed service error ({exc})") from None
        except GXDLMSException as exc:
            raise ProtocolError(f"reply refused: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - gurux raises anything on a malformed reply
            raise ProtocolError(f"undecodable reply ({type(exc).__name__}: {exc})") from None
        if not done:
            raise ProtocolError("incomplete reply")

    async def _roundtrip(self, messages: Sequence[Any], timeout: float) -> Any:
        """Send a request (one or more APDUs) and follow block transfer to the end."""
        reply = GXReplyData()
        for k, msg in enumerate(messages):
            self._check_ic(2)
            data = await self._exchange(bytes(msg), timeout)
            if k < len(messages) - 1:
                continue  # acknowledgements of the request's own blocks
            self._feed(data, reply)
        blocks = 0
        while reply.isMoreData():
            blocks += 1
            if blocks > 100000:
                raise ProtocolError("endless block transfer")
            self._check_ic(2)
            with _quiet():
                msg = self.gx.receiverReady(reply)
            self._feed(await self._exchange(bytes(msg), timeout), reply)
        return reply

    # -- association -----------------------------------------------------------------------------

    async def associate(self, timeout: float) -> None:
        if not self.link.connected:
            async with self._bus():
                await self.link.connect(timeout)
        # A new gurux client per association (clean block and invoke state); the invocation
        # counter carries on from the last one, inside the block already made durable.
        previous_ic = int(self.gx.ciphering.invocationCounter) if self.ciphered and self._ic_reserved >= 0 else None
        self.gx = self._new_gurux()
        if previous_ic is not None:
            self.gx.ciphering.invocationCounter = previous_ic
        self._check_ic(4)
        with _quiet():
            aarq = self.gx.aarqRequest()
        reply = GXReplyData()
        data = await self._exchange(bytes(aarq[0]), timeout)
        try:
            with _quiet():
                self.gx.getData(GXByteBuffer(data), reply, None)
                self.gx.parseAareResponse(reply.data)
        except GXDLMSException as exc:
            diag = getattr(exc, "diagnostic", None)
            text = _DIAGNOSTICS.get(int(diag), str(exc)) if isinstance(diag, int) else str(exc)
            raise AssociationError(f"association refused: {text}") from None
        except GXDLMSConfirmedServiceError as exc:
            raise AssociationError(f"association refused: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - gurux raises anything on a malformed AARE
            raise AssociationError(f"association refused or undecodable AARE ({type(exc).__name__}: {exc})") from None
        if self.gx.getIsAuthenticationRequired():
            self._check_ic(4)
            with _quiet():
                messages = self.gx.getApplicationAssociationRequest()
            reply = GXReplyData()
            try:
                for msg in messages:
                    self._feed(await self._exchange(bytes(msg), timeout), reply)
                with _quiet():
                    self.gx.parseApplicationAssociationResponse(reply.data)
            except (ProtocolError, CosemError, AssociationLost) as exc:
                raise AssociationError(f"HLS authentication failed: {exc}") from None
            except Exception:  # noqa: BLE001 - gurux raises a bare Exception on a wrong StoC
                raise AssociationError("HLS authentication failed: the meter's reply does not match the keys") from None
        if self.keys is not None and self.keys.server_system_title is not None:
            st = self.server_system_title
            if st is not None and st != self.keys.server_system_title:
                raise AssociationError(f"the meter's system title {st.hex()} is not the one in the keys file")
        self._assoc_generation = self.link.channel.generation
        self.associations += 1
        self.with_list_ok = True

    async def release(self, timeout: float) -> None:
        """RLRQ, then the link's own release (HDLC DISC); errors are ignored: we are leaving."""
        try:
            if self.associated:
                with _quiet():
                    msgs = self.gx.releaseRequest()
                if msgs:
                    self._check_ic(2)
                    with contextlib.suppress(LinkError, TimeoutError):
                        await self._exchange(bytes(msgs[0]), timeout)
            async with self._bus():
                await self.link.disconnect(timeout)
        finally:
            self._assoc_generation = -1

    def forget(self) -> None:
        """After an error: the next request starts with a new association."""
        self._assoc_generation = -1

    # -- services --------------------------------------------------------------------------------

    @property
    def conformance(self) -> int:
        return int(self.gx.negotiatedConformance)

    def supports_list(self) -> bool:
        return self.with_list_ok and bool(self.conformance & Conformance.MULTIPLE_REFERENCES)

    def supports_selective_access(self) -> bool:
        return bool(self.conformance & Conformance.SELECTIVE_ACCESS)

    async def get(self, ref: Ref, timeout: float, access: bytes | None = None) -> Any:
        """One attribute's value (decoded by gurux, unscaled); CosemError when refused."""
        return (await self.get_typed(ref, timeout, access))[0]

    async def get_typed(self, ref: Ref, timeout: float, access: bytes | None = None) -> tuple[Any, int]:
        """One attribute's value and its A-XDR type tag (0 for a structured value)."""
        data = GXByteBuffer(access) if access is not None else None
        with _quiet():
            messages = self.gx._read(ref.obis, ref.class_id, ref.attribute, data)
        reply = await self._roundtrip(messages, timeout)
        if reply.error:
            raise CosemError(int(reply.error), str(ref))
        value_type = 0 if isinstance(reply.value, list) else int(reply.valueType)
        return reply.value, value_type

    async def get_list(self, refs: Sequence[Ref], timeout: float) -> list[Any]:
        """Several attributes in one GET-with-list; a refused item holds a CosemError.

        gurux keeps only the last error of a list and gives None in its slot, so a None next to
        an error is read again alone to tell a null value from a refusal.
        """
        with _quiet():
            message_sets = self.gx.readList([(_Obj(r.class_id, r.obis), r.attribute) for r in refs])
        values: list[Any] = []
        for messages in message_sets:
            reply = await self._roundtrip(messages, timeout)
            got = list(reply.value) if isinstance(reply.value, list) else []
            if reply.error:
                got = [v if v is not None else _Unknown() for v in got]
            values.extend(got)
        if len(values) != len(refs):
            raise ProtocolError(f"GET-with-list answered {len(values)} of {len(refs)} items")
        out: list[Any] = []
        for ref, value in zip(refs, values, strict=True):
            if isinstance(value, _Unknown):
                try:
                    out.append(await self.get(ref, timeout))
                except CosemError as exc:
                    out.append(exc)
            else:
                out.append(value)
        return out

    def _messages(self, command: int, request_type: int, descriptor: bytes, data: bytes) -> list[Any]:
        """A SET or ACTION request as gurux frames it (blocks, ciphering), with our own encoded data."""
        settings = self.gx.settings
        with _quiet():
            settings.resetBlockIndex()
            if self.gx.autoIncreaseInvokeID:
                settings.setInvokeID((settings.invokeId + 1) & 0xF)
            p = GXDLMSLNParameters(
                settings, 0, command, request_type, GXByteBuffer(descriptor), GXByteBuffer(data), 0xFF
            )
            return list(GXDLMS.getLnMessages(p))

    async def set(self, ref: Ref, value: codec.Data, timeout: float) -> None:
        """SET one attribute to `value` (typed A-XDR data); CosemError with the data-access-result when refused."""
        descriptor = ref.class_id.to_bytes(2, "big") + codec.obis_bytes(ref.obis) + bytes([ref.attribute, 0])
        messages = self._messages(Command.SET_REQUEST, SetRequestType.NORMAL, descriptor, codec.encode_data(value))
        reply = await self._roundtrip(messages, timeout)
        if reply.error:
            raise CosemError(int(reply.error), str(ref))

    async def action(self, method: Ref, parameter: codec.Data | None, timeout: float) -> Any:
        """ACTION (method `method.attribute` of the object); returns the return parameters (None when none).

        CosemError carries the action-result when the meter refuses.
        """
        present = parameter is not None
        descriptor = method.class_id.to_bytes(2, "big") + codec.obis_bytes(method.obis)
        descriptor += bytes([method.attribute, 1 if present else 0])
        data = codec.encode_data(parameter) if parameter is not None else b""
        messages = self._messages(Command.METHOD_REQUEST, ActionRequestType.NORMAL, descriptor, data)
        reply = await self._roundtrip(messages, timeout)
        if reply.error:
            raise CosemError(int(reply.error), f"{method.obis} (class {method.class_id}, method {method.attribute})")
        return reply.value

    async def get_rows_by_range(
        self, profile_obis: str, clock: Ref, start: bytes, end: bytes, timeout: float
    ) -> list[Any]:
        """Profile buffer entries whose clock column lies in [start, end] (date-time octets)."""
        params = codec.structure(
            codec.structure(
                codec.u16(clock.class_id),
                codec.octets(codec.obis_bytes(clock.obis)),
                codec.i8(clock.attribute),
                codec.u16(0),
            ),
            codec.octets(start),
            codec.octets(end),
            codec.array([]),
        )
        access = bytes([1]) + codec.encode_data(params)
        value = await self.get(Ref(7, profile_obis, 2), timeout, access)
        return list(value) if isinstance(value, list) else []

    async def get_rows_by_entry(self, profile_obis: str, first: int, last: int, timeout: float) -> list[Any]:
        params = codec.structure(codec.u32(first), codec.u32(last), codec.u16(1), codec.u16(0))
        value = await self.get(Ref(7, profile_obis, 2), timeout, bytes([2]) + codec.encode_data(params))
        return list(value) if isinstance(value, list) else []


class _Unknown:
    """A GET-with-list slot whose result gurux did not keep."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000
