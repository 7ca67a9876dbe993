"""The hot-standby pair's rules on their own: the election, seq reservations, state versions, config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, ha_keepalive_limit, load_config_text
from gateway.ha import Claim, lease_free, newer_state, next_claim, parse_claim, seq_start, seq_window
from gateway.models import PointConfig
from gateway.normalize import Normalizer, set_instance
from gateway.publish import SeqCounter
from gateway.state import VERSION_KEY, StateStore

names = st.text(alphabet="abcdefgh0123", min_size=1, max_size=4)


# -- the election -----------------------------------------------------------------------------


@given(st.lists(st.tuples(st.integers(0, 5), names), min_size=1, max_size=6))
def test_every_instance_picks_the_same_winner_whatever_order_claims_arrive_in(claims: list[tuple[int, str]]) -> None:
    seen = [Claim(e, i) for e, i in claims]
    winner = max(seen)
    for start in range(len(seen)):
        # Each instance sees the claims in its own order; keeping the greatest gives one answer.
        order = seen[start:] + seen[:start]
        top = None
        for c in order:
            top = c if top is None or c > top else top
        assert top == winner


def test_a_claim_is_epoch_first_then_instance() -> None:
    assert Claim(2, "a") > Claim(1, "z")
    assert Claim(1, "b") > Claim(1, "a")
    assert next_claim(Claim(7, "b"), "a") == Claim(8, "a") > Claim(7, "b")
    assert next_claim(None, "a") == Claim(1, "a")


def test_the_lease_is_free_only_when_its_holder_is_not_online() -> None:
    top = Claim(3, "a")
    assert not lease_free(top, {"a": "online", "b": "online"}, "b")
    assert lease_free(top, {"a": "offline", "b": "online"}, "b")  # the will fired
    assert lease_free(top, {"b": "online"}, "b")  # no member message: the holder is gone
    assert lease_free(None, {}, "b")  # nobody ever held it
    assert lease_free(top, {"a": "online"}, "a")  # a restarted a holds nothing


def test_a_lease_message_is_parsed_or_ignored() -> None:
    assert parse_claim(b'{"holder": "a", "epoch": 4, "since": 1}') == Claim(4, "a")
    assert parse_claim(b"") is None
    assert parse_claim(b"{nope") is None
    assert parse_claim(b'{"holder": "a"}') is None


# -- seq reservations -------------------------------------------------------------------------


def test_seq_stops_at_the_acknowledged_reservation_and_asks_early(tmp_path: Path) -> None:
    counter = SeqCounter(tmp_path / "seq.json")
    counter.ceiling = {}
    asked: list[str] = []
    counter.on_low = asked.append
    assert counter.take("d") is None  # nothing reserved on the broker yet
    counter.advance({"d": 10}, {"d": 20})
    counter.ceiling["d"] = 20
    counter.low_water["d"] = 5
    assert json.loads((tmp_path / "seq.json").read_text())["d"] == 20  # on disk before use
    got = [counter.take("d") for _ in range(10)]
    assert got == list(range(10, 20))
    assert asked and set(asked) == {"d"}
    assert counter.take("d") is None and counter.exhausted == 2


def test_without_ha_seq_is_as_before(tmp_path: Path) -> None:
    counter = SeqCounter(None)
    assert [counter.next("d") for _ in range(3)] == [1, 2, 3]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["use", "reserve", "takeover", "cut"]), st.integers(1, 30)), max_size=60))
def test_no_seq_repeats_across_takeovers_and_partitions(steps: list[tuple[str, int]]) -> None:
    """Two instances and a broker: whoever publishes, with whatever overlap, no number is used twice.

    An instance uses numbers only below the reservation the broker acknowledged to it; a new
    active starts at max(its own next, the broker's reservation) and reserves before using.
    `cut` leaves the old active running on what it has (split brain) while the other takes over.
    """
    block = 10
    counters = {"a": SeqCounter(None), "b": SeqCounter(None)}
    for c in counters.values():
        c.ceiling = {}
    broker = 0
    connected = {"a": True, "b": True}
    active = {"a"}
    used: list[int] = []

    def reserve(inst: str, start: bool) -> None:
        nonlocal broker
        c = counters[inst]
        first = seq_start(c.peek("d"), broker) if start else c.peek("d")
        c.advance({"d": first}, {"d": first + block})
        broker = max(broker, first + block)  # the broker acknowledged it
        assert c.ceiling is not None
        c.ceiling["d"] = max(c.ceiling.get("d", 0), first + block)

    reserve("a", start=True)
    for action, n in steps:
        if action == "use":
            for inst in sorted(active):
                for _ in range(n):
                    s = counters[inst].take("d")
                    if s is not None:
                        used.append(s)
        elif action == "reserve":
            for inst in active:
                if connected[inst]:
                    reserve(inst, start=False)
        elif action in ("takeover", "cut"):
            old = next(iter(sorted(active)))
            new = "b" if old == "a" else "a"
            if action == "cut":
                connected[old] = False  # keeps its ceiling and keeps publishing into its buffer
                active = {old, new}
            else:
                counters[old].ceiling = {}
                active = {new}
            connected[new] = True
            counters[new].ceiling = {}
            reserve(new, start=True)
            if action == "cut":
                active = {new, old}
    assert len(used) == len(set(used))


def test_a_device_reserves_enough_for_the_partition_window() -> None:
    assert seq_window(3600, 1.0) >= 3600
    assert seq_window(3600, 60.0) >= 60
    assert seq_start(5, None) == 5 and seq_start(5, 900) == 900 and seq_start(0, None) == 1


# -- driver state -----------------------------------------------------------------------------


class Mirror:
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.published: list[dict[str, Any]] = []

    def stamp(self, previous: Any) -> Any:
        n = previous[1] + 1 if isinstance(previous, list) and previous[0] == self.epoch else 1
        return [self.epoch, n]

    def publish(self, data: dict[str, Any]) -> None:
        self.published.append(data)


def test_a_commit_is_written_then_copied_with_a_version(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "d.json")
    mirror = Mirror(3)
    store.mirror = mirror
    store.commit({"cursor": 10})
    store.commit({"cursor": 10})  # nothing changed: nothing written, nothing copied
    store.commit({"cursor": 11})
    on_disk = json.loads((tmp_path / "d.json").read_text())
    assert on_disk == {"cursor": 11, VERSION_KEY: [3, 2]}
    assert [m[VERSION_KEY] for m in mirror.published] == [[3, 1], [3, 2]]


def test_the_newer_copy_of_a_device_state_wins(tmp_path: Path) -> None:
    assert newer_state([3, 9], [4, 1])
    assert not newer_state([4, 2], [4, 1])
    assert newer_state(None, [1, 1])
    assert not newer_state([1, 1], None)
    store = StateStore(tmp_path / "d.json")
    store.replace({"cursor": 5, VERSION_KEY: [4, 1]})
    assert StateStore(tmp_path / "d.json").get("cursor") == 5


# -- the data message -------------------------------------------------------------------------


def test_data_messages_name_the_instance_only_in_ha_mode() -> None:
    from gateway.driver import RawReadings

    point = PointConfig.model_validate({"id": "v", "quantity": "voltage", "unit": "V"})
    try:
        set_instance("box-a")
        body = json.loads(Normalizer("m1", [point]).normalize(RawReadings([230]), 1).encode(7))
        assert body["instance"] == "box-a" and body["device"] == "m1" and body["seq"] == 7
    finally:
        set_instance(None)
    body = json.loads(Normalizer("m1", [point]).normalize(RawReadings([230]), 1).encode(7))
    assert "instance" not in body


# -- config -----------------------------------------------------------------------------------

DEVICE = """
devices:
  - id: m1
    driver: modbus
    tcp: {{host: 127.0.0.1, port: 502}}
    unit: 1
    interval: {interval}
    points: [{{id: v, address: 0, type: uint16, quantity: voltage, unit: V}}]
"""


def test_ha_defaults_a_keepalive_that_meets_the_takeover_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEGW_INSTANCE", "box-b")
    cfg = load_config_text("site: s\nstate_dir: memory\nha: {group: pair}\n" + DEVICE.format(interval="1s"))
    assert cfg.ha is not None and cfg.ha.name == "box-b" and cfg.ha.group == "pair"
    assert cfg.mqtt.keepalive == 4.0  # whole seconds (MQTT), the most that fits a 1 s device
    assert 1.5 * cfg.mqtt.keepalive + 1.0 + 0.5 + 1.1 <= 10.0
    plain = load_config_text("site: s\nstate_dir: memory\n" + DEVICE.format(interval="1s"))
    assert plain.mqtt.keepalive == 30.0 and plain.ha is None


def test_ha_refuses_a_keepalive_too_long_for_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEGW_INSTANCE", "a")
    text = "site: s\nstate_dir: memory\nmqtt:\n  keepalive: 30s\nha: {group: pair}\n" + DEVICE.format(interval="1s")
    with pytest.raises(ConfigError) as exc:
        load_config_text(text, "site.yaml")
    issue = exc.value.issues[0]
    assert (issue.file, issue.line, issue.path) == ("site.yaml", 4, "mqtt.keepalive")
    assert "keepalive at most 4.9 s" in issue.message
    # A slow device leaves room for a longer one: 3 x 60 s.
    slow = text.replace("keepalive: 30s", "keepalive: 60s").replace("interval: 1s", "interval: 60s")
    assert load_config_text(slow).mqtt.keepalive == 60.0
    assert ha_keepalive_limit([60.0]) >= 60.0


def test_an_instance_name_must_be_a_topic_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEGW_INSTANCE", "box/a")
    with pytest.raises(ConfigError) as exc:
        load_config_text("site: s\nstate_dir: memory\nha: {group: pair}\n", "site.yaml")
    assert "EDGEGW_INSTANCE" in str(exc.value)
    monkeypatch.delenv("EDGEGW_INSTANCE")
    cfg = load_config_text("site: s\nstate_dir: memory\nha: {group: pair}\n")
    assert cfg.ha is not None and cfg.ha.name  # the host name
    with pytest.raises(ConfigError):
        load_config_text("site: s\nstate_dir: memory\nha: {group: 'a/b'}\n")


def test_the_commented_ha_block_of_the_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEGW_INSTANCE", "box-a")
    example = Path(__file__).resolve().parent.parent / "config" / "gateway.example.yaml"
    lines = example.read_text(encoding="utf-8").splitlines()
    start = lines.index("# ha:")
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line[2:])
    text = "site: s\nstate_dir: memory\n" + "\n".join(block) + "\n"
    cfg = load_config_text(text)
    assert cfg.ha is not None and cfg.ha.group == "hall-a" and cfg.ha.partition_window == 4 * 3600
