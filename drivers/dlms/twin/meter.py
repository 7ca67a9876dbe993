"""One logical device of the twin: its COSEM objects, what each attribute reads, SET and ACTION.

Attribute access follows the interface classes the driver reads (Data 1, Register 3, Extended
register 4, Demand register 5, Profile generic 7, Clock 8) plus what a meter offers for commands:
Script table 9 (0.0.10.0.1.255, script 1 = end of billing period: resets the maxima and demand
registers), Disconnect control 70 (0.0.96.3.10.255) and the Association LN 15 (its object list).
Results are A-XDR :class:`~drivers.dlms.codec.Data`, or a data-access-result code where a meter
refuses (object-undefined, object-class-inconsistent, read-write-denied, type-unmatched, other).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from drivers.dlms import codec
from drivers.dlms.codec import Data, DataType
from drivers.dlms.config import CLOCK_OBIS, DlmsKeys
from drivers.dlms.obis import EVENT_LOGS, event_code_obis, event_log_obis
from drivers.dlms.twin.objects import (
    ASSOCIATION_OBIS,
    BILLING_SCRIPT_OBIS,
    DEMAND_PERIOD,
    DISCONNECT_OBIS,
    TEXT_TYPES,
    TwinObject,
    ensure_clock_column,
    plain_number,
)
from gateway.twin import TwinClock, Write

DEFAULT_SERVER_TITLE = b"SEN00001"
EVENT_LOG_CAPACITY = 500  # entries kept per event log (the oldest go first)
SUPPORTED_CONFORMANCE = codec.conformance(
    codec.CONF_BLOCK_TRANSFER_GET,
    codec.CONF_MULTIPLE_REFERENCES,
    codec.CONF_GET,
    codec.CONF_SET,
    codec.CONF_SELECTIVE_ACCESS,
    codec.CONF_ACTION,
    codec.CONF_PRIORITY_MGMT,
)
# Attributes and methods per interface class (what exists; the twin may still refuse some).
ATTRIBUTES = {1: 2, 3: 3, 4: 5, 5: 9, 7: 8, 8: 9, 9: 2, 15: 2, 70: 4}
METHODS = {3: 1, 4: 1, 5: 2, 7: 4, 8: 6, 9: 1, 15: 1, 70: 2}
# Disconnect control: control_state values, and the modes whose remote_reconnect connects at once
# (transition d of the Blue Book's state diagram); modes 2 and 4 go to ready_for_reconnection
# (transition a) and wait for the customer's button (`manual_reconnect`).
DISCONNECTED, CONNECTED, READY_FOR_RECONNECTION = 0, 1, 2
DIRECT_RECONNECT_MODES = frozenset({1, 3, 5, 6})

Result = Data | int


def _month_start(ts: float, zone: ZoneInfo, back: int = 0) -> float:
    d = datetime.fromtimestamp(ts, tz=zone)
    y, m = d.year, d.month - back
    while m < 1:
        m += 12
        y -= 1
    return datetime(y, m, 1, tzinfo=zone).timestamp()


def _descriptor(class_id: int, obis: str, attribute: int) -> Data:
    """A capture-object definition: {class, logical name, attribute, data index}."""
    return codec.structure(codec.u16(class_id), codec.octets(codec.obis_bytes(obis)), codec.i8(attribute), codec.u16(0))


class Meter:
    """One logical device: its objects, the twin's clock, its security material and counters."""

    def __init__(
        self,
        objects: Sequence[TwinObject],
        clock: TwinClock,
        *,
        physical: int = 17,
        logical: int = 1,
        password: str | None = None,
        keys: DlmsKeys | None = None,
        server_title: bytes = DEFAULT_SERVER_TITLE,
        max_pdu: int = 512,
        timezone: str = "UTC",
        auth: str | None = None,
        writable: Collection[str] = (),
        control_mode: int | None = 1,
        names: Mapping[tuple[str, int], str] | None = None,
        record: Callable[[Write], None] | None = None,
    ) -> None:
        self.clock = clock
        self.physical = physical
        self.logical = logical
        self.password = password.encode() if password is not None else None
        self.keys = keys
        self.server_title = server_title
        self.max_pdu = max_pdu
        self.zone = ZoneInfo(timezone)
        self.auth = auth  # the one mechanism a management client must use, if set
        self.names = dict(names or {})
        self.record = record
        self.objects: dict[str, TwinObject] = {}
        for obj in objects:
            self.objects.setdefault(obj.obis, obj)
        self.objects.setdefault(CLOCK_OBIS, TwinObject(8, CLOCK_OBIS))
        self.objects.setdefault(ASSOCIATION_OBIS, TwinObject(15, ASSOCIATION_OBIS))
        self.objects.setdefault(BILLING_SCRIPT_OBIS, TwinObject(9, BILLING_SCRIPT_OBIS))
        if control_mode is not None:
            self.objects.setdefault(DISCONNECT_OBIS, TwinObject(70, DISCONNECT_OBIS))
        # The standard event logs: (stamp ms, event code) per log number, in stamp order; an
        # entry stamped in the future (a power-up after a told outage) shows once the clock passes it.
        self.events: dict[int, list[tuple[int, int]]] = {}
        self._event_logs: dict[str, int] = {}
        self._event_codes: dict[str, int] = {}
        for n in EVENT_LOGS:
            log, code = event_log_obis(n), event_code_obis(n)
            if log in self.objects or code in self.objects:
                continue
            self.objects[log] = TwinObject(
                7, log, columns=[(8, CLOCK_OBIS, 2), (1, code, 2)], capture_period=0, capacity=EVENT_LOG_CAPACITY
            )
            self.objects[code] = TwinObject(1, code, dtype=DataType.UINT16)
            self.events[n] = []
            self._event_logs[log] = n
            self._event_codes[code] = n
        for obj in self.objects.values():
            ensure_clock_column(obj)
        self.writable = {obis for obis in writable if obis in self.objects}
        # Script 1 of the billing script table: reset every maximum and demand (method 1).
        self.scripts: dict[int, list[tuple[int, str, int]]] = {
            1: [(o.class_id, o.obis, 1) for o in self.objects.values() if o.resettable]
        }
        self.output_state = True
        self.control_state = CONNECTED
        self.control_mode = control_mode if control_mode is not None else 0
        # security state that outlives connections
        self.server_ic = 1
        self.last_client_ic: dict[bytes, int] = {}
        self.ic_violations = 0
        self.conformance = SUPPORTED_CONFORMANCE
        self.generation = 0  # bumps to drop every open association
        # what happened, for the tests
        self.associations = 0
        self.requests = 0
        self.releases = 0
        self.disconnects = 0
        self.pending = 0  # answers held back by a slow fault
        self.billing_resets: list[float] = []
        self.received: deque[bytes] = deque(maxlen=256)  # the last plain request APDUs

    def now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    def datetime_octets(self, ts_ms: int) -> bytes:
        return codec.datetime_from_epoch_ms(ts_ms, self.zone).encode()

    def name(self, obis: str, index: int) -> str:
        """The point id of an attribute where a point reads it, else ``obis:attribute``."""
        return self.names.get((obis, index), f"{obis}:{index}")

    def _lookup(self, class_id: int, obis: str) -> TwinObject | int:
        obj = self.objects.get(obis)
        if obj is None:
            return codec.DAR_OBJECT_UNDEFINED
        if obj.class_id != class_id:
            return codec.DAR_CLASS_INCONSISTENT
        return obj

    # -- GET -----------------------------------------------------------------------------------

    def attribute(self, class_id: int, obis: str, attr: int, access: codec.Access | None, t_ms: int) -> Result:
        obj = self._lookup(class_id, obis)
        if isinstance(obj, int):
            return obj
        if attr == 1:
            return codec.octets(codec.obis_bytes(obis))
        if obj.class_id == 7 and attr == 2:
            return self.buffer(obj, access, t_ms)
        if access is not None:
            return codec.DAR_OTHER  # selective access is for profile buffers
        return self.value(obj, attr, t_ms)

    def value(self, obj: TwinObject, attr: int, t_ms: int) -> Result:
        handler = _VALUES.get(obj.class_id)
        result = handler(self, obj, attr, t_ms) if handler is not None else None
        return codec.DAR_OBJECT_UNDEFINED if result is None else result

    def _scaler_unit(self, obj: TwinObject) -> Data:
        return codec.structure(codec.i8(obj.scaler), codec.enum(obj.unit))

    def _data(self, obj: TwinObject, attr: int, t_ms: int) -> Data | None:
        n = self._event_codes.get(obj.obis)
        if n is not None and attr == 2:  # an event-code object holds the log's latest code
            shown = self._visible_events(n, t_ms)
            return codec.u16(shown[-1][1] if shown else 0)
        return obj.typed(t_ms / 1000) if attr == 2 else None

    def _register(self, obj: TwinObject, attr: int, t_ms: int) -> Data | None:
        if attr == 2:
            return obj.typed(t_ms / 1000)
        return self._scaler_unit(obj) if attr == 3 else None

    def _capture_time(self, obj: TwinObject, t: float) -> bytes:
        """When a maximum occurred / a demand period started: the period start, or the reset."""
        start = t // DEMAND_PERIOD * DEMAND_PERIOD
        if obj.zeroed(t) and obj.reset_at is not None:
            start = obj.reset_at
        return self.datetime_octets(int(start * 1000))

    def _extended(self, obj: TwinObject, attr: int, t_ms: int) -> Data | None:
        t = t_ms / 1000
        if attr in (2, 3):
            return self._register(obj, attr, t_ms)
        if attr == 4:
            return codec.u8(0)
        return codec.octets(self._capture_time(obj, t)) if attr == 5 else None

    def _demand(self, obj: TwinObject, attr: int, t_ms: int) -> Data | None:
        t = t_ms / 1000
        start = t // DEMAND_PERIOD * DEMAND_PERIOD
        by_attr: dict[int, Callable[[], Data]] = {
            2: lambda: obj.typed(t),  # current average
            3: lambda: obj.typed(t if obj.zeroed(t) else start),  # last average: the period that just ended
            4: lambda: self._scaler_unit(obj),
            5: lambda: codec.u8(0),
            6: lambda: codec.octets(self._capture_time(obj, t)),
            7: lambda: codec.octets(self._capture_time(obj, t)),  # start_time_current
            8: lambda: codec.u32(DEMAND_PERIOD),
            9: lambda: codec.u16(1),
        }
        make = by_attr.get(attr)
        return make() if make is not None else None

    def _clock(self, obj: TwinObject, attr: int, t_ms: int) -> Data | None:
        if attr == 2:
            return codec.octets(self.datetime_octets(t_ms))
        if attr == 3:
            return Data(DataType.INT16, codec.datetime_from_epoch_ms(t_ms, self.zone).deviation or 0)
        if attr == 4:
            return codec.u8(0)
        return codec.enum(1) if attr == 9 else None  # clock_base: internal crystal

    def _profile(self, obj: TwinObject, attr: int, t_ms: int) -> Data | None:
        by_attr: dict[int, Callable[[], Data]] = {
            3: lambda: codec.array([_descriptor(*c) for c in obj.columns]),
            4: lambda: codec.u32(obj.capture_period),
            5: lambda: codec.enum(1),  # sort method: fifo
            6: lambda: _descriptor(8, CLOCK_OBIS, 2),
            7: lambda: codec.u32(len(self.entry_times(obj, t_ms))),
            8: lambda: codec.u32(obj.capacity),
        }
        make = by_attr.get(attr)
        return make() if make is not None else None

    def _association(self, obj: TwinObject, attr: int, t_ms: int) -> Data | None:
        return self.object_list() if attr == 2 else None

    def _script_table(self, obj: TwinObject, attr: int, t_ms: int) -> Data | None:
        if attr != 2:
            return None
        scripts = []
        for script_id, actions in sorted(self.scripts.items()):
            specs = [
                codec.structure(
                    codec.enum(2),  # execute a method
                    codec.u16(c),
                    codec.octets(codec.obis_bytes(o)),
                    codec.i8(m),
                    Data(DataType.INT8, 0),
                )
                for c, o, m in actions
            ]
            scripts.append(codec.structure(codec.u16(script_id), codec.array(specs)))
        return codec.array(scripts)

    def _disconnect(self, obj: TwinObject, attr: int, t_ms: int) -> Data | None:
        if attr == 2:
            return Data(DataType.BOOLEAN, self.output_state)
        if attr == 3:
            return codec.enum(self.control_state)
        return codec.enum(self.control_mode) if attr == 4 else None

    def _writable_attributes(self, obj: TwinObject) -> set[int]:
        if obj.class_id == 8:
            return {2}
        if obj.class_id == 70:
            return {4}
        return {2} if obj.obis in self.writable else set()

    def _methods(self, obj: TwinObject) -> list[int]:
        if obj.class_id == 70:
            return [1, 2]
        if obj.class_id in (9, 15) or (obj.class_id in (3, 4, 5) and obj.resettable):
            return [1]
        return []

    def object_list(self) -> Data:
        items = []
        for obj in self.objects.values():
            writable = self._writable_attributes(obj)
            attributes = codec.array(
                [
                    codec.structure(codec.i8(a), codec.enum(3 if a in writable else 1), codec.null())
                    for a in range(1, ATTRIBUTES.get(obj.class_id, 2) + 1)
                ]
            )
            methods = codec.array(
                [codec.structure(codec.i8(m), Data(DataType.BOOLEAN, True)) for m in self._methods(obj)]
            )
            items.append(
                codec.structure(
                    codec.u16(obj.class_id),
                    codec.u8(0),
                    codec.octets(codec.obis_bytes(obj.obis)),
                    codec.structure(attributes, methods),
                )
            )
        return codec.array(items)

    # -- profiles ------------------------------------------------------------------------------

    def log_event(self, log: int, code: int, at: float | None = None) -> None:
        """Log event `code` in event log `log` (0.0.99.98.log.255) at twin time `at` (default now)."""
        entries = self.events.get(log)
        if entries is None:
            raise KeyError(f"the twin has no event log {event_log_obis(log)}")
        ts = int((self.clock.now() if at is None else at) * 1000)
        entries.insert(bisect.bisect_right(entries, ts, key=lambda e: e[0]), (ts, code))
        del entries[: max(0, len(entries) - EVENT_LOG_CAPACITY)]

    def _visible_events(self, log: int, t_ms: int) -> list[tuple[int, int]]:
        entries = self.events[log]
        return entries[: bisect.bisect_right(entries, t_ms, key=lambda e: e[0])]

    def _event_buffer(self, obj: TwinObject, log: int, access: codec.Access | None, t_ms: int) -> Result:
        """An event log's rows: several events may share a stamp, so rows are entries, not times."""
        shown = self._visible_events(log, t_ms)
        columns = list(range(len(obj.columns)))
        if access is None:
            chosen = shown
        elif access.selector == 1:
            selection = self._by_range(obj, access.parameters, t_ms)
            if isinstance(selection, int):
                return selection
            times, columns = selection
            first = bisect.bisect_left(shown, times[0], key=lambda e: e[0]) if times else 0
            chosen = shown[first : first + len(times)]
        elif access.selector == 2:
            selection = self._by_entry(obj, access.parameters, t_ms)
            if isinstance(selection, int):
                return selection
            times, columns = selection
            first = max(int(access.parameters.value[0].value), 1) - 1
            chosen = shown[first : first + len(times)]
        else:
            return codec.DAR_OTHER
        rows = []
        for ts, code in chosen:
            cells = []
            for k in columns:
                _cid, col_obis, _attr = obj.columns[k]
                if self._event_codes.get(col_obis) == log:
                    cells.append(codec.u16(code))
                else:
                    cells.append(self._column(obj.columns[k], ts))
            rows.append(codec.structure(*cells))
        return codec.array(rows)

    def entry_times(self, obj: TwinObject, t_ms: int) -> list[int]:
        """Capture times (ms) of the buffer's entries, oldest first (the buffer is always full)."""
        log = self._event_logs.get(obj.obis)
        if log is not None:
            return [ts for ts, _ in self._visible_events(log, t_ms)]
        t = t_ms / 1000
        if obj.capture_period <= 0:
            return [int(_month_start(t, self.zone, back) * 1000) for back in range(obj.capacity - 1, -1, -1)]
        p = obj.capture_period
        last = math.floor(t / p) * p
        return [int((last - k * p) * 1000) for k in range(obj.capacity - 1, -1, -1)]

    def _range_times(self, obj: TwinObject, t_ms: int, lo: int, hi: int) -> list[int]:
        if obj.capture_period <= 0:
            return [x for x in self.entry_times(obj, t_ms) if lo <= x <= hi]
        p = obj.capture_period * 1000
        last = t_ms // p * p
        first = last - (obj.capacity - 1) * p
        lo = max(lo, first)
        hi = min(hi, last)
        if lo > hi:
            return []
        start = -(-lo // p) * p
        return list(range(start, hi + 1, p))

    def _column(self, col: tuple[int, str, int], ts_ms: int) -> Data:
        cid, obis, attr = col
        if cid == 8 and attr == 2:
            return codec.octets(self.datetime_octets(ts_ms))
        target = self.objects.get(obis)
        if target is None or target.class_id != cid:
            return codec.null()
        value = self.value(target, attr, ts_ms)
        return value if isinstance(value, Data) else codec.null()

    def _selective_time(self, d: Data) -> int:
        if d.type not in (DataType.OCTET_STRING, DataType.DATETIME):
            raise ValueError("not a date-time")
        return codec.decode_datetime(d.value).to_epoch_ms(self.zone)

    def _by_range(self, obj: TwinObject, params: Data, t_ms: int) -> tuple[list[int], list[int]] | int:
        """range_descriptor: {restricting object, from, to, selected columns} -> (times, columns)."""
        try:
            restricting, lo_d, hi_d, selected = params.value
            c, o, a = (
                restricting.value[0].value,
                codec.obis_text(restricting.value[1].value),
                restricting.value[2].value,
            )
            lo = self._selective_time(lo_d)
            hi = self._selective_time(hi_d)
            wanted = [
                (item.value[0].value, codec.obis_text(item.value[1].value), item.value[2].value)
                for item in selected.value
            ]
        except (TypeError, ValueError, AttributeError, IndexError):
            return codec.DAR_OTHER
        if (c, o, a) != (8, CLOCK_OBIS, 2):
            return codec.DAR_OTHER  # the twin's buffers are sorted by their clock column only
        columns = list(range(len(obj.columns)))
        if wanted:
            if any(w not in obj.columns for w in wanted):
                return codec.DAR_OTHER
            columns = [obj.columns.index(w) for w in wanted]
        return self._range_times(obj, t_ms, lo, hi), columns

    def _by_entry(self, obj: TwinObject, params: Data, t_ms: int) -> tuple[list[int], list[int]] | int:
        """entry_descriptor: {from entry, to entry, from column, to column}, 1-based, 0 = last."""
        try:
            first, last, col_from, col_to = (int(d.value) for d in params.value)
        except (TypeError, ValueError, AttributeError):
            return codec.DAR_OTHER
        all_times = self.entry_times(obj, t_ms)
        last = len(all_times) if last == 0 else min(last, len(all_times))
        col_to = len(obj.columns) if col_to == 0 else min(col_to, len(obj.columns))
        return all_times[max(first, 1) - 1 : last], list(range(max(col_from, 1) - 1, col_to))

    def buffer(self, obj: TwinObject, access: codec.Access | None, t_ms: int) -> Result:
        log = self._event_logs.get(obj.obis)
        if log is not None:
            return self._event_buffer(obj, log, access, t_ms)
        if access is None:
            selection: tuple[list[int], list[int]] | int = (
                self.entry_times(obj, t_ms),
                list(range(len(obj.columns))),
            )
        elif access.selector == 1:
            selection = self._by_range(obj, access.parameters, t_ms)
        elif access.selector == 2:
            selection = self._by_entry(obj, access.parameters, t_ms)
        else:
            return codec.DAR_OTHER
        if isinstance(selection, int):
            return selection
        times, columns = selection
        return codec.array([codec.structure(*(self._column(obj.columns[k], ts) for k in columns)) for ts in times])

    # -- SET -----------------------------------------------------------------------------------

    def set_attribute(self, class_id: int, obis: str, attr: int, value: Data) -> int:
        """A SET request: the data-access-result (success records a :class:`Write`)."""
        obj = self._lookup(class_id, obis)
        if isinstance(obj, int):
            return obj
        if not 1 <= attr <= ATTRIBUTES.get(class_id, 2):
            return codec.DAR_OBJECT_UNDEFINED
        if attr not in self._writable_attributes(obj):
            return codec.DAR_READ_WRITE_DENIED
        setter = _SETTERS.get(class_id, Meter._set_value)
        dar, write = setter(self, obj, attr, value)
        if dar == codec.DAR_SUCCESS and write is not None and self.record is not None:
            self.record(write)
        return dar

    def _set_clock(self, obj: TwinObject, attr: int, value: Data) -> tuple[int, Write | None]:
        if value.type not in (DataType.OCTET_STRING, DataType.DATETIME) or len(value.value) != 12:
            return codec.DAR_TYPE_UNMATCHED, None
        try:
            ts = codec.decode_datetime(value.value).to_epoch_ms(self.zone)
        except codec.CodecError:
            return codec.DAR_OTHER, None
        self.clock.set(ts / 1000)
        return codec.DAR_SUCCESS, Write(self.name(obj.obis, attr), ts / 1000, bytes(value.value), self.physical)

    def _set_control_mode(self, obj: TwinObject, attr: int, value: Data) -> tuple[int, Write | None]:
        if value.type != DataType.ENUM:
            return codec.DAR_TYPE_UNMATCHED, None
        if not 0 <= value.value <= 6:
            return codec.DAR_OTHER, None
        self.control_mode = int(value.value)
        return codec.DAR_SUCCESS, Write(self.name(obj.obis, attr), self.control_mode, self.control_mode, self.physical)

    def _set_value(self, obj: TwinObject, attr: int, value: Data) -> tuple[int, Write | None]:
        textual = obj.text is not None or obj.dtype in TEXT_TYPES
        if textual:
            if value.type not in TEXT_TYPES:
                return codec.DAR_TYPE_UNMATCHED, None
            obj.pinned = value.value
            shown: Any = value.value
        else:
            if value.type != obj.dtype:
                return codec.DAR_TYPE_UNMATCHED, None
            raw = int(value.value) if isinstance(value.value, bool) else value.value
            pinned = obj.from_raw(raw)
            obj.pinned = pinned
            shown = plain_number(pinned)
        return codec.DAR_SUCCESS, Write(self.name(obj.obis, attr), shown, value.plain(), self.physical)

    # -- ACTION --------------------------------------------------------------------------------

    def action(self, class_id: int, obis: str, method: int, param: Data | None) -> tuple[int, Data | None]:
        """An ACTION request: (action-result, return parameters); success records a :class:`Write`."""
        obj = self._lookup(class_id, obis)
        if isinstance(obj, int):
            return obj, None
        if not 1 <= method <= METHODS.get(class_id, 0):
            return codec.DAR_OBJECT_UNDEFINED, None
        if method not in self._methods(obj) or class_id == 15:
            return codec.DAR_READ_WRITE_DENIED, None  # 15/1 (reply_to_HLS) only while an HLS association is pending
        dar = self._invoke(obj, method, param)
        if dar == codec.DAR_SUCCESS and self.record is not None:
            shown = param.plain() if param is not None else None
            self.record(Write(f"{obis}:{method}", shown, shown, self.physical, action=True))
        return dar, None

    def _invoke(self, obj: TwinObject, method: int, param: Data | None) -> int:
        if obj.class_id == 70:
            return self._disconnect_method(method, param)
        if obj.class_id == 9:
            return self._execute(obj, param)
        # reset (method 1) of a maximum or a demand register: its parameter is integer(0)
        if param is None or param.type != DataType.INT8:
            return codec.DAR_TYPE_UNMATCHED
        obj.reset(self.clock.now())
        return codec.DAR_SUCCESS

    def _disconnect_method(self, method: int, param: Data | None) -> int:
        if param is None or param.type != DataType.INT8:
            return codec.DAR_TYPE_UNMATCHED
        if self.control_mode == 0:
            return codec.DAR_READ_WRITE_DENIED  # mode 0: always connected
        if method == 1:
            self.output_state, self.control_state = False, DISCONNECTED
            self._relay_event(62)  # remote disconnection
        elif self.control_state != CONNECTED:
            if self.control_mode in DIRECT_RECONNECT_MODES:
                self.output_state, self.control_state = True, CONNECTED
                self._relay_event(63)  # remote connection
            else:
                self.control_state = READY_FOR_RECONNECTION
                self._relay_event(59)  # ready for manual reconnection
        return codec.DAR_SUCCESS

    def _relay_event(self, code: int) -> None:
        if 2 in self.events:
            self.log_event(2, code)

    def manual_reconnect(self) -> None:
        """The customer presses the meter's button: ready_for_reconnection -> connected."""
        if self.control_state == READY_FOR_RECONNECTION:
            self.output_state, self.control_state = True, CONNECTED
            self._relay_event(61)  # manual connection

    def _execute(self, obj: TwinObject, param: Data | None) -> int:
        if param is None or param.type != DataType.UINT16:
            return codec.DAR_TYPE_UNMATCHED
        actions = self.scripts.get(int(param.value))
        if actions is None:
            return codec.DAR_OTHER
        now = self.clock.now()
        for class_id, obis, _method in actions:
            target = self.objects.get(obis)
            if target is not None and target.class_id == class_id:
                target.reset(now)
        self.billing_resets.append(now)
        return codec.DAR_SUCCESS

    # -- engineering values (tests and the twin's API) -----------------------------------------

    def engineering(self, obj: TwinObject, attr: int, t: float) -> Any:
        """What a point on this attribute shows now, in engineering units (None: nothing)."""
        if obj.class_id == 8:
            return t
        if obj.class_id == 70:  # the disconnector's state, not the object's signal
            state = self._disconnect(obj, attr, int(t * 1000))
            return None if state is None else state.value
        if obj.class_id == 5 and attr == 3 and not obj.zeroed(t):
            t = t // DEMAND_PERIOD * DEMAND_PERIOD
        data = obj.typed(t)
        if data.type in TEXT_TYPES:
            return data.value.decode("latin-1") if isinstance(data.value, bytes) else data.value
        if data.type == DataType.BOOLEAN:
            return bool(data.value)
        return plain_number(obj.from_raw(data.value))

    def pin(self, obj: TwinObject, value: Any) -> None:
        """Pin an object to an engineering value (a text for a Data text object)."""
        if obj.class_id == 8:
            self.clock.set(float(value))
            return
        if obj.text is not None or obj.dtype in TEXT_TYPES:
            obj.pinned = value if isinstance(value, bytes) else str(value)
            return
        raw = obj.to_raw(Fraction(repr(float(value))) if isinstance(value, float) else value)
        obj.pinned = obj.from_raw(raw)


_Handler = Callable[[Meter, TwinObject, int, int], Data | None]
_VALUES: dict[int, _Handler] = {
    1: Meter._data,
    3: Meter._register,
    4: Meter._extended,
    5: Meter._demand,
    7: Meter._profile,
    8: Meter._clock,
    9: Meter._script_table,
    15: Meter._association,
    70: Meter._disconnect,
}
_Setter = Callable[[Meter, TwinObject, int, Data], tuple[int, Write | None]]
_SETTERS: dict[int, _Setter] = {8: Meter._set_clock, 70: Meter._set_control_mode}
