"""Real parts for the end-to-end tests: a mosquitto broker, an MQTT collector, the daemon as a process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from gateway.localbroker import LocalBroker, wait_port

__all__ = ["Collector", "Daemon", "Mosquitto", "TcpProxy", "free_port", "running", "serial_line", "wait_port"]

REPO = Path(__file__).resolve().parent.parent


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nobody listens on right now (127.0.0.1)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def serial_line(folder: Path) -> AsyncIterator[tuple[str, str]]:
    """An RS-485 line stand-in: two pseudo-terminals joined by socat, (device side, gateway side)."""
    a, b = folder / "tty-device", folder / "tty-gateway"
    proc = await asyncio.create_subprocess_exec(
        "socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 5.0
        while not (a.exists() and b.exists()):
            if time.monotonic() > deadline:
                raise TimeoutError("socat did not create the pty pair")
            await asyncio.sleep(0.02)
        yield str(a), str(b)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 5.0)


# The tests' broker is the demo's: one way to run a private mosquitto.
Mosquitto = LocalBroker


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Collector:
    """Subscribes to a topic filter and keeps everything that arrives."""

    port: int
    topic: str = "#"
    messages: list[Received] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 10.0)

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, identifier=f"collector-{id(self)}") as client:
                    await client.subscribe(self.topic, qos=1)
                    self._ready.set()
                    async for msg in client.messages:
                        payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload).encode()
                        self.messages.append(Received(str(msg.topic), payload, bool(msg.retain)))
                        self._changed.set()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def on(self, suffix: str) -> list[Received]:
        return [m for m in self.messages if m.topic.endswith(suffix)]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
        """Wait until predicate() is truthy (re-checked on every message); fail with `what` after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                topics = sorted({m.topic for m in self.messages})
                raise AssertionError(
                    f"timed out waiting for {what}; got {len(self.messages)} messages on {topics[:20]}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.25))
            # Let the messages that follow in a burst arrive before checking again: a predicate that
            # scans everything received, re-run per message, falls behind a busy daemon on a loaded
            # machine (the Sparkplug NDEATH flake), and the check would time out on unread messages.
            await asyncio.sleep(0.02)

    def data(self, device: str) -> list[dict[str, Any]]:
        return [m.json() for m in self.messages if m.topic.endswith(f"/{device}/data")]

    def latest(self, device: str, point: str) -> dict[str, Any] | None:
        for msg in reversed(self.data(device)):
            for r in msg["readings"]:
                if r["point"] == point:
                    return r  # type: ignore[no-any-return]
        return None


class Daemon:
    """`edgegw run` as a child process, the way systemd runs it."""

    def __init__(self, config: Path, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.workdir = workdir
        self.env = env or {}
        self.proc: asyncio.subprocess.Process | None = None
        self.log_path = workdir / f"daemon-{int(time.time() * 1000)}.log"

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env.update({"PYTHONUNBUFFERED": "1", **self.env})
        self._log = open(self.log_path, "wb")  # noqa: SIM115, ASYNC230 - closed in wait(); a local file
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            "run",
            "--config",
            str(self.config),
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=str(REPO),
        )

    async def signal(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    async def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        finally:
            self._log.close()
        return code

    async def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not stop in time."""
        if self.proc is None:
            return 0
        if self.proc.returncode is not None:
            return self.proc.returncode
        await self.signal(signal.SIGTERM)
        try:
            return await self.wait(timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"daemon did not stop on SIGTERM; log: {self.output()[-2000:]}") from None

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()
        self._log.close()

    def output(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


class TcpProxy:
    """A loopback TCP relay the test can stall (hold every byte, both ways) or cut.

    Stalled, the peers stay connected and see nothing: a broker that stopped acknowledging
    without dropping the connection. What was held is forwarded on `resume()`, or lost with the
    connection when a peer goes away.
    """

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        """Close every relayed connection now (new ones are still accepted)."""
        for writer in list(self._writers):
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst, (writer, up_writer)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, pair: tuple[asyncio.StreamWriter, ...]
    ) -> None:
        held = b""
        try:
            while data := await src.read(65536):
                held += data
                await self._flowing.wait()
                if dst.is_closing():
                    return  # cut while stalled: what was held is lost with the connection
                dst.write(held)
                held = b""
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in pair:
                w.close()
                self._writers.discard(w)


@contextlib.asynccontextmanager
async def running(cfg: Path, tmp: Path) -> AsyncIterator[Daemon]:
    """The daemon on `cfg`, started, and stopped (SIGTERM) at the end unless the test already ended it."""
    d = Daemon(cfg, tmp)
    await d.start()
    try:
        yield d
    finally:
        if d.proc is not None and d.proc.returncode is None:
            await d.stop()
