"""Config models of the DLMS/COSEM driver: the meter's link, addressing, security and points."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

from drivers.dlms import obis
from gateway.buses import FailoverSettings, TcpPaths, TcpSettings, check_failover
from gateway.models import (
    ActionConfig,
    DeviceConfig,
    Duration,
    PointConfig,
    Port,
    Strict,
    read_config_file,
    read_secret,
)

# Interface classes the driver reads; anything else is refused at config time rather than at
# the first poll.
DATA, REGISTER, EXTENDED_REGISTER, DEMAND_REGISTER, PROFILE_GENERIC, CLOCK = 1, 3, 4, 5, 7, 8
SCRIPT_TABLE, DISCONNECT_CONTROL = 9, 70
READABLE_CLASSES = frozenset(
    {DATA, REGISTER, EXTENDED_REGISTER, DEMAND_REGISTER, PROFILE_GENERIC, CLOCK, DISCONNECT_CONTROL}
)

CLOCK_OBIS = "0.0.1.0.0.255"

#: A-XDR types a config names (the keys of drivers.dlms.codec.TYPE_NAMES; kept here so that
#: loading a config does not import the codec and its crypto library).
ValueType = Literal[
    "null",
    "boolean",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "enum",
    "float32",
    "float64",
    "octet_string",
    "visible_string",
    "utf8_string",
]

_OBIS_DOTTED = re.compile(r"^\s*(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\s*$")
# IEC 62056-61 reduced form: A-B:C.D.E*F (F optional, default 255)
_OBIS_IEC = re.compile(r"^\s*(\d{1,3})-(\d{1,3}):(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:[*&.](\d{1,3}))?\s*$")


def normalize_obis(text: Any) -> str:
    """`1.0.1.8.0.255`, `1-0:1.8.0*255` or `1-0:1.8.0` -> `1.0.1.8.0.255`."""
    if not isinstance(text, str):
        raise ValueError(f"an OBIS code is text such as 1.0.1.8.0.255, not {text!r}")
    m = _OBIS_DOTTED.match(text) or _OBIS_IEC.match(text)
    if m is None:
        raise ValueError(f"not an OBIS code: {text!r} (use A.B.C.D.E.F, e.g. 1.0.1.8.0.255)")
    parts = [int(g) if g is not None else 255 for g in m.groups()]
    if any(p > 255 for p in parts):
        raise ValueError(f"OBIS code {text!r}: each group is 0..255")
    return ".".join(str(p) for p in parts)


class DlmsPoint(PointConfig):
    """A COSEM attribute: {class, OBIS, attribute}; a profile column adds `column`.

    A Profile Generic point (`class: 7`) is one captured column of the profile's buffer: `obis`
    names the profile (1.0.99.1.0.255), `column` the captured object (1.0.1.8.0.255) and
    `column_attribute` its attribute (2). Its entries come back as a time series.
    """

    model_config = ConfigDict(populate_by_name=True)

    obis: str
    class_id: Annotated[int, Field(alias="class", ge=1, le=65535)] = REGISTER
    attribute: Annotated[int, Field(ge=1, le=127)] = 2
    column: str | None = None
    column_attribute: Annotated[int, Field(ge=1, le=127)] = 2
    column_class: Annotated[int, Field(ge=1, le=65535)] | None = None
    type: ValueType | None = Field(
        default=None, description="the attribute's A-XDR type, for writes (default: the type the meter answers)"
    )

    @field_validator("obis", "column", mode="before")
    @classmethod
    def _obis(cls, v: Any) -> Any:
        return None if v is None else normalize_obis(v)

    @model_validator(mode="after")
    def _consistent(self) -> DlmsPoint:
        if self.class_id not in READABLE_CLASSES:
            raise ValueError(
                f"class {self.class_id} is not read by the dlms driver (use 1 Data, 3 Register, 4 Extended "
                "register, 5 Demand register, 7 Profile generic, 8 Clock or 70 Disconnect control)"
            )
        if self.writable and self.class_id == PROFILE_GENERIC:
            raise ValueError("a profile column is history: it cannot be writable")
        if self.writable and self.class_id == CLOCK:
            raise ValueError("a clock is set with an action (the profiles' `set_clock`), not as a writable point")
        if self.type == "null":
            raise ValueError("type null is for an action's parameter, not for a point")
        if self.class_id == PROFILE_GENERIC:
            if self.column is None:
                raise ValueError("a profile point (class 7) names its captured column: `column: <OBIS>`")
            if self.attribute != 2:
                raise ValueError("a profile point reads the buffer (attribute 2)")
        elif self.column is not None:
            raise ValueError("`column` is for profile points (class 7) only")
        if self.class_id == CLOCK and self.attribute != 2:
            raise ValueError("a clock point reads the time (attribute 2)")
        if self.quantity == "clock_drift" and self.class_id != CLOCK:
            raise ValueError("a clock_drift point reads a Clock object (class 8)")
        return self

    def protocol_address(self) -> dict[str, Any]:
        out: dict[str, Any] = {"obis": self.obis, "class": self.class_id, "attribute": self.attribute}
        if self.column is not None:
            out["column"] = self.column
            if self.column_attribute != 2:
                out["column_attribute"] = self.column_attribute
        return out


class DlmsTcp(TcpSettings):
    port: Port = 4059


class DlmsTcpPaths(TcpPaths):
    """`tcp:` of a DLMS device: one `{host, port}` or a list, preferred first (port 4059 by default)."""

    endpoint_model = DlmsTcp


class OpticalSettings(Strict):
    """The optical probe: IEC 62056-21 mode E opening, then HDLC."""

    port: str
    baudrate: Literal[300, 600, 1200, 2400, 4800, 9600, 19200] = 9600
    mode_e: bool = True
    device_address: Annotated[str, Field(pattern=r"^[A-Za-z0-9 ]{0,32}$")] = ""


Auth = Literal["none", "low", "high_gmac"]
Security = Literal["authenticated_encrypted", "authenticated"]


class DlmsKeys:
    """Security suite 0 material from a keys file; never printed (repr hides the keys)."""

    __slots__ = ("authentication_key", "encryption_key", "invocation_counter", "server_system_title", "system_title")

    def __init__(
        self,
        authentication_key: bytes,
        encryption_key: bytes,
        system_title: bytes,
        server_system_title: bytes | None = None,
        invocation_counter: int = 0,
    ) -> None:
        self.authentication_key = authentication_key
        self.encryption_key = encryption_key
        self.system_title = system_title
        self.server_system_title = server_system_title
        self.invocation_counter = invocation_counter

    def __repr__(self) -> str:
        return f"DlmsKeys(system_title={self.system_title.hex()}, keys=<hidden>)"


_KEY_NAMES = {
    "authentication_key": "authentication_key",
    "ak": "authentication_key",
    "encryption_key": "encryption_key",
    "ek": "encryption_key",
    "block_cipher_key": "encryption_key",
    "global_unicast_key": "encryption_key",
    "system_title": "system_title",
    "client_system_title": "system_title",
    "server_system_title": "server_system_title",
    "invocation_counter": "invocation_counter",
}


def _hex_or_text(name: str, value: str, length: int | None) -> bytes:
    compact = re.sub(r"[\s:\-]", "", value)
    if re.fullmatch(r"(?:[0-9A-Fa-f]{2})+", compact) and (length is None or len(compact) == 2 * length):
        return bytes.fromhex(compact)
    if name.endswith("system_title") and len(value) == 8 and value.isascii():
        return value.encode("ascii")
    want = f"{length} bytes as hex" if length else "hex"
    raise ValueError(f"keys file: {name} must be {want}")


def parse_keys(text: str) -> DlmsKeys:
    """`name = value` (or `name: value`) lines; hex keys, system titles as hex or 8 ASCII characters."""
    found: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"^([A-Za-z_]+)\s*[=:]\s*[\"']?(.*?)[\"']?$", line)
        if m is None or m.group(1).lower() not in _KEY_NAMES:
            # The line may hold a key: say where, never what.
            raise ValueError(f"keys file line {lineno}: expected `name = value` with a known name")
        found[_KEY_NAMES[m.group(1).lower()]] = m.group(2).strip()
    for name in ("authentication_key", "encryption_key", "system_title"):
        if name not in found:
            raise ValueError(f"keys file: {name} is missing")
    ic_text = found.get("invocation_counter", "0")
    try:
        ic = int(ic_text, 0)
    except ValueError:
        raise ValueError("keys file: invocation_counter must be an integer") from None
    if not 0 <= ic < 2**32:
        raise ValueError("keys file: invocation_counter must be 0..4294967295")
    return DlmsKeys(
        authentication_key=_hex_or_text("authentication_key", found["authentication_key"], 16),
        encryption_key=_hex_or_text("encryption_key", found["encryption_key"], 16),
        system_title=_hex_or_text("system_title", found["system_title"], 8),
        server_system_title=(
            _hex_or_text("server_system_title", found["server_system_title"], 8)
            if "server_system_title" in found
            else None
        ),
        invocation_counter=ic,
    )


class ClockSync(Strict):
    """Clock keeping: set the meter's clock to the gateway's when it drifts too far, at most once per interval."""

    max_drift: Duration = Field(default=5.0, description="set the clock when |meter - gateway| exceeds this")
    interval: Duration = Field(default=86400.0, description="at most one clock set per this time")

    @field_validator("max_drift")
    @classmethod
    def _drift(cls, v: float) -> float:
        if not 0.05 <= v <= 86400:
            raise ValueError("max_drift is between 50ms and 1d")
        return v

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: float) -> float:
        if v < 60:
            raise ValueError("interval is at least 1min")
        return v


#: `clock_sync: true` (before clock_sync was a policy): the old threshold, at most once an hour.
LEGACY_CLOCK_SYNC_INTERVAL = 3600.0
LEGACY_CLOCK_SYNC_THRESHOLD = 10.0


class DlmsParameter(Strict):
    """A constant parameter of a method, or a value an action sets: `{type: int8, value: 0}`."""

    type: ValueType
    value: int | float | bool | str | None = None

    @model_validator(mode="after")
    def _value(self) -> DlmsParameter:
        if (self.type == "null") != (self.value is None):
            raise ValueError("a null parameter has no value; any other type needs one")
        return self


_DEFAULT_PARAMETER = DlmsParameter(type="int8", value=0)  # the Blue Book's "data ::= integer(0)"


class DlmsAction(ActionConfig):
    """A named action: a method, a SET of one attribute, or a script of a script table.

    * method: `{class, obis, method}` with `parameter: {type, value}` (default integer 0;
      `parameter: null` sends none) or `arg: <name>` + `type` (the argument's value, of that type);
    * SET: `{class, obis, attribute}` with `parameter` or `arg` (+ `type`; a `datetime` argument is
      encoded as a COSEM date-time, absent: the gateway's time now);
    * script: `{script: <script table OBIS>, selector: <script id>}` (class 9, method 1 execute).

    `read_back: {name: attribute}` reads attributes of the same object after it, in the same bus
    transaction; they are the action's answer (a SET reads its attribute back as `value`).
    """

    model_config = ConfigDict(populate_by_name=True)

    class_id: int | None = Field(default=None, alias="class", ge=1, le=65535)
    obis: str | None = None
    method: Annotated[int, Field(ge=1, le=127)] | None = None
    attribute: Annotated[int, Field(ge=1, le=127)] | None = None
    parameter: DlmsParameter | None = _DEFAULT_PARAMETER
    arg: str | None = Field(default=None, description="the argument whose value is the parameter / the value set")
    type: ValueType | Literal["date_time"] | None = Field(default=None, description="the A-XDR type of `arg`")
    script: str | None = Field(default=None, description="a script table (class 9) to execute a script of")
    selector: Annotated[int, Field(ge=0, le=65535)] | None = Field(default=None, description="the script id")
    read_back: dict[str, Annotated[int, Field(ge=1, le=127)]] = Field(default_factory=dict)

    @field_validator("obis", "script", mode="before")
    @classmethod
    def _obis(cls, v: Any) -> Any:
        return None if v is None else normalize_obis(v)

    @model_validator(mode="after")
    def _one_form(self) -> DlmsAction:
        given = self.model_fields_set
        if self.script is not None:
            extra = given & {"class_id", "obis", "method", "attribute", "parameter", "arg", "type", "read_back"}
            if extra:
                raise ValueError(f"a script action is {{script, selector}} only (not {', '.join(sorted(extra))})")
            if self.selector is None:
                raise ValueError("a script action names the script: `selector: <script id>`")
            return self
        if self.selector is not None:
            raise ValueError("`selector` goes with `script: <script table OBIS>`")
        if self.class_id is None or self.obis is None:
            raise ValueError("an action is {class, obis, method | attribute} or {script, selector}")
        if (self.method is None) == (self.attribute is None):
            raise ValueError("give `method` (an ACTION) or `attribute` (a SET), not both")
        if self.arg is not None:
            self._check_arg(given)
        elif self.attribute is not None and ("parameter" not in given or self.parameter is None):
            raise ValueError("a SET action gives the value: `parameter: {type, value}` or `arg: <argument>`")
        elif self.type is not None:
            raise ValueError("`type` is the type of `arg`")
        return self

    def _check_arg(self, given: set[str]) -> None:
        spec = self.args.get(self.arg or "")
        if spec is None:
            raise ValueError(f"arg {self.arg!r} is not one of the action's args ({', '.join(self.args) or 'none'})")
        if "parameter" in given:
            raise ValueError("give `parameter` (a constant) or `arg`, not both")
        if spec.type == "datetime":
            if self.type not in (None, "date_time"):
                raise ValueError("a datetime argument is sent as a COSEM date-time: `type: date_time` (or no type)")
        elif self.type is None or self.type in ("date_time", "null"):
            raise ValueError(f"give the A-XDR type `arg` {self.arg!r} is sent as (`type: uint16`, ...)")
        elif not spec.required and spec.default is None:
            raise ValueError(f"optional argument {self.arg!r} needs a default")

    @property
    def form(self) -> Literal["script", "method", "set"]:
        if self.script is not None:
            return "script"
        return "method" if self.method is not None else "set"


def physical_from_serial(serial_number: int) -> int:
    """The DLMS default formula (as coded in Gurux): SN mod 10000 + 1000."""
    return serial_number % 10000 + 1000


def _legacy_clock_sync_schema(schema: dict[str, Any]) -> None:
    """The JSON Schema (gateway/schema.py) takes the old form too: `clock_sync: true` + a threshold."""
    props = schema["properties"]
    props["clock_sync"]["anyOf"].append({"type": "boolean"})
    props["clock_sync_threshold"] = {
        **{k: v for k, v in props["backfill"].items() if k != "default"},
        "description": "the old form's largest drift, with `clock_sync: true` (use `clock_sync: {max_drift}`)",
        "deprecated": True,
    }


class DlmsDevice(DeviceConfig):
    """A DLMS/COSEM meter on HDLC (RS-485 bus, optical probe, TCP) or the TCP wrapper."""

    point_model: ClassVar[type[PointConfig]] = DlmsPoint
    action_model: ClassVar[type[ActionConfig]] = DlmsAction

    driver: Literal["dlms"]
    transport: Literal["hdlc", "wrapper"] | None = Field(
        default=None, description="default: wrapper over `tcp`, hdlc over `bus` or `optical`"
    )
    tcp: DlmsTcpPaths | None = Field(default=None, description="`{host, port}`, or a list of them, preferred first")
    failover: FailoverSettings | None = Field(default=None, description="with several `tcp` endpoints")
    optical: OpticalSettings | None = Field(default=None, description="an IEC 62056-21 optical probe")
    # addressing (IEC 62056-46 / -47)
    client_address: Annotated[int, Field(ge=1, le=127)] | None = Field(
        default=None, description="client SAP; default 16 (public) without authentication, 1 (management) with"
    )
    logical_address: Annotated[int, Field(ge=0, le=0x3FFF)] = 1
    physical_address: Annotated[int, Field(ge=0, le=0x3FFF)] | None = None
    serial_number: Annotated[int, Field(ge=0)] | None = None
    address_size: Literal[1, 2, 4] | None = Field(default=None, description="HDLC server address bytes; default auto")
    # security
    auth: Auth = Field(default="none", description="authentication: none, low (password), high_gmac (keys)")
    password_file: Path | None = Field(default=None, description="the LLS password (auth: low), in a file")
    password_env: str | None = Field(default=None, description="the LLS password (auth: low), in a variable")
    keys_file: Path | None = Field(default=None, description="the HLS keys (auth: high_gmac), in a file")
    security: Security = Field(default="authenticated_encrypted", description="with high_gmac: what is protected")
    # link and APDU sizes
    max_info: Annotated[int, Field(ge=32, le=2030)] = Field(
        default=128, description="HDLC information field length proposed in SNRM (both directions)"
    )
    window: Annotated[int, Field(ge=1, le=7)] = 1
    max_pdu: Annotated[int, Field(ge=64, le=65535)] = 0xFFFF
    with_list: bool = Field(default=True, description="GET-with-list when the meter's conformance allows it")
    list_max: Annotated[int, Field(ge=1, le=64)] = 10
    close_after_poll: bool | None = Field(
        default=None, description="release the association after each poll; default when interval >= 60s"
    )
    retries: Annotated[int, Field(ge=0, le=3)] = 1
    # profiles
    backfill: Duration = Field(default=7 * 86400.0, description="how far back a profile with no cursor is read")
    profile_chunk: Duration = Field(default=86400.0, description="time span of one selective-access range read")
    profile_chunks_per_poll: Annotated[int, Field(ge=1, le=1000)] = 8
    event_logs: list[str] = Field(
        default_factory=list,
        description="event logs (profile generic 0.0.99.98.n.255) read like profiles and published on `events`",
    )
    # time
    timezone: str = Field(default="UTC", description="the meter's zone, for date-times without a deviation")
    deviation: Literal["standard", "inverted"] = Field(
        default="standard", description="standard: deviation = UTC - local (minutes); inverted: local - UTC"
    )
    clock_sync: ClockSync | None = Field(
        default=None, description="keep the meter's clock: {max_drift: 5s, interval: 1d}; off by default"
    )

    model_config = ConfigDict(json_schema_extra=lambda schema, _: _legacy_clock_sync_schema(schema))

    _password: SecretStr | None = PrivateAttr(default=None)
    _keys: DlmsKeys | None = PrivateAttr(default=None)
    _with_drift: tuple[tuple[PointConfig, ...], tuple[PointConfig, ...]] | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _legacy_clock_sync(cls, data: Any) -> Any:
        """`clock_sync: true` + `clock_sync_threshold` (the old form) -> the policy it meant."""
        if not isinstance(data, Mapping):
            return data
        flag = data.get("clock_sync")
        if "clock_sync_threshold" not in data and not isinstance(flag, bool):
            return data
        out = dict(data)
        threshold = out.pop("clock_sync_threshold", LEGACY_CLOCK_SYNC_THRESHOLD)
        if flag is True:
            out["clock_sync"] = {"max_drift": threshold, "interval": LEGACY_CLOCK_SYNC_INTERVAL}
        elif flag is False:
            out["clock_sync"] = None
        elif flag is not None:
            raise ValueError("clock_sync_threshold belongs to `clock_sync: true`; with a policy give max_drift")
        return out

    @field_validator("event_logs", mode="before")
    @classmethod
    def _event_log_codes(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        codes = [normalize_obis(code) for code in v]
        for code in codes:
            if obis.event_log_number(code) is None:
                raise ValueError(f"{code!r} is not an event log (0.0.99.98.n.255)")
        if len(set(codes)) != len(codes):
            raise ValueError("an event log is listed twice")
        return codes

    @field_validator("backfill")
    @classmethod
    def _backfill_range(cls, v: float) -> float:
        if v > 400 * 86400:
            raise ValueError("backfill is at most 400d")
        return v

    @field_validator("profile_chunk")
    @classmethod
    def _chunk_range(cls, v: float) -> float:
        if not 900 <= v <= 31 * 86400:
            raise ValueError("profile_chunk is between 15min and 31d")
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as Europe/Ljubljana or UTC)") from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DlmsDevice:
        links = [x for x in (self.tcp, self.optical, self.bus) if x is not None]
        if len(links) != 1:
            raise ValueError(
                "a dlms device needs exactly one of `tcp: {host, port}`, `bus: <bus id>` or `optical: {port}`"
            )
        if self.resolved_transport == "wrapper" and self.tcp is None:
            raise ValueError("transport wrapper (IEC 62056-47) runs over `tcp` only")
        check_failover(self.tcp, self.failover)
        if self.physical_address is not None and self.serial_number is not None:
            raise ValueError("give physical_address or serial_number, not both")
        if self.bus is not None and self.physical_address is None and self.serial_number is None:
            raise ValueError("a meter on a shared bus needs its physical_address (or serial_number)")
        if self.auth == "low":
            self._password = read_secret(self.password_file, self.password_env, "password")
            if self._password is None:
                raise ValueError("auth low needs password_file or password_env")
        elif self.password_file is not None or self.password_env is not None:
            raise ValueError("password_file/password_env are for auth low")
        if self.auth == "high_gmac":
            if self.keys_file is None:
                raise ValueError("auth high_gmac needs keys_file (authentication_key, encryption_key, system_title)")
            text = read_config_file(self.keys_file, "keys_file")
            if text is not None:  # None: missing, reported by `edgegw check` as needed at run time
                self._keys = parse_keys(text)
        elif self.keys_file is not None:
            raise ValueError("keys_file is for auth high_gmac")
        if self.client_address is not None and self.client_address == 16 and self.auth != "none":
            raise ValueError("client 16 is the public client (no authentication); use client_address 1 or another SAP")
        return self

    # -- derived settings ------------------------------------------------------------------------

    @property
    def resolved_transport(self) -> Literal["hdlc", "wrapper"]:
        if self.transport is not None:
            return self.transport
        return "wrapper" if self.tcp is not None else "hdlc"

    @property
    def client_sap(self) -> int:
        if self.client_address is not None:
            return self.client_address
        return 16 if self.auth == "none" else 1

    @property
    def physical(self) -> int:
        if self.physical_address is not None:
            return self.physical_address
        if self.serial_number is not None:
            return physical_from_serial(self.serial_number)
        return 17  # 0x11: the address most meters answer on a point-to-point link

    @property
    def password(self) -> SecretStr | None:
        return self._password

    @property
    def keys(self) -> DlmsKeys | None:
        return self._keys

    @property
    def resolved_points(self) -> tuple[PointConfig, ...]:
        """The points; with `clock_sync` and no clock_drift point, one (id `clock_drift`) is added to publish the drift."""
        points = self._resolved
        if self.clock_sync is None or not points or any(p.quantity == "clock_drift" for p in points):
            return points
        cached = self._with_drift
        if cached is None or cached[0] is not points:
            taken = {p.id for p in points}
            pid = "clock_drift" if "clock_drift" not in taken else "clock_sync.drift"
            drift = DlmsPoint.model_validate(
                {
                    "id": pid,
                    "obis": CLOCK_OBIS,
                    "class": CLOCK,
                    "quantity": "clock_drift",
                    "unit": "s",
                    "description": "meter clock minus gateway clock (clock_sync)",
                }
            )
            cached = self._with_drift = (points, (*points, drift))
        return cached[1]

    @property
    def release_after_poll(self) -> bool:
        return self.close_after_poll if self.close_after_poll is not None else self.interval >= 60.0

    def implicit_bus(self) -> str | None:
        if self.tcp is not None:
            return f"dlms-{self.resolved_transport}:{self.tcp.key}"
        if self.optical is not None:
            return f"dlms-optical:{self.optical.port}"
        return None

    def protocol_address(self) -> dict[str, Any]:
        out: dict[str, Any] = {"transport": self.resolved_transport, "client": self.client_sap}
        if self.tcp is not None:
            out.update(host=self.tcp.host, port=self.tcp.port)
            if len(self.tcp) > 1:
                out["paths"] = [f"{e.host}:{e.port}" for e in self.tcp]
        elif self.optical is not None:
            out["optical"] = self.optical.port
        else:
            out["bus"] = self.bus
        out["logical"] = self.logical_address
        if self.resolved_transport == "hdlc":
            out["physical"] = self.physical
        out["auth"] = self.auth
        return out


DeviceModel = DlmsDevice
