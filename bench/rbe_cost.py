"""What report by exception costs per reading in the normaliser (docs/performance.md).

One device of 100 float32 gauges, `Normalizer.normalize` + `Batch.encode` per poll, in four cases:

- `plain`: no point reports by exception (the step does not exist: the cost of before);
- `held`: every point has a deadband and max_age, the values move within the deadband (all dropped);
- `moved`: the same values, every point's deadband smaller than its moves (all published);
- `mixed`: half the points report by exception, the values within their deadband.

Two ways to measure, because this machine is shared and loaded:

    python bench/rbe_cost.py                      # timeit: best of 7, ns per reading
    python bench/rbe_cost.py --callgrind          # instructions per reading under valgrind

`--callgrind` runs each case twice under `valgrind --tool=callgrind` with different numbers of
polls and divides the difference of the instruction counts by the difference of readings: the
interpreter's start-up and the imports cancel out, and the count does not depend on the load.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from drivers.modbus.config import ModbusPoint  # noqa: E402
from gateway.driver import RawReadings  # noqa: E402
from gateway.normalize import Normalizer  # noqa: E402

POINTS = 100
CASES = ("plain", "held", "moved", "mixed")


def make(case: str) -> tuple[Normalizer, Callable[[int], None]]:
    """The normaliser of the case and a function that runs poll k through it."""
    points = []
    for i in range(POINTS):
        rbe = case in ("held", "moved") or (case == "mixed" and i % 2 == 0)
        # The same values in every case (so the encoder's work is the same): 0.125 A steps, within
        # a 0.5 A deadband (held), past a 0.1 A one (moved).
        extra = {"deadband": 0.1 if case == "moved" else 0.5, "max_age": 3600} if rbe else {}
        points.append(
            ModbusPoint(id=f"p{i}", address=2 * i, type="float32", quantity="current", unit="A", **extra)  # type: ignore[arg-type]
        )
    norm = Normalizer("bench", points)
    # Values a float32 register holds exactly; each poll changes every one (the text memory misses).
    polls = [RawReadings(values=[10.0 + i + (k % 4) * 0.125 for i in range(POINTS)]) for k in range(4)]

    def run(k: int) -> None:
        norm.normalize(polls[k % 4], 1_000_000 + k * 1000).encode(k)

    run(0)  # the first poll publishes everything; measure the steady state
    return norm, run


def loop(case: str, polls: int) -> None:
    _norm, run = make(case)
    for k in range(1, polls + 1):
        run(k)


def by_timeit() -> None:
    print(f"{'case':<8} {'ns/reading':>10}  (best of 7 x 2000 polls of {POINTS} points; the machine is shared)")
    for case in CASES:
        _norm, run = make(case)
        counter = iter(range(1, 10**9))

        def one(run: Callable[[int], None] = run, counter: Iterator[int] = counter) -> None:
            run(next(counter))

        best = min(timeit.repeat(one, number=2000, repeat=7))
        print(f"{case:<8} {best / 2000 / POINTS * 1e9:>10.0f}")


def instructions(case: str, polls: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__]
        subprocess.run([*cmd, "--loop", case, "--polls", str(polls)], check=True, capture_output=True, cwd=REPO)
        text = out.read_text()
    m = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.MULTILINE)
    assert m is not None, "no totals in the callgrind output"
    return int(m.group(1))


def by_callgrind(small: int, large: int) -> None:
    print(f"{'case':<8} {'instructions/reading':>20}  ({large} - {small} polls of {POINTS} points)")
    for case in CASES:
        diff = instructions(case, large) - instructions(case, small)
        print(f"{case:<8} {diff / ((large - small) * POINTS):>20.0f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--callgrind", action="store_true", help="instruction counts under valgrind (slow, stable)")
    ap.add_argument("--small", type=int, default=100, help="polls of the shorter callgrind run")
    ap.add_argument("--large", type=int, default=600, help="polls of the longer callgrind run")
    ap.add_argument("--loop", choices=CASES, help=argparse.SUPPRESS)
    ap.add_argument("--polls", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.loop:
        loop(args.loop, args.polls)
    elif args.callgrind:
        by_callgrind(args.small, args.large)
    else:
        by_timeit()


if __name__ == "__main__":
    main()
