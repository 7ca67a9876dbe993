"""The YAML loader: the values of yaml.safe_load, a line for every key and item, and no node graph."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import load_config_text
from gateway.yamlload import LineDict, LineList, YamlError, load_text

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted(
    p
    for pattern in ("config/*.yaml", "drivers/*/profiles/*.yaml", "drivers/*/sample.yaml", "tests/coverage/*.yaml")
    for p in REPO.glob(pattern)
)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_file_loads_as_safe_load_reads_it(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert load_text(text, str(path)) == yaml.safe_load(text)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["yes", "no", "on", "0x1F", "0o17", "1e3", ".inf", "~", "2024-01-02", "12:30", "<<"]),
)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(documents, st.booleans())
def test_values_match_safe_load(data: Any, flow: bool) -> None:
    text = yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True)
    assert load_text(text, "doc.yaml") == yaml.safe_load(text)


def test_lines_of_keys_and_items() -> None:
    text = "site: a\nmqtt:\n  url: x\ndevices:\n  - id: d1\n    points: [{id: p}]\n  - id: d2\n"
    data = load_text(text, "f.yaml")
    assert isinstance(data, LineDict) and data.file == "f.yaml"
    assert data.lines == {"site": 1, "mqtt": 2, "devices": 4}
    assert data["mqtt"].line == 3 and data["mqtt"].lines == {"url": 3}
    devices = data["devices"]
    assert isinstance(devices, LineList) and devices.lines == [5, 7]
    assert devices[0].lines == {"id": 5, "points": 6} and devices[0]["points"].lines == [6]


def test_a_duplicate_key_names_its_line() -> None:
    with pytest.raises(YamlError) as err:
        load_text("a: 1\nb: 2\na: 3\n", "f.yaml")
    assert err.value.line == 3 and "duplicate key 'a'" in err.value.message


def test_anchors_aliases_and_merge_keys() -> None:
    text = (
        "base: &base {interval: 1s, timeout: 2s}\n"
        "more: &more {timeout: 9s, tags: {a: b}}\n"
        "dev:\n"
        "  <<: [*base, *more]\n"
        "  timeout: 5s\n"
        "same: *base\n"
    )
    data = load_text(text, "f.yaml")
    # Written keys win over merged ones, and the first merged mapping over the next.
    assert data["dev"] == {"interval": "1s", "timeout": "5s", "tags": {"a": "b"}}
    assert data["dev"] == yaml.safe_load(text)["dev"]
    assert data["dev"].lines["timeout"] == 5 and data["dev"].lines["interval"] == 1
    assert data["same"] is data["base"]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a: *nowhere\n", 1, "undefined alias"),
        ("a: 1\n---\nb: 2\n", 2, "single document"),
        ("a:\n  b: !custom x\n", 2, "could not determine a constructor"),
        ("a: !!set {x}\n", 1, "not supported"),
        ("a: [1, 2\n", 2, ""),
        ("x:\n  <<: 3\n", 2, "merge key"),
    ],
)
def test_errors_name_their_line(text: str, line: int, message: str) -> None:
    with pytest.raises(YamlError) as err:
        load_text(text, "f.yaml")
    assert err.value.line == line and message in err.value.message


def test_explicit_tags_and_empty_documents() -> None:
    assert load_text("a: !!str 123\nb: !!float 1\nc: '7'\n", "f") == {"a": "123", "b": 1.0, "c": "7"}
    assert load_text("", "f") is None
    assert load_text("# only a comment\n", "f") is None


def test_no_node_graph_is_built() -> None:
    """The load's peak stays near what it returns: PyYAML's composer held ~5x that in nodes and marks."""
    text = "points:\n" + "".join(
        f"  - {{id: p{i}.current, address: {2 * i}, type: float32, quantity: current, unit: A}}\n" for i in range(2000)
    )
    load_text(text, "warm-up")
    tracemalloc.start()
    try:
        data = load_text(text, "f.yaml")
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(data["points"]) == 2000
    assert peak < 2 * kept, (kept, peak)


def test_devices_with_the_same_points_share_them() -> None:
    point = "{id: p1, address: 0, type: float32, quantity: current, unit: A}"
    text = (
        "site: s\nstate_dir: memory\ndevices:\n"
        f"  - {{id: a, driver: modbus, tcp: {{host: 127.0.0.1}}, points: [{point}]}}\n"
        f"  - {{id: b, driver: modbus, tcp: {{host: 127.0.0.2}}, points: [{point}]}}\n"
        "  - {id: c, driver: modbus, tcp: {host: 127.0.0.3},"
        " points: [{id: p1, address: 2, type: float32, quantity: current, unit: A}]}\n"
    )
    a, b, c = load_config_text(text).devices
    assert a.resolved_points[0] is b.resolved_points[0]
    assert c.resolved_points[0] is not a.resolved_points[0] and c.resolved_points[0].id == "p1"
    # The written mappings are not kept once validated: the points live on as the models.
    assert a.points == [] and b.points == []


def test_key_lines_of_flow_block_and_irregular_mappings() -> None:
    data = load_text(
        "flow: {a: 1, b: 2}\nblock:\n  a: 1\n  b: 2\n  c: 3\ngaps:\n  a: 1\n\n  b: 2\nmerged:\n  <<: {m: 1}\n  a: 2\n",
        "t.yaml",
    )
    assert data["flow"].line == 1 and data["flow"].lines == {"a": 1, "b": 1}
    assert data["block"].lines == {"a": 3, "b": 4, "c": 5}
    assert data["gaps"].lines == {"a": 7, "b": 9}
    assert data["merged"].lines == {"a": 12, "m": 11}
    # What asks for the lines may write to them too (the profile merge does).
    data["block"].lines["d"] = 9
    assert data["block"].lines["d"] == 9 and data["block"].lines["a"] == 3
