"""Config base models and value types shared by the core and every driver's config module."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    JsonValue,
    PrivateAttr,
    SecretStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from gateway.points import PHASES, QUANTITIES, UNITS, Kind, PointDef

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|min|m|h|d)?\s*$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """`500ms`, `5s`, `15min`, `1h`, `2d` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration such as 500ms, 5s, 15min, 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f"not a duration: {value!r} (use e.g. 500ms, 5s, 15min, 1h)")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("a duration must be a finite, non-negative time")
    return seconds


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 10**3,
    "KiB": 2**10,
    "MB": 10**6,
    "MiB": 2**20,
    "GB": 10**9,
    "GiB": 2**30,
    "TB": 10**12,
    "TiB": 2**40,
}


def parse_size(value: Any) -> int:
    """`512MiB`, `2GB`, `4096` -> bytes."""
    if isinstance(value, bool):
        raise ValueError("a size such as 64MiB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    else:
        raise ValueError(f"not a size: {value!r} (use e.g. 64MiB, 2GB)")
    if size < 0:
        raise ValueError("a size must not be negative")
    return size


#: A port in text, for the JSON Schema: 1-65535, leading zeros and blanks as `port_number` takes them.
PORT_PATTERN = r"0*([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"


@dataclass(frozen=True, slots=True)
class OrText:
    """JSON Schema of a number the config may also write as text (`5min`, `512MiB`, `"502"`).

    The number keeps its own schema (with a field's `ge`/`le`); the text is what the validator's
    regular expression takes. Only the editor schema (gateway/schema.py) sees this.
    """

    pattern: str
    number: tuple[tuple[str, Any], ...] = ()
    examples: tuple[str, ...] = ()
    message: str = ""  # yaml-language-server's `patternErrorMessage`, instead of the bare regex

    def __get_pydantic_json_schema__(self, core: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        number = {**dict(self.number), **handler(core)}  # a field's own bound (ge=...) wins
        text: dict[str, Any] = {"type": "string", "pattern": self.pattern}
        if self.examples:
            text["examples"] = list(self.examples)
        if self.message:
            text["patternErrorMessage"] = self.message
        # Text first: on a tie an editor reports the first branch, and a bad text is the usual case.
        return {"anyOf": [text, number]}


def any_case(words: Iterable[str], *, dash: bool = False) -> str:
    """A regular expression (ECMA-262 too: no inline flags) matching any of `words` in any case.

    `dash`: a `-` may also be written `_` or left out (the validators that take protocol names).
    """

    def one(word: str) -> str:
        out = ""
        for ch in word:
            if ch.isalpha():
                out += f"[{ch.upper()}{ch.lower()}]"
            elif ch == "-" and dash:
                out += "[-_]?"
            else:
                out += re.escape(ch)
        return out

    return rf"^\s*({'|'.join(one(w) for w in sorted(set(words), key=lambda w: (-len(w), w)))})\s*$"


@dataclass(frozen=True, slots=True)
class OrAlias:
    """JSON Schema of a choice whose validator also takes other spellings (any case, aliases).

    Editors complete the canonical values; the text form accepts what the validator normalises.
    """

    pattern: str
    also: tuple[Any, ...] = ()

    def __get_pydantic_json_schema__(self, core: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        choices: list[Any] = [handler(core), {"type": "string", "pattern": self.pattern}]
        if self.also:
            choices.append({"enum": list(self.also)})
        return {"anyOf": choices}


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    OrText(
        _DURATION.pattern,
        (("minimum", 0),),
        ("500ms", "10s", "5min", "1h"),
        "a duration: 500ms, 5s, 15min, 1h, 2d, or a number of seconds",
    ),
]
ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    OrText(
        _SIZE.pattern, (("minimum", 0),), ("64KiB", "512MiB", "2GB"), "a size: 64KiB, 512MiB, 2GB, or a number of bytes"
    ),
]
Identifier = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
        max_length=128,
        json_schema_extra={"patternErrorMessage": "letters, digits and _ . - (a letter or digit first)"},
    ),
]

PORT_RANGE = "a port is 1-65535"


def port_number(value: Any, *, listen: bool = False) -> int:
    """A TCP/UDP port as configured (a number, or the digits of a `host:port`): 1-65535.

    Port 0 would mean "any free port", which nothing can be configured to reach; `true` is not 1.
    A port the gateway itself binds (`listen=True`: BACnet's local address, the trap listener)
    may be 0, for an ephemeral port nobody needs to know in advance.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a port: {value!r} ({PORT_RANGE})")
    if isinstance(value, str):
        text = value.strip()
        if not text.lstrip("-").isdigit():
            raise ValueError(f"not a port: {value!r} ({PORT_RANGE})")
        value = int(text)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise ValueError(f"not a port: {value!r} ({PORT_RANGE})")
    if not (0 if listen else 1) <= value <= 65535:
        raise ValueError(f"port {value} is out of range ({PORT_RANGE})")
    return value


#: Every port field of every config model; `host:port` strings go through :func:`port_number`.
Port = Annotated[
    int,
    BeforeValidator(port_number),
    OrText(rf"^\s*{PORT_PATTERN}\s*$", (("minimum", 1), ("maximum", 65535)), (), PORT_RANGE),
]


# Relative file names in a config are relative to the config file's folder, not to the
# working directory (which is / under systemd).
CONFIG_DIR: ContextVar[Path | None] = ContextVar("CONFIG_DIR", default=None)


def config_path(file: Path | str) -> Path:
    """A path from the config, made absolute against the config file's folder."""
    path = Path(file)
    base = CONFIG_DIR.get()
    return path if path.is_absolute() or base is None else base / path


# --- what the config needs of the machine it runs on -------------------------------------------
#
# A config can be right in itself and still name a file or an environment variable this machine
# does not have (yet): a CA file, a password file, a secret set by systemd. Those are *environment*
# problems, apart from shape errors: `edgegw check` reports them as warnings (errors with
# --strict), `edgegw run` and a reload refuse to start on them. A validator reports one with
# `missing_at_run_time()`; outside `collect_environment()` (a model built in code, a test) it is
# a plain ValueError, as any other validation error.


@dataclass(frozen=True, slots=True)
class EnvironmentProblem:
    """A file or variable the config names that this machine lacks; `key`/`value` locate it in the file."""

    key: str  # the config key that names it: password_file, community_env, ca_file
    value: str  # what that key says: a path as written or made absolute, a variable name
    message: str


_ENVIRONMENT: ContextVar[list[EnvironmentProblem] | None] = ContextVar("_ENVIRONMENT", default=None)

#: What a secret reads as while its file or variable is missing and problems are being collected:
#: long enough and non-empty, so that the shape checks behind it (key length, empty community) pass.
MISSING_SECRET = "<missing at run time>"


@contextmanager
def collect_environment() -> Iterator[list[EnvironmentProblem]]:
    """Within: validators record environment problems in the list instead of failing."""
    problems: list[EnvironmentProblem] = []
    token = _ENVIRONMENT.set(problems)
    try:
        yield problems
    finally:
        _ENVIRONMENT.reset(token)


def missing_at_run_time(key: str, value: object, message: str) -> None:
    """Report a file or variable the config needs at run time and this machine lacks (see above)."""
    problems = _ENVIRONMENT.get()
    if problems is None:
        raise ValueError(message)
    problems.append(EnvironmentProblem(key, str(value), message))


def read_config_file(file: Path, key: str) -> str | None:
    """The text of a file the config names (keys, communities); None when it is missing and collected."""
    path = config_path(file)
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        missing_at_run_time(key, file, f"cannot read {key} {str(path)!r}: {exc.strerror}")
        return None


def read_secret(file: Path | None, env: str | None, what: str) -> SecretStr | None:
    """Resolve a secret given as a file or an environment variable; the value never reaches a log."""
    if file is not None and env is not None:
        raise ValueError(f"give {what}_file or {what}_env, not both")
    if file is not None:
        text = read_config_file(file, f"{what}_file")
        return SecretStr(MISSING_SECRET if text is None else text.strip("\r\n"))
    if env is not None:
        if env not in os.environ:
            missing_at_run_time(f"{what}_env", env, f"environment variable {env!r} ({what}_env) is not set")
            return SecretStr(MISSING_SECRET)
        return SecretStr(os.environ[env])
    return None


# `invalid:` as `_sentinels` takes it: one value or a list, `nan` in any case for NaN.
_SENTINEL: dict[str, JsonValue] = {"anyOf": [{"type": "number"}, {"type": "string", "pattern": "^[Nn][Aa][Nn]$"}]}
_SENTINELS: dict[str, JsonValue] = {"anyOf": [_SENTINEL, {"type": "array", "items": _SENTINEL}]}


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


#: Quantities that count up (energies, counts): published on every change, never with a deadband.
COUNTER_QUANTITIES = frozenset(q for q in QUANTITIES if "energy" in q) | {"counter", "traffic"}

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
DEADBAND_HELP = "a number in the point's unit (0.5) or a percentage of the last published value (2%)"


def parse_deadband(value: Any) -> float | str:
    """`0.5` (in the point's unit) or `2%` (of the last published value) -> 0.5 or "2%"."""
    if isinstance(value, bool):
        raise ValueError(f"not a deadband: {value!r} ({DEADBAND_HELP})")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a deadband must be a finite, non-negative number ({DEADBAND_HELP})")
        return float(value)
    if isinstance(value, str):
        if m := _PERCENT.match(value):
            return f"{m.group(1)}%"
        try:
            return parse_deadband(float(value))
        except ValueError:
            pass
    raise ValueError(f"not a deadband: {value!r} ({DEADBAND_HELP})")


#: Report by exception's deadband: absolute (a non-negative number) or relative ("2%").
Deadband = Annotated[
    Annotated[float, Field(ge=0)] | Annotated[str, Field(pattern=r"^\d+(\.\d+)?%$")],
    BeforeValidator(parse_deadband),
]


def deadband_parts(deadband: float | str | None) -> tuple[float, float]:
    """(absolute, fraction of the last published value's magnitude) of a parsed deadband."""
    if deadband is None:
        return 0.0, 0.0
    if isinstance(deadband, str):
        return 0.0, float(deadband.rstrip("%")) / 100
    return float(deadband), 0.0


class PointConfig(Strict):
    """A point as configured: its PointDef fields plus the normalisation rules.

    Each driver subclasses it and adds its protocol address fields.
    """

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$", max_length=200)]
    # The vocabularies are checked by the validators below; the enums are for the editor schema.
    quantity: str = Field(json_schema_extra={"enum": list[JsonValue](sorted(QUANTITIES))})
    unit: str = Field(default="", json_schema_extra={"enum": list[JsonValue](sorted(UNITS))})
    phase: str = Field(default="none", json_schema_extra={"enum": list[JsonValue](sorted(PHASES))})
    circuit: Annotated[str | None, WithJsonSchema({"type": ["string", "integer", "null"]})] = None  # 12 -> "12"
    kind: Kind = Kind.GAUGE
    description: str = Field(default="", description="free text about the point")
    # normalisation: engineering = raw * scale * 10**exponent + offset
    scale: float = 1.0
    offset: float = 0.0
    exponent_point: str | None = Field(
        default=None, description="id of a point of the same device whose value is a power-of-ten exponent"
    )
    invalid: Annotated[list[float], WithJsonSchema(_SENTINELS)] = Field(
        default_factory=list, description="raw values that mean 'no data'"
    )
    rate: Annotated[
        Literal["per_second", "per_minute", "per_hour"] | None,
        # `rate: true` (per second) and `false` (none) too, as _rate_word takes them.
        WithJsonSchema({"enum": ["per_second", "per_minute", "per_hour", True, False, None]}),
    ] = Field(default=None, description="publish a counter as its rate (wraps and resets handled by the core)")
    counter_bits: Literal[16, 32, 64] | None = Field(
        default=None, description="width of a `rate` counter, where the point's type does not tell it"
    )
    publish: bool = True
    # Commands (docs/commands.md): nothing is writable unless the profile or config says so, and
    # a write is checked against these limits, in engineering units, before the device sees it.
    writable: bool = Field(default=False, description="commands may write this point (docs/commands.md)")
    min: float | None = Field(default=None, description="lowest value a command may write")
    max: float | None = Field(default=None, description="highest value a command may write")
    enum: list[int | float | str | bool] | None = Field(default=None, description="the only values a command may write")
    step: float | None = Field(default=None, description="a written value must be min (or 0) plus a multiple of this")
    # Hints for the device twins (`edgegw simulate`): {value: x} or {min: a, max: b, period: 60s}.
    sim: dict[str, Any] | None = None
    calc: str | None = Field(
        default=None, description="a calculated point: an expression over other points of the device (gateway/calc.py)"
    )
    # Report by exception (docs/mqtt.md "Report by exception"): without either key, every poll.
    deadband: Deadband | None = Field(
        default=None,
        description="report by exception: publish a gauge only when it moved more than this since the last "
        "published value; a number in the point's unit (0.5) or a percentage of the last published value (2%)",
    )
    max_age: Duration | None = Field(
        default=None,
        description="report by exception: the longest silence; an unchanged value is published again after this "
        "long (at least the device's interval). Alone: publish on change, and at least this often",
    )

    @model_validator(mode="after")
    def _report_by_exception(self) -> PointConfig:
        if self.deadband is not None and not self.numeric_gauge():
            what = (
                "a rate"
                if self.rate is not None
                else f"a {self.kind} point"
                if self.kind is not Kind.GAUGE
                else f"{self.quantity} (a counter quantity)"
            )
            raise ValueError(
                f"deadband is for gauges: {what} is published on every change (use max_age alone for a heartbeat)"
            )
        if self.max_age is not None and self.max_age <= 0:
            raise ValueError("max_age must be > 0")
        return self

    def numeric_gauge(self) -> bool:
        """True when a deadband applies: a gauge read as it is (counters, rates and states publish on change)."""
        return self.kind is Kind.GAUGE and self.rate is None and self.quantity not in COUNTER_QUANTITIES

    def reports_by_exception(self) -> bool:
        """True when the point is published by exception instead of at every poll."""
        return self.deadband is not None or self.max_age is not None

    @model_validator(mode="after")
    def _calc_alone(self) -> PointConfig:
        # A calculated point is computed by the core from engineering values: nothing to read or scale.
        if self.calc is not None:
            bad = [
                name
                for name, default in (("scale", 1.0), ("offset", 0.0), ("exponent_point", None), ("rate", None))
                if getattr(self, name) != default
            ]
            bad += [name for name in ("invalid", "writable") if getattr(self, name)]
            if bad:
                raise ValueError(f"a calc point cannot have {', '.join(bad)}: write it in the expression")
        return self

    @field_validator("quantity")
    @classmethod
    def _known_quantity(cls, v: str) -> str:
        if v not in QUANTITIES:
            raise ValueError(f"unknown quantity {v!r}; see docs/profiles.md for the vocabulary")
        return v

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, v: str) -> str:
        if v not in UNITS:
            raise ValueError(f"unknown unit {v!r}; use one of {sorted(UNITS)}")
        return v

    @field_validator("phase")
    @classmethod
    def _known_phase(cls, v: str) -> str:
        if v not in PHASES:
            raise ValueError(f"unknown phase {v!r}; use one of {sorted(PHASES)}")
        return v

    @field_validator("circuit", mode="before")
    @classmethod
    def _circuit_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("rate", mode="before")
    @classmethod
    def _rate_word(cls, v: Any) -> Any:
        # `rate: true` predates the units: it means per second.
        if v is True:
            return "per_second"
        return None if v is False else v

    @model_validator(mode="after")
    def _write_limits(self) -> PointConfig:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if self.step is not None and self.step <= 0:
            raise ValueError("step must be > 0")
        if self.writable and self.rate is not None:
            raise ValueError("a rate is computed, not a register: it cannot be writable")
        return self

    @model_validator(mode="after")
    def _rate_of_a_counter(self) -> PointConfig:
        if self.rate is not None:
            if self.kind is Kind.COUNTER:
                raise ValueError("a rate is a gauge: drop `kind: counter` or `rate`")
            if self.counter_width() is None:
                raise ValueError("`rate` needs a counter of known width: a counter type, or `counter_bits: 32|64`")
        return self

    @field_validator("invalid", mode="before")
    @classmethod
    def _sentinels(cls, v: Any) -> Any:
        if not isinstance(v, list):
            v = [v]
        return [float("nan") if isinstance(x, str) and x.lower() == "nan" else x for x in v]

    def protocol_address(self) -> dict[str, Any]:
        """The protocol address, for the meta topic; drivers override."""
        return {}

    def counter_width(self) -> int | None:
        """Bits after which a counter of this point wraps: `counter_bits`, else what its type says."""
        return self.counter_bits

    def float_digits(self) -> int | None:
        """Significant digits a float reading of this point carries (9 for a float32 source), None for all."""
        return None

    def to_def(self) -> PointDef:
        return PointDef(
            id=self.id,
            quantity=self.quantity,
            unit=self.unit,
            phase=self.phase,
            circuit=self.circuit,
            kind=self.kind,
            description=self.description,
            address=self.protocol_address(),
            rate=self.rate,
        )

    def report_meta(self) -> dict[str, Any] | None:
        """Report by exception as the meta topic shows it (None: published at every poll)."""
        if not self.reports_by_exception():
            return None
        out: dict[str, Any] = {"deadband": self.deadband if self.numeric_gauge() else 0}
        if self.max_age is not None:
            out["max_age"] = self.max_age
        return out


class ActionArg(Strict):
    """One argument of a named action, checked before the device sees it."""

    type: Literal["number", "integer", "boolean", "string", "datetime"] = "number"
    required: bool = True
    default: int | float | str | bool | None = None
    min: float | None = None
    max: float | None = None
    enum: list[int | float | str | bool] | None = None


class ActionConfig(Strict):
    """A named action a profile or device config defines; each driver adds what its protocol needs."""

    description: str = ""
    args: dict[str, ActionArg] = Field(default_factory=dict)


class DeviceCommands(Strict):
    """Per-device limits on commands (docs/commands.md)."""

    enabled: bool = True
    rate: Annotated[float, Field(gt=0, le=100)] = Field(default=2.0, description="commands per second, sustained")
    burst: Annotated[int, Field(ge=1, le=1000)] = Field(default=5, description="commands accepted at once")


class ReportDefaults(Strict):
    """Report by exception for every point of a device that does not set its own keys."""

    deadband: Deadband | None = Field(
        default=None,
        description="default deadband of the device's gauges (counters, rates and states publish on change)",
    )
    max_age: Duration | None = Field(default=None, description="default longest silence of every point")

    @field_validator("max_age")
    @classmethod
    def _positive_age(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("max_age must be > 0")
        return v


def _a_mapping(value: Any) -> Any:
    if not isinstance(value, Mapping):
        raise ValueError("a point is a mapping (`id: ...`, `quantity: ...`)")
    return value


_InlinePoint = Annotated[
    Any, AfterValidator(_a_mapping), WithJsonSchema({"additionalProperties": True, "type": "object"})
]


class DeviceConfig(Strict):
    """Fields every device has; each driver subclasses it with `driver: Literal[...]` and its own."""

    point_model: ClassVar[type[PointConfig]] = PointConfig
    action_model: ClassVar[type[ActionConfig]] = ActionConfig

    id: Identifier
    driver: str
    profile: str | None = Field(default=None, description="a shipped profile name or a path to a YAML file")
    profile_vars: dict[str, int | float | str] = Field(default_factory=dict)
    # Each point a mapping, checked but not copied: the resolver reads the points from the loaded
    # file (with their lines) and this list is emptied after; a copy cost 3.6 MB for 10k points.
    points: list[_InlinePoint] = Field(default_factory=list, description="inline points; override the profile's by id")
    interval: Duration = 10.0
    timeout: Duration = 1.0
    offline_after: Annotated[int, Field(ge=1)] = 3
    max_backoff: Duration = 300.0
    phase: Literal["auto"] | Duration = Field(
        default="auto",
        description="offset of the polls within the interval; auto spreads devices over 10% of it (at most 1s) in 5 ms steps",
    )
    enabled: bool = True
    bus: Identifier | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    report: ReportDefaults | None = Field(
        default=None,
        description="report by exception defaults for the device's points (deadband, max_age); a point's own keys win",
    )
    actions: dict[Identifier, dict[str, Any]] = Field(
        default_factory=dict, description="named actions (the driver's action model); override the profile's by name"
    )
    commands: DeviceCommands = Field(
        default_factory=DeviceCommands, description="this device's command limits (docs/commands.md)"
    )

    _resolved: tuple[PointConfig, ...] = PrivateAttr(default=())
    _calculated: tuple[PointConfig, ...] = PrivateAttr(default=())
    _resolved_actions: dict[str, ActionConfig] = PrivateAttr(default_factory=dict)
    _profile_meta: dict[str, Any] = PrivateAttr(default_factory=dict)

    @field_validator("interval")
    @classmethod
    def _positive_interval(cls, v: float) -> float:
        if v < 0.01:
            raise ValueError("interval must be at least 10ms")
        return v

    @model_validator(mode="after")
    def _report_age(self) -> DeviceConfig:
        if self.report is not None and self.report.max_age is not None and self.report.max_age < self.interval:
            raise ValueError(
                f"report.max_age {self.report.max_age:g}s is shorter than the interval {self.interval:g}s: "
                "a value cannot be published more often than it is read"
            )
        return self

    @property
    def resolved_points(self) -> tuple[PointConfig, ...]:
        """The device's points after the profile and inline points were merged and validated."""
        return self._resolved

    @property
    def calculated_points(self) -> tuple[PointConfig, ...]:
        """The device's `calc` points, in evaluation order; never in `resolved_points` (no driver reads them)."""
        return self._calculated

    @property
    def profile_meta(self) -> dict[str, Any]:
        return self._profile_meta

    @property
    def resolved_actions(self) -> dict[str, ActionConfig]:
        """The device's actions after the profile's and its own were merged and validated."""
        return self._resolved_actions

    def implicit_bus(self) -> str | None:
        """The key of the transport this device shares when no `bus` is named (e.g. one TCP endpoint)."""
        return None

    def protocol_address(self) -> dict[str, Any]:
        """The device's protocol address, for the meta topic."""
        return {}
