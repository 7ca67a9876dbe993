"""Commands: writes and named actions from MQTT and the CLI, safe by default (docs/commands.md).

One path for every request, whoever sends it:

    parse -> allowed? (commands on, device allowed, not stale, under the rate limit)
          -> resolve (a writable point or a defined action) -> check and convert (limits, type,
             engineering -> raw, exact) -> execute on the device's driver (write + read-back in
             one bus transaction, or the action) within the command timeout -> exactly one result,
             one audit log line and one `command` event.

Nothing here speaks a protocol: the driver's ``write``/``action`` do (gateway/driver.py).
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Literal, Protocol

import structlog

from gateway.driver import (
    DeviceError,
    DeviceTimeout,
    Driver,
    NoValue,
    PointError,
    RawValue,
    ReadBack,
    WriteRefused,
    WriteRequest,
)
from gateway.models import ActionArg, ActionConfig, DeviceConfig, PointConfig
from gateway.normalize import Normalizer, ratio, scale_exact

Status = Literal["ok", "rejected", "failed", "timeout"]


class Rejected(Exception):
    """A request refused before the device was touched; the message says why."""


# --- requests and results ---------------------------------------------------------------------


@dataclass(slots=True)
class Request:
    """One command as received: a point write or a named action."""

    device: str
    id: str | None = None
    point: str | None = None
    value: Any = None
    action: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    ts: int | None = None  # the sender's epoch ms, when it gave one
    priority: int | None = None  # BACnet write priority
    who: dict[str, str] = field(default_factory=dict)  # client id / user, when known; {"via": "cli"}
    received: float = field(default_factory=time.time)
    expired: bool = False  # MQTT 5 message expiry said so


def parse_request(device: str, payload: bytes, who: dict[str, str] | None = None) -> Request:
    """The JSON body of `{prefix}/{site}/{device}/command`; Rejected when it is not one."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise Rejected("the request is not JSON") from None
    if not isinstance(body, dict):
        raise Rejected("the request is a JSON object: {id, point, value} or {id, action, args}")
    req = Request(device=device, who=dict(who or {}))
    rid = body.get("id")
    req.id = None if rid is None else str(rid)
    unknown = set(body) - {"id", "point", "value", "action", "args", "ts", "priority"}
    if unknown:
        raise Rejected(f"unknown key(s) {sorted(unknown)}")
    if ("point" in body) == ("action" in body):
        raise Rejected("give either `point` (with `value`) or `action`")
    if "point" in body:
        if not isinstance(body["point"], str) or "value" not in body:
            raise Rejected("a write is {id, point: <point id>, value: V}")
        req.point, req.value = body["point"], body["value"]
    else:
        if not isinstance(body["action"], str):
            raise Rejected("`action` is the name of an action")
        args = body.get("args", {})
        if not isinstance(args, dict):
            raise Rejected("`args` is an object")
        req.action, req.args = body["action"], args
    ts = body.get("ts")
    if ts is not None:
        if isinstance(ts, bool) or not isinstance(ts, int | float):
            raise Rejected("`ts` is epoch milliseconds")
        req.ts = int(ts)
    prio = body.get("priority")
    if prio is not None:
        if isinstance(prio, bool) or not isinstance(prio, int) or not 1 <= prio <= 16:
            raise Rejected("`priority` is 1-16")
        req.priority = prio
    return req


@dataclass(slots=True)
class Result:
    status: Status
    request: Request
    value: Any = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # protocol detail: BACnet priority and slot
    ts: int = field(default_factory=lambda: int(time.time() * 1000))

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.request.id, "status": self.status}
        if self.request.point is not None:
            out["point"] = self.request.point
        if self.request.action is not None:
            out["action"] = self.request.action
        if self.value is not None or self.status == "ok":
            out["value"] = self.value
        if self.error is not None:
            out["error"] = self.error
        out.update(self.extra)
        out["ts"] = self.ts
        return out


# --- engineering value -> raw -----------------------------------------------------------------

_F32 = struct.Struct("f")


def _exact(value: Any, what: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise Rejected(f"{what}: a number is expected, got {json.dumps(value)}")
    try:
        return Fraction(Decimal(str(value)) if not isinstance(value, int) else value)
    except (InvalidOperation, ValueError):
        raise Rejected(f"{what}: {value!r} is not a number") from None


def check_limits(point: PointConfig, value: Any) -> None:
    """min, max, enum and step, in engineering units; Rejected with the limit that failed."""
    if point.enum is not None:
        if value not in point.enum or (isinstance(value, bool) and not any(v is value for v in point.enum)):
            raise Rejected(f"{point.id}: {json.dumps(value)} is not one of {json.dumps(point.enum)}")
        return
    if isinstance(value, bool | str) or value is None:
        return
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise Rejected(f"{point.id}: {json.dumps(value)} is not a finite number")
    if point.min is not None and value < point.min:
        raise Rejected(f"{point.id}: {value} is below the minimum {point.min}")
    if point.max is not None and value > point.max:
        raise Rejected(f"{point.id}: {value} is above the maximum {point.max}")
    if point.step is not None:
        base = _exact(point.min if point.min is not None else 0, point.id)
        steps = (_exact(value, point.id) - base) / _exact(point.step, point.id)
        if steps.denominator != 1:
            raise Rejected(f"{point.id}: {value} is not a multiple of the step {point.step}")


def to_raw(point: PointConfig, value: Any, like: RawValue, exponent: int = 0) -> RawValue:
    """The raw value whose normalisation is `value`: the inverse of scale, offset and exponent, exact.

    `like` is the raw value the point read last (it tells the raw type: an integer register, a
    float, a bool, text); None when the point was never read. Raises Rejected when the value has
    no raw form (a fraction for an integer register, text for a number).
    """
    if value is None:
        return None  # relinquish (BACnet NULL): the driver refuses it where it means nothing
    if isinstance(like, bool) or (like is None and isinstance(value, bool)):
        if not isinstance(value, bool):
            raise Rejected(f"{point.id}: true or false is expected, got {json.dumps(value)}")
        return value
    if isinstance(like, str) or (like is None and isinstance(value, str)):
        if not isinstance(value, str):
            raise Rejected(f"{point.id}: text is expected, got {json.dumps(value)}")
        return value
    if isinstance(value, bool | str):
        raise Rejected(f"{point.id}: a number is expected, got {json.dumps(value)}")
    exact = _exact(value, point.id) - _exact(point.offset, point.id)
    exact = exact / _exact(point.scale, point.id) / Fraction(10) ** exponent
    integer = isinstance(like, int) or (like is None and exact.denominator == 1)
    if integer:
        nearest = round(exact)
        # Exact, or the raw whose published value is this one (an offset is added in floating
        # point, so 273.15 + 0.01 publishes as 273.15999999999997: sent back, it is raw 1).
        if exact.denominator != 1 and _published(point, nearest, exponent) != value:
            near = _published(point, nearest, exponent)
            raise Rejected(f"{point.id}: {value} is not representable; the nearest value is {near:g}")
        return nearest
    return float(exact)


def _published(point: PointConfig, raw: int, exponent: int) -> float:
    """What the normaliser publishes for an integer raw value (the same arithmetic, gateway/normalize.py)."""
    num, den = ratio(point.scale)
    value = scale_exact(raw, num, den, exponent)
    return float(value + point.offset if point.offset else value)


def same_raw(written: RawValue, read_back: RawValue) -> bool:
    """Did the device keep what was written? A float register may hold the nearest float32."""
    if written == read_back and type(written) is type(read_back):
        return True
    if isinstance(written, float) and isinstance(read_back, float):
        try:
            return bool(_F32.unpack(_F32.pack(written))[0] == read_back)
        except OverflowError:
            return False
    return isinstance(written, int) and isinstance(read_back, int) and written == read_back


def check_args(spec: ActionConfig, args: Mapping[str, Any]) -> dict[str, Any]:
    """An action's arguments against its definition: defaults filled, types and limits checked."""
    unknown = set(args) - set(spec.args)
    if unknown:
        raise Rejected(f"unknown argument(s) {sorted(unknown)}; the action takes {sorted(spec.args) or 'none'}")
    out: dict[str, Any] = {}
    for name, arg in spec.args.items():
        if name not in args:
            if arg.default is not None:
                out[name] = arg.default
            elif arg.required:
                raise Rejected(f"argument {name!r} is required")
            continue
        out[name] = _check_arg(name, arg, args[name])
    return out


def _check_arg(name: str, arg: ActionArg, value: Any) -> Any:
    kind = arg.type
    if kind == "boolean" and not isinstance(value, bool):
        raise Rejected(f"argument {name!r}: true or false is expected")
    if kind == "string" and not isinstance(value, str):
        raise Rejected(f"argument {name!r}: text is expected")
    if kind == "datetime":
        if not isinstance(value, str):
            raise Rejected(f"argument {name!r}: an ISO 8601 date and time is expected")
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise Rejected(f"argument {name!r}: {value!r} is not an ISO 8601 date and time") from None
        if moment.tzinfo is None:
            raise Rejected(f"argument {name!r}: give the UTC offset (2026-12-01T10:00:00+00:00)")
        return value
    if kind in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise Rejected(f"argument {name!r}: a number is expected")
        if kind == "integer" and value != int(value):
            raise Rejected(f"argument {name!r}: a whole number is expected")
        if arg.min is not None and value < arg.min:
            raise Rejected(f"argument {name!r}: {value} is below the minimum {arg.min}")
        if arg.max is not None and value > arg.max:
            raise Rejected(f"argument {name!r}: {value} is above the maximum {arg.max}")
        value = int(value) if kind == "integer" else value
    if arg.enum is not None and value not in arg.enum:
        raise Rejected(f"argument {name!r}: {json.dumps(value)} is not one of {json.dumps(arg.enum)}")
    return value


# --- rate limit -------------------------------------------------------------------------------


class TokenBucket:
    """`rate` commands a second sustained, `burst` at once."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = float(burst)
        self.at = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


# --- execution --------------------------------------------------------------------------------


class Target(Protocol):
    """What a command runs against: a running device (its runner) or a one-off driver (the CLI)."""

    device: DeviceConfig

    @property
    def driver(self) -> Driver[Any, Any]: ...

    @property
    def normalizer(self) -> Normalizer: ...

    def last_raw(self) -> Sequence[RawValue] | None: ...

    def last_exponents(self) -> Sequence[int | None] | None: ...


@dataclass(slots=True)
class Commands:
    """The command policy of one gateway: what is allowed, how fast, and how it is answered."""

    enabled: bool
    max_age: float
    timeout: float
    devices: frozenset[str] | None
    log: structlog.typing.FilteringBoundLogger
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def admit(self, req: Request, device: DeviceConfig | None) -> None:
        """Rejected unless the request may reach its device now."""
        if not self.enabled:
            raise Rejected("commands are disabled (commands: {enabled: true} in the gateway config)")
        if device is None:
            raise Rejected(f"no device {req.device!r}")
        if not device.commands.enabled or (self.devices is not None and device.id not in self.devices):
            raise Rejected(f"commands are disabled for {device.id}")
        age = self._age(req)
        if req.expired or age > self.max_age:
            raise Rejected(f"stale: the request is {age:.0f}s old (commands.max_age {self.max_age:g}s)")
        bucket = self._buckets.get(device.id)
        if bucket is None or bucket.rate != device.commands.rate or bucket.burst != device.commands.burst:
            bucket = self._buckets[device.id] = TokenBucket(device.commands.rate, device.commands.burst)
        if not bucket.take():
            raise Rejected(f"rate limited ({device.commands.rate:g}/s, burst {device.commands.burst})")

    async def run(self, req: Request, target: Target | None) -> Result:
        """Exactly one result for `req`; the audit line and event are the caller's to publish."""
        try:
            self.admit(req, target.device if target is not None else None)
            assert target is not None
            prepared = self._prepare(req, target)
        except Rejected as exc:
            return Result("rejected", req, error=str(exc))
        # The budget ends when the request would turn stale: one that waits behind others for the
        # bus past its age is cancelled while it waits, so it never fires late.
        budget = min(self.timeout, self.max_age - self._age(req))
        try:
            async with asyncio.timeout(budget):
                return await prepared()
        except TimeoutError:
            return Result("timeout", req, error=f"not done within {budget:.1f}s; the device may have acted")
        except WriteRefused as exc:
            return Result("failed", req, error=f"the device refused: {exc}")
        except DeviceTimeout as exc:
            return Result("timeout", req, error=str(exc) or "the device did not answer")
        except DeviceError as exc:
            return Result("failed", req, error=str(exc) or type(exc).__name__)
        except NotImplementedError as exc:
            return Result("rejected", req, error=str(exc))
        except (ValueError, OverflowError, struct.error) as exc:
            return Result("rejected", req, error=f"the value does not fit: {exc}")

    def _prepare(self, req: Request, target: Target) -> Callable[[], Awaitable[Result]]:
        device = target.device
        points = target.driver.ctx.points
        if req.point is not None:
            index = next((i for i, p in enumerate(points) if p.id == req.point), None)
            if index is None:
                raise Rejected(f"no point {req.point!r} on {device.id}")
            point = points[index]
            if not point.writable:
                raise Rejected(f"{point.id} is not writable")
            check_limits(point, req.value)
            last = target.last_raw()
            like = last[index] if last is not None and index < len(last) else None
            if like is None or isinstance(like, PointError | NoValue):
                # The last good reading tells the raw type and the scale the device uses now.
                raise Rejected(f"{point.id} has no good reading yet: a point is written only after it was read")
            exps = target.last_exponents()
            exponent = self._exponent(point, points, last) + ((exps[index] or 0) if exps is not None else 0)
            raw = to_raw(point, req.value, like, exponent)
            return lambda: self._write(req, target, index, raw, exponent)
        assert req.action is not None
        spec = device.resolved_actions.get(req.action)
        if spec is None:
            known = ", ".join(sorted(device.resolved_actions)) or "none"
            raise Rejected(f"no action {req.action!r} on {device.id} (actions: {known})")
        args = check_args(spec, req.args)
        return lambda: self._action(req, target, spec, args)

    @staticmethod
    def _exponent(point: PointConfig, points: Sequence[PointConfig], last: Sequence[RawValue] | None) -> int:
        if point.exponent_point is None:
            return 0
        src = next((i for i, p in enumerate(points) if p.id == point.exponent_point), None)
        ex = last[src] if last is not None and src is not None else None
        if not isinstance(ex, int) or isinstance(ex, bool):
            raise Rejected(f"{point.id}: its scale register {point.exponent_point} has not been read yet")
        return ex

    async def _write(self, req: Request, target: Target, index: int, raw: RawValue, exponent: int) -> Result:
        answer = await target.driver.write(WriteRequest(index, raw, req.priority))
        back, kept = (answer.value, answer.slot) if isinstance(answer, ReadBack) else (answer, answer)
        if isinstance(back, PointError):
            return Result("failed", req, error=f"written, but not read back: {back.message}")
        last = target.last_raw()
        value, quality, error = target.normalizer.value_of(index, back, last, exponent)
        extra: dict[str, Any] = {}
        if isinstance(answer, ReadBack):
            slot = (
                None
                if kept is None or isinstance(kept, PointError)
                else target.normalizer.value_of(index, kept, last, exponent)[0]
            )
            extra = {"priority": answer.priority, "priority_slot": slot}
        if isinstance(kept, PointError):
            return Result("failed", req, value=value, error=f"written, but not read back: {kept.message}", extra=extra)
        if raw is None:
            if kept is not None:
                return Result(
                    "failed", req, value=value, error="the slot still holds a value after relinquish", extra=extra
                )
        elif not same_raw(raw, kept):
            shown = extra.get("priority_slot", value)
            return Result("failed", req, value=value, error=f"read back {shown!r}, not {req.value!r}", extra=extra)
        if quality == "bad":
            return Result("failed", req, error=f"written, but the read-back is bad: {error}", extra=extra)
        return Result("ok", req, value=value, extra=extra)

    async def _action(self, req: Request, target: Target, spec: ActionConfig, args: dict[str, Any]) -> Result:
        answer = await target.driver.action(req.action or "", spec, args)
        return Result("ok", req, value=answer)

    @staticmethod
    def _age(req: Request) -> float:
        """Seconds since the request was sent (its own `ts`), or since it arrived."""
        return time.time() - (req.ts / 1000 if req.ts is not None else req.received)

    def audit(self, result: Result) -> dict[str, Any]:
        """The audit record: one structured log line, and the body of the `command` event."""
        req = result.request
        event: dict[str, Any] = {"type": "command", **result.body(), "who": req.who or {"via": "unknown"}}
        if req.point is not None:
            event["requested"] = req.value
        if req.args:
            event["args"] = req.args
        self.log.info(
            "command",
            device=req.device,
            id=req.id,
            point=req.point,
            action=req.action,
            requested=req.value if req.point is not None else req.args,
            status=result.status,
            value=result.value,
            error=result.error,
            who=req.who,
        )
        return event
