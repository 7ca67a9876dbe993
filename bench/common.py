"""What the benchmarks share: a private broker, a process of twins, the metrics endpoint."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(conf: Path, port: int) -> subprocess.Popen[bytes]:
    """mosquitto on 127.0.0.1:port with no persistence and no queue limits; returns once it listens."""
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n")
    proc = subprocess.Popen(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start")


def start_twins(devices: int, points: int) -> tuple[subprocess.Popen[bytes], list[int]]:
    """N Modbus TCP twins x P float32 points in their own process; returns it and the ports."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "twins.py"), "--devices", str(devices), "--points", str(points)],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def write_profile(work: Path, points: int) -> Path:
    """A profile of `points` float32 currents at addresses 0, 2, 4, ..."""
    path = work / "bench-profile.yaml"
    path.write_text(
        f"profile: bench\ndriver: modbus\nvars: {{points: {points}}}\npoints:\n"
        "  - repeat: {i: [0, '{points - 1}']}\n    points:\n"
        "      - {id: 'p{i}', address: '{2*i}', type: float32, quantity: current, unit: A, circuit: '{i}'}\n"
    )
    return path


async def metrics(port: int) -> dict[str, float]:
    """The daemon's /metrics, summed over labels."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    out: dict[str, float] = {}
    for line in data.decode().splitlines():
        if line.startswith("edgegw_") and " " in line:
            name, value = line.rsplit(" ", 1)
            base = name.split("{", 1)[0]
            out[base] = out.get(base, 0.0) + float(value)
    return out
