"""Micro-benchmark of the hot path per point, in one process and without a network.

One Modbus device of 100 float32 points (the bench profile of `modbus_load.py`), built from a
config exactly as the daemon builds it, goes through the real objects of each stage:

    link       ModbusLink.read: MBAP request and reply parsing, the future, the timeout handle
               (a transport in the process answers each request with a prepared reply)
    decode     BlockDecoder.decode_into of the 200-byte reply
    normalize  Normalizer.normalize of the decoded values
    encode     Batch.encode (the JSON data message)
    mqtt       the publish of that message at QoS 1 into paho's queue and a socket pair, the
               PUBACK read back (publish_qos1 and AckReader, as the publisher does)
    poll       DeviceRunner._poll_once: all of the above through the driver, the runner, the
               publisher's submit_batch and _launch (the scheduler's tick is not in it)

Wall-clock figures are printed in ns per point, but on a shared machine they drift by tens of
percent. `--callgrind` counts instructions instead (valgrind; repeatable whatever else runs): it
runs this script under callgrind once per stage and once with no iterations, and reports the
difference per point.

    python bench/hotpath.py                         # ns per point, every stage
    python bench/hotpath.py --callgrind             # instructions per point, every stage
    python bench/hotpath.py --values constant       # values that repeat between polls
    python bench/hotpath.py --values decimal        # values a device made from decimals (229.27)

Under callgrind a run takes a minute or two (the imports are most of it); the stages' runs go two
at a time (`--jobs`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import write_profile

STAGES = ("link", "decode", "normalize", "encode", "mqtt", "poll")
REPLIES = 64  # distinct replies cycled through: values change at every poll (as the twins' do)


def reply_data(points: int, k: int, values: str) -> bytes:
    """The data bytes of reply number k: `points` big-endian float32s."""
    if values == "constant":
        k = 0
    if values == "decimal":
        # Values a device made from decimals (229.27 V), as many meters do.
        floats = [round(200 + 0.01 * ((i * 37 + k * 11) % 9000), 2) for i in range(points)]
    else:
        # The twins' sine: an arbitrary float32 at every poll.
        floats = [40 + 40 * math.sin(2 * math.pi * (1000 + k * 0.01) / 300 + i) for i in range(points)]
    return struct.pack(f">{points}f", *floats)


class _Transport:
    """Answers each request frame at once (next turn of the loop) with the next prepared reply."""

    def __init__(self, link: Any, replies: list[bytes]) -> None:
        self.link = link
        self.replies = replies
        self.n = 0
        self.loop = asyncio.get_running_loop()

    def is_closing(self) -> bool:
        return False

    def write(self, frame: bytes) -> None:
        data = self.replies[self.n % len(self.replies)]
        self.n += 1
        pdu = bytes((3, len(data))) + data
        reply = frame[:4] + struct.pack(">HB", len(pdu) + 1, frame[6]) + pdu
        self.loop.call_soon(self.link._on_data, self.link._protocol, reply)

    def close(self) -> None:
        pass


class _Paho:
    """A paho client on one end of a socket pair, 'connected'; the other end plays the broker."""

    def __init__(self, coalesce: bool) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench")
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.client.max_inflight_messages_set(200)  # as the daemon's (aiomqtt passes max_inflight)
        self.client._sock = a
        self.client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED  # type: ignore[attr-defined]
        self.broker = b
        self.acked = 0
        self.client.on_publish = self._on_publish
        # What aiomqtt does: paho asks for a writer callback instead of writing at once.
        self.client.on_socket_register_write = lambda c, u, sock: None
        self.client.on_socket_unregister_write = lambda c, u, sock: None
        self.buf = bytearray()
        self.coalesce: Callable[[Any], None] | None = None
        if coalesce:
            try:
                from gateway.publish import coalesce as join_packets

                self.coalesce = join_packets
            except ImportError:  # a commit before issue 13: one send per message
                pass

    def _on_publish(self, c: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self.acked += 1

    def broker_turn(self) -> None:
        """Write what the client queued, PUBACK every PUBLISH in it, and let the client read them.

        As in the daemon, paho only queues packets (aiomqtt registers a writer instead of paho
        writing at once); the queue goes out when the socket is writable, here now.
        """
        if self.coalesce is not None:
            self.coalesce(self.client)
        self.client.loop_write()
        while True:
            try:
                chunk = self.broker.recv(1 << 20)
            except BlockingIOError:
                break
            self.buf += chunk
        acks = bytearray()
        buf = self.buf
        pos = 0
        while pos + 2 <= len(buf):
            mult, length, i = 1, 0, pos + 1
            while True:
                byte = buf[i]
                length += (byte & 127) * mult
                mult *= 128
                i += 1
                if byte < 128:
                    break
            if i + length > len(buf):
                break
            if buf[pos] & 0xF0 == 0x30 and buf[pos] & 0x06:
                tlen = (buf[i] << 8) | buf[i + 1]
                mid = buf[i + 2 + tlen : i + 4 + tlen]
                acks += b"\x40\x02" + mid
            pos = i + length
        del buf[:pos]
        if acks:
            self.broker.sendall(acks)
            while self.client._sock is not None:
                before = self.acked
                self.client.loop_read()
                if self.acked == before:
                    break


async def _build(points: int, values: str, work: Path, coalesce: bool) -> dict[str, Any]:
    from drivers.modbus.client import ModbusLink, TcpEndpoint
    from gateway.app import build_driver, bus_for
    from gateway.config import load_config_text
    from gateway.logs import get as get_log
    from gateway.scheduler import DeviceRunner
    from gateway.state import StateStore

    profile = write_profile(work, points)
    text = (
        "site: bench\nmqtt: {url: 'mqtt://127.0.0.1:1883', max_inflight: 200}\n"
        "log: {level: warning}\ndevices:\n"
        f"  - {{id: dev000, driver: modbus, tcp: {{host: 127.0.0.1, port: 1502}}, unit: 1,"
        f" profile: {profile}, profile_vars: {{points: {points}}}, interval: 1, timeout: 1s}}\n"
    )
    cfg = load_config_text(text, base_dir=work)
    device = cfg.devices[0]
    _key, bus = bus_for(device, cfg)
    log = get_log(site="bench")
    state = StateStore(None)
    images = [reply_data(points, k, values) for k in range(REPLIES)]
    paho = _Paho(coalesce)
    sent = [0]

    def sink(batch: Any, on_done: Callable[[], None] | None) -> None:
        publisher.submit_batch(batch, on_done)
        msg = publisher._next_live()
        assert msg is not None
        publisher._launch(client, msg)
        sent[0] += 1
        if sent[0] % 32 == 0:
            paho.broker_turn()

    from gateway.publish import Publisher

    publisher = Publisher(cfg.mqtt, cfg.site, cfg.buffer, None, log)
    publisher.connected = True
    client = type("AiomqttLike", (), {"_client": paho.client})()

    def on_publish(c: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        publisher._on_puback(mid)
        paho._on_publish(c, userdata, mid, reason, properties)

    paho.client.on_publish = on_publish
    try:
        from gateway.publish import AckReader
    except ImportError:  # before it: every PUBACK through paho's parser and callback
        pass
    else:

        def acked(mid: int) -> bool:
            # The publisher's messages (stage poll) and the bench's own (stage mqtt) alike.
            publisher._acked(mid)
            paho.acked += 1
            return True

        AckReader(paho.client, acked, publisher._acks_done)
    runner = DeviceRunner(
        device, lambda pts: build_driver(device, bus, state, None, log, pts), sink, lambda d, s: None, log
    )
    await runner.driver.start()
    driver: Any = runner.driver
    link = ModbusLink(TcpEndpoint("127.0.0.1", 1502))
    link._protocol = object()  # type: ignore[assignment]
    driver._link = link
    compiled = driver._compiled_plan()
    # The replies of each poll's requests (100 float32s are two reads of 100 registers), in order.
    polls = [[image[2 * rd.start : 2 * (rd.start + rd.count)] for rd in compiled.reads] for image in images]
    link._transport = _Transport(link, [data for poll in polls for data in poll])  # type: ignore[assignment]
    return {
        "runner": runner,
        "link": link,
        "reads": compiled.reads,
        "replies": polls,
        "paho": paho,
        "template": compiled.template,
    }


def _inputs(ctx: dict[str, Any]) -> None:
    """Each stage's input, made once (outside the measured laps)."""
    from gateway.driver import RawReadings

    if "decoded" in ctx:
        return
    norm = ctx["runner"].normalizer
    decoded = ctx["decoded"] = []
    for poll in ctx["replies"]:
        values = list(ctx["template"])
        for rd, data in zip(ctx["reads"], poll, strict=True):
            rd.decoder.decode_into(data, values)
        decoded.append(values)
    ctx["batches"] = [norm.normalize(RawReadings(v), 1_700_000_000_000 + k) for k, v in enumerate(decoded)]
    ctx["payloads"] = [b.encode(k) for k, b in enumerate(ctx["batches"])]


async def _link(iterations: int, ctx: dict[str, Any]) -> None:
    link = ctx["link"]
    for _ in range(iterations):
        for rd in ctx["reads"]:
            await link.read(rd.unit, rd.code, rd.start, rd.count, 1.0)


async def _decode(iterations: int, ctx: dict[str, Any]) -> None:
    template, reads, replies = ctx["template"], ctx["reads"], ctx["replies"]
    for k in range(iterations):
        values = list(template)
        for rd, data in zip(reads, replies[k % len(replies)], strict=True):
            rd.decoder.decode_into(data, values)


async def _normalize(iterations: int, ctx: dict[str, Any]) -> None:
    from gateway.driver import RawReadings

    norm, decoded = ctx["runner"].normalizer, ctx["decoded"]
    for k in range(iterations):
        norm.normalize(RawReadings(decoded[k % len(decoded)]), 1_700_000_000_000 + k)


async def _encode(iterations: int, ctx: dict[str, Any]) -> None:
    batches = ctx["batches"]
    for k in range(iterations):
        batches[k % len(batches)].encode(k)


async def _mqtt(iterations: int, ctx: dict[str, Any]) -> None:
    paho, payloads = ctx["paho"], ctx["payloads"]
    client = paho.client
    try:
        from gateway.publish import publish_qos1  # what the publisher calls for a QoS 1 message
    except ImportError:  # before it: paho's publish

        def publish_qos1(paho: Any, topic: str, payload: bytes, retain: bool) -> tuple[int, int]:
            info = paho.publish(topic, payload, 1, retain)
            return info.rc, info.mid

    for k in range(iterations):
        publish_qos1(client, "edgegw/bench/dev000/data", payloads[k % len(payloads)], False)
        if k % 32 == 31:
            paho.broker_turn()
    paho.broker_turn()


async def _poll(iterations: int, ctx: dict[str, Any]) -> None:
    poll = ctx["runner"]._poll_once
    for _ in range(iterations):
        await poll()
    ctx["paho"].broker_turn()


_STAGES = {"link": _link, "decode": _decode, "normalize": _normalize, "encode": _encode, "mqtt": _mqtt, "poll": _poll}


async def _stage(name: str, iterations: int, ctx: dict[str, Any]) -> None:
    _inputs(ctx)
    await _STAGES[name](iterations, ctx)


def run_inprocess(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="edgegw-hotpath-"))

    async def main() -> dict[str, Any]:
        ctx = await _build(args.points, args.values, work, not args.no_coalesce)
        out: dict[str, Any] = {}
        stages = [args.stage] if args.stage else list(STAGES)
        if args.child:
            # Under callgrind: every stage warms up in every run, so that one run with no measured
            # laps is the baseline of all stages.
            for name in STAGES:
                await _stage(name, 50, ctx)
        for name in stages:
            if not args.child:
                await _stage(name, 50, ctx)  # warm-up
            if args.iterations == 0:
                continue
            t0 = time.perf_counter_ns()
            await _stage(name, args.iterations, ctx)
            dt = time.perf_counter_ns() - t0
            out[name] = round(dt / args.iterations / args.points, 1)
        return out

    try:
        import uvloop

        return uvloop.run(main())
    except ImportError:
        return asyncio.run(main())
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


_COLLECTED = re.compile(r"Collected : (\d+)")


def callgrind_count(extra: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="edgegw-cg-") as tmp:
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={tmp}/cg.out",
            sys.executable,
            __file__,
            *extra,
        ]
        proc = subprocess.run(
            cmd, check=False, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"}
        )
        m = _COLLECTED.search(proc.stderr)
        if proc.returncode != 0 or m is None:
            raise SystemExit(f"callgrind failed: {proc.stderr[-2000:]}")
        return int(m.group(1))


def run_callgrind(args: argparse.Namespace) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    base = ["--child", "--points", str(args.points), "--values", args.values]
    if args.no_coalesce:
        base.append("--no-coalesce")
    stages = [args.stage] if args.stage else list(STAGES)
    # Setup and the warm-up laps are the same in every run; only the measured laps differ.
    runs = [[*base, "--iterations", "0"]] + [
        [*base, "--stage", s, "--iterations", str(args.iterations)] for s in stages
    ]
    with ThreadPoolExecutor(args.jobs) as pool:
        zero, *counts = pool.map(callgrind_count, runs)
    return {s: round((c - zero) / args.iterations / args.points) for s, c in zip(stages, counts, strict=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--iterations", type=int, default=None, help="polls per stage (default 2000, 300 under callgrind)")
    ap.add_argument("--stage", choices=STAGES)
    ap.add_argument("--values", choices=("changing", "constant", "decimal"), default="changing")
    ap.add_argument("--callgrind", action="store_true", help="count instructions per point under valgrind")
    ap.add_argument("--jobs", type=int, default=2, help="valgrind runs at once (with --callgrind)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-coalesce", action="store_true", help="one socket write per MQTT packet (as before issue 13)")
    args = ap.parse_args()
    if args.iterations is None:
        args.iterations = 300 if args.callgrind else 2000
    if args.callgrind:
        result = {"instructions_per_point": run_callgrind(args)}
    else:
        result = {"ns_per_point": run_inprocess(args)}
    result.update(points=args.points, iterations=args.iterations, values=args.values)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
