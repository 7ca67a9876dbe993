"""A BACnet/IP device twin: a router with routed devices behind it, built from a BACnet profile.

For `schneider-bcpme-bacnet` this is the BCPME's shape: the board is a BACnet/IP router with its own
device object (instance = offset, 50000) and one routed device per panel (offset+1, offset+2) on a
virtual network (50), MAC = panel number, carrying the profile's analog values with `units` set.
Values move over time (the profile's `sim` hints, in the objects' own BACnet units), COV
subscriptions are served, and the twin can go silent to play an unreachable device.

    async with BacnetTwin(port=0, panels=2) as twin:
        twin.address                                  # "127.0.0.1:PORT" (the router)
        twin.set_value(50001, "analog-value,1", 12.5)  # panel 1, channel 1 current
        twin.go_silent(50002); twin.resume(50002)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bacpypes3.apdu import AbortPDU, ComplexAckPDU
from bacpypes3.app import Application
from bacpypes3.appservice import ApplicationServiceAccessPoint
from bacpypes3.basetypes import IPMode
from bacpypes3.comm import bind
from bacpypes3.errors import ServicesError, UnrecognizedService
from bacpypes3.local.analog import AnalogInputObject, AnalogValueObject
from bacpypes3.local.binary import BinaryInputObject, BinaryValueObject
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.multistate import MultiStateInputObject, MultiStateValueObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.netservice import NetworkServiceAccessPoint, NetworkServiceElement
from bacpypes3.primitivedata import ObjectIdentifier
from bacpypes3.vlan import VirtualNetwork

from drivers.bacnet.codec import BINARY_TYPES, MULTISTATE_TYPES, bacnet_units_for, canonical_object, object_type_of
from drivers.bacnet.config import BacnetPoint
from drivers.bacnet.runtime import port_problem
from gateway.models import parse_duration
from gateway.profiles import expand, load_profile, resolve_profile_path

DEFAULT_PROFILE = "schneider-bcpme-bacnet"
_VENDOR_ID = 10  # assumed: Schneider Electric's BACnet vendor identifier
_networks = itertools.count(1)


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port nobody uses right now (bacpypes3 cannot report an ephemeral port it bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --- a stack that can play dead ---------------------------------------------------------------------


class _SilentASAP(ApplicationServiceAccessPoint):  # type: ignore[misc]
    """Drops everything in and out while `silent`: the device does not exist on the wire."""

    silent = False

    async def confirmation(self, pdu: Any) -> None:
        if not self.silent:
            await super().confirmation(pdu)

    async def request(self, apdu: Any) -> None:
        if not self.silent:
            await super().request(apdu)


class _SilentNSAP(NetworkServiceAccessPoint):  # type: ignore[misc]
    """The router's network layer; while `silent` it neither answers nor forwards."""

    silent = False

    async def process_npdu(self, adapter: Any, npdu: Any) -> None:
        if not self.silent:
            await super().process_npdu(adapter, npdu)


class _TwinApplication(Application):  # type: ignore[misc]
    """Counts requests, can refuse ReadPropertyMultiple, and keeps answers within its own max APDU."""

    rpm_supported = True
    cov_supported = True
    max_answer: int | None = None  # enforce when the device does not segment
    requests: Counter[str]

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


def _build_app(objects: Sequence[Any], router: bool) -> _TwinApplication:
    """An Application like `Application.from_object_list`, with the silenceable layers."""
    device = next(o for o in objects if isinstance(o, DeviceObject))
    app = _TwinApplication()
    app.requests = Counter()
    app.asap = _SilentASAP(device, app.device_info_cache)
    app.nsap = _SilentNSAP() if router else NetworkServiceAccessPoint()
    app.nse = NetworkServiceElement()
    bind(app.nse, app.nsap)
    bind(app, app.asap, app.nsap)
    for obj in objects:
        app.add_object(obj)
    return app


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


# --- values ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Sim:
    """How one object's present value moves: a sine between min and max, a ramp, or a constant."""

    start: float
    low: float | None = None
    high: float | None = None
    period: float = 300.0
    rate: float = 0.0
    phase: float = 0.0

    def at(self, t: float) -> float:
        if self.low is not None and self.high is not None:
            mid, amp = (self.low + self.high) / 2, (self.high - self.low) / 2
            return mid + amp * math.sin(2 * math.pi * (t / self.period + self.phase))
        return self.start + self.rate * t


def _sim_for(point: BacnetPoint, salt: int) -> _Sim:
    hint = point.sim or {}
    phase = (salt * 0.6180339887) % 1.0
    if "min" in hint and "max" in hint:
        low, high = float(hint["min"]), float(hint["max"])
        period = parse_duration(hint.get("period", "300s")) or 300.0
        return _Sim(start=(low + high) / 2, low=low, high=high, period=period, phase=phase)
    value = float(hint.get("value", 0.0))
    return _Sim(start=value, rate=float(hint.get("rate", 0.0)))


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


class _AnalogValue(_Overridable, AnalogValueObject):  # type: ignore[misc]
    pass


class _AnalogInput(_Overridable, AnalogInputObject):  # type: ignore[misc]
    pass


class _BinaryValue(_Overridable, BinaryValueObject):  # type: ignore[misc]
    pass


class _BinaryInput(_Overridable, BinaryInputObject):  # type: ignore[misc]
    pass


class _MultiStateValue(_Overridable, MultiStateValueObject):  # type: ignore[misc]
    pass


class _MultiStateInput(_Overridable, MultiStateInputObject):  # type: ignore[misc]
    pass


# The object types the twin serves (outputs would need command priorities: not simulated).
_CLASSES: dict[str, type[Any]] = {
    "analog-value": _AnalogValue,
    "analog-input": _AnalogInput,
    "binary-value": _BinaryValue,
    "binary-input": _BinaryInput,
    "multi-state-value": _MultiStateValue,
    "multi-state-input": _MultiStateInput,
}


def _make_object(point: BacnetPoint, value: float) -> Any:
    otype, _, instance = point.object.partition(",")
    cls = _CLASSES[otype]
    common: dict[str, Any] = {
        "objectIdentifier": (otype, int(instance)),
        "objectName": point.id,
        "description": point.description or point.id,
        "statusFlags": [0, 0, 0, 0],
        "eventState": "normal",
        "outOfService": False,
    }
    if otype in BINARY_TYPES:
        return cls(presentValue="active" if value else "inactive", **common)
    if otype in MULTISTATE_TYPES:
        return cls(presentValue=max(1, int(value)), numberOfStates=max(2, int(value) + 1), **common)
    units = bacnet_units_for(point.unit, point.scale) or "no-units"
    if point.quantity == "power_factor":
        units = "power-factor"
    return cls(presentValue=float(value), units=units, covIncrement=0.0, **common)


def profile_points(profile_ref: str, panel: int, extra: dict[str, Any] | None = None) -> list[BacnetPoint]:
    """The profile's points for one routed device, with every optional block switched on."""
    profile = load_profile(resolve_profile_path(profile_ref, "bacnet"))
    env: dict[str, Any] = {**profile.vars}
    for key, value in list(env.items()):
        # Optional blocks default to off in a profile; a twin serves them all.
        if isinstance(value, int) and value == 0 and key.startswith(("extra", "int_", "opt")):
            env[key] = 1
    if "panel" in env:
        env["panel"] = panel
    env.update(extra or {})
    out: list[BacnetPoint] = []
    seen: set[str] = set()
    for raw, _, _ in expand(profile.points, env):
        point = BacnetPoint.model_validate(raw)
        if point.property != "present-value" or point.object in seen or object_type_of(point.object) not in _CLASSES:
            continue
        seen.add(point.object)
        out.append(point)
    return out


# --- the twin --------------------------------------------------------------------------------------------


class BacnetTwin:
    """A BACnet/IP router (its own device) with `panels` routed devices carrying a profile's objects."""

    def __init__(
        self,
        port: int = 0,
        panels: int = 2,
        *,
        host: str = "127.0.0.1",
        profile: str = DEFAULT_PROFILE,
        network: int = 50,
        offset: int = 50000,
        ip_network: int = 1,
        animate: bool = True,
        update_interval: float = 1.0,
        rpm: bool = True,
        cov: bool = True,
        max_apdu: int = 1476,
        segmentation: str = "no-segmentation",
        profile_vars: dict[str, Any] | None = None,
        bbmd: bool = False,
    ) -> None:
        if not 1 <= panels <= 254:
            raise ValueError("panels must be 1..254")
        self.host = host
        self.port = port
        self.panels = panels
        self.profile = profile
        self.network = network
        self.offset = offset
        self.ip_network = ip_network
        self.animate = animate
        self.update_interval = update_interval
        self.rpm = rpm
        self.cov = cov
        self.max_apdu = max_apdu
        self.segmentation = segmentation
        self.profile_vars = dict(profile_vars or {})
        self.bbmd = bbmd
        self.router: _TwinApplication | None = None
        self.devices: dict[int, _TwinApplication] = {}
        self._sims: dict[tuple[int, str], _Sim] = {}
        self._pinned: set[tuple[int, str]] = set()
        self._vlan_name = ""
        self._task: asyncio.Task[None] | None = None
        self._t0 = time.monotonic()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def router_instance(self) -> int:
        return self.offset

    @property
    def panel_instances(self) -> list[int]:
        return [self.offset + p for p in range(1, self.panels + 1)]

    def mac_of(self, device_instance: int) -> int:
        """The routed device's MAC on the virtual network (the panel number)."""
        return device_instance - self.offset

    async def __aenter__(self) -> BacnetTwin:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self.port == 0:
            self.port = free_udp_port(self.host)
        problem = port_problem(self.host, self.port)
        if problem is not None:
            raise OSError(problem)
        self._vlan_name = f"edgegw-twin-{next(_networks)}-{self.port}"
        VirtualNetwork(self._vlan_name)
        router_device = DeviceObject(
            objectIdentifier=("device", self.offset),
            objectName=f"BCPME-{self.offset}",
            vendorIdentifier=_VENDOR_ID,
            vendorName="Schneider Electric",
            modelName="BCPME (edgegw twin)",
        )
        ip_port = NetworkPortObject(
            f"{self.host}/24:{self.port}",
            objectIdentifier=("network-port", 1),
            objectName="NetworkPort-1",
            networkNumber=self.ip_network,
            networkNumberQuality="configured",
        )
        if self.bbmd:
            # Also a BBMD that accepts foreign-device registrations (the gateway on another subnet).
            ip_port.bacnetIPMode = IPMode.bbmd
            ip_port.bbmdAcceptFDRegistrations = True
            ip_port.bbmdForeignDeviceTable = []
            ip_port.bbmdBroadcastDistributionTable = []
        self.router = _build_app([router_device, ip_port, _virtual_port(self._vlan_name, 0, self.network, 2)], True)
        for p in range(1, self.panels + 1):
            instance = self.offset + p
            device = DeviceObject(
                objectIdentifier=("device", instance),
                objectName=f"Node_{p}",
                vendorIdentifier=_VENDOR_ID,
                vendorName="Schneider Electric",
                modelName="BCPME panel (edgegw twin)",
                maxApduLengthAccepted=self.max_apdu,
                segmentationSupported=self.segmentation,
            )
            app = _build_app([device, _virtual_port(self._vlan_name, p, self.network)], False)
            app.rpm_supported = self.rpm
            app.cov_supported = self.cov
            if self.segmentation == "no-segmentation":
                app.max_answer = self.max_apdu
            for i, point in enumerate(profile_points(self.profile, p, self.profile_vars)):
                sim = _sim_for(point, i + 97 * p)
                app.add_object(_make_object(point, sim.at(0.0)))
                self._sims[(instance, point.object)] = sim
            self.devices[instance] = app
        if self.animate:
            self._task = asyncio.create_task(self._animate(), name="bacnet-twin")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for app in [self.router, *self.devices.values()]:
            if app is not None:
                with contextlib.suppress(Exception):
                    app.close()
        # The virtual network registry is process-wide: free the name.
        VirtualNetwork._networks.pop(self._vlan_name, None)
        self.devices.clear()
        self.router = None

    # -- control ----------------------------------------------------------------------------------------

    def _object(self, device_instance: int, obj: str) -> Any:
        app = self.devices.get(device_instance) if device_instance != self.offset else self.router
        if app is None:
            raise KeyError(f"no device {device_instance}")
        found = app.get_object_id(ObjectIdentifier(canonical_object(obj)))
        if found is None:
            raise KeyError(f"device {device_instance} has no object {obj}")
        return found

    def set_value(self, device_instance: int, obj: str, value: float | bool | int) -> None:
        """Set a present value (in the object's BACnet units) and stop animating that object."""
        target = self._object(device_instance, obj)
        otype = object_type_of(canonical_object(obj))
        if otype in BINARY_TYPES:
            target.presentValue = "active" if value else "inactive"
        elif otype in MULTISTATE_TYPES:
            target.presentValue = int(value)
        else:
            target.presentValue = float(value)
        self._pinned.add((device_instance, canonical_object(obj)))

    def get_value(self, device_instance: int, obj: str) -> Any:
        return self._object(device_instance, obj).presentValue

    def set_flags(self, device_instance: int, obj: str, flags: Sequence[int]) -> None:
        """Set status-flags [in-alarm, fault, overridden, out-of-service] and notify COV subscribers.

        bacpypes3 computes the flags from event-state, reliability and out-of-service, so those are
        what changes; `overridden` is a twin extension.
        """
        target = self._object(device_instance, obj)
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

    def add_object(self, device_instance: int, obj: Any) -> None:
        app = self.devices[device_instance] if device_instance != self.offset else self.router
        assert app is not None
        app.add_object(obj)

    def go_silent(self, device_instance: int | None = None) -> None:
        """Stop answering: the whole board (None), or one device."""
        self._silence(device_instance, True)

    def resume(self, device_instance: int | None = None) -> None:
        self._silence(device_instance, False)

    def _silence(self, device_instance: int | None, silent: bool) -> None:
        if device_instance is None:
            assert self.router is not None
            self.router.nsap.silent = silent
            return
        app = self.devices.get(device_instance) if device_instance != self.offset else self.router
        if app is None:
            raise KeyError(f"no device {device_instance}")
        app.asap.silent = silent

    def requests(self, device_instance: int) -> Counter[str]:
        app = self.devices.get(device_instance) if device_instance != self.offset else self.router
        assert app is not None
        return app.requests

    def tick(self, t: float | None = None) -> None:
        """Move every animated object to its value at `t` seconds (default: since start)."""
        t = time.monotonic() - self._t0 if t is None else t
        for (instance, obj), sim in self._sims.items():
            if (instance, obj) in self._pinned:
                continue
            app = self.devices.get(instance)
            if app is None:
                continue
            target = app.get_object_id(ObjectIdentifier(obj))
            if target is None or object_type_of(obj) in BINARY_TYPES | MULTISTATE_TYPES:
                continue
            target.presentValue = round(sim.at(t), 4)

    async def _animate(self) -> None:
        while True:
            await asyncio.sleep(self.update_interval)
            self.tick()


# --- command line ------------------------------------------------------------------------------------------


def main(profile_ref: str, argv: list[str]) -> int:
    """`edgegw simulate <bacnet profile> [--host H] [--port N] [--panels N] ...`: run the twin until stopped."""
    parser = argparse.ArgumentParser(prog=f"edgegw simulate {profile_ref}", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="IPv4 address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=47808, help="UDP port (default 47808; 0 = any free port)")
    parser.add_argument("--panels", type=int, default=2, help="routed devices behind the router (default 2)")
    parser.add_argument("--network", type=int, default=50, help="the routed (virtual) network number (default 50)")
    parser.add_argument("--offset", type=int, default=50000, help="router device instance; panels are offset+1.. ")
    parser.add_argument("--ip-network", type=int, default=1, help="network number of the IP side (default 1)")
    parser.add_argument("--max-apdu", type=int, default=1476, help="the panels' max APDU (default 1476)")
    parser.add_argument("--no-rpm", action="store_true", help="panels reject ReadPropertyMultiple")
    parser.add_argument("--static", action="store_true", help="values do not move")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    args = parser.parse_args(argv)
    if Path(profile_ref).suffix not in (".yaml", ".yml") and "/" not in profile_ref:
        resolve_profile_path(profile_ref, "bacnet")  # fail early on an unknown name

    async def run() -> None:
        twin = BacnetTwin(
            port=args.port,
            panels=args.panels,
            host=args.host,
            profile=profile_ref,
            network=args.network,
            offset=args.offset,
            ip_network=args.ip_network,
            animate=not args.static,
            rpm=not args.no_rpm,
            max_apdu=args.max_apdu,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        async with twin:
            panels = ", ".join(f"{i} ({twin.network}:{twin.mac_of(i)})" for i in twin.panel_instances)
            print(
                f"BACnet twin of {profile_ref}: router device {twin.router_instance} at {twin.address}, "
                f"network {twin.network}: {panels}",
                flush=True,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(args.duration):
                    await stop.wait()

    try:
        asyncio.run(run())
    except OSError as exc:
        print(f"edgegw simulate: {exc}", file=sys.stderr)
        return 2
    return 0
