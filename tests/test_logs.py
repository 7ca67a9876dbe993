"""Library log noise: one line, no traceback, repeats counted."""

from __future__ import annotations

import logging

from gateway.logs import LibraryNoise


def record(msg: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord("bacpypes3.ipv4", logging.ERROR, __file__, 1, msg, None, exc_info)


def test_tracebacks_become_one_line_and_repeats_are_counted() -> None:
    f = LibraryNoise(period=60.0)
    first = record("error processing incoming PDU", ValueError("only version 1"))
    assert f.filter(first)
    assert first.exc_info is None and "ValueError: only version 1" in first.getMessage()
    assert not f.filter(record("error processing incoming PDU", ValueError("only version 1")))
    assert not f.filter(record("error processing incoming PDU", ValueError("only version 1")))
    other = record("something else")
    assert f.filter(other)
    f.period = 0.0
    again = record("error processing incoming PDU", ValueError("only version 1"))
    assert f.filter(again)
    assert "[2 more like this in the last minute]" in again.getMessage()
