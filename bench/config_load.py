"""Config load benchmark: `load_config` of N devices x P points, written inline or through a profile.

Issue 13's target: 100 000 points load in <= 5 s with <= 200 MB peak RSS. Runs the load in a
fresh process per case (so the peak is the load's own) and reports the CPU time of the load, the
RSS before and after it and the peak (VmHWM), and the Python heap that stays allocated.

    python bench/config_load.py --devices 1000 --points 100 --inline
    python bench/config_load.py --devices 1000 --points 100
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def config_text(devices: int, points: int, inline: bool, profile: Path) -> str:
    pts = [
        {"id": f"p{i}", "address": 2 * i, "type": "float32", "quantity": "current", "unit": "A", "circuit": str(i)}
        for i in range(points)
    ]
    out = ["site: bench\nmqtt: {url: 'mqtt://127.0.0.1:1'}\ndevices:\n"]
    for d in range(devices):
        entry: dict[str, object] = {
            "id": f"dev{d:04d}",
            "driver": "modbus",
            "tcp": {"host": "127.0.0.1", "port": 20000 + d % 40000},
            "interval": 10,
        }
        if inline:
            entry["points"] = pts
        else:
            entry["profile"] = str(profile)
        out.append(f"  - {json.dumps(entry)}\n")
    return "".join(out)


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    import gateway.app  # noqa: F401 - the daemon's imports, before the measured load
    from gateway.config import load_config

    work = Path(tempfile.mkdtemp(prefix="edgegw-load-"))
    profile = work / "bench.yaml"
    profile.write_text(
        f"profile: bench\ndriver: modbus\npoints:\n  - repeat: {{i: [0, {args.points - 1}]}}\n    points:\n"
        "      - {id: 'p{i}', address: '{2*i}', type: float32, quantity: current, unit: A, circuit: '{i}'}\n"
    )
    path = work / "gateway.yaml"
    path.write_text(config_text(args.devices, args.points, args.inline, profile))
    gc.collect()
    before = status("VmRSS")
    if args.trace:
        tracemalloc.start()
    cpu, wall = time.process_time(), time.perf_counter()
    cfg = load_config(path)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    gc.collect()
    kept = tracemalloc.get_traced_memory()[0] / 2**20 if args.trace else None
    result = {
        "devices": args.devices,
        "points": args.devices * args.points,
        "inline": args.inline,
        "file_mib": round(path.stat().st_size / 2**20, 1),
        "load_cpu_s": round(cpu, 2),
        "load_wall_s": round(wall, 2),
        "rss_before_mib": round(before, 1),
        "rss_after_mib": round(status("VmRSS"), 1),
        "peak_rss_mib": round(status("VmHWM"), 1),
        "python_heap_kept_mib": None if kept is None else round(kept, 1),
        "devices_loaded": len(cfg.devices),
    }
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--inline", action="store_true")
    ap.add_argument("--trace", action="store_true", help="tracemalloc on (the heap kept; slower, more RSS)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    cmd = [sys.executable, __file__, "--child", f"--devices={args.devices}", f"--points={args.points}"]
    cmd += ["--inline"] * args.inline + ["--trace"] * args.trace
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    print(json.dumps(json.loads(out.splitlines()[-1]), indent=2))


if __name__ == "__main__":
    main()
