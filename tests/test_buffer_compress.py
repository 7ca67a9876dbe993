"""The disk buffer's compressed records, its drop policies and names, and the split sync."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

import gateway.buffer
from gateway.buffer import RECORD_OVERHEAD, DiskBuffer

_HEAD = struct.Struct("<4sBBHIQd")
_HEADER = struct.Struct("<4sBBHIQdI")
TOPIC = "edgegw/site/meter-001/data"


def data_message(rng: random.Random, seq: int, points: int = 100) -> bytes:
    """A data message as the encoder writes it: 100 float32 currents, every value different."""
    ts = 1_765_000_000_000 + seq * 1000
    readings = ",".join(
        f'{{"point":"p{i}","value":{rng.uniform(0.5, 60):.8g},"unit":"A","quality":"good","ts":{ts}}}'
        for i in range(points)
    )
    return f'{{"device":"meter-001","seq":{seq},"ts":{ts},"readings":[{readings}]}}'.encode()


def _open(path: Path, **kw: object) -> DiskBuffer:
    args: dict[str, object] = {"max_bytes": 1 << 30, "segment_bytes": 1 << 20, "log": structlog.get_logger("t")}
    args.update(kw)
    buf = DiskBuffer(path, **args)  # type: ignore[arg-type]
    buf.open()
    return buf


def _flags(path: Path) -> list[int]:
    """The flags byte of every record of every segment, in order."""
    out = []
    for seg in sorted(path.glob("seg-*.log")):
        data = seg.read_bytes()
        pos = 0
        while pos < len(data):
            _m, _v, flags, tlen, plen, _rid, _ts, _h = _HEADER.unpack_from(data, pos)
            out.append(flags)
            pos += RECORD_OVERHEAD + tlen + plen
    return out


def test_compressed_records_round_trip_and_cost_under_a_kilobyte(tmp_path: Path) -> None:
    rng = random.Random(3)
    msgs = [data_message(rng, i) for i in range(200)]
    buf = _open(tmp_path, compression="zstd")
    ids = [buf.append(TOPIC, m, qos=1, retain=i % 7 == 0) for i, m in enumerate(msgs)]
    stats = buf.stats
    raw = sum(map(len, msgs))
    assert stats.payload_bytes == raw and stats.stored_bytes < raw / 7
    on_disk = sum(p.stat().st_size for p in tmp_path.glob("seg-*.log"))
    assert on_disk / len(msgs) <= 1024, on_disk / len(msgs)  # the target: <= 1 KB per 100-float message
    buf.close()
    buf = _open(tmp_path, compression="zstd")
    got = buf.take(1000)
    assert [(r.id, r.topic, r.payload, r.retain) for r in got] == [
        (rid, TOPIC, m, i % 7 == 0) for i, (rid, m) in enumerate(zip(ids, msgs, strict=True))
    ]
    buf.close()


def test_short_and_incompressible_payloads_are_stored_as_they_are(tmp_path: Path) -> None:
    buf = _open(tmp_path, compression="zstd")
    noise = random.Random(1).randbytes(2000)
    buf.append(TOPIC, b"short")
    buf.append(TOPIC, noise)
    buf.append(TOPIC, data_message(random.Random(2), 1))
    assert [f & gateway.buffer._FLAG_ZSTD for f in _flags(tmp_path)] == [0, 0, gateway.buffer._FLAG_ZSTD]
    assert [r.payload for r in buf.take(10)][:2] == [b"short", noise]
    buf.close()


@pytest.mark.parametrize(("first", "then"), [("none", "zstd"), ("zstd", "none")])
def test_a_buffer_written_with_the_other_setting_still_opens(tmp_path: Path, first: str, then: str) -> None:
    """An uncompressed buffer from an earlier version opens with compression on, and back."""
    rng = random.Random(4)
    msgs = [data_message(rng, i, points=20) for i in range(30)]
    buf = _open(tmp_path, compression=first)
    for m in msgs[:15]:
        buf.append(TOPIC, m)
    buf.close()
    buf = _open(tmp_path, compression=then)
    for m in msgs[15:]:
        buf.append(TOPIC, m)
    assert [r.payload for r in buf.take(100)] == msgs
    assert buf.stats.corrupt_records == 0
    buf.close()
    assert {f & gateway.buffer._FLAG_ZSTD for f in _flags(tmp_path)} == {0, gateway.buffer._FLAG_ZSTD}


def test_a_frame_that_does_not_decompress_is_counted_corrupt_and_skipped(tmp_path: Path) -> None:
    """Intact CRCs around a bad frame (a bug, not bit rot): the record is skipped, its neighbours kept."""
    buf = _open(tmp_path, compression="zstd")
    good = data_message(random.Random(5), 1)
    buf.append(TOPIC, good)
    buf.close()
    seg = sorted(tmp_path.glob("seg-*.log"))[0]
    topic = TOPIC.encode()
    bad = b"\x28\xb5\x2f\xfd" + b"not a zstd frame at all"
    head = _HEAD.pack(b"\xffEGR", 1, 1 | gateway.buffer._FLAG_ZSTD, len(topic), len(bad), 2, 0.0)
    hcrc = zlib.crc32(head)
    record = head + struct.pack("<I", hcrc) + topic + bad + struct.pack("<I", zlib.crc32(topic + bad, hcrc))
    with seg.open("ab") as f:
        f.write(record)
    buf = _open(tmp_path, compression="zstd")
    buf.append(TOPIC, good)
    got = buf.take(10)
    assert [r.id for r in got] == [1, 3] and all(r.payload == good for r in got)
    assert buf.stats.corrupt_records == 1
    buf.close()


def test_drop_newest_keeps_the_oldest_and_names_the_drops(tmp_path: Path) -> None:
    record = RECORD_OVERHEAD + len(TOPIC) + 200
    with capture_logs() as logs:
        buf = _open(tmp_path, max_bytes=40 * record, segment_bytes=5 * record, when_full="drop_newest")
        ids = [buf.append(TOPIC, b"x" * 200) for _ in range(100)]
        stats = buf.stats
        assert stats.records == 40 and stats.dropped_full == stats.dropped_records == 60
        assert [r.id for r in buf.take(1000)] == ids[:40]  # the oldest survive
        buf.ack(ids[:10])  # two segments freed: room again for ten
        assert buf.append(TOPIC, b"y" * 200) == 101 and buf.stats.records == 31
        buf.close()
    events = [(e["event"], e.get("dropped_total")) for e in logs if e.get("reason") == "buffer_full"]
    assert events == [
        ("buffer full: dropping new records (when_full: drop_newest)", 1),
        ("buffer drops ended", 60),
    ]


def test_a_burst_ends_after_a_quiet_spell_with_its_running_total(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = RECORD_OVERHEAD + len(TOPIC) + 100
    with capture_logs() as logs:
        buf = _open(tmp_path, max_bytes=10 * record, segment_bytes=2 * record)
        for _ in range(30):
            buf.append(TOPIC, b"z" * 100)
        buf.sync()  # not quiet long enough yet
        assert [e["event"] for e in logs if "reason" in e] == ["buffer full: dropping the oldest records"]
        monkeypatch.setattr(gateway.buffer, "_BURST_QUIET", 0.0)
        buf.sync()
        end = logs[-1]
        assert end["event"] == "buffer drops ended" and end["dropped_total"] == buf.stats.dropped_full == 20
        for _ in range(2):
            buf.append(TOPIC, b"z" * 100)  # a new burst: the running total goes on
        buf.close()
    starts = [e for e in logs if e["event"] == "buffer full: dropping the oldest records"]
    assert [e["dropped_total"] for e in starts] == [2, 22]


def test_sync_in_parts_covers_what_was_appended_before_it_began(tmp_path: Path) -> None:
    buf = _open(tmp_path, compression="zstd")
    first = [buf.append(TOPIC, b"a" * 50) for _ in range(5)]
    job = buf.sync_begin()
    later = buf.append(TOPIC, b"b" * 50)  # while the job runs elsewhere
    job.run()
    buf.sync_end(job)
    assert job.durable_below == later == first[-1] + 1
    # Only what a finished sync covers may be published in zero-loss mode.
    assert [r.id for r in buf.take(100, below=job.durable_below)] == first
    assert buf.take(100, below=job.durable_below) == []
    assert [r.id for r in buf.take(100)] == [later]
    buf.close()


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="compression"):
        DiskBuffer(tmp_path, 1 << 20, compression="lz4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="when_full"):
        DiskBuffer(tmp_path, 1 << 20, when_full="drop_random")  # type: ignore[arg-type]


def test_sealed_segments_keep_a_smaller_index_and_read_the_same(tmp_path: Path) -> None:
    """Contiguous ids and adjacent records: the index keeps offsets and states only (5 bytes a record)."""
    record = RECORD_OVERHEAD + len(TOPIC) + 100
    buf = _open(tmp_path, max_bytes=30 * record, segment_bytes=10 * record, when_full="drop_newest")
    ids = [buf.append(TOPIC, b"%03d" % i + b"." * 97) for i in range(25)]
    segs = buf._segs
    assert isinstance(segs[0].deltas, range) and not isinstance(segs[0].lens, type(segs[-1].lens))
    assert isinstance(segs[-1].deltas, type(segs[0].offs))  # the active one: still growing
    got = buf.take(10)
    assert [r.id for r in got] == ids[:10] and got[3].payload.startswith(b"003")
    buf.ack([ids[0], ids[5]])
    buf.release([r.id for r in got[1:]])
    for _ in range(10):  # over the cap: new ones dropped, so the ids of the last segment have a gap
        buf.append(TOPIC, b"x" * 100)
    buf.close()
    buf = _open(tmp_path, max_bytes=30 * record, segment_bytes=10 * record)
    rest = [r.id for r in buf.take(100)]
    assert rest == [i for i in ids if i not in (ids[0], ids[5])] + list(range(26, 26 + len(rest) - 23))
    buf.close()
