"""edgegw run | check | read | write | action | scan | simulate | demo | profiles | schema."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gateway import logs
from gateway.commands import Request, Result
from gateway.config import ConfigError, ConfigIssue, Environment, GatewayConfig, load_config
from gateway.discovery import discover_points, rebuild
from gateway.driver import DeviceError, Driver, RawValue
from gateway.models import DeviceConfig
from gateway.normalize import Normalizer
from gateway.profiles import load_profile, shipped_profiles
from gateway.registry import DRIVERS, load_object
from gateway.state import StateStore

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_CONFIG = 2


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it is available (it is faster and lighter), else on asyncio's loop."""
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _print_warnings(warnings: list[ConfigIssue]) -> None:
    for issue in warnings:
        print(f"{issue} [warning: needed by edgegw run]", file=sys.stderr)


def _load(path: str, environment: Environment = "require") -> GatewayConfig | None:
    """The config, or None after printing every problem; environment problems as `environment` says."""
    try:
        cfg = load_config(path, environment)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        _print_warnings(exc.warnings)
        print(f"{path}: invalid configuration ({_plural(len(exc.issues), 'error')})", file=sys.stderr)
        return None
    _print_warnings(cfg.warnings)
    return cfg


def cmd_check_profiles(files: list[str]) -> int:
    """`check --profile`: each file validated as a profile alone."""
    from gateway.config import check_profile

    status = EXIT_OK
    for path in files:
        profile, points, issues = check_profile(path)
        for issue in issues:
            print(issue, file=sys.stderr)
        if issues or profile is None:
            print(f"{path}: invalid profile ({_plural(len(issues), 'error')})", file=sys.stderr)
            status = EXIT_CONFIG
            continue
        calc = sum(1 for p in points if p.calc is not None)
        extra = f", {calc} calculated" if calc else ""
        print(f"{path}: ok (profile {profile.name}, driver {profile.driver}, {len(points)} points{extra})")
    return status


def cmd_check(args: argparse.Namespace) -> int:
    if args.profile:
        return cmd_check_profiles(args.files)
    status = EXIT_OK
    for path in args.files:
        cfg = _load(path, "require" if args.strict else "warn")
        if cfg is None:
            status = EXIT_CONFIG
            continue
        points = sum(len(d.resolved_points) for d in cfg.devices)
        warned = f", {_plural(len(cfg.warnings), 'warning')}: errors with --strict" if cfg.warnings else ""
        print(f"{path}: ok ({len(cfg.devices)} devices, {points} points, {len(cfg.buses)} buses{warned})")
        if args.verbose:
            for d in cfg.devices:
                print(
                    f"  {d.id:<24} {d.driver:<7} {len(d.resolved_points):>5} points  every {d.interval:g}s  {d.profile or ''}"
                )
    return status


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    logs.setup(args.log_level or cfg.log.level, cfg.log.format)
    from gateway.app import run

    return run_async(run(cfg, Path(args.config)))


@dataclass(slots=True)
class _OneOff:
    """A device's driver outside the daemon (`read`, `write`, `action`); a command target too."""

    device: DeviceConfig
    driver: Driver[Any, Any]
    normalizer: Normalizer
    raw: list[RawValue] | None = None
    exponents: list[int | None] | None = None

    def last_raw(self) -> list[RawValue] | None:
        return self.raw

    def last_exponents(self) -> list[int | None] | None:
        return self.exponents


@contextlib.asynccontextmanager
async def _one_off(cfg: GatewayConfig, device_id: str, discover: bool) -> AsyncIterator[tuple[_OneOff, Any]]:
    """The device's driver, started (with discovered points when it has none), and what discovery found."""
    from gateway.app import build_driver, bus_for, start_runtime

    device = next((d for d in cfg.devices if d.id == device_id), None)
    if device is None:
        raise SystemExit(f"no device {device_id!r} in the config (devices: {', '.join(d.id for d in cfg.devices)})")
    log = logs.get(device=device.id)
    runtime = await start_runtime(device.driver, cfg, log)
    _, bus = bus_for(device, cfg)
    state = StateStore(None)
    driver = build_driver(device, bus, state, runtime, log)
    found: list[dict[str, Any]] | None = None
    try:
        await driver.start()
        if discover or not driver.ctx.points:
            found, points = await discover_points(driver)
            if not driver.ctx.points:
                driver = await rebuild(driver, points, partial(build_driver, device, bus, state, runtime, log))
        yield _OneOff(device, driver, Normalizer(device.id, driver.ctx.points, device.calculated_points)), found
    finally:
        await driver.stop()
        await bus.close()
        if runtime is not None:
            await runtime.stop()


async def _read_once(
    cfg: GatewayConfig, device_id: str, discover: bool
) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]] | None]:
    async with _one_off(cfg, device_id, discover) as (target, found):
        started = time.monotonic()
        try:
            raw = await target.driver.read()
            batch = target.normalizer.normalize(raw, int(time.time() * 1000))
        except DeviceError as exc:
            batch = target.normalizer.failed(str(exc) or type(exc).__name__, int(time.time() * 1000))
        elapsed = time.monotonic() - started
        return elapsed, batch.as_dicts(), found


async def _command(cfg: GatewayConfig, req: Request) -> Result:
    """A write or an action from the command line: the daemon's validation, policy and audit."""
    from gateway.app import commands_policy

    policy = commands_policy(cfg, logs.get(component="commands"))
    async with _one_off(cfg, req.device, False) as (target, _found):
        # One poll first: the raw types and the scale registers a conversion needs.
        with contextlib.suppress(DeviceError):
            first = await target.driver.read()
            target.raw, target.exponents = first.values, first.exponents
        result = await policy.run(req, target)
    policy.audit(result)
    return result


def _cli_value(text: str) -> Any:
    """A value on the command line: JSON where it parses (12.5, true, null, "text"), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_command(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    logs.setup("info", "auto")
    req = Request(device=args.device, id=f"cli-{int(time.time() * 1000)}", who={"via": "cli"})
    if args.command == "write":
        req.point, req.value = args.point, _cli_value(args.value)
    else:
        req.action = args.action
        for item in args.args:
            name, sep, value = item.partition("=")
            if not sep or not name:
                print(f"edgegw action: {item!r} is not name=value", file=sys.stderr)
                return EXIT_CONFIG
            req.args[name] = _cli_value(value)
    if args.priority is not None:
        req.priority = args.priority
    result = run_async(_command(cfg, req))
    print(json.dumps(result.body(), indent=2))
    return {"ok": EXIT_OK, "rejected": EXIT_CONFIG}.get(result.status, EXIT_FAIL)


def cmd_read(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    logs.setup("warning" if not args.verbose else "debug", "console")
    try:
        elapsed, readings, found = run_async(_read_once(cfg, args.device, args.discover or bool(args.write_profile)))
    except (NotImplementedError, DeviceError) as exc:
        # A device that cannot tell what it is (Modbus without FC 43, no matching profile): one line.
        print(f"edgegw read: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if found is not None and args.write_profile:
        device = next(d for d in cfg.devices if d.id == args.device)
        profile = {
            "profile": f"{args.device}-discovered",
            "driver": device.driver,
            "status": "draft",
            "description": f"discovered from {args.device} by edgegw read --discover; edit before use",
            "points": found,
        }
        Path(args.write_profile).write_text(
            yaml.safe_dump(profile, sort_keys=False, allow_unicode=True), encoding="utf-8"
        )
        print(f"wrote {len(found)} points to {args.write_profile}", file=sys.stderr)
    if args.json:
        out: dict[str, Any] = {"device": args.device, "duration_ms": round(elapsed * 1000, 1), "readings": readings}
        if found is not None:
            out["discovered"] = found
        print(json.dumps(out, indent=2))
    else:
        if found is not None:
            print(f"discovered {len(found)} objects:")
            for item in found:
                print("  " + ", ".join(f"{k}={v}" for k, v in item.items()))
        width = max((len(str(r["point"])) for r in readings), default=10)
        for r in readings:
            value = "" if r["value"] is None else r["value"]
            extra = f"  ({r['error']})" if "error" in r else ""
            print(f"{r['point']:<{width}}  {value!s:>16} {r['unit']:<5} {r['quality']}{extra}")
        good = sum(1 for r in readings if r["quality"] == "good")
        print(f"-- {len(readings)} readings, {good} good, in {elapsed * 1000:.1f} ms")
    # Exit 1 when the device gave nothing usable: scripts can tell "wired and answering" apart.
    answered = any(r["quality"] != "bad" for r in readings)
    return EXIT_OK if answered else EXIT_FAIL


def cmd_simulate(args: argparse.Namespace, rest: list[str]) -> int:
    ref = args.profile
    kind = args.driver
    if kind is None:
        for k in DRIVERS:
            if ref in shipped_profiles(k):
                kind = k
                break
        else:
            path = Path(ref)
            if path.exists():
                kind = load_profile(path).driver
    if kind not in DRIVERS:
        print(f"edgegw simulate: cannot tell the driver of {ref!r}; give --driver", file=sys.stderr)
        return EXIT_CONFIG
    try:
        twin_class = DRIVERS[kind].twin_class
    except (LookupError, ImportError) as exc:
        print(f"edgegw simulate: the {kind} driver has no twin ({exc})", file=sys.stderr)
        return EXIT_FAIL
    from gateway.twin import simulate

    logs.setup("info", "auto")
    return simulate(twin_class, ref, rest)


def cmd_scan(args: argparse.Namespace, rest: list[str]) -> int:
    spec = DRIVERS.get(args.kind)
    if spec is None or spec.scanner is None:
        kinds = ", ".join(k for k, s in DRIVERS.items() if s.scanner)
        print(f"edgegw scan: no scanner for {args.kind!r} (scanners: {kinds})", file=sys.stderr)
        return EXIT_CONFIG
    logs.setup("warning", "console")
    status: int = load_object(spec.scanner)(rest)
    return status


def cmd_profiles(args: argparse.Namespace) -> int:
    for kind in DRIVERS:
        if args.driver and kind != args.driver:
            continue
        for name, path in shipped_profiles(kind).items():
            profile = load_profile(path)
            print(f"{kind:<7} {name:<28} {profile.status:<9} {profile.description}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import demo

    logs.setup("info", "console")
    status: int = run_async(demo(args.duration))
    return status


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions wrap; an epilog's examples (gateway/manpage.py reads them too) keep one per line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(("example:", "examples:")):
            head, *lines = text.splitlines()
            return "\n".join([indent + head, *(indent + "  " + line.strip() for line in lines)])
        return super()._fill_text(text, width, indent)


def cmd_schema(args: argparse.Namespace) -> int:
    """`schema`: the config's JSON Schema (draft-07) on stdout, for editors."""
    from gateway.schema import config_schema, dumps, profile_schema

    sys.stdout.write(dumps(profile_schema() if args.profile else config_schema()))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgegw", description="Multi-protocol data-acquisition gateway to MQTT.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser(
        "run",
        help="run the gateway",
        description="Run the gateway in the foreground until SIGTERM (as the systemd unit does).",
        epilog="example: edgegw run -c /etc/edgegw/gateway.yaml --log-level debug",
    )
    r.add_argument("--config", "-c", required=True, help="the gateway config, e.g. /etc/edgegw/gateway.yaml")
    r.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="overrides the config's log.level"
    )

    c = sub.add_parser(
        "check",
        help="validate config files (exit 2 when invalid)",
        description="Validate config files: exit 2 when one is invalid. Files and environment variables a "
        "config needs at run time (secrets, CA and key files) that this machine lacks are warnings.",
        epilog="examples:\nedgegw check --strict /etc/edgegw/gateway.yaml\nedgegw check --profile my-meter.yaml",
    )
    c.add_argument("files", nargs="+", help="config files (or profiles, with --profile)")
    c.add_argument("--verbose", "-v", action="store_true", help="list each device with its driver, points and interval")
    c.add_argument(
        "--profile",
        action="store_true",
        help="the files are device profiles: each validated alone, with its default vars",
    )
    c.add_argument(
        "--strict", action="store_true", help="missing run-time files and variables are errors too (as for `run`)"
    )

    rd = sub.add_parser(
        "read",
        help="poll one device once and print its readings",
        epilog="examples:\nedgegw read -c /etc/edgegw/gateway.yaml bcpme-1\n"
        "edgegw read -c /etc/edgegw/gateway.yaml ups-1 --discover --write-profile ups.yaml",
    )
    rd.add_argument("--config", "-c", required=True, help="the gateway config, e.g. /etc/edgegw/gateway.yaml")
    rd.add_argument("device", help="the device id in the config")
    rd.add_argument("--json", action="store_true", help="print the readings as JSON")
    rd.add_argument("--discover", "--objects", action="store_true", help="list what the device has (object list, walk)")
    rd.add_argument("--write-profile", metavar="FILE", help="write the discovered points out as a profile")
    rd.add_argument("--verbose", "-v", action="store_true", help="debug logging (what the driver does)")

    w = sub.add_parser(
        "write",
        help="write one writable point (commands must be enabled in the config)",
        description="Write one point of a device, as an MQTT command would: limits checked, read back, "
        "audited. Exit 0 ok, 1 failed or timed out, 2 rejected.",
        epilog="example: edgegw write -c /etc/edgegw/gateway.yaml sed102-1 relay.output false",
    )
    w.add_argument("--config", "-c", required=True, help="the gateway config, e.g. /etc/edgegw/gateway.yaml")
    w.add_argument("device", help="the device id in the config")
    w.add_argument("point", help="a point marked writable")
    w.add_argument("value", help="JSON (12.5, true, null to relinquish) or text")
    w.add_argument("--priority", type=int, choices=range(1, 17), metavar="1-16", help="BACnet write priority")

    ac = sub.add_parser(
        "action",
        help="run a named action of a device (commands must be enabled in the config)",
        description="Run a named action the device's profile or config defines. Exit 0 ok, 1 failed, 2 rejected.",
        epilog="example: edgegw action -c /etc/edgegw/gateway.yaml sed102-1 set_clock",
    )
    ac.add_argument("--config", "-c", required=True, help="the gateway config, e.g. /etc/edgegw/gateway.yaml")
    ac.add_argument("device", help="the device id in the config")
    ac.add_argument("action", help="an action the device's profile or config defines")
    ac.add_argument("args", nargs="*", metavar="name=value", help="the action's arguments")
    ac.add_argument("--priority", type=int, choices=range(1, 17), metavar="1-16", help=argparse.SUPPRESS)

    s = sub.add_parser(
        "simulate",
        help="serve a profile as a device twin (options after the profile go to the twin)",
        description="Serve a profile as a device twin. `edgegw simulate PROFILE --help` lists the twin's options.",
        epilog="example: edgegw simulate schneider-bcpme --port 5020 --fault slow",
    )
    s.add_argument("profile", help="a shipped profile name (edgegw profiles) or a profile file")
    s.add_argument("--driver", choices=sorted(DRIVERS), help="the profile's driver, when it does not say")

    sc = sub.add_parser(
        "scan",
        help="look for devices: scan modbus|bacnet|snmp [options]",
        description="Look for devices. `edgegw scan KIND --help` lists that scanner's options.",
        epilog="examples:\nedgegw scan modbus --host 192.0.2.7 --units 1-32\nedgegw scan snmp --help",
    )
    sc.add_argument("kind", help=", ".join(k for k, spec in DRIVERS.items() if spec.scanner))

    pr = sub.add_parser(
        "profiles", help="list the shipped device profiles", epilog="example: edgegw profiles --driver snmp"
    )
    pr.add_argument("--driver", choices=sorted(DRIVERS), help="only this driver's profiles")

    d = sub.add_parser(
        "demo",
        help="twins + a local broker + the gateway, readings on the terminal",
        epilog="example: edgegw demo --duration 0",
    )
    d.add_argument("--duration", type=float, default=20.0, help="seconds to run (0: until Ctrl-C)")

    sch = sub.add_parser(
        "schema",
        help="print the config's JSON Schema (for editors; docs/configuration.md, Editor support)",
        epilog="example: edgegw schema > edgegw.schema.json",
    )
    sch.add_argument("--profile", action="store_true", help="the schema of device profile files instead")
    for parser in sub.choices.values():
        parser.formatter_class = HelpFormatter
    return p


def split_tool_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """`simulate PROFILE ...` / `scan KIND ...`: our part up to the positional, the tool's after it.

    Everything after the positional goes to the driver's tool, `--help` included, so that
    `edgegw scan modbus --help` shows the scanner's options; before it, `-h` is our own help.
    `simulate`'s own `--driver` may stand on either side.
    """
    ours, i = [argv[0]], 1
    while i < len(argv):
        arg = argv[i]
        i += 1
        ours.append(arg)
        if arg == "--driver" and i < len(argv):
            ours.append(argv[i])
            i += 1
        elif not arg.startswith("-"):
            break
    rest: list[str] = []
    tail = argv[i:]
    while tail:
        arg = tail.pop(0)
        if argv[0] == "simulate" and arg == "--driver" and tail:
            ours += [arg, tail.pop(0)]
        elif argv[0] == "simulate" and arg.startswith("--driver="):
            ours.append(arg)
        else:
            rest.append(arg)
    return ours, rest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in ("simulate", "scan"):
        ours, rest = split_tool_argv(argv)
        known = parser.parse_args(ours)
    else:
        known, rest = parser.parse_args(argv), []
    try:
        if known.command == "check":
            return cmd_check(known)
        if known.command == "run":
            return cmd_run(known)
        if known.command == "read":
            return cmd_read(known)
        if known.command in ("write", "action"):
            return cmd_command(known)
        if known.command == "simulate":
            return cmd_simulate(known, rest)
        if known.command == "scan":
            return cmd_scan(known, rest)
        if known.command == "profiles":
            return cmd_profiles(known)
        if known.command == "demo":
            return cmd_demo(known)
        if known.command == "schema":
            return cmd_schema(known)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `edgegw read ... | head`: the reader went away; say nothing more.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaces the closed pipe until exit
        return 0
    parser.error(f"unknown command {known.command}")
    return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
