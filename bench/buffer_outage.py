"""A day away from the broker, time-compressed: fill the disk buffer as a 24 h outage would, then drain it.

24 h at 10k points/s is 8.64 M data messages of 100 readings (100 devices, one message each per
second). The messages come from the real encoder (bench/buffer_msgs.py: 100 float32 currents,
every value drifting, the worst case for compression); a pool of them is encoded first and then
cycled, with the buffer doing exactly what the daemon does during an outage: one append per
message, a sync every simulated second. Then the buffer is closed, reopened (the recovery scan a
restart would do) and drained in batches (take, ack; publishing itself is not part of this).

    python bench/buffer_outage.py                      # the full 8.64 M messages (about 8 GB of disk)
    python bench/buffer_outage.py --hours 3            # 1.08 M messages, extrapolate x8

Prints one JSON line: disk used, bytes per message, peak RSS, fill/reopen/drain time and rates.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from buffer_msgs import messages

from gateway.buffer import DiskBuffer
from gateway.config import BufferConfig


def _rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=float, default=24.0, help="length of the outage to simulate")
    ap.add_argument("--rate", type=int, default=100, help="messages per second (100 x 100 points = 10k points/s)")
    ap.add_argument("--pool", type=int, default=2000, help="distinct messages encoded, then cycled")
    ap.add_argument("--dir", type=Path, default=None, help="where the buffer goes (default: a temporary folder)")
    ap.add_argument("--compression", choices=["zstd", "none"], default=BufferConfig().compression)
    ap.add_argument("--keep", action="store_true", help="leave the buffer folder in place")
    args = ap.parse_args()
    defaults = BufferConfig()
    total = int(args.hours * 3600 * args.rate)
    work = Path(tempfile.mkdtemp(prefix="edgegw-outage-", dir=args.dir))
    folder = work / "buffer"
    pool = list(itertools.islice(messages(devices=args.rate), args.pool))
    rss_base = _rss_mb()[0]

    buf = DiskBuffer(
        folder, max_bytes=defaults.max_size, segment_bytes=defaults.segment_size, compression=args.compression
    )
    buf.open()
    t0 = time.monotonic()
    c0 = time.process_time()
    for i in range(total):
        topic, payload = pool[i % len(pool)]
        buf.append(topic, payload)
        if i % args.rate == args.rate - 1:
            buf.sync()  # sync_interval 1s of simulated time
        if i % 1_000_000 == 999_999:
            print(f"  {i + 1} appended, {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    buf.sync()
    fill_s, fill_cpu = time.monotonic() - t0, time.process_time() - c0
    stats = buf.stats
    disk = sum(p.stat().st_size for p in folder.iterdir())
    rss_full = _rss_mb()[0]
    buf.close()

    t0 = time.monotonic()
    buf = DiskBuffer(
        folder, max_bytes=defaults.max_size, segment_bytes=defaults.segment_size, compression=args.compression
    )
    report = buf.open()
    reopen_s = time.monotonic() - t0

    t0 = time.monotonic()
    c0 = time.process_time()
    drained = 0
    while batch := buf.take(100):
        buf.ack([r.id for r in batch])
        drained += len(batch)
        if drained % (100 * args.rate) == 0:
            buf.sync()
    buf.close()
    drain_s, drain_cpu = time.monotonic() - t0, time.process_time() - c0
    peak = _rss_mb()[1]
    out = {
        "messages": total,
        "hours": args.hours,
        "compression": args.compression,
        "max_size": defaults.max_size,
        "disk_bytes": disk,
        "bytes_per_message": round(disk / max(1, stats.records), 1),
        "raw_payload_bytes_per_message": round(stats.payload_bytes / max(1, stats.appended), 1),
        "kept": stats.records,
        "dropped": stats.dropped_records,
        "fill_s": round(fill_s, 1),
        "fill_cpu_us_per_message": round(fill_cpu / total * 1e6, 1),
        "reopen_s": round(reopen_s, 1),
        "recovered": report.records,
        "drained": drained,
        "drain_s": round(drain_s, 1),
        "drain_cpu_us_per_message": round(drain_cpu / max(1, drained) * 1e6, 1),
        "drain_messages_per_s": round(drained / drain_s) if drain_s else None,
        "rss_before_mib": round(rss_base, 1),
        "rss_full_mib": round(rss_full, 1),
        "peak_rss_mib": round(peak, 1),
    }
    print(json.dumps(out), flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"buffer left in {folder}", file=sys.stderr)
    os._exit(0)


if __name__ == "__main__":
    main()
