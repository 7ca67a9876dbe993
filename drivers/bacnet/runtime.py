"""The gateway's one BACnet/IP stack, shared by every BACnet device: bind, routes, COV dispatch.

bacpypes3 is used directly rather than through BAC0: BAC0 reads a `.env` file from the working
directory and writes `~/.BAC0/BAC0.log` on import and sleeps a fixed second at start, none of which
belongs in a hardened service.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import socket
from collections.abc import Callable
from typing import Any

import structlog
from bacpypes3.basetypes import HostNPort, IPMode
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.pdu import Address

from drivers.bacnet.client import BacnetClient, GatewayApplication
from drivers.bacnet.config import BacnetSection
from gateway.driver import DeviceError, DriverRuntime

# A device driver's COV handler: (monitored object, [(property, value or Failure)]).
CovHandler = Callable[[str, list[tuple[str, Any]]], None]

_RETRY_BIND = (2.0, 5.0, 15.0, 60.0)


def port_problem(ip: str, port: int) -> str | None:
    """Why UDP ip:port cannot be ours, or None.

    The port is bound once without SO_REUSEPORT: bacpypes3 binds with it, and two BACnet stacks on
    one port would silently share (and lose) each other's packets.
    """
    if port == 0:
        return None
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind((ip, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return f"UDP {ip}:{port} is already in use (another BACnet application on this host?)"
        return f"cannot bind UDP {ip}:{port}: {exc.strerror}"
    finally:
        probe.close()
    return None


class BacnetRuntime(DriverRuntime):
    """One bacpypes3 Application bound to `bacnet.local_address`; the drivers share it.

    If the port cannot be bound the daemon keeps running its other devices: the runtime logs,
    retries in the background, and BACnet reads fail with DeviceError until it succeeds.
    """

    def __init__(self, section: BacnetSection | None, log: structlog.typing.FilteringBoundLogger) -> None:
        super().__init__(section if section is not None else BacnetSection(), log)
        self.section: BacnetSection
        self.app: GatewayApplication | None = None
        self.client: BacnetClient | None = None
        self._bind_error: str | None = None
        self._retry_task: asyncio.Task[None] | None = None
        self._routes: dict[int, Address] = {}
        self._cov: dict[tuple[Address, int], CovHandler] = {}
        self._process_ids = itertools.count(1)
        self._timeout_ms = int(self.section.apdu_timeout * 1000)

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if not self._try_bind():
            self._retry_task = asyncio.create_task(self._retry_bind(), name="bacnet-bind")

    async def stop(self) -> None:
        if self._retry_task is not None:
            self._retry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry_task
            self._retry_task = None
        if self.app is not None:
            with contextlib.suppress(Exception):
                self.app.close()
            self.app = None
            self.client = None

    def ready(self) -> BacnetClient:
        """The client, or DeviceError while the port is not bound."""
        if self.client is None:
            raise DeviceError(
                f"the BACnet/IP port {self.section.local_address} is not open: {self._bind_error or 'starting'}"
            )
        return self.client

    def _check_port(self) -> str | None:
        host, _, port = self.section.local_address.rpartition(":")
        return port_problem(host.partition("/")[0], int(port))

    def _try_bind(self) -> bool:
        problem = self._check_port()
        if problem is not None:
            if problem != self._bind_error:
                self.log.error("BACnet/IP port not available; retrying", error=problem)
            self._bind_error = problem
            return False
        try:
            self.app = self._build()
        except Exception as exc:  # noqa: BLE001 - a bad address must not stop the other protocols
            self._bind_error = f"{type(exc).__name__}: {exc}"
            self.log.error("BACnet/IP stack failed to start", error=self._bind_error)
            return False
        self.app.cov_dispatch = self._dispatch
        self.client = BacnetClient(self.app)
        self._bind_error = None
        self.log.info(
            "BACnet/IP stack started",
            local_address=self.section.local_address,
            device_instance=self.section.device_instance,
            foreign=self.section.bbmd.address if self.section.bbmd else None,
        )
        return True

    async def _retry_bind(self) -> None:
        for attempt in itertools.count():
            await asyncio.sleep(_RETRY_BIND[min(attempt, len(_RETRY_BIND) - 1)])
            if self._try_bind():
                for network, router in self._routes.items():
                    await self._install_route(network, router)
                return

    def _build(self) -> GatewayApplication:
        s = self.section
        device = DeviceObject(
            objectIdentifier=("device", s.device_instance),
            objectName=s.device_name,
            vendorIdentifier=s.vendor_identifier,
            maxApduLengthAccepted=s.max_apdu,
            segmentationSupported=s.segmentation,
            maxSegmentsAccepted=s.max_segments,
            apduTimeout=self._timeout_ms,
            numberOfApduRetries=s.apdu_retries,
        )
        port_kwargs: dict[str, Any] = {"objectIdentifier": ("network-port", 1), "objectName": "NetworkPort-1"}
        if s.network is not None:
            port_kwargs.update(networkNumber=s.network, networkNumberQuality="configured")
        port = NetworkPortObject(s.local_address, **port_kwargs)
        if s.bbmd is not None:
            port.bacnetIPMode = IPMode.foreign
            port.fdBBMDAddress = HostNPort(s.bbmd.address)
            port.fdSubscriptionLifetime = int(s.bbmd.ttl)
        app: GatewayApplication = GatewayApplication.from_object_list([device, port])
        return app

    # -- settings the drivers need ---------------------------------------------------------------

    def fit_timeout(self, seconds: float) -> None:
        """Make the stack's own retry timer wait at least as long as a device's timeout.

        Each request is bounded by its device's `timeout`; the stack's timer (per try) must not
        give up first, or a slow device configured with a long timeout would abort early.
        """
        per_try = int(seconds * 1000 / (self.section.apdu_retries + 1)) + 1
        if per_try > self._timeout_ms:
            self._timeout_ms = per_try
            if self.app is not None and self.app.device_object is not None:
                self.app.device_object.apduTimeout = per_try

    async def add_route(self, network: int, router: str) -> None:
        """Route `network` through the router at `router` (ip:port) without asking the network.

        The driver knows where the router is (the device's `address`): this spares the broadcast
        Who-Is-Router-To-Network, which a foreign device or a filtered network may never answer.
        """
        address = Address(router)
        known = self._routes.get(network)
        if known is not None and known != address:
            self.log.warning(
                "two routers configured for one BACnet network; the last wins",
                network=network,
                old=str(known),
                new=str(address),
            )
        self._routes[network] = address
        if self.app is not None:
            await self._install_route(network, address)

    async def _install_route(self, network: int, address: Address) -> None:
        assert self.app is not None
        nsap = self.app.nsap
        snet = nsap.local_adapter.adapterNet if nsap.local_adapter is not None else None
        try:
            await nsap.update_router_references(snet, address, [network])
        except Exception as exc:  # noqa: BLE001 - a routing cache conflict costs the route, logged
            self.log.warning("cannot set BACnet route", network=network, router=str(address), error=str(exc))

    # -- COV dispatch ----------------------------------------------------------------------------

    def register_cov(self, address: Address, handler: CovHandler) -> int:
        """A subscriber process id for a device; its notifications go to `handler`."""
        while True:
            pid = next(self._process_ids) % (1 << 22) or 1
            if (address, pid) not in self._cov:
                break
        self._cov[(address, pid)] = handler
        return pid

    def unregister_cov(self, address: Address, pid: int) -> None:
        self._cov.pop((address, pid), None)

    def _dispatch(self, source: Address, pid: int, obj: str, values: list[tuple[str, Any]]) -> bool:
        handler = self._cov.get((source, pid))
        if handler is None:
            return False
        try:
            handler(obj, values)
        except Exception as exc:  # noqa: BLE001 - a handler bug must not break the stack
            self.log.error("COV handler failed", source=str(source), error=f"{type(exc).__name__}: {exc}")
        return True
