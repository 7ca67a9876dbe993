"""What the benchmarks share: a process of twins, the metrics endpoint (and the local broker)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from gateway.localbroker import LocalBroker, free_port

__all__ = ["REPO", "LocalBroker", "free_port", "metrics", "start_twins", "write_profile"]

REPO = Path(__file__).resolve().parent.parent


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
