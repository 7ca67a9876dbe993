"""`edgegw scan bacnet`: find BACnet devices (Who-Is / I-Am), including devices behind routers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from dataclasses import dataclass
from typing import Any

import structlog
from bacpypes3.pdu import Address

from drivers.bacnet.client import BacnetClient, BacnetError, Failure
from drivers.bacnet.config import BacnetSection, BbmdSettings, ipv4_port
from drivers.bacnet.runtime import BacnetRuntime


@dataclass(slots=True)
class Found:
    """One device that answered."""

    instance: int
    address: str  # ip:port of the device, or of the router in front of it
    network: int | None = None
    mac: str | None = None
    name: str = ""
    vendor: str = ""
    vendor_id: int | None = None
    model: str = ""
    max_apdu: int | None = None
    segmentation: str = ""

    def config(self) -> str:
        """A device entry for the gateway configuration."""
        mac = self.mac if self.mac is None or self.mac.isdigit() else f'"{self.mac}"'
        routed = f", network: {self.network}, mac: {mac}" if self.network is not None else ""
        return f'- {{id: dev-{self.instance}, driver: bacnet, address: "{self.address}"{routed}, device_instance: {self.instance}}}'


def _mac_text(addr: bytes) -> str:
    if len(addr) == 6:
        ip = ".".join(str(b) for b in addr[:4])
        return f"{ip}:{int.from_bytes(addr[4:], 'big')}"
    if len(addr) == 1:
        return str(addr[0])
    return "0x" + addr.hex()


async def _router_of(client: BacnetClient, network: int) -> str | None:
    cache = client.app.nsap.router_info_cache
    for snet in list(client.app.nsap.adapters):
        info = await cache.get_path_info(snet, network)
        if info:
            return str(info[0])
    return None


async def _describe(client: BacnetClient, found: Found, address: Address, timeout: float) -> None:
    dev = f"device,{found.instance}"
    props = ["object-name", "vendor-name", "model-name"]
    values: dict[str, Any] = {}
    try:
        answer = await client.read_multiple(address, [(dev, props)], timeout)
        values = {prop: answer.get((dev, prop)) for prop in props}
    except BacnetError:
        for prop in props:
            with contextlib.suppress(BacnetError, ValueError):
                values[prop] = await client.read_property(address, dev, prop, timeout)
    text = {k: ("" if v is None or isinstance(v, Failure) else str(v)) for k, v in values.items()}
    found.name = text.get("object-name", "")
    found.vendor = text.get("vendor-name", "")
    found.model = text.get("model-name", "")


async def scan(
    runtime: BacnetRuntime,
    target: str | None = None,
    networks: list[int] | None = None,
    timeout: float = 2.0,
    low: int | None = None,
    high: int | None = None,
) -> list[Found]:
    """Who-Is at a target (and through it to its networks) or broadcast; describe every device heard."""
    client = runtime.ready()
    i_ams: list[Any] = []
    networks = list(networks or [])
    if target is not None:
        router = Address(target)
        i_ams += await client.who_is(router, low, high, timeout)
        if not networks:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout + 1):
                    replies = await client.app.nse.who_is_router_to_network(destination=router)
                for _adapter, iartn in replies or []:
                    networks += [int(n) for n in iartn.iartnNetworkList]
        for network in dict.fromkeys(networks):
            await runtime.add_route(network, target)
    else:
        i_ams += await client.who_is(None, low, high, timeout)
    for network in dict.fromkeys(networks):
        i_ams += await client.who_is(Address(f"{network}:*"), low, high, timeout)

    found: dict[int, tuple[Found, Address]] = {}
    for iam in i_ams:
        instance = int(iam.iAmDeviceIdentifier[1])
        source = iam.pduSource
        if instance in found:
            continue
        if source.addrType == Address.remoteStationAddr:
            router_addr = await _router_of(client, source.addrNet) or (target or "?")
            item = Found(instance, router_addr, network=int(source.addrNet), mac=_mac_text(bytes(source.addrAddr)))
        else:
            item = Found(instance, str(source))
        item.vendor_id = int(iam.vendorID)
        item.max_apdu = int(iam.maxAPDULengthAccepted)
        item.segmentation = str(iam.segmentationSupported)
        found[instance] = (item, source)
    await asyncio.gather(*(_describe(client, item, addr, timeout) for item, addr in found.values()))
    return sorted((item for item, _ in found.values()), key=lambda f: (f.network or 0, f.instance))


def main(argv: list[str]) -> int:
    """Command line entry point; prints the devices found."""
    parser = argparse.ArgumentParser(prog="edgegw scan bacnet", description=__doc__)
    parser.add_argument("--local", help="our address/prefix:port, e.g. 10.0.0.2/24:47808 (needed to broadcast)")
    parser.add_argument("--target", help="ip:port of one device or router: ask it (and its networks) only")
    parser.add_argument("--network", type=int, action="append", help="also ask this routed network (repeatable)")
    parser.add_argument("--bbmd", help="register as a foreign device with this BBMD (ip:port) first")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for answers (default 3)")
    parser.add_argument("--low", type=int, help="lowest device instance")
    parser.add_argument("--high", type=int, help="highest device instance")
    parser.add_argument("--config", action="store_true", help="print a device entry for each device found")
    args = parser.parse_args(argv)
    if (args.low is None) != (args.high is None):
        parser.error("give both --low and --high")
    if args.target is None and args.local is None and args.bbmd is None:
        parser.error("a broadcast scan needs --local ADDRESS/PREFIX:PORT (or give --target IP:PORT)")
    try:
        section = BacnetSection(
            local_address=args.local or "0.0.0.0:0",
            bbmd=BbmdSettings(address=args.bbmd, ttl=60) if args.bbmd else None,
        )
        if args.target is not None:
            args.target = ipv4_port(args.target, "--target")
    except ValueError as exc:
        parser.error(str(exc).splitlines()[-1] if str(exc) else "bad address")
    if args.target is None and args.bbmd is None and section.local_address.partition("/")[2].startswith("32:"):
        parser.error("a broadcast scan needs the prefix length in --local, e.g. 10.0.0.2/24:47808")

    async def run() -> list[Found]:
        # stdout is the table: the stack's own messages go to stderr, warnings only.
        log = structlog.wrap_logger(
            structlog.PrintLogger(sys.stderr), wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING)
        )
        runtime = BacnetRuntime(section, log)
        await runtime.start()
        try:
            runtime.ready()
            if args.bbmd:
                await asyncio.sleep(0.5)  # the registration goes out with the first packet
            return await scan(runtime, args.target, args.network, args.timeout, args.low, args.high)
        finally:
            await runtime.stop()

    try:
        devices = asyncio.run(run())
    except Exception as exc:  # noqa: BLE001 - a CLI reports, it does not trace back
        print(f"scan failed: {exc}", file=sys.stderr)
        return 2
    if not devices:
        print("no BACnet device answered", file=sys.stderr)
        return 1
    rows = [("ADDRESS", "NETWORK", "MAC", "INSTANCE", "NAME", "VENDOR", "MAX-APDU")]
    for d in devices:
        rows.append(
            (
                d.address,
                "" if d.network is None else str(d.network),
                d.mac or "",
                str(d.instance),
                d.name,
                d.vendor or (str(d.vendor_id) if d.vendor_id is not None else ""),
                str(d.max_apdu or ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if args.config:
        print()
        for d in devices:
            print(d.config())
    return 0
