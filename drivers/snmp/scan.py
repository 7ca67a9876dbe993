"""`edgegw scan snmp HOST`: walk an agent and print every object (OID, type, value, MIB name)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import structlog
import yaml

from drivers.snmp import codec
from drivers.snmp.codec import Oid, Value
from gateway.driver import DeviceError
from gateway.models import read_secret


def _arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgegw scan snmp",
        description="Walk an SNMP agent (GETBULK on v2c/v3, GETNEXT on v1) and print what it has.",
    )
    p.add_argument("host")
    p.add_argument("--port", type=int, default=161)
    p.add_argument("--version", choices=["1", "2c", "3"], default="2c")
    p.add_argument("--community-file", type=Path, help="v1/v2c community (default: public)")
    p.add_argument("--community-env", metavar="VAR")
    p.add_argument("--user", help="SNMPv3 user")
    p.add_argument("--auth-protocol", default="SHA-256", help="MD5, SHA, SHA-224, SHA-256, SHA-384, SHA-512")
    p.add_argument("--auth-key-file", type=Path)
    p.add_argument("--auth-key-env", metavar="VAR")
    p.add_argument(
        "--priv-protocol", default="AES-128", help="DES, 3DES, AES-128, AES-192, AES-256, AES-192C, AES-256C"
    )
    p.add_argument("--priv-key-file", type=Path)
    p.add_argument("--priv-key-env", metavar="VAR")
    p.add_argument("--context", default="", help="SNMPv3 context name")
    p.add_argument("--oid", action="append", help="subtree to walk (repeatable; default 1.3.6.1)")
    p.add_argument("--mib-dir", action="append", type=Path, default=[], help="folder of MIB files for names")
    p.add_argument("--mib", action="append", default=[], help="MIB module to load for names (repeatable)")
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--retries", type=int, default=1)
    p.add_argument("--max-repetitions", type=int, default=25)
    p.add_argument("--limit", type=int, default=5000, help="stop after this many objects")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object per line")
    out.add_argument("--profile", action="store_true", help="print the objects as a draft profile (YAML)")
    return p


def main(argv: list[str]) -> int:
    """Entry point of `edgegw scan snmp`; returns the exit status."""
    args = _arguments().parse_args(argv)
    try:
        return asyncio.run(_scan(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `edgegw scan snmp ... | head`: the reader left; not an error.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaces the closed stdout for interpreter exit
        return 0
    except ValueError as exc:
        print(f"edgegw scan snmp: {exc}", file=sys.stderr)
        return 2


def _auth(args: argparse.Namespace) -> tuple[Any, tuple[str | None, ...]]:
    from drivers.snmp.client import community_data, usm_user
    from drivers.snmp.config import AUTH_ALIASES, PRIV_ALIASES, norm_protocol

    if args.version != "3":
        secret = read_secret(args.community_file, args.community_env, "community")
        return community_data(secret.get_secret_value() if secret else "public", args.version), ()
    if not args.user:
        raise ValueError("SNMPv3 needs --user")
    auth_key = read_secret(args.auth_key_file, args.auth_key_env, "auth_key")
    priv_key = read_secret(args.priv_key_file, args.priv_key_env, "priv_key")
    auth_text = auth_key.get_secret_value() if auth_key else None
    priv_text = priv_key.get_secret_value() if priv_key else None
    if priv_text is not None and auth_text is None:
        raise ValueError("privacy needs an auth key too (--auth-key-file)")
    auth_protocol = norm_protocol(args.auth_protocol, AUTH_ALIASES)
    priv_protocol = norm_protocol(args.priv_protocol, PRIV_ALIASES)
    from drivers.snmp.client import AUTH, PRIV

    if auth_protocol not in AUTH or priv_protocol not in PRIV:
        raise ValueError(f"unknown protocol {args.auth_protocol!r} / {args.priv_protocol!r}")
    user = usm_user(args.user, auth_protocol, auth_text, priv_protocol, priv_text)
    return user, (auth_protocol, auth_text, priv_protocol, priv_text)


async def _scan(args: argparse.Namespace) -> int:
    from drivers.snmp.client import Agent
    from drivers.snmp.runtime import SnmpRuntime

    roots = [codec.parse_oid(o) for o in (args.oid or ["1.3.6.1"])]
    auth, credentials = _auth(args)
    runtime = SnmpRuntime(None, structlog.get_logger("edgegw.scan"))
    try:
        if args.mib:
            for module, error in (await runtime.load_modules(args.mib, args.mib_dir)).items():
                print(f"warning: {module}: {error}", file=sys.stderr)
        engine = runtime.engine_for(args.user, credentials)
        agent = Agent(
            engine,
            auth,
            args.host,
            args.port,
            version=args.version,
            timeout=args.timeout,
            retries=args.retries,
            context=args.context,
        )
        started = time.monotonic()
        found: list[tuple[Oid, Value]] = []
        try:
            for root in roots:
                remaining = args.limit - len(found)
                if remaining <= 0:
                    break
                found += await agent.walk(
                    root, bulk=args.version != "1", max_repetitions=args.max_repetitions, limit=remaining
                )
        except DeviceError as exc:
            print(f"edgegw scan snmp: {exc}", file=sys.stderr)
            if not found:
                return 1
        elapsed = time.monotonic() - started
        _print(args, runtime, found)
        if not args.json and not args.profile:
            more = " (limit reached)" if len(found) >= args.limit else ""
            print(f"-- {len(found)} objects from {args.host}:{args.port} in {elapsed:.2f}s{more}")
        return 0 if found else 1
    finally:
        await runtime.stop()


def _print(args: argparse.Namespace, runtime: Any, found: list[tuple[Oid, Value]]) -> None:
    if args.profile:
        points = [codec.generic_point(oid, value, runtime.name(oid)) for oid, value in found if not value.is_exception]
        doc = {
            "profile": f"{args.host}-scanned",
            "driver": "snmp",
            "status": "draft",
            "description": f"walked from {args.host} by edgegw scan snmp; edit quantities, units and ids",
            "points": points,
        }
        print(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), end="")
        return
    width = max((len(codec.format_oid(o)) for o, _ in found), default=20)
    for oid, value in found:
        name = runtime.name(oid)
        if args.json:
            row = {"oid": codec.format_oid(oid), "type": value.syntax, "value": codec.json_value(value), "name": name}
            print(json.dumps(row))
        else:
            print(
                f"{codec.format_oid(oid):<{width}}  {value.syntax:<16} {codec.display(value):<40} {name or ''}".rstrip()
            )
