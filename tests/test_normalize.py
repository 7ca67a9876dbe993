"""Normalisation: scaling exactly, exponents from registers and from the protocol, sentinels, quality."""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from gateway.driver import PointError, Pushed, RawReadings
from gateway.models import PointConfig
from gateway.normalize import Normalizer, counter_delta, scale_exact
from gateway.points import Quality


def pt(pid: str, **kw: object) -> PointConfig:
    base: dict[str, object] = {"id": pid, "quantity": "current", "unit": "A"}
    base.update(kw)
    return PointConfig.model_validate(base)


def test_exact_decimal_scaling_has_no_float_artefacts() -> None:
    n = Normalizer("d", [pt("e", unit="Wh", quantity="active_energy_import", scale=0.1)])
    batch = n.normalize(RawReadings([1234567]), 0)
    assert batch.values == [123456.7]
    assert scale_exact(1234567, 1, 1, -1) == 123456.7


def test_protocol_exponent_is_applied_exactly() -> None:
    n = Normalizer("d", [pt("e", unit="Wh", quantity="active_energy_import")])
    batch = n.normalize(RawReadings([1234567], exponents=[-1]), 0)
    assert batch.values == [123456.7]


def test_exponent_from_another_register() -> None:
    points = [pt("scale", quantity="scale", unit="", publish=False), pt("i", exponent_point="scale")]
    n = Normalizer("d", points)
    batch = n.normalize(RawReadings([-1, 10]), 5)
    assert batch.values == [1.0]  # the BCPME's worked example: raw 10 with scale -1 -> 1.0 A
    assert batch.qualities == ["good"]
    bad = n.normalize(RawReadings([PointError("timeout"), 10]), 5)
    assert bad.values == [None] and bad.qualities == ["bad"] and bad.errors == ["scale register unavailable"]


def test_sentinels_become_bad_never_a_number() -> None:
    points = [pt("i16", invalid=[-32768]), pt("f", invalid=["nan"]), pt("g")]
    n = Normalizer("d", points)
    batch = n.normalize(RawReadings([-32768, math.nan, math.inf]), 1)
    assert batch.values == [None, None, None]
    assert batch.qualities == ["bad", "bad", "bad"]
    payload = json.loads(batch.encode(7))
    assert [r["value"] for r in payload["readings"]] == [None, None, None]


def test_offset_and_scale() -> None:
    n = Normalizer("d", [pt("t", quantity="temperature", unit="degC", scale=0.1, offset=-40)])
    assert n.normalize(RawReadings([650]), 0).values == [25.0]


def test_point_error_and_device_quality() -> None:
    n = Normalizer("d", [pt("a"), pt("b"), pt("c")])
    raw = RawReadings([PointError("illegal address"), 5, 6], qualities=[None, Quality.UNCERTAIN, Quality.BAD])
    batch = n.normalize(raw, 0)
    assert batch.qualities == ["bad", "uncertain", "bad"]
    assert batch.values == [None, 5, None]
    assert batch.errors[0] == "illegal address"


def test_unpublished_points_are_not_in_the_message() -> None:
    n = Normalizer("d", [pt("hidden", publish=False), pt("shown")])
    msg = json.loads(n.normalize(RawReadings([1, 2]), 3).encode(1))
    assert [r["point"] for r in msg["readings"]] == ["shown"]


def test_series_entries_carry_their_own_timestamps() -> None:
    n = Normalizer("d", [pt("lp", quantity="active_energy_import", unit="Wh")])
    batch = n.normalize(
        RawReadings([PointError("profile column", Quality.BAD)], series=[(0, 10, 1000), (0, 20, 2000)]), 5
    )
    msg = json.loads(batch.encode(1))
    assert [(r["value"], r["ts"]) for r in msg["readings"][1:]] == [(10, 1000), (20, 2000)]


def test_encoding_matches_the_contract() -> None:
    n = Normalizer("dev-1", [pt("a.b", unit="V", quantity="voltage"), pt("s", quantity="status", unit="")])
    msg = json.loads(n.normalize(RawReadings([230.5, 'ok"\n']), 1700000000000).encode(42))
    assert msg == {
        "device": "dev-1",
        "seq": 42,
        "ts": 1700000000000,
        "readings": [
            {"point": "a.b", "value": 230.5, "unit": "V", "quality": "good", "ts": 1700000000000},
            {"point": "s", "value": 'ok"\n', "unit": "", "quality": "good", "ts": 1700000000000},
        ],
    }


@given(
    st.lists(
        st.one_of(
            st.integers(-(2**63), 2**64),
            st.floats(allow_nan=True, allow_infinity=True),
            st.booleans(),
            st.text(max_size=5),
            st.none(),
        ),
        min_size=3,
        max_size=3,
    ),
    st.sampled_from([1.0, 0.1, 0.001, 1000.0, 2.5]),
)
def test_any_raw_value_encodes_to_valid_json(values: list[object], scale: float) -> None:
    n = Normalizer("d", [pt("a", scale=scale), pt("b", invalid=["nan"]), pt("c", offset=1.5)])
    batch = n.normalize(RawReadings(values), 0)  # type: ignore[arg-type]
    msg = json.loads(batch.encode(1))
    assert len(msg["readings"]) == 3
    for r in msg["readings"]:
        assert r["quality"] in ("good", "bad", "uncertain")
        if r["quality"] != "good":
            assert r["value"] is None


def test_pushed_values_carry_the_device_quality() -> None:
    n = Normalizer("d", [pt("a"), pt("b")])
    batch = n.normalize_pushed([Pushed(0, 1.5, 1000, Quality.UNCERTAIN), Pushed(1, 2.5)], 2000, None)
    assert batch.qualities == ["uncertain", "good"]
    assert batch.values == [1.5, 2.5]
    assert batch.stamps == [1000, 2000]


def test_no_value_publishes_nothing() -> None:
    from gateway.driver import NO_VALUE

    n = Normalizer("d", [pt("a"), pt("b")])
    batch = n.normalize(RawReadings([NO_VALUE, 2.0], series=[(0, NO_VALUE, 5)]), 1)
    assert batch.index == [1] and batch.values == [2.0]


def rate_point(bits: int, **kw: object) -> PointConfig:
    return PointConfig.model_validate(
        {"id": "r", "quantity": "traffic", "unit": "", "rate": "per_second", "counter_bits": bits, **kw}
    )


def rates(n: Normalizer, samples: list[tuple[int, int]]) -> list[tuple[object, str]]:
    """(value, quality) of each (raw counter, ts ms) sample in turn."""
    out: list[tuple[object, str]] = []
    for raw, ts in samples:
        b = n.normalize(RawReadings([raw]), ts)
        out.append((b.values[0], b.qualities[0]))
    return out


def test_rate_of_a_32_bit_counter_across_a_wrap() -> None:
    n = Normalizer("d", [rate_point(32)])
    got = rates(n, [(2**32 - 1000, 0), (2**32 - 500, 1000), (100, 2000)])
    assert got[0] == (None, "uncertain")  # first sample: no rate yet
    assert got[1] == (500.0, "good")
    assert got[2] == (600.0, "good")  # wrapped once: 500 to the top, 100 after it


def test_a_counter_reset_gives_no_spike_and_the_rate_restarts() -> None:
    for bits in (32, 64):
        n = Normalizer("d", [rate_point(bits)])
        top = 2**bits - 10_000 if bits == 32 else 3 * 10**12
        got = rates(n, [(top - 2000, 0), (top - 1000, 1000), (50, 2000), (150, 3000)])
        assert got[1] == (1000.0, "good")
        assert got[2] == (None, "uncertain"), bits  # a device restart, not 4 billion counts
        assert got[3] == (100.0, "good")


def test_rate_scales_and_has_units() -> None:
    n = Normalizer("d", [rate_point(64, scale=8, rate="per_minute")])  # octets -> bits per minute
    got = rates(n, [(0, 0), (1000, 60_000)])
    assert got[1] == (8000.0, "good")


def test_rate_needs_a_counter_of_known_width() -> None:
    import pydantic
    import pytest

    with pytest.raises(pydantic.ValidationError, match="known width"):
        PointConfig.model_validate({"id": "r", "quantity": "traffic", "rate": "per_second"})
    with pytest.raises(pydantic.ValidationError, match="a rate is a gauge"):
        PointConfig.model_validate(
            {"id": "r", "quantity": "traffic", "rate": True, "counter_bits": 32, "kind": "counter"}
        )


@given(st.sampled_from([16, 32, 64]), st.data())
def test_counter_delta_is_exact_for_plausible_growth(bits: int, data: st.DataObject) -> None:
    previous = data.draw(st.integers(0, 2**bits - 1))
    delta = data.draw(st.integers(0, 2 ** (bits - 1) - 1))
    # With no rate known yet, anything under half the range is growth, wrapped or not.
    assert counter_delta(previous, (previous + delta) % 2**bits, bits, None, 1000) == delta
    # With a rate known, growth up to four times that rate is growth.
    assert counter_delta(previous, (previous + delta) % 2**bits, bits, delta / 1000, 1000) == delta


@given(st.sampled_from([32, 64]), st.integers(1, 10**6), st.data())
def test_counter_delta_calls_an_implausible_drop_a_reset(bits: int, rate: int, data: st.DataObject) -> None:
    previous = data.draw(st.integers(10 * rate + 1, 2**bits - 4 * rate - 2))
    current = data.draw(st.integers(0, previous - 1))
    # Falling back and then climbing past the top within one second needs more than 4x the rate.
    assert counter_delta(previous, current, bits, rate / 1000, 1000) is None


def test_a_repeated_float_prints_as_when_it_was_new() -> None:
    """The encoder remembers each point's last float text; what it writes must not depend on that."""
    from drivers.modbus.config import ModbusPoint

    n = Normalizer("d", [ModbusPoint.model_validate({"id": "f", "address": 0, "type": "float32", "quantity": "other"})])
    f32 = 101.19999694824219  # 101.2 as a float32
    seen = []
    for raw in (f32, f32, 0.0, -0.0, -0.0, 0.0, 7.5, f32):
        fresh = Normalizer("d", n.points).normalize(RawReadings([raw]), 1).encode(1)
        seen.append(n.normalize(RawReadings([raw]), 1).encode(1))
        assert seen[-1] == fresh, raw
    assert [json.loads(m)["readings"][0]["value"] for m in seen] == [101.2, 101.2, 0, -0.0, -0.0, 0, 7.5, 101.2]
