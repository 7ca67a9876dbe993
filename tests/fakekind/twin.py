"""The fake kind's twin, and the definition of its protocol (the twin is the protocol's reference).

One request per line, one reply per line, ASCII, over TCP:

* ``READ r1 r2 ...`` -> ``VALUES v1 v2 ...``: one decimal number per register, ``?`` for a register
  the device does not have.
* ``WRITE r v`` -> ``OK`` (the twin remembers the write and shows ``v`` from then on), or
  ``ERR <why>``.
* anything else -> ``ERR bad request``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

from gateway.profiles import expand, load_profile, resolve_profile_path
from gateway.twin import DemoDevice, Signal, Twin, TwinClock, Write, check_sim, faulty_reply, signal_for
from tests.fakekind import KIND
from tests.fakekind.config import FakePoint


def _points_of(
    profile: str | Path | None, points: Sequence[Mapping[str, Any]] | None, vars: Mapping[str, Any] | None
) -> list[FakePoint]:
    """The twin's points: the profile's (expanded with its vars) overridden by inline points, by id."""
    raw: dict[str, dict[str, Any]] = {}
    env: dict[str, Any] = dict(vars or {})
    if profile is not None:
        path = profile if isinstance(profile, Path) else resolve_profile_path(profile, KIND)
        loaded = load_profile(path)
        unknown = set(env) - set(loaded.vars)
        if unknown:
            raise ValueError(f"unknown profile variable(s) {sorted(unknown)}; {loaded.name} has: {sorted(loaded.vars)}")
        env = {**loaded.vars, **env}
        raw = {str(p.get("id")): dict(p) for p, _file, _line in expand(loaded.points, env)}
    for p, _file, _line in expand(list(points or ()), env):
        pid = str(p.get("id"))
        raw[pid] = {**raw.get(pid, {}), **p}
    out = [FakePoint.model_validate(p) for p in raw.values()]
    for point in out:
        check_sim(point.sim, FakeTwin.sim_extras)
    return out


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    return repr(float(value)) if isinstance(value, float) else str(value)


class FakeTwin(Twin):
    """A device of the fake line protocol: one TCP listener, any number of connections."""

    kind: ClassVar[str] = KIND
    default_profile: ClassVar[str] = "fake-meter"
    default_vars: ClassVar[Mapping[str, Any]] = {"channels": 2}
    demo: ClassVar[Sequence[DemoDevice]] = (
        DemoDevice(
            id="fake-1",
            profile="fake-meter",
            vars={"channels": 3},
            config={"interval": "1s", "timeout": "500ms"},
            show=("mains.voltage", "ch1.current", "energy"),
        ),
    )

    def __init__(
        self,
        points: Sequence[FakePoint],
        *,
        profile: str | Path | None = None,
        vars: Mapping[str, Any] | None = None,
        inline: Sequence[Mapping[str, Any]] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        clock: TwinClock | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__(clock=clock, seed=seed)
        self.profile = profile
        self.vars = dict(vars or {})
        self.inline = [dict(p) for p in inline]
        self.host = host
        self.port = port
        self.points = list(points)
        self._by_register = {p.reg: p for p in self.points}
        self._signals: dict[str, Signal] = {
            p.id: signal_for(p.sim, quantity=p.quantity, phase=p.phase, kind=p.kind.value, name=p.id, rng=self.rng)
            for p in self.points
        }
        self._pinned: dict[str, float] = {}
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    @classmethod
    def create(
        cls,
        profile: str | Path | None = None,
        *,
        points: Sequence[Mapping[str, Any]] | None = None,
        vars: Mapping[str, Any] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        **options: Any,
    ) -> Self:
        clock = options.pop("clock", None)
        seed = options.pop("seed", 0)
        if options:
            raise TypeError(f"the fake twin has no option(s) {sorted(options)}")
        resolved = _points_of(profile, points, vars)
        if not resolved:
            raise ValueError("a fake twin needs a profile or points")
        return cls(
            resolved, profile=profile, vars=vars, inline=points or (), host=host, port=port, clock=clock, seed=seed
        )

    async def start(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._handlers):
            task.cancel()
        for task in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await server.wait_closed()

    def device_config(self, target: Hashable | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"driver": KIND, "host": "127.0.0.1" if self.host == "0.0.0.0" else self.host}
        out["port"] = self.port
        if self.profile is not None:
            out["profile"] = str(self.profile)
            if self.vars:
                out["profile_vars"] = dict(self.vars)
        if self.inline:
            out["points"] = [dict(p) for p in self.inline]
        return out

    def describe(self) -> str:
        what = self.profile if self.profile is not None else "inline points"
        return f"fake twin of {what} ({len(self.points)} points) on tcp {self.host}:{self.port}"

    def value(self, point: str, target: Hashable | None = None) -> Any:
        if point in self._pinned:
            return self._pinned[point]
        return self._signals[point].at(self.clock.elapsed())

    def set_value(self, point: str, value: Any, target: Hashable | None = None) -> None:
        if point not in self._signals:
            raise KeyError(f"the twin has no point {point!r}")
        self._pinned[point] = value

    # -- the protocol --------------------------------------------------------------------------

    def answer(self, line: bytes) -> bytes:
        """The reply to one request line (without faults)."""
        words = line.decode("ascii", "replace").split()
        if words and words[0] == "READ":
            values = [_text(self.value(self._by_register[r].id)) if r in self._by_register else "?" for r in words[1:]]
            return ("VALUES " + " ".join(values) + "\n").encode()
        if len(words) == 3 and words[0] == "WRITE":
            point = self._by_register.get(words[1])
            if point is None:
                return b"ERR unknown register\n"
            try:
                value = float(words[2])
            except ValueError:
                return b"ERR not a number\n"
            self.set_value(point.id, value)
            self.record_write(Write(point=point.id, value=value, raw=words[2]))
            return b"OK\n"
        return b"ERR bad request\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            while line := await reader.readline():
                reply = faulty_reply(self.faults.of(None), self.answer(line), self.rng)
                if reply.data is None:
                    continue
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                writer.write(reply.data)
                await writer.drain()
                if reply.close:
                    break
        except (ConnectionError, ValueError):  # a peer gone, or a line longer than the stream limit
            pass
        finally:
            writer.close()
            if task is not None:
                self._handlers.discard(task)
