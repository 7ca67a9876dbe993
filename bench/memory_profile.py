"""Where the daemon's memory goes: the gateway in this process under tracemalloc, on the load rig.

The rig of `modbus_load.py` (twins in their own process, mosquitto); the gateway runs here, with
tracemalloc on from before the config is loaded. After the warm-up it reports RSS at each stage
(imports, config loaded, running), the Python heap that stays allocated, grouped by source line
and by file, and that heap per device. `--compare` takes a second snapshot after the same time
again and prints what grew between the two (a leak shows there, a steady state does not).

    python bench/memory_profile.py --devices 1000 --points 100 --interval 10 --warmup 40
    python bench/memory_profile.py --devices 100 --points 100 --interval 1 --inline --top 30

tracemalloc costs CPU and memory of its own (RSS figures here are higher than in modbus_load.py);
the heap figures are what the gateway's objects hold.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import linecache
import os
import shutil
import time
import tracemalloc
from pathlib import Path

from common import start_rig


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def smaps_rollup() -> str:
    rollup = Path("/proc/self/smaps_rollup").read_text().splitlines()
    return "  ".join(
        " ".join(line.split()[:2]) for line in rollup if line.startswith(("Rss", "Anon", "Shared", "Private"))
    )


def trim() -> bool:
    import ctypes

    return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))


def show(snapshot: tracemalloc.Snapshot, key: str, top: int, devices: int) -> None:
    stats = snapshot.statistics(key)
    total = sum(s.size for s in stats)
    print(f"\n== by {key}: {total / 2**20:.1f} MiB in all, {total / devices / 1024:.1f} KiB per device")
    for s in stats[:top]:
        frame = s.traceback[0]
        where = f"{frame.filename.replace(os.getcwd() + '/', '')}:{frame.lineno}" if key == "lineno" else frame.filename
        text = linecache.getline(frame.filename, frame.lineno).strip()[:70] if key == "lineno" else ""
        print(f"{s.size / 1024:9.0f} KiB {s.count:8d} blocks  {where}  {text}")


async def main(args: argparse.Namespace) -> None:
    from gateway import logs

    logs.setup("warning", "json")
    rss_imports = rss_mib()
    if not args.rss_only:
        tracemalloc.start(args.frames)
    from gateway.app import Gateway
    from gateway.config import load_config_text

    rig = await start_rig("edgegw-mem-", args.devices, args.points)
    gw: Gateway | None = None
    try:
        text = (
            f"site: mem\nmqtt: {{url: 'mqtt://127.0.0.1:{rig.broker.port}', max_inflight: 200}}\n"
            f"health: {{listen: '127.0.0.1:{rig.health_port}'}}\nlog: {{level: warning, format: json}}\n"
            + f"devices:\n{rig.devices(args.interval, '1s', inline=args.inline)}"
        )
        cfg = load_config_text(text, "bench.yaml", rig.work)
        gc.collect()
        rss_config = rss_mib()
        gw = Gateway(cfg)
        del cfg, text
        await gw.start()
        pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        started: list[float] = [0.0]

        def timed(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                pauses[info["generation"]].append(time.perf_counter() - started[0])

        gc.callbacks.append(timed)
        await asyncio.sleep(args.warmup)
        gc.callbacks.remove(timed)
        for gen, times in pauses.items():
            if times:
                print(f"gc generation {gen}: {len(times)} collections, longest {max(times) * 1000:.1f} ms")
        if args.rss_only:
            running = rss_mib()
            gc.collect()
            collected = rss_mib()
            trim()
            trimmed = rss_mib()
            await asyncio.sleep(args.warmup)
            print(
                f"RSS MiB: imports {rss_imports:.1f}, config loaded {rss_config:.1f}, running {running:.1f}, "
                f"after gc.collect {collected:.1f}, after malloc_trim {trimmed:.1f}, "
                f"{args.warmup:g} s later {rss_mib():.1f}"
            )
            print(smaps_rollup())
            return
        gc.collect()
        first = tracemalloc.take_snapshot()
        print(
            f"RSS MiB: before imports {rss_imports:.1f}, config loaded {rss_config:.1f}, "
            f"running {rss_mib():.1f} (tracemalloc's own overhead included)"
        )
        filters = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen *>")]
        first = first.filter_traces(filters)
        show(first, "lineno", args.top, args.devices)
        show(first, "filename", args.top, args.devices)
        if args.compare:
            await asyncio.sleep(args.warmup)
            gc.collect()
            second = tracemalloc.take_snapshot().filter_traces(filters)
            print("\n== grew since the first snapshot")
            for d in second.compare_to(first, "lineno")[: args.top]:
                print(d)
    finally:
        if gw is not None:
            await gw.stop(drain_timeout=1.0)
        await rig.stop()
        shutil.rmtree(rig.work, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--warmup", type=float, default=20.0)
    ap.add_argument("--inline", action="store_true")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--frames", type=int, default=1)
    ap.add_argument("--compare", action="store_true")
    ap.add_argument("--rss-only", action="store_true", help="no tracemalloc: RSS at each stage, and after malloc_trim")
    asyncio.run(main(ap.parse_args()))
