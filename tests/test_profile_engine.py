"""The profile engine: repeat blocks, expressions, errors with lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.profiles import ProfileError, evaluate, expand, load_profile


def test_expressions() -> None:
    env = {"n": 5, "unit": 1}
    assert evaluate("2252 + 2*(n-1)", env) == 2260
    assert evaluate("['L1','L2','L3'][(n-1)//2 % 3]", env) == "L3"
    assert evaluate("unit + 1 if n > 3 else unit", env) == 2
    with pytest.raises(ValueError, match="unknown variable"):
        evaluate("m + 1", env)
    with pytest.raises(ValueError, match="unsupported"):
        evaluate("__import__('os')", env)
    with pytest.raises(ValueError):
        evaluate("2 ** 1000", env)


def test_repeat_nested_and_typed(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(
        "driver: modbus\nvars: {panels: 2}\npoints:\n"
        "  - {id: top, address: 1, quantity: frequency, unit: Hz}\n"
        "  - repeat: {p: [1, panels], n: [1, 3]}\n"
        "    points:\n"
        "      - {id: 'panel{p}.ch{n}.current', address: '{100*p + n}', unit_id: '{unit + p - 1}', circuit: '{n}'}\n",
        encoding="utf-8",
    )
    prof = load_profile(f)
    pts = list(expand(prof.points, {**prof.vars, "unit": 1}))
    assert len(pts) == 7
    point, file, line = pts[-1]
    assert point["id"] == "panel2.ch3.current" and point["address"] == 203 and point["unit_id"] == 2
    assert point["circuit"] == 3
    assert file == str(f) and line == 7


def test_bad_repeat_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("driver: modbus\npoints:\n  - repeat: {n: [1, nope]}\n    points: [{id: 'x{n}'}]\n", encoding="utf-8")
    with pytest.raises(ProfileError) as exc:
        list(expand(load_profile(f).points, {}))
    assert exc.value.line == 3 and "nope" in exc.value.message


def test_a_profile_is_parsed_once_and_again_when_it_changes(tmp_path: Path) -> None:
    import os

    f = tmp_path / "p.yaml"
    f.write_text("driver: modbus\nvars: {n: 1}\npoints: []\n", encoding="utf-8")
    first = load_profile(f)
    assert load_profile(f) is first  # a hundred devices on one profile: one parse
    f.write_text("driver: modbus\nvars: {n: 22}\npoints: []\n", encoding="utf-8")
    os.utime(f, ns=(first_ns := f.stat().st_mtime_ns + 10**9, first_ns))
    assert load_profile(f).vars == {"n": 22}  # an edited profile is read again (reload)
