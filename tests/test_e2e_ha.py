"""A hot-standby pair end to end: two daemons, one `ha` group, a real mosquitto, a Modbus twin.

- exactly one instance polls; kill -9 of the active: the standby polls within max(3 intervals,
  10 s), `seq` never repeats per device, `instance` in the data changes, no reading is lost
  beyond the takeover window;
- split brain: the active's broker connection goes through a proxy the test cuts (and refuses
  reconnects through): the standby takes over after the will; the cut-off active keeps polling
  into its disk buffer; once the proxy lets it back, it sees the newer epoch, stops polling,
  drains its buffer (its instance, seq numbers no one else used) and stands by; its live
  publishing after the reconnect ends within one keep-alive.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest
import yaml

from gateway.registry import DRIVERS
from tests.harness import Collector, Daemon, Mosquitto, TcpProxy, free_port

if TYPE_CHECKING:
    from drivers.modbus.twin import ModbusTwin

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

POINTS = [{"id": "v", "address": 0, "type": "float32", "quantity": "voltage", "unit": "V"}]
DEVICES = ("m1", "m2")
BOUND_MS = 10_000  # max(3 x 1 s, 10 s)
KEEPALIVE = 4.0  # what an HA config without mqtt.keepalive gets with 1 s devices


class Partition(TcpProxy):
    """A proxy that can also refuse new connections: the box's cable is out, not just one session."""

    down = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.close()
            return
        await super()._accept(reader, writer)


def data_of(collector: Collector, device: str) -> list[dict[str, Any]]:
    return collector.data(device)


def assert_no_seq_repeated(collector: Collector) -> None:
    """No `seq` names two different messages; the same message twice is QoS 1 doing its job.

    A publish the broker got whose PUBACK the cut swallowed is sent again after the reconnect
    (docs/mqtt.md: at least once, `seq` makes the copy recognisable).
    """
    for dev in DEVICES:
        bodies: dict[int, set[bytes]] = {}
        for m in collector.messages:
            if m.topic.endswith(f"/{dev}/data"):
                bodies.setdefault(m.json()["seq"], set()).add(m.payload)
        repeated = {s: len(b) for s, b in bodies.items() if len(b) > 1}
        assert not repeated, f"{dev}: seq names different messages {repeated}"


async def active_instance(collector: Collector) -> str:
    def holder() -> str | None:
        got = {m["instance"] for dev in DEVICES for m in collector.data(dev)[-3:]}
        return got.pop() if len(got) == 1 and all(len(collector.data(d)) >= 3 for d in DEVICES) else None

    return str(await collector.wait_for(holder, timeout=30, what="data from one instance for every device"))


async def test_kill_minus_9_of_the_active_the_standby_takes_over(
    tmp_path: Path, broker: Mosquitto, collector: Collector
) -> None:
    twin_cls = cast("type[ModbusTwin]", DRIVERS["modbus"].twin_class)
    async with twin_cls.create(points=POINTS, units=[1, 2]) as twin:
        devices = [{"id": f"m{u}", **twin.device_config(u), "interval": "1s", "timeout": "500ms"} for u in (1, 2)]
        # One config for both boxes: the instance name and the state folder come from the environment.
        cfg = tmp_path / "site.yaml"
        body = {"site": "lab", "mqtt": {"url": broker.url}, "ha": {"group": "g1"}, "devices": devices}
        cfg.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
        daemons: dict[str, Daemon] = {}
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            env = {"EDGEGW_INSTANCE": name, "XDG_STATE_HOME": str(tmp_path / name / "state")}
            daemons[name] = Daemon(cfg, tmp_path / name, env=env)
            await daemons[name].start()
        try:
            active = await active_instance(collector)
            standby = "b" if active == "a" else "a"
            # Exactly one polls: only its data, and one connection to the shared endpoint.
            mark = {d: len(collector.data(d)) for d in DEVICES}
            await collector.wait_for(
                lambda: all(len(collector.data(d)) >= mark[d] + 3 for d in DEVICES), what="more polls"
            )
            assert {m["instance"] for d in DEVICES for m in collector.data(d)} == {active}
            assert twin.connections == 1
            lease = collector.on("/ha/g1/lease")[-1].json()
            assert lease["holder"] == active

            killed_ms = int(time.time() * 1000)
            await daemons[active].kill()

            def taken_over() -> bool:
                return all(any(m["instance"] == standby for m in collector.data(d)) for d in DEVICES)

            await collector.wait_for(taken_over, timeout=BOUND_MS / 1000 + 5, what="the standby's data")
            for dev in DEVICES:
                msgs = collector.data(dev)
                first_new = next(m for m in msgs if m["instance"] == standby)
                last_old = max(m["ts"] for m in msgs if m["instance"] == active)
                assert first_new["ts"] - killed_ms <= BOUND_MS, f"{dev}: takeover took {first_new['ts'] - killed_ms} ms"
                # Readings lost only between the last poll of the dead box and the first of the new one.
                assert first_new["ts"] - last_old <= BOUND_MS + 1000
                assert first_new["seq"] > max(m["seq"] for m in msgs if m["instance"] == active)
            assert_no_seq_repeated(collector)
            new_lease = collector.on("/ha/g1/lease")[-1].json()
            assert new_lease["holder"] == standby and new_lease["epoch"] > lease["epoch"]
            member = [m.json() for m in collector.on(f"/ha/g1/member/{active}")][-1]
            assert member["state"] == "offline"
            status = collector.on("/lab/gateway/status")[-1].json()
            assert status["role"] == "active" and status["instance"] == standby
            # Who is active is said before that instance's first data (its devices poll at once).
            order = [m.topic for m in collector.messages if _announces(m, standby)]
            assert order[0].endswith("/gateway/status"), order[:3]
            mark = {d: len(collector.data(d)) for d in DEVICES}
            await collector.wait_for(lambda: all(len(collector.data(d)) >= mark[d] + 2 for d in DEVICES), what="polls")
            assert_no_seq_repeated(collector)
        finally:
            for d in daemons.values():
                if d.proc is not None and d.proc.returncode is None:
                    await d.stop()


@pytest.mark.parametrize("how", ["closed", "silent"])
async def test_split_brain_the_cut_off_active_drains_and_stands_by(
    tmp_path: Path, broker: Mosquitto, collector: Collector, how: str
) -> None:
    """`closed`: the connection is reset (the will fires at once); `silent`: packets vanish, as
    with a pulled cable (the broker fires the will after 1.5 x keep-alive)."""
    twin_cls = cast("type[ModbusTwin]", DRIVERS["modbus"].twin_class)
    proxy = Partition(broker.port)
    await proxy.start()
    async with twin_cls.create(points=POINTS, units=[1, 2]) as twin:
        devices = [{"id": f"m{u}", **twin.device_config(u), "interval": "1s", "timeout": "500ms"} for u in (1, 2)]
        daemons: dict[str, Daemon] = {}
        metrics: dict[str, int] = {}
        for name, port in (("a", proxy.port), ("b", broker.port)):
            folder = tmp_path / name
            folder.mkdir()
            metrics[name] = free_port()
            body = {
                "site": "lab",
                "mqtt": {"url": f"mqtt://127.0.0.1:{port}", "reconnect_max": "1s"},
                "ha": {"group": "g1", "instance": name},
                "state_dir": str(folder / "state"),
                "buffer": {"path": str(folder / "buffer")},
                "health": {"listen": f"127.0.0.1:{metrics[name]}"},
                "devices": devices,
            }
            cfg = folder / "site.yaml"
            cfg.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
            daemons[name] = Daemon(cfg, folder)
        try:
            await daemons["a"].start()
            assert await active_instance(collector) == "a"
            await daemons["b"].start()
            await collector.wait_for(
                lambda: any(m.json().get("role") == "standby" for m in collector.on("/ha/g1/member/b")),
                what="b standing by",
            )
            assert "edgegw_ha_role{" in await scrape(metrics["a"])
            assert 'edgegw_ha_role{role="active",instance="a",group="g1"} 1.0' in await scrape(metrics["a"])

            proxy.down = True
            if how == "closed":
                proxy.cut()
            else:
                proxy.stall()
            cut_ms = int(time.time() * 1000)
            await collector.wait_for(
                lambda: all(any(m["instance"] == "b" for m in collector.data(d)) for d in DEVICES),
                timeout=15,
                what="b taking over",
            )
            took_ms = min(m["ts"] for d in DEVICES for m in collector.data(d) if m["instance"] == "b") - cut_ms
            assert took_ms <= BOUND_MS
            # Both poll now (a cannot know it is cut off, and what it reads is real): let a buffer a few.
            await collector.wait_for(
                lambda: sum(1 for m in collector.data("m1") if m["instance"] == "b") >= 4, what="b polling"
            )
            assert twin.connections == 2
            restored_ms = int(time.time() * 1000)
            proxy.down = False
            proxy.resume()

            def drained() -> bool:
                # a's polls of the partition arrive (from its disk buffer), and it polls no more.
                return all(
                    any(m["instance"] == "a" and m["ts"] > cut_ms + 2000 for m in collector.data(d)) for d in DEVICES
                )

            await collector.wait_for(drained, timeout=30, what="a's buffered data")
            await collector.wait_for(
                lambda: any(m.json().get("role") == "standby" for m in collector.on("/ha/g1/member/a")),
                what="a standing by",
            )
            await collector.wait_for(lambda: twin.connections == 1, what="a's driver disconnected")
            # Overlap once both are connected: from a's reconnect (its member `online` again) to its last poll.
            back_ms = min(
                m.json()["since"]
                for m in collector.on("/ha/g1/member/a")
                if m.json()["state"] == "online" and m.json()["since"] >= restored_ms
            )
            last_a = max(m["ts"] for d in DEVICES for m in collector.data(d) if m["instance"] == "a")
            assert last_a - back_ms <= KEEPALIVE * 1000, f"a polled {last_a - back_ms} ms after it was back"
            for dev in DEVICES:
                msgs = collector.data(dev)
                a_seqs = {m["seq"] for m in msgs if m["instance"] == "a"}
                b_seqs = {m["seq"] for m in msgs if m["instance"] == "b"}
                assert not a_seqs & b_seqs
                assert max(a_seqs) < min(b_seqs), "b must count above everything a may use"
            assert_no_seq_repeated(collector)
            text = await scrape(metrics["a"])
            assert 'edgegw_ha_role{role="standby",instance="a",group="g1"} 1.0' in text
            # b goes on alone (a's backlog may still be arriving: its readings are older).
            later = back_ms + int(KEEPALIVE * 1000)
            await collector.wait_for(
                lambda: sum(1 for m in collector.data("m1") if m["ts"] > later) >= 2, what="b polling on"
            )
            assert {m["instance"] for m in collector.data("m1") if m["ts"] > later} == {"b"}
        finally:
            for d in daemons.values():
                if d.proc is not None and d.proc.returncode is None:
                    await d.stop()
            await proxy.stop()


async def scrape(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5.0)
    writer.close()
    return data.decode()


QUARTER_MS = 15 * 60 * 1000
PROFILE_POINT = "load_profile.active_import"


async def test_a_dlms_profile_cursor_survives_a_takeover_without_a_hole(
    tmp_path: Path, broker: Mosquitto, collector: Collector
) -> None:
    """The standby takes the active's profile cursor from the broker: it goes on, not over, and leaves no hole."""
    t0 = (int(time.time()) // 900) * 900
    wanted = set(range((t0 - 12 * 3600) * 1000 + QUARTER_MS, t0 * 1000 + 1, QUARTER_MS))

    def stamps(instance: str | None = None) -> list[int]:
        return [
            r["ts"]
            for m in collector.data("m1")
            if instance is None or m["instance"] == instance
            for r in m["readings"]
            if r["point"] == PROFILE_POINT
        ]

    async with DRIVERS["dlms"].twin_class.create("sensemi-sed102", transport="wrapper", start=t0) as twin:
        twin.clock.freeze()  # the backfill has a fixed end
        device = {
            "id": "m1",
            **twin.device_config(),
            "interval": "500ms",
            "timeout": "1s",
            "backfill": "12h",
            "profile_chunk": "15min",
            "profile_chunks_per_poll": 1,
        }
        cfg = tmp_path / "site.yaml"
        body = {"site": "lab", "mqtt": {"url": broker.url}, "ha": {"group": "g1"}, "devices": [device]}
        cfg.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
        daemons: dict[str, Daemon] = {}
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            env = {"EDGEGW_INSTANCE": name, "XDG_STATE_HOME": str(tmp_path / name / "state")}
            daemons[name] = Daemon(cfg, tmp_path / name, env=env)
        try:
            await daemons["a"].start()
            await collector.wait_for(lambda: len(set(stamps("a"))) >= 8, timeout=40, what="a's backfill under way")
            await daemons["b"].start()
            await collector.wait_for(
                lambda: any(m.json().get("role") == "standby" for m in collector.on("/ha/g1/member/b")),
                what="b standing by",
            )
            await collector.wait_for(lambda: collector.on("/ha/g1/state/m1"), what="a's cursor on the broker")
            await daemons["a"].kill()
            await collector.wait_for(lambda: wanted <= set(stamps()), timeout=90, what="the whole backfill")
            by_b = stamps("b")
            assert by_b, "b published no profile entry"
            # b went on from a's cursor (at most what a published after its last stored cursor again).
            assert min(by_b) > min(wanted), "b started the backfill over"
            assert len(by_b) < len(wanted)
            got = sorted(t for t in set(stamps()) if t >= min(wanted))
            assert all(b - a == QUARTER_MS for a, b in itertools.pairwise(got)), "a hole in the profile"
            assert_no_seq_repeated_for(collector, "m1")
        finally:
            for d in daemons.values():
                if d.proc is not None and d.proc.returncode is None:
                    await d.stop()


def assert_no_seq_repeated_for(collector: Collector, device: str) -> None:
    counts = Counter(m["seq"] for m in collector.data(device))
    assert not {s: n for s, n in counts.items() if n > 1}


async def test_a_holder_whose_retained_online_is_a_leftover_is_asked_then_replaced(
    tmp_path: Path, broker: Mosquitto, collector: Collector
) -> None:
    """A broker that restarted while the active died keeps its `online` and never fires its will."""
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="ghost-maker") as client:
        lease = {"holder": "ghost", "epoch": 5, "since": 1}
        await client.publish("edgegw/lab/ha/g1/lease", json.dumps(lease).encode(), qos=1, retain=True)
        member = {"state": "online", "role": "active", "instance": "ghost"}
        await client.publish("edgegw/lab/ha/g1/member/ghost", json.dumps(member).encode(), qos=1, retain=True)
    twin_cls = cast("type[ModbusTwin]", DRIVERS["modbus"].twin_class)
    async with twin_cls.create(points=POINTS, units=[1]) as twin:
        device = {"id": "m1", **twin.device_config(1), "interval": "1s", "timeout": "500ms"}
        cfg = tmp_path / "site.yaml"
        body = {"site": "lab", "mqtt": {"url": broker.url}, "state_dir": str(tmp_path / "state")}
        cfg.write_text(
            yaml.safe_dump({**body, "ha": {"group": "g1", "instance": "b"}, "devices": [device]}), encoding="utf-8"
        )
        daemon = Daemon(cfg, tmp_path)
        started = time.monotonic()
        await daemon.start()
        try:
            await collector.wait_for(lambda: collector.data("m1"), timeout=20, what="b polling")
            assert time.monotonic() - started < 15
            assert collector.data("m1")[0]["instance"] == "b"
            assert collector.on("/ha/g1/lease")[-1].json()["epoch"] == 6
            assert "the lease holder does not answer" in daemon.output()
        finally:
            await daemon.stop()


def _announces(m: Any, instance: str) -> bool:
    """A status message naming `instance` active, or a data message of `instance`."""
    if m.topic.endswith("/gateway/status"):
        return bool(m.json().get("instance") == instance and m.json().get("role") == "active")
    return bool(m.topic.endswith("/data") and m.json().get("instance") == instance)
