"""Disk store-and-forward buffer: what the broker has not acknowledged survives outages and restarts.

Synchronous and cheap per call (one ``pwrite`` per append, no fsync, no per-record open/close); the
publisher calls it from the event loop and decides when to make things durable with :meth:`sync`.

Use::

    buf = DiskBuffer(Path("/var/lib/edgegw/buffer"), max_bytes=8 * 2**30, log=log, compression="zstd")
    buf.open()                          # recovery; raises OSError only for an unusable folder
    rid = buf.append(topic, payload)    # id strictly increasing, also across restarts
    for rec in buf.take(100): ...       # oldest first; publish with QoS 1
    buf.ack([rid, ...])                 # PUBACK received
    buf.release([rid, ...])             # connection lost: taken again first, in order
    buf.sync()                          # group commit, e.g. once a second
    job = buf.sync_begin(); job.run(); buf.sync_end(job)   # the same, run() on a worker thread
    buf.close()

On-disk format (one folder, all integers little-endian):

* ``seg-NNNNNNNNNNNNNNNNNNNN.log``: an append-only segment; NNN (20 digits) is the id of its first
  record, so the names sort in id order. A new segment starts when the current one would exceed
  ``segment_bytes`` (capped at ``max_bytes // 8``, at least 4 KiB, so the size cap drops small
  slices), and after every :meth:`open` (recovered segments are never written to again).
  A record is::

      0  magic    4  b"\\xffEGR" (0xff never occurs in UTF-8, so JSON payloads cannot fake it)
      4  version  1  1
      5  flags    1  bits 0-1 QoS, bit 2 retain, bit 3 the payload is a zstd frame, others 0
      6  tlen     2  topic length (UTF-8 bytes)
      8  plen     4  payload length
      12 id       8  record id
      20 ts       8  float64, time.time() when appended
      28 hcrc     4  CRC-32 of bytes 0..27
      32 topic    tlen
         payload  plen
         bcrc     4  CRC-32 of topic + payload, seeded with hcrc (binds the body to its header)

  36 bytes of overhead per record; ids strictly increase through the segments.

  Compression (``compression="zstd"``): each record's payload is one zstd frame (level 1, with
  its content size), so a record stays the unit of writing, recovery and loss: a torn or damaged
  frame costs that record only. Batching records into larger frames was measured and gains ~5 %
  on 8 KB data messages (zstd finds the repetition within one message), and a trained dictionary
  gains nothing on them (docs/performance.md), so neither is done. Payloads under 128 bytes, and
  any that do not shrink, are stored as they are (bit 3 clear), so segments mix both kinds and a
  buffer written without compression (or by an earlier version: version 1, no bit 3) opens and
  drains unchanged. An earlier version reading a compressed buffer counts those records as
  corrupt and skips them: downgrading loses the buffered backlog.
* ``acks.state``: the acknowledgement state, replaced atomically (write ``acks.state.tmp``, fsync,
  rename, fsync the folder): magic ``b"EGWACKS1"``, next_id u64, low-water mark u64 (every id
  <= it is done), n u32, n x (first u64, last u64) ranges of ids acknowledged above the low-water
  mark, CRC-32 of all that. Rewritten by sync() only when acknowledgements changed. It stays
  small: the publisher acknowledges nearly in order, so the ranges are few (capped at 65536;
  acks beyond the cap are forgotten, i.e. resent).
* ``lock``: ``flock``-ed while open, so two daemons cannot share a folder.

What is written and fsynced when:

* :meth:`append` writes the record to its segment with one ``pwrite`` (no fsync). It returns once
  the record is in the kernel's page cache, so a killed process (``kill -9``, a crash, the OOM
  killer) loses nothing that :meth:`append` returned for.
* :meth:`ack` and :meth:`release` only change memory, except that a segment whose records are all
  acknowledged is deleted (unlink, no rewrite); when that segment holds the newest id on disk,
  ``acks.state`` is written first (so ids keep increasing after a crash).
* :meth:`take` only reads (one ``pread`` per run of adjacent records).
* :meth:`sync` fsyncs every segment written since the last sync, fsyncs the folder when files
  were created or deleted, and rewrites ``acks.state`` when acknowledgements changed. It comes in
  three parts so that the blocking part runs off the event loop: :meth:`sync_begin` (on the
  appending thread: dup()s the fds to fsync, builds the ack state), :meth:`SyncJob.run` (any
  thread: the fsyncs and the state file), :meth:`sync_end` (appending thread: counts errors). What
  was appended before sync_begin() is durable when run() returns (``SyncJob.durable_below``);
  ``take(n, below=...)`` hands out only such records (zero-loss mode publishes nothing unsynced).
  acks.state is written under a lock and never replaced by an older state.
* :meth:`close` does a final sync, writes ``acks.state`` (with the next id) and deletes the last
  segment when everything in it was acknowledged: a clean stop leaves only the two small files.

Flash wear: nothing here writes unless append/ack/sync/close is called (open() writes only to
repair damage and to remove what was already acknowledged). The publisher appends only when the
broker is away or slow, or when the operator chose the zero-loss mode, so a healthy gateway does
not write to its flash at all.

Guarantees:

* Kill -9 / crash: every record whose append() returned (and was not counted as dropped) is
  recovered, except those acknowledged before the crash whose segment was already deleted. Acknowledgements written by the last
  sync() are honoured; later ones are lost, so those records are delivered again: at-least-once.
  The messages carry a per-device ``seq``; consumers drop the duplicates.
* Power loss / kernel crash: only what the last sync() made durable. Records appended after it
  may be missing or torn (a torn tail is cut at recovery); acknowledgements after it are lost
  (resent, as above).
* Ids strictly increase across restarts: ``acks.state`` carries the next id, written at close(),
  with every ack state, and before the segment holding the newest id is deleted; recovery takes
  the larger of it and the newest id found on disk. A lost or damaged ``acks.state`` makes every
  intact record on disk "not acknowledged" (resent): damage costs duplicates, never data.
* Order: take() returns records in id order (= append order, so per-device order); released
  records come back first, still in id order.
* Size cap: the segments never grow past ``max_bytes``: when an append would exceed it, the oldest
  segments are deleted first (``when_full="drop_oldest"``), their unacknowledged records counted
  as dropped; with ``when_full="drop_newest"`` the new record is dropped instead and the oldest
  stay. A disk error on append drops that one record; the buffer never raises for a disk problem
  after open(). Drops are counted by reason (``DROP_FULL``: the cap; ``DROP_NO_SPACE``: ENOSPC,
  EDQUOT or EFBIG; ``DROP_ERROR``: other errors) and logged per burst: one warning when a burst
  of one reason starts, one a minute while it lasts, and ``buffer drops ended`` with the burst's
  count and the running total once no drop of that reason came for 10 s (checked at sync and
  append) or at close.

Recovery (open()): every segment is scanned and every record verified (magic, version, header
CRC, lengths, body CRC, id greater than the previous one). A damaged stretch in the middle is
skipped by searching for the next magic that starts a valid record; each damaged stretch (or each
record with a valid header and a bad body) counts as one corrupt record. Bytes after the last
valid record of a file (a torn write) are truncated; a file without a valid record (empty,
garbage) is removed, as is a segment whose records are all acknowledged. A damaged ``acks.state``
is ignored (everything resent). A segment file that cannot be opened or mapped is left in place
(counted); files with other names are left alone. Records are also verified
again when taken; one that no longer reads back (bit rot, I/O error) is counted and skipped.

Memory: an index of 13 bytes per record (id delta, offset, length as uint32 arrays plus a state
byte) per segment; payloads are read from the segment files only when taken.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import heapq
import math
import mmap
import os
import re
import struct
import threading
import time
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import structlog
import zstandard

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

__all__ = ["BufferStats", "DiskBuffer", "Record", "RecoveryReport", "SyncJob"]

_MAGIC = b"\xffEGR"
_VERSION = 1
_HEAD = struct.Struct("<4sBBHIQd")  # the header without its CRC
_HEAD_FULL = struct.Struct("<4sBBHIQdI")
_U32 = struct.Struct("<I")
HEADER_SIZE = _HEAD_FULL.size
RECORD_OVERHEAD = HEADER_SIZE + 4
_FLAG_RETAIN = 0x04
_FLAG_ZSTD = 0x08  # the payload is one zstd frame (with its content size)
_FLAGS_KNOWN = 0x0F
_ZSTD_LEVEL = 1  # docs/performance.md: level 3 costs a third more CPU and saves nothing here
_ZSTD_MIN = 128  # shorter payloads are stored as they are: a frame would not pay for its header
_MAX_PAYLOAD = 256 * 2**20  # a frame claiming more than this is corrupt, not decompressed
_MAX_ID = 2**63 - 1
_U32_LIMIT = 2**32

_STATE_FILE = "acks.state"
_STATE_TMP = "acks.state.tmp"
_LOCK_FILE = "lock"
_STATE_MAGIC = b"EGWACKS1"
_STATE_HEAD = struct.Struct("<8sQQI")
_RANGE = struct.Struct("<QQ")
_MAX_STATE_RANGES = 65536
_SEG_RE = re.compile(r"seg-(\d{1,20})\.log")

# Per-record state byte in a segment's index.
_PENDING = 0  # not acknowledged, can be taken
_TAKEN = 1  # handed out by take(), waiting for ack() or release()
_ACKED = 2
_DEAD = 3  # unreadable or corrupt when taken: given up (counted)
_LIVE_RE = re.compile(rb"[\x00\x01]")
_DONE_RUN_RE = re.compile(rb"[\x02\x03]+")

_MIN_SEGMENT = 4096
_MAX_SEGMENT = 2**31
_MAX_READ = 4 * 2**20  # one pread per run of adjacent records, at most this big
_MAX_READ_FDS = 8
_LOG_INTERVAL = 60.0
_PROGRESS_INTERVAL = 5.0
_BURST_QUIET = 10.0  # a drop burst ends after this long without a drop of its kind

# Why records were dropped (BufferStats, metrics, the burst log lines).
DROP_FULL = "buffer_full"  # the configured cap (max_size)
DROP_NO_SPACE = "disk_full"  # the file system is full (ENOSPC, EDQUOT, EFBIG)
DROP_ERROR = "buffer_error"  # any other disk error, or a record larger than the cap
_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

if array("I").itemsize != 4:  # pragma: no cover - every platform we run on has a 4-byte C int
    raise ImportError("gateway.buffer needs a 4-byte array('I')")


@dataclass(slots=True)
class Record:
    """One buffered message."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    ts: float


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What open() found and repaired."""

    segments: int  # segment files kept
    records: int  # unacknowledged records recovered (to be sent)
    acked_records: int  # intact records already acknowledged (skipped)
    corrupt_records: int  # damaged records skipped
    corrupt_bytes: int  # bytes of damaged stretches between valid records
    truncated_files: int  # files cut after their last valid record
    truncated_bytes: int  # bytes cut, including files removed for holding no valid record
    removed_files: int  # files removed: empty, garbage, or fully acknowledged
    unreadable_files: int  # segment files that could not be opened (left in place)
    ack_state: Literal["ok", "missing", "damaged"]
    next_id: int


@dataclass(frozen=True, slots=True)
class BufferStats:
    """Counters for metrics; the dropped/corrupt/appended/acked counters count since open()."""

    records: int  # unacknowledged records in the buffer (including those in flight)
    bytes: int  # bytes of the segment files on disk
    oldest_ts: float | None  # append time of the oldest unacknowledged record
    dropped_records: int  # lost: size cap, disk errors on append/read, larger than max_bytes
    dropped_bytes: int  # record bytes (header included) of the dropped records
    dropped_full: int  # of dropped_records: at the size cap (oldest or newest, by when_full)
    dropped_no_space: int  # of dropped_records: the file system was full (ENOSPC, EDQUOT, EFBIG)
    corrupt_records: int  # found damaged at open() or take()
    appended: int  # records written
    acked: int  # records acknowledged
    in_flight: int  # taken, neither acknowledged nor released
    segments: int  # segment files
    io_errors: int  # failed writes, reads, fsyncs, truncations, unlinks
    payload_bytes: int  # payload bytes appended, before compression
    stored_bytes: int  # the same payloads as stored (compressed or not), without record overhead


@dataclass(slots=True)
class _Burst:
    """A run of drops of one kind: logged when it starts, every minute, and when it ends."""

    started: float
    last: float
    records: int = 0
    logged: float = 0.0


class SyncJob:
    """The blocking part of one sync(): runs on any thread, touches no buffer state but its own copies.

    The event loop makes it with :meth:`DiskBuffer.sync_begin`, a worker thread calls :meth:`run`
    (fsyncs and the ack state file), the loop finishes with :meth:`DiskBuffer.sync_end`. Everything
    appended before sync_begin() is durable once run() returned.
    """

    __slots__ = (
        "dir_fd",
        "durable_below",
        "errors",
        "fds",
        "names",
        "next_id",
        "state",
        "state_gen",
        "state_lock",
        "state_path",
    )

    def __init__(self) -> None:
        self.fds: list[int] = []  # dup()s of the segments' fds: the loop may close the originals meanwhile
        self.names: list[str] = []
        self.dir_fd: int | None = None
        self.state: bytes | None = None
        self.state_gen = 0
        self.state_lock: _StateWriter | None = None
        self.state_path: Path | None = None
        self.next_id = 0
        self.durable_below = 0  # every id below this was appended before sync_begin()
        self.errors: list[tuple[str, str, OSError, str | None]] = []

    def run(self) -> None:
        """fsync the segments, write the ack state, fsync the folder; never raises for disk errors."""
        try:
            for fd, name in zip(self.fds, self.names, strict=True):
                try:
                    os.fsync(fd)
                except OSError as exc:
                    self.errors.append(("fsync", "buffer fsync failed", exc, name))
            if self.state is not None and self.state_lock is not None and self.state_path is not None:
                try:
                    self.state_lock.write(self.state_path, self.state, self.state_gen)
                except OSError as exc:
                    self.errors.append(("state-write", "buffer ack state cannot be written", exc, None))
            if self.dir_fd is not None:
                try:
                    os.fsync(self.dir_fd)
                except OSError as exc:
                    self.errors.append(("fsync", "buffer folder fsync failed", exc, None))
        finally:
            for fd in self.fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.fds = []
            if self.dir_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self.dir_fd)
                self.dir_fd = None


class _StateWriter:
    """Writes acks.state from either thread; a state older than the one on disk is not written."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.written_gen = 0

    def write(self, folder: Path, data: bytes, gen: int) -> bool:
        """Replace acks.state atomically (tmp, fsync, rename, fsync folder); False when skipped as stale."""
        with self.lock:
            if gen <= self.written_gen:
                return False
            tmp = folder / _STATE_TMP
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, folder / _STATE_FILE)
                dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            self.written_gen = gen
            return True


class _Segment:
    """One segment file and the compact index of its records."""

    __slots__ = ("base", "deltas", "fd", "flags", "head", "lens", "live", "offs", "path", "sealed", "size", "unsynced")

    def __init__(self, path: Path, base: int, *, sealed: bool) -> None:
        self.path = path
        self.base = base  # ids are stored as uint32 deltas from it
        # Once sealed, a segment whose ids are contiguous and records adjacent (the usual case)
        # replaces deltas by a range and lens by offsets: 5 bytes per record instead of 13 (compact()).
        self.deltas: array[int] | range = array("I")
        self.offs: array[int] = array("I")
        self.lens: array[int] | _Lens = array("I")
        self.flags = bytearray()
        self.size = 0
        self.live = 0  # records PENDING or TAKEN
        self.head = 0  # every record before this index is done (ACKED or DEAD)
        self.fd: int | None = None
        self.sealed = sealed  # no more appends
        self.unsynced = False  # written since the last fsync

    @property
    def last_id(self) -> int:
        return self.base + self.deltas[-1] if self.deltas else self.base - 1

    def compact(self) -> None:
        """Drop the index columns that can be computed (no more appends come)."""
        deltas, lens, offs = self.deltas, self.lens, self.offs
        if not isinstance(deltas, array) or not isinstance(lens, array) or not deltas:
            return
        end = offs[-1] + lens[-1]
        if deltas[-1] == len(deltas) - 1 and sum(lens) == end - offs[0]:
            self.deltas = range(len(deltas))
            self.lens = _Lens(offs, end)

    def first_live(self) -> int:
        """Index of the first record not done, len(flags) if none; amortised O(1)."""
        m = _LIVE_RE.search(self.flags, self.head)
        self.head = m.start() if m is not None else len(self.flags)
        return self.head


class _Lens:
    """Record lengths of a compacted segment, from the offsets: each record ends where the next starts."""

    __slots__ = ("end", "offs")

    def __init__(self, offs: array[int], end: int) -> None:
        self.offs = offs
        self.end = end  # end of the last record

    def __len__(self) -> int:
        return len(self.offs)

    def __getitem__(self, j: int) -> int:
        offs = self.offs
        n = len(offs)
        if j < 0:
            j += n
        return (offs[j + 1] if j + 1 < n else self.end) - offs[j]


def _seg_base(seg: _Segment) -> int:
    return seg.base


def _seg_name(first_id: int) -> str:
    return f"seg-{first_id:020d}.log"


class DiskBuffer:
    """A size-capped, crash-safe FIFO of MQTT messages on disk (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        segment_bytes: int = 4 * 2**20,
        log: FilteringBoundLogger | None = None,
        *,
        compression: Literal["zstd", "none"] = "none",
        when_full: Literal["drop_oldest", "drop_newest"] = "drop_oldest",
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        if compression not in ("zstd", "none"):
            raise ValueError(f"compression must be zstd or none, not {compression!r}")
        if when_full not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"when_full must be drop_oldest or drop_newest, not {when_full!r}")
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        if segment_bytes <= 0:
            raise ValueError(f"segment_bytes must be positive, not {segment_bytes}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.segment_bytes = min(segment_bytes, max(max_bytes // 8, _MIN_SEGMENT), _MAX_SEGMENT)
        self._log: Any = log if log is not None else structlog.get_logger("gateway.buffer")
        # One compressor per buffer, used on the appending thread only (it is not thread-safe).
        self._zc = zstandard.ZstdCompressor(level=_ZSTD_LEVEL) if compression == "zstd" else None
        self.when_full = when_full
        # Called during open() with (segment files read, total) every few seconds: a day's backlog
        # (8 GB) takes a minute or more to verify, and systemd must be told the start goes on.
        self._progress = progress
        self._state_writer = _StateWriter()
        self._state_gen = 0
        self._dropped_by: dict[str, int] = {DROP_FULL: 0, DROP_NO_SPACE: 0, DROP_ERROR: 0}
        self._bursts: dict[str, _Burst] = {}
        self._payload_bytes = 0
        self._stored_bytes = 0
        self._create_error_kind = DROP_ERROR
        self._opened = False
        self._closed = False
        self._segs: list[_Segment] = []
        self._active: _Segment | None = None
        self._unsynced: list[_Segment] = []
        self._read_fds: OrderedDict[_Segment, None] = OrderedDict()
        self._last_seg: _Segment | None = None  # locate() cache: acks come in runs
        self._next_id = 1
        self._persisted_next_id = 0
        self._cursor = 0  # take() has looked at every id below this
        self._released: list[int] = []  # heap
        self._live = 0
        self._in_flight = 0
        self._bytes = 0
        self._dropped_records = 0
        self._dropped_bytes = 0
        self._corrupt_records = 0
        self._appended = 0
        self._acked = 0
        self._io_errors = 0
        self._state_dirty = False
        self._dir_dirty = False
        self._dir_fd: int | None = None
        self._lock_fd: int | None = None
        self._oldest_cache: tuple[int, float] | None = None
        self._limits: dict[str, tuple[float, int]] = {}

    # ------------------------------------------------------------------ open / recovery

    def open(self) -> RecoveryReport:
        """Create the folder if needed, take its lock, recover the segments and the ack state."""
        if self._opened:
            raise RuntimeError("DiskBuffer.open() called twice")
        dir_fd = lock_fd = None
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            dir_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            lock_fd = os.open(self.path / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            if not os.access(self.path, os.W_OK | os.X_OK):
                raise PermissionError(13, "Permission denied")
        except OSError as exc:
            for fd in (dir_fd, lock_fd):
                if fd is not None:
                    os.close(fd)
            raise OSError(exc.errno, f"buffer folder {self.path} is unusable: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(dir_fd)
            os.close(lock_fd)
            raise OSError(exc.errno, f"buffer folder {self.path} is in use by another process") from exc
        self._dir_fd = dir_fd
        self._lock_fd = lock_fd
        self._opened = True
        try:
            report = self._recover()
        except OSError:
            self.close(sync=False)
            raise
        fields = {
            "records": report.records,
            "segments": report.segments,
            "bytes": self._bytes,
            "next_id": report.next_id,
            "ack_state": report.ack_state,
        }
        self._check_space()
        damaged = (
            report.corrupt_records
            or report.truncated_files
            or report.truncated_bytes
            or report.unreadable_files
            or report.ack_state == "damaged"
        )
        if damaged:
            self._log.warning(
                "buffer damage repaired at start",
                corrupt_records=report.corrupt_records,
                corrupt_bytes=report.corrupt_bytes,
                truncated_files=report.truncated_files,
                truncated_bytes=report.truncated_bytes,
                removed_files=report.removed_files,
                unreadable_files=report.unreadable_files,
                **fields,
            )
        else:
            self._log.info("buffer opened", **fields)
        return report

    def _check_space(self) -> None:
        """Warn at start when the file system cannot hold max_bytes: the cap would not be what drops."""
        try:
            st = os.statvfs(self.path)
        except OSError:
            return
        room = st.f_bavail * st.f_frsize + self._bytes
        if room < self.max_bytes:
            self._log.warning(
                "buffer folder's file system has less room than buffer.max_size: a long outage will fill the disk",
                room=room,
                max_bytes=self.max_bytes,
            )

    def _load_state(self) -> tuple[Literal["ok", "missing", "damaged"], int, int, list[tuple[int, int]]]:
        """(status, next_id, low-water mark, ranges); anything doubtful counts as damaged."""
        damaged: tuple[Literal["damaged"], int, int, list[tuple[int, int]]] = ("damaged", 1, 0, [])
        try:
            data = (self.path / _STATE_FILE).read_bytes()
        except FileNotFoundError:
            return "missing", 1, 0, []
        except OSError as exc:
            self._io_error("state-read", "buffer ack state unreadable, everything on disk will be resent", exc)
            return damaged
        head = _STATE_HEAD.size
        if len(data) < head + 4 or zlib.crc32(data[:-4]) != _U32.unpack_from(data, len(data) - 4)[0]:
            return damaged
        magic, next_id, lwm, n = _STATE_HEAD.unpack_from(data, 0)
        if magic != _STATE_MAGIC or len(data) != head + n * _RANGE.size + 4:
            return damaged
        if not 1 <= next_id <= _MAX_ID or lwm >= next_id:
            return damaged
        ranges: list[tuple[int, int]] = []
        prev = lwm
        for i in range(n):
            first, last = _RANGE.unpack_from(data, head + i * _RANGE.size)
            if not prev < first <= last < next_id:
                return damaged
            ranges.append((first, last))
            prev = last
        return "ok", next_id, lwm, ranges

    def _segment_names(self) -> list[tuple[int, str]]:
        """The segment files in order (a stale temporary state file is removed on the way)."""
        names: list[tuple[int, str]] = []
        try:
            entries = list(os.scandir(self.path))
        except OSError as exc:
            raise OSError(exc.errno, f"buffer folder {self.path} is unusable: {exc.strerror or exc}") from exc
        for entry in entries:
            m = _SEG_RE.fullmatch(entry.name)
            if m is not None:
                names.append((int(m.group(1)), entry.name))
            elif entry.name == _STATE_TMP:
                self._unlink(self.path / entry.name)
        names.sort()
        return names

    def _read_segment(self, name: str, last_id: int, counts: dict[str, int]) -> tuple[_Segment, int, int, int] | None:
        """(segment, file size, end of its last good record, last id) or None when unreadable."""
        path = self.path / name
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            self._io_error("seg-open", "buffer segment unreadable, left in place", exc, file=name)
            return None
        try:
            size = os.fstat(fd).st_size
            seg = _Segment(path, 0, sealed=True)
            good_end = 0
            if size > 0:
                with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mm, memoryview(mm) as mv:
                    good_end, last_id = self._scan(mm, mv, size, seg, last_id, counts)
        except (OSError, ValueError) as exc:
            self._io_error("seg-read", "buffer segment unreadable, left in place", exc, file=name)
            return None
        finally:
            os.close(fd)
        return seg, size, good_end, last_id

    @staticmethod
    def _mark_acked(seg: _Segment, lwm: int, ranges: list[tuple[int, int]], ri: int) -> tuple[int, int]:
        """Flag the segment's acknowledged records; (how many, the ack range index reached)."""
        acked = 0
        for i in range(len(seg.deltas)):
            rid = seg.base + seg.deltas[i]
            while ri < len(ranges) and ranges[ri][1] < rid:
                ri += 1
            if rid <= lwm or (ri < len(ranges) and ranges[ri][0] <= rid):
                seg.flags[i] = _ACKED
                acked += 1
            else:
                seg.live += 1
        return acked, ri

    def _recover(self) -> RecoveryReport:
        status, state_next, lwm, ranges = self._load_state()
        counts = {"corrupt": 0, "corrupt_bytes": 0, "truncated_files": 0, "truncated_bytes": 0}
        removed = unreadable = acked_records = 0
        last_id = 0
        ri = 0
        kept: list[_Segment] = []
        empty: list[Path] = []
        names = self._segment_names()
        told = time.monotonic()
        for done, (_number, name) in enumerate(names):
            if self._progress is not None and time.monotonic() - told >= _PROGRESS_INTERVAL:
                told = time.monotonic()
                self._progress(done, len(names))
            read = self._read_segment(name, last_id, counts)
            if read is None:
                unreadable += 1
                continue
            seg, size, good_end, last_id = read
            path = seg.path
            acked, ri = self._mark_acked(seg, lwm, ranges, ri)
            acked_records += acked
            if not seg.deltas:
                counts["truncated_bytes"] += size
                empty.append(path)
                continue
            if good_end < size and seg.live:
                counts["truncated_files"] += 1
                counts["truncated_bytes"] += size - good_end
                if self._truncate(path, good_end):
                    size = good_end
            seg.size = size
            seg.compact()
            kept.append(seg)

        self._segs = kept
        self._next_id = max(state_next, last_id + 1)
        # What a restart would read back as the next id (1 for a missing or damaged file).
        self._persisted_next_id = state_next
        # A damaged file is replaced at the next sync; a missing one waits for the first ack.
        self._state_dirty = status == "damaged"
        self._live = sum(seg.live for seg in kept)
        self._bytes = sum(seg.size for seg in kept)
        for path in empty:
            if self._unlink(path):
                removed += 1
        for seg in [seg for seg in kept if seg.live == 0]:
            self._delete_segment(seg)
            removed += 1
        self._corrupt_records += counts["corrupt"]
        return RecoveryReport(
            segments=len(self._segs),
            records=self._live,
            acked_records=acked_records,
            corrupt_records=counts["corrupt"],
            corrupt_bytes=counts["corrupt_bytes"],
            truncated_files=counts["truncated_files"],
            truncated_bytes=counts["truncated_bytes"],
            removed_files=removed,
            unreadable_files=unreadable,
            ack_state=status,
            next_id=self._next_id,
        )

    @staticmethod
    def _scan(
        mm: mmap.mmap, mv: memoryview, size: int, seg: _Segment, last_id: int, counts: dict[str, int]
    ) -> tuple[int, int]:
        """Index the valid records of one file into seg; returns (end of the last valid record, last id)."""
        pos = 0
        good_end = 0
        region: int | None = None  # start of the damaged stretch being skipped
        region_counted = False
        limit = min(size, _U32_LIMIT - 1)  # offsets are uint32
        while pos + HEADER_SIZE <= limit:
            magic, version, flags, tlen, plen, rid, _ts, hcrc = _HEAD_FULL.unpack_from(mm, pos)
            if (
                magic == _MAGIC
                and version == _VERSION
                and flags & ~_FLAGS_KNOWN == 0
                and flags & 0x03 != 0x03
                and zlib.crc32(mv[pos : pos + _HEAD.size]) == hcrc
            ):
                end = pos + RECORD_OVERHEAD + tlen + plen
                if end <= size:
                    if zlib.crc32(mv[pos + HEADER_SIZE : end - 4], hcrc) == _U32.unpack_from(mm, end - 4)[0]:
                        base = seg.base if seg.deltas else rid
                        if last_id < rid <= _MAX_ID and rid - base < _U32_LIMIT and end - pos < _U32_LIMIT:
                            if region is not None:
                                counts["corrupt_bytes"] += pos - region
                                if not region_counted:
                                    counts["corrupt"] += 1
                                region = None
                            seg.base = base
                            assert isinstance(seg.deltas, array) and isinstance(seg.lens, array)
                            seg.deltas.append(rid - base)
                            seg.offs.append(pos)
                            seg.lens.append(end - pos)
                            seg.flags.append(_PENDING)
                            last_id = rid
                            pos = good_end = end
                            continue
                    # A valid header with a bad body (or an out-of-order id): one corrupt record.
                    if region is None:
                        region = pos
                        region_counted = False
                    counts["corrupt"] += 1
                    region_counted = True
            if region is None:
                region = pos
                region_counted = False
            nxt = mm.find(_MAGIC, pos + 1)
            if nxt < 0:
                break
            pos = nxt
        # A stretch with no valid record after it is a torn tail: truncated by the caller, not
        # counted as corrupt (unless it held a complete record with a bad body, counted above).
        return good_end, last_id

    # ------------------------------------------------------------------ append

    def append(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Buffer one message (one pwrite, no fsync) and return its id; never raises for disk errors."""
        self._check_open()
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, not {qos}")
        topic_b = topic.encode("utf-8")
        if len(topic_b) > 0xFFFF:
            raise ValueError("topic longer than 65535 bytes")
        rid = self._next_id
        self._next_id += 1
        raw_len = len(payload)
        payload, zflag = self._compress(payload)
        flags = qos | (_FLAG_RETAIN if retain else 0) | zflag
        plen = len(payload)
        length = RECORD_OVERHEAD + len(topic_b) + plen
        if self._bursts:
            self._end_quiet_bursts()
        if length > self.max_bytes or length >= _U32_LIMIT:
            self._drop_new(length, DROP_ERROR, "record larger than the buffer", size=length, max_bytes=self.max_bytes)
            return rid
        if self._bytes + length > self.max_bytes:
            if self.when_full == "drop_newest":
                self._drop_new(length, DROP_FULL, "buffer full: dropping new records (when_full: drop_newest)")
                return rid
            self._make_room(length)
        seg = self._active
        if (
            seg is None
            or (seg.size and seg.size + length > self.segment_bytes)
            or rid - seg.base >= _U32_LIMIT
            or seg.size + length >= _U32_LIMIT
        ):
            seg = self._new_segment(rid)
            if seg is None:
                self._drop_new(
                    length, self._create_error_kind, "buffer segment cannot be created: dropping new records"
                )
                return rid
        ts = time.time()
        head = _HEAD.pack(_MAGIC, _VERSION, flags, len(topic_b), plen, rid, ts)
        hcrc = zlib.crc32(head)
        bcrc = zlib.crc32(payload, zlib.crc32(topic_b, hcrc))
        data = b"".join((head, _U32.pack(hcrc), topic_b, payload, _U32.pack(bcrc)))
        fd = seg.fd
        assert fd is not None
        try:
            written = os.pwrite(fd, data, seg.size)
            while written < length:
                n = os.pwrite(fd, data[written:], seg.size + written)
                if n <= 0:
                    raise OSError(5, "short write")
                written += n
        except OSError as exc:
            self._write_failed(seg, exc)
            if exc.errno in _NO_SPACE_ERRNOS:
                self._drop_new(length, DROP_NO_SPACE, "disk full: dropping new records", error=str(exc))
            else:
                self._drop_new(length, DROP_ERROR, "buffer write failed: dropping new records", error=str(exc))
            return rid
        deltas, lens = seg.deltas, seg.lens
        assert isinstance(deltas, array) and isinstance(lens, array)  # the active segment is never compacted
        deltas.append(rid - seg.base)
        seg.offs.append(seg.size)
        lens.append(length)
        seg.flags.append(_PENDING)
        seg.size += length
        seg.live += 1
        self._live += 1
        self._bytes += length
        self._appended += 1
        self._payload_bytes += raw_len
        self._stored_bytes += plen
        if not seg.unsynced:
            seg.unsynced = True
            self._unsynced.append(seg)
        return rid

    def _compress(self, payload: bytes) -> tuple[bytes, int]:
        """(what to store, _FLAG_ZSTD or 0): a frame only when compression is on and it is smaller."""
        if self._zc is not None and len(payload) >= _ZSTD_MIN:
            packed = self._zc.compress(payload)
            if len(packed) < len(payload):
                return packed, _FLAG_ZSTD
        return payload, 0

    def _new_segment(self, first_id: int) -> _Segment | None:
        if self._active is not None:
            self._seal(self._active)
        path = self.path / _seg_name(first_id)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            self._create_error_kind = DROP_NO_SPACE if exc.errno in _NO_SPACE_ERRNOS else DROP_ERROR
            self._io_error("seg-create", "buffer segment cannot be created", exc, file=path.name)
            return None
        seg = _Segment(path, first_id, sealed=False)
        seg.fd = fd
        self._segs.append(seg)
        self._active = seg
        self._dir_dirty = True
        return seg

    def _write_failed(self, seg: _Segment, exc: OSError) -> None:
        """Cut what a failed write may have left; a segment that cannot be cut takes no more writes."""
        self._io_errors += 1
        assert seg.fd is not None
        try:
            os.ftruncate(seg.fd, seg.size)
        except OSError:
            self._seal(seg)

    def _drop_new(self, length: int, kind: str, event: str, **fields: Any) -> None:
        self._dropped_records += 1
        self._dropped_bytes += length
        self._dropped(kind, 1, event, **fields)

    def _dropped(self, kind: str, records: int, event: str, **fields: Any) -> None:
        """Count drops by kind; log when a burst of them starts and then once a minute at most."""
        self._dropped_by[kind] += records
        now = time.monotonic()
        burst = self._bursts.get(kind)
        if burst is None:
            burst = self._bursts[kind] = _Burst(started=now, last=now, logged=now)
            burst.records = records
            self._log.warning(event, reason=kind, dropped_total=self._dropped_by[kind], **fields)
            return
        burst.last = now
        burst.records += records
        if now - burst.logged >= _LOG_INTERVAL:
            burst.logged = now
            self._log.warning(
                "buffer still dropping records",
                reason=kind,
                dropped_in_burst=burst.records,
                dropped_total=self._dropped_by[kind],
                **fields,
            )

    def _end_quiet_bursts(self, force: bool = False) -> None:
        """A burst with no drop for _BURST_QUIET seconds (or any, at close) ends with its running total."""
        now = time.monotonic()
        for kind, burst in list(self._bursts.items()):
            if force or now - burst.last >= _BURST_QUIET:
                del self._bursts[kind]
                self._log.warning(
                    "buffer drops ended",
                    reason=kind,
                    dropped_in_burst=burst.records,
                    dropped_total=self._dropped_by[kind],
                    seconds=round(burst.last - burst.started, 1),
                )

    def _make_room(self, length: int) -> None:
        """Delete the oldest segments until `length` more bytes fit under max_bytes."""
        records = nbytes = segments = 0
        while self._segs and self._bytes + length > self.max_bytes:
            seg = self._segs[0]
            if seg is self._active:
                self._seal(seg)
                if seg not in self._segs:  # it held nothing live and went away when sealed
                    continue
            for i in range(seg.first_live(), len(seg.flags)):
                state = seg.flags[i]
                if state <= _TAKEN:
                    records += 1
                    nbytes += seg.lens[i]
                    if state == _TAKEN:
                        self._in_flight -= 1
            self._live -= seg.live
            seg.live = 0
            segments += 1
            self._delete_segment(seg)
        self._dropped_records += records
        self._dropped_bytes += nbytes
        if segments:
            self._dropped(DROP_FULL, records, "buffer full: dropping the oldest records", max_bytes=self.max_bytes)

    # ------------------------------------------------------------------ take / release / ack

    def take(self, limit: int, below: int | None = None) -> list[Record]:
        """Up to `limit` unacknowledged records not already taken, released ones first, in id order.

        ``below``: only records with a smaller id (those a finished sync made durable).
        """
        self._check_open()
        out: list[Record] = []
        while len(out) < limit:
            locs = self._select(limit - len(out), _MAX_ID + 1 if below is None else below)
            if not locs:
                break
            out.extend(self._read(locs))
        return out

    def _select(self, n: int, below: int) -> list[tuple[_Segment, int]]:
        locs: list[tuple[_Segment, int]] = []
        heap = self._released
        while heap and len(locs) < n:
            loc = self._locate(heapq.heappop(heap))
            if loc is not None and loc[0].flags[loc[1]] == _PENDING:
                loc[0].flags[loc[1]] = _TAKEN
                locs.append(loc)
        segs = self._segs
        si = max(bisect_right(segs, self._cursor, key=_seg_base) - 1, 0)
        while len(locs) < n and si < len(segs) and segs[si].base < below:
            seg = segs[si]
            flags = seg.flags
            j = max(seg.head, bisect_left(seg.deltas, self._cursor - seg.base)) if self._cursor > seg.base else seg.head
            while len(locs) < n:
                j = flags.find(_PENDING, j)
                if j < 0:
                    j = len(flags)
                    break
                if seg.base + seg.deltas[j] >= below:
                    break
                flags[j] = _TAKEN
                locs.append((seg, j))
                j += 1
            if j > 0:
                self._cursor = max(self._cursor, seg.base + seg.deltas[j - 1] + 1)
            si += 1
        self._in_flight += len(locs)
        return locs

    def _read(self, locs: list[tuple[_Segment, int]]) -> list[Record]:
        """Read and verify the selected records, one pread per run of adjacent records."""
        out: list[Record] = []
        touched: list[_Segment] = []
        i = 0
        while i < len(locs):
            seg, j = locs[i]
            start = seg.offs[j]
            end = start + seg.lens[j]
            k = i + 1
            while k < len(locs) and locs[k][0] is seg and seg.offs[locs[k][1]] == end and end - start < _MAX_READ:
                end += seg.lens[locs[k][1]]
                k += 1
            try:
                data = os.pread(self._read_fd(seg), end - start, start)
            except OSError as exc:
                self._io_error("read", "buffer read failed, records dropped", exc, file=seg.path.name)
                for s, jj in locs[i:k]:
                    self._dropped_records += 1
                    self._dropped_by[DROP_ERROR] += 1
                    self._dropped_bytes += s.lens[jj]
                    self._kill(s, jj)
                touched.append(seg)
                i = k
                continue
            with memoryview(data) as mv:
                for s, jj in locs[i:k]:
                    rec = _decode(mv, s.offs[jj] - start, s.lens[jj], s.base + s.deltas[jj])
                    if rec is None:
                        self._corrupt_records += 1
                        self._warn_limited(
                            "corrupt",
                            "buffer record corrupt on disk, skipped",
                            id=s.base + s.deltas[jj],
                            file=s.path.name,
                        )
                        self._kill(s, jj)
                        touched.append(s)
                    else:
                        out.append(rec)
            i = k
        for seg in touched:
            if seg.sealed and seg.live == 0 and seg in self._segs:
                self._delete_segment(seg)
        return out

    def _kill(self, seg: _Segment, j: int) -> None:
        seg.flags[j] = _DEAD
        seg.live -= 1
        self._live -= 1
        self._in_flight -= 1

    def release(self, ids: Iterable[int]) -> None:
        """Taken but not acknowledged: they will be taken again first, in id order."""
        self._check_open()
        for rid in ids:
            loc = self._locate(rid)
            if loc is not None and loc[0].flags[loc[1]] == _TAKEN:
                loc[0].flags[loc[1]] = _PENDING
                self._in_flight -= 1
                heapq.heappush(self._released, rid)

    def ack(self, ids: Iterable[int]) -> None:
        """Delivered: forget them; a sealed segment with nothing left unacknowledged is deleted."""
        self._check_open()
        emptied: list[_Segment] = []
        for rid in ids:
            loc = self._locate(rid)
            if loc is None:
                continue
            seg, j = loc
            state = seg.flags[j]
            if state >= _ACKED:
                continue
            if state == _TAKEN:
                self._in_flight -= 1
            seg.flags[j] = _ACKED
            seg.live -= 1
            self._live -= 1
            self._acked += 1
            self._state_dirty = True
            if seg.live == 0 and seg.sealed:
                emptied.append(seg)
        for seg in emptied:
            if seg in self._segs:
                self._delete_segment(seg)

    def _locate(self, rid: int) -> tuple[_Segment, int] | None:
        seg = self._last_seg
        if seg is None or not seg.deltas or not seg.base <= rid <= seg.base + seg.deltas[-1]:
            i = bisect_right(self._segs, rid, key=_seg_base) - 1
            if i < 0:
                return None
            seg = self._segs[i]
            self._last_seg = seg
        d = rid - seg.base
        j = bisect_left(seg.deltas, d)
        if j < len(seg.deltas) and seg.deltas[j] == d:
            return seg, j
        return None

    def _read_fd(self, seg: _Segment) -> int:
        if seg.fd is not None:
            if seg in self._read_fds:
                self._read_fds.move_to_end(seg)
            return seg.fd
        seg.fd = os.open(seg.path, os.O_RDONLY)
        self._read_fds[seg] = None
        while len(self._read_fds) > _MAX_READ_FDS:
            old, _ = self._read_fds.popitem(last=False)
            if old.fd is not None:
                os.close(old.fd)
                old.fd = None
        return seg.fd

    # ------------------------------------------------------------------ segments

    def _seal(self, seg: _Segment) -> None:
        """No more appends to seg; delete it when nothing in it is left unacknowledged."""
        seg.sealed = True
        seg.compact()
        if self._active is seg:
            self._active = None
        if seg.fd is not None and not seg.unsynced:
            self._read_fds[seg] = None
        if seg.live == 0:
            self._delete_segment(seg)

    def _delete_segment(self, seg: _Segment) -> None:
        if seg.deltas and seg.last_id >= self._persisted_next_id:
            idx = self._segs.index(seg)
            if not any(s.deltas for s in self._segs[idx + 1 :]):
                # It holds the newest id on disk: keep ids increasing across a restart.
                self._write_state()
        if seg.fd is not None:
            self._read_fds.pop(seg, None)
            os.close(seg.fd)
            seg.fd = None
        if seg.unsynced:
            seg.unsynced = False
            self._unsynced.remove(seg)
        self._unlink(seg.path)
        self._segs.remove(seg)
        self._bytes -= seg.size
        if self._last_seg is seg:
            self._last_seg = None

    def _unlink(self, path: Path) -> bool:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._io_error("unlink", "buffer file cannot be removed", exc, file=path.name)
            return False
        self._dir_dirty = True
        return True

    def _truncate(self, path: Path, size: int) -> bool:
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self._io_error("truncate", "buffer segment cannot be truncated", exc, file=path.name)
            return False
        return True

    # ------------------------------------------------------------------ durability

    def sync(self) -> None:
        """Make everything appended and acknowledged so far durable (fsync); never raises for disk errors."""
        job = self.sync_begin()
        job.run()
        self.sync_end(job)

    def sync_begin(self) -> SyncJob:
        """The first part of sync(), on the appending thread: what to fsync and the ack state to write.

        Run the job (``job.run()``) on any thread, then call :meth:`sync_end` on this one; appends,
        takes and acks may go on meanwhile. What was appended before sync_begin() is durable when
        run() returns; what was acknowledged before it is recorded.
        """
        self._check_open()
        job = SyncJob()
        job.durable_below = self._next_id
        for seg in self._unsynced:
            seg.unsynced = False
            if seg.fd is None:
                continue
            try:
                job.fds.append(os.dup(seg.fd))
                job.names.append(seg.path.name)
            except OSError as exc:
                self._io_error("fsync", "buffer fsync failed", exc, file=seg.path.name)
            if seg.sealed:
                self._read_fds[seg] = None
        self._unsynced.clear()
        while len(self._read_fds) > _MAX_READ_FDS:
            old, _ = self._read_fds.popitem(last=False)
            if old.fd is not None:
                os.close(old.fd)
                old.fd = None
        if self._state_dirty:
            job.state, job.state_gen, job.next_id = self._state_bytes()
            job.state_lock = self._state_writer
            job.state_path = self.path
            self._state_dirty = False
        if self._dir_dirty and self._dir_fd is not None:
            try:
                job.dir_fd = os.dup(self._dir_fd)
                self._dir_dirty = False
            except OSError as exc:
                self._io_error("fsync", "buffer folder fsync failed", exc)
        if self._bursts:
            self._end_quiet_bursts()
        return job

    def sync_end(self, job: SyncJob) -> None:
        """The last part of sync(), on the appending thread: count the errors, retry what failed next time."""
        for key, event, exc, name in job.errors:
            if name is None:
                self._io_error(key, event, exc)
            else:
                self._io_error(key, event, exc, file=name)
            if key == "state-write":
                self._state_dirty = True
            elif name is None:
                self._dir_dirty = True
        if job.state is not None and not self._state_dirty:
            self._persisted_next_id = max(self._persisted_next_id, job.next_id)

    def _fsync_dir(self) -> None:
        assert self._dir_fd is not None
        try:
            os.fsync(self._dir_fd)
            self._dir_dirty = False
        except OSError as exc:
            self._io_error("fsync", "buffer folder fsync failed", exc)

    def _ack_state(self) -> tuple[int, list[tuple[int, int]]]:
        """(low-water mark, acknowledged ranges above it) from the index."""
        head_id: int | None = None
        ranges: list[tuple[int, int]] = []
        for seg in self._segs:
            start = 0
            if head_id is None:
                start = seg.first_live()
                if start == len(seg.flags):
                    continue
                head_id = seg.base + seg.deltas[start]
            for m in _DONE_RUN_RE.finditer(seg.flags, start):
                first = seg.base + seg.deltas[m.start()]
                last = seg.base + seg.deltas[m.end() - 1]
                if ranges and ranges[-1][1] + 1 == first:
                    ranges[-1] = (ranges[-1][0], last)
                else:
                    ranges.append((first, last))
        lwm = head_id - 1 if head_id is not None else self._next_id - 1
        # Over the cap, the newest acks are forgotten: those records are resent (at-least-once).
        return lwm, ranges[:_MAX_STATE_RANGES]

    def _state_bytes(self) -> tuple[bytes, int, int]:
        """(the acks.state content now, its generation, the next id it records)."""
        lwm, ranges = self._ack_state()
        next_id = self._next_id
        body = b"".join(
            [_STATE_HEAD.pack(_STATE_MAGIC, next_id, lwm, len(ranges))] + [_RANGE.pack(a, b) for a, b in ranges]
        )
        self._state_gen += 1
        return body + _U32.pack(zlib.crc32(body)), self._state_gen, next_id

    def _write_state(self) -> bool:
        """Write acks.state now, on this thread (rare: before deleting the segment with the newest id)."""
        data, gen, next_id = self._state_bytes()
        try:
            self._state_writer.write(self.path, data, gen)
        except OSError as exc:
            self._io_error("state-write", "buffer ack state cannot be written", exc)
            return False
        self._state_dirty = False
        self._persisted_next_id = max(self._persisted_next_id, next_id)
        return True

    def close(self, sync: bool = True) -> None:
        """Sync, persist the next id, drop a fully acknowledged last segment, close the files.

        ``close(sync=False)`` only closes the files: it leaves what a crash would (for tests).
        """
        if not self._opened or self._closed:
            return
        if sync:
            if self._next_id != self._persisted_next_id:
                self._state_dirty = True
            self.sync()
            if self._active is not None:
                self._seal(self._active)
            if self._dir_dirty:
                self._fsync_dir()
        self._end_quiet_bursts(force=True)
        for seg in self._segs:
            if seg.fd is not None:
                os.close(seg.fd)
                seg.fd = None
        self._read_fds.clear()
        for fd in (self._dir_fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._dir_fd = self._lock_fd = None
        self._closed = True

    # ------------------------------------------------------------------ stats

    @property
    def available(self) -> int:
        """How many records take() could return now."""
        return self._live - self._in_flight

    @property
    def stats(self) -> BufferStats:
        return BufferStats(
            records=self._live,
            bytes=self._bytes,
            oldest_ts=self._oldest_ts(),
            dropped_records=self._dropped_records,
            dropped_bytes=self._dropped_bytes,
            dropped_full=self._dropped_by[DROP_FULL],
            dropped_no_space=self._dropped_by[DROP_NO_SPACE],
            corrupt_records=self._corrupt_records,
            appended=self._appended,
            acked=self._acked,
            in_flight=self._in_flight,
            segments=len(self._segs),
            io_errors=self._io_errors,
            payload_bytes=self._payload_bytes,
            stored_bytes=self._stored_bytes,
        )

    def _oldest_ts(self) -> float | None:
        if not self._live or self._closed:
            return None
        for seg in self._segs:
            j = seg.first_live()
            if j == len(seg.flags):
                continue
            rid = seg.base + seg.deltas[j]
            if self._oldest_cache is not None and self._oldest_cache[0] == rid:
                return self._oldest_cache[1]
            try:
                head = os.pread(self._read_fd(seg), HEADER_SIZE, seg.offs[j])
            except OSError:
                return None
            if len(head) < HEADER_SIZE:
                return None
            ts = float(_HEAD_FULL.unpack(head)[6])
            self._oldest_cache = (rid, ts)
            return ts
        return None

    # ------------------------------------------------------------------ helpers

    def _check_open(self) -> None:
        if not self._opened or self._closed:
            raise RuntimeError("DiskBuffer is not open")

    def _io_error(self, key: str, event: str, exc: Exception, **fields: Any) -> None:
        self._io_errors += 1
        self._warn_limited(key, event, error=str(exc), **fields)

    def _warn_limited(self, key: str, event: str, **fields: Any) -> None:
        """At most one line per key per minute; the line says how many were suppressed."""
        now = time.monotonic()
        last, suppressed = self._limits.get(key, (-math.inf, 0))
        if now - last >= _LOG_INTERVAL:
            self._limits[key] = (now, 0)
            self._log.warning(event, suppressed=suppressed, **fields)
        else:
            self._limits[key] = (last, suppressed + 1)


def _decode(mv: memoryview, off: int, length: int, rid: int) -> Record | None:
    """The record at mv[off:off+length] if it is intact and is record `rid`."""
    if off + length > len(mv) or length < RECORD_OVERHEAD:
        return None
    magic, version, flags, tlen, plen, hid, ts, hcrc = _HEAD_FULL.unpack_from(mv, off)
    if magic != _MAGIC or version != _VERSION or hid != rid or RECORD_OVERHEAD + tlen + plen != length:
        return None
    if zlib.crc32(mv[off : off + _HEAD.size]) != hcrc:
        return None
    body = mv[off + HEADER_SIZE : off + length - 4]
    if zlib.crc32(body, hcrc) != _U32.unpack_from(mv, off + length - 4)[0]:
        return None
    try:
        topic = str(body[:tlen], "utf-8")
    except UnicodeDecodeError:
        return None
    payload = bytes(body[tlen:])
    if flags & _FLAG_ZSTD:
        payload_or_none = _unzstd(payload)
        if payload_or_none is None:
            return None
        payload = payload_or_none
    return Record(rid, topic, payload, flags & 0x03, bool(flags & _FLAG_RETAIN), ts)


_ZD = threading.local()


def _unzstd(frame: bytes) -> bytes | None:
    """The payload of one stored zstd frame, None when it does not decompress to a sane size."""
    try:
        size = zstandard.frame_content_size(frame)
        if not 0 <= size <= _MAX_PAYLOAD:
            return None
        dctx = getattr(_ZD, "dctx", None)
        if dctx is None:
            dctx = _ZD.dctx = zstandard.ZstdDecompressor()
        out = dctx.decompress(frame, max_output_size=_MAX_PAYLOAD)
    except zstandard.ZstdError:
        return None
    return out if len(out) == size else None
