"""Fuzzing the config loader and the profile expressions: nothing escapes but the documented errors."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, load_config_text, parse_config
from gateway.profiles import evaluate

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["modbus", "dlms", "bacnet", "snmp", "5s", "1.2.3.4"]),
)
keys = st.sampled_from(
    [
        "site",
        "mqtt",
        "devices",
        "buses",
        "buffer",
        "id",
        "driver",
        "points",
        "tcp",
        "host",
        "port",
        "unit",
        "interval",
        "address",
        "type",
        "quantity",
        "profile",
        "url",
        "serial",
        "bus",
        "obis",
        "oid",
        "object",
        "repeat",
        "x",
    ]
)
trees = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=25,
)

DEVICE = {"id": "d", "driver": "modbus", "tcp": {"host": "127.0.0.1", "port": 502}}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees)
def test_any_structure_is_valid_or_a_config_error(data: Any) -> None:
    try:
        parse_config(data, "fuzz.yaml", None)
    except ConfigError as exc:
        assert exc.issues and all(str(i) for i in exc.issues)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, trees, max_size=6))
def test_any_device_mapping_is_valid_or_a_config_error(extra: dict[str, Any]) -> None:
    try:
        parse_config({"site": "s", "devices": [{**DEVICE, **extra}]}, "fuzz.yaml", None)
    except ConfigError as exc:
        assert exc.issues


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_valid_or_a_config_error(text: str) -> None:
    try:
        load_config_text(text, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.issues


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="0123456789+-*/%()[]<>=! abnif,.'L_", max_size=30))
@example("-''")  # a sign on text: TypeError once
@example("1<'a'")  # an order between a number and text
@example("+[1]")
def test_expressions_raise_only_value_error(expr: str) -> None:
    with contextlib.suppress(ValueError):
        evaluate(expr, {"n": 3, "a": 1, "b": 2})
