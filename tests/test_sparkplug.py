"""Sparkplug B payloads, checked with an independent decoder (pysparkplug and its compiled Sparkplug B protobuf)."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pysparkplug = pytest.importorskip("pysparkplug")
from pysparkplug import DataType as PbType  # noqa: E402
from pysparkplug import DBirth, DData, NBirth, NDeath  # noqa: E402
from pysparkplug._protobuf import Payload as PbPayload  # noqa: E402

from gateway.config import ConfigError, load_config_text  # noqa: E402
from gateway.models import PointConfig  # noqa: E402
from gateway.normalize import Batch, Encoder  # noqa: E402
from gateway.sparkplug import (  # noqa: E402
    REBIRTH,
    DataType,
    DeviceTable,
    SparkplugNode,
    alias_of,
    command_metrics,
    datatype_for,
    nbirth,
    ndeath,
    readings,
    seq_field,
    varint,
)


def point(pid: str, **kw: object) -> PointConfig:
    return PointConfig(id=pid, quantity=str(kw.pop("quantity", "voltage")), **kw)  # type: ignore[arg-type]


class F32Point(PointConfig):
    def float_digits(self) -> int | None:
        return 9


def batch_of(device: str, points: list[PointConfig], rows: list[tuple[object, str, str | None]], ts: int) -> Batch:
    b = Batch(device, ts, Encoder(device, points))
    for i, (value, quality, error) in enumerate(rows):
        b.add(i, value, quality, error, ts + i)  # type: ignore[arg-type]
    return b


def props(pb_metric: object) -> dict[str, object]:
    ps = pb_metric.properties  # type: ignore[attr-defined]
    out: dict[str, object] = {}
    for k, v in zip(ps.keys, ps.values, strict=True):
        field = v.WhichOneof("value")
        out[k] = None if v.is_null else getattr(v, field)
    return out


def test_varint_matches_protobuf() -> None:
    for n in (0, 1, 127, 128, 300, 2**31, 2**63 - 1, 2**64 - 1):
        pb = PbPayload(seq=n)
        assert pb.SerializeToString() == b"\x18" + varint(n)


def test_datatypes_from_the_point_model() -> None:
    assert datatype_for(F32Point(id="a", quantity="voltage"), 230.1) == DataType.FLOAT
    assert datatype_for(F32Point(id="a", quantity="voltage", scale=1000), 230.1) == DataType.DOUBLE
    assert datatype_for(point("a", scale=0.1), 2301) == DataType.DOUBLE
    assert datatype_for(point("a"), 5) == DataType.INT64
    assert datatype_for(point("a", counter_bits=32, kind="counter"), 5) == DataType.UINT32
    assert datatype_for(point("a"), True) == DataType.BOOLEAN
    assert datatype_for(point("a", quantity="firmware"), "1.2") == DataType.STRING
    assert datatype_for(point("a"), 1.5) == DataType.DOUBLE
    assert datatype_for(point("a"), None) == DataType.DOUBLE


def test_births_and_data_decode_with_pysparkplug() -> None:
    pts: list[PointConfig] = [
        F32Point(id="v", quantity="voltage", unit="V"),
        point("e", quantity="active_energy_import", unit="Wh", kind="counter", counter_bits=64),
        point("p", quantity="active_power", unit="W", scale=0.1),
        point("s", quantity="firmware"),
        point("b", quantity="breaker_state"),
        point("n", quantity="current", unit="A"),
    ]
    rows: list[tuple[object, str, str | None]] = [(230.1, "good", None), (123456789, "good", None)]
    rows += [(12.5, "good", None), ("v1.2", "good", None)]
    rows += [(True, "good", None), (None, "bad", "device reports no data")]
    b = batch_of("m1", pts, rows, 1_763_700_000_000)
    table = DeviceTable("m1", pts, dict(zip(b.index, b.values, strict=True)))
    birth_raw = table.dbirth(b.ts, readings(b)) + seq_field(3)
    birth = DBirth.decode(birth_raw)
    assert birth.seq == 3
    by_name = {m.name: m for m in birth.metrics}
    assert by_name["v"].datatype == PbType.FLOAT and by_name["v"].value == pytest.approx(230.1, rel=1e-7)
    assert by_name["e"].datatype == PbType.UINT64 and by_name["e"].value == 123456789
    assert by_name["p"].datatype == PbType.DOUBLE and by_name["p"].value == 12.5
    assert by_name["s"].datatype == PbType.STRING and by_name["s"].value == "v1.2"
    assert by_name["b"].datatype == PbType.BOOLEAN and by_name["b"].value is True
    assert by_name["n"].is_null and by_name["n"].value is None
    assert by_name["v"].alias == alias_of("m1", "v")
    pb = PbPayload.FromString(birth_raw)
    units = {m.name: props(m) for m in pb.metrics}
    assert units["v"]["engUnit"] == "V" and units["v"]["Quality"] == 192
    assert units["n"]["Quality"] == 0 and units["n"]["error"] == "device reports no data"
    # DDATA: aliases only, names from the birth.
    data_raw = (table.ddata(b, historical=True) or b"") + seq_field(4)
    assert all(not m.name for m in PbPayload.FromString(data_raw).metrics)
    data = DData.decode(data_raw, birth=birth)
    assert data.seq == 4 and data.timestamp == b.ts
    got = {m.name: m for m in data.metrics}
    assert got["e"].value == 123456789 and got["s"].value == "v1.2" and got["n"].is_null
    assert all(m.is_historical for m in data.metrics)
    assert [m.timestamp for m in data.metrics] == b.stamps
    assert props(PbPayload.FromString(data_raw).metrics[5])["Quality"] == 0


def test_node_birth_and_death() -> None:
    birth = NBirth.decode(nbirth(1000, 7) + seq_field(0))
    metrics = {m.name: m for m in birth.metrics}
    assert metrics["bdSeq"].value == 7 and metrics["bdSeq"].datatype == PbType.INT64
    assert metrics[REBIRTH].value is False and metrics[REBIRTH].datatype == PbType.BOOLEAN
    death = NDeath.decode(ndeath(2000, 7))
    assert death.bd_seq_metric.value == 7 and death.bd_seq_metric.name == "bdSeq"
    assert not PbPayload.FromString(ndeath(2000, 7)).HasField("seq")


def test_rebirth_command_is_read() -> None:
    from pysparkplug import Metric, NCmd

    cmd = NCmd(timestamp=1, metrics=(Metric(timestamp=1, name=REBIRTH, datatype=PbType.BOOLEAN, value=True),))
    assert command_metrics(cmd.encode(include_dtypes=True)) == {REBIRTH: 1}
    with pytest.raises(ValueError):
        command_metrics(b"\x12\x05ab")


def test_seq_wraps_at_255() -> None:
    cfg = load_config_text("site: s1\nstate_dir: memory\nmqtt: {sparkplug: {group_id: g}}\n")
    assert cfg.mqtt.sparkplug is not None
    import structlog

    node = SparkplugNode(cfg.mqtt.sparkplug, cfg.mqtt, cfg.site, cfg.buffer, structlog.get_logger())
    seqs = [PbPayload.FromString(node._stamp(b"\x08\x01")).seq for _ in range(600)]
    assert seqs[:3] == [0, 1, 2] and seqs[255] == 255 and seqs[256] == 0 and seqs[599] == 599 % 256


def test_bad_group_id_is_a_config_error_with_its_line() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config_text("site: s1\nstate_dir: memory\nmqtt:\n  sparkplug:\n    group_id: a/b\n", name="gw.yaml")
    text = str(exc.value.issues[0])
    assert "gw.yaml:5" in text and "mqtt.sparkplug.group_id" in text


def _values() -> st.SearchStrategy[object]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    )


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.tuples(_values(), st.sampled_from(["good", "uncertain", "bad"])), min_size=1, max_size=12),
    ts=st.integers(min_value=0, max_value=2**50),
    seq=st.integers(min_value=0, max_value=255),
    historical=st.booleans(),
)
def test_round_trip_through_pysparkplug(rows: list[tuple[object, str]], ts: int, seq: int, historical: bool) -> None:
    pts = [point(f"p{i}", quantity="other") for i in range(len(rows))]
    b = batch_of("dev", pts, [(v, q, None if q == "good" else "x") for v, q in rows], ts)
    table = DeviceTable("dev", pts, dict(zip(b.index, b.values, strict=True)))
    birth = DBirth.decode(table.dbirth(ts, readings(b)) + seq_field(seq))
    assert len(birth.metrics) == len(rows)
    data = DData.decode((table.ddata(b, historical) or b"") + seq_field(seq), birth=birth)
    assert data.seq == seq and data.timestamp == ts
    for m, (value, _q), stamp in zip(data.metrics, rows, b.stamps, strict=True):
        assert m.timestamp == stamp and m.is_historical == historical
        if value is None:
            assert m.is_null
        elif isinstance(value, float):
            assert isinstance(m.value, float) and (m.value == value or math.isclose(m.value, value))
        else:
            assert m.value == value


def test_float_metric_is_the_float32() -> None:
    pts: list[PointConfig] = [F32Point(id="v", quantity="voltage")]
    value = struct.unpack("f", struct.pack("f", 101.2))[0]
    b = batch_of("d", pts, [(value, "good", None)], 5)
    table = DeviceTable("d", pts, {0: value})
    raw = PbPayload.FromString(table.ddata(b, False) or b"").metrics[0].float_value
    assert raw == value


class _Msg:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload


async def test_primary_host_state_newest_timestamp_wins() -> None:
    import structlog

    cfg = load_config_text("site: s1\nstate_dir: memory\nmqtt: {sparkplug: {group_id: g, primary_host: h}}\n")
    assert cfg.mqtt.sparkplug is not None
    node = SparkplugNode(cfg.mqtt.sparkplug, cfg.mqtt, cfg.site, cfg.buffer, structlog.get_logger())
    assert not node.host_online
    node._on_state(_Msg(b'{"online": true, "timestamp": 100}'))
    assert node.host_online  # not connected: births wait for the connection
    node._on_state(_Msg(b'{"online": false, "timestamp": 50}'))  # older: ignored
    assert node.host_online and not node.publisher.hold
    node._on_state(_Msg(b"not json"))
    assert node.host_online
    node._on_state(_Msg(b'{"online": false, "timestamp": 150}'))
    assert not node.host_online and node.publisher.hold


def test_bd_seq_continues_across_restarts(tmp_path: Path) -> None:
    import structlog

    cfg = load_config_text("site: s1\nstate_dir: memory\nmqtt: {sparkplug: {group_id: g}}\n")
    assert cfg.mqtt.sparkplug is not None

    def node() -> SparkplugNode:
        assert cfg.mqtt.sparkplug is not None
        return SparkplugNode(cfg.mqtt.sparkplug, cfg.mqtt, cfg.site, cfg.buffer, structlog.get_logger(), "", tmp_path)

    first = node()
    wills = [NDeath.decode(first._will()[1]).bd_seq_metric.value for _ in range(3)]
    assert wills == [0, 1, 2]
    assert NDeath.decode(node()._will()[1]).bd_seq_metric.value == 3


def test_a_birth_carries_the_last_value_of_every_point_when_polls_carry_only_some() -> None:
    """Report by exception (or a push) sends only some points; a DBIRTH still has them all."""
    import structlog

    cfg = load_config_text("site: s1\nstate_dir: memory\nmqtt: {sparkplug: {group_id: g}}\n")
    assert cfg.mqtt.sparkplug is not None
    node = SparkplugNode(cfg.mqtt.sparkplug, cfg.mqtt, cfg.site, cfg.buffer, structlog.get_logger())
    pts = [point("a"), point("b")]
    node.add_device("d", lambda: pts)
    enc = Encoder("d", pts)
    first = Batch("d", 1000, enc)
    first.add(0, 1.5, "good", None, 1000)
    first.add(1, 2.5, "good", None, 1000)
    second = Batch("d", 2000, enc)
    second.add(1, 3.5, "good", None, 2000)
    node.data(first)
    node.data(second)
    assert node.publisher.queue_depth == 2  # two historical DDATA (not connected)
    table = node.devices["d"].table
    assert table is not None
    birth = DBirth.decode(table.dbirth(3000, node.devices["d"].known) + seq_field(1))
    assert {m.name: (m.value, m.timestamp) for m in birth.metrics} == {"a": (1.5, 1000), "b": (3.5, 2000)}
