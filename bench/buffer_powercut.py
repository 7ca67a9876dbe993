"""The power-cut prefix-replay test of the disk buffer (tests/test_buffer_powercut.py), longer.

`make test` replays one workload of 400 steps (about 600 file operations, 2 400 crash images);
this runs bigger workloads over several seeds, with a larger size cap (more segments, fewer drops)
and a small one (drops at the cap all the time).

    python bench/buffer_powercut.py --seeds 10 --steps 2000

Prints per seed: file operations, records appended, crash images opened by variant, seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_buffer_powercut import record_workload, replay_all, scratch_folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--first-seed", type=int, default=100)
    args = ap.parse_args()
    total = 0
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        max_bytes = 24_000 if seed % 2 else 400_000
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="edgegw-powercut-") as d:
            mp = pytest.MonkeyPatch()
            try:
                run = record_workload(Path(d) / "buf", mp, steps=args.steps, seed=seed, max_bytes=max_bytes)
            finally:
                mp.undo()
            with scratch_folder(Path(d)) as scratch:
                counts = replay_all(run, scratch, seed)
        ops = sum(1 for op in run.ops if op[0] != "mark")
        total += sum(counts.values())
        print(
            f"seed {seed}: max_bytes {max_bytes}, {ops} file operations, {len(run.appended)} records appended,"
            f" crash images {counts}, {time.monotonic() - t0:.0f} s",
            flush=True,
        )
    print(f"all {total} crash images opened intact and kept what the fsync policy promises")


if __name__ == "__main__":
    main()
