"""Publisher bookkeeping without a broker: order of returned messages, seq across restarts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog

from gateway.config import BufferConfig, MqttConfig
from gateway.publish import SEQ_BLOCK, Outgoing, Publisher, SeqCounter


def publisher() -> Publisher:
    return Publisher(MqttConfig(), "s", BufferConfig(), None, structlog.get_logger("t"))


def test_messages_returned_in_any_order_go_out_oldest_first() -> None:
    pub = publisher()
    for name in "abcde":
        pub._enqueue(Outgoing(name, b"", 1))
    taken = [m for _ in range(3) if (m := pub._next_live()) is not None]
    assert [m.topic for m in taken] == ["a", "b", "c"]
    pub._return([taken[2]])  # failures arrive in any order
    pub._return([taken[0], taken[1]])
    rest = []
    while (m := pub._next_live()) is not None:
        rest.append(m.topic)
    assert rest == ["a", "b", "c", "d", "e"]


def test_seq_never_repeats_and_a_clean_stop_leaves_no_gap(tmp_path: Path) -> None:
    path = tmp_path / "seq.json"
    first = SeqCounter(path)
    assert [first.next("d") for _ in range(3)] == [1, 2, 3]
    crashed = SeqCounter(path)  # the first one never closed: as after kill -9
    after_crash = crashed.next("d")
    assert after_crash > 3 and after_crash <= 3 + SEQ_BLOCK + 1
    crashed.close()
    clean = SeqCounter(path)
    assert clean.next("d") == after_crash + 1
    assert clean.next("other") == 1


def test_a_damaged_seq_file_starts_over_without_failing(tmp_path: Path) -> None:
    path = tmp_path / "seq.json"
    path.write_text("{not json", encoding="utf-8")
    assert SeqCounter(path).next("d") == 1


def test_an_unwritable_seq_file_is_reported_not_fatal(tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("", encoding="utf-8")
    counter = SeqCounter(blocked / "seq.json")
    assert counter.next("d") == 1 and counter.next("d") == 2
    assert counter.error is not None and "cannot save seq" in counter.error


def test_per_point_topics_add_one_message_per_reading() -> None:
    import json

    from gateway.driver import RawReadings
    from gateway.models import PointConfig
    from gateway.normalize import Normalizer

    pub = Publisher(MqttConfig(per_point_topics=True), "s", BufferConfig(), None, structlog.get_logger("t"))
    points = [PointConfig.model_validate({"id": f"p{i}", "quantity": "current", "unit": "A"}) for i in range(3)]
    normalizer = Normalizer("dev", points)
    pub.submit_batch(normalizer.normalize(RawReadings([1.0, 2.0, 3.0]), 1000))
    topics = [m.topic for m in pub._queue]
    assert topics == ["edgegw/s/dev/data", "edgegw/s/dev/points/p0", "edgegw/s/dev/points/p1", "edgegw/s/dev/points/p2"]
    assert json.loads(pub._queue[2].payload) == {
        "point": "p1",
        "value": 2.0,
        "unit": "A",
        "quality": "good",
        "ts": 1000,
    }


def test_on_done_fires_once_when_a_message_is_safe_or_dropped(tmp_path: Path) -> None:
    from gateway.publish import _done

    done: list[str] = []

    def note(name: str) -> Callable[[], None]:
        return lambda: done.append(name)

    # Queued, then dropped at the bound: done (the loss is counted, not waited for).
    pub = publisher()
    names = [f"m{i}" for i in range(pub._limit + 1)]
    for name in names:
        pub._enqueue(Outgoing(name, b"", 1, on_done=note(name)))
    assert done == ["m0"] and pub.stats.dropped_queue == 1
    # Acknowledged: done once, however often the ack path runs.
    msg = pub._next_live()
    assert msg is not None
    pub._delivered(msg)
    _done(msg)
    assert done == ["m0", "m1"]
    # The broker is away and a disk buffer takes it: done when it is on disk.
    disk_pub = Publisher(MqttConfig(), "s", BufferConfig(path=tmp_path / "buf"), None, structlog.get_logger("t"))
    disk_pub.open_buffer()
    try:
        disk_pub._enqueue(Outgoing("x", b"payload", 1, on_done=lambda: done.append("x")))
        assert done[-1] == "x" and disk_pub.buffer_stats().records == 1
    finally:
        disk_pub._disk.close()
