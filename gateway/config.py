"""The gateway's YAML configuration: models, loading, and errors that name file, line and field."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    Field,
    SecretStr,
    ValidationError,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)

from gateway.buses import BusConfig, path_conflicts
from gateway.calc import CalcError, Compiled, compile_expr, evaluation_order
from gateway.models import (
    CONFIG_DIR,
    PORT_PATTERN,
    PORT_RANGE,
    ActionConfig,
    ByteSize,
    DeviceConfig,
    Duration,
    EnvironmentProblem,
    Identifier,
    PointConfig,
    Strict,
    collect_environment,
    config_path,
    missing_at_run_time,
    port_number,
    read_secret,
)
from gateway.profiles import (
    Profile,
    ProfileError,
    expand,
    forget_loaded,
    load_profile,
    referenced_names,
    resolve_profile_path,
)
from gateway.registry import DRIVERS, DriverSpec
from gateway.yamlload import MISSING, LineDict, YamlError, child_of, format_path, load_file, load_text, locate

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "DeviceConfig",
    "GatewayConfig",
    "PointConfig",
    "check_profile",
    "load_config",
    "parse_config",
    "parse_device",
]


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    file: str
    line: int
    path: str
    message: str
    # True: the config is right but names a file or variable this machine lacks (gateway/models.py,
    # "what the config needs of the machine"); a warning of `edgegw check`, an error of `run`.
    environment: bool = False

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where} {self.path}: {self.message}"


class ConfigError(Exception):
    """An invalid configuration; `issues` lists every problem found.

    `warnings` are the environment problems found alongside when they were asked for as warnings
    (``environment="warn"``); with ``"require"`` they are among the issues.
    """

    def __init__(self, issues: list[ConfigIssue], warnings: list[ConfigIssue] | None = None) -> None:
        super().__init__("\n".join(str(i) for i in issues))
        self.issues = issues
        self.warnings = warnings or []


#: How a config's environment problems count: "require" (errors: run, reload) or "warn" (check).
Environment = Literal["require", "warn"]


class TlsConfig(Strict):
    """TLS to the broker; the server certificate is always verified."""

    ca_file: Path | None = Field(
        default=None, description="CA certificate(s) of the broker; default: the system trust store"
    )
    cert_file: Path | None = Field(default=None, description="client certificate, with key_file")
    key_file: Path | None = Field(default=None, description="client key, with cert_file")

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return config_path(v) if v is not None else None

    @model_validator(mode="after")
    def _files(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        for name in ("ca_file", "cert_file", "key_file"):
            value = getattr(self, name)
            if value is not None and not value.is_file():
                missing_at_run_time(name, value, f"{name} {str(value)!r} does not exist")
        return self


def _broker_url(v: str) -> str:
    parts = urlsplit(v)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
        raise ValueError("use mqtt://host[:port] or mqtts://host[:port]")
    try:
        if parts.port is not None:
            port_number(parts.port)
    except ValueError:
        # urllib accepts port 0 and rejects -1 or 99999 with texts that name no range.
        raise ValueError(f"bad port in url ({PORT_RANGE})") from None
    return v


BrokerUrl = Annotated[str, AfterValidator(_broker_url)]

# What `_broker_url` takes, for the JSON Schema: scheme (any case), optional user, host or [IPv6], port.
_URL_PATTERN = (
    r"^([Mm][Qq][Tt][Tt][Ss]?|[Tt][Cc][Pp]|[Ss][Ss][Ll])://([^/?#@]*@)?(\[[0-9A-Fa-f:.]+\]|[^\s/?#:@\[\]]+)"
    rf"(:{PORT_PATTERN})?([/?#].*)?$"
)
_URL_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": _URL_PATTERN,
    "patternErrorMessage": "mqtt://host[:port] or mqtts://host[:port] (port 1-65535)",
    "examples": ["mqtt://127.0.0.1:1883"],
}


@dataclass(frozen=True, slots=True)
class BrokerEndpoint:
    """One broker of `mqtt.url`: where to connect, and whether with TLS."""

    index: int  # its place in the list: 0 is the preferred broker
    url: str  # scheme://host:port, for logs, metrics and the gateway status (never credentials)
    host: str
    port: int
    tls: bool

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _sparkplug_id(v: str) -> str:
    # Sparkplug 3.0: ids are UTF-8 strings without the MQTT separators and wildcards.
    if not v or any(c in v for c in "/+#"):
        raise ValueError("a Sparkplug id is a non-empty string without '/', '+' or '#'")
    return v


class SparkplugConfig(Strict):
    """Sparkplug B output on its own MQTT session (docs/mqtt.md "Sparkplug B")."""

    group_id: str = Field(description="the Sparkplug group id: spBv1.0/{group_id}/...")
    edge_node_id: str | None = Field(default=None, description="the edge node id; default: the site")
    client_id: str | None = Field(
        default=None, description="the Sparkplug session's MQTT client id; default: <mqtt client id>-spb"
    )
    primary_host: str | None = Field(
        default=None, description="a primary host application id: publish only while spBv1.0/STATE/{id} says online"
    )

    @field_validator("group_id", "edge_node_id", "primary_host")
    @classmethod
    def _ids(cls, v: str | None) -> str | None:
        return None if v is None else _sparkplug_id(v)


class MqttConfig(Strict):
    url: Annotated[
        list[BrokerUrl],
        WithJsonSchema({"anyOf": [_URL_SCHEMA, {"type": "array", "items": _URL_SCHEMA, "minItems": 1}]}),
    ] = Field(
        default_factory=lambda: ["mqtt://127.0.0.1:1883"],
        description="one broker URL, or a list: nodes of one cluster, or a primary and its standby",
    )
    client_id: str | None = None  # default: edgegw-<site>
    username: str | None = Field(default=None, description="the broker user name")
    password_file: Path | None = None
    password_env: str | None = None
    tls: TlsConfig | None = None
    topic_prefix: str = "edgegw"
    qos: Literal[0, 1, 2] = 1
    keepalive: Duration = Field(default=30.0, description="MQTT keep-alive; with `ha` at most what a takeover allows")
    max_inflight: Annotated[int, Field(ge=1, le=65535)] = 200
    queue_size: Annotated[int, Field(ge=10)] = 10000
    memory_backlog: Annotated[int, Field(ge=0)] = Field(
        default=20000, description="messages kept in memory while the broker is away and no disk buffer is set"
    )
    queue_bytes: ByteSize = Field(
        default=32 * 2**20,
        ge=64 * 2**10,
        description="payload and topic bytes of all messages waiting in memory (queue and memory backlog)",
    )
    reconnect_min: Duration = 0.5
    reconnect_max: Duration = 30.0
    connect_timeout: Duration = Field(
        default=5.0, description="longest wait for each step of a connection (TCP, TLS, CONNACK) to one broker"
    )
    failback_after: Duration | None = Field(
        default=None,
        description="return to the first broker once it accepts connections and the current one was up this long",
    )
    per_point_topics: bool = False
    protocol: Literal["3.1.1", "5"] = Field(
        default="3.1.1", description="MQTT version; 5 honours command response topics, correlation data and expiry"
    )

    sparkplug: SparkplugConfig | None = Field(
        default=None, description="also publish Sparkplug B (Eclipse Sparkplug 3.0) on a second session"
    )

    _password: SecretStr | None = None

    @field_validator("url", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        # A single URL is checked here so that its error names `mqtt.url`, not `mqtt.url[0]`.
        if isinstance(v, str):
            return [_broker_url(v)]
        if not isinstance(v, list | tuple):
            raise ValueError("a broker URL, or a list of them")
        return v

    @field_validator("url")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one broker URL")
        seen: dict[tuple[str, int], int] = {}
        for i, url in enumerate(v):
            ep = _endpoint(i, url, tls=False)
            key = (ep.host.lower(), ep.port)
            if key in seen:
                raise ValueError(f"url[{i}] names the same broker as url[{seen[key]}] ({ep.address})")
            seen[key] = i
        return v

    @field_validator("connect_timeout")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be more than 0")
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or any(c in v for c in "+#") or v.startswith("/") or v.endswith("/"):
            raise ValueError("a topic prefix without wildcards and without a leading or trailing /")
        return v

    @model_validator(mode="after")
    def _secret(self) -> MqttConfig:
        object.__setattr__(self, "_password", read_secret(self.password_file, self.password_env, "password"))
        if self.username is None and self._password is not None:
            raise ValueError("a password needs a username")
        return self

    @property
    def password(self) -> str | None:
        return self._password.get_secret_value() if self._password is not None else None

    @property
    def endpoints(self) -> list[BrokerEndpoint]:
        """The brokers in order of preference.

        TLS is per broker (an mqtts:// URL, or every broker when `tls` is set); the `tls` settings
        (CA, client certificate) are shared by all of them.
        """
        return [_endpoint(i, url, tls=self.tls is not None) for i, url in enumerate(self.url)]


def _endpoint(index: int, url: str, tls: bool) -> BrokerEndpoint:
    parts = urlsplit(url)
    scheme = parts.scheme
    tls = tls or scheme in ("mqtts", "ssl")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (8883 if tls else 1883)
    shown = f"[{host}]" if ":" in host else host
    return BrokerEndpoint(index, f"{'mqtts' if tls else 'mqtt'}://{shown}:{port}", host, port, tls)


class BufferConfig(Strict):
    """Store-and-forward on disk; off when `path` is not set."""

    path: Path | None = None
    # 24 h at 10k points/s (8.64 M messages of 100 readings, ~930 bytes each compressed) fits.
    max_size: ByteSize = 8 * 2**30
    sync_interval: Duration = Field(
        default=1.0, description="longest time a buffered message waits for fsync; 0 = fsync before publishing"
    )
    write_through: bool = Field(
        default=False,
        description="buffer every message before it is published (zero loss on power cut with sync_interval 0)",
    )
    segment_size: ByteSize = 4 * 2**20
    compression: Literal["zstd", "none"] = Field(
        default="zstd", description="store each buffered message as a zstd frame (about 9x smaller)"
    )
    when_full: Literal["drop_oldest", "drop_newest"] = Field(
        default="drop_oldest", description="at max_size: drop the oldest buffered messages, or the new ones"
    )
    drain_rate: float = Field(
        default=1000.0,
        ge=0,
        description="most buffered messages sent per second after an outage (live data goes first); 0 = no limit",
    )

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return config_path(v) if v is not None else None


class LogConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class HealthConfig(Strict):
    listen: str | None = Field(
        default=None,
        description="host:port of the /healthz and /metrics endpoint; off when unset",
        json_schema_extra={"pattern": rf"^.+:{PORT_PATTERN}$", "patternErrorMessage": "host:port, e.g. 127.0.0.1:9108"},
    )
    watchdog_stall: Duration = Field(default=60.0, description="no progress for this long stops the watchdog pings")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is None:
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ValueError("use host:port, e.g. 127.0.0.1:9108")
        port_number(port)
        return v


#: `state_dir: memory`: seq counters and driver state live in memory only, and restart with the process.
MEMORY = "memory"


def default_state_dir(site: str, environ: Mapping[str, str] | None = None) -> Path:
    """The `state_dir` of a config that names none, so that `seq` survives a restart out of the box.

    The unit's StateDirectory= (systemd sets $STATE_DIRECTORY, /var/lib/edgegw), else the user's
    state folder ($XDG_STATE_HOME/edgegw/<site>, ~/.local/state/edgegw/<site>), else a folder
    beside the config file (edgegw-state/<site>). Nothing is created here: `edgegw run` does.
    """
    env = os.environ if environ is None else environ
    systemd = env.get("STATE_DIRECTORY", "").split(":")[0]  # one path per StateDirectory= entry
    if systemd and Path(systemd).is_absolute():
        return Path(systemd)
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec: a relative value is ignored
        return Path(xdg) / "edgegw" / site
    home = env.get("HOME", "")
    if home and Path(home).is_absolute() and Path(home) != Path("/"):
        return Path(home) / ".local" / "state" / "edgegw" / site
    return (CONFIG_DIR.get() or Path.cwd()) / "edgegw-state" / site


class CommandsConfig(Strict):
    """Writes and actions from MQTT and the CLI (docs/commands.md): off unless enabled here."""

    enabled: bool = Field(default=False, description="accept writes and actions at all")
    max_age: Duration = Field(default=30.0, description="a request older than this is never executed")
    devices: list[Identifier] | None = Field(default=None, description="only these devices take commands")
    timeout: Duration = Field(default=10.0, description="a command not done by then is answered `timeout`")


#: HA mode: the keep-alive when the config names none (the broker fires a will after 1.5 x it).
HA_KEEPALIVE = 5.0
#: HA mode: how long an instance waits for the retained HA topics after a connect or a claim.
HA_SETTLE = 1.0
_INSTANCE_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")


def default_instance(environ: Mapping[str, str] | None = None) -> str:
    """`ha.instance` when the config names none: $EDGEGW_INSTANCE, else the short host name."""
    env = os.environ if environ is None else environ
    name = env.get("EDGEGW_INSTANCE", "").strip()
    if name:
        return name
    import socket

    host = socket.gethostname().split(".")[0]
    return _INSTANCE_CHARS.sub("-", host).strip("-_.") or "edgegw"


def ha_takeover_bound(interval: float) -> float:
    """The promised takeover time for a device polled every `interval` s: max(3 intervals, 10 s)."""
    return max(3.0 * interval, 10.0)


def ha_keepalive_limit(intervals: list[float]) -> float:
    """The largest keep-alive that still lets a standby poll every device within its bound after a power cut.

    A dead active is noticed after 1.5 x keep-alive (the broker fires its will), then the
    standby settles its claim, starts the drivers (0.5 s) and polls at the device's next tick.
    """
    if not intervals:
        return 60.0
    return min((ha_takeover_bound(i) - HA_SETTLE - 0.5 - 1.1 * i) / 1.5 for i in intervals)


class HaConfig(Strict):
    """A hot-standby pair (docs/operations.md): instances of one `group` elect one active via the broker."""

    group: Identifier
    instance: Identifier | None = Field(
        default=None, description="this instance's name; default: $EDGEGW_INSTANCE, else the host name"
    )
    partition_window: Duration = Field(
        default=4 * 3600.0,
        description="how long an active cut off from the broker keeps publishing into its buffer (seq blocks)",
    )

    @model_validator(mode="after")
    def _instance(self) -> HaConfig:
        if self.instance is None:
            name = default_instance()
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}", name):
                raise ValueError(f"EDGEGW_INSTANCE {name!r} is not a valid instance name (letters, digits, _ . -)")
            object.__setattr__(self, "instance", name)
        if self.partition_window <= 0:
            raise ValueError("partition_window must be positive")
        return self

    @property
    def name(self) -> str:
        assert self.instance is not None
        return self.instance


class GatewayConfig(Strict):
    """The whole file; per-driver sections (bacnet:, snmp:) are added from the registry."""

    site: Identifier
    mqtt: MqttConfig = MqttConfig()
    buffer: BufferConfig = BufferConfig()
    # Null is refused (see _memory): the schema says a folder or `memory`, nothing else.
    state_dir: Annotated[Path | None, WithJsonSchema({"type": "string", "minLength": 1})] = Field(
        default=None,
        description="where seq counters and driver cursors live; `memory`: nowhere (None); unset: default_state_dir()",
    )
    log: LogConfig = LogConfig()
    health: HealthConfig = HealthConfig()
    buses: list[BusConfig] = Field(default_factory=list)
    devices: list[DeviceConfig] = Field(default_factory=list)
    commands: CommandsConfig = Field(default_factory=CommandsConfig)
    ha: HaConfig | None = None

    _source: str = ""
    _warnings: list[ConfigIssue] = []

    @field_validator("state_dir", mode="before")
    @classmethod
    def _memory(cls, v: Any) -> Any:
        if v is None:
            # An empty `state_dir:` is null too: losing seq across restarts must be asked for in words.
            raise ValueError(
                "null is not a choice; write `state_dir: memory` to keep seq and driver state "
                "in memory only (seq restarts at 1), or leave state_dir out for the default folder"
            )
        return None if v == MEMORY else v

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return config_path(v) if v is not None else None

    @model_validator(mode="after")
    def _default_state_dir(self) -> GatewayConfig:
        if "state_dir" not in self.model_fields_set:
            object.__setattr__(self, "state_dir", default_state_dir(self.site))
        return self

    @property
    def source(self) -> str:
        return self._source

    @property
    def warnings(self) -> list[ConfigIssue]:
        """Files and variables this config needs at run time that were missing when it was loaded."""
        return self._warnings

    def section(self, kind: str) -> Any:
        return getattr(self, kind, None)

    def bus_config(self, bus_id: str) -> BusConfig | None:
        return next((b for b in self.buses if b.id == bus_id), None)


def _gateway_model(data: Mapping[str, Any] | None = None) -> type[GatewayConfig]:
    """The file's model: over the kinds `data` uses (its devices' drivers, its sections), else all.

    Each kind's models cost memory for as long as the daemon runs (pydantic keeps their
    validators), and a protocol library loads only with its kind: a Modbus-only site builds none
    of the others. A driver the registry does not know takes the full model, whose error lists
    every known one. Keyed on the registry's contents: a kind registered later gets a new model.
    """
    kinds = _kinds_used(data) if data is not None else None
    return _gateway_model_of(tuple(spec for kind, spec in DRIVERS.items() if kinds is None or kind in kinds))


def _kinds_used(data: Mapping[str, Any]) -> set[str] | None:
    devices = data.get("devices")
    drivers = [d.get("driver") for d in devices if isinstance(d, Mapping)] if isinstance(devices, list) else []
    if not drivers or any(not isinstance(k, str) or k not in DRIVERS for k in drivers):
        return None
    return {*map(str, drivers), *(k for k in DRIVERS if k in data)}


@cache
def _gateway_model_of(specs: tuple[DriverSpec, ...]) -> type[GatewayConfig]:
    models = tuple(spec.device_model for spec in specs)
    device_union = Annotated[Union[models], Field(discriminator="driver")]  # type: ignore[valid-type]  # noqa: UP007
    fields: dict[str, Any] = {"devices": (list[device_union], Field(default_factory=list))}
    for spec in specs:
        section = spec.section_model
        if section is not None:
            fields[spec.kind] = (section | None, None)
    return create_model("GatewayConfigFile", __base__=GatewayConfig, **fields)


def _issues_from(exc: ValidationError, data: Any, prefix: str = "", default_file: str = "") -> list[ConfigIssue]:
    out = []
    for err in exc.errors(include_url=False):
        file, line, path = locate(data, err["loc"])
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        file, line, path = _refine(data, path, msg, file, line)
        full = f"{prefix}{format_path(path)}" if prefix and path else (prefix.rstrip(".") or format_path(path))
        if prefix and path and isinstance(path[0], int):
            full = f"{prefix.rstrip('.')}{format_path(path)}"
        out.append(ConfigIssue(file or default_file, line, full, msg))
    return out


def _refine(data: Any, path: list[str | int], msg: str, file: str, line: int) -> tuple[str, int, list[str | int]]:
    """A model-level error that names one of the model's keys points at that key's line."""
    node: Any = data
    for part in path:
        node = child_of(node, part)
        if node is MISSING:
            return file, line, path
    if isinstance(node, LineDict):
        for key in node:
            if isinstance(key, str) and re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", msg):
                return node.file or file, node.lines.get(key, line), [*path, key]
    return file, line, path


@contextmanager
def _config_dir(base: Path | None) -> Iterator[None]:
    token = CONFIG_DIR.set(base)
    try:
        yield
    finally:
        CONFIG_DIR.reset(token)


def _device_env(device: DeviceConfig) -> dict[str, Any]:
    env: dict[str, Any] = {}
    for name, value in device:
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            env[name] = value
    return env


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> LineDict:
    out = LineDict({**base, **over})
    src = over if isinstance(over, LineDict) else base
    if isinstance(src, LineDict):
        out.file, out.line = src.file, src.line
        out.lines = {**getattr(base, "lines", {}), **src.lines}
    return out


# Point id -> (the point's mapping, file, line, where it was written), in definition order.
_Points = dict[str, tuple[dict[str, Any], str, int, str]]
_UNSET = object()


@dataclass
class _Shared:
    """What the devices of one load share: a hundred devices on one profile expand and validate it once.

    `expansions`: (profile file, the values of the variables its expressions read) -> its expanded
    points (or the error). `points`: (point model, the definition as canonical JSON) -> the validated
    point; `by_object` finds a shared expansion's definitions without encoding them again.
    """

    expansions: dict[tuple[Any, ...], list[tuple[dict[str, Any], str, int]] | ProfileError] = field(
        default_factory=dict
    )
    points: dict[tuple[type[PointConfig], str], PointConfig] = field(default_factory=dict)
    by_object: dict[tuple[type[PointConfig], int], PointConfig] = field(default_factory=dict)
    # The ids of the point mappings in `expansions` (which keeps them alive, so an id stays theirs):
    # the definitions seen again by identity. A mapping written inline is seen once.
    expanded: set[int] = field(default_factory=set)
    # A device's resolved points, by the identity of each: devices of one model share one tuple.
    lists: dict[tuple[int, ...], tuple[PointConfig, ...]] = field(default_factory=dict)

    def points_of(self, points: Iterable[PointConfig]) -> tuple[PointConfig, ...]:
        found = tuple(points)
        # The entry holds the points, so their ids cannot be reused during the load.
        return self.lists.setdefault(tuple(map(id, found)), found)


def _resolve_device(
    raw: Mapping[str, Any], device: DeviceConfig, path: str, base_dir: Path | None, shared: _Shared | None = None
) -> tuple[DeviceConfig, list[ConfigIssue]]:
    """Merge the device's profile and inline points and validate each point; returns the device and issues."""
    shared = shared or _Shared()
    issues: list[ConfigIssue] = []
    points: _Points = {}
    profile_meta: dict[str, Any] = {}
    profile_vars: dict[str, Any] = {}
    actions: dict[str, tuple[Any, str]] = {}  # name -> (definition, where it was written)
    if device.profile is not None:
        applied = _apply_profile(raw, device, path, base_dir, points, issues, shared)
        if isinstance(applied, list):
            return device, applied
        device, profile = applied
        profile_meta, profile_vars = profile.meta(), profile.vars
        actions = {name: (spec, f"profile {profile.name}: actions.{name}") for name, spec in profile.actions.items()}
    _merge_inline(raw, device, path, profile_vars, points, issues)
    _report_defaults(device, points)
    actions.update({name: (spec, f"{path}.actions.{name}") for name, spec in device.actions.items()})
    resolved = _validated_points(type(device).point_model, points, issues, shared)
    # The written points live on as the validated ones; the raw mappings (1 KB a point) go.
    object.__setattr__(device, "points", [])
    _check_max_age(device, resolved, points, issues)
    device._resolved = shared.points_of(p for p in resolved if p.calc is None)
    device._calculated = shared.points_of(_checked_calcs(resolved, points, issues))
    device._resolved_actions = _validated_actions(type(device).action_model, actions, getattr(raw, "file", ""), issues)
    device._profile_meta = profile_meta
    return device, issues


def _report_defaults(device: DeviceConfig, points: _Points) -> None:
    """The device's `report` (report by exception) on each point that sets neither key, before validation.

    Written into the point's mapping (a copy), so that points written alike still validate once
    per load: a deadband only where it fits (`PointConfig.numeric_gauge`), max_age everywhere.
    """
    from gateway.models import COUNTER_QUANTITIES  # here: the import block above is everyone's merge

    report = device.report
    if report is None or (report.deadband is None and report.max_age is None):
        return
    for pid, (point, pfile, pline, where) in list(points.items()):
        if not isinstance(point, Mapping) or "deadband" in point or "max_age" in point:
            continue
        update: dict[str, Any] = {}
        if report.max_age is not None:
            update["max_age"] = report.max_age
        gauge = str(point.get("kind", "gauge")) == "gauge" and point.get("rate") in (None, False)
        if report.deadband is not None and gauge and point.get("quantity") not in COUNTER_QUANTITIES:
            update["deadband"] = report.deadband
        if update:
            points[pid] = (_merge(point, update), pfile, pline, where)


def _check_max_age(
    device: DeviceConfig, resolved: list[PointConfig], points: _Points, issues: list[ConfigIssue]
) -> None:
    """A point's max_age is at least the device's interval: a value is not published more often than read."""
    for p in resolved:
        if p.max_age is not None and p.max_age < device.interval and p.id in points:
            point, pfile, pline, where = points[p.id]
            msg = (
                f"max_age {p.max_age:g}s is shorter than the device's interval {device.interval:g}s: "
                "a value cannot be published more often than it is read"
            )
            issues.append(
                ConfigIssue(pfile, getattr(point, "lines", {}).get("max_age", pline), f"{where}.max_age", msg)
            )


def _validated_actions(
    model: type[ActionConfig], actions: Mapping[str, tuple[Any, str]], file: str, issues: list[ConfigIssue]
) -> dict[str, ActionConfig]:
    """Each named action through the driver's action model."""
    out: dict[str, ActionConfig] = {}
    for name, (spec, where) in actions.items():
        if not isinstance(spec, Mapping):
            issues.append(ConfigIssue(file, getattr(spec, "line", 0), where, "an action is a mapping"))
            continue
        try:
            out[name] = model.model_validate(spec)
        except ValidationError as exc:
            for issue in _issues_from(exc, spec, f"{where}.", getattr(spec, "file", "") or file):
                issues.append(issue)
    return out


def _apply_profile(
    raw: Mapping[str, Any],
    device: DeviceConfig,
    path: str,
    base_dir: Path | None,
    points: _Points,
    issues: list[ConfigIssue],
    shared: _Shared,
) -> tuple[DeviceConfig, Profile] | list[ConfigIssue]:
    """The device with its profile's defaults, and the profile's points added to `points`.

    A profile that cannot be used at all is the device's only issue (returned as the list).
    """
    file = getattr(raw, "file", "")
    lines = getattr(raw, "lines", {})
    assert device.profile is not None
    try:
        profile = load_profile(resolve_profile_path(device.profile, device.driver, base_dir))
    except (ValueError, ProfileError, YamlError) as exc:
        return [ConfigIssue(file, lines.get("profile", getattr(raw, "line", 0)), f"{path}.profile", str(exc))]
    if profile.driver and profile.driver != device.driver:
        msg = f"profile {profile.name!r} is for driver {profile.driver!r}, not {device.driver!r}"
        return [ConfigIssue(file, lines.get("profile", 0), f"{path}.profile", msg)]
    if profile.device:
        # The profile's device defaults apply where the device does not set the key itself.
        merged = _merge(profile.device, raw)
        try:
            device = type(device).model_validate(merged)
        except ValidationError as exc:
            return _issues_from(exc, merged, f"{path}.", file)
    unknown = set(device.profile_vars) - set(profile.vars)
    if unknown:
        known = ", ".join(sorted(profile.vars)) or "none"
        msg = f"unknown profile variable(s) {sorted(unknown)}; {profile.name} has: {known}"
        issues.append(ConfigIssue(file, lines.get("profile_vars", 0), f"{path}.profile_vars", msg))
    env = {**_device_env(device), **profile.vars, **device.profile_vars}
    expanded = _expansion(profile, env, shared)
    if isinstance(expanded, ProfileError):
        issues.append(ConfigIssue(expanded.file, expanded.line, f"profile {profile.name}", expanded.message))
        return device, profile
    for point, pfile, pline in expanded:
        pid = str(point.get("id", ""))
        if pid in points:
            issues.append(ConfigIssue(pfile, pline, f"profile {profile.name}: {pid}", "duplicate point id"))
        points[pid] = (point, pfile, pline, f"profile {profile.name}: {pid or '?'}")
    return device, profile


def _expansion(
    profile: Profile, env: Mapping[str, Any], shared: _Shared
) -> list[tuple[dict[str, Any], str, int]] | ProfileError:
    """The profile's points for `env`, expanded once per load for every set of values its expressions read."""
    names = referenced_names(profile.points)
    key = None
    if names is not None:
        key = (profile.file, id(profile), *((n, repr(env.get(n, _UNSET))) for n in sorted(names)))
        if key in shared.expansions:
            return shared.expansions[key]
    try:
        out: list[tuple[dict[str, Any], str, int]] | ProfileError = list(expand(profile.points, env))
    except ProfileError as exc:
        out = exc
    if key is not None:
        shared.expansions[key] = out
        if not isinstance(out, ProfileError):
            shared.expanded.update(id(point) for point, _file, _line in out)
    return out


def _merge_inline(
    raw: Mapping[str, Any],
    device: DeviceConfig,
    path: str,
    profile_vars: Mapping[str, Any],
    points: _Points,
    issues: list[ConfigIssue],
) -> None:
    """The device's own points: new ones added, ones that name a profile point merged over it."""
    file = getattr(raw, "file", "")
    inline = raw.get("points", [])
    env = {**_device_env(device), **profile_vars, **device.profile_vars}
    try:
        expanded = list(expand(inline, env)) if isinstance(inline, list) else []
    except ProfileError as exc:
        issues.append(ConfigIssue(exc.file or file, exc.line, f"{path}.points", exc.message))
        expanded = []
    seen_inline: set[str] = set()
    for i, (point, pfile, pline) in enumerate(expanded):
        pid = str(point.get("id", ""))
        if pid in seen_inline:
            issues.append(ConfigIssue(pfile or file, pline, f"{path}.points[{i}]", f"duplicate point id {pid!r}"))
        seen_inline.add(pid)
        merged = _merge(points[pid][0], point) if pid in points else point
        points[pid] = (merged, pfile or file, pline, f"{path}.points[{i}]")


def _validated_points(
    point_model: type[PointConfig], points: _Points, issues: list[ConfigIssue], shared: _Shared
) -> list[PointConfig]:
    """Each point through the driver's point model; references between points checked.

    `shared` interns the validated points of one load: a definition written the same way for many
    devices (inline, or from one profile) is validated once and held once. Points are immutable
    after validation, so devices can share them.
    """
    resolved: list[PointConfig] = []
    for point, pfile, pline, where in points.values():
        # A calculated point has no protocol address: the base model, not the driver's.
        model = PointConfig if isinstance(point, Mapping) and point.get("calc") is not None else point_model
        again = id(point) in shared.expanded
        if again and (seen := shared.by_object.get((model, id(point)))) is not None:
            resolved.append(seen)
            continue
        key = (model, json.dumps(point, sort_keys=True, default=repr))
        if (known := shared.points.get(key)) is None:
            try:
                known = shared.points[key] = _compact(model.model_validate(point))
            except ValidationError as exc:
                for issue in _issues_from(exc, point, f"{where}.", pfile):
                    issues.append(ConfigIssue(issue.file or pfile, issue.line or pline, issue.path, issue.message))
                continue
        if again:
            shared.by_object[(model, id(point))] = known
        resolved.append(known)
    ids = {p.id for p in resolved}
    for p in resolved:
        if p.exponent_point is not None and p.exponent_point not in ids:
            _, pfile, pline, where = points[p.id]
            issues.append(
                ConfigIssue(pfile, pline, f"{where}.exponent_point", f"no point {p.exponent_point!r} in this device")
            )
    return resolved


def _checked_calcs(resolved: list[PointConfig], points: _Points, issues: list[ConfigIssue]) -> tuple[PointConfig, ...]:
    """The `calc` points compiled and checked (syntax, point ids, cycles), in evaluation order."""
    by_id = {p.id: p for p in resolved}
    compiled: dict[str, Compiled] = {}

    def issue(pid: str, message: str) -> None:
        point, pfile, pline, where = points[pid]
        issues.append(ConfigIssue(pfile, getattr(point, "lines", {}).get("calc", pline), f"{where}.calc", message))

    for p in resolved:
        if p.exponent_point is not None and by_id.get(p.exponent_point, p).calc is not None:
            _, pfile, pline, where = points[p.id]
            msg = f"{p.exponent_point!r} is a calculated point; an exponent is read from the device"
            issues.append(ConfigIssue(pfile, pline, f"{where}.exponent_point", msg))
        if p.calc is None:
            continue
        try:
            c = compile_expr(p.calc)
        except CalcError as exc:
            issue(p.id, str(exc))
            continue
        unknown = [pid for pid in c.inputs if pid not in by_id]
        if unknown:
            # An input that is there but invalid has its own issue already.
            missing = [pid for pid in unknown if pid not in points]
            if missing:
                issue(p.id, f"no point {', '.join(map(repr, missing))} in this device")
            continue
        compiled[p.id] = c
    try:
        order = evaluation_order(compiled)
    except CalcError as exc:
        for pid in compiled:
            if pid in str(exc).split(": ", 1)[1].split(" -> "):
                issue(pid, str(exc))
        return ()
    return tuple(by_id[pid] for pid in order)


_NO_FIELDS_SET: set[str] = set()


def _compact(point: PointConfig) -> PointConfig:
    """Drop the per-instance record of which keys were given (~0.7 KB a point, 7 MB for 10k points).

    Nothing reads `model_fields_set` of a resolved point; the merge with profile defaults works on
    the raw mappings before validation.
    """
    object.__setattr__(point, "__pydantic_fields_set__", _NO_FIELDS_SET)
    return point


def check_profile(path: Path | str) -> tuple[Profile | None, list[PointConfig], list[ConfigIssue]]:
    """A profile file on its own, expanded with its default vars: (profile, its points, issues).

    Every point goes through the driver's point model (a `calc` point through the base model) and
    every expression is checked, as when a device uses the profile.
    """
    path = Path(path)
    try:
        profile = load_profile(path)
    except ProfileError as exc:
        return None, [], [ConfigIssue(exc.file, exc.line, "(profile)", exc.message)]
    except YamlError as exc:
        return None, [], [ConfigIssue(exc.file, exc.line, "(yaml)", exc.message)]
    except (OSError, ValueError) as exc:
        return None, [], [ConfigIssue(str(path), 0, "(profile)", str(exc))]
    spec = DRIVERS.get(profile.driver)
    if spec is None:
        msg = f"unknown driver {profile.driver!r}; known: {sorted(DRIVERS)}"
        return profile, [], [ConfigIssue(str(path), 1, "driver", msg)]
    issues: list[ConfigIssue] = []
    points: _Points = {}
    # What a device's fields would be (the model's defaults, then the profile's device defaults).
    defaults = {name: f.default for name, f in spec.device_model.model_fields.items()}
    env = {
        k: v
        for k, v in {**defaults, **profile.device}.items()
        if isinstance(v, int | float | str) and not isinstance(v, bool)
    }
    env.update(profile.vars)
    with _config_dir(path.resolve().parent):
        try:
            for point, pfile, pline in expand(profile.points, env):
                pid = str(point.get("id", ""))
                if pid in points:
                    issues.append(ConfigIssue(pfile, pline, f"profile {profile.name}: {pid}", "duplicate point id"))
                points[pid] = (point, pfile, pline, f"profile {profile.name}: {pid or '?'}")
        except ProfileError as exc:
            issues.append(ConfigIssue(exc.file, exc.line, f"profile {profile.name}", exc.message))
        resolved = _validated_points(spec.device_model.point_model, points, issues, _Shared())
        _checked_calcs(resolved, points, issues)
        actions = {name: (a, f"profile {profile.name}: actions.{name}") for name, a in profile.actions.items()}
        _validated_actions(spec.device_model.action_model, actions, str(path), issues)
    return profile, resolved, issues


def parse_device(raw: Mapping[str, Any], base_dir: Path | None = None) -> DeviceConfig:
    """Validate one device mapping (profile merged, points resolved); raises ConfigError."""
    kind = raw.get("driver")
    if kind not in DRIVERS:
        raise ConfigError([ConfigIssue("", 0, "driver", f"unknown driver {kind!r}; known: {sorted(DRIVERS)}")])
    model = DRIVERS[str(kind)].device_model
    with _config_dir(base_dir):
        try:
            device = model.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(_issues_from(exc, raw)) from None
        device, issues = _resolve_device(raw, device, device.id, base_dir)
    if issues:
        raise ConfigError(issues)
    return device


def parse_config(data: Any, source: str, base_dir: Path | None, environment: Environment = "require") -> GatewayConfig:
    """Validate loaded YAML data; raises ConfigError with every issue found.

    Files and variables the config names but this machine lacks are issues with ``"require"``
    (`edgegw run`, a reload) and ``cfg.warnings`` with ``"warn"`` (`edgegw check`).
    """
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(source, 1, "(top)", "the configuration is a YAML mapping")])
    try:
        with _config_dir(base_dir), collect_environment() as problems:
            cfg, issues = _validate(data, source, base_dir)
            found = _environment_issues(problems, data, source)
    finally:
        # Line information lives only until validation ends (issue 13.1).
        forget_loaded()
    if environment == "require":
        issues, found = [*issues, *found], []
    if issues or cfg is None:
        raise ConfigError(issues, found)
    cfg._warnings = found
    return cfg


def _validate(
    data: dict[str, Any], source: str, base_dir: Path | None
) -> tuple[GatewayConfig | None, list[ConfigIssue]]:
    model = _gateway_model(data)
    try:
        cfg = model.model_validate(data)
    except ValidationError as exc:
        return None, _issues_from(exc, data, default_file=source)
    issues: list[ConfigIssue] = []
    raw_devices = data.get("devices", [])
    devices: list[DeviceConfig] = []
    shared = _Shared()
    for i, device in enumerate(cfg.devices):
        raw = raw_devices[i] if isinstance(raw_devices, list) else {}
        resolved, dev_issues = _resolve_device(raw, device, f"devices[{i}]", base_dir, shared)
        devices.append(resolved)
        issues.extend(dev_issues)
        if isinstance(raw, dict) and raw.get("points"):
            # The written points live on as the validated ones (their issues name their lines
            # already): their mappings go now, not at the end of the load, and the next devices
            # reuse that memory instead of adding to the load's high-water mark.
            raw["points"] = []
    issues.extend(_cross_check(cfg, devices, data, source))
    object.__setattr__(cfg, "devices", devices)
    cfg._source = source
    return cfg, issues


def _environment_issues(problems: list[EnvironmentProblem], data: Any, source: str) -> list[ConfigIssue]:
    """Each problem at every place of the file that names it (two devices may share a variable)."""
    out: list[ConfigIssue] = []
    seen: set[tuple[str, int, str]] = set()
    # dict.fromkeys: a device is validated twice when its profile sets device defaults.
    for problem in dict.fromkeys(problems):
        places = list(_places(data, problem, [])) or [(source, 0, problem.key)]
        for file, line, path in places:
            if (file, line, problem.message) not in seen:
                seen.add((file, line, problem.message))
                out.append(ConfigIssue(file or source, line, path, problem.message, environment=True))
    return sorted(out, key=lambda i: (i.file, i.line))


def _places(node: Any, problem: EnvironmentProblem, path: list[str | int]) -> Iterator[tuple[str, int, str]]:
    """Where in loaded data a key says what the problem names (as written, or as made absolute)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if isinstance(value, Mapping | list):
                yield from _places(value, problem, [*path, key])
            elif key == problem.key and problem.value in (str(value), str(config_path(str(value)))):
                line = getattr(node, "lines", {}).get(key, getattr(node, "line", 0))
                yield getattr(node, "file", ""), line, format_path([*path, key])
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _places(item, problem, [*path, i])


def _line(data: Any, *path: str | int) -> int:
    _, line, _ = locate(data, list(path))
    return line


def _cross_check(cfg: GatewayConfig, devices: list[DeviceConfig], data: Any, source: str) -> list[ConfigIssue]:
    issues = []
    seen: dict[str, int] = {}
    for i, dev in enumerate(devices):
        if dev.id in seen:
            msg = f"duplicate device id {dev.id!r} (also devices[{seen[dev.id]}])"
            issues.append(ConfigIssue(source, _line(data, "devices", i, "id"), f"devices[{i}].id", msg))
        seen[dev.id] = i
    bus_ids: dict[str, int] = {}
    for i, bus in enumerate(cfg.buses):
        if bus.id in bus_ids:
            issues.append(
                ConfigIssue(source, _line(data, "buses", i, "id"), f"buses[{i}].id", f"duplicate bus id {bus.id!r}")
            )
        bus_ids[bus.id] = i
        if (bus.serial is None) == (bus.tcp is None):
            issues.append(
                ConfigIssue(source, _line(data, "buses", i), f"buses[{i}]", "a bus has either `serial` or `tcp`")
            )
    for i, key, msg in path_conflicts(devices):
        issues.append(ConfigIssue(source, _line(data, "devices", i, key), f"devices[{i}].{key}", msg))
    bus_driver: dict[str, str] = {}
    for i, dev in enumerate(devices):
        if dev.bus is None:
            continue
        if dev.bus not in bus_ids:
            known = ", ".join(bus_ids) or "none defined"
            msg = f"no bus {dev.bus!r} (buses: {known})"
            issues.append(ConfigIssue(source, _line(data, "devices", i, "bus"), f"devices[{i}].bus", msg))
            continue
        other = bus_driver.setdefault(dev.bus, dev.driver)
        if other != dev.driver:
            msg = f"bus {dev.bus!r} already carries {other} devices; one protocol per bus"
            issues.append(ConfigIssue(source, _line(data, "devices", i, "bus"), f"devices[{i}].bus", msg))
    return issues + _ha_check(cfg, devices, data, source)


def _ha_check(cfg: GatewayConfig, devices: list[DeviceConfig], data: Any, source: str) -> list[ConfigIssue]:
    """HA mode: the keep-alive must let a standby take over within the promised bound.

    A pair must notice a dead active quickly (the broker fires the will after 1.5 x keep-alive):
    a config that names no keep-alive gets one that fits, one that names a longer one is refused.
    """
    if cfg.ha is None:
        return []
    intervals = [d.interval for d in devices if d.enabled]
    limit = ha_keepalive_limit(intervals)
    if "keepalive" not in cfg.mqtt.model_fields_set:
        keepalive = max(2.0, min(HA_KEEPALIVE, float(int(limit))))
        object.__setattr__(cfg, "mqtt", cfg.mqtt.model_copy(update={"keepalive": keepalive}))
        return []
    if cfg.mqtt.keepalive <= limit:
        return []
    fastest = min(intervals)
    msg = (
        f"with `ha` the broker must notice a dead active in time: 1.5 x keepalive + {HA_SETTLE + 0.5:g} s + one "
        f"poll interval must fit in max(3 poll intervals, 10 s) for every device; keepalive at most "
        f"{limit:.1f} s here (fastest device: {fastest:g} s), or leave keepalive out"
    )
    return [ConfigIssue(source, _line(data, "mqtt", "keepalive"), "mqtt.keepalive", msg)]


def load_config(path: Path | str, environment: Environment = "require") -> GatewayConfig:
    """Load and validate a config file; raises ConfigError (see parse_config for `environment`)."""
    path = Path(path)
    try:
        data = load_file(path)
    except YamlError as exc:
        raise ConfigError([ConfigIssue(exc.file, exc.line, "(yaml)", exc.message)]) from None
    return parse_config(data, str(path), path.resolve().parent, environment)


def load_config_text(
    text: str, name: str = "<config>", base_dir: Path | None = None, environment: Environment = "require"
) -> GatewayConfig:
    try:
        data = load_text(text, name)
    except YamlError as exc:
        raise ConfigError([ConfigIssue(exc.file, exc.line, "(yaml)", exc.message)]) from None
    return parse_config(data, name, base_dir, environment)
