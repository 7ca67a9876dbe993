"""The docs list the whole point vocabulary, so a profile writer can rely on them."""

from __future__ import annotations

from pathlib import Path

from gateway.points import QUANTITIES

DOC = Path(__file__).resolve().parent.parent / "docs" / "profiles.md"


def test_every_quantity_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = sorted(q for q in QUANTITIES if f"`{q}`" not in text)
    assert not missing, f"docs/profiles.md does not list {missing}"
