"""Small persistent per-device state (cursors, counters) kept across restarts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

#: HA mode: the key that versions a device's state, so the newest copy wins at a takeover.
VERSION_KEY = "_ha_version"


class StateMirror(Protocol):
    """HA: where a device's committed state is copied (the broker, gateway/ha.py)."""

    def stamp(self, previous: Any) -> Any:
        """The version of the state about to be written, given the one it replaces."""

    def publish(self, data: dict[str, Any]) -> None:
        """Called after each durable local write with the whole state, version included."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file so that a crash leaves either the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class StateStore:
    """A JSON object in one file; `commit()` changes it and writes it atomically and durably.

    The core owns when state becomes durable (gateway/driver.py, "State a driver must keep").
    In-memory when `path` is None (tests, `edgegw read`).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._data: dict[str, Any] = {}
        self._dirty = False
        self.mirror: StateMirror | None = None
        if path is not None and path.exists():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(loaded, dict):
                    self._data = loaded
            except (OSError, ValueError):
                # A damaged state file costs its cursors, not the start: the drivers fall back
                # to their defaults (and DLMS re-reads the profile range it keeps).
                self._data = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        if self._data.get(key) != value:
            self._data[key] = value
            self._dirty = True

    def commit(self, updates: dict[str, Any]) -> None:
        """Apply `updates` and make them durable now (an OSError leaves them applied in memory)."""
        for key, value in updates.items():
            self.set(key, value)
        mirror = self.mirror
        if mirror is None or not self._dirty:
            self.flush()
            return
        self._data[VERSION_KEY] = mirror.stamp(self._data.get(VERSION_KEY))
        self.flush()
        mirror.publish(dict(self._data))

    def snapshot(self) -> dict[str, Any]:
        return dict(self._data)

    def replace(self, data: dict[str, Any]) -> None:
        """HA: take a newer copy (from the broker) as this device's state, durably."""
        self._data = dict(data)
        self._dirty = True
        self.flush()

    def flush(self) -> None:
        if not self._dirty or self.path is None:
            self._dirty = False
            return
        atomic_write(self.path, json.dumps(self._data, sort_keys=True).encode())
        self._dirty = False
