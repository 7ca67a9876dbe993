"""Serve N device twins of one profile in one process (run apart from the daemon being measured).

The twin class comes from the registry by the profile's `driver`, so any kind can be benchmarked.
Prints one JSON line: the device config that reaches each twin (``Twin.device_config()``).

    python bench/twins.py --devices 100 --points 100           # the float32 bench profile (Modbus)
    python bench/twins.py --devices 10 --profile my.yaml --var channels=42
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
from pathlib import Path

from common import write_profile

from gateway.profiles import load_profile
from gateway.registry import DRIVERS
from gateway.twin import parse_var


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--points", type=int, default=100, help="points per device of the default bench profile")
    ap.add_argument("--profile", type=Path, help="a profile file (default: the bench profile, --points float32s)")
    ap.add_argument("--var", action="append", type=parse_var, default=[], help="profile variable, name=value")
    ap.add_argument("--dead-every", type=int, default=0, help="every n-th twin stops after start: nobody serves it")
    args = ap.parse_args()
    profile_vars = dict(args.var)
    tmp = tempfile.TemporaryDirectory(prefix="edgegw-twins-")
    if args.profile is None:
        args.profile = write_profile(Path(tmp.name), args.points)
        profile_vars.setdefault("points", args.points)
    cls = DRIVERS[load_profile(args.profile).driver].twin_class
    twins = [cls.create(args.profile, vars=profile_vars, seed=i) for i in range(args.devices)]
    for t in twins:
        await t.start()
    configs = [t.device_config() for t in twins]
    # Stopped only after every twin listens, so that no live twin takes a dead one's port.
    dead = [t for i, t in enumerate(twins) if args.dead_every and i % args.dead_every == 0]
    for t in dead:
        await t.stop()
    print(json.dumps(configs), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for t in twins:
        await t.stop()
    tmp.cleanup()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    sys.exit(0)
