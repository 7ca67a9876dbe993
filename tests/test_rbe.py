"""Report by exception: the rule (hypothesis), its compile in the normaliser, and its config checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from gateway.app import device_meta
from gateway.config import ConfigError, load_config
from gateway.driver import PointError, RawReadings, RawValue
from gateway.models import PointConfig
from gateway.normalize import BAD, GOOD, UNCERTAIN, Normalizer, ReportByException
from gateway.points import Kind, Quality

INTERVAL_MS = 1000


def gauge(deadband: float | str | None = None, max_age: float | None = None, pid: str = "p") -> PointConfig:
    return PointConfig(id=pid, quantity="active_power", unit="W", deadband=deadband, max_age=max_age)


def counter(max_age: float | None = None) -> PointConfig:
    return PointConfig(id="e", quantity="active_energy_import", unit="Wh", kind=Kind.COUNTER, max_age=max_age)


def state(max_age: float | None = None) -> PointConfig:
    return PointConfig(id="s", quantity="breaker_state", unit="", kind=Kind.STATE, max_age=max_age)


# Engineering values of a gauge: finite, of a size a meter reports.
values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
deadbands = st.floats(min_value=0.0, max_value=1000.0, allow_nan=False)
ages = st.integers(min_value=1, max_value=100)  # in polls


def run(rule: ReportByException, readings: list[tuple[Any, str, str | None]]) -> list[bool]:
    """Feed one point's readings, one poll apart; which of them were published."""
    return [rule.qualifies(0, v, q, e, k * INTERVAL_MS) for k, (v, q, e) in enumerate(readings)]


@settings(max_examples=300, deadline=None)
@given(deadbands, ages, st.lists(values, min_size=1, max_size=60))
def test_absolute_deadband_and_max_age(deadband: float, age: int, series: list[float]) -> None:
    rule = ReportByException([gauge(deadband, age * INTERVAL_MS / 1000)])
    published = run(rule, [(v, GOOD, None) for v in series])
    assert published[0], "the first reading is always published"
    last_value, last_k = series[0], 0
    for k, (v, out) in enumerate(zip(series, published, strict=True)):
        if k == 0:
            continue
        moved = abs(v - last_value) > deadband
        expired = k - last_k >= age
        # Published exactly when it moved past the deadband from the last published value, or max_age passed.
        assert out == (moved or expired), (k, v, last_value, deadband)
        if out:
            last_value, last_k = v, k


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0.0, max_value=50.0), st.lists(values, min_size=1, max_size=60))
def test_percent_deadband_is_of_the_last_published_value(percent: float, series: list[float]) -> None:
    rule = ReportByException([gauge(f"{percent:.3f}%")])
    band = float(f"{percent:.3f}") / 100
    published = run(rule, [(v, GOOD, None) for v in series])
    last = series[0]
    for v, out in zip(series[1:], published[1:], strict=True):
        assert out == (abs(v - last) > band * abs(last))
        if out:
            last = v


@settings(max_examples=200, deadline=None)
@given(deadbands, values, st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=50))
@example(1e-09, 524288.0, [1.0])  # found by CI: the sum rounds past a sub-resolution deadband
def test_never_publishes_within_the_deadband_before_max_age(deadband: float, start: float, moves: list[float]) -> None:
    rule = ReportByException([gauge(deadband)])
    # Every value stays within the deadband of the first: nothing after it is published (no max_age).
    series = [start] + [start + (m * 2 - 1) * deadband * 0.99 for m in moves]
    # A deadband below the value's resolution (1e-9 on 524288.0) rounds the sum past it: such a
    # value did move by more than the deadband as floats count, and is rightly published.
    assume(all(abs(v - start) <= deadband for v in series))
    published = run(rule, [(v, GOOD, None) for v in series])
    assert published == [True] + [False] * len(moves)


@settings(max_examples=200, deadline=None)
@given(deadbands, st.lists(values, min_size=1, max_size=60))
def test_a_published_change_moved_past_the_deadband(deadband: float, series: list[float]) -> None:
    rule = ReportByException([gauge(deadband)])
    published = run(rule, [(v, GOOD, None) for v in series])
    last = series[0]
    for v, out in zip(series[1:], published[1:], strict=True):
        assert out == (abs(v - last) > deadband)
        if out:
            last = v


@settings(max_examples=200, deadline=None)
@given(
    deadbands,
    ages,
    values,
    st.lists(st.tuples(st.sampled_from([GOOD, UNCERTAIN, BAD]), st.sampled_from([None, "x", "y"]))),
)
def test_quality_or_error_change_is_always_published(
    deadband: float, age: int, v: float, flags: list[tuple[str, str | None]]
) -> None:
    rule = ReportByException([gauge(deadband, age)])
    readings = [(None if q == BAD else v, q, e) for q, e in [(GOOD, None), *flags]]
    published = run(rule, readings)
    for k in range(1, len(readings)):
        if readings[k][1:] != readings[k - 1][1:]:
            assert published[k], (k, readings)


@settings(max_examples=200, deadline=None)
@given(ages, st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=60))
def test_counters_and_states_publish_on_any_change(age: int, steps: list[int]) -> None:
    total = 0
    counts = []
    for s in steps:
        total += s
        counts.append(total)
    for point, series in ((counter(age), counts), (state(age), [s % 2 == 0 for s in steps])):
        rule = ReportByException([point])
        published = run(rule, [(v, GOOD, None) for v in series])
        last_k = 0
        for k in range(1, len(series)):
            expected = series[k] != series[last_k] or k - last_k >= age
            assert published[k] == expected, (point.id, k, series)
            if published[k]:
                last_k = k


def test_a_state_changing_type_is_a_change() -> None:
    rule = ReportByException([state(max_age=100)])
    assert run(rule, [(1, GOOD, None), (True, GOOD, None), (True, GOOD, None), ("on", GOOD, None)]) == [
        True,
        True,
        False,
        True,
    ]


def test_max_age_alone_on_a_gauge_publishes_on_change_and_as_a_heartbeat() -> None:
    rule = ReportByException([gauge(max_age=3)])
    series = [5.0, 5.0, 5.0, 5.0, 5.0, 5.1, 5.1]
    assert run(rule, [(v, GOOD, None) for v in series]) == [True, False, False, True, False, True, False]


def test_a_clock_stepped_back_publishes() -> None:
    rule = ReportByException([gauge(1.0, 60)])
    assert rule.qualifies(0, 5.0, GOOD, None, 1_000_000)
    assert not rule.qualifies(0, 5.0, GOOD, None, 1_001_000)
    assert rule.qualifies(0, 5.0, GOOD, None, 999_000)  # the clock went back: the age is unknown


def test_devices_without_report_by_exception_have_no_step() -> None:
    n = Normalizer("d", [gauge(pid="a"), counter()])
    assert n._rbe is None
    raw = RawReadings(values=[1.0, 5])
    assert [len(n.normalize(raw, k * 1000)) for k in range(3)] == [2, 2, 2]


def test_normalizer_filters_and_a_failed_poll_is_published_whole() -> None:
    points = [gauge(0.5, 10, "a"), gauge(pid="b"), counter(60)]
    n = Normalizer("d", points)
    encoded = []
    polls: list[list[Any]] = [[100.0, 1.0, 5], [100.4, 1.0, 5], [100.6, 1.0, 6], [100.6, 1.0, 6]]
    for k, vals in enumerate(polls):
        batch = n.normalize(RawReadings(values=vals), k * 1000)
        encoded.append([r["point"] for r in json.loads(batch.encode(k))["readings"]])
    assert encoded == [["a", "b", "e"], ["b"], ["a", "b", "e"], ["b"]]
    # Nothing qualifies but the plain point; a device of only RBE points sends an empty message.
    only = Normalizer("d", [gauge(0.5, 10, "a")])
    assert len(only.normalize(RawReadings(values=[1.0]), 0)) == 1
    empty = only.normalize(RawReadings(values=[1.0]), 1000)
    assert json.loads(empty.encode(2))["readings"] == []
    # A failed poll: every point bad, published whole, twice in a row too.
    for t in (5000, 6000):
        failed = n.failed("timeout", t)
        assert len(failed) == 3 and set(failed.qualities) == {BAD}
    # The first good poll after it differs in quality: published whole.
    assert len(n.normalize(RawReadings(values=[100.6, 1.0, 6]), 7000)) == 3


def test_a_bad_point_in_a_good_poll_publishes_on_change_of_its_error() -> None:
    n = Normalizer("d", [gauge(0.5, 100, "a")])
    raws: list[RawValue] = [1.0, PointError("gone"), PointError("gone"), PointError("other"), 1.0]
    got = [len(n.normalize(RawReadings(values=[v]), k * 1000)) for k, v in enumerate(raws)]
    assert got == [1, 1, 0, 1, 1]


def test_calculated_points_see_the_whole_poll_and_report_by_exception() -> None:
    a = gauge(10.0, 100, "a")
    total = PointConfig(id="t", quantity="active_power", unit="W", calc="a + 1", deadband=0.5)
    n = Normalizer("d", [a], [total])
    first = n.normalize(RawReadings(values=[100.0]), 0)
    assert [n.points[i].id for i in first.index] == ["a", "t"]
    # a moved 1 W (within its 10 W band: not published) but the calc of it moved past its 0.5 W band.
    second = n.normalize(RawReadings(values=[101.0]), 1000)
    assert [(n.points[i].id, v) for i, v in zip(second.index, second.values, strict=True)] == [("t", 102.0)]


def test_series_entries_are_always_published() -> None:
    n = Normalizer("d", [gauge(1.0, 100, "a")])
    n.normalize(RawReadings(values=[1.0]), 0)
    batch = n.normalize(RawReadings(values=[1.0], series=[(0, 1.0, 500), (0, 1.0, 600)]), 1000)
    assert batch.stamps == [500, 600]


def test_pushed_values_report_by_exception() -> None:
    from gateway.driver import Pushed

    n = Normalizer("d", [gauge(1.0, 100, "a")])
    assert len(n.normalize(RawReadings(values=[1.0]), 0)) == 1
    assert len(n.normalize_pushed([Pushed(0, 1.5)], 500, None)) == 0
    assert len(n.normalize_pushed([Pushed(0, 2.5)], 600, None)) == 1
    assert len(n.normalize_pushed([Pushed(0, 2.5, quality=Quality.UNCERTAIN)], 700, None)) == 1


# --- config ----------------------------------------------------------------------------------

CONFIG = """\
site: dc1
mqtt: {url: "mqtt://127.0.0.1:1883"}
devices:
  - id: m1
    driver: modbus
    tcp: {host: 127.0.0.1, port: 5020}
    interval: 2s
    POINTS_HERE
"""


def config(tmp_path: Path, device: str, points: str) -> Path:
    text = CONFIG.replace("    POINTS_HERE\n", device + "    points:\n" + points)
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    return [str(i) for i in exc.value.issues]


def test_config_keys_and_device_defaults(tmp_path: Path) -> None:
    points = (
        "      - {id: v, address: 0, type: float32, quantity: voltage, unit: V, deadband: 2%, max_age: 1min}\n"
        "      - {id: i, address: 2, type: float32, quantity: current, unit: A}\n"
        "      - {id: e, address: 4, type: uint32, quantity: active_energy_import, unit: Wh, kind: counter}\n"
        "      - {id: f, address: 6, type: float32, quantity: frequency, unit: Hz}\n"
    )
    cfg = load_config(config(tmp_path, "    report: {deadband: 0.1, max_age: 5min}\n", points))
    by_id = {p.id: p for p in cfg.devices[0].resolved_points}
    assert (by_id["v"].deadband, by_id["v"].max_age) == ("2%", 60.0)
    assert (by_id["i"].deadband, by_id["i"].max_age) == (0.1, 300.0)
    assert (by_id["e"].deadband, by_id["e"].max_age) == (None, 300.0)  # a counter takes only the max_age
    assert by_id["i"] is not by_id["f"]
    meta = device_meta(cfg.devices[0], cfg.devices[0].resolved_points)
    reports = {p["id"]: p.get("report") for p in meta["points"]}
    assert reports == {
        "v": {"deadband": "2%", "max_age": 60.0},
        "i": {"deadband": 0.1, "max_age": 300.0},
        "e": {"deadband": 0, "max_age": 300.0},
        "f": {"deadband": 0.1, "max_age": 300.0},
    }
    # Without RBE the meta has no `report` key at all (as before).
    plain = load_config(config(tmp_path, "", points.replace(", deadband: 2%, max_age: 1min", "")))
    assert all("report" not in p for p in device_meta(plain.devices[0], plain.devices[0].resolved_points)["points"])


def test_profile_device_defaults(tmp_path: Path) -> None:
    (tmp_path / "my.yaml").write_text(
        "profile: my\ndriver: modbus\ndevice: {report: {deadband: 1%, max_age: 10min}}\npoints:\n"
        "  - {id: v, address: 0, type: float32, quantity: voltage, unit: V}\n",
        encoding="utf-8",
    )
    path = tmp_path / "site.yaml"
    path.write_text(CONFIG.replace("    POINTS_HERE\n", "    profile: my.yaml\n"), encoding="utf-8")
    p = load_config(path).devices[0].resolved_points[0]
    assert (p.deadband, p.max_age) == ("1%", 600.0)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "{id: e, address: 4, type: uint32, quantity: active_energy_import, unit: Wh, kind: counter, deadband: 5}",
            "deadband is for gauges",
        ),
        ("{id: s, address: 4, quantity: breaker_state, kind: state, deadband: 1}", "deadband is for gauges"),
        (
            "{id: r, address: 4, type: uint32, quantity: active_power, unit: W, rate: per_second, deadband: 1}",
            "deadband is for gauges",
        ),
        ("{id: v, address: 0, type: float32, quantity: voltage, unit: V, deadband: -1}", "non-negative"),
        ("{id: v, address: 0, type: float32, quantity: voltage, unit: V, deadband: -2%}", "not a deadband"),
        ("{id: v, address: 0, type: float32, quantity: voltage, unit: V, deadband: lots}", "not a deadband"),
        (
            "{id: v, address: 0, type: float32, quantity: voltage, unit: V, max_age: 1s}",
            "shorter than the device's interval",
        ),
        ("{id: v, address: 0, type: float32, quantity: voltage, unit: V, max_age: 0s}", "max_age must be > 0"),
    ],
)
def test_invalid_keys_name_file_and_line(tmp_path: Path, line: str, expected: str) -> None:
    path = config(tmp_path, "", "      - {id: ok, address: 9, quantity: voltage, unit: V}\n      - " + line + "\n")
    found = problems(path)
    assert any(i.startswith(f"{path}:10 devices[0].points[1]") and expected in i for i in found), found


def test_device_report_max_age_shorter_than_interval(tmp_path: Path) -> None:
    path = config(
        tmp_path, "    report: {max_age: 500ms}\n", "      - {id: v, address: 0, quantity: voltage, unit: V}\n"
    )
    found = problems(path)
    assert any(i.startswith(f"{path}:") and "report.max_age" in i and "shorter than the interval" in i for i in found)


def test_check_exits_2(tmp_path: Path) -> None:
    path = config(tmp_path, "", "      - {id: v, address: 0, type: float32, quantity: voltage, unit: V, max_age: 1s}\n")
    res = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", str(path)], capture_output=True, text=True, check=False
    )
    assert res.returncode == 2
    assert f"{path}:9 devices[0].points[0].max_age: max_age 1s is shorter" in res.stderr, res.stderr
