"""CPU per buffered message, with and without compression: a micro-benchmark for a loaded machine.

The daemon's CPU at 10k points/s is a few percent of a core and drifts with the machine's load
(docs/performance.md), so the cost of compressing is measured here per message, in process CPU
time, on the same 100-float32 messages the encoder writes (bench/buffer_msgs.py), best of
``--repeat`` rounds. Every round appends the messages (one sync per 100, as at 10k points/s
with sync_interval 1s), then takes and acknowledges them all, as a drain does.

    python bench/buffer_cpu.py
    python bench/buffer_cpu.py --dict       # also: zstd with a dictionary trained on the messages
    python bench/buffer_cpu.py --levels     # also: other levels, several messages per frame

Prints a table: bytes on disk per message, CPU per message to append and to drain, and what the
difference costs at 100 messages/s (10k points/s) in percent of one core.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from buffer_msgs import messages

from gateway.buffer import DiskBuffer


class _Quiet:
    def __getattr__(self, name: str) -> object:
        return lambda *a, **k: None


def _round(pool: list[tuple[str, bytes]], compression: str) -> tuple[float, float, float]:
    """(append CPU s, drain CPU s, bytes on disk) for one pass over the pool."""
    with tempfile.TemporaryDirectory(prefix="edgegw-bufcpu-") as d:
        buf = DiskBuffer(Path(d), max_bytes=1 << 34, compression=compression, log=_Quiet())  # type: ignore[arg-type]
        buf.open()
        c0 = time.process_time()
        for i, (topic, payload) in enumerate(pool):
            buf.append(topic, payload)
            if i % 100 == 99:
                buf.sync()
        c1 = time.process_time()
        disk = buf.stats.bytes
        while batch := buf.take(100):
            buf.ack([r.id for r in batch])
        c2 = time.process_time()
        buf.close()
    return c1 - c0, c2 - c1, disk


def _codec_round(pool: list[tuple[str, bytes]]) -> tuple[float, float, float]:
    """The codec alone, no dictionary: (compress CPU s, decompress CPU s, bytes)."""
    cz = zstandard.ZstdCompressor(level=1)
    dz = zstandard.ZstdDecompressor()
    c0 = time.process_time()
    frames = [cz.compress(p) for _, p in pool]
    c1 = time.process_time()
    for f in frames:
        dz.decompress(f)
    c2 = time.process_time()
    return c1 - c0, c2 - c1, float(sum(map(len, frames)))


def _dict_round(
    pool: list[tuple[str, bytes]], train: list[bytes | bytearray | memoryview]
) -> tuple[float, float, float]:
    """The codec alone with a trained dictionary: (compress CPU s, decompress CPU s, bytes)."""
    d = zstandard.train_dictionary(64 * 1024, train)
    cz = zstandard.ZstdCompressor(level=1, dict_data=d)
    dz = zstandard.ZstdDecompressor(dict_data=d)
    c0 = time.process_time()
    frames = [cz.compress(p) for _, p in pool]
    c1 = time.process_time()
    for f in frames:
        dz.decompress(f)
    c2 = time.process_time()
    return c1 - c0, c2 - c1, float(sum(map(len, frames)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dict", action="store_true", help="also measure zstd with a trained dictionary (codec only)")
    ap.add_argument("--levels", action="store_true", help="also: codec only, levels 1/3/6 x frames of 1-128 messages")
    args = ap.parse_args()
    pool = list(itertools.islice(messages(), args.messages))
    n = len(pool)
    raw = sum(len(p) for _, p in pool) / n
    print(f"{n} messages of {raw:.0f} bytes (100 float32 readings), best of {args.repeat} rounds")
    results = {}
    for compression in ("none", "zstd"):
        rounds = [_round(pool, compression) for _ in range(args.repeat)]
        results[compression] = (min(r[0] for r in rounds), min(r[1] for r in rounds), rounds[0][2])
    print("| compression | bytes on disk per message | append CPU per message | drain CPU per message |")
    print("|---|---|---|---|")
    for name, (app, drain, disk) in results.items():
        print(f"| {name} | {disk / n:.0f} | {app / n * 1e6:.1f} us | {drain / n * 1e6:.1f} us |")
    extra_append = (results["zstd"][0] - results["none"][0]) / n
    extra_drain = (results["zstd"][1] - results["none"][1]) / n
    print(
        f"extra CPU of zstd: {extra_append * 1e6:.1f} us per message appended, {extra_drain * 1e6:.1f} us per message"
        f" drained; at 100 messages/s (10k points/s): {extra_append * 100 * 100:.2f} % of a core while the broker is"
        f" away, {extra_drain * 100 * 100:.2f} % per 100 messages/s of drain"
    )
    codec = min((_codec_round(pool) for _ in range(args.repeat)), key=lambda r: r[0])
    print(
        f"the codec alone (zstd level 1, no dictionary): {codec[0] / n * 1e6:.1f} us to compress,"
        f" {codec[1] / n * 1e6:.1f} us to decompress per message, {codec[2] / n:.0f} bytes;"
        f" compressing at 100 messages/s: {codec[0] / n * 100 * 100:.2f} % of a core"
    )
    if args.levels:
        print("| level | messages per frame | bytes per message | compress CPU per message |")
        print("|---|---|---|---|")
        for level in (1, 3, 6):
            cz = zstandard.ZstdCompressor(level=level)
            for batch in (1, 8, 32, 128):
                c0 = time.process_time()
                size = sum(len(cz.compress(b"".join(p for _, p in pool[i : i + batch]))) for i in range(0, n, batch))
                cpu = time.process_time() - c0
                print(f"| {level} | {batch} | {size / n:.0f} | {cpu / n * 1e6:.1f} us |")
    if args.dict:
        train: list[bytes | bytearray | memoryview] = [p for _, p in pool[: n // 2]]
        test = pool[n // 2 :]
        best = min((_dict_round(test, train) for _ in range(args.repeat)), key=lambda r: r[0])
        plain = zstandard.ZstdCompressor(level=1)
        size = sum(len(plain.compress(p)) for _, p in test)
        print(
            f"codec only, {len(test)} messages: level 1 without dictionary {size / len(test):.0f} bytes; with a 64 KiB"
            f" dictionary trained on the other {len(train)}: {best[2] / len(test):.0f} bytes,"
            f" {best[0] / len(test) * 1e6:.1f} us to compress, {best[1] / len(test) * 1e6:.1f} us to decompress"
        )


if __name__ == "__main__":
    main()
