"""Sparkplug B end to end: the daemon as a process, Modbus twins, a real mosquitto, and an
independent decoder (pysparkplug, built on the Sparkplug B protobuf definition).

Births, data equal to the JSON readings, seq in send order wrapping at 255, rebirth on an NCMD,
historical data after a broker outage in order, NDEATH as the will on kill -9, and the primary
host's STATE gating publishing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

pysparkplug = pytest.importorskip("pysparkplug")
from pysparkplug import DataType, DBirth, DData, Metric, NBirth, NCmd, NDeath  # noqa: E402
from pysparkplug._protobuf import Payload as PbPayload  # noqa: E402

from drivers.modbus.twin import ModbusTwin  # noqa: E402
from tests.harness import Collector, Daemon, Mosquitto, Received, free_port  # noqa: E402
from tests.test_e2e_brokers import Gate  # noqa: E402
from tests.test_e2e_modbus import device_yaml, twin_points  # noqa: E402
from tests.test_faults import metric  # noqa: E402

pytestmark = pytest.mark.slow

DEVICES = ("pdu-1", "pdu-2")
GROUP = "dc"
PUBLISHED = {"mains.voltage_l1", "mains.frequency", "ch1.current", "ch1.energy", "breaker.closed"}


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    # `log_type all` logs connects, takeovers and every will published: what a failure needs.
    b = Mosquitto(tmp_path / "broker", extra="log_type all\n")
    b.workdir.mkdir()
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


@pytest.fixture
async def twin() -> AsyncIterator[ModbusTwin]:
    async with ModbusTwin(twin_points(), units=[1, 2], port=0, update_interval=0.1) as t:
        t.set_value("mains.voltage_l1", 231.5, 1)
        t.set_value("ch1.energy", 45000.0, 1)
        yield t


def write_config(
    tmp: Path, url: str, twin: ModbusTwin, sparkplug: str, interval: str = "100ms", health: int | None = None
) -> Path:
    path = tmp / "site.yaml"
    devices = "".join(device_yaml(dev, twin.port, unit, interval=interval) for unit, dev in enumerate(DEVICES, 1))
    path.write_text(
        f"site: lab\nmqtt: {{url: '{url}', client_id: gw-spb, reconnect_max: 1s, connect_timeout: 1s,"
        f" sparkplug: {sparkplug}}}\nstate_dir: {tmp / 'state'}\nbuffer: {{path: {tmp / 'buffer'}}}\n"
        f"health: {{listen: '127.0.0.1:{health or free_port()}'}}\ndevices:\n{devices}",
        encoding="utf-8",
    )
    return path


class Sparkplug:
    """The Sparkplug messages a collector saw, decoded in arrival order with the births they refer to.

    Each payload is decoded once, when first asked for: `wait_for` re-checks its predicate on every
    message, and decoding the whole history each time made the check cost grow with the run; on a
    loaded machine the collector fell further behind the broker with every message (the NDEATH of a
    kill -9 was published, acknowledged by the collector's client and still not looked at 20 s later).
    """

    def __init__(self, collector: Collector) -> None:
        self.c = collector
        self.decoded = 0  # how many of the collector's messages were looked at
        self._births: dict[str, DBirth] = {}
        self._out: list[tuple[str, str | None, Any]] = []

    def messages(self) -> list[tuple[str, str | None, Any]]:
        """(message type, device, decoded payload) in arrival order; DDATA decoded against its DBIRTH."""
        births, out = self._births, self._out
        while self.decoded < len(self.c.messages):
            m = self.c.messages[self.decoded]
            self.decoded += 1
            parts = m.topic.split("/")
            if parts[0] != "spBv1.0" or parts[1] != GROUP:
                continue
            kind, device = parts[2], (parts[4] if len(parts) > 4 else None)
            assert parts[3] == "lab", m.topic
            if kind == "NBIRTH":
                out.append((kind, None, NBirth.decode(m.payload)))
            elif kind == "NDEATH":
                out.append((kind, None, NDeath.decode(m.payload)))
            elif kind == "DBIRTH":
                assert device is not None
                births[device] = DBirth.decode(m.payload)
                out.append((kind, device, births[device]))
            elif kind == "DDATA":
                assert device is not None
                out.append((kind, device, DData.decode(m.payload, birth=births[device])))
            elif kind == "DDEATH":
                out.append((kind, device, PbPayload.FromString(m.payload)))
        return list(out)

    def of(self, kind: str, device: str | None = None) -> list[Any]:
        return [p for k, d, p in self.messages() if k == kind and (device is None or d == device)]


def test_the_decoder_keeps_up_with_the_collector() -> None:
    """Each payload is decoded once, however often a predicate asks (the kill -9 NDEATH flake)."""
    collector = Collector(0)
    spb = Sparkplug(collector)
    birth = Metric(1, "v", DataType.DOUBLE, value=1.0, alias=1)
    data = Metric(2, None, DataType.DOUBLE, value=2.0, alias=1)
    collector.messages.append(Received(f"spBv1.0/{GROUP}/NBIRTH/lab", NBirth(1, 0, ()).encode(), False))
    collector.messages.append(Received(f"spBv1.0/{GROUP}/DBIRTH/lab/d", DBirth(1, 1, (birth,)).encode(), False))
    collector.messages.append(Received("edgegw/lab/d/data", b"{}", False))
    seen: list[tuple[str, str | None, Any]] = []
    for seq in range(2, 50):
        payload = DData(seq, seq, (data,)).encode()
        collector.messages.append(Received(f"spBv1.0/{GROUP}/DDATA/lab/d", payload, False))
        msgs = spb.messages()
        assert len(msgs) == seq + 1 and msgs[-1][2].seq == seq
        # What was decoded before comes back as it was, not decoded again.
        assert all(a[2] is b[2] for a, b in zip(seen, msgs, strict=False))
        seen = msgs
    assert spb.decoded == len(collector.messages)
    assert [m.value for d in spb.of("DDATA", "d") for m in d.metrics] == [2.0] * 48


def bd_seq(payload: Any) -> int:
    metric = payload.bd_seq_metric if isinstance(payload, NDeath) else {m.name: m for m in payload.metrics}["bdSeq"]
    assert metric.datatype == DataType.INT64
    value = metric.value
    assert isinstance(value, int)
    return value


def session_seqs(msgs: list[tuple[str, str | None, Any]]) -> list[list[int]]:
    """The seq of every message, split at each NBIRTH (a new count starts there)."""
    runs: list[list[int]] = []
    for kind, _dev, payload in msgs:
        if kind == "NDEATH":
            continue
        if kind == "NBIRTH":
            runs.append([])
        runs[-1].append(payload.seq)
    return runs


def continuous(run: list[int]) -> bool:
    return all(b == (a + 1) % 256 for a, b in itertools.pairwise(run))


async def send_rebirth(port: int) -> None:
    cmd = NCmd(
        timestamp=int(time.time() * 1000), metrics=(Metric(1, "Node Control/Rebirth", DataType.BOOLEAN, value=True),)
    )
    async with aiomqtt.Client("127.0.0.1", port, identifier="scada-cmd") as client:
        await client.publish(f"spBv1.0/{GROUP}/NCMD/lab", cmd.encode(include_dtypes=True), qos=1)


async def set_state(port: int, online: bool) -> None:
    body = json.dumps({"online": online, "timestamp": int(time.time() * 1000)})
    async with aiomqtt.Client("127.0.0.1", port, identifier="scada-state") as client:
        await client.publish("spBv1.0/STATE/scada", body, qos=1, retain=True)


async def test_births_data_seq_rebirth_outage_and_death(tmp_path: Path, broker: Mosquitto, twin: ModbusTwin) -> None:
    gate = Gate(broker.port)  # the daemon reaches the broker through it; the collector directly
    await gate.start()
    path = write_config(tmp_path, gate.url, twin, f"{{group_id: {GROUP}}}")
    daemon = Daemon(path, tmp_path)
    collector = Collector(broker.port)
    await collector.start()
    spb = Sparkplug(collector)
    await daemon.start()
    try:
        # Births: NBIRTH with bdSeq and the rebirth control, then a DBIRTH per device with every point.
        await collector.wait_for(lambda: all(spb.of("DBIRTH", d) for d in DEVICES), what="births")
        kinds = [k for k, _d, _p in spb.messages()]
        assert kinds[0] == "NBIRTH" and kinds.index("NBIRTH") < min(kinds.index("DBIRTH"), len(kinds))
        nb = spb.of("NBIRTH")[0]
        first_bd = bd_seq(nb)
        assert nb.seq == 0
        assert {m.name: m.value for m in nb.metrics}["Node Control/Rebirth"] is False
        for dev in DEVICES:
            birth = spb.of("DBIRTH", dev)[0]
            metrics = {m.name: m for m in birth.metrics}
            assert set(metrics) == PUBLISHED
            assert metrics["mains.voltage_l1"].datatype == DataType.FLOAT
            assert metrics["mains.frequency"].datatype == DataType.DOUBLE  # scale 0.01
            assert metrics["ch1.current"].datatype == DataType.DOUBLE  # an exponent register
            assert metrics["ch1.energy"].datatype == DataType.UINT32  # uint32 x 1000: whole numbers
            assert metrics["breaker.closed"].datatype == DataType.BOOLEAN
            assert all(m.alias is not None for m in birth.metrics)
            raw = {m.name: m for m in PbPayload.FromString(collector.on(f"DBIRTH/lab/{dev}")[0].payload).metrics}
            units = {k: dict(zip(m.properties.keys, [v.string_value for v in m.properties.values], strict=True))
                     for k, m in raw.items()}  # fmt: skip
            assert units["mains.voltage_l1"]["engUnit"] == "V" and units["ch1.energy"]["engUnit"] == "Wh"
        # DDATA carries aliases only, and the JSON readings' values.
        await collector.wait_for(lambda: all(len(spb.of("DDATA", d)) >= 5 for d in DEVICES), what="DDATA")
        raw_ddata = collector.on("DDATA/lab/pdu-1")[0]
        assert all(not m.name for m in PbPayload.FromString(raw_ddata.payload).metrics)
        json_by_ts = {(m["device"], m["ts"]): m for d in DEVICES for m in collector.data(d)}
        compared = 0
        for _k, device, data in [x for x in spb.messages() if x[0] == "DDATA"]:
            js = json_by_ts.get((device, data.timestamp))
            if js is None:
                continue
            readings = {r["point"]: r["value"] for r in js["readings"]}
            got = {m.name: m.value for m in data.metrics}
            assert set(got) == set(readings)
            for name, value in readings.items():
                assert got[name] == pytest.approx(value, rel=1e-6), (name, got[name], value)
            # Polls made before the session was live (connecting, births on their way) are historical.
            compared += not any(m.is_historical for m in data.metrics)
        assert compared >= 5
        # seq counts every message of the session in send order and wraps after 255.
        await collector.wait_for(lambda: len(collector.on("DDATA/lab/pdu-1")) >= 150, timeout=60, what="300 messages")
        runs = session_seqs(spb.messages())
        assert len(runs) == 1 and len(runs[0]) > 256 and continuous(runs[0]), runs[0][:20]
        assert 0 in runs[0][1:]  # wrapped

        # Rebirth on command: a new NBIRTH (seq 0, the same bdSeq: the same session) and DBIRTHs.
        await send_rebirth(broker.port)
        await collector.wait_for(lambda: len(spb.of("NBIRTH")) == 2, what="rebirth")
        await collector.wait_for(lambda: all(len(spb.of("DBIRTH", d)) == 2 for d in DEVICES), what="DBIRTHs again")
        assert bd_seq(spb.of("NBIRTH")[1]) == first_bd and spb.of("NBIRTH")[1].seq == 0

        # Broker outage: data waits in the Sparkplug session's disk buffer and arrives later as historical.
        before = len(spb.of("DDATA"))
        await gate.stop()
        gate.cut()
        cut_at = int(time.time() * 1000)
        await asyncio.sleep(1.5)  # let about 15 polls per device happen while the broker is away
        await gate.start()
        await collector.wait_for(lambda: len(spb.of("NBIRTH")) == 3, what="births after the outage")
        back = spb.of("NBIRTH")[2]
        assert bd_seq(back) != first_bd  # a new MQTT session: bdSeq moved on (once per CONNECT attempt)
        deaths = spb.of("NDEATH")
        assert deaths and bd_seq(deaths[-1]) == first_bd  # the will of the session that was cut

        def historical(dev: str) -> list[Any]:
            """The DDATA of `dev` with historical metrics that arrived after the births that followed the outage."""
            msgs = spb.messages()
            third = [i for i, (k, _d, _p) in enumerate(msgs) if k == "NBIRTH"][2]
            return [p for k, d, p in msgs[third:] if k == "DDATA" and d == dev and p.metrics[0].is_historical]

        await collector.wait_for(lambda: all(len(historical(d)) >= 10 for d in DEVICES), timeout=30, what="history")
        for dev in DEVICES:
            stamps = [d.timestamp for d in historical(dev)]
            assert stamps == sorted(stamps), "historical data in order"
            assert min(stamps) >= cut_at - 1000
            assert all(m.is_historical for d in historical(dev) for m in d.metrics)
        assert len(spb.of("DDATA")) > before
        runs = session_seqs(spb.messages())
        assert all(continuous(r) for r in runs), [r[:10] for r in runs]

        # kill -9: the broker publishes the will, an NDEATH with this session's bdSeq.
        await daemon.kill()
        await collector.wait_for(lambda: len(spb.of("NDEATH")) >= 2, what="NDEATH (the will)")
        assert bd_seq(spb.of("NDEATH")[-1]) == bd_seq(back)
        # The JSON contract keeps its own will.
        await collector.wait_for(
            lambda: any(m.json().get("reason") == "lost" for m in collector.on("lab/gateway/status")),
            what="gateway/status lost",
        )
    finally:
        await collector.stop()
        await daemon.stop()
        await gate.stop()


async def test_primary_host_state_gates_publishing(tmp_path: Path, broker: Mosquitto, twin: ModbusTwin) -> None:
    path = write_config(tmp_path, broker.url, twin, f"{{group_id: {GROUP}, primary_host: scada}}", interval="200ms")
    daemon = Daemon(path, tmp_path)
    collector = Collector(broker.port)
    await collector.start()
    spb = Sparkplug(collector)
    await set_state(broker.port, False)
    await daemon.start()
    try:
        # The JSON contract flows; Sparkplug waits for the primary host.
        await collector.wait_for(lambda: all(len(collector.data(d)) >= 5 for d in DEVICES), what="JSON data")
        assert not spb.of("NBIRTH") and not spb.of("DDATA")
        await set_state(broker.port, True)
        await collector.wait_for(lambda: all(spb.of("DBIRTH", d) for d in DEVICES), what="births once online")
        await collector.wait_for(lambda: all(spb.of("DDATA", d) for d in DEVICES), what="DDATA once online")
        kinds = [k for k, _d, _p in spb.messages()]
        assert kinds[0] == "NBIRTH"
        # What waited while the host was away arrives after the births, as historical data.
        assert any(m.is_historical for d in spb.of("DDATA") for m in d.metrics)
        # The host goes away: data waits; it comes back: births again before any data.
        await set_state(broker.port, False)
        await asyncio.sleep(0.3)  # a DDATA already launched may still arrive
        count = len(spb.of("DDATA"))
        n_json = len(collector.data(DEVICES[0]))
        await collector.wait_for(lambda: len(collector.data(DEVICES[0])) >= n_json + 5, what="JSON goes on")
        assert len(spb.of("DDATA")) == count
        await set_state(broker.port, True)
        await collector.wait_for(lambda: len(spb.of("NBIRTH")) == 2, what="births when the host is back")
        await collector.wait_for(lambda: len(spb.of("DDATA")) > count, what="data when the host is back")
        msgs = spb.messages()
        second = [i for i, (k, _d, _p) in enumerate(msgs) if k == "NBIRTH"][1]
        assert sum(1 for k, _d, _p in msgs[:second] if k == "DDATA") == count  # none between
        assert all(continuous(r) for r in session_seqs(msgs))
    finally:
        await collector.stop()
        await daemon.stop()


async def test_device_death_and_rebirth_follow_its_status(tmp_path: Path, broker: Mosquitto, twin: ModbusTwin) -> None:
    health = free_port()
    path = write_config(tmp_path, broker.url, twin, f"{{group_id: {GROUP}}}", interval="200ms", health=health)
    daemon = Daemon(path, tmp_path)
    collector = Collector(broker.port)
    await collector.start()
    spb = Sparkplug(collector)
    await daemon.start()
    try:
        await collector.wait_for(lambda: all(spb.of("DDATA", d) for d in DEVICES), what="data")
        twin.faults.set("silent", target=2)  # pdu-2 stops answering; pdu-1 goes on
        await collector.wait_for(lambda: spb.of("DDEATH", "pdu-2"), what="DDEATH of the offline device")
        assert not spb.of("DDEATH", "pdu-1")
        died = len(spb.messages())
        await collector.wait_for(
            lambda: len([1 for k, d, _p in spb.messages()[died:] if k == "DDATA" and d == "pdu-1"]) >= 3,
            what="pdu-1 goes on",
        )
        # A dead device sends no DDATA until it is born again.
        assert not [1 for k, d, _p in spb.messages()[died:] if d == "pdu-2"]
        twin.faults.clear(2)
        await collector.wait_for(lambda: len(spb.of("DBIRTH", "pdu-2")) == 2, timeout=30, what="DBIRTH on recovery")
        await collector.wait_for(
            lambda: [1 for k, d, _p in spb.messages()[died:] if k == "DDATA" and d == "pdu-2"], what="its data again"
        )
        msgs = spb.messages()[died:]
        first = next(k for k, d, _p in msgs if d == "pdu-2")
        assert first == "DBIRTH"
        assert all(continuous(r) for r in session_seqs(spb.messages()))
        assert await metric(health, "edgegw_sparkplug_live") == 1
        assert await metric(health, "edgegw_sparkplug_births_total") == 1
        assert await metric(health, "edgegw_sparkplug_messages_published_total") >= 10
        assert await metric(health, "edgegw_sparkplug_messages_dropped_total") == 0
        # A clean stop ends the session with an NDEATH (the will's payload, published by the gateway).
        assert await daemon.stop() == 0
        await collector.wait_for(lambda: spb.of("NDEATH"), what="NDEATH on a clean stop")
        assert bd_seq(spb.of("NDEATH")[0]) == bd_seq(spb.of("NBIRTH")[0])
    finally:
        await collector.stop()
        await daemon.stop()


@pytest.mark.timeout(180)
async def test_hot_standby_only_the_active_is_an_edge_node(tmp_path: Path, broker: Mosquitto) -> None:
    from gateway.registry import DRIVERS

    twin_cls = DRIVERS["modbus"].twin_class
    assert twin_cls is not None
    points = [{"id": "v", "address": 0, "type": "float32", "quantity": "voltage", "unit": "V"}]
    collector = Collector(broker.port)
    await collector.start()
    spb = Sparkplug(collector)
    async with twin_cls.create(points=points, units=[1, 2]) as twin:
        devices = [
            {"id": d, **twin.device_config(u), "interval": "1s", "timeout": "500ms"} for u, d in enumerate(DEVICES, 1)
        ]
        cfg = tmp_path / "site.yaml"
        body = {
            "site": "lab",
            "mqtt": {"url": broker.url, "sparkplug": {"group_id": GROUP}},
            "ha": {"group": "g1"},
            "devices": devices,
        }
        cfg.write_text(json.dumps(body), encoding="utf-8")
        daemons: dict[str, Daemon] = {}
        try:
            for name in ("a", "b"):
                (tmp_path / name).mkdir()
                env = {"EDGEGW_INSTANCE": name, "XDG_STATE_HOME": str(tmp_path / name / "state")}
                daemons[name] = Daemon(cfg, tmp_path / name, env=env)
                await daemons[name].start()
            await collector.wait_for(lambda: all(len(spb.of("DDATA", d)) >= 3 for d in DEVICES), what="DDATA")
            active = next(m["instance"] for m in collector.data(DEVICES[0]))
            standby = "b" if active == "a" else "a"
            # One edge node: one NBIRTH, one DBIRTH per device, whichever instance stands by.
            assert len(spb.of("NBIRTH")) == 1 and all(len(spb.of("DBIRTH", d)) == 1 for d in DEVICES)
            first = spb.of("NBIRTH")[0]
            await daemons[active].kill()
            await collector.wait_for(lambda: spb.of("NDEATH"), what="the active's NDEATH (its will)")
            assert bd_seq(spb.of("NDEATH")[0]) == bd_seq(first)
            await collector.wait_for(lambda: len(spb.of("NBIRTH")) == 2, timeout=30, what="the standby's NBIRTH")
            await collector.wait_for(
                lambda: all(len(spb.of("DBIRTH", d)) == 2 for d in DEVICES), what="the standby's DBIRTHs"
            )
            n = len(spb.of("DDATA"))
            await collector.wait_for(lambda: len(spb.of("DDATA")) >= n + 4, what="DDATA from the new active")
            assert any(m["instance"] == standby for m in collector.data(DEVICES[0]))
        finally:
            await collector.stop()
            for d in daemons.values():
                await d.stop()
