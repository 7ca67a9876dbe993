"""The BACnet/IP device twin: a router with one routed device per panel, built from a BACnet profile.

For ``schneider-bcpme-bacnet`` this is the BCPME's shape: the board is a BACnet/IP router with its
own device object (instance = offset, 50000) and one routed device per panel (offset+1, offset+2,
...) on a virtual network (50), MAC = panel number. Each panel serves the profile's present-value
objects with ``units`` set. Values follow the points' ``sim`` hints (engineering units, served in
the object's own units through the point's scale and offset). Values and outputs (analog, binary,
multi-state) are commandable: WriteProperty with a priority fills a 16-slot priority array. COV
subscriptions are served, status flags can be set, and faults apply per device instance (or to
the whole board) at the datagram level: silent, slow, garbage and truncated replies.

    async with BacnetTwin.create(vars={"channels": 4}) as twin:
        device = {"id": "p1", **twin.device_config()}   # panel 1; device_config(50002) for panel 2
        section = twin.section_config()                  # the gateway's `bacnet:` section
        twin.set_value("panel1.ch1.current", 12.5)       # engineering units, pinned
        twin.faults.set("silent", target=50002)          # panel 2 stops answering
        twin.writes                                      # every WriteProperty the twin accepted

Without a router (``router=False``) each panel is a device of its own on BACnet/IP, one UDP port
each (``port``, ``port + 1``, ... or free ports).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import random
import socket
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from bacpypes3.apdu import AbortPDU, ComplexAckPDU, SimpleAckPDU
from bacpypes3.app import Application
from bacpypes3.basetypes import BinaryPV, IPMode, PriorityArray, PriorityValue
from bacpypes3.errors import ExecutionError, PropertyError, RejectException, ServicesError, UnrecognizedService
from bacpypes3.ipv4 import IPv4DatagramServer
from bacpypes3.local.analog import AnalogInputObject, AnalogValueObject
from bacpypes3.local.binary import BinaryInputObject, BinaryValueObject
from bacpypes3.local.cov import COVIncrementCriteria, GenericCriteria
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.multistate import MultiStateInputObject, MultiStateValueObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.local.object import Object as LocalObject
from bacpypes3.object import AnalogOutputObject, BinaryOutputObject, MultiStateOutputObject
from bacpypes3.pdu import PDU
from bacpypes3.primitivedata import Null, ObjectIdentifier, PropertyIdentifier, Real, Unsigned
from bacpypes3.vlan import VirtualNetwork

from drivers.bacnet.codec import BINARY_TYPES, MULTISTATE_TYPES, bacnet_units_for, canonical_object, object_type_of
from drivers.bacnet.config import BacnetPoint
from drivers.bacnet.runtime import port_problem
from gateway.profiles import expand, load_profile, resolve_profile_path
from gateway.twin import DemoDevice, Fault, Signal, Twin, TwinClock, Write, check_sim, faulty_reply, signal_for

DEFAULT_PROFILE = "schneider-bcpme-bacnet"
_VENDOR_ID = 10  # assumed: Schneider Electric's BACnet vendor identifier
_networks = itertools.count(1)

Wire = float | int  # a present value as the twin keeps it: REAL, 0/1 (binary), 1..n (multi-state)


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port nobody uses right now (bacpypes3 cannot report an ephemeral port it bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --- objects ------------------------------------------------------------------------------------


class _Overridable:
    """Twin objects can show the `overridden` status flag, which bacpypes3 always reports as 0."""

    _twin_overridden = False

    @property
    def statusFlags(self) -> Any:
        flags = super().statusFlags  # type: ignore[misc]
        if self._twin_overridden:
            flags[2] = 1
        return flags

    @statusFlags.setter
    def statusFlags(self, value: Any) -> None:
        """Computed from event-state, reliability and out-of-service, as in bacpypes3."""


class _Commanded(_Overridable):
    """A commandable object: 16 priority slots and a relinquish default decide the present value.

    The twin keeps the slots itself (bacpypes3's Commandable writes priority 16 whenever the
    present value is assigned, which would turn every animation step into a command).
    """

    _twin_form: ClassVar[str] = "analog"  # analog (REAL), binary (0/1) or multistate (1..n)
    _twin_slots: list[Wire | None]
    _twin_default: Wire

    @property
    def priorityArray(self) -> Any:
        return PriorityArray([_priority_value(self._twin_form, v) for v in self._twin_slots])

    @priorityArray.setter
    def priorityArray(self, value: Any) -> None:
        """Read-only on the wire: WriteProperty to present-value fills the slots."""

    @property
    def relinquishDefault(self) -> Any:
        return _typed(self._twin_form, self._twin_default)

    @relinquishDefault.setter
    def relinquishDefault(self, value: Any) -> None:
        """The twin sets the default (the value the process shows when nothing commands it)."""

    def twin_commanded(self) -> bool:
        return any(v is not None for v in self._twin_slots)

    def twin_effective(self) -> Wire:
        """The highest-priority slot that holds a value, else the relinquish default."""
        return next((v for v in self._twin_slots if v is not None), self._twin_default)

    def twin_recalculate(self) -> None:
        # Assigned as an attribute so that bacpypes3's COV detection sees the change.
        self.presentValue = _present(self._twin_form, self.twin_effective())


def _typed(form: str, value: Wire) -> Any:
    if form == "binary":
        return BinaryPV("active" if value else "inactive")
    if form == "multistate":
        return Unsigned(int(value))
    return Real(float(value))


def _present(form: str, value: Wire) -> Any:
    if form == "binary":
        return "active" if value else "inactive"
    return int(value) if form == "multistate" else float(value)


def _priority_value(form: str, value: Wire | None) -> PriorityValue:
    if value is None:
        return PriorityValue(null=())
    if form == "binary":
        return PriorityValue(enumerated=BinaryPV("active" if value else "inactive"))
    if form == "multistate":
        return PriorityValue(unsigned=Unsigned(int(value)))
    return PriorityValue(real=Real(float(value)))


class _AnalogValue(_Commanded, AnalogValueObject):  # type: ignore[misc]
    pass


class _AnalogOutput(_Commanded, LocalObject, AnalogOutputObject):  # type: ignore[misc]
    _cov_criteria = COVIncrementCriteria


class _BinaryValue(_Commanded, BinaryValueObject):  # type: ignore[misc]
    _twin_form = "binary"


class _BinaryOutput(_Commanded, LocalObject, BinaryOutputObject):  # type: ignore[misc]
    _twin_form = "binary"
    _cov_criteria = GenericCriteria


class _MultiStateValue(_Commanded, MultiStateValueObject):  # type: ignore[misc]
    _twin_form = "multistate"
    _cov_criteria = GenericCriteria  # bacpypes3's increment criteria need a cov-increment


class _MultiStateOutput(_Commanded, LocalObject, MultiStateOutputObject):  # type: ignore[misc]
    _twin_form = "multistate"
    _cov_criteria = GenericCriteria


class _AnalogInput(_Overridable, AnalogInputObject):  # type: ignore[misc]
    pass


class _BinaryInput(_Overridable, BinaryInputObject):  # type: ignore[misc]
    pass


class _MultiStateInput(_Overridable, MultiStateInputObject):  # type: ignore[misc]
    _cov_criteria = GenericCriteria


# The object types the twin serves.
_CLASSES: dict[str, type[Any]] = {
    "analog-value": _AnalogValue,
    "analog-input": _AnalogInput,
    "analog-output": _AnalogOutput,
    "binary-value": _BinaryValue,
    "binary-input": _BinaryInput,
    "binary-output": _BinaryOutput,
    "multi-state-value": _MultiStateValue,
    "multi-state-input": _MultiStateInput,
    "multi-state-output": _MultiStateOutput,
}


def _form_of(otype: str) -> str:
    if otype in BINARY_TYPES:
        return "binary"
    return "multistate" if otype in MULTISTATE_TYPES else "analog"


@dataclass(slots=True)
class _Served:
    """One object of one device: its point, its signal, and what the twin was told about it."""

    point: BacnetPoint
    instance: int
    form: str
    signal: Signal
    states: int = 2  # multi-state: number-of-states
    raw: Wire | None = None  # the pinned value (object units) while `pinned`
    pinned: bool = False
    obj: Any = None  # the bacpypes3 object, while the twin runs

    def to_object(self, value: Any) -> Wire:
        """An engineering value in the object's own units (REAL, 0/1 or a state number)."""
        if self.form == "binary":
            return 1 if value and value not in ("0", "inactive", "false") else 0
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = 0.0
        if self.form == "multistate":
            return min(max(1, round(number)), self.states)
        p = self.point
        return (number - p.offset) / (p.scale or 1.0)

    def to_engineering(self, raw: Any) -> Any:
        if self.form == "binary":
            return raw == 1 or str(raw) == "active"
        if self.form == "multistate":
            return int(raw)
        return float(raw) * self.point.scale + self.point.offset

    def limits(self) -> tuple[float | None, float | None]:
        """min/max-pres-value in object units, from the point's sim hint."""
        sim = self.point.sim or {}
        ends = [self.to_object(sim[k]) if k in sim else None for k in ("min_pres_value", "max_pres_value")]
        lo, hi = ends
        if lo is not None and hi is not None and lo > hi:  # a negative scale swaps the ends
            lo, hi = hi, lo
        return lo, hi


def _make_object(s: _Served, raw: Wire) -> Any:
    point = s.point
    otype, _, instance = point.object.partition(",")
    common: dict[str, Any] = {
        "objectIdentifier": (otype, int(instance)),
        "objectName": point.id,
        "description": point.description or point.id,
        "statusFlags": [0, 0, 0, 0],
        "eventState": "normal",
        "outOfService": False,
    }
    if s.form == "binary":
        if otype != "binary-value":
            common["polarity"] = "normal"
        obj = _CLASSES[otype](presentValue=_present("binary", raw), **common)
    elif s.form == "multistate":
        obj = _CLASSES[otype](presentValue=int(raw), numberOfStates=s.states, **common)
    else:
        units = bacnet_units_for(point.unit, point.scale) or "no-units"
        if point.quantity == "power_factor":
            units = "power-factor"
        lo, hi = s.limits()
        if lo is not None:
            common["minPresValue"] = lo
        if hi is not None:
            common["maxPresValue"] = hi
        obj = _CLASSES[otype](presentValue=float(raw), units=units, covIncrement=0.0, **common)
    if isinstance(obj, _Commanded):
        obj._twin_slots = [None] * 16
        obj._twin_default = raw
    return obj


def _checked_write(obj: Any, value: Any) -> Wire:
    """The wire value of a write to a commandable present value, or the BACnet error it deserves."""
    form = obj._twin_form
    if form == "binary":
        number = int(value)
        if number not in (0, 1):
            raise PropertyError("valueOutOfRange")
        return number
    if form == "multistate":
        number = int(value)
        if not 1 <= number <= int(obj.numberOfStates):
            raise PropertyError("valueOutOfRange")
        return number
    real = float(value)
    lo, hi = obj.minPresValue, obj.maxPresValue
    if (lo is not None and real < float(lo)) or (hi is not None and real > float(hi)) or math.isnan(real):
        raise PropertyError("valueOutOfRange")
    return real


# --- the stack ----------------------------------------------------------------------------------

WriteHook = Callable[["_TwinApplication", Any, int, Wire | None], None]


class _TwinApplication(Application):  # type: ignore[misc]
    """One device's stack: counts requests, refuses RPM/COV on demand, fits its max APDU, takes writes."""

    rpm_supported = True
    cov_supported = True
    max_answer: int | None = None  # enforce when the device does not segment
    instance = 0
    on_write: WriteHook | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests: Counter[str] = Counter()

    async def do_ReadPropertyRequest(self, apdu: Any) -> None:
        self.requests["read-property"] += 1
        await super().do_ReadPropertyRequest(apdu)

    async def do_ReadPropertyMultipleRequest(self, apdu: Any) -> None:
        self.requests["read-property-multiple"] += 1
        if not self.rpm_supported:
            raise UnrecognizedService("read-property-multiple is not supported")
        await super().do_ReadPropertyMultipleRequest(apdu)

    async def do_SubscribeCOVRequest(self, apdu: Any) -> None:
        self.requests["subscribe-cov"] += 1
        if not self.cov_supported:
            raise ServicesError(errorCode="serviceRequestDenied")
        await super().do_SubscribeCOVRequest(apdu)

    async def do_WritePropertyRequest(self, apdu: Any) -> None:
        self.requests["write-property"] += 1
        obj = self.get_object_id(apdu.objectIdentifier)
        if obj is None:
            raise ExecutionError(errorClass="object", errorCode="unknownObject")
        attr = str(PropertyIdentifier(apdu.propertyIdentifier).attr)
        if attr not in obj._elements or getattr(obj, attr, None) is None:
            raise PropertyError("unknownProperty")
        value_type = obj.get_property_type(attr)
        if attr != "presentValue" or not isinstance(obj, _Commanded):
            raise PropertyError("writeAccessDenied")
        if apdu.propertyArrayIndex is not None:
            raise PropertyError("propertyIsNotAnArray")
        priority = 16 if apdu.priority is None else int(apdu.priority)
        if not 1 <= priority <= 16:
            raise ExecutionError(errorClass="services", errorCode="parameterOutOfRange")
        if priority == 6:  # reserved for minimum on/off times: no client may command at it
            raise PropertyError("writeAccessDenied")
        try:
            value = apdu.propertyValue.cast_out(value_type, null=True)
        except (ValueError, TypeError, RejectException):
            raise PropertyError("invalidDataType") from None
        wire = None if isinstance(value, Null) else _checked_write(obj, value)
        if self.on_write is not None:
            self.on_write(self, obj, priority, wire)
        await self.response(SimpleAckPDU(context=apdu))

    async def response(self, apdu: Any) -> None:
        if self.max_answer is not None and isinstance(apdu, ComplexAckPDU):
            size = len(apdu.encode().pduData)
            if size > self.max_answer:
                # What a device with a small buffer does when an answer does not fit.
                self.requests["aborted-too-long"] += 1
                abort = AbortPDU(srv=True, invoke_id=apdu.apduInvokeID, reason="segmentation-not-supported")
                abort.pduDestination = apdu.pduDestination
                await super().response(abort)
                return
        await super().response(apdu)


def _virtual_port(name: str, mac: int, network: int, instance: int = 1) -> NetworkPortObject:
    return NetworkPortObject(
        objectIdentifier=("network-port", instance),
        objectName=f"NetworkPort-{instance}",
        networkType="virtual",
        protocolLevel="bacnet-application",
        macAddress=bytes([mac]),
        networkInterfaceName=name,
        networkNumber=network,
        networkNumberQuality="configured",
        statusFlags=[0, 0, 0, 0],
        reliability="no-fault-detected",
        outOfService=False,
        changesPending=False,
    )


def _ip_port(host: str, port: int, network: int, bbmd: bool) -> NetworkPortObject:
    ip_port = NetworkPortObject(
        f"{host}/24:{port}",
        objectIdentifier=("network-port", 1),
        objectName="NetworkPort-1",
        networkNumber=network,
        networkNumberQuality="configured",
    )
    if bbmd:
        # Also a BBMD that accepts foreign-device registrations (the gateway on another subnet).
        ip_port.bacnetIPMode = IPMode.bbmd
        ip_port.bbmdAcceptFDRegistrations = True
        ip_port.bbmdForeignDeviceTable = []
        ip_port.bbmdBroadcastDistributionTable = []
    return ip_port


def _source_mac(data: bytes, network: int) -> int | None:
    """The routed source MAC of an outgoing BACnet/IP datagram from `network`, if it carries one."""
    if len(data) < 6 or data[0] != 0x81:
        return None
    # BVLL: original unicast/broadcast carry the NPDU at 4, a forwarded NPDU at 10.
    start = {0x0A: 4, 0x0B: 4, 0x04: 10}.get(data[1])
    if start is None or len(data) < start + 2 or data[start] != 0x01:
        return None
    control, i = data[start + 1], start + 2
    if control & 0x20:  # destination specifier: DNET, DLEN, DADR
        if len(data) < i + 3:
            return None
        i += 3 + data[i + 2]
    if not control & 0x08 or len(data) < i + 4:  # no source specifier
        return None
    snet, slen = int.from_bytes(data[i : i + 2], "big"), data[i + 2]
    if snet != network or slen != 1:
        return None
    return data[i + 3]


# --- profiles -----------------------------------------------------------------------------------


def profile_points(profile_ref: str | Path, panel: int, extra: Mapping[str, Any] | None = None) -> list[BacnetPoint]:
    """The profile's points for one routed device, with every optional block switched on."""
    profile = load_profile(resolve_profile_path(str(profile_ref), "bacnet"))
    env: dict[str, Any] = {**profile.vars}
    for key, value in list(env.items()):
        # Optional blocks default to off in a profile; a twin serves them all.
        if isinstance(value, int) and value == 0 and key.startswith(("extra", "int_", "opt")):
            env[key] = 1
    if "panel" in env:
        env["panel"] = panel
    env.update(extra or {})
    # A calculated point has no object: the gateway computes it from the objects the twin serves.
    return [BacnetPoint.model_validate(raw) for raw, _, _ in expand(profile.points, env) if raw.get("calc") is None]


def _served_points(points: Sequence[BacnetPoint]) -> list[BacnetPoint]:
    """The points the twin serves as objects: one present value per object of a served type."""
    seen: set[str] = set()
    out: list[BacnetPoint] = []
    for point in points:
        if point.property != "present-value" or point.object in seen or object_type_of(point.object) not in _CLASSES:
            continue
        seen.add(point.object)
        out.append(point)
    return out


# --- the twin -----------------------------------------------------------------------------------


class BacnetTwin(Twin):
    """A BACnet/IP router (its own device) with `panels` routed devices carrying a profile's objects."""

    kind = "bacnet"
    default_profile = DEFAULT_PROFILE
    default_vars: ClassVar[Mapping[str, Any]] = {"channels": 4}
    sim_extras = frozenset({"min_pres_value", "max_pres_value"})
    demo = (
        DemoDevice(
            id="bcpme-2-bacnet",
            profile=DEFAULT_PROFILE,
            options={"panels": 1},
            config={"interval": "2s", "timeout": "1s"},
            show=("panel1.mains.frequency", "panel1.mains.voltage_an", "panel1.ch1.current"),
        ),
    )

    def __init__(
        self,
        port: int = 0,
        panels: int = 2,
        *,
        host: str = "127.0.0.1",
        profile: str | Path | None = None,
        points: Sequence[Mapping[str, Any]] | None = None,
        profile_vars: Mapping[str, Any] | None = None,
        network: int = 50,
        offset: int = 50000,
        ip_network: int = 1,
        router: bool = True,
        animate: bool = True,
        update_interval: float = 1.0,
        rpm: bool = True,
        cov: bool = True,
        max_apdu: int = 1476,
        segmentation: str = "no-segmentation",
        bbmd: bool = False,
        clock: TwinClock | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__(clock=clock, seed=seed)
        if not 1 <= panels <= 254:
            raise ValueError("panels must be 1..254")
        if profile is not None and points is not None:
            raise ValueError("a twin serves a profile or inline points, not both")
        if not 1 <= network <= 65534:
            raise ValueError("network must be 1..65534")
        if not 0 <= offset <= 4194302 - panels:
            raise ValueError("offset: the device instances must stay below 4194303")
        self.host = host
        self.port = port
        self.panels = panels
        self.points = [dict(p) for p in points] if points is not None else None
        self.profile: str | Path | None = None if points is not None else (profile or DEFAULT_PROFILE)
        self.profile_vars = dict(profile_vars or {})
        self.network = network
        self.offset = offset
        self.ip_network = ip_network
        self.router_enabled = router
        self.animate = animate
        self.update_interval = update_interval
        self.rpm = rpm
        self.cov = cov
        self.max_apdu = max_apdu
        self.segmentation = segmentation
        self.bbmd = bbmd
        self._seed = seed
        self.router: _TwinApplication | None = None
        self.devices: dict[int, _TwinApplication] = {}
        self.ports: dict[int, int] = {}  # device instance -> its UDP port (no router: one per panel)
        self._served: dict[int, dict[str, _Served]] = {}  # instance -> point id -> object
        self._by_object: dict[int, dict[str, _Served]] = {}  # instance -> "analog-value,1" -> object
        self._vlan_name = ""
        self._task: asyncio.Task[None] | None = None
        self._delayed: set[asyncio.Task[None]] = set()
        for instance in self.panel_instances:
            self._add_points(instance)

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
        """A twin of a profile (default: the BCPME's) or of inline points; options: panels, network,
        offset, ip_network, router, animate, update_interval, rpm, cov, max_apdu, segmentation,
        bbmd, clock, seed."""
        return cls(port, host=host, profile=profile, points=points, profile_vars=vars, **options)

    def _add_points(self, instance: int) -> None:
        panel = instance - self.offset
        if self.points is not None:
            points = [BacnetPoint.model_validate(p) for p in self.points if p.get("calc") is None]
        else:
            assert self.profile is not None
            points = profile_points(self.profile, panel, self.profile_vars)
        by_id: dict[str, _Served] = {}
        for point in _served_points(points):
            check_sim(point.sim, self.sim_extras)
            by_id[point.id] = self._serve(point, instance)
        self._served[instance] = by_id
        self._by_object[instance] = {s.point.object: s for s in by_id.values()}

    def _serve(self, point: BacnetPoint, instance: int) -> _Served:
        form = _form_of(object_type_of(point.object))
        # One stream per object: a panel's values do not depend on which other points it serves.
        seed = f"{self._seed}:{instance}:{point.object}" if self._seed is not None else self.rng.random()
        rng = random.Random(seed)
        signal = signal_for(
            point.sim,
            quantity=point.quantity,
            phase=point.phase,
            kind=str(point.kind),
            value_type="bool" if form == "binary" else "number",
            name=point.id,
            rng=rng,
        )
        served = _Served(point, instance, form, signal)
        if form == "multistate":
            top = max(v for v in (signal.maximum, signal.value, 2) if isinstance(v, int | float))
            served.states = max(2, math.ceil(top))
        return served

    # -- where ----------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """ip:port of the router (of the first panel without a router)."""
        return f"{self._reach_host()}:{self.port}"

    def _reach_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def router_instance(self) -> int:
        return self.offset

    @property
    def panel_instances(self) -> list[int]:
        return [self.offset + p for p in range(1, self.panels + 1)]

    def mac_of(self, device_instance: int) -> int:
        """The routed device's MAC on the virtual network (the panel number)."""
        return device_instance - self.offset

    def _instance(self, target: Hashable | None) -> int:
        if target is None:
            return self.panel_instances[0]
        if not isinstance(target, int) or target not in self._served:
            raise KeyError(f"no panel with device instance {target!r} (panels: {self.panel_instances})")
        return target

    def device_config(self, target: Hashable | None = None) -> dict[str, Any]:
        """driver, profile (and vars) or points, address, network/mac and device_instance of one panel."""
        instance = self._instance(target)
        out: dict[str, Any] = {"driver": "bacnet"}
        if self.profile is not None:
            out["profile"] = str(self.profile)
            profile_vars = dict(self.profile_vars)
            if "panel" in load_profile(resolve_profile_path(str(self.profile), "bacnet")).vars:
                profile_vars["panel"] = self.mac_of(instance)
            if profile_vars:
                out["profile_vars"] = profile_vars
        else:
            out["points"] = [dict(p) for p in self.points or []]
        if self.router_enabled:
            out.update(address=self.address, network=self.network, mac=self.mac_of(instance))
        else:
            out["address"] = f"{self._reach_host()}:{self.ports.get(instance, self.port)}"
        out["device_instance"] = instance
        return out

    def section_config(self) -> dict[str, Any]:
        """The gateway's `bacnet:` section: a stack on another free UDP port of the same host."""
        host = self._reach_host()
        return {"local_address": f"{host}/24:{free_udp_port(host)}"}

    def describe(self) -> str:
        what = f"profile {self.profile}" if self.profile is not None else "inline points"
        count = len(self._served[self.panel_instances[0]])
        if self.router_enabled:
            panels = ", ".join(f"{i} ({self.network}:{self.mac_of(i)})" for i in self.panel_instances)
            return (
                f"BACnet/IP router device {self.router_instance} at {self.address}, network {self.network}: "
                f"{panels}; {what}, {count} objects per panel"
            )
        devices = ", ".join(f"{i} at {self._reach_host()}:{self.ports.get(i, '?')}" for i in self.panel_instances)
        return f"BACnet/IP devices {devices}; {what}, {count} objects each"

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.devices:
            return
        ports = self._pick_ports()
        for port in ports.values():
            problem = port_problem(self.host, port)
            if problem is not None:
                raise OSError(problem)
        self.ports = ports
        self.port = ports[self.panel_instances[0]] if not self.router_enabled else ports[self.offset]
        try:
            self._build()
            await self._wait_bound()
        except BaseException:
            await self.stop()
            raise
        if self.animate:
            self._task = asyncio.create_task(self._animate(), name="bacnet-twin")

    def _pick_ports(self) -> dict[int, int]:
        if self.ports:  # a restart serves where the devices were
            return dict(self.ports)
        if self.router_enabled:
            return {self.offset: self.port or free_udp_port(self.host)}
        return {
            instance: (self.port + i if self.port else free_udp_port(self.host))
            for i, instance in enumerate(self.panel_instances)
        }

    def _build(self) -> None:
        t = self.clock.elapsed()
        if self.router_enabled:
            self._vlan_name = f"edgegw-twin-{next(_networks)}-{self.port}"
            VirtualNetwork(self._vlan_name)
            router_device = DeviceObject(
                objectIdentifier=("device", self.offset),
                objectName=f"BCPME-{self.offset}",
                vendorIdentifier=_VENDOR_ID,
                vendorName="Schneider Electric",
                modelName="BCPME (edgegw twin)",
            )
            ip_port = _ip_port(self.host, self.port, self.ip_network, self.bbmd)
            vport = _virtual_port(self._vlan_name, 0, self.network, 2)
            self.router = _TwinApplication.from_object_list([router_device, ip_port, vport])
            self.router.instance = self.offset
            self._fault_sends(self.router, None)
        for p, instance in enumerate(self.panel_instances, start=1):
            if self.router_enabled:
                port = _virtual_port(self._vlan_name, p, self.network)
            else:
                port = _ip_port(self.host, self.ports[instance], self.ip_network, self.bbmd and p == 1)
            app = _TwinApplication.from_object_list([self._panel_device(p, instance), port])
            app.instance = instance
            app.rpm_supported = self.rpm
            app.cov_supported = self.cov
            app.on_write = self._on_write
            if self.segmentation == "no-segmentation":
                app.max_answer = self.max_apdu
            for served in self._served[instance].values():
                raw = served.raw if served.pinned and served.raw is not None else served.to_object(served.signal.at(t))
                served.obj = _make_object(served, raw)
                app.add_object(served.obj)
            self.devices[instance] = app
            if not self.router_enabled:
                self._fault_sends(app, instance)

    def _panel_device(self, panel: int, instance: int) -> DeviceObject:
        return DeviceObject(
            objectIdentifier=("device", instance),
            objectName=f"Node_{panel}",
            vendorIdentifier=_VENDOR_ID,
            vendorName="Schneider Electric",
            modelName="BCPME panel (edgegw twin)",
            maxApduLengthAccepted=self.max_apdu,
            segmentationSupported=self.segmentation,
        )

    def _servers(self) -> list[IPv4DatagramServer]:
        apps = [self.router] if self.router_enabled else list(self.devices.values())
        return [
            ll.server
            for app in apps
            if app is not None
            for ll in app.link_layers.values()
            if isinstance(getattr(ll, "server", None), IPv4DatagramServer)
        ]

    async def _wait_bound(self) -> None:
        """Return once every UDP socket is bound: bacpypes3 binds in a task of its own."""
        try:
            async with asyncio.timeout(5.0):
                for server in self._servers():
                    await server._local_transport_ready.wait()
        except TimeoutError:
            raise OSError(f"cannot bind UDP {self.host}:{self.port}") from None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._delayed):
            task.cancel()
        self._delayed.clear()
        was_serving = bool(self.devices)
        for app in [self.router, *self.devices.values()]:
            if app is not None:
                with contextlib.suppress(Exception):
                    app.close()
        # The virtual network registry is process-wide: free the name.
        VirtualNetwork._networks.pop(self._vlan_name, None)
        for by_id in self._served.values():
            for served in by_id.values():
                served.obj = None
        self.devices.clear()
        self.router = None
        if was_serving:
            await self._ports_released()

    async def _ports_released(self) -> None:
        """Return once the sockets are closed (at most 2 s), so that a restart finds its ports free."""
        # asyncio closes a datagram socket on a later turn of the loop, not in close(); there is
        # nothing to await for it, so look at the port.
        for _ in range(200):
            if not any(port_problem(self.host, port) for port in self.ports.values()):
                return
            await asyncio.sleep(0.01)

    # -- faults at the datagram level -------------------------------------------------------------

    def _fault_sends(self, app: _TwinApplication, target: int | None) -> None:
        """Pass every datagram an IP-facing stack sends through the fault of the device it is from.

        `target` None: a router, whose datagrams are its own or forwarded from a routed device
        (told apart by the NPDU's source network and MAC).
        """
        for ll in app.link_layers.values():
            server = getattr(ll, "server", None)
            if isinstance(server, IPv4DatagramServer):
                server.indication = self._faulty_indication(server.indication, target)

    def _sender_of(self, data: bytes) -> int:
        mac = _source_mac(data, self.network)
        instance = self.offset + mac if mac is not None else self.offset
        return instance if instance in self.devices else self.offset

    def _faulty_indication(self, send: Callable[[PDU], Any], target: int | None) -> Callable[[PDU], Any]:
        async def indication(pdu: PDU) -> None:
            data = bytes(pdu.pduData)
            sender = target if target is not None else self._sender_of(data)
            fault = self.faults.of(sender)
            if fault.mode is Fault.NONE:
                await send(pdu)
                return
            self.requests(sender)[f"fault-{fault.mode.value}"] += 1
            reply = faulty_reply(fault, data, self.rng)
            if reply.data is None:
                return
            out = PDU(reply.data, source=pdu.pduSource, destination=pdu.pduDestination)
            if reply.delay <= 0:
                await send(out)
                return
            task = asyncio.create_task(self._send_later(send, out, reply.delay), name="bacnet-twin-slow")
            self._delayed.add(task)
            task.add_done_callback(self._delayed.discard)

        return indication

    @staticmethod
    async def _send_later(send: Callable[[PDU], Any], pdu: PDU, delay: float) -> None:
        await asyncio.sleep(delay)
        with contextlib.suppress(Exception):  # the socket may have closed meanwhile
            await send(pdu)

    def go_silent(self, device_instance: int | None = None) -> None:
        """Stop answering: the whole board (None), or one device (``faults.set("silent", ...)``)."""
        self.faults.set(Fault.SILENT, target=device_instance)

    def resume(self, device_instance: int | None = None) -> None:
        """Undo :meth:`go_silent` (or any fault) of the whole board (None) or of one device."""
        self.faults.set(Fault.NONE, target=device_instance)

    # -- values ---------------------------------------------------------------------------------

    def _lookup(self, point: str, target: Hashable | None) -> _Served:
        instance = self._instance(target)
        served = self._served[instance].get(point)
        if served is None:
            with contextlib.suppress(ValueError):
                served = self._by_object[instance].get(canonical_object(point))
        if served is None:
            raise KeyError(f"device {instance} serves no point or object {point!r}")
        return served

    def value(self, point: str, target: Hashable | None = None) -> Any:
        """The engineering value a point (id or object reference) of a panel shows now."""
        served = self._lookup(point, target)
        if served.obj is None:
            raw = (
                served.raw
                if served.pinned and served.raw is not None
                else served.to_object(served.signal.at(self.clock.elapsed()))
            )
            return served.to_engineering(raw)
        return served.to_engineering(served.obj.presentValue)

    def set_value(self, point: str | int, value: Any, target: Any = None) -> None:
        """Pin a point (id or object reference, engineering units) of a panel: it stops moving.

        The older form ``set_value(device_instance, object, value)`` sets a present value in the
        object's own units, on any device of the twin (the router's too).
        """
        if isinstance(point, int):
            self._set_present(point, str(value), target)
            return
        served = self._lookup(point, target)
        self._pin(served, served.to_object(value))

    def _pin(self, served: _Served, raw: Wire) -> None:
        served.raw, served.pinned = raw, True
        obj = served.obj
        if obj is None:
            return
        if isinstance(obj, _Commanded):
            obj._twin_default = raw  # a command in a slot still wins
            obj.twin_recalculate()
        else:
            obj.presentValue = _present(served.form, raw)

    def _set_present(self, device_instance: int, obj: str, value: Any) -> None:
        ref = canonical_object(obj)
        served = self._by_object.get(device_instance, {}).get(ref)
        if served is not None:
            self._pin(
                served, float(value) if served.form == "analog" else served.to_object(served.to_engineering(value))
            )
            return
        target = self._object(device_instance, obj)
        otype = object_type_of(ref)
        if otype in BINARY_TYPES:
            target.presentValue = "active" if value else "inactive"
        elif otype in MULTISTATE_TYPES:
            target.presentValue = int(value)
        else:
            target.presentValue = float(value)

    def unpin(self, point: str, target: Hashable | None = None) -> None:
        """Let a pinned point move with its signal again (from the next tick)."""
        self._lookup(point, target).pinned = False

    def get_value(self, device_instance: int, obj: str) -> Any:
        """A present value as the device serves it (object units), of any object of any device."""
        return self._object(device_instance, obj).presentValue

    def _app(self, device_instance: int) -> _TwinApplication:
        app = (
            self.router if device_instance == self.offset and self.router_enabled else self.devices.get(device_instance)
        )
        if app is None:
            raise KeyError(f"no device {device_instance} (is the twin started?)")
        return app

    def _object(self, device_instance: int, obj: str) -> Any:
        found = self._app(device_instance).get_object_id(ObjectIdentifier(canonical_object(obj)))
        if found is None:
            raise KeyError(f"device {device_instance} has no object {obj}")
        return found

    def set_flags(self, device_instance: int, obj: str, flags: Sequence[int]) -> None:
        """Set status-flags [in-alarm, fault, overridden, out-of-service] and notify COV subscribers.

        `obj` is an object reference or a point id. bacpypes3 computes the flags from event-state,
        reliability and out-of-service, so those are what changes; `overridden` is a twin extension.
        """
        served = self._by_object.get(device_instance, {}).get(obj) or self._served.get(device_instance, {}).get(obj)
        target = served.obj if served is not None and served.obj is not None else self._object(device_instance, obj)
        alarm, fault, overridden, oos = [*flags, 0, 0, 0, 0][:4]
        target.eventState = "offnormal" if alarm else "normal"
        target.reliability = "unreliable-other" if fault else "no-fault-detected"
        target.outOfService = bool(oos)
        if isinstance(target, _Overridable):
            target._twin_overridden = bool(overridden)
        # The COV algorithm only watches properties that are set, not computed ones: tell it.
        app = target._app
        detection = app._cov_detections.get(target.objectIdentifier) if app is not None else None
        if detection is not None:
            detection.statusFlags = target.statusFlags
            detection.send_cov_notifications()

    def priority_array(self, point: str, target: Hashable | None = None) -> list[Any]:
        """The 16 slots of a commandable point (object units, None where relinquished)."""
        obj = self._lookup(point, target).obj
        if not isinstance(obj, _Commanded):
            raise KeyError(f"{point!r} is not a commandable object of a running twin")
        return list(obj._twin_slots)

    def add_object(self, device_instance: int, obj: Any) -> None:
        self._app(device_instance).add_object(obj)

    def requests(self, device_instance: int) -> Counter[str]:
        """What a device was asked (by service) and which faults hit its datagrams."""
        return self._app(device_instance).requests

    def _on_write(self, app: _TwinApplication, obj: Any, priority: int, wire: Wire | None) -> None:
        obj._twin_slots[priority - 1] = wire
        obj.twin_recalculate()
        ref = canonical_object(str(obj.objectIdentifier))
        served = self._by_object.get(app.instance, {}).get(ref)
        point = served.point.id if served is not None else ref
        value = None if wire is None or served is None else served.to_engineering(wire)
        self.record_write(
            Write(point=point, value=value, raw=wire, target=app.instance, priority=priority, ts=self.clock.now())
        )

    def tick(self, t: float | None = None) -> None:
        """Move every free object to its signal's value at `t` twin seconds (default: the clock's now).

        Pinned objects (set_value) and commanded ones (a priority slot holds a value) stay put.
        """
        t = self.clock.elapsed() if t is None else t
        for by_id in self._served.values():
            for served in by_id.values():
                obj = served.obj
                if obj is None or served.pinned:
                    continue
                raw = served.to_object(served.signal.at(t))
                if isinstance(obj, _Commanded):
                    if obj.twin_commanded():
                        continue
                    obj._twin_default = raw
                obj.presentValue = _present(served.form, raw)

    async def _animate(self) -> None:
        while True:
            await asyncio.sleep(self.update_interval)
            self.tick()

    # -- the command line -----------------------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--panels", type=int, default=2, help="devices behind the router (default 2)")
        parser.add_argument("--network", type=int, default=50, help="the routed (virtual) network number (default 50)")
        parser.add_argument("--offset", type=int, default=50000, help="router device instance; panels are offset+1..")
        parser.add_argument("--ip-network", type=int, default=1, help="network number of the IP side (default 1)")
        parser.add_argument("--no-router", action="store_true", help="each panel its own BACnet/IP device and port")
        parser.add_argument("--max-apdu", type=int, default=1476, help="the panels' max APDU (default 1476)")
        parser.add_argument(
            "--segmentation",
            default="no-segmentation",
            choices=["no-segmentation", "segmented-both", "segmented-transmit", "segmented-receive"],
            help="the panels' segmentation support (default no-segmentation)",
        )
        parser.add_argument("--no-rpm", action="store_true", help="panels reject ReadPropertyMultiple")
        parser.add_argument("--no-cov", action="store_true", help="panels refuse COV subscriptions")
        parser.add_argument("--bbmd", action="store_true", help="also a BBMD accepting foreign devices")
        parser.add_argument("--static", action="store_true", help="values do not move")

    @classmethod
    def options_from_args(cls, args: argparse.Namespace) -> dict[str, Any]:
        return {
            "panels": args.panels,
            "network": args.network,
            "offset": args.offset,
            "ip_network": args.ip_network,
            "router": not args.no_router,
            "max_apdu": args.max_apdu,
            "segmentation": args.segmentation,
            "rpm": not args.no_rpm,
            "cov": not args.no_cov,
            "bbmd": args.bbmd,
            "animate": not args.static,
        }
