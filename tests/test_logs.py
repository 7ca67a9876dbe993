"""Library log lines: the same structured output as ours, one line, no traceback, repeats counted."""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from gateway import logs
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


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """logs.setup() configures the process; put the test runner's logging back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in ("pymodbus", "bacpypes3", "pysnmp", "asyncio")}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, lvl in noisy.items():
            logging.getLogger(name).setLevel(lvl)
        logging.captureWarnings(False)
        structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.usefixtures("restore_logging")
def test_library_loggers_write_the_same_json_lines_as_ours() -> None:
    stream = io.StringIO()
    logs.setup("info", "json", stream)
    logs.get().error("broker connection lost")
    logging.getLogger("paho.mqtt.client").error("failed to receive on socket: %s", "[Errno 104] Connection reset")
    logging.getLogger("mqtt").error("failed to receive on socket: [Errno 104]")  # aiomqtt's logger for paho
    logging.getLogger("pysnmp").info("chatter")  # below the libraries' level: not written
    ours, paho, aiomqtt = lines(stream)
    assert set(ours) == {"event", "level", "timestamp"}
    assert set(paho) == set(ours) | {"logger"} and set(aiomqtt) == set(ours) | {"logger"}
    assert paho == {
        "event": "failed to receive on socket: [Errno 104] Connection reset",
        "level": "error",
        "timestamp": paho["timestamp"],
        "logger": "paho.mqtt.client",
    }
    assert aiomqtt["logger"] == "mqtt"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", paho["timestamp"]), paho
    assert len(paho["timestamp"]) == len(ours["timestamp"])


@pytest.mark.usefixtures("restore_logging")
def test_library_tracebacks_and_warnings_stay_one_json_line() -> None:
    stream = io.StringIO()
    logs.setup("info", "json", stream)
    try:
        raise ValueError("only version 1")
    except ValueError:
        logging.getLogger("bacpypes3.ipv4").exception("error processing incoming PDU")
    warnings.warn_explicit("old call", UserWarning, "lib.py", 7)
    bacpypes, warned = lines(stream)
    assert bacpypes["event"] == "error processing incoming PDU (ValueError: only version 1)"
    assert bacpypes["logger"] == "bacpypes3.ipv4" and bacpypes["level"] == "error"
    assert warned["logger"] == "py.warnings" and "UserWarning: old call" in warned["event"]
    # At debug level a library's traceback is kept, as ours are: in the line, not after it.
    stream = io.StringIO()
    logs.setup("debug", "json", stream)
    try:
        raise ValueError("kept")
    except ValueError:
        logging.getLogger("bacpypes3.ipv4").exception("error processing incoming PDU")
    [line] = lines(stream)
    assert "ValueError: kept" in line["exception"]
