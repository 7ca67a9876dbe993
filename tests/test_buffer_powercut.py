"""Power-cut consistency of the disk buffer, tested the way storage engines test it.

A workload runs against a real buffer whose file operations go through :class:`RecordingOS`
(it stands in for the ``os`` module inside ``gateway.buffer``: every call is forwarded, and the
ones that change files are logged). Then every prefix of that log is replayed onto a fresh folder,
as a machine that lost power at that point could have left it, and the buffer is opened there:

* ``all``: every operation of the prefix reached the disk (what ``kill -9`` leaves);
* ``torn``: the same, but the prefix's last write is torn: only some of its bytes, or garbage after it;
* ``synced``: only what was made durable: a file's writes and truncations before a later fsync of
  that file, and creations, renames and removals before a later fsync of the folder;
* ``some``: the synced part plus a random subset of the rest (names in journal order: a prefix of
  them; contents: any subset, one of them torn).

Each must open, return no record that differs from what was appended under its id, and keep every
record the fsync policy promises: in ``all``/``torn`` every record appended and neither acknowledged
nor dropped; after a power cut those appended before the start of the last finished sync.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import gateway.buffer
from gateway.buffer import _TAKEN, DiskBuffer

DIR = 0  # the inode number of the buffer folder in the log

Op = tuple[Any, ...]


class RecordingOS:
    """The ``os`` module for gateway.buffer, logging what changes files (by inode, so renames are exact).

    ``space``: bytes that may still be written; a write beyond it fails with ENOSPC (a full disk).
    """

    def __init__(self, root: Path, space: int | None = None) -> None:
        self.root = root.resolve()
        self.ops: list[Op] = []
        self.space = space
        self._fds: dict[int, int] = {}  # fd -> inode
        self._pos: dict[int, int] = {}
        self._names: dict[str, int] = {}
        self._next_ino = DIR + 1
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def mark(self, *what: Any) -> None:
        with self._lock:
            self.ops.append(("mark", *what))

    def _name(self, path: Any) -> str:
        p = Path(path).resolve()
        return "." if p == self.root else str(p.relative_to(self.root))

    def open(self, path: Any, flags: int, mode: int = 0o777) -> int:
        name = self._name(path)
        existed = os.path.exists(path)
        fd = os.open(path, flags, mode)
        with self._lock:
            if name == ".":
                ino = DIR
            elif name in self._names and existed:
                ino = self._names[name]
            else:
                ino = self._names[name] = self._next_ino
                self._next_ino += 1
                self.ops.append(("create", name, ino))
            if flags & os.O_TRUNC and ino != DIR:
                self.ops.append(("trunc", ino, 0))
            self._fds[fd] = ino
            self._pos[fd] = 0
        return fd

    def _room(self, n: int) -> None:
        if self.space is not None:
            if n > self.space:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.space -= n

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        self._room(len(data))
        n = os.pwrite(fd, data, offset)
        with self._lock:
            self.ops.append(("write", self._fds[fd], offset, bytes(data[:n])))
        return n

    def write(self, fd: int, data: Any) -> int:
        self._room(len(data))
        n = os.write(fd, data)
        with self._lock:
            self.ops.append(("write", self._fds[fd], self._pos[fd], bytes(data[:n])))
            self._pos[fd] += n
        return n

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)
        with self._lock:
            self.ops.append(("trunc", self._fds[fd], size))

    def fsync(self, fd: int) -> None:
        os.fsync(fd)
        with self._lock:
            self.ops.append(("fsync", self._fds[fd]))

    def dup(self, fd: int) -> int:
        new = os.dup(fd)
        with self._lock:
            self._fds[new] = self._fds[fd]
            self._pos[new] = 0
        return new

    def close(self, fd: int) -> None:
        os.close(fd)
        with self._lock:
            self._fds.pop(fd, None)

    def replace(self, src: Any, dst: Any) -> None:
        os.replace(src, dst)
        a, b = self._name(src), self._name(dst)
        with self._lock:
            self._names[b] = self._names.pop(a)
            self.ops.append(("rename", a, b))

    def unlink(self, path: Any) -> None:
        os.unlink(path)
        name = self._name(path)
        with self._lock:
            self._names.pop(name, None)
            self.ops.append(("unlink", name))


# ---------------------------------------------------------------------------- the workload


class _Quiet:
    """A logger that drops everything: thousands of opens, each with its own 'buffer opened' line."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kw: None


_QUIET: Any = _Quiet()


@dataclass
class Run:
    """A recorded workload: the log, and what was appended (id -> topic, payload, qos, retain)."""

    ops: list[Op]
    appended: dict[int, tuple[str, bytes, int, bool]] = field(default_factory=dict)


def _live(buf: DiskBuffer) -> set[int]:
    """Ids the buffer still holds to send (its index; test-only peek)."""
    return {seg.base + d for seg in buf._segs for d, f in zip(seg.deltas, seg.flags, strict=True) if f <= _TAKEN}


def _payload(rng: random.Random, i: int) -> bytes:
    kind = rng.random()
    if kind < 0.6:  # a data message: compresses well
        vals = ",".join(
            f'{{"point":"p{k}","value":{rng.uniform(0, 60):.6g},"unit":"A"}}' for k in range(rng.randint(3, 40))
        )
        return f'{{"seq":{i},"readings":[{vals}]}}'.encode()
    if kind < 0.8:
        return rng.randbytes(rng.randint(0, 300))  # does not compress: stored as it is
    return f"short {i}".encode()


def record_workload(
    folder: Path, monkeypatch: pytest.MonkeyPatch, steps: int, seed: int, max_bytes: int = 24_000
) -> Run:
    """Random appends, takes, acks, releases, syncs (some overlapping appends), restarts; all logged."""
    rng = random.Random(seed)
    rec = RecordingOS(folder)
    monkeypatch.setattr(gateway.buffer, "os", rec)
    run = Run(rec.ops)

    def fresh() -> DiskBuffer:
        buf = DiskBuffer(folder, max_bytes=max_bytes, segment_bytes=4096, compression="zstd", log=_QUIET)
        buf.open()
        return buf

    buf = fresh()
    live = _live(buf)
    taken: list[int] = []

    def append(topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        nonlocal live
        dropped = buf.stats.dropped_records
        # Placed before the call, filled in after it: the cap deletes files inside append().
        slot = len(rec.ops)
        rec.mark("gone", frozenset())
        rid = buf.append(topic, payload, qos, retain)
        if buf.stats.dropped_records != dropped:
            now = _live(buf)
            rec.ops[slot] = ("mark", "gone", frozenset(live - now))
            live = now
        if rid in live or buf.stats.dropped_records == dropped:
            live.add(rid)
            run.appended[rid] = (topic, payload, qos, retain)
            rec.mark("appended", rid)

    try:
        for i in range(steps):
            r = rng.random()
            if r < 0.55:
                topic = f"edgegw/site/dev{rng.randint(0, 3)}/data"
                append(topic, _payload(rng, i), rng.choice((0, 1, 1, 2)), rng.random() < 0.1)
            elif r < 0.70:
                taken += [x.id for x in buf.take(rng.randint(1, 12))]
            elif r < 0.82 and taken:
                n = rng.randint(1, len(taken))
                acked, taken = taken[:n], taken[n:]
                if rng.random() < 0.3:
                    rng.shuffle(acked)
                rec.mark("acked", frozenset(acked))  # before: ack() may delete a file
                buf.ack(acked)
                live -= set(acked)
            elif r < 0.85 and taken:
                buf.release(taken)
                taken = []
            elif r < 0.98:
                # A sync whose fsyncs overlap a few appends, as when the worker thread runs it.
                job = buf.sync_begin()
                for _ in range(rng.randint(0, 2)):
                    append("edgegw/site/dev9/data", _payload(rng, i))
                job.run()
                rec.mark("synced", job.durable_below)
                buf.sync_end(job)
            else:
                buf.close()
                rec.mark("reopen")
                buf = fresh()
                live = _live(buf)
                taken = []
    finally:
        buf.close()
    return run


# ---------------------------------------------------------------------------- crash images


def _image(ops: list[Op], keep: list[bool] | None, tear: dict[int, bytes | None]) -> dict[str, bytes]:
    """The folder after applying the kept operations (None: all) in order; tear[i]: the bytes op i leaves instead."""
    files: dict[int, bytearray] = {}
    names: dict[str, int] = {}
    for i, op in enumerate(ops):
        kind = op[0]
        if kind in ("mark", "fsync") or (keep is not None and not keep[i]):
            continue
        if kind == "create":
            names[op[1]] = op[2]
            files[op[2]] = bytearray()
        elif kind == "write":
            _, ino, off, data = op
            if i in tear:
                data = tear[i]
                if data is None:
                    continue
            buf = files.setdefault(ino, bytearray())
            if len(buf) < off:
                buf.extend(bytes(off - len(buf)))
            buf[off : off + len(data)] = data
        elif kind == "trunc":
            _, ino, size = op
            buf = files.setdefault(ino, bytearray())
            del buf[size:]
            buf.extend(bytes(size - len(buf)))
        elif kind == "rename":
            if op[1] in names:
                names[op[2]] = names.pop(op[1])
        elif kind == "unlink":
            names.pop(op[1], None)
    return {name: bytes(files.get(ino, b"")) for name, ino in names.items()}


def _durable(ops: list[Op]) -> list[bool]:
    """Per operation of this prefix: made durable by a later fsync (of its file, or of the folder)."""
    out = [False] * len(ops)
    synced_files: set[int] = set()
    dir_synced = False
    for i in range(len(ops) - 1, -1, -1):
        op = ops[i]
        kind = op[0]
        if kind == "fsync":
            if op[1] == DIR:
                dir_synced = True
            else:
                synced_files.add(op[1])
        elif kind in ("create", "rename", "unlink"):
            out[i] = dir_synced
        elif kind in ("write", "trunc"):
            out[i] = op[1] in synced_files
    return out


@dataclass
class Expect:
    """What a crash at the end of a prefix must keep."""

    appended: set[int]  # appended (returned) and still held: neither acknowledged nor dropped
    synced: set[int]  # of those: appended before the start of the last finished sync


def _expect(ops: list[Op]) -> Expect:
    appended: set[int] = set()
    done: set[int] = set()
    durable_below = 0
    for op in ops:
        if op[0] == "mark":
            if op[1] == "appended":
                appended.add(op[2])
            elif op[1] in ("acked", "gone"):
                done |= op[2]
            elif op[1] == "synced":
                durable_below = max(durable_below, op[2])
    held = appended - done
    return Expect(held, {i for i in held if i < durable_below})


def crash_images(ops: list[Op], rng: random.Random) -> Iterator[tuple[str, int, dict[str, bytes], set[int]]]:
    """(variant, prefix length, folder contents, ids it must hold) for every prefix of the log."""
    for k in range(len(ops) + 1):
        if k and ops[k - 1][0] == "mark":
            continue  # the same files as the prefix before it
        prefix = ops[:k]
        exp = _expect(prefix)
        yield "all", k, _image(prefix, None, {}), exp.appended
        if k and prefix[-1][0] == "write":
            data = prefix[-1][3]
            cut = rng.randrange(len(data)) if data else 0
            yield "torn", k, _image(prefix, None, {k - 1: data[:cut]}), exp.appended
            junk = data + rng.randbytes(rng.randint(1, 64))
            yield "torn", k, _image(prefix, None, {k - 1: junk}), exp.appended
        durable = _durable(prefix)
        yield "synced", k, _image(prefix, durable, {}), exp.synced
        # Names reach the disk in journal order (a prefix of them); contents in any subset.
        ns = [i for i, op in enumerate(prefix) if op[0] in ("create", "rename", "unlink") and not durable[i]]
        ns_upto = ns[rng.randrange(len(ns))] if ns else -1
        content = [i for i, op in enumerate(prefix) if op[0] in ("write", "trunc") and not durable[i]]
        chosen = {i for i in content if rng.random() < 0.5}
        tear: dict[int, bytes | None] = {}
        writes = [i for i in chosen if prefix[i][0] == "write" and prefix[i][3]]
        if writes:
            i = rng.choice(writes)
            data = prefix[i][3]
            tear[i] = data[: rng.randrange(len(data))] if rng.random() < 0.5 else data + rng.randbytes(16)

        some = [
            durable[i] or (i <= ns_upto if op[0] in ("create", "rename", "unlink") else i in chosen)
            for i, op in enumerate(prefix)
        ]
        yield "some", k, _image(prefix, some, tear), exp.synced


def check_image(
    folder: Path, files: dict[str, bytes], appended: dict[int, tuple[str, bytes, int, bool]], must: set[int]
) -> None:
    """Open the buffer on these files: it opens, returns only intact records, keeps what it must."""
    folder.mkdir(exist_ok=True)
    for entry in os.scandir(folder):
        os.unlink(entry.path)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    buf = DiskBuffer(folder, max_bytes=1 << 30, compression="zstd", log=_QUIET)
    buf.open()
    try:
        got: dict[int, tuple[str, bytes, int, bool]] = {}
        while batch := buf.take(500):
            for r in batch:
                assert r.id not in got, f"record {r.id} returned twice"
                got[r.id] = (r.topic, r.payload, r.qos, r.retain)
        for rid, value in got.items():
            assert appended.get(rid) == value, f"record {rid} is not what was appended"
        missing = must - got.keys()
        assert not missing, f"lost records the fsync policy keeps: {sorted(missing)[:10]}"
        newest = max(got, default=0)
        assert buf.append("t", b"x") > newest, "ids must keep increasing"
    finally:
        buf.close(sync=False)


@contextlib.contextmanager
def scratch_folder(fallback: Path) -> Iterator[Path]:
    """Where the crash images go: memory (/dev/shm) when there is one, the disk is only slower."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(prefix="edgegw-powercut-", dir=shm) as d:
            yield Path(d) / "buf"
    else:
        yield fallback / "crash"


def replay_all(run: Run, scratch: Path, seed: int) -> dict[str, int]:
    """Check every crash image of the run; returns how many of each variant were opened."""
    counts: dict[str, int] = {}
    rng = random.Random(seed)
    for variant, k, files, must in crash_images(run.ops, rng):
        try:
            check_image(scratch, files, run.appended, must)
        except AssertionError as exc:
            raise AssertionError(f"{variant} crash after operation {k} of {len(run.ops)}: {exc}") from exc
        counts[variant] = counts.get(variant, 0) + 1
    return counts


# ---------------------------------------------------------------------------- the tests


def test_every_power_cut_prefix_opens_intact_and_keeps_what_was_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = 1
    run = record_workload(tmp_path / "buf", monkeypatch, steps=400, seed=seed)
    monkeypatch.undo()
    file_ops = sum(1 for op in run.ops if op[0] != "mark")
    with scratch_folder(tmp_path) as scratch:
        counts = replay_all(run, scratch, seed)
    assert file_ops > 400 and len(run.appended) > 80
    assert counts["all"] > 400 and counts["torn"] > 150 and counts["synced"] == counts["all"]


def test_recorded_log_models_fsync_and_renames() -> None:
    """The replay model itself: unsynced writes and unsynced names are what a power cut may lose."""
    ops: list[Op] = [
        ("create", "a", 1),
        ("write", 1, 0, b"hello"),
        ("fsync", 1),
        ("fsync", DIR),
        ("write", 1, 5, b" world"),
        ("create", "t", 2),
        ("write", 2, 0, b"new"),
        ("fsync", 2),
        ("rename", "t", "s"),
    ]
    durable = _durable(ops)
    assert _image(ops, durable, {}) == {"a": b"hello"}
    assert _image(ops, None, {}) == {"a": b"hello world", "s": b"new"}
    assert _image(ops, None, {4: b" wo"}) == {"a": b"hello wo", "s": b"new"}


def test_a_full_disk_in_the_recording_layer_is_counted_as_disk_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "buf"
    rec = RecordingOS(folder, space=6000)
    monkeypatch.setattr(gateway.buffer, "os", rec)
    buf = DiskBuffer(folder, max_bytes=1 << 20, compression="zstd")
    buf.open()
    ids = [buf.append("t", os.urandom(500)) for _ in range(20)]
    stats = buf.stats
    assert stats.dropped_no_space == stats.dropped_records > 0 and stats.dropped_full == 0
    assert stats.records == 20 - stats.dropped_records
    rec.space = None  # space freed: appends go on
    assert buf.append("t", b"after") == ids[-1] + 1
    buf.close()
    monkeypatch.undo()
    buf = DiskBuffer(folder, max_bytes=1 << 20)
    buf.open()
    assert buf.stats.records == 21 - stats.dropped_records and buf.stats.corrupt_records == 0
    buf.close()
