"""`edgegw scan modbus`: which unit ids answer on a TCP endpoint or an RS-485 line, and what they are.

Each unit id gets one short read; a unit that answers, even with an exception (illegal address,
...), is there. Gateway exceptions 10/11 mean the gateway answered for a unit that did not.
Each unit found is then asked for its device identification (FC 43 / MEI 14, regular objects):
vendor, product code and revision are shown, with the shipped profile whose `identity` matches
(vendor name and product code, gateway/profiles.py `Identity`). `--no-identify` skips it.
Exit status: 0 when at least one unit answered, 1 when none did, 2 on a usage or connection error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from drivers.modbus.client import (
    EXCEPTION_NAMES,
    GATEWAY_EXCEPTIONS,
    Endpoint,
    ExceptionReply,
    IdentificationUnsupported,
    LinkError,
    LinkTimeout,
    ModbusLink,
    ReplyError,
    SerialEndpoint,
    TcpEndpoint,
    read_identification,
)
from drivers.modbus.codec import FUNCTION_CODES, Identification
from drivers.modbus.twin import parse_units
from gateway.profiles import Profile, matching_profiles

# Identification replies are long (up to 253 bytes, ~0.3 s at 9600 baud): never wait less than this.
MIN_ID_TIMEOUT = 0.5


@dataclass(slots=True)
class UnitIdentity:
    """What one unit said to Read Device Identification, and the shipped profiles that match it."""

    identification: Identification | None = None
    error: str | None = None  # why there is none: not supported, no answer, malformed
    profiles: list[Profile] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The scan's text for it: the identity, then the suggested profile."""
        ident = self.identification
        if ident is None:
            return [f"identity: {self.error}"]
        d = ident.as_dict()
        main = ", ".join(
            f"{label} {d[key]}"
            for key, label in (("vendor_name", "vendor"), ("product_code", "product code"), ("revision", "revision"))
            if key in d
        )
        extra = [f"{k} {v}" for k, v in d.items() if k not in ("vendor_name", "product_code", "revision")]
        out = [f"identity: {main or 'no objects'} ({ident.level}{'; ' if extra else ''}{'; '.join(extra)})"]
        if ident.missing:
            out.append(f"          incomplete: no {', '.join(ident.missing)}")
        if self.profiles:
            for profile in self.profiles:
                note = (
                    " (identity assumed: check the device against it)"
                    if profile.identity and profile.identity.assumed
                    else ""
                )
                out.append(f"profile:  {profile.name}{note}")
        else:
            out.append("profile:  no shipped profile matches this vendor and product code")
        return out


async def identify(link: ModbusLink, unit: int, timeout: float) -> UnitIdentity:
    """Read a unit's identification and find the shipped profiles that match it; never raises but LinkError."""
    try:
        ident = await read_identification(link, unit, max(timeout, MIN_ID_TIMEOUT))
    except IdentificationUnsupported as exc:
        return UnitIdentity(error=f"not supported (exception {exc.code}, {EXCEPTION_NAMES.get(exc.code, 'unknown')})")
    except LinkTimeout:
        return UnitIdentity(error="no answer to FC 43 (a device without it may stay silent)")
    except ExceptionReply as exc:
        return UnitIdentity(error=f"gateway exception {exc.code} ({EXCEPTION_NAMES.get(exc.code, 'unknown')})")
    except ReplyError as exc:
        return UnitIdentity(error=f"malformed reply: {exc}")
    found = matching_profiles("modbus", ident.get("vendor_name"), ident.get("product_code"))
    return UnitIdentity(ident, profiles=found)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="edgegw scan modbus",
        description="Probe Modbus unit ids on a TCP endpoint or a serial line and list those that answer.",
    )
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", help="Modbus TCP server or serial-to-Ethernet converter")
    where.add_argument("--serial", help="serial port, e.g. /dev/ttyUSB0")
    ap.add_argument("--port", type=int, default=502, help="TCP port (default 502)")
    ap.add_argument("--rtu-over-tcp", action="store_true", help="RTU framing on the TCP connection")
    ap.add_argument("--ascii", action="store_true", help="ASCII framing (on the serial line, or over TCP)")
    ap.add_argument("--baudrate", type=int, default=9600)
    ap.add_argument("--parity", choices=["N", "E", "O"], default="N")
    ap.add_argument("--bytesize", type=int, choices=[7, 8], default=8)
    ap.add_argument("--stopbits", type=int, choices=[1, 2], default=1)
    ap.add_argument("--units", default="1-247", help="unit ids to probe, e.g. 1-247 or 1,2,10-20 (default 1-247)")
    ap.add_argument("--register", type=int, default=0, help="wire address to read (default 0)")
    ap.add_argument("--function", choices=sorted(FUNCTION_CODES), default="holding")
    ap.add_argument("--timeout", type=float, default=0.2, help="seconds to wait per unit (default 0.2)")
    ap.add_argument(
        "--no-identify",
        action="store_true",
        help=f"do not ask the units found for their device identification (FC 43; waits at least {MIN_ID_TIMEOUT:g}s)",
    )
    return ap


async def scan(
    endpoint: Endpoint,
    units: list[int],
    function: str = "holding",
    register: int = 0,
    timeout: float = 0.2,
    on_found: Callable[[int, str], None] | None = None,
    on_identity: Callable[[int, UnitIdentity], None] | None = None,
) -> dict[int, str]:
    """Probe `units`; returns unit id -> what it answered, for those that answered.

    With `on_identity`, each unit that answered is asked for its identification right after.
    """
    link = ModbusLink(endpoint)
    # Silence is the normal answer of an empty unit id here, not a sign of a dead connection.
    link.SILENT_LIMIT = 1 << 30
    code = FUNCTION_CODES[function]
    found: dict[int, str] = {}
    try:
        for unit in units:
            try:
                data = await link.read(unit, code, register, 1, timeout)
            except LinkTimeout:
                continue
            except ExceptionReply as exc:
                if exc.code in GATEWAY_EXCEPTIONS:
                    continue
                found[unit] = f"answers with exception {exc.code} ({EXCEPTION_NAMES.get(exc.code, 'unknown')})"
            except ReplyError as exc:
                found[unit] = f"answers, but malformed: {exc}"
            else:
                value = f"0x{data.hex()}" if code in (3, 4) else str(bool(data[0] & 1))
                found[unit] = f"answers: {function} {register} = {value}"
            if on_found is not None:
                on_found(unit, found[unit])
            if on_identity is not None:
                on_identity(unit, await identify(link, unit, timeout))
    finally:
        await link.close()
    return found


def main(argv: list[str]) -> int:
    """`edgegw scan modbus ...`."""
    args = _parser().parse_args(argv)
    try:
        units = parse_units(args.units)
    except ValueError as exc:
        print(f"edgegw scan modbus: {exc}", file=sys.stderr)
        return 2
    if not 0 <= args.register <= 65535:
        print("edgegw scan modbus: --register is 0..65535", file=sys.stderr)
        return 2
    endpoint: Endpoint
    if args.ascii and args.rtu_over_tcp:
        print("edgegw scan modbus: give --ascii or --rtu-over-tcp, not both", file=sys.stderr)
        return 2
    if args.serial:
        framing: Literal["rtu", "ascii"] = "ascii" if args.ascii else "rtu"
        endpoint = SerialEndpoint(args.serial, args.baudrate, args.bytesize, args.parity, args.stopbits, framing)
    else:
        endpoint = TcpEndpoint(args.host, args.port, "ascii" if args.ascii else "rtu" if args.rtu_over_tcp else "tcp")
    print(f"scanning {len(units)} unit id(s) on {ModbusLink(endpoint).name}, {args.timeout:g}s each", flush=True)
    started = time.monotonic()

    def show(unit: int, text: str) -> None:
        print(f"unit {unit:3d}: {text}", flush=True)

    def show_identity(unit: int, identity: UnitIdentity) -> None:
        for line in identity.lines():
            print(f"          {line}", flush=True)

    try:
        found = asyncio.run(
            scan(
                endpoint,
                units,
                args.function,
                args.register,
                args.timeout,
                show,
                None if args.no_identify else show_identity,
            )
        )
    except LinkError as exc:
        print(f"edgegw scan modbus: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 2
    took = time.monotonic() - started
    if found:
        print(f"{len(found)} unit(s) answered in {took:.1f}s: {', '.join(str(u) for u in sorted(found))}")
        return 0
    print(f"no unit answered ({took:.1f}s)")
    return 1
