"""Eclipse Sparkplug 3.0 (Sparkplug B) output: payloads, metric tables and the edge node session.

The payload format is protobuf. The few messages edgegw needs are written here directly in the
wire format (varints, fixed 32/64-bit numbers, length-delimited fields), with every per-point
fragment that does not change (alias, property sets) encoded once when a device's table is built:
a DDATA per poll per device is on the hot path.

The session runs on its own MQTT connection (a second `Publisher`, docs/mqtt.md "Sparkplug B"):
MQTT allows one will per connection, the JSON contract's will is `gateway/status`, and
Sparkplug's must be the NDEATH.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import structlog

from gateway.config import BufferConfig, MqttConfig, SparkplugConfig
from gateway.models import PointConfig
from gateway.normalize import GOOD, UNCERTAIN, Batch, Value, ratio
from gateway.publish import Publisher
from gateway.state import atomic_write

NAMESPACE = "spBv1.0"
BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"


class DataType(IntEnum):
    """Sparkplug B metric datatypes (the ones the point model produces)."""

    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12


# OPC-style quality codes, as SCADA hosts (Ignition) read a `Quality` property.
QUALITY_CODE = {GOOD: 192, UNCERTAIN: 64, "bad": 0}

# -- protobuf wire format -------------------------------------------------------------------

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
_D = struct.Struct("<d")
_F = struct.Struct("<f")
_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1


def varint(n: int) -> bytes:
    """An unsigned varint (negative numbers as their 64-bit two's complement)."""
    n &= _U64
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def _ld(field: int, body: bytes) -> bytes:
    return _key(field, _LEN) + varint(len(body)) + body


def _vfield(field: int, n: int) -> bytes:
    return _key(field, _VARINT) + varint(n)


# Payload: 1 timestamp, 2 metrics, 3 seq. Metric: 1 name, 2 alias, 3 timestamp, 4 datatype,
# 5 is_historical, 7 is_null, 9 properties, 10 int_value, 11 long_value, 12 float_value,
# 13 double_value, 14 boolean_value, 15 string_value. PropertySet: 1 keys, 2 values.
# PropertyValue: 1 type, 2 is_null, 3 int_value, 4 long_value, 8 string_value.
_P_TS = _key(1, _VARINT)
_P_METRIC = _key(2, _LEN)
_P_SEQ = _key(3, _VARINT)
_M_TS = _key(3, _VARINT)
_M_HISTORICAL = _vfield(5, 1)
_M_NULL = _vfield(7, 1)
_M_INT = _key(10, _VARINT)
_M_LONG = _key(11, _VARINT)
_M_FLOAT = _key(12, _FIXED32)
_M_DOUBLE = _key(13, _FIXED64)
_M_TRUE = _vfield(14, 1)
_M_FALSE = _vfield(14, 0)
_M_STRING = _key(15, _LEN)


_LENGTHS = [bytes((n,)) for n in range(128)]


def seq_field(seq: int) -> bytes:
    """The payload's `seq`, appended when the message is sent (protobuf fields may come in any order)."""
    return _P_SEQ + varint(seq)


def _property(value: Value, datatype: DataType | None = None) -> bytes:
    if value is None:
        return _vfield(1, DataType.STRING if datatype is None else datatype) + _vfield(2, 1)
    if isinstance(value, bool):
        return _vfield(1, DataType.BOOLEAN) + _vfield(7, int(value))
    if isinstance(value, int):
        return _vfield(1, DataType.INT32) + _vfield(3, value & _U32)
    return _vfield(1, DataType.STRING) + _ld(8, str(value).encode())


def property_set(props: Sequence[tuple[str, Value]]) -> bytes:
    """A PropertySet (metric field 9) from (key, value) pairs: str -> String, int -> Int32, bool -> Boolean."""
    body = b"".join(_ld(1, k.encode()) for k, _ in props)
    body += b"".join(_ld(2, _property(v)) for _, v in props)
    return _ld(9, body)


def _value_bytes(datatype: DataType, value: Value) -> bytes | None:
    """The metric's value field; None when the value does not fit the datatype."""
    kind = type(value)
    if datatype == DataType.DOUBLE:
        if kind is float or kind is int:
            return _M_DOUBLE + _D.pack(value)
    elif datatype == DataType.FLOAT:
        if kind is float or kind is int:
            try:
                return _M_FLOAT + _F.pack(value)
            except OverflowError:
                return None
    elif datatype == DataType.BOOLEAN:
        if kind is bool:
            return _M_TRUE if value else _M_FALSE
    elif datatype == DataType.STRING:
        if kind is str:
            raw = value.encode()  # type: ignore[union-attr]
            return _M_STRING + varint(len(raw)) + raw
    elif kind is int:
        n: int = value  # type: ignore[assignment]
        lo, hi = _RANGE[datatype]
        if lo <= n <= hi:
            return (_M_LONG if datatype in (DataType.INT64, DataType.UINT64) else _M_INT) + varint(
                n & (_U64 if datatype in (DataType.INT64, DataType.UINT64) else _U32)
            )
    return None


_RANGE = {
    DataType.INT8: (-(1 << 7), (1 << 7) - 1),
    DataType.INT16: (-(1 << 15), (1 << 15) - 1),
    DataType.INT32: (-(1 << 31), (1 << 31) - 1),
    DataType.INT64: (-(1 << 63), (1 << 63) - 1),
    DataType.UINT8: (0, 255),
    DataType.UINT16: (0, 65535),
    DataType.UINT32: (0, _U32),
    DataType.UINT64: (0, _U64),
}


def datatype_for(point: PointConfig, value: Value) -> DataType:
    """The metric datatype of a point: what its definition says, else what its value is.

    A float32 source unscaled is Float; a scale that is not a whole number, an offset or a rate
    makes a Double; an integer counter of known width is UInt16/32/64; other integers Int64;
    booleans and text are Boolean and String. A point whose type its definition does not tell
    (SNMP, DLMS) and that has no value yet is a Double until a value says otherwise.
    """
    if isinstance(value, bool):
        return DataType.BOOLEAN
    if isinstance(value, str):
        return DataType.STRING
    num, den = ratio(point.scale)
    whole = den == 1 and point.offset == 0 and point.rate is None and point.exponent_point is None
    if point.float_digits() == 9:
        # A scaled float32 is the exact product of the decimal it stands for: more than 7 digits.
        return DataType.FLOAT if whole and num == 1 else DataType.DOUBLE
    if not whole:
        return DataType.DOUBLE
    if isinstance(value, float):
        return DataType.DOUBLE
    if isinstance(value, int):
        width = point.counter_width()
        if width is not None and value >= 0 and num > 0:
            return {16: DataType.UINT16, 32: DataType.UINT32}.get(width, DataType.UINT64)
        return DataType.INT64
    return DataType.DOUBLE


def alias_of(device: str, point: str) -> int:
    """A metric alias unique in the edge node and stable across restarts and config changes.

    Derived from the device and point ids (31 bits: at most 5 bytes on the wire), so a DDATA that
    waited in the disk buffer across a restart still names the same point in the new births.
    """
    digest = hashlib.blake2b(f"{device}\0{point}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF or 1


def topic(group: str, kind: str, node: str, device: str | None = None) -> str:
    return f"{NAMESPACE}/{group}/{kind}/{node}" + (f"/{device}" if device is not None else "")


# -- a device's metrics ---------------------------------------------------------------------

# Point index -> the last (value, quality, error, ts) published for it.
Known = dict[int, tuple[Value, str, str | None, int]]


def readings(batch: Batch) -> Known:
    """A batch's readings by point index (the last one of a point that has several)."""
    return dict(
        zip(batch.index, zip(batch.values, batch.qualities, batch.errors, batch.stamps, strict=True), strict=True)
    )


class DeviceTable:
    """A device's points as Sparkplug metrics, with the fragments of each metric encoded once."""

    __slots__ = ("alias_bytes", "aliases", "datatypes", "device", "points", "source")

    def __init__(
        self, device: str, points: Sequence[PointConfig], values: dict[int, Value], used: set[int] | None = None
    ) -> None:
        self.device = device
        self.points = list(points)
        self.source = points  # the list object it was built from: a new one (discovery) means a new table
        self.datatypes = [datatype_for(p, values.get(i)) for i, p in enumerate(points)]
        used = set() if used is None else used
        self.aliases: list[int] = []
        for p in points:
            alias = alias_of(device, p.id)
            while alias in used:  # a collision (one in millions): the next free number
                alias = alias % 0x7FFFFFFF + 1
            used.add(alias)
            self.aliases.append(alias)
        self.alias_bytes = [_vfield(2, a) for a in self.aliases]

    def retype(self, batch: Batch) -> None:
        """Datatypes again from the batch's values that do not fit (the device is then born again)."""
        for i, value in zip(batch.index, batch.values, strict=True):
            if value is not None and _value_bytes(self.datatypes[i], value) is None:
                dt = datatype_for(self.points[i], value)
                if _value_bytes(dt, value) is None:
                    dt = DataType.DOUBLE if isinstance(value, int | float) else DataType.STRING
                self.datatypes[i] = dt

    def ddata(self, batch: Batch, historical: bool) -> bytes | None:
        """A DDATA payload without `seq` (stamped when sent); None when a value does not fit its datatype.

        Aliases, timestamps, values; quality other than good as properties. The hot path: one
        list of byte strings joined once, floats packed inline.
        """
        alias_bytes, dts = self.alias_bytes, self.datatypes
        flags = _M_HISTORICAL if historical else b""
        out = [_P_TS, varint(batch.ts)]
        extend = out.extend
        last_ts = -1
        ts_bytes = b""
        dpack, fpack, double, single = _D.pack, _F.pack, DataType.DOUBLE, DataType.FLOAT
        for i, value, quality, error, ts in zip(
            batch.index, batch.values, batch.qualities, batch.errors, batch.stamps, strict=True
        ):
            if ts != last_ts:
                ts_bytes = _M_TS + varint(ts) + flags
                last_ts = ts
            kind = type(value)
            dt = dts[i]
            if kind is float and dt is double:
                vb = _M_DOUBLE + dpack(value)
            elif kind is float and dt is single:
                try:
                    vb = _M_FLOAT + fpack(value)
                except OverflowError:
                    return None
            elif value is None:
                vb = _M_NULL
            else:
                got = _value_bytes(dt, value)
                if got is None:
                    return None
                vb = got
            head = alias_bytes[i]
            if quality is GOOD and error is None:
                n = len(head) + len(ts_bytes) + len(vb)
                extend((_P_METRIC, _LENGTHS[n] if n < 128 else varint(n), head, ts_bytes, vb))
            else:
                props: list[tuple[str, Value]] = [("Quality", QUALITY_CODE.get(quality, 0))]
                if error is not None:
                    props.append(("error", error))
                body = head + ts_bytes + vb + property_set(props)
                extend((_P_METRIC, varint(len(body)), body))
        return b"".join(out)

    def dbirth(self, ts: int, values: Known) -> bytes:
        """A DBIRTH payload without `seq`: every point with name, alias, datatype, properties, last value."""
        out = [_P_TS, varint(ts)]
        for i, p in enumerate(self.points):
            if not p.publish:
                continue
            dt = self.datatypes[i]
            value, quality, error, t = values.get(i, (None, "uncertain", "no value yet", ts))
            props: list[tuple[str, Value]] = [
                ("engUnit", p.unit),
                ("quantity", p.quantity),
                ("kind", str(p.kind)),
                ("phase", p.phase),
                ("Quality", QUALITY_CODE.get(quality, 0)),
            ]
            if error is not None:
                props.append(("error", error))
            vb = _M_NULL if value is None else (_value_bytes(dt, value) or _M_NULL)
            body = _ld(1, p.id.encode()) + self.alias_bytes[i] + _M_TS + varint(t) + _vfield(4, dt) + vb
            out.append(_ld(2, body + property_set(props)))
        return b"".join(out)


def nbirth(ts: int, bd_seq: int) -> bytes:
    """The NBIRTH payload without `seq`: bdSeq and the rebirth control."""
    metrics = [
        _ld(1, BDSEQ.encode()) + _M_TS + varint(ts) + _vfield(4, DataType.INT64) + _M_LONG + varint(bd_seq),
        _ld(1, REBIRTH.encode()) + _M_TS + varint(ts) + _vfield(4, DataType.BOOLEAN) + _M_FALSE,
    ]
    return _P_TS + varint(ts) + b"".join(_ld(2, m) for m in metrics)


def ndeath(ts: int, bd_seq: int) -> bytes:
    """The NDEATH payload (the will, or a clean stop): bdSeq only, no seq."""
    metric = _ld(1, BDSEQ.encode()) + _vfield(4, DataType.INT64) + _M_LONG + varint(bd_seq)
    return _P_TS + varint(ts) + _ld(2, metric)


def ddeath(ts: int) -> bytes:
    return _P_TS + varint(ts)


# -- reading commands (NCMD) ----------------------------------------------------------------


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """The (field, value) pairs of one protobuf message: varints as ints, everything else as bytes."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            n, pos = _read_varint(buf, pos)
            out.append((field, n))
        elif wire == _LEN:
            size, pos = _read_varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError("truncated field")
            out.append((field, buf[pos : pos + size]))
            pos += size
        elif wire == _FIXED64:
            out.append((field, buf[pos : pos + 8]))
            pos += 8
        elif wire == _FIXED32:
            out.append((field, buf[pos : pos + 4]))
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def command_metrics(payload: bytes) -> dict[str, int | bytes]:
    """An NCMD's metrics by name: the boolean, integer or other raw value each carries."""
    out: dict[str, int | bytes] = {}
    for field, value in _fields(payload):
        if field != 2 or not isinstance(value, bytes):
            continue
        name = None
        got: int | bytes = b""
        for mf, mv in _fields(value):
            if mf == 1 and isinstance(mv, bytes):
                name = mv.decode("utf-8", "replace")
            elif mf in (10, 11, 14):
                got = mv
        if name is not None:
            out[name] = got
    return out


# -- the edge node session -----------------------------------------------------------------


@dataclass(slots=True)
class _Device:
    points: Callable[[], Sequence[PointConfig]]
    state: str = "unknown"
    table: DeviceTable | None = None
    # The last reading of every point (a poll may carry only some: report by exception, pushes).
    known: Known = dataclasses.field(default_factory=dict)
    born: bool = False


class SparkplugNode:
    """The edge node: births, data, deaths and commands on its own MQTT session.

    Send order is the session's: `seq` is stamped by the publisher as each message goes out
    (NBIRTH 0, then 1, 2, ... 255, 0, ...), so a message that waited in the disk buffer gets the
    number of the moment it is sent. Births are sent while the publisher holds everything else,
    after every connect, on a rebirth request, and when the primary host comes back.
    """

    def __init__(
        self,
        cfg: SparkplugConfig,
        mqtt: MqttConfig,
        site: str,
        buffer_cfg: BufferConfig,
        log: structlog.typing.FilteringBoundLogger,
        client_suffix: str = "",
        state_dir: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.group = cfg.group_id
        self.node = cfg.edge_node_id or site
        self.log = log
        # Its own client id and disk buffer: the JSON session keeps both of its own.
        client_id = (cfg.client_id or f"{mqtt.client_id or f'edgegw-{site}'}-spb") + client_suffix
        spb_buffer = buffer_cfg
        if buffer_cfg.path is not None:
            spb_buffer = buffer_cfg.model_copy(
                update={"path": buffer_cfg.path.with_name(buffer_cfg.path.name + ".sparkplug")}
            )
        self.publisher = Publisher(mqtt.model_copy(update={"client_id": client_id}), site, spb_buffer, None, log)
        pub = self.publisher
        pub.announce_status = False
        pub.hold_on_connect = True
        pub.will_message = self._will
        pub.goodbye_message = self._goodbye
        pub.stamp = self._stamp
        pub.on_connection = self._on_connection
        pub.subscribe(topic(self.group, "NCMD", self.node), self._on_ncmd)
        if cfg.primary_host is not None:
            pub.subscribe(f"{NAMESPACE}/STATE/{cfg.primary_host}", self._on_state)
        self.devices: dict[str, _Device] = {}
        self._used_aliases: set[int] = set()
        # Incremented per connect: the will and the NBIRTH of one session share it. Kept in the
        # state folder, so a host never takes a late will of the previous run for this run's.
        self._bd_path = state_dir / "sparkplug.json" if state_dir is not None else None
        self.bd_seq = self._load_bd_seq()
        self._seq = 0
        self.host_online = cfg.primary_host is None
        self._state_ts = 0
        self.live = False  # births sent on this connection, host online: data is real time
        self._birthing: asyncio.Task[None] | None = None
        self._nbirth_sent = False  # on this connection: a clean stop's NDEATH answers it
        # HA: births wait until the pair confirmed this instance's lease on the JSON session.
        self.may_birth: Callable[[], bool] | None = None
        self.births = 0
        self.rebirths = 0

    # -- wiring -------------------------------------------------------------------------------

    def start(self) -> None:
        self.publisher.open_buffer()
        self.publisher.start()

    async def stop(self, drain_timeout: float) -> None:
        await self.publisher.drain(drain_timeout)
        if self._birthing is not None:
            self._birthing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._birthing
        await self.publisher.stop()

    def add_device(self, device: str, points: Callable[[], Sequence[PointConfig]]) -> None:
        self.devices[device] = _Device(points)

    def remove_device(self, device: str) -> None:
        dev = self.devices.pop(device, None)
        if dev is not None and dev.born:
            self._send(topic(self.group, "DDEATH", self.node, device), ddeath(_now()))
        if dev is not None and dev.table is not None:
            self._used_aliases.difference_update(dev.table.aliases)

    def status(self, device: str, state: str) -> None:
        """The device's availability: offline -> DDEATH; it is born again with its next good poll."""
        dev = self.devices.get(device)
        if dev is None:
            return
        dev.state = state
        if state in ("offline", "removed") and dev.born:
            dev.born = False
            self._send(topic(self.group, "DDEATH", self.node, device), ddeath(_now()))

    def data(self, batch: Batch) -> None:
        """One poll's readings: a DDATA (a DBIRTH first when the device is not born in this session)."""
        dev = self.devices.get(batch.device)
        if dev is None or dev.state in ("offline", "removed"):
            return  # a dead device sends no DDATA; its DBIRTH says when it is back
        points = dev.points()
        table = dev.table
        payload = None
        if table is not None and table.source is points:
            payload = table.ddata(batch, not self.live)
        if payload is None:
            if table is not None and dev.born:
                # Points changed (discovery) or a value needs another datatype: the device dies and is born again.
                self._send(topic(self.group, "DDEATH", self.node, batch.device), ddeath(_now()))
                dev.born = False
            if table is None or table.source is not points:
                if table is not None:
                    self._used_aliases.difference_update(table.aliases)
                values = dict(zip(batch.index, batch.values, strict=True))
                table = dev.table = DeviceTable(batch.device, points, values, self._used_aliases)
                dev.known = {}
            table.retype(batch)
        assert table is not None
        dev.known.update(readings(batch))
        if not dev.born and self.live:
            dev.born = True
            self._send(topic(self.group, "DBIRTH", self.node, batch.device), table.dbirth(batch.ts, dev.known))
            return  # the birth carries this poll's values
        if payload is None:
            payload = table.ddata(batch, not self.live)
            assert payload is not None  # retyped to fit
        self._send(topic(self.group, "DDATA", self.node, batch.device), payload)

    def _send(self, topic_: str, payload: bytes) -> None:
        self.publisher.submit(topic_, payload, self.publisher.cfg.qos)

    # -- publisher hooks ----------------------------------------------------------------------

    def _stamp(self, payload: bytes) -> bytes:
        seq = self._seq
        self._seq = (seq + 1) & 0xFF
        return payload + seq_field(seq)

    def _will(self) -> tuple[str, bytes]:
        self.bd_seq = (self.bd_seq + 1) & 0xFF
        if self._bd_path is not None:
            try:
                atomic_write(self._bd_path, json.dumps({"bdSeq": self.bd_seq}).encode())
            except OSError as exc:
                self.log.warning("cannot save the Sparkplug bdSeq", path=str(self._bd_path), error=exc.strerror)
        return topic(self.group, "NDEATH", self.node), ndeath(_now(), self.bd_seq)

    def _load_bd_seq(self) -> int:
        """The last bdSeq used (-1: none yet, the first connect uses 0)."""
        if self._bd_path is None:
            return -1
        try:
            value = json.loads(self._bd_path.read_text(encoding="utf-8"))["bdSeq"]
        except (OSError, ValueError, KeyError, TypeError):
            return -1
        return int(value) & 0xFF if isinstance(value, int) else -1

    def _goodbye(self) -> tuple[str, bytes] | None:
        if not self._nbirth_sent:
            return None  # no NBIRTH on this connection: there is nothing to end
        return topic(self.group, "NDEATH", self.node), ndeath(_now(), self.bd_seq)

    def _on_connection(self, up: bool) -> None:
        self.live = False
        self._nbirth_sent = False
        for dev in self.devices.values():
            dev.born = False
        if self._birthing is not None and not self._birthing.done():
            self._birthing.cancel()
        if up:
            self._birth("connect")

    def _birth(self, why: str) -> None:
        if self._birthing is not None and not self._birthing.done():
            self._birthing.cancel()
        self.publisher.hold = True
        self.live = False
        self._birthing = asyncio.create_task(self._births(why), name="sparkplug-births")

    async def _births(self, why: str) -> None:
        """NBIRTH and every living device's DBIRTH, before anything else on this connection."""
        pub = self.publisher
        if not self.host_online:
            self.log.info("waiting for the primary host application", host=self.cfg.primary_host)
            return  # _on_state births when it is online
        # HA: the lease is not confirmed yet. The coordinator has no event for it; a short poll, and
        # the task is cancelled with the connection.
        while self.may_birth is not None and not self.may_birth():  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        self._seq = 0
        for dev in self.devices.values():
            dev.born = False
        messages = [(topic(self.group, "NBIRTH", self.node), nbirth(_now(), self.bd_seq))]
        count = 0
        while True:
            # A device whose first poll comes in while the births are on their way has its data
            # queued behind them already: its DBIRTH goes in the next round, before the release.
            now = _now()
            born = [
                (device, dev, dev.table)
                for device, dev in self.devices.items()
                if not dev.born and dev.table is not None and dev.state not in ("offline", "removed")
            ]
            messages += [(topic(self.group, "DBIRTH", self.node, d), t.dbirth(now, dev.known)) for d, dev, t in born]
            if not messages:
                break
            stamped = [(t, self._stamp(p)) for t, p in messages]
            messages = []
            try:
                # Launched in order on one connection (ordered by MQTT), acknowledged together.
                await asyncio.gather(*(pub.publish_now(t, p, retain=False) for t, p in stamped))
            except Exception as exc:  # noqa: BLE001 - the connection went: the next connect births again
                self.log.warning("sparkplug births not acknowledged", error=str(exc))
                return
            self._nbirth_sent = True
            for _d, dev, _t in born:
                dev.born = True
            count += len(born)
        self.births += 1
        self.live = True
        self.log.info("sparkplug edge node born", why=why, bd_seq=self.bd_seq, devices=count)
        pub.release()

    def _on_ncmd(self, msg: Any) -> None:
        try:
            metrics = command_metrics(bytes(msg.payload))
        except ValueError as exc:
            self.log.warning("unreadable NCMD ignored", error=str(exc))
            return
        if metrics.get(REBIRTH) == 1:
            self.rebirths += 1
            self._birth("rebirth requested")

    def _on_state(self, msg: Any) -> None:
        try:
            body = json.loads(bytes(msg.payload))
            online = bool(body["online"]) if isinstance(body, dict) else None
            stamp = int(body.get("timestamp", 0)) if isinstance(body, dict) else 0
        except (ValueError, KeyError, TypeError):
            online = None
        if online is None:
            self.log.warning("unreadable primary host STATE ignored", payload=bytes(msg.payload)[:100])
            return
        if stamp < self._state_ts:
            return  # an older STATE (Sparkplug 3.0: the host's newest timestamp wins)
        self._state_ts = stamp
        if online == self.host_online:
            return
        self.host_online = online
        self.log.info("primary host application " + ("online" if online else "offline"), host=self.cfg.primary_host)
        if online and self.publisher.connected:
            self._birth("primary host online")
        elif not online:
            # Data waits (queue, disk buffer) like in a broker outage; fresh births when it is back.
            self.publisher.hold = True
            self.live = False
            for dev in self.devices.values():
                dev.born = False


def _now() -> int:
    return int(time.time() * 1000)
