"""One object for equal immutable values built per device: a thousand devices of one model share them.

Drivers and the normaliser compile per-device tables at start (request items, decoders, sentinel
sets); most are equal from device to device. Interning keeps the first and drops the copies. The
cache is bounded, so reload after reload of changing configs cannot grow it without end; an entry
that falls out only costs sharing, never correctness (the values are immutable).
"""

from __future__ import annotations

import functools
from collections.abc import Hashable
from typing import TypeVar

T = TypeVar("T", bound=Hashable)


@functools.lru_cache(maxsize=16384)
def _first(value: Hashable) -> Hashable:
    return value


def interned(value: T) -> T:
    """The first value equal to `value` seen (of the last 16 384 distinct ones), else `value` itself."""
    return _first(value)  # type: ignore[return-value]
