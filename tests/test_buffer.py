"""The disk store-and-forward buffer: order, recovery after restarts and crashes, damage, size cap."""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from structlog.testing import capture_logs

from gateway.buffer import RECORD_OVERHEAD, DiskBuffer, Record

REPO = Path(__file__).resolve().parent.parent
_HEADER = struct.Struct("<4sBBHIQdI")


def _open(path: Path, max_bytes: int = 1 << 30, segment_bytes: int = 4096) -> DiskBuffer:
    buf = DiskBuffer(path, max_bytes=max_bytes, segment_bytes=segment_bytes, log=structlog.get_logger("test"))
    buf.open()
    return buf


def _payload(i: int, size: int = 60) -> bytes:
    return (b"{'seq': %d}" % i).ljust(size, b".")


def _fill(buf: DiskBuffer, n: int, size: int = 60) -> list[int]:
    return [buf.append(f"edgegw/site/dev{i % 3}/data", _payload(i, size)) for i in range(n)]


def _drain(buf: DiskBuffer) -> list[Record]:
    return buf.take(1 << 30)


def _segments(path: Path) -> list[Path]:
    return sorted(path.glob("seg-*.log"))


def _extents(path: Path) -> list[tuple[int, int, int]]:
    """(start, end, id) of the records of an intact segment file, parsed from the documented format."""
    data = path.read_bytes()
    out = []
    pos = 0
    while pos < len(data):
        magic, _version, _flags, tlen, plen, rid, _ts, _hcrc = _HEADER.unpack_from(data, pos)
        assert magic == b"\xffEGR"
        end = pos + RECORD_OVERHEAD + tlen + plen
        out.append((pos, end, rid))
        pos = end
    return out


# --------------------------------------------------------------------------- order and basics


def test_append_take_ack_release_order(tmp_path: Path) -> None:
    buf = _open(tmp_path)
    ids = _fill(buf, 10)
    assert ids == list(range(1, 11))
    assert [r.id for r in buf.take(4)] == [1, 2, 3, 4]
    assert [r.id for r in buf.take(3)] == [5, 6, 7]
    buf.release([3, 2, 6])
    assert buf.stats.in_flight == 4
    assert buf.available == 6
    # Released records come back first, in id order, then the never-taken ones.
    assert [r.id for r in buf.take(5)] == [2, 3, 6, 8, 9]
    buf.ack([1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert [r.id for r in buf.take(5)] == [10]
    assert buf.take(5) == []
    buf.release([10])
    buf.ack([10, 10, 999])  # duplicates and unknown ids are ignored
    assert buf.take(5) == []
    stats = buf.stats
    assert (stats.records, stats.in_flight, stats.appended, stats.acked) == (0, 0, 10, 10)
    assert stats.oldest_ts is None
    buf.close()


def test_record_fields_round_trip(tmp_path: Path) -> None:
    buf = _open(tmp_path)
    payload = os.urandom(5000)
    rid = buf.append("edgegw/dc1/bcpme-1/meta", payload, qos=2, retain=True)
    buf.append("ünïcode/topic", b"", qos=0)
    first, second = buf.take(10)
    assert (first.id, first.topic, first.payload, first.qos, first.retain) == (
        rid,
        "edgegw/dc1/bcpme-1/meta",
        payload,
        2,
        True,
    )
    assert (second.topic, second.payload, second.qos, second.retain) == ("ünïcode/topic", b"", 0, False)
    assert first.ts <= second.ts
    with pytest.raises(ValueError):
        buf.append("t", b"x", qos=3)
    buf.close()


def test_take_spans_segments_and_acked_segments_are_deleted(tmp_path: Path) -> None:
    buf = _open(tmp_path, segment_bytes=1024)
    _fill(buf, 100, size=100)
    assert len(_segments(tmp_path)) > 5
    taken = buf.take(60)
    assert [r.id for r in taken] == list(range(1, 61))
    buf.ack(r.id for r in taken)
    remaining = _segments(tmp_path)
    assert all(_extents(p)[-1][2] > 60 for p in remaining)
    assert buf.stats.bytes == sum(p.stat().st_size for p in remaining)
    assert [r.id for r in _drain(buf)] == list(range(61, 101))
    buf.close()


def test_oldest_ts_and_bytes(tmp_path: Path) -> None:
    buf = _open(tmp_path)
    assert buf.stats.oldest_ts is None
    _fill(buf, 3, size=100)
    first = buf.take(1)[0]
    stats = buf.stats
    assert stats.oldest_ts == first.ts
    assert stats.bytes == 3 * (RECORD_OVERHEAD + len("edgegw/site/dev0/data") + 100)
    buf.ack([first.id])
    assert buf.stats.oldest_ts is not None and buf.stats.oldest_ts >= first.ts
    buf.close()


# --------------------------------------------------------------------------- restarts


def test_reopen_after_close_keeps_unacked_and_continues_ids(tmp_path: Path) -> None:
    buf = _open(tmp_path)
    _fill(buf, 20)
    buf.ack(r.id for r in buf.take(5))
    buf.take(5)  # in flight at shutdown: sent again after the restart
    buf.close()
    buf = _open(tmp_path)
    records = _drain(buf)
    assert [r.id for r in records] == list(range(6, 21))
    assert records[0].payload == _payload(5)
    assert buf.append("t", b"x") == 21
    buf.close()


def test_crash_without_close_keeps_every_appended_record(tmp_path: Path) -> None:
    buf = _open(tmp_path)
    _fill(buf, 400)
    buf.close(sync=False)  # no fsync, no ack state: what a killed process leaves behind
    assert len(_segments(tmp_path)) > 10
    buf = _open(tmp_path)
    records = _drain(buf)
    assert [r.id for r in records] == list(range(1, 401))
    assert [r.payload for r in records] == [_payload(i) for i in range(400)]
    buf.close()


def test_kill_9_keeps_appended_records_and_synced_acks(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import os, signal, sys
        from pathlib import Path
        from gateway.buffer import DiskBuffer
        buf = DiskBuffer(Path(sys.argv[1]), max_bytes=1 << 24, segment_bytes=1 << 16)
        buf.open()
        for i in range(200):
            buf.append(f"t/{i % 3}", b"%d" % i)
        buf.take(50)
        buf.ack(range(1, 21))
        buf.sync()
        buf.ack(range(21, 41))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], cwd=REPO, timeout=60, capture_output=True, check=False
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    buf = _open(tmp_path)
    records = _drain(buf)
    # Synced acks hold; the acks after the last sync are lost, so 21..40 come again (at-least-once).
    assert [r.id for r in records] == list(range(21, 201))
    assert [r.payload for r in records[:2]] == [b"20", b"21"]
    assert buf.append("t", b"x") == 201
    buf.close()


def test_synced_acks_survive_a_crash(tmp_path: Path) -> None:
    buf = _open(tmp_path, segment_bytes=1 << 20)
    _fill(buf, 30)
    taken = buf.take(30)
    buf.ack([1, 2, 3, 7, 8, 20])  # out of order acks are kept too
    buf.sync()
    buf.ack([4, 5])  # not synced: may come back
    buf.release(r.id for r in taken)
    buf.close(sync=False)
    buf = _open(tmp_path)
    ids = [r.id for r in _drain(buf)]
    expected = [i for i in range(1, 31) if i not in (1, 2, 3, 7, 8, 20)]
    assert ids == expected
    buf.close()


def test_ids_strictly_increase_across_restarts_when_everything_was_deleted(tmp_path: Path) -> None:
    last = 0
    for crash in (False, True, False, True):
        buf = _open(tmp_path, segment_bytes=512)
        ids = _fill(buf, 25)
        assert ids[0] > last
        last = ids[-1]
        buf.ack(r.id for r in _drain(buf))
        buf.close(sync=not crash)
        # A clean stop leaves no segment behind.
        if not crash:
            assert _segments(tmp_path) == []
    buf = _open(tmp_path)
    buf.ack(r.id for r in _drain(buf))  # the crash left acked but unsynced records: resent
    buf.close()
    buf = _open(tmp_path)
    assert buf.append("t", b"x") > last
    buf.close()


def test_ids_increase_after_recovered_segments_are_all_acked_and_the_process_dies(tmp_path: Path) -> None:
    buf = _open(tmp_path)
    _fill(buf, 10)
    buf.close(sync=False)  # the ack state knows nothing of ids 1..10
    buf = _open(tmp_path)
    buf.ack(r.id for r in _drain(buf))  # deletes the segment holding the newest id
    assert _segments(tmp_path) == []
    buf.close(sync=False)
    buf = _open(tmp_path)
    assert buf.append("t", b"x") == 11
    buf.close()


# --------------------------------------------------------------------------- damage


def _pristine(tmp_path: Path, n: int = 30) -> Path:
    folder = tmp_path / "pristine"
    buf = _open(folder, segment_bytes=1 << 20)
    _fill(buf, n)
    buf.close()
    return folder


def test_truncated_tail_recovers_the_intact_prefix(tmp_path: Path) -> None:
    pristine = _pristine(tmp_path)
    (seg,) = _segments(pristine)
    extents = _extents(seg)
    size = seg.stat().st_size
    rng = random.Random(7)
    cuts = {0, 1, size - 1, extents[5][1], extents[5][1] + 1} | {rng.randrange(size) for _ in range(20)}
    for cut in sorted(cuts):
        work = tmp_path / f"cut-{cut}"
        shutil.copytree(pristine, work)
        with open(_segments(work)[0], "r+b") as f:
            f.truncate(cut)
        buf = _open(work)
        records = _drain(buf)
        intact = [rid for _s, end, rid in extents if end <= cut]
        assert [r.id for r in records] == intact, cut
        assert all(r.payload == _payload(r.id - 1) for r in records)
        # The torn bytes are gone from the file, and appends go on after the last intact id.
        assert sum(p.stat().st_size for p in _segments(work)) == (extents[len(intact) - 1][1] if intact else 0)
        assert buf.append("t", b"x") == 31
        buf.close()


@pytest.mark.parametrize("where", ["magic", "header", "topic", "payload", "trailer"])
def test_corrupt_record_in_the_middle_is_skipped_and_counted(tmp_path: Path, where: str) -> None:
    pristine = _pristine(tmp_path)
    work = tmp_path / "work"
    shutil.copytree(pristine, work)
    seg = _segments(work)[0]
    start, end, rid = _extents(seg)[12]
    offset = {"magic": 0, "header": 14, "topic": 33, "payload": 60, "trailer": end - start - 2}[where]
    data = bytearray(seg.read_bytes())
    data[start + offset] ^= 0x5A
    seg.write_bytes(bytes(data))
    buf = _open(work)
    assert buf.stats.corrupt_records == 1
    ids = [r.id for r in _drain(buf)]
    assert ids == [i for i in range(1, 31) if i != rid]
    buf.close()


def test_record_damaged_after_open_is_skipped_when_taken(tmp_path: Path) -> None:
    buf = _open(tmp_path)
    _fill(buf, 5)
    seg = _segments(tmp_path)[0]
    start, _end, _rid = _extents(seg)[2]
    with open(seg, "r+b") as f:
        f.seek(start + 50)
        f.write(b"X")
    assert [r.id for r in buf.take(10)] == [1, 2, 4, 5]
    assert buf.stats.corrupt_records == 1
    assert buf.stats.records == 4
    buf.close()


def test_garbage_empty_and_foreign_files_are_not_fatal(tmp_path: Path) -> None:
    pristine = _pristine(tmp_path, n=10)
    work = tmp_path / "work"
    shutil.copytree(pristine, work)
    (work / f"seg-{5:020d}.log").write_bytes(os.urandom(3000))  # sorts before the real one
    (work / f"seg-{99:020d}.log").write_bytes(b"")
    (work / "seg-7.log").write_bytes(b"\xffEGR" + os.urandom(100))
    (work / "acks.state.tmp").write_bytes(b"half written")
    (work / "README").write_text("not ours")
    (work / f"seg-{50:020d}.log").mkdir()
    buf = DiskBuffer(work, max_bytes=1 << 20)
    report = buf.open()
    assert [r.id for r in _drain(buf)] == list(range(1, 11))
    assert report.removed_files == 3
    assert report.unreadable_files == 1
    assert report.records == 10
    assert (work / "README").exists()
    assert not (work / "acks.state.tmp").exists()
    assert buf.append("t", b"x") == 11
    buf.close()


@pytest.mark.parametrize("content", [b"", b"garbage", None])
def test_bad_ack_state_means_everything_is_resent(tmp_path: Path, content: bytes | None) -> None:
    buf = _open(tmp_path)
    _fill(buf, 10)
    buf.ack(r.id for r in buf.take(4))
    buf.close()
    state = tmp_path / "acks.state"
    if content is None:
        data = bytearray(state.read_bytes())
        data[18] ^= 1  # a flipped bit in the low-water mark must not ack anything
        state.write_bytes(bytes(data))
    else:
        state.write_bytes(content)
    buf = DiskBuffer(tmp_path, max_bytes=1 << 20)
    report = buf.open()
    assert report.ack_state == "damaged"
    assert [r.id for r in _drain(buf)] == list(range(1, 11))
    buf.close()


def test_ack_state_that_cannot_be_read_or_written_is_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "acks.state").mkdir()
    buf = DiskBuffer(tmp_path, max_bytes=1 << 20)
    assert buf.open().ack_state == "damaged"
    _fill(buf, 5)
    buf.ack(r.id for r in buf.take(2))
    buf.sync()
    buf.close()
    assert buf.stats.io_errors >= 2
    buf = DiskBuffer(tmp_path, max_bytes=1 << 20)
    buf.open()
    assert [r.id for r in _drain(buf)] == [1, 2, 3, 4, 5]  # the acks could not be kept: resent
    buf.close()


def test_unusable_folder_raises_a_clear_oserror(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    for path in (not_a_dir, not_a_dir / "sub"):
        with pytest.raises(OSError, match=r"buffer folder .* is unusable"):
            DiskBuffer(path, max_bytes=1 << 20).open()


def test_a_folder_in_use_is_refused(tmp_path: Path) -> None:
    first = _open(tmp_path)
    with pytest.raises(OSError, match="in use by another process"):
        DiskBuffer(tmp_path, max_bytes=1 << 20).open()
    first.close()
    _open(tmp_path).close()


# --------------------------------------------------------------------------- size cap and disk errors


def test_size_cap_drops_the_oldest_and_counts(tmp_path: Path) -> None:
    record = RECORD_OVERHEAD + len("edgegw/site/dev0/data") + 200
    with capture_logs() as logs:
        buf = DiskBuffer(tmp_path, max_bytes=40 * record, segment_bytes=5 * record)
        buf.open()
        _fill(buf, 100, size=200)
        stats = buf.stats
        assert stats.bytes <= 40 * record
        assert stats.dropped_records == 100 - stats.records
        assert stats.dropped_bytes == stats.dropped_records * record
        ids = [r.id for r in _drain(buf)]
        assert ids == list(range(101 - len(ids), 101))  # the newest survive, in order
        assert len(ids) >= 35
        buf.close()
    # One line when the burst starts, one with the running total when it ends (here: at close).
    events = [e for e in logs if e.get("reason") == "buffer_full"]
    assert [e["event"] for e in events] == ["buffer full: dropping the oldest records", "buffer drops ended"]
    assert all(e["log_level"] == "warning" for e in events)
    assert events[0]["dropped_total"] == 5
    assert events[1]["dropped_total"] == events[1]["dropped_in_burst"] == stats.dropped_records
    assert stats.dropped_full == stats.dropped_records and stats.dropped_no_space == 0


def test_size_cap_drops_records_in_flight_and_forgets_their_acks(tmp_path: Path) -> None:
    record = RECORD_OVERHEAD + len("edgegw/site/dev0/data") + 200
    buf = DiskBuffer(tmp_path, max_bytes=10 * record, segment_bytes=2 * record)
    buf.open()
    _fill(buf, 6, size=200)
    taken = buf.take(3)
    buf.release([taken[2].id])
    _fill(buf, 6, size=200)
    buf.ack(r.id for r in taken)  # acks for dropped records are ignored
    stats = buf.stats
    assert stats.in_flight == 0
    # 1 and 2 (in flight) were dropped before their acks; 3 (released, then acked) was not.
    assert (stats.dropped_records, stats.acked, stats.records) == (2, 1, 9)
    assert [r.id for r in _drain(buf)] == list(range(4, 13))
    buf.close()


def test_size_cap_smaller_than_a_segment_drops_from_the_active_one(tmp_path: Path) -> None:
    buf = DiskBuffer(tmp_path, max_bytes=1000)
    buf.open()
    _fill(buf, 30, size=100)  # 157 bytes each: 6 fit
    stats = buf.stats
    assert stats.bytes <= 1000
    assert stats.records + stats.dropped_records == 30
    assert [r.id for r in _drain(buf)] == list(range(31 - stats.records, 31))
    buf.close()


def test_record_larger_than_the_cap_is_dropped(tmp_path: Path) -> None:
    buf = DiskBuffer(tmp_path, max_bytes=10_000)
    buf.open()
    buf.append("t", b"small")
    rid = buf.append("t", b"x" * 20_000)
    assert rid == 2
    stats = buf.stats
    assert (stats.records, stats.dropped_records) == (1, 1)
    assert stats.dropped_bytes == RECORD_OVERHEAD + 1 + 20_000
    buf.close()


def test_write_error_drops_the_new_record_and_goes_on(tmp_path: Path) -> None:
    buf = _open(tmp_path, segment_bytes=1 << 20)
    _fill(buf, 5)
    size = _segments(tmp_path)[0].stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Writes past the limit fail with EFBIG (SIGXFSZ is ignored by Python): a full disk, for
    # the buffer's purposes, without needing one.
    # The log goes to a list meanwhile: pytest's capture file is subject to the limit too.
    with capture_logs() as logs:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 200, hard))
        try:
            ids = _fill(buf, 5)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    # One line when the burst starts (a file too large counts as a full disk); the end is logged later.
    assert [e["event"] for e in logs] == ["disk full: dropping new records"]
    assert logs[0]["reason"] == "disk_full" and logs[0]["dropped_total"] == 1
    stats = buf.stats
    assert stats.dropped_records >= 3
    assert stats.dropped_no_space == stats.dropped_records and stats.dropped_full == 0
    assert stats.io_errors == stats.dropped_records
    assert stats.records == 10 - stats.dropped_records
    assert buf.append("t", b"after") == ids[-1] + 1
    buf.sync()
    expected = [r.id for r in buf.take(100)]
    buf.close(sync=False)
    buf = _open(tmp_path)
    assert buf.stats.corrupt_records == 0  # the partial write was cut
    assert [r.id for r in _drain(buf)] == expected
    buf.close()


def test_use_before_open_or_after_close_is_an_error(tmp_path: Path) -> None:
    buf = DiskBuffer(tmp_path, max_bytes=1 << 20)
    with pytest.raises(RuntimeError):
        buf.append("t", b"x")
    buf.open()
    buf.close()
    buf.close()
    with pytest.raises(RuntimeError):
        buf.take(1)


# --------------------------------------------------------------------------- property tests


class BufferModel(RuleBasedStateMachine):
    """Random append/take/ack/release/sync/restart/crash sequences against a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="edgegw-buffer-"))
        self.buf = self._open()
        self.contents: dict[int, tuple[str, bytes, int, bool]] = {}  # every record ever appended
        self.live: set[int] = set()  # not acknowledged
        self.in_flight: set[int] = set()
        self.acked_since_sync: set[int] = set()
        self.max_id = 0

    def _open(self) -> DiskBuffer:
        buf = DiskBuffer(self.dir, max_bytes=1 << 30, segment_bytes=300, log=structlog.get_logger("model"))
        buf.open()
        return buf

    @rule(
        topic=st.sampled_from(["a/1/data", "a/2/data", "b/ü/data"]),
        payload=st.binary(max_size=200),
        qos=st.integers(0, 2),
        retain=st.booleans(),
    )
    def append(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        rid = self.buf.append(topic, payload, qos, retain)
        assert rid > self.max_id
        self.max_id = rid
        self.contents[rid] = (topic, payload, qos, retain)
        self.live.add(rid)

    @rule(limit=st.integers(1, 12))
    def take(self, limit: int) -> None:
        records = self.buf.take(limit)
        expected = sorted(self.live - self.in_flight)[:limit]
        assert [r.id for r in records] == expected
        for r in records:
            assert (r.topic, r.payload, r.qos, r.retain) == self.contents[r.id]
        self.in_flight.update(expected)

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(sorted(self.in_flight)), max_size=8))
        self.buf.ack(ids)
        self.in_flight.difference_update(ids)
        self.live.difference_update(ids)
        self.acked_since_sync.update(ids)

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(sorted(self.in_flight)), max_size=8))
        self.buf.release(ids)
        self.in_flight.difference_update(ids)

    @rule()
    def sync(self) -> None:
        self.buf.sync()
        self.acked_since_sync.clear()

    @rule()
    def restart(self) -> None:
        self.buf.close()
        self.buf = self._open()
        self.in_flight.clear()
        self.acked_since_sync.clear()

    @rule()
    def crash(self) -> None:
        self.buf.close(sync=False)
        self.buf = self._open()
        records = self.buf.take(1 << 30)
        ids = {r.id for r in records}
        # At-least-once: everything unacknowledged is back; acks since the last sync may be lost.
        assert self.live <= ids <= self.live | self.acked_since_sync
        assert [r.id for r in records] == sorted(ids)
        for r in records:
            assert (r.topic, r.payload, r.qos, r.retain) == self.contents[r.id]
        self.buf.release(ids)
        self.live = ids
        self.in_flight.clear()
        self.acked_since_sync.clear()

    @invariant()
    def counts(self) -> None:
        stats = self.buf.stats
        assert stats.records == len(self.live)
        assert stats.in_flight == len(self.in_flight)
        assert stats.corrupt_records == stats.dropped_records == 0

    def teardown(self) -> None:
        self.buf.close()
        shutil.rmtree(self.dir, ignore_errors=True)


BufferModel.TestCase.settings = settings(
    max_examples=40, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_buffer_model = BufferModel.TestCase


@pytest.fixture(scope="module")
def damaged_source() -> Iterator[tuple[Path, dict[int, tuple[str, int, int]], set[int]]]:
    """A folder of several segments, some records acknowledged; with where every record lies."""
    folder = Path(tempfile.mkdtemp(prefix="edgegw-buffer-src-"))
    buf = DiskBuffer(folder, max_bytes=1 << 20, segment_bytes=700)
    buf.open()
    rng = random.Random(3)
    for i in range(40):
        buf.append(f"s/d{i % 4}/data", _payload(i, rng.randrange(0, 120)))
    acked = {1, 2, 3, 4, 5, 9, 17, 18, 30}
    buf.take(40)
    buf.ack(acked)
    buf.close()
    where = {rid: (p.name, start, end) for p in _segments(folder) for start, end, rid in _extents(p)}
    yield folder, where, acked
    shutil.rmtree(folder, ignore_errors=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_corruption_never_raises_and_keeps_intact_records(
    damaged_source: tuple[Path, dict[int, tuple[str, int, int]], set[int]], data: st.DataObject
) -> None:
    source, where, acked = damaged_source
    work = Path(tempfile.mkdtemp(prefix="edgegw-buffer-fuzz-"))
    try:
        shutil.copytree(source, work, dirs_exist_ok=True)
        files = sorted(p.name for p in work.iterdir() if p.name != "lock")
        victims = data.draw(st.lists(st.sampled_from(files), min_size=1, max_size=3, unique=True))
        damage: dict[str, tuple[set[int], int, int | None]] = {}
        for name in victims:
            path = work / name
            content = bytearray(path.read_bytes())
            size = len(content)
            flips = set(data.draw(st.lists(st.integers(0, max(size - 1, 0)), max_size=6))) if size else set()
            for pos in flips:
                content[pos] = data.draw(st.integers(0, 255))
            cut = data.draw(st.one_of(st.none(), st.integers(0, size)))
            if cut is not None:
                del content[cut:]
            insert = data.draw(st.one_of(st.none(), st.tuples(st.integers(0, len(content)), st.binary(max_size=50))))
            if insert is not None:
                content[insert[0] : insert[0]] = insert[1]
            path.write_bytes(bytes(content))
            damage[name] = (flips, cut if cut is not None else size, insert[0] if insert else None)

        buf = DiskBuffer(work, max_bytes=1 << 20, segment_bytes=700, log=structlog.get_logger("fuzz"))
        report = buf.open()
        records = buf.take(1 << 30)
        ids = [r.id for r in records]
        assert ids == sorted(set(ids))
        for r in records:
            assert r.payload == _payload(r.id - 1, len(r.payload)) and r.topic == f"s/d{(r.id - 1) % 4}/data"
        for rid, (name, start, end) in where.items():
            if rid in acked:
                continue
            if name in damage:
                flips, cut, ins = damage[name]
                if any(start <= p < end for p in flips) or end > cut or (ins is not None and start < ins < end):
                    continue
            assert rid in ids, (rid, report)
        if "acks.state" not in damage:
            assert not acked & set(ids)
        # The repaired folder keeps working, and a second recovery finds nothing more to repair.
        buf.ack(ids[::2])
        buf.release(ids[1::2])
        buf.append("t", b"x")
        buf.close()
        again = DiskBuffer(work, max_bytes=1 << 20, segment_bytes=700, log=structlog.get_logger("fuzz"))
        second = again.open()
        assert second.truncated_bytes == second.truncated_files == 0
        assert len(again.take(1 << 30)) == len(ids[1::2]) + 1
        again.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
