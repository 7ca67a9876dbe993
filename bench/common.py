"""What the benchmarks share: a process of twins, the metrics endpoint (and the local broker)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.localbroker import LocalBroker, free_port

__all__ = [
    "REPO",
    "LocalBroker",
    "Rig",
    "free_port",
    "metrics",
    "start_rig",
    "start_twins",
    "stop_run",
    "write_profile",
]

REPO = Path(__file__).resolve().parent.parent


def start_twins(
    devices: int, profile: Path, profile_vars: dict[str, Any], dead_every: int = 0
) -> tuple[subprocess.Popen[bytes], list[dict[str, Any]]]:
    """N twins of `profile` (the registry's twin of its driver) in their own process.

    Returns the process and the device config that reaches each twin; every `dead_every`-th twin
    is stopped once started, so its address is a device nobody serves.
    """
    if os.environ.get("EDGEGW_BENCH_TWINS") == "c":
        if dead_every:
            # Measuring the Python twins instead, unasked, would be worse than stopping.
            raise SystemExit("EDGEGW_BENCH_TWINS=c: the C twins have no dead devices (--dead-every)")
        return start_c_twins(devices, profile, profile_vars)
    cmd = [sys.executable, str(REPO / "bench" / "twins.py"), "--devices", str(devices), "--profile", str(profile)]
    cmd += [f"--var={k}={v}" for k, v in profile_vars.items()] + ["--dead-every", str(dead_every)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=REPO)
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def start_c_twins(
    devices: int, profile: Path, profile_vars: dict[str, Any]
) -> tuple[subprocess.Popen[bytes], list[dict[str, Any]]]:
    """`EDGEGW_BENCH_TWINS=c`: the bench profile's twins from bench/ctwins.c (compiled here), one thread.

    They answer from prepared float32 values, so at saturation the daemon, not the twins, sets
    the pace. Only the float32 bench profile: its points are what they serve.
    """
    if shutil.which("cc") is None:
        raise SystemExit("EDGEGW_BENCH_TWINS=c needs a C compiler as `cc` (Debian: apt-get install gcc)")
    binary = profile.parent / "ctwins"
    subprocess.run(["cc", "-O2", "-o", str(binary), str(REPO / "bench" / "ctwins.c"), "-lm"], check=True)
    proc = subprocess.Popen([str(binary), str(devices)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    ports = json.loads(proc.stdout.readline())
    configs = [
        {
            "driver": "modbus",
            "profile": str(profile),
            "profile_vars": profile_vars,
            "tcp": {"host": "127.0.0.1", "port": port},
            "unit": 1,
        }
        for port in ports
    ]
    return proc, configs


def write_profile(work: Path, points: int) -> Path:
    """A profile of `points` float32 currents at addresses 0, 2, 4, ..."""
    path = work / "bench-profile.yaml"
    path.write_text(
        f"profile: bench\ndriver: modbus\nvars: {{points: {points}}}\npoints:\n"
        "  - repeat: {i: [0, '{points - 1}']}\n    points:\n"
        "      - {id: 'p{i}', address: '{2*i}', type: float32, quantity: current, unit: A, circuit: '{i}'}\n"
    )
    return path


async def stop_run(daemon: subprocess.Popen[bytes], consumer: asyncio.Task[Any] | None, wait: float = 20.0) -> None:
    """End a measured run: the daemon gets SIGTERM (and `wait` seconds to drain), the consumer is cancelled."""
    daemon.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        daemon.wait(wait)
    if consumer is not None:
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await consumer


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


@dataclass
class Rig:
    """Twins, a broker and the ports the daemon will use, in one temporary folder."""

    work: Path
    twins: subprocess.Popen[bytes]
    configs: list[dict[str, Any]]  # what reaches each twin (Twin.device_config())
    broker: LocalBroker
    health_port: int
    profile: Path
    points: int

    def devices(self, interval: float, timeout: str, inline: bool = False) -> str:
        """The `devices:` entries, one per twin (JSON is YAML's flow style).

        With `inline`, each device lists the profile's points itself instead of naming the profile:
        the config shape of a site that writes its points out, which must cost no more memory.
        """
        out = []
        for i, cfg in enumerate(self.configs):
            entry = {"id": f"dev{i:03d}", **cfg, "interval": interval, "timeout": timeout}
            if inline:
                entry.pop("profile", None)
                entry.pop("profile_vars", None)
                entry["points"] = self.inline_points()
            out.append(f"  - {json.dumps(entry)}\n")
        return "".join(out)

    def inline_points(self) -> list[dict[str, Any]]:
        """The bench profile's points written out, as a site without profiles would write them."""
        return [
            {"id": f"p{i}", "address": 2 * i, "type": "float32", "quantity": "current", "unit": "A", "circuit": str(i)}
            for i in range(self.points)
        ]

    def start_daemon(self, config_text: str) -> subprocess.Popen[bytes]:
        cfg = self.work / "gateway.yaml"
        cfg.write_text(config_text)
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(cfg)],
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL,
            stderr=open(self.work / "daemon.log", "wb"),
        )

    async def stop(self) -> None:
        self.twins.terminate()
        self.twins.wait(10)
        await self.broker.stop()


async def start_rig(prefix: str, devices: int, points: int, dead_every: int = 0) -> Rig:
    """`devices` twins of the bench profile (`points` float32s); every `dead_every`-th is not served."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    profile = write_profile(work, points)
    # The twins take ephemeral ports: start them before picking ours, or they may take ours.
    twins, configs = start_twins(devices, profile, {"points": points}, dead_every)
    broker = LocalBroker(work, free_port())
    await broker.start()
    return Rig(work, twins, configs, broker, free_port(), profile, points)
