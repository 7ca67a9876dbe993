"""Calculated points: the expression engine, the checks at config load, and a signed power end to end."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gateway.calc import CalcError, EvalError, combine, compile_expr, evaluation_order
from gateway.config import ConfigError, load_config
from gateway.driver import NO_VALUE, PointError, RawReadings
from gateway.normalize import Normalizer
from gateway.registry import DRIVERS
from tests.harness import Collector, Daemon, Mosquitto

finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)
quality = st.sampled_from(["good", "uncertain", "bad"])


@given(a=finite, b=finite, c=finite)
def test_results_equal_plain_python(a: float, b: float, c: float) -> None:
    assert compile_expr("a + b * c - abs(a)")([a, b, c]) == a + b * c - abs(a)
    assert compile_expr("min(a, b, c) + max(a, b) + sum(a, b, c)")([a, b, c]) == min(a, b, c) + max(a, b) + (a + b + c)
    if b and math.isfinite(a / b):
        assert compile_expr("a / b")([a, b]) == a / b
    elif b:  # beyond a float: no value rather than inf
        with pytest.raises(EvalError, match="not a finite number"):
            compile_expr("a / b")([a, b])
    got = compile_expr("vll(a, b)")([abs(a), abs(b)])
    assert got == math.sqrt(a * a + b * b + abs(a) * abs(b))


@given(p=st.floats(min_value=0, max_value=1e6, allow_nan=False), word=st.integers(0, 0xFFFF))
def test_sign_from_a_status_word_bit(p: float, word: int) -> None:
    signed = compile_expr("p_abs if not bit(sign_word, 0) else -p_abs")
    assert signed.inputs == ("sign_word", "p_abs")
    assert signed([word, p]) == (-p if word & 1 else p)


@given(a=finite, qa=quality, qb=quality)
def test_quality_is_the_worst_of_the_inputs(a: float, qa: str, qb: str) -> None:
    value, q, error = combine(compile_expr("x + y"), [a, 1.0], [qa, qb], [None, None])
    worst = max(qa, qb, key=["good", "uncertain", "bad"].index)
    assert q == worst
    if worst == "bad":
        assert value is None and error is not None and "is bad" in error
    else:
        assert value == a + 1.0 and error is None


@given(a=finite, zero=st.sampled_from([0, 0.0, -0.0]))
def test_division_by_zero_is_bad(a: float, zero: float) -> None:
    assert combine(compile_expr("a / b"), [a, zero], ["good", "good"], [None, None]) == (
        None,
        "bad",
        "calc: division by zero",
    )


def test_domain_error_and_no_value_are_bad() -> None:
    assert combine(compile_expr("sqrt(a)"), [-1.0], ["good"], [None])[1:] == (
        "bad",
        "calc: sqrt of a negative number (-1.0)",
    )
    assert combine(compile_expr("a * 2"), [None], ["uncertain"], ["first sample"]) == (
        None,
        "uncertain",
        "input a has no value (first sample)",
    )


def test_dotted_and_quoted_point_ids() -> None:
    c = compile_expr('l1.voltage + point("l2-voltage")')
    assert c.inputs == ("l1.voltage", "l2-voltage") and c([1, 2]) == 3


@pytest.mark.parametrize(
    ("expr", "why"),
    [
        ("a +", "syntax error"),
        ("a ** 2", "unsupported operator Pow"),
        ("__import__('os')", "unknown function '__import__'"),
        ("a.b()", "only plain calls"),
        ("'text'", "unsupported constant"),
        ("sqrt(a, b)", "sqrt() takes 1 argument(s)"),
        ("[a]", "unsupported expression (List)"),
        ("", "an empty expression"),
    ],
)
def test_what_is_refused(expr: str, why: str) -> None:
    with pytest.raises(CalcError, match=None) as exc:
        compile_expr(expr)
    assert why in str(exc.value)


def test_cycles_are_found() -> None:
    calcs = {k: compile_expr(v) for k, v in {"a": "b + 1", "b": "c + x", "c": "a", "d": "x"}.items()}
    with pytest.raises(CalcError, match=r"cycle: a -> b -> c -> a"):
        evaluation_order(calcs)
    assert evaluation_order({k: calcs[k] for k in ("d",)}) == ["d"]
    ordered = evaluation_order({"s": compile_expr("t * 2"), "t": compile_expr("x")})
    assert ordered == ["t", "s"]


MODBUS_POINTS: list[dict[str, Any]] = [
    {"id": "p_abs", "address": 0, "type": "uint16", "scale": 10, "quantity": "active_power", "unit": "W",
     "publish": False, "sim": {"value": 12340}},
    {"id": "sign_word", "address": 1, "type": "uint16", "quantity": "status", "publish": False, "sim": {"value": 1}},
    {"id": "v1", "address": 2, "type": "uint16", "quantity": "voltage", "unit": "V", "phase": "L1", "sim": {"value": 230}},
    {"id": "v2", "address": 3, "type": "uint16", "quantity": "voltage", "unit": "V", "phase": "L2", "sim": {"value": 230}},
]  # fmt: skip
CALC_POINTS: list[dict[str, Any]] = [
    {"id": "p", "calc": "p_abs if not bit(sign_word, 0) else -p_abs", "quantity": "active_power", "unit": "W"},
    {"id": "v12", "calc": "vll(v1, v2)", "quantity": "voltage", "unit": "V", "phase": "L1-L2"},
    {"id": "ratio", "calc": "p / v1", "quantity": "current", "unit": "A"},
]  # fmt: skip


def site_file(tmp: Path, devices: list[dict[str, Any]], **extra: Any) -> Path:
    path = tmp / "site.yaml"
    body = {"site": "lab", "state_dir": "memory", **extra, "devices": devices}
    path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return path


def modbus_device(points: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": "m1", "driver": "modbus", "tcp": {"host": "127.0.0.1", "port": 1502}, "points": points}


def test_calc_points_stay_out_of_the_driver(tmp_path: Path) -> None:
    cfg = load_config(site_file(tmp_path, [modbus_device([*MODBUS_POINTS, *reversed(CALC_POINTS)])]))
    dev = cfg.devices[0]
    assert [p.id for p in dev.resolved_points] == ["p_abs", "sign_word", "v1", "v2"]
    order = [p.id for p in dev.calculated_points]
    assert sorted(order) == ["p", "ratio", "v12"] and order.index("p") < order.index("ratio")  # ratio reads p


def normalized(values: list[Any], tmp_path: Path) -> dict[str, tuple[Any, str, str | None]]:
    dev = load_config(site_file(tmp_path, [modbus_device([*MODBUS_POINTS, *CALC_POINTS])])).devices[0]
    norm = Normalizer(dev.id, dev.resolved_points, dev.calculated_points)
    batch = norm.normalize(RawReadings(values), 1000)
    return {str(r["point"]): (r["value"], str(r["quality"]), r.get("error")) for r in batch.as_dicts()}  # type: ignore[misc]


def test_normaliser_computes_from_engineering_values(tmp_path: Path) -> None:
    got = normalized([1234, 1, 230, 230], tmp_path)
    assert got["p"] == (-12340, "good", None)  # the scaled magnitude (x10), negative by bit 0
    assert got["v12"][0] == pytest.approx(230 * math.sqrt(3))
    assert got["ratio"][0] == pytest.approx(-12340 / 230)
    assert "p_abs" not in got and "sign_word" not in got  # inputs need not be published


def test_bad_inputs_and_zero_divisors(tmp_path: Path) -> None:
    got = normalized([1234, PointError("exception 2"), 0, 230], tmp_path)
    assert got["p"] == (None, "bad", "input sign_word is bad (exception 2)")
    assert got["ratio"] == (None, "bad", "input p is bad (input sign_word is bad (exception 2))")
    assert got["v12"] == (230.0, "good", None)
    got = normalized([1234, 0, 0, 230], tmp_path)
    assert got["ratio"] == (None, "bad", "calc: division by zero")
    got = normalized([1234, 0, NO_VALUE, 230], tmp_path)
    assert "v12" not in got and "ratio" not in got  # nothing new for v1: nothing computed from it


def test_a_device_without_calc_points_has_no_calc_table(tmp_path: Path) -> None:
    dev = load_config(site_file(tmp_path, [modbus_device(MODBUS_POINTS)])).devices[0]
    norm = Normalizer(dev.id, dev.resolved_points, dev.calculated_points)
    assert norm._calc is None
    assert [r["point"] for r in norm.failed("down", 1).as_dicts()] == ["v1", "v2"]


@pytest.mark.parametrize(
    ("calc", "where", "why"),
    [
        ("p_abs +", "points[4].calc", "syntax error"),
        ("nope * 2", "points[4].calc", "no point 'nope' in this device"),
        ("q + 1", "points[4].calc", "calculated points form a cycle: p -> q -> p"),
    ],
)
def test_config_errors_name_file_line_and_field(tmp_path: Path, calc: str, why: str, where: str) -> None:
    points = [*MODBUS_POINTS, {"id": "p", "calc": calc, "quantity": "active_power", "unit": "W"},
              {"id": "q", "calc": "p", "quantity": "active_power", "unit": "W"}]  # fmt: skip
    path = site_file(tmp_path, [modbus_device(points)])
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    issue = exc.value.issues[0]
    calc_line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if f"calc: {calc}" in text)
    assert (issue.file, issue.line, issue.path) == (str(path), calc_line, f"devices[0].{where}")
    assert why in issue.message


def test_a_calc_point_has_no_address_or_scaling(tmp_path: Path) -> None:
    points = [*MODBUS_POINTS, {"id": "p", "calc": "p_abs", "address": 9, "quantity": "active_power", "unit": "W"},
              {"id": "q", "calc": "p_abs", "scale": 2, "quantity": "active_power", "unit": "W"}]  # fmt: skip
    with pytest.raises(ConfigError) as exc:
        load_config(site_file(tmp_path, [modbus_device(points)]))
    messages = [(i.path, i.message) for i in exc.value.issues]
    assert ("devices[0].points[4].address", "Extra inputs are not permitted") in messages
    assert any("cannot have scale" in m for _, m in messages)


@pytest.mark.slow
async def test_signed_power_end_to_end(tmp_path: Path, broker: Mosquitto, collector: Collector) -> None:
    """The daemon polls a magnitude and a sign word from the Modbus twin and publishes the signed power."""
    twin_cls = DRIVERS["modbus"].twin_class
    async with twin_cls.create(points=MODBUS_POINTS) as twin:
        device = {"id": "m1", **twin.device_config(), "interval": "200ms", "timeout": "500ms", "points": [
            *MODBUS_POINTS, *CALC_POINTS]}  # fmt: skip
        daemon = Daemon(site_file(tmp_path, [device], mqtt={"url": broker.url}), tmp_path)
        await daemon.start()
        try:
            got = await collector.wait_for(lambda: collector.latest("m1", "p"), what="the signed power")
            assert (got["value"], got["quality"], got["unit"]) == (-12340, "good", "W")
            twin.set_value("sign_word", 0)
            await collector.wait_for(
                lambda: (r := collector.latest("m1", "p")) is not None and r["value"] == 12340, what="a positive power"
            )
            v12 = collector.latest("m1", "v12")
            assert v12 is not None and v12["value"] == pytest.approx(230 * math.sqrt(3))
            meta = await collector.wait_for(lambda: collector.on("/m1/meta"), what="the meta message")
            assert "p" in {p["id"] for p in meta[-1].json()["points"]}
        finally:
            assert await daemon.stop() == 0
