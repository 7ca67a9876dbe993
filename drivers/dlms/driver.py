"""The dlms driver: polls a DLMS/COSEM meter (registers, clock, load and billing profiles).

One association per meter, opened lazily and kept between polls (or released after each poll,
see `close_after_poll`). Registers: the scaler/unit attribute is read once per association
and cached; values go back raw with the scaler as the reading's exponent, so the core scales
exactly. Profiles: the buffer is read by date range from a cursor kept in the device state;
entries come back as time series with the meter's own timestamps (see docs/dlms.md for the
delivery semantics).

Commands (docs/dlms.md, "Commands"): a write is a SET of the point's attribute and a GET of it,
an action a method, a SET or a script, each with its read-back in ONE bus transaction, on the
association the driver keeps. The driver's lock keeps a poll and a command of the same meter
from interleaving on that association.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from drivers.dlms import codec, obis
from drivers.dlms.client import AssociationError, AssociationLost, CosemClient, CosemError, ProtocolError, Ref
from drivers.dlms.config import (
    CLOCK,
    CLOCK_OBIS,
    DATA,
    DEMAND_REGISTER,
    DISCONNECT_CONTROL,
    EXTENDED_REGISTER,
    PROFILE_GENERIC,
    REGISTER,
    SCRIPT_TABLE,
    DlmsAction,
    DlmsDevice,
    DlmsParameter,
    DlmsPoint,
)
from drivers.dlms.transport import (
    ApduLink,
    Channel,
    HdlcLink,
    LinkCorrupt,
    LinkError,
    LinkTimeout,
    OpticalChannel,
    SerialChannel,
    TcpChannel,
    WrapperLink,
)
from gateway.driver import (
    NO_VALUE,
    DeviceError,
    DeviceTimeout,
    Driver,
    DriverContext,
    NoValue,
    PointError,
    RawReadings,
    RawValue,
    WriteRefused,
    WriteRequest,
)
from gateway.models import ActionConfig
from gateway.points import Quality

ASSOCIATION_LN = "0.0.40.0.0.255"
CAPTURE_MARGIN_MS = 60_000  # an entry stamped T may be stored a little after T
CLOCK_SET_KEY = "clock_set_at"  # device state: epoch s of the last clock_sync set
_VALUE_TYPES = (int, float, bool, str)
T = TypeVar("T")


class DlmsRefused(WriteRefused):
    """The meter refused a SET or an ACTION: `result` is the data-access-result / action-result name."""

    def __init__(self, what: str, dar: int, names: Mapping[int, str] = codec.DAR_NAMES) -> None:
        self.dar = dar
        self.result = names.get(dar, f"result {dar}")
        super().__init__(f"{what}: {self.result}")


@dataclass(slots=True)
class _ScalarPoint:
    index: int
    value: Ref
    scaler: Ref | None = None
    stamp: Ref | None = None  # capture time (Extended / Demand register)
    is_clock: bool = False
    drift: bool = False


@dataclass(slots=True)
class _ProfileGroup:
    obis: str
    points: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _ProfileInfo:
    columns: list[tuple[int, str, int]]
    clock_column: int | None
    period: int
    unix_clock: bool = False


class DlmsDriver(Driver[DlmsDevice, None]):
    def __init__(self, ctx: DriverContext) -> None:
        super().__init__(ctx)
        self._client: CosemClient | None = None
        self._zone = ZoneInfo(self.config.timezone)
        self._inverted = self.config.deviation == "inverted"
        self._scalers: dict[Ref, tuple[int, int] | CosemError] = {}
        self._profiles: dict[str, _ProfileInfo | CosemError] = {}
        self._scalar: list[_ScalarPoint] = []
        self._groups: dict[str, _ProfileGroup] = {}
        self._point_errors: dict[int, str] = {}
        self._unit_warned: set[int] = set()
        self._device_error: str | None = None
        self._cursors: dict[str, int] = {}
        self._clock_attempt: float | None = None  # monotonic time of the last clock_sync attempt
        self._gap_logged: set[str] = set()
        self._event_problems: dict[str, str] = {}  # event log -> the problem logged for it
        self._types: dict[Ref, codec.DataType] = {}  # attribute types the meter answered, for writes
        self._lock = asyncio.Lock()  # one poll or command at a time on the association
        self._abandoned = False  # an exchange was cancelled midway: the link state is unknown
        self._answered_here = False  # the meter answered once: its timeouts say something about the path
        self._plan()

    # -- set-up ----------------------------------------------------------------------------------

    @property
    def points(self) -> Sequence[DlmsPoint]:
        return self.ctx.points  # type: ignore[return-value]

    def _plan(self) -> None:
        self._scalar = []
        self._groups = {}
        for i, p in enumerate(self.points):
            if p.class_id == PROFILE_GENERIC:
                self._groups.setdefault(p.obis, _ProfileGroup(p.obis)).points.append(i)
                continue
            sp = _ScalarPoint(i, Ref(p.class_id, p.obis, p.attribute))
            if p.class_id in (REGISTER, EXTENDED_REGISTER) and p.attribute == 2:
                sp.scaler = Ref(p.class_id, p.obis, 3)
            elif p.class_id == DEMAND_REGISTER and p.attribute in (2, 3):
                sp.scaler = Ref(p.class_id, p.obis, 4)
            if p.class_id == EXTENDED_REGISTER and p.attribute == 2:
                sp.stamp = Ref(p.class_id, p.obis, 5)
            elif p.class_id == DEMAND_REGISTER and p.attribute == 3:
                sp.stamp = Ref(p.class_id, p.obis, 6)
            if p.class_id == CLOCK:
                sp.is_clock = True
                sp.drift = p.quantity == "clock_drift"
            self._scalar.append(sp)

    async def replan(self) -> None:
        self._plan()

    def _channel(self) -> Channel:
        cfg = self.config
        bus = self.ctx.bus
        if cfg.tcp is not None:
            host, port = cfg.tcp.host, cfg.tcp.port
            paths = bus.use_paths(cfg.tcp, cfg.failover)
            return bus.shared("dlms-tcp", lambda: TcpChannel(host, port, paths))
        if cfg.optical is not None:
            opt = cfg.optical
            return bus.shared(
                "dlms-optical", lambda: OpticalChannel(opt.port, opt.baudrate, opt.mode_e, opt.device_address)
            )
        if bus.serial is not None:
            s = bus.serial
            return bus.shared(
                "dlms-serial", lambda: SerialChannel(s.port, s.baudrate, s.bytesize, s.parity, s.stopbits)
            )
        if bus.tcp is not None:
            # a serial-to-Ethernet converter in front of the RS-485 line: HDLC over its TCP port
            t = bus.tcp
            return bus.shared("dlms-tcp", lambda: TcpChannel(t.host, t.port, bus.paths))
        raise DeviceError(f"bus {bus.id!r} has neither serial nor tcp settings")

    def _build_client(self) -> CosemClient:
        cfg = self.config
        channel = self._channel()
        link: ApduLink
        if cfg.resolved_transport == "wrapper":
            link = WrapperLink(channel, cfg.client_sap, cfg.logical_address)
        else:
            link = HdlcLink(
                channel,
                cfg.client_sap,
                cfg.logical_address,
                cfg.physical,
                cfg.address_size,
                max_info=cfg.max_info,
                window=cfg.window,
            )
        password = cfg.password.get_secret_value().encode() if cfg.password is not None else None
        return CosemClient(
            link,
            client_sap=cfg.client_sap,
            logical=cfg.logical_address,
            auth=cfg.auth,
            password=password,
            keys=cfg.keys,
            security=cfg.security,
            max_pdu=cfg.max_pdu,
            transaction=self.ctx.bus.transaction,
            ic_load=self._ic_load,
            ic_reserve=self._ic_reserve,
        )

    def _ic_load(self) -> int:
        value = self.ctx.state.get("invocation_counter", 0)
        return int(value) if isinstance(value, int) else 0

    def _ic_reserve(self, limit: int) -> None:
        # Durable before any counter of the new block is used: a crash skips counters, never reuses one.
        self.ctx.state.commit({"invocation_counter": limit})

    @property
    def client(self) -> CosemClient:
        if self._client is None:
            self._client = self._build_client()
        return self._client

    async def start(self) -> None:
        # Lazy: the first poll connects, so an unreachable meter is a failed poll, not a failed start.
        cursors = self.ctx.state.get("profile_cursors", {})
        if isinstance(cursors, dict):
            self._cursors = {str(k): int(v) for k, v in cursors.items() if isinstance(v, int)}

    async def stop(self) -> None:
        async with self._lock:
            if self._client is not None and self._client.associated and not self._abandoned:
                with contextlib.suppress(Exception):
                    await self._client.release(min(self.config.timeout, 2.0))

    async def _recover(self) -> None:
        """After a cancelled exchange: start again with a new link and association."""
        if not self._abandoned:
            return
        self._abandoned = False
        self._forget()
        if self._client is not None and isinstance(self._client.link, WrapperLink):
            # No sequence numbers on the wrapper: the answer to the cancelled request may still come.
            with contextlib.suppress(Exception):
                await self._client.link.channel.aclose()

    # -- polling ---------------------------------------------------------------------------------

    async def read(self) -> RawReadings:
        async with self._lock:
            await self._recover()
            try:
                return await self._read()
            except asyncio.CancelledError:
                self._abandoned = True
                raise

    async def _read(self) -> RawReadings:
        cfg = self.config
        attempts = cfg.retries + 1
        for attempt in range(attempts):
            try:
                await self._follow_path()
                if not self.client.associated:
                    await self.client.associate(cfg.timeout)
                    self._scalers = {k: v for k, v in self._scalers.items() if not isinstance(v, CosemError)}
                result, cursors = await self._poll()
                if cfg.release_after_poll:
                    with contextlib.suppress(LinkError, ProtocolError, AssociationLost, CosemError):
                        await self.client.release(cfg.timeout)
                self._device_ok()
                self._path_answered()
                if cursors:
                    # The next poll reads on from here; on disk the cursor moves only once the core
                    # has these entries safe (RawReadings.commit), so a crash re-reads, never skips.
                    self._cursors.update(cursors)
                    result.commit = {"profile_cursors": dict(self._cursors)}
                return result
            except LinkCorrupt as exc:
                self._forget()
                raise self._device_failed(DeviceError(f"corrupted reply: {exc}")) from None
            except LinkTimeout as exc:
                self._path_timed_out()
                self._forget()
                # A dead meter costs one timeout per poll, not one per retry.
                raise self._device_failed(DeviceTimeout(str(exc))) from None
            except AssociationError as exc:
                self._forget()
                raise self._device_failed(DeviceError(str(exc))) from None
            except (LinkError, AssociationLost, ProtocolError, codec.CodecError) as exc:
                self._forget()
                if attempt + 1 < attempts:
                    continue
                raise self._device_failed(DeviceError(_describe(exc))) from None
            except CosemError as exc:
                # a refusal outside a single attribute (a confirmed-service-error): the whole poll
                self._forget()
                raise self._device_failed(DeviceError(_describe(exc))) from None
        raise DeviceError("unreachable")  # pragma: no cover - the loop returns or raises

    # -- alternate paths (the bus decides; the driver says what it saw) ------------------------------

    def _tcp_channel(self) -> TcpChannel | None:
        channel = self.client.link.channel
        return channel if isinstance(channel, TcpChannel) and channel.paths is not None else None

    async def _follow_path(self) -> None:
        """At a poll's start (an association boundary): leave a connection to a path the bus left."""
        channel = self._tcp_channel()
        if channel is None:
            return
        async with self.ctx.bus.transaction():
            moved = await channel.follow()
        if moved:
            self._forget()

    def _path_answered(self) -> None:
        channel = self._tcp_channel()
        if channel is not None and channel.paths is not None:
            self._answered_here = True
            channel.paths.answered()

    def _path_timed_out(self) -> None:
        # A meter that never answered says nothing about the path; a connect timeout was reported
        # by the channel as a connection failure.
        channel = self._tcp_channel()
        if channel is not None and channel.paths is not None and self._answered_here and channel.is_open:
            channel.paths.timed_out()

    def _forget(self) -> None:
        if self._client is not None:
            self._client.forget()
            self._client.link.reset()
            if isinstance(self._client.link, WrapperLink):
                # No sequence numbers on the wrapper: a late answer could pass for the next one.
                self._client.link.channel.discard_input()

    def _device_failed(self, exc: DeviceError) -> DeviceError:
        message = str(exc)
        if message != self._device_error:
            self.ctx.log.warning("dlms meter failed", error=message)
            self._device_error = message
        return exc

    def _device_ok(self) -> None:
        if self._device_error is not None:
            self.ctx.log.info("dlms meter answers again", previous_error=self._device_error)
            self._device_error = None

    def _point_failed(self, index: int, message: str) -> PointError:
        if self._point_errors.get(index) != message:
            self._point_errors[index] = message
            self.ctx.log.warning("dlms point unreadable", point=self.points[index].id, error=message)
        return PointError(message)

    def _point_ok(self, index: int) -> None:
        if index in self._point_errors:
            del self._point_errors[index]
            self.ctx.log.info("dlms point readable again", point=self.points[index].id)

    async def _get_many(self, refs: Sequence[Ref]) -> list[Any]:
        """Values (or CosemError) of several attributes: GET-with-list where allowed, else one by one."""
        client = self.client
        timeout = self.config.timeout
        out: list[Any] = []
        step = self.config.list_max
        for k in range(0, len(refs), step):
            chunk = list(refs[k : k + step])
            if len(chunk) > 1 and self.config.with_list and client.supports_list():
                try:
                    out.extend(await client.get_list(chunk, timeout))
                    continue
                except (CosemError, ProtocolError) as exc:
                    # The meter claims multiple references but refuses the list: read singly from now on.
                    client.with_list_ok = False
                    self.ctx.log.info("dlms meter refuses GET-with-list, reading attributes one by one", error=str(exc))
            for ref in chunk:
                try:
                    out.append(await client.get(ref, timeout))
                except CosemError as exc:
                    out.append(exc)
        return out

    async def _scaler_units(self, refs: Sequence[Ref]) -> None:
        missing = list(dict.fromkeys(r for r in refs if r not in self._scalers))
        if not missing:
            return
        for ref, value in zip(missing, await self._get_many(missing), strict=True):
            if isinstance(value, CosemError):
                self._scalers[ref] = value
            elif isinstance(value, list) and len(value) == 2 and all(isinstance(x, int) for x in value):
                self._scalers[ref] = (int(value[0]), int(value[1]))
            else:
                self._scalers[ref] = CosemError(codec.DAR_TYPE_UNMATCHED, f"{ref}: scaler_unit is not {{scaler, unit}}")

    async def _poll(self) -> tuple[RawReadings, dict[str, int]]:
        n = len(self.points)
        values: list[RawValue] = [None] * n
        stamps: list[int | None] = [None] * n
        exponents: list[int | None] = [None] * n
        qualities: list[Quality | None] = [None] * n
        readings = RawReadings(values, stamps, exponents, qualities)

        await self._scaler_units([sp.scaler for sp in self._scalar if sp.scaler is not None])

        clock_ref = Ref(CLOCK, CLOCK_OBIS, 2)
        need_clock = bool(self._groups) or bool(self.config.event_logs) or self.config.clock_sync is not None
        refs: list[Ref] = []
        for sp in self._scalar:
            refs.append(sp.value)
            if sp.stamp is not None:
                refs.append(sp.stamp)
        if need_clock and clock_ref not in refs:
            refs.append(clock_ref)
        refs = list(dict.fromkeys(refs))
        t0 = time.time()
        results = dict(zip(refs, await self._get_many(refs), strict=True)) if refs else {}
        gateway_ms = int((t0 + time.time()) / 2 * 1000)

        meter_ms: int | None = None
        clock_value = results.get(clock_ref)
        if clock_value is not None and not isinstance(clock_value, CosemError):
            meter_ms = self._datetime_ms(clock_value)

        for sp in self._scalar:
            self._fill_scalar(sp, results, gateway_ms, readings)

        cursors: dict[str, int] = {}
        for group in self._groups.values():
            cursor = await self._read_profile(group, meter_ms, readings)
            if cursor is not None:
                cursors[group.obis] = cursor
        for log in self.config.event_logs:
            cursor = await self._read_events(log, meter_ms, readings)
            if cursor is not None:
                cursors[log] = cursor

        if self.config.clock_sync is not None and meter_ms is not None:
            await self._keep_clock(meter_ms - gateway_ms)
        return readings, cursors

    # -- registers, data, clock ------------------------------------------------------------------

    def _fill_scalar(self, sp: _ScalarPoint, results: dict[Ref, Any], gateway_ms: int, out: RawReadings) -> None:
        i = sp.index
        point = self.points[i]
        assert out.timestamps is not None and out.exponents is not None and out.qualities is not None
        value = results.get(sp.value)
        if isinstance(value, CosemError):
            out.values[i] = self._point_failed(i, str(value))
            return
        if sp.is_clock:
            ts = self._datetime_ms(value)
            if ts is None:
                out.values[i] = self._point_failed(i, "the clock does not decode as a date-time")
                return
            if sp.drift:
                out.values[i] = ts - gateway_ms  # ms, exact with the exponent
                out.exponents[i] = -3
            else:
                out.values[i] = datetime.fromtimestamp(ts / 1000, tz=UTC).isoformat(timespec="milliseconds")
            out.timestamps[i] = ts
            self._point_ok(i)
            return
        raw = _raw(value)
        if isinstance(raw, PointError):
            out.values[i] = self._point_failed(i, raw.message)
            return
        if sp.scaler is not None:
            su = self._scalers.get(sp.scaler)
            if isinstance(su, CosemError) or su is None:
                out.values[i] = self._point_failed(i, f"scaler_unit unreadable: {su}")
                return
            if not isinstance(raw, int | float) or isinstance(raw, bool):
                out.values[i] = self._point_failed(i, f"register value is not a number: {raw!r}")
                return
            scaler, unit = su
            out.exponents[i] = scaler
            if not self._unit_matches(i, point, unit):
                out.qualities[i] = Quality.UNCERTAIN
        if sp.stamp is not None:
            stamp = results.get(sp.stamp)
            out.timestamps[i] = None if isinstance(stamp, CosemError) else self._datetime_ms(stamp)
        out.values[i] = raw
        self._point_ok(i)

    def _unit_matches(self, index: int, point: DlmsPoint, unit_code: int) -> bool:
        symbol = codec.unit_symbol(unit_code)
        if symbol is None or symbol == point.unit:
            return True
        if index not in self._unit_warned:
            self._unit_warned.add(index)
            self.ctx.log.warning(
                "dlms meter reports another unit than the profile",
                point=point.id,
                meter_unit=symbol,
                profile_unit=point.unit,
            )
        return False

    def _datetime_ms(self, value: Any) -> int | None:
        """A date-time value (12 octets, or a gurux GXDateTime) -> epoch ms."""
        if isinstance(value, bytes | bytearray) and len(value) == 12:
            try:
                return codec.decode_datetime(bytes(value)).to_epoch_ms(self._zone, self._inverted)
            except codec.CodecError:
                return None
        dt = getattr(value, "value", None)
        if isinstance(dt, datetime):
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=self._zone)
            return int(dt.timestamp() * 1000)
        return None

    def _encode_time(self, ts_ms: int) -> bytes:
        return codec.datetime_from_epoch_ms(ts_ms, self._zone, inverted=self._inverted, status=None).encode()

    def _clock_octets(self, ts_ms: int) -> codec.Data:
        """A time to set the meter's clock to: its zone, the deviation, a clock status with DST."""
        moment = codec.datetime_from_epoch_ms(ts_ms, self._zone, inverted=self._inverted, status=0)
        return codec.octets(moment.encode())

    async def _measure_drift(self) -> tuple[int, int] | None:
        """(meter ms, drift ms) from one GET of the clock alone, timed by its own round trip."""
        t0 = time.time()
        value = await self.client.get(Ref(CLOCK, CLOCK_OBIS, 2), self.config.timeout)
        mid_ms = int((t0 + time.time()) / 2 * 1000)
        meter_ms = self._datetime_ms(value)
        return None if meter_ms is None else (meter_ms, meter_ms - mid_ms)

    def _clock_set_due(self, policy_interval: float) -> bool:
        last = self.ctx.state.get(CLOCK_SET_KEY)
        now = time.time()
        # A stamp in the future means the gateway's clock was stepped back: it says nothing.
        if isinstance(last, int | float) and not isinstance(last, bool) and 0 <= now - last < policy_interval:
            return False
        return self._clock_attempt is None or time.monotonic() - self._clock_attempt >= policy_interval

    async def _keep_clock(self, drift_ms: int) -> None:
        """clock_sync: set the meter's clock when it drifts beyond max_drift, at most once per interval.

        The poll's drift comes from a GET-with-list; it is measured again alone before the set. A
        failure here is logged and leaves the poll's readings alone.
        """
        policy = self.config.clock_sync
        assert policy is not None
        limit_ms = policy.max_drift * 1000
        if abs(drift_ms) <= limit_ms or not self._clock_set_due(policy.interval):
            return
        timeout = self.config.timeout
        after: tuple[int, int] | None = None
        try:
            async with self.client.exclusive():
                measured = await self._measure_drift()
                if measured is None or abs(measured[1]) <= limit_ms:
                    return
                before_ms, drift_ms = measured
                self._clock_attempt = time.monotonic()
                target_ms = int(time.time() * 1000)
                await self.client.set(Ref(CLOCK, CLOCK_OBIS, 2), self._clock_octets(target_ms), timeout)
                with contextlib.suppress(CosemError):
                    after = await self._measure_drift()
        except CosemError as exc:
            self.ctx.log.warning(
                "dlms meter clock set refused", error=str(exc), drift_s=drift_ms / 1000, next_try_s=policy.interval
            )
            return
        except (LinkError, AssociationLost, ProtocolError) as exc:
            # Whether the meter took the time is unknown; the attempt counts against the interval.
            self._forget()
            self.ctx.log.warning("dlms meter clock set failed", error=_describe(exc), drift_s=drift_ms / 1000)
            return
        done_at = time.time()
        try:
            self.ctx.state.commit({CLOCK_SET_KEY: round(done_at, 3)})
        except OSError as exc:
            self.ctx.log.warning("dlms clock set time not stored", error=str(exc))
        self.ctx.log.info(
            "dlms meter clock set",
            drift_s=drift_ms / 1000,
            max_drift_s=policy.max_drift,
            meter_time=_iso(before_ms),
            set_to=_iso(target_ms),
            drift_after_s=after[1] / 1000 if after is not None else None,
            next_set_after_s=policy.interval,
        )

    # -- profiles --------------------------------------------------------------------------------

    async def _profile_info(self, profile: str) -> _ProfileInfo | CosemError:
        cached = self._profiles.get(profile)
        if cached is not None:
            return cached
        got = await self._get_many([Ref(PROFILE_GENERIC, profile, 3), Ref(PROFILE_GENERIC, profile, 4)])
        captured, period = got
        if isinstance(captured, CosemError):
            info: _ProfileInfo | CosemError = captured
        else:
            columns: list[tuple[int, str, int]] = []
            for item in captured if isinstance(captured, list) else []:
                if not (
                    isinstance(item, list)
                    and len(item) >= 3
                    and isinstance(item[0], int)
                    and isinstance(item[1], bytes | bytearray)
                    and len(item[1]) == 6
                    and isinstance(item[2], int)
                ):
                    raise ProtocolError(f"{profile}: capture_objects entry is not {{class, OBIS, attribute, index}}")
                columns.append((int(item[0]), codec.obis_text(bytes(item[1])), int(item[2])))
            clock_col = next((k for k, c in enumerate(columns) if c[0] == CLOCK and c[2] == 2), None)
            unix = False
            if clock_col is None:
                clock_col = next((k for k, c in enumerate(columns) if c[:2] == (DATA, "0.0.1.1.0.255")), None)
                unix = clock_col is not None
            info = _ProfileInfo(columns, clock_col, int(period) if isinstance(period, int) else 0, unix)
        self._profiles[profile] = info
        return info

    def _column_of(self, info: _ProfileInfo, point: DlmsPoint) -> int | None:
        for k, (cid, o, attr) in enumerate(info.columns):
            if o == point.column and attr == point.column_attribute and point.column_class in (None, cid):
                return k
        return None

    async def _read_profile(self, group: _ProfileGroup, meter_ms: int | None, out: RawReadings) -> int | None:
        """Read the group's new entries into `out`; returns the new cursor (not yet stored)."""
        info = await self._profile_info(group.obis)
        problem = _profile_unusable(group.obis, info, meter_ms)
        if problem is not None:
            for i in group.points:
                out.values[i] = self._point_failed(i, problem)
            return None
        assert isinstance(info, _ProfileInfo) and meter_ms is not None
        col_of = await self._profile_columns(group, info, out)
        if not col_of:
            return None
        entries: list[tuple[int, list[Any]]] = []
        try:
            new_cursor = await self._read_range(group.obis, info, meter_ms, entries)
        except CosemError as exc:
            for i in col_of:
                out.values[i] = self._point_failed(i, f"profile buffer: {exc}")
            return None
        entries.sort(key=lambda e: e[0])
        for i, col in col_of.items():
            self._spread(i, [(ts, _raw(row[col])) for ts, row in entries], out)
        return new_cursor

    async def _read_events(self, log: str, meter_ms: int | None, out: RawReadings) -> int | None:
        """An event log's new entries as events in `out` (same range reading and cursor as a profile)."""
        info = await self._profile_info(log)
        problem = _profile_unusable(log, info, meter_ms)
        entries: list[tuple[int, list[Any]]] = []
        new_cursor: int | None = None
        if problem is None:
            assert isinstance(info, _ProfileInfo) and meter_ms is not None
            try:
                new_cursor = await self._read_range(log, info, meter_ms, entries, distinct_rows=True)
            except CosemError as exc:
                problem = f"event log buffer: {exc}"
        if problem is not None:
            if self._event_problems.get(log) != problem:
                self._event_problems[log] = problem
                self.ctx.log.warning("dlms event log unreadable", log=log, error=problem)
            return None
        self._event_problems.pop(log, None)
        assert isinstance(info, _ProfileInfo)
        # A stable sort: events sharing a stamp keep the meter's order.
        entries.sort(key=lambda e: e[0])
        out.events.extend(_event(log, info, ts, row) for ts, row in entries)
        return new_cursor

    async def _profile_columns(self, group: _ProfileGroup, info: _ProfileInfo, out: RawReadings) -> dict[int, int]:
        """The column of each of the group's points, with its scaler set in `out` (failures marked)."""
        assert out.exponents is not None
        col_of: dict[int, int] = {}
        scaler_refs: dict[int, Ref] = {}
        for i in group.points:
            point = self.points[i]
            col = self._column_of(info, point)
            if col is None:
                out.values[i] = self._point_failed(i, f"{point.column} is not captured by profile {group.obis}")
                continue
            col_of[i] = col
            cid, o, attr = info.columns[col]
            if cid in (REGISTER, EXTENDED_REGISTER) and attr == 2:
                scaler_refs[i] = Ref(cid, o, 3)
            elif cid == DEMAND_REGISTER and attr in (2, 3):
                scaler_refs[i] = Ref(cid, o, 4)
        if not col_of:
            return col_of
        await self._scaler_units(list(scaler_refs.values()))
        for i, ref in scaler_refs.items():
            su = self._scalers.get(ref)
            if isinstance(su, tuple):
                out.exponents[i] = su[0]
                self._unit_matches(i, self.points[i], su[1])
            else:
                out.values[i] = self._point_failed(i, f"scaler_unit of {ref} unreadable: {su}")
                col_of.pop(i)
        return col_of

    async def _read_range(
        self,
        profile: str,
        info: _ProfileInfo,
        meter_ms: int,
        entries: list[tuple[int, list[Any]]],
        distinct_rows: bool = False,
    ) -> int | None:
        """Read entries newer than the cursor into `entries`, in chunks; returns the new cursor."""
        assert info.clock_column is not None
        cfg = self.config
        cursor = self._cursors.get(profile)
        horizon = meter_ms - int(cfg.backfill * 1000)
        if cursor is not None and cursor < horizon and profile not in self._gap_logged:
            self._gap_logged.add(profile)
            self.ctx.log.warning(
                "dlms profile entries older than the backfill depth are skipped",
                profile=profile,
                cursor=cursor,
                backfill_s=cfg.backfill,
            )
        floor = cursor if cursor is not None and cursor >= horizon else None
        start = floor if floor is not None else horizon
        clock_ref = Ref(*info.columns[info.clock_column])
        new_cursor = cursor
        # A profile captured on events or once a month has few entries: one request for the whole depth.
        chunk_ms = int(max(cfg.profile_chunk, info.period) * 1000) if info.period > 0 else max(meter_ms - start, 1000)
        for _ in range(cfg.profile_chunks_per_poll):
            end = min(start + chunk_ms, meter_ms)
            rows = await self.client.get_rows_by_range(
                profile, clock_ref, self._encode_time(start), self._encode_time(end), cfg.timeout
            )
            last_ts = self._rows(info, rows, floor, start, end, entries, distinct_rows)
            reached = max(
                x for x in (last_ts, min(end, meter_ms - CAPTURE_MARGIN_MS), new_cursor, floor) if x is not None
            )
            new_cursor = floor = start = reached
            if end >= meter_ms:
                break
        return new_cursor

    def _spread(self, i: int, series: list[tuple[int, RawValue]], out: RawReadings) -> None:
        """A point's new entries: the newest as its value (with its stamp), the rest as series."""
        assert out.timestamps is not None
        self._point_ok(i)
        if not series:
            out.values[i] = NO_VALUE
            return
        *older, (ts_last, raw_last) = series
        for ts, raw in older:
            out.series.append((i, raw, ts))
        out.values[i] = raw_last
        out.timestamps[i] = ts_last

    def _rows(
        self,
        info: _ProfileInfo,
        rows: list[Any],
        floor: int | None,
        start: int,
        end: int,
        entries: list[tuple[int, list[Any]]],
        distinct_rows: bool = False,
    ) -> int | None:
        """Append the rows newer than `floor` (or from `start` with no floor); returns the last stamp.

        A profile has one entry per stamp (a repeat is the chunk overlap); an event log may log
        several events in one second, so with `distinct_rows` only an identical row is a repeat.
        """
        assert info.clock_column is not None
        last: int | None = None
        prev: int | None = None
        seen: set[Any] = {(ts, repr(row)) if distinct_rows else ts for ts, row in entries}
        for row in rows:
            if not isinstance(row, list) or len(row) != len(info.columns):
                raise ProtocolError("profile entry does not match the capture objects")
            stamp = row[info.clock_column]
            if info.unix_clock and isinstance(stamp, int):
                ts: int | None = int(stamp) * 1000
            elif stamp is None and prev is not None and info.period > 0:
                ts = prev + info.period * 1000  # a compressed profile leaves repeated stamps null
            else:
                ts = self._datetime_ms(stamp)
            if ts is None:
                continue
            prev = ts
            key = (ts, repr(row)) if distinct_rows else ts
            if (floor is not None and ts <= floor) or (floor is None and ts < start) or ts > end or key in seen:
                continue
            seen.add(key)
            entries.append((ts, row))
            last = ts if last is None else max(last, ts)
        return last

    # -- commands --------------------------------------------------------------------------------

    async def write(self, request: WriteRequest) -> RawValue:
        """SET the point's attribute to `request.raw` (in the attribute's own type), then GET it back."""
        point = self.points[request.index]
        ref = Ref(point.class_id, point.obis, point.attribute)
        timeout = self.config.timeout

        async def mutate() -> None:
            dtype = await self._write_type(point, ref)
            data = codec.value_of_type(dtype, request.raw)  # a ValueError when it has no such form
            await self._set(ref, data)

        async def read_back() -> RawValue:
            return _raw(await self.client.get(ref, timeout))

        def unread(exc: BaseException) -> RawValue:
            return PointError(f"written, but the read-back failed: {_describe(exc)}")

        return await self._command(mutate, read_back, unread)

    async def action(self, name: str, spec: ActionConfig, args: Mapping[str, Any]) -> Any:
        """A method, a SET or a script (see DlmsAction); the answer is a dict of what was read back."""
        if not isinstance(spec, DlmsAction):
            raise TypeError(f"action {name!r} is not a dlms action")
        timeout = self.config.timeout
        answer: dict[str, Any] = {}
        target = Ref(SCRIPT_TABLE, spec.script, 1) if spec.script is not None else None

        async def mutate() -> None:
            if spec.form == "script":
                assert target is not None and spec.selector is not None
                returned = await self._act(target, codec.u16(spec.selector))
            else:
                assert spec.class_id is not None and spec.obis is not None
                parameter = self._action_parameter(spec, args)
                if spec.form == "set":
                    assert spec.attribute is not None and parameter is not None
                    await self._set(Ref(spec.class_id, spec.obis, spec.attribute), parameter)
                    return
                assert spec.method is not None
                returned = await self._act(Ref(spec.class_id, spec.obis, spec.method), parameter)
            if returned is not None:
                answer["return"] = self._plain(returned)

        reads = dict(spec.read_back)
        if spec.form == "set" and not reads and spec.attribute is not None:
            reads = {"value": spec.attribute}

        async def read_back() -> dict[str, Any] | None:
            for key, attribute in reads.items():
                assert spec.class_id is not None and spec.obis is not None
                ref = Ref(spec.class_id, spec.obis, attribute)
                try:
                    answer[key] = self._plain(await self.client.get(ref, timeout), ref)
                except CosemError as exc:
                    answer[key] = None
                    answer.setdefault("read_back_error", f"{key}: {exc}")
            return answer or None

        def unread(exc: BaseException) -> dict[str, Any]:
            return {**answer, "read_back_error": f"done, but the read-back failed: {_describe(exc)}"}

        return await self._command(mutate, read_back, unread)

    async def _command(
        self,
        mutate: Callable[[], Awaitable[None]],
        read_back: Callable[[], Awaitable[T]],
        unread: Callable[[BaseException], T],
    ) -> T:
        """`mutate` then `read_back` in one bus transaction, on the association (opened if needed).

        The meter dropping the association before `mutate` was answered (an exception-response:
        nothing was done) re-associates and tries once more; a failure after it was answered is
        no longer the request's: the read-back gives `unread(exc)` instead.
        """
        cfg = self.config
        async with self._lock:
            await self._recover()
            try:
                async with self.client.exclusive():
                    for attempt in range(2):
                        if not self.client.associated:
                            await self.client.associate(cfg.timeout)
                        try:
                            await mutate()
                            break
                        except AssociationLost:
                            self._forget()
                            if attempt:
                                raise
                        except DlmsRefused:
                            await self._release_if_asked()
                            raise
                    try:
                        result = await read_back()
                    except CosemError as exc:
                        result = unread(exc)
                    except (LinkError, AssociationLost, ProtocolError) as exc:
                        self._forget()
                        return unread(exc)
                    await self._release_if_asked()
                    return result
            except asyncio.CancelledError:
                self._abandoned = True
                raise
            except LinkTimeout as exc:
                self._forget()
                raise DeviceTimeout(str(exc)) from None
            except (LinkError, AssociationError, AssociationLost, ProtocolError) as exc:
                self._forget()
                raise DeviceError(_describe(exc)) from None
            except CosemError as exc:
                # a confirmed-service-error: the meter refused the service as such
                raise DlmsRefused("request", exc.dar) from None

    async def _release_if_asked(self) -> None:
        cfg = self.config
        if cfg.release_after_poll and self.client.associated:
            with contextlib.suppress(LinkError, ProtocolError, AssociationLost, CosemError):
                await self.client.release(cfg.timeout)

    async def _write_type(self, point: DlmsPoint, ref: Ref) -> codec.DataType:
        """The type a write is encoded with: the point's `type`, else what the meter answers for it."""
        if point.type is not None:
            return codec.TYPE_NAMES[point.type]
        known = self._types.get(ref)
        if known is not None:
            return known
        try:
            _value, tag = await self.client.get_typed(ref, self.config.timeout)
        except CosemError as exc:
            raise DlmsRefused(f"GET {ref} (its type, before the SET)", exc.dar) from None
        try:
            dtype = codec.DataType(tag)
        except ValueError:
            raise ValueError(f"{ref}: the meter answers an unknown type {tag}") from None
        if dtype in (codec.DataType.NULL, codec.DataType.ARRAY, codec.DataType.STRUCTURE):
            raise ValueError(f"{ref} is a structured (or null) value: give the point a `type` to write it")
        self._types[ref] = dtype
        return dtype

    async def _set(self, ref: Ref, data: codec.Data) -> None:
        try:
            await self.client.set(ref, data, self.config.timeout)
        except CosemError as exc:
            raise DlmsRefused(f"SET {ref}", exc.dar) from None

    async def _act(self, method: Ref, parameter: codec.Data | None) -> Any:
        try:
            return await self.client.action(method, parameter, self.config.timeout)
        except CosemError as exc:
            what = f"ACTION {method.obis} (class {method.class_id}, method {method.attribute})"
            raise DlmsRefused(what, exc.dar, codec.ACTION_RESULT_NAMES) from None

    def _action_parameter(self, spec: DlmsAction, args: Mapping[str, Any]) -> codec.Data | None:
        """The method's parameter or the value set: the constant, or the argument in its type."""
        if spec.arg is None:
            return _constant(spec.parameter)
        value = args.get(spec.arg)
        if value is None:
            value = spec.args[spec.arg].default
        if spec.args[spec.arg].type == "datetime":
            at_ms = int(time.time() * 1000) if value is None else _epoch_ms_of(value)
            return self._clock_octets(at_ms)
        assert spec.type is not None and spec.type != "date_time"
        return codec.value_of_type(codec.TYPE_NAMES[spec.type], value)

    def _plain(self, value: Any, ref: Ref | None = None) -> Any:
        """A value read back (or returned) as JSON: date-times as ISO 8601 UTC text."""
        if ref is not None and ref.class_id == CLOCK and ref.attribute == 2:
            ts = self._datetime_ms(value)
            return _iso(ts) if ts is not None else None
        if isinstance(value, list):
            return [self._plain(v) for v in value]
        raw = _raw(value)
        return None if isinstance(raw, PointError | NoValue) else raw

    # -- discovery -------------------------------------------------------------------------------

    async def discover(self) -> list[dict[str, Any]]:
        """The association's object list as profile points (see docs/dlms.md, completing a profile)."""
        async with self._lock:
            await self._recover()
            return await self._discover_once()

    async def _discover_once(self) -> list[dict[str, Any]]:
        try:
            return await self._discover()
        except LinkTimeout as exc:
            self._forget()
            raise DeviceTimeout(str(exc)) from None
        except (LinkError, AssociationError, AssociationLost, ProtocolError, CosemError, codec.CodecError) as exc:
            self._forget()
            raise DeviceError(_describe(exc)) from None

    async def _discover(self) -> list[dict[str, Any]]:
        cfg = self.config
        if not self.client.associated:
            await self.client.associate(cfg.timeout)
        listing = await self.client.get(Ref(15, ASSOCIATION_LN, 2), cfg.timeout)
        objects = _object_list(listing)
        points: list[dict[str, Any]] = []
        used: set[str] = set()

        def add(point: dict[str, Any]) -> None:
            base = point["id"]
            pid, k = base, 2
            while pid in used:
                pid, k = f"{base}_{k}", k + 1
            used.add(pid)
            point["id"] = pid
            points.append(point)

        registers = [(c, o) for c, o in objects if c in (REGISTER, EXTENDED_REGISTER, DEMAND_REGISTER)]
        await self._scaler_units([Ref(c, o, 4 if c == DEMAND_REGISTER else 3) for c, o in registers])
        for cid, code in objects:
            if cid in (DATA, REGISTER, EXTENDED_REGISTER, DEMAND_REGISTER, CLOCK):
                for point in self._value_points(cid, code):
                    add(point)
            elif cid == DISCONNECT_CONTROL:
                for point in _disconnect_points(code):
                    add(point)
        for cid, code in objects:
            if cid == PROFILE_GENERIC:
                info = await self._profile_info(code)
                if not isinstance(info, CosemError):
                    for point in _column_points(code, info):
                        add(point)
        return [p for p in points if _valid_point(p)]

    def _value_points(self, cid: int, code: str) -> list[dict[str, Any]]:
        """The discovered point(s) of one value object: a register with its unit, a clock's drift."""
        desc = obis.describe(code, cid)
        point: dict[str, Any] = {"id": desc["id"], "obis": code, "class": cid, "attribute": 2}
        point.update({k: desc[k] for k in ("quantity", "unit", "phase", "kind", "description") if desc.get(k)})
        if cid in (REGISTER, EXTENDED_REGISTER, DEMAND_REGISTER):
            su = self._scalers.get(Ref(cid, code, 4 if cid == DEMAND_REGISTER else 3))
            symbol = codec.unit_symbol(su[1]) if isinstance(su, tuple) else None
            if symbol is not None:
                point["unit"] = symbol
        if cid == CLOCK:
            return [{**point, "id": "clock_drift", "quantity": "clock_drift", "unit": "s", "kind": "gauge"}, point]
        return [point]


def _profile_unusable(profile: str, info: _ProfileInfo | CosemError, meter_ms: int | None) -> str | None:
    """Why a profile's entries cannot be read this poll, or None."""
    if isinstance(info, CosemError):
        return str(info)
    if info.clock_column is None:
        return f"profile {profile} captures no clock column"
    if meter_ms is None:
        return "the meter clock is unreadable: profile range unknown"
    return None


def _object_list(listing: Any) -> list[tuple[int, str]]:
    """(class, OBIS) of each well-formed entry of an association's object_list."""
    objects: list[tuple[int, str]] = []
    for item in listing if isinstance(listing, list) else []:
        if (
            isinstance(item, list)
            and len(item) >= 3
            and isinstance(item[0], int)
            and isinstance(item[2], bytes | bytearray)
            and len(item[2]) == 6
        ):
            objects.append((int(item[0]), codec.obis_text(bytes(item[2]))))
    return objects


def _disconnect_points(code: str) -> list[dict[str, Any]]:
    """A disconnect control's relay state and control state (switched by actions, docs/dlms.md)."""
    base = {"obis": code, "class": DISCONNECT_CONTROL, "kind": "state"}
    return [
        {**base, "id": "disconnect.output_state", "attribute": 2, "quantity": "breaker_state",
         "description": "relay output: true = connected"},
        {**base, "id": "disconnect.control_state", "attribute": 3, "quantity": "status",
         "description": "0 disconnected, 1 connected, 2 ready for reconnection"},
    ]  # fmt: skip


def _column_points(code: str, info: _ProfileInfo) -> list[dict[str, Any]]:
    """One discovered point per captured column of a profile (its clock columns left out)."""
    name = obis.profile_name(code)
    points: list[dict[str, Any]] = []
    for col_class, col_obis, col_attr in info.columns:
        if col_class == CLOCK or (col_class, col_obis) == (DATA, "0.0.1.1.0.255"):
            continue
        desc = obis.describe(col_obis, col_class)
        point = {
            "id": f"{name}.{desc['id']}",
            "obis": code,
            "class": PROFILE_GENERIC,
            "column": col_obis,
            "quantity": desc["quantity"],
            "unit": desc["unit"],
            "phase": desc["phase"],
            "kind": desc["kind"],
        }
        if col_attr != 2:
            point["column_attribute"] = col_attr
        points.append(point)
    return points


def _valid_point(point: dict[str, Any]) -> bool:
    try:
        DlmsPoint.model_validate(point)
    except ValueError:
        return False
    return True


def _raw(value: Any) -> RawValue:
    """A gurux-decoded value -> a raw reading (numbers unscaled, octet strings as text)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
        if raw and all(32 <= b < 127 for b in raw):
            return raw.decode("ascii")
        return raw.hex()
    inner = getattr(value, "value", None)
    if isinstance(inner, datetime):
        try:
            return inner.isoformat()
        except ValueError:  # gurux turns a deviation of +-24 h or more into an offset datetime refuses
            return PointError("a date-time with an impossible deviation")
    if isinstance(value, list):
        return PointError("a structured value: read one of its elements with a more specific point")
    return PointError(f"unsupported value type {type(value).__name__}")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return text if text else type(exc).__name__


def _event(log: str, info: _ProfileInfo, ts_ms: int, row: list[Any]) -> dict[str, Any]:
    """One event log entry as the `events` message: the meter's stamp, its code and name, other columns."""
    n = obis.event_log_number(log)
    event: dict[str, Any] = {
        "type": "dlms_event",
        "ts": ts_ms,
        "time": _iso(ts_ms),
        "log": obis.EVENT_LOGS.get(n, f"log_{n}") if n is not None else log,
        "log_obis": log,
        "code": None,
        "name": None,
    }
    extra: dict[str, Any] = {}
    for k, (cid, code_obis, attr) in enumerate(info.columns):
        if k == info.clock_column:
            continue
        value = _raw(row[k])
        plain = value.message if isinstance(value, PointError) else value
        # The code is the log's event-code object (0.0.96.11.n.255), else its first integer column.
        is_code = cid == DATA and code_obis.startswith("0.0.96.11.")
        if is_code and event["code"] is None and isinstance(value, int) and not isinstance(value, bool):
            event["code"] = value
            event["name"] = obis.event_name(value)
            continue
        extra[f"{code_obis}:{attr}"] = plain
    if event["code"] is None:
        for key, value in list(extra.items()):
            if isinstance(value, int) and not isinstance(value, bool):
                event["code"] = value
                event["name"] = obis.event_name(value)
                del extra[key]
                break
    if extra:
        event["columns"] = extra
    return event


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _constant(parameter: DlmsParameter | None) -> codec.Data | None:
    if parameter is None:
        return None
    return codec.value_of_type(codec.TYPE_NAMES[parameter.type], parameter.value)


def _epoch_ms_of(value: Any) -> int:
    """A datetime argument (ISO 8601 text with its offset, or epoch seconds) -> epoch ms."""
    if isinstance(value, bool):
        raise ValueError(f"not a date and time: {value!r}")
    if isinstance(value, int | float):
        return round(value * 1000)
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not an ISO 8601 date and time: {value!r}") from None
    else:
        raise ValueError(f"not a date and time: {value!r}")
    if moment.tzinfo is None:
        raise ValueError(f"{value!r}: give the UTC offset (2026-12-01T10:00:00+00:00)")
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000
