"""An async BACnet client over one bacpypes3 Application: bounded requests, robust decoding.

bacpypes3 reports Error, Reject and Abort answers by raising the answer PDU, whose base class
``ErrorRejectAbortNack`` derives from BaseException; a plain ``except Exception`` lets it through
and kills the task. Everything here catches it at the boundary and turns it into
:class:`BacnetError`. Every request is bounded by the caller's timeout instead of the stack's
retry timer (12 s by default), and every value is decoded on its own so that one malformed value
costs one point, not the whole answer.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bacpypes3.apdu import (
    AbortPDU,
    ErrorPDU,
    ErrorRejectAbortNack,
    ReadPropertyACK,
    ReadPropertyMultipleACK,
    ReadPropertyMultipleRequest,
    ReadPropertyRequest,
    RejectPDU,
    SimpleAckPDU,
    SubscribeCOVRequest,
    WritePropertyRequest,
)
from bacpypes3.app import Application
from bacpypes3.basetypes import (
    BinaryPV,
    PriorityValue,
    PropertyIdentifier,
    PropertyReference,
    ReadAccessSpecification,
)
from bacpypes3.constructeddata import Array, SequenceOf
from bacpypes3.errors import ServicesError
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import (
    Atomic,
    Boolean,
    CharacterString,
    Double,
    Enumerated,
    Integer,
    Null,
    ObjectIdentifier,
    ObjectType,
    Real,
    Unsigned,
)
from bacpypes3.vendor import get_vendor_info

from drivers.bacnet.codec import split_object, split_property

_VENDOR = get_vendor_info(0)  # the standard (ASHRAE) object and property definitions

Scalar = int | float | bool | str | None


class BacnetError(Exception):
    """A BACnet Error, Reject or Abort answer, or no answer at all."""

    def __init__(self, kind: str, reason: str, error_class: str | None = None) -> None:
        self.kind = kind  # "error" | "reject" | "abort" | "timeout"
        self.reason = reason
        self.error_class = error_class
        text = f"{error_class}: {reason}" if error_class else reason
        super().__init__(f"{kind}: {text}" if kind != "timeout" else text)

    @property
    def no_response(self) -> bool:
        return self.kind == "timeout" or (self.kind == "abort" and self.reason in ("no-response", "tsm-timeout"))

    @property
    def unsupported_service(self) -> bool:
        """The device does not implement the service (e.g. ReadPropertyMultiple)."""
        if self.kind == "reject":
            return self.reason == "unrecognized-service"
        if self.kind == "error":
            return self.error_class == "services" and self.reason in ("service-request-denied", "unrecognized-service")
        return False

    @property
    def too_big(self) -> bool:
        """The request or its answer exceeded what the device can handle."""
        if self.kind == "abort":
            return self.reason in ("segmentation-not-supported", "buffer-overflow", "apdu-too-long", "out-of-resources")
        if self.kind == "reject":
            return self.reason == "buffer-overflow"
        return False


def _hyphen(value: Any) -> str:
    text = str(value)
    return "".join("-" + c.lower() if c.isupper() else c for c in text).lstrip("-")


def error_from(answer: ErrorRejectAbortNack) -> BacnetError:
    """Turn a raised bacpypes3 answer PDU into a BacnetError (an ordinary Exception)."""
    if isinstance(answer, ErrorPDU):
        return BacnetError(
            "error", _hyphen(getattr(answer, "errorCode", "unknown")), _hyphen(getattr(answer, "errorClass", "unknown"))
        )
    if isinstance(answer, RejectPDU):
        return BacnetError("reject", _hyphen(answer.apduAbortRejectReason))
    if isinstance(answer, AbortPDU):
        return BacnetError("abort", _hyphen(answer.apduAbortRejectReason))
    return BacnetError("error", str(answer) or type(answer).__name__)


@dataclass(frozen=True, slots=True)
class Failure:
    """A per-property failure inside an otherwise good answer (a property access error, a bad value)."""

    message: str
    error_code: str | None = None

    @property
    def unknown_property(self) -> bool:
        return self.error_code == "unknown-property"


# --- addresses and identifiers --------------------------------------------------------------


def make_address(text: str) -> Address:
    """`ip:port` or `net:mac` (bacpypes3 notation) -> Address."""
    return Address(text)


def make_object_id(obj: str) -> ObjectIdentifier:
    otype, instance = split_object(obj)
    return ObjectIdentifier((ObjectType(otype), instance))


def make_property(prop: str) -> tuple[PropertyIdentifier, int | None]:
    name, index = split_property(prop)
    return PropertyIdentifier(name), index


def property_key(obj: Any, prop: Any, index: int | None) -> str:
    """A stable text key `object|property[index]` for matching answers to requests."""
    p = str(PropertyIdentifier(prop)) if not isinstance(prop, PropertyIdentifier) else str(prop)
    return f"{ObjectIdentifier(obj)}|{p}" + (f"[{index}]" if index is not None else "")


# --- values -------------------------------------------------------------------------------------


def to_scalar(value: Any) -> Scalar:
    """A decoded BACnet value as a point's raw value.

    Binary present values (inactive/active) and BOOLEANs become booleans, other enumerations their number;
    bit strings an int with bit 0 first; anything structured its text.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, BinaryPV):
        return int(value) == 1
    if isinstance(value, Boolean):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, list) and all(isinstance(b, int) for b in value):
        return sum((1 << i) for i, b in enumerate(value) if b)
    if isinstance(value, PriorityValue):
        # A priority-array slot: NULL when nobody commands at that priority, else the value held.
        choice = value._choice
        return None if choice in (None, "null") else to_scalar(getattr(value, choice))
    return str(value)


def property_type(obj: str, prop: str) -> type[Any] | None:
    """The standard datatype of a property of an object (an array's element type for `name[i]`), or None."""
    objid = make_object_id(obj)
    pid, index = make_property(prop)
    object_class = _VENDOR.get_object_class(objid[0])
    ptype: type[Any] | None = object_class.get_property_type(pid) if object_class else None
    if ptype is not None and issubclass(ptype, Array):
        if index == 0:
            ptype = Unsigned
        elif index is not None:
            ptype = ptype._subtype
    return ptype


_REAL = struct.Struct(">f")
_BINARY_WORDS = {"active": 1, "inactive": 0}


def _whole(raw: Any) -> int:
    """An integer from an int or an integral float; a bool or text is not a number here."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise TypeError(f"needs a whole number, not {type(raw).__name__}")
    if isinstance(raw, float) and not raw.is_integer():
        raise ValueError(f"{raw!r} is not a whole number")
    return int(raw)


def _number(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise TypeError(f"needs a number, not {type(raw).__name__}")
    return float(raw)


def _coerce(ptype: type[Any], raw: Any) -> Any:
    if issubclass(ptype, Boolean):
        if raw not in (0, 1) or isinstance(raw, str):
            raise ValueError("a BOOLEAN is true or false")
        return Boolean(bool(raw))
    if issubclass(ptype, BinaryPV):
        # Binary present values: the core gives a bool; 0/1 and the state names are the same states.
        state = _BINARY_WORDS.get(raw.strip().lower()) if isinstance(raw, str) else raw
        if state not in (0, 1) or isinstance(state, str):
            raise ValueError("a binary present value is active (true, 1) or inactive (false, 0)")
        return ptype("active" if state else "inactive")
    if issubclass(ptype, Enumerated):
        return ptype(raw) if isinstance(raw, str) else ptype(_whole(raw))
    if issubclass(ptype, Unsigned):
        number = _whole(raw)
        if not 0 <= number <= 0xFFFFFFFF:
            raise ValueError("an Unsigned is 0 .. 4294967295")
        return ptype(number)
    if issubclass(ptype, Integer):
        number = _whole(raw)
        if not -(2**31) <= number < 2**31:
            raise ValueError("an INTEGER is -2147483648 .. 2147483647")
        return ptype(number)
    if issubclass(ptype, Double):
        return ptype(_number(raw))
    if issubclass(ptype, Real):
        real = _number(raw)
        _REAL.pack(real)  # OverflowError beyond the single-precision range
        return ptype(real)
    if issubclass(ptype, CharacterString):
        if not isinstance(raw, str):
            raise TypeError("a CharacterString needs text")
        return ptype(raw)
    return ptype(raw)


def _type_for(raw: Any) -> Any:
    """The datatype of a value for a property whose type is not known (proprietary objects)."""
    if isinstance(raw, bool):
        return Boolean
    if isinstance(raw, int):
        return Unsigned if raw >= 0 else Integer
    if isinstance(raw, float):
        return Real
    return CharacterString


def encode_value(obj: str, prop: str, raw: Any) -> Any:
    """A raw point value as the property's BACnet datatype, for WriteProperty; None is NULL (relinquish).

    REAL for analog present values, enumerated active/inactive for binary ones, Unsigned for
    multi-state ones, and the standard type of any other property. Raises ValueError for a value
    that type cannot hold exactly as given (a fraction for an Unsigned, 1e39 for a REAL, text for
    a number): such a value is never sent.
    """
    if raw is None:
        return Null(())
    ptype = property_type(obj, prop) or _type_for(raw)
    try:
        return _coerce(ptype, raw)
    except (TypeError, ValueError, OverflowError) as exc:
        detail = str(exc) or type(exc).__name__
        raise ValueError(f"cannot write {raw!r} to {prop} of {obj} ({ptype.__name__}): {detail}") from None


def decode_value(objid: Any, prop: Any, index: int | None, any_value: Any) -> Any:
    """Decode a property value (a bacpypes3 ``Any``) using the standard type of the property.

    Proprietary objects or properties, for which no type is known, are decoded from their
    application tag when they hold one primitive value. Raises on a malformed value.
    """
    object_type = ObjectIdentifier(objid)[0]
    object_class = _VENDOR.get_object_class(object_type)
    property_type = object_class.get_property_type(prop) if object_class else None
    if property_type is None:
        tags = any_value.tagList
        if len(tags) != 1:
            raise ValueError(f"no known type for {prop} of {objid}")
        return tags[0].app_to_object()
    if issubclass(property_type, Array):
        if index == 0:
            property_type = Unsigned
        elif index is not None:
            property_type = property_type._subtype
    return any_value.cast_out(property_type, null=issubclass(property_type, Atomic))


# --- requests -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadSpec:
    """One property to read: object and property in canonical text form."""

    object: str
    property: str


class BacnetClient:
    """Bounded BACnet requests over a shared Application."""

    def __init__(self, app: Application) -> None:
        self.app = app

    async def request(self, apdu: Any, timeout: float) -> Any:
        """Send a confirmed request; return the ack or raise BacnetError (never a BaseException)."""
        future = self.app.request(apdu)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise BacnetError("timeout", f"no response within {timeout:g}s") from None
        except ErrorRejectAbortNack as answer:
            raise error_from(answer) from None

    async def read_property(self, address: Address, obj: str, prop: str, timeout: float) -> Any:
        """Read one property; returns the decoded value or raises BacnetError / ValueError (malformed)."""
        objid = make_object_id(obj)
        pid, index = make_property(prop)
        req = ReadPropertyRequest(objectIdentifier=objid, propertyIdentifier=pid, destination=address)
        if index is not None:
            req.propertyArrayIndex = index
        ack = await self.request(req, timeout)
        if not isinstance(ack, ReadPropertyACK):
            raise BacnetError("error", f"unexpected answer {type(ack).__name__}")
        try:
            return decode_value(ack.objectIdentifier, ack.propertyIdentifier, ack.propertyArrayIndex, ack.propertyValue)
        except Exception as exc:  # noqa: BLE001 - whatever the decoder trips on, the value is malformed
            raise ValueError(f"malformed value: {exc}") from None

    async def read_multiple(
        self, address: Address, specs: Sequence[tuple[str, Sequence[str]]], timeout: float
    ) -> dict[tuple[str, str], Any | Failure]:
        """ReadPropertyMultiple of (object, [properties]) specs.

        Returns {(object, property): decoded value or Failure}. Raises BacnetError when the
        request as a whole failed (no answer, rejected, aborted, or an Error for the whole request).
        """
        access_specs = []
        wanted: list[tuple[str, str]] = []
        for obj, props in specs:
            refs = []
            for prop in props:
                pid, index = make_property(prop)
                ref = PropertyReference(propertyIdentifier=pid)
                if index is not None:
                    ref.propertyArrayIndex = index
                refs.append(ref)
                wanted.append((obj, prop))
            access_specs.append(
                ReadAccessSpecification(objectIdentifier=make_object_id(obj), listOfPropertyReferences=refs)
            )
        req = ReadPropertyMultipleRequest(
            listOfReadAccessSpecs=SequenceOf(ReadAccessSpecification)(access_specs), destination=address
        )
        ack = await self.request(req, timeout)
        if not isinstance(ack, ReadPropertyMultipleACK):
            raise BacnetError("error", f"unexpected answer {type(ack).__name__}")
        return _match_results(ack, wanted)

    async def write_property(
        self, address: Address, obj: str, prop: str, value: Any, priority: int | None, timeout: float
    ) -> None:
        """WriteProperty of an encoded value (:func:`encode_value`); raises BacnetError unless acknowledged."""
        pid, index = make_property(prop)
        req = WritePropertyRequest(
            objectIdentifier=make_object_id(obj), propertyIdentifier=pid, propertyValue=value, destination=address
        )
        if index is not None:
            req.propertyArrayIndex = index
        if priority is not None:
            req.priority = priority
        ack = await self.request(req, timeout)
        if not isinstance(ack, SimpleAckPDU):
            raise BacnetError("error", f"unexpected answer {type(ack).__name__}")

    async def subscribe_cov(
        self, address: Address, obj: str, process_id: int, confirmed: bool, lifetime: int, timeout: float
    ) -> None:
        req = SubscribeCOVRequest(
            subscriberProcessIdentifier=process_id,
            monitoredObjectIdentifier=make_object_id(obj),
            issueConfirmedNotifications=confirmed,
            lifetime=lifetime,
            destination=address,
        )
        ack = await self.request(req, timeout)
        if not isinstance(ack, SimpleAckPDU):
            raise BacnetError("error", f"unexpected answer {type(ack).__name__}")

    async def unsubscribe_cov(self, address: Address, obj: str, process_id: int, timeout: float) -> None:
        req = SubscribeCOVRequest(
            subscriberProcessIdentifier=process_id, monitoredObjectIdentifier=make_object_id(obj), destination=address
        )
        await self.request(req, timeout)

    async def who_is(
        self, address: Address | None, low: int | None = None, high: int | None = None, timeout: float = 2.0
    ) -> list[Any]:
        """Who-Is (global broadcast when address is None); returns the I-Am requests heard."""
        try:
            async with asyncio.timeout(timeout + 1.0):
                found = await self.app.who_is(low, high, address, timeout=timeout)
        except TimeoutError:
            return []
        return list(found or [])


def _match_results(ack: Any, wanted: list[tuple[str, str]]) -> dict[tuple[str, str], Any | Failure]:
    """Pair the answer's elements with the request, in order (the standard keeps it), checking ids."""
    out: dict[tuple[str, str], Any | Failure] = {}
    elements: list[tuple[Any, Any]] = []
    for result in ack.listOfReadAccessResults or []:
        for element in result.listOfResults or []:
            elements.append((result.objectIdentifier, element))
    by_key: dict[str, tuple[Any, Any]] = {}
    for objid, element in elements:
        try:
            by_key[property_key(objid, element.propertyIdentifier, element.propertyArrayIndex)] = (objid, element)
        except Exception:  # noqa: BLE001 - an odd identifier just cannot be matched by key
            continue
    for i, (obj, prop) in enumerate(wanted):
        pid, index = make_property(prop)
        match: tuple[Any, Any] | None = None
        if i < len(elements):
            objid, element = elements[i]
            # The wildcard device instance (4194303) is answered with the real instance: match by position.
            if element.propertyIdentifier == pid and element.propertyArrayIndex == index:
                match = (objid, element)
        if match is None:
            match = by_key.get(property_key(make_object_id(obj), pid, index))
        if match is None:
            out[(obj, prop)] = Failure("missing from the answer")
            continue
        objid, element = match
        read_result = element.readResult
        if read_result.propertyAccessError is not None:
            err = read_result.propertyAccessError
            code = _hyphen(err.errorCode)
            out[(obj, prop)] = Failure(f"{_hyphen(err.errorClass)}: {code}", code)
            continue
        try:
            out[(obj, prop)] = decode_value(
                objid, element.propertyIdentifier, element.propertyArrayIndex, read_result.propertyValue
            )
        except Exception as exc:  # noqa: BLE001 - a malformed value costs its point only
            out[(obj, prop)] = Failure(f"malformed value: {exc}")
    return out


# --- the application ----------------------------------------------------------------------------

# (source address, subscriber process id, monitored object, [(property name, decoded value or Failure)])
CovCallback = Callable[[Address, int, str, list[tuple[str, Any]]], bool]


class GatewayApplication(Application):  # type: ignore[misc]
    """The gateway's bacpypes3 Application: COV notifications go to the runtime's dispatcher."""

    cov_dispatch: CovCallback | None = None

    def _notification(self, apdu: Any) -> bool:
        dispatch = self.cov_dispatch
        if dispatch is None:
            return False
        obj = str(apdu.monitoredObjectIdentifier)
        values: list[tuple[str, Any]] = []
        for pv in apdu.listOfValues or []:
            name = str(pv.propertyIdentifier)
            try:
                values.append(
                    (
                        name,
                        decode_value(
                            apdu.monitoredObjectIdentifier, pv.propertyIdentifier, pv.propertyArrayIndex, pv.value
                        ),
                    )
                )
            except Exception as exc:  # noqa: BLE001 - a malformed value costs its point only
                values.append((name, Failure(f"malformed value: {exc}")))
        return dispatch(apdu.pduSource, int(apdu.subscriberProcessIdentifier), obj, values)

    async def do_ConfirmedCOVNotificationRequest(self, apdu: Any) -> None:
        if not self._notification(apdu):
            raise ServicesError(errorCode="unknownSubscription")
        await self.response(SimpleAckPDU(context=apdu))

    async def do_UnconfirmedCOVNotificationRequest(self, apdu: Any) -> None:
        self._notification(apdu)
