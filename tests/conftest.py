"""Fixtures shared by the end-to-end tests: a real broker and a collector subscribed to it."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness import Collector, Mosquitto, serial_line

# A config without state_dir keeps its state in the user's state folder (gateway/config.py,
# default_state_dir): for every test and every daemon it starts, that is a throwaway folder,
# never the real home or a systemd state folder.
os.environ.pop("STATE_DIRECTORY", None)
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="edgegw-test-state-")
atexit.register(shutil.rmtree, os.environ["XDG_STATE_HOME"], True)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    b = Mosquitto(tmp_path)
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


@pytest.fixture
async def collector(broker: Mosquitto) -> AsyncIterator[Collector]:
    c = Collector(broker.port)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


@pytest.fixture
async def line(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """Two pty ends joined by socat: (device side, gateway side)."""
    async with serial_line(tmp_path) as ends:
        yield ends
