"""Pure parts of commands: request parsing, limits, engineering -> raw (exact), arguments, the rate limit."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.commands import Rejected, TokenBucket, check_args, check_limits, parse_request, same_raw, to_raw
from gateway.driver import RawReadings
from gateway.models import ActionConfig, PointConfig
from gateway.normalize import Normalizer

SCALES = st.sampled_from([1, 0.1, 0.01, 0.001, 10, 1000, 0.5, 0.25, 2.5])
OFFSETS = st.sampled_from([0, -40, 273.15, 1.5])


def point(**kw: Any) -> PointConfig:
    return PointConfig.model_validate({"id": "p", "quantity": "other", "writable": True, **kw})


@given(st.integers(-(2**31), 2**31 - 1), SCALES, OFFSETS, st.integers(-3, 3))
def test_an_integer_register_round_trips_exactly(raw: int, scale: float, offset: float, exponent: int) -> None:
    """Engineering value of a raw integer, back to raw: the same integer, whatever the scaling."""
    p = point(scale=scale, offset=offset)
    n = Normalizer("d", [p])
    value = n.normalize(RawReadings([raw], exponents=[exponent]), 0).values[0]
    # The published value is a float (or int); its shortest repr is what a caller sends back.
    assert to_raw(p, float(repr(value)) if isinstance(value, float) else value, 0, exponent) == raw


@given(st.floats(width=32, allow_nan=False, allow_infinity=False), SCALES)
def test_a_float32_register_round_trips_to_the_nearest_float32(raw: float, scale: float) -> None:
    p = point(scale=scale)
    value = Normalizer("d", [p]).normalize(RawReadings([raw]), 0).values[0]
    assert isinstance(value, float)
    back = to_raw(p, value, 0.0)
    assert isinstance(back, float) and same_raw(back, raw)
    assert struct.unpack("f", struct.pack("f", back))[0] == raw


def test_a_value_an_integer_register_cannot_hold_names_the_nearest() -> None:
    with pytest.raises(Rejected, match=r"not representable; the nearest value is 21\.3"):
        to_raw(point(scale=0.1), 21.34, 0)
    assert to_raw(point(scale=0.1), 21.3, 0) == 213
    assert to_raw(point(), True, False) is True and to_raw(point(), "on", "off") == "on"
    with pytest.raises(Rejected, match="true or false"):
        to_raw(point(), 1, False)
    with pytest.raises(Rejected, match="a number is expected"):
        to_raw(point(), "20", 0)
    assert to_raw(point(), "Hall A", None) == "Hall A"  # never read yet: the value's own type
    assert to_raw(point(), None, 0) is None  # relinquish


def test_limits() -> None:
    p = point(min=5, max=35, step=0.5)
    check_limits(p, 5)
    check_limits(p, 20.5)
    for bad, why in ((4.5, "below the minimum"), (35.5, "above the maximum"), (20.2, "multiple of the step")):
        with pytest.raises(Rejected, match=why):
            check_limits(p, bad)
    e = point(enum=[0, 1, 2])
    check_limits(e, 2)
    with pytest.raises(Rejected, match="not one of"):
        check_limits(e, 3)
    with pytest.raises(Rejected, match="not one of"):
        check_limits(e, True)  # true is not 1 here
    with pytest.raises(Rejected, match="finite"):
        check_limits(p, float("nan"))


def test_requests() -> None:
    req = parse_request("d", b'{"id": 7, "point": "p", "value": 1.5, "ts": 1000, "priority": 8}')
    assert (req.id, req.point, req.value, req.ts, req.priority) == ("7", "p", 1.5, 1000, 8)
    act = parse_request("d", b'{"id": "x", "action": "reset", "args": {"n": 1}}')
    assert act.action == "reset" and act.args == {"n": 1}
    for body, why in (
        (b"[1]", "JSON object"),
        (b'{"id": 1}', "either `point`"),
        (b'{"point": "p", "action": "a"}', "either `point`"),
        (b'{"point": "p"}', "value"),
        (b'{"action": "a", "args": [1]}', "`args` is an object"),
        (b'{"action": "a", "extra": 1}', "unknown key"),
        (b'{"action": "a", "priority": 17}', "1-16"),
        (b'{"action": "a", "ts": "now"}', "epoch milliseconds"),
    ):
        with pytest.raises(Rejected, match=why):
            parse_request("d", body)


def test_action_arguments() -> None:
    spec = ActionConfig.model_validate(
        {
            "args": {
                "n": {"type": "integer", "min": 1, "max": 3},
                "at": {"type": "datetime", "required": False},
                "mode": {"type": "string", "default": "soft", "enum": ["soft", "hard"]},
            }
        }
    )
    assert check_args(spec, {"n": 2}) == {"n": 2, "mode": "soft"}
    assert check_args(spec, {"n": 1, "at": "2026-12-01T10:00:00+00:00"})["at"].startswith("2026")
    for args, why in (
        ({}, "required"),
        ({"n": 4}, "above the maximum"),
        ({"n": 1.5}, "whole number"),
        ({"n": 1, "at": "2026-12-01T10:00:00"}, "UTC offset"),
        ({"n": 1, "mode": "x"}, "not one of"),
        ({"n": 1, "x": 1}, "unknown argument"),
    ):
        with pytest.raises(Rejected, match=why):
            check_args(spec, args)


def test_token_bucket() -> None:
    now = [0.0]
    bucket = TokenBucket(2.0, 3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] = 0.5  # one token back
    assert bucket.take() and not bucket.take()


def test_admission_policy() -> None:
    import structlog

    from gateway.commands import Commands, Request
    from gateway.models import DeviceConfig

    def dev(**kw: Any) -> DeviceConfig:
        return DeviceConfig.model_validate({"id": "d", "driver": "x", **kw})

    def req(**kw: Any) -> Request:
        return Request(device="d", point="p", value=1, **kw)

    log = structlog.get_logger("t")
    on = Commands(True, 30.0, 10.0, None, log)
    on.admit(req(), dev())
    for policy, device, why in (
        (Commands(False, 30.0, 10.0, None, log), dev(), "commands are disabled"),
        (on, None, "no device"),
        (on, dev(commands={"enabled": False}), "disabled for d"),
        (Commands(True, 30.0, 10.0, frozenset({"other"}), log), dev(), "disabled for d"),
    ):
        with pytest.raises(Rejected, match=why):
            policy.admit(req(), device)
    with pytest.raises(Rejected, match="stale"):
        on.admit(req(ts=0), dev())
    with pytest.raises(Rejected, match="stale"):
        on.admit(req(expired=True), dev())
