"""structlog set-up: JSON lines for journald, readable lines on a terminal."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def setup(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    """Configure structlog and route the libraries' stdlib logging through it.

    Every line on the stream has one shape, ours or a library's (paho/aiomqtt, pysnmp,
    bacpypes3, pymodbus, asyncio, gurux, Python warnings): the same renderer and the same keys
    (`event`, `level`, `timestamp`), plus `logger` (the library's logger name) for a library's.
    """
    stream = stream or sys.stderr
    json_lines = fmt == "json" or (fmt == "auto" and not stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    tail: list[Any] = [structlog.processors.format_exc_info, renderer] if json_lines else [renderer]
    structlog.configure(
        processors=[*shared, *tail],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Libraries log through stdlib logging: keep their warnings, drop their chatter, and render
    # them as ours, so that a journal of JSON lines has no plain-text line in the middle.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
        )
    )
    if level != "debug":
        handler.addFilter(LibraryNoise())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if level != "debug" else logging.INFO)
    for noisy in ("pymodbus", "bacpypes3", "pysnmp", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.ERROR if level != "debug" else logging.WARNING)
    # A library's warnings.warn() (a deprecation in pysnmp, say) would otherwise print plain text.
    logging.captureWarnings(True)


class LibraryNoise(logging.Filter):
    """One line per library complaint, and not the same one more than once a minute.

    A malformed datagram from the network makes bacpypes3 log an error with a traceback; a noisy
    or hostile network would otherwise flood the journal. The traceback goes (the exception's
    type and text stay on the line) and repeats are counted into the next line that gets through.
    """

    def __init__(self, period: float = 60.0) -> None:
        super().__init__()
        self.period = period
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        key = (record.name, str(record.msg)[:200])
        now = time.monotonic()
        last, suppressed = self._last.get(key, (0.0, 0))
        if last and now - last < self.period:
            self._last[key] = (last, suppressed + 1)
            return False
        if suppressed:
            record.msg = f"{record.getMessage()} [{suppressed} more like this in the last minute]"
            record.args = None
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = (now, 0)
        return True


def get(**bind: Any) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger("edgegw").bind(**bind)  # type: ignore[no-any-return]
