"""Config models of the SNMP driver: the agent and its credentials, points by OID, the trap listener.

Secrets (communities, USM keys) come from files or environment variables through
`gateway.models.read_secret`; they are resolved when the config is validated, kept as SecretStr and
never appear in a log, an error text or the meta topic.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from drivers.snmp import codec
from gateway.models import (
    ActionConfig,
    DeviceConfig,
    OrAlias,
    PointConfig,
    Port,
    Strict,
    any_case,
    config_path,
    port_number,
    read_secret,
)
from gateway.points import Kind
from gateway.profiles import substitute

Version = Literal["1", "2c", "3"]
AuthProtocol = Literal["MD5", "SHA", "SHA-224", "SHA-256", "SHA-384", "SHA-512"]
# AES-192/AES-256 use the Blumenthal key extension (net-snmp's names); the C variants use the
# Reeder ("Cisco") extension. AES and AES-128 are the same protocol (RFC 3826).
PrivProtocol = Literal["DES", "3DES", "AES-128", "AES-192", "AES-256", "AES-192C", "AES-256C"]
SnmpType = Literal["integer", "gauge32", "counter32", "counter64", "timeticks", "octets", "ipaddress", "oid", "opaque"]
Format = Literal["auto", "text", "hex", "number", "seconds"]

_NUMERIC_OID = re.compile(r"^\.?[0-2](\.\d+)+$")
_SYMBOLIC_OID = re.compile(r"^[A-Za-z][A-Za-z0-9-]*::[A-Za-z][A-Za-z0-9_-]*(\.\d+)*$")

AUTH_ALIASES = {
    "SHA1": "SHA",
    "SHA-1": "SHA",
    "SHA224": "SHA-224",
    "SHA256": "SHA-256",
    "SHA384": "SHA-384",
    "SHA512": "SHA-512",
}
PRIV_ALIASES = {
    "AES": "AES-128",
    "AES128": "AES-128",
    "AES192": "AES-192",
    "AES256": "AES-256",
    "AES192C": "AES-192C",
    "AES256C": "AES-256C",
    "TRIPLEDES": "3DES",
    "3DES-EDE": "3DES",
}
TYPE_ALIASES = {
    "int": "integer",
    "integer32": "integer",
    "int32": "integer",
    "gauge": "gauge32",
    "unsigned32": "gauge32",
    "uint32": "gauge32",
    "counter": "counter32",
    "string": "octets",
    "octetstring": "octets",
    "octet-string": "octets",
    "octet_string": "octets",
    "ip": "ipaddress",
    "objectidentifier": "oid",
    "object-identifier": "oid",
}
COUNTER_TYPES = frozenset({"counter32", "counter64"})
# What a SET can send: the types whose value the point's raw value determines. Counters are the
# agent's to count, and an Opaque has no single encoding.
WRITABLE_TYPES = ("integer", "gauge32", "timeticks", "octets", "ipaddress", "oid")
_WRITABLE_TEXT = "integer, gauge32 (= unsigned32), timeticks, octets, ipaddress or oid"


def normalize_oid(value: Any) -> str:
    """A numeric OID without its leading dot, or `MODULE::symbol[.index]` as given."""
    if not isinstance(value, str):
        raise ValueError("an OID is a string: 1.3.6.1.2.1.1.3.0 or MODULE-MIB::symbol.index")
    text = value.strip()
    if _NUMERIC_OID.match(text):
        arcs = text.lstrip(".").split(".")
        if len(arcs) > 128 or any(int(a) > 0xFFFFFFFF for a in arcs):
            raise ValueError(f"not an OID: {value!r} (at most 128 arcs of at most 4294967295)")
        return text.lstrip(".")
    if _SYMBOLIC_OID.match(text):
        return text
    raise ValueError(f"not an OID: {value!r} (use 1.3.6.1.2.1.1.3.0 or MODULE-MIB::symbol.index)")


def type_alias(value: Any) -> Any:
    """`Counter32`, `uint32`, `OctetString` ... as the type names the config uses."""
    if isinstance(value, str):
        key = value.strip().lower()
        return TYPE_ALIASES.get(key, key)
    return value


#: An OID field (numeric, normalised) and an SNMP type field (aliases accepted), for every model.
OidText = Annotated[str, BeforeValidator(normalize_oid)]
SnmpTypeName = Annotated[SnmpType, BeforeValidator(type_alias), OrAlias(any_case([*get_args(SnmpType), *TYPE_ALIASES]))]


def is_symbolic(oid: str) -> bool:
    return "::" in oid


def norm_protocol(value: Any, aliases: dict[str, str]) -> Any:
    if isinstance(value, str):
        key = value.strip().upper().replace("_", "-")
        return aliases.get(key, aliases.get(key.replace("-", ""), key))
    return value


def _norm_version(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str):
        v = value.strip().lower().removeprefix("v")
        return "2c" if v == "2" else v
    return value


class SnmpPoint(PointConfig):
    """A point read by OID: a scalar instance (`...sysUpTime.0`) or one table cell (`column.index`)."""

    oid: OidText
    type: SnmpTypeName | None = Field(default=None, description="the SNMP type the agent must answer with")
    format: Format = "auto"

    @model_validator(mode="before")
    @classmethod
    def _counter_kind(cls, data: Any) -> Any:
        # Counters are published as counters unless the point asks for their rate, so that the
        # meta topic tells consumers to compute rates modulo the counter's width.
        if isinstance(data, dict):
            kind_type = TYPE_ALIASES.get(str(data.get("type", "")).lower(), str(data.get("type", "")).lower())
            if kind_type in COUNTER_TYPES and "kind" not in data and not data.get("rate"):
                data = {**data, "kind": Kind.COUNTER.value}
        return data

    def counter_width(self) -> int | None:
        if self.type in COUNTER_TYPES:
            return 64 if self.type == "counter64" else 32
        return self.counter_bits if self.type is None else None

    @model_validator(mode="after")
    def _consistent(self) -> SnmpPoint:
        if self.format == "seconds" and self.type not in (None, "timeticks"):
            raise ValueError("`format: seconds` is for timeticks points")
        if self.format in ("text", "hex", "number") and self.type not in (None, "octets", "opaque"):
            raise ValueError(f"`format: {self.format}` is for octets (OctetString) points")
        if self.writable:
            _check_writable_type(self.type)
        return self

    def protocol_address(self) -> dict[str, Any]:
        out: dict[str, Any] = {"oid": self.oid}
        if self.type is not None:
            out["type"] = self.type
        return out


class SnmpTable(Strict):
    """A table column walked by `discover()`: one point per row, named from the row index.

    Every key other than `table`, `column` and `entry` is the point template; its strings may use
    `{index}` (the row index: an int, or dotted text for multi-part indexes) and `{idx[0]}`...
    """

    # The JSON Schema (gateway/schema.py) takes the flat form too: the template's keys beside `table`.
    model_config = ConfigDict(json_schema_extra={"required": ["table", "column"], "additionalProperties": True})

    table: str
    column: Annotated[int, Field(ge=0)]
    entry: Annotated[int, Field(ge=0)] = 1
    point: dict[str, Any]

    @model_validator(mode="before")
    @classmethod
    def _split(cls, data: Any) -> Any:
        if isinstance(data, dict) and "point" not in data:
            own = {k: v for k, v in data.items() if k in ("table", "column", "entry")}
            own["point"] = {k: v for k, v in data.items() if k not in ("table", "column", "entry")}
            return own
        return data

    @field_validator("table", mode="before")
    @classmethod
    def _oid(cls, v: Any) -> str:
        return normalize_oid(v)

    @model_validator(mode="after")
    def _template(self) -> SnmpTable:
        if "oid" in self.point:
            raise ValueError("a table point takes its OID from `table`, `column` and the row index")
        if "id" not in self.point:
            raise ValueError('a table needs an `id` template such as "panel1.ch{index}.current"')
        # Validate the template once with a sample row so that mistakes show at config time.
        try:
            sample = substitute(dict(self.point), {"index": 1, "idx": [1]})
        except ValueError as exc:
            raise ValueError(f"table point template: {exc}") from None
        SnmpPoint.model_validate({**sample, "oid": "1.3.6.1.1"})
        return self


def _check_writable_type(type_name: str | None) -> None:
    if type_name is None:
        raise ValueError(f"a writable point needs `type` (a SET carries the ASN.1 type): {_WRITABLE_TEXT}")
    if type_name in COUNTER_TYPES:
        raise ValueError(f"a {type_name} is counted by the agent: it is never writable")
    if type_name not in WRITABLE_TYPES:
        raise ValueError(f"`type: {type_name}` cannot be written; SET types: {_WRITABLE_TEXT}")


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("true/false has no SNMP form (a TruthValue is an integer: 1 true, 2 false)")
    return value


# Which action argument types can feed which SNMP types.
_ARG_TYPES = {
    "integer": ("integer", "gauge32", "timeticks", "octets"),
    "number": ("integer", "gauge32", "timeticks", "octets"),
    "string": ("octets", "ipaddress", "oid"),
}


class SnmpSet(Strict):
    """One varbind of an action's SET: the OID, its type, and a fixed `value` or the argument `arg`."""

    oid: OidText
    type: SnmpTypeName
    value: int | float | str | None = Field(default=None, description="the raw value to send")
    arg: str | None = Field(default=None, description="the action argument whose value is sent")
    format: Format = Field(default="auto", description="octets: text (auto), hex or number; timeticks: seconds")

    @field_validator("value", mode="before")
    @classmethod
    def _value(cls, v: Any) -> Any:
        return _no_bool(v)

    @model_validator(mode="after")
    def _consistent(self) -> SnmpSet:
        _check_writable_type(self.type)
        if (self.value is None) == (self.arg is None):
            raise ValueError("a SET gives either `value` (fixed) or `arg` (an argument of the action)")
        if self.format == "seconds" and self.type != "timeticks":
            raise ValueError("`format: seconds` is for timeticks")
        if self.format in ("text", "hex", "number") and self.type != "octets":
            raise ValueError(f"`format: {self.format}` is for octets")
        if self.value is not None:
            codec.encode(self.value, self.type, self.format)  # a value that cannot be sent fails here, not later
        return self


class SnmpAction(ActionConfig):
    """A named action: its SETs go to the agent in ONE SET request, which SNMP applies all or nothing.

    ``sets: [{oid, type, value | arg}]``; an ``arg`` names one of the action's ``args``.
    """

    sets: Annotated[list[SnmpSet], Field(min_length=1, max_length=64)]

    @model_validator(mode="after")
    def _args_used(self) -> SnmpAction:
        for i, item in enumerate(self.sets):
            if item.arg is None:
                continue
            arg = self.args.get(item.arg)
            if arg is None:
                known = ", ".join(sorted(self.args)) or "none"
                raise ValueError(f"sets[{i}]: no argument {item.arg!r} in `args` (args: {known})")
            if not arg.required and arg.default is None:
                raise ValueError(f"sets[{i}]: argument {item.arg!r} is sent: make it required or give a default")
            fits = _ARG_TYPES.get(arg.type, ())
            if item.type not in fits:
                raise ValueError(f"sets[{i}]: a {arg.type} argument cannot be sent as {item.type}")
        return self


def _secret_text(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


class UsmKeys(Strict):
    """USM protocols and keys, shared by polled v3 devices and v3 trap users."""

    auth_protocol: (
        Annotated[AuthProtocol, OrAlias(any_case([*get_args(AuthProtocol), *AUTH_ALIASES], dash=True))] | None
    ) = None
    auth_key_file: Path | None = None
    auth_key_env: str | None = None
    priv_protocol: (
        Annotated[PrivProtocol, OrAlias(any_case([*get_args(PrivProtocol), *PRIV_ALIASES], dash=True))] | None
    ) = None
    priv_key_file: Path | None = None
    priv_key_env: str | None = None

    _auth_key: SecretStr | None = PrivateAttr(default=None)
    _priv_key: SecretStr | None = PrivateAttr(default=None)

    @field_validator("auth_protocol", mode="before")
    @classmethod
    def _auth(cls, v: Any) -> Any:
        return norm_protocol(v, AUTH_ALIASES)

    @field_validator("priv_protocol", mode="before")
    @classmethod
    def _priv(cls, v: Any) -> Any:
        return norm_protocol(v, PRIV_ALIASES)

    def _load_keys(self) -> None:
        auth, priv = _usm_keys(self, "auth_key", "priv_key")
        object.__setattr__(self, "_auth_key", auth)
        object.__setattr__(self, "_priv_key", priv)

    @property
    def auth_key(self) -> str | None:
        return _secret_text(self._auth_key)

    @property
    def priv_key(self) -> str | None:
        return _secret_text(self._priv_key)


class SnmpDevice(DeviceConfig, UsmKeys):
    """An SNMP agent polled with GET / GETBULK (v1, v2c, v3 USM)."""

    point_model: ClassVar[type[PointConfig]] = SnmpPoint
    action_model: ClassVar[type[ActionConfig]] = SnmpAction

    driver: Literal["snmp"]
    host: Annotated[str, Field(min_length=1, max_length=253)]
    port: Port = 161
    version: Annotated[Version, OrAlias(r"^\s*[vV]?(1|2[cC]?|3)\s*$", (1, 2, 3))] = "2c"
    community_file: Path | None = None
    community_env: str | None = None
    user: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    context: str = Field(default="", description="SNMPv3 context name")
    max_varbinds: Annotated[int, Field(ge=1, le=200)] = Field(
        default=20, description="OIDs per GET request; halved for the device when the agent answers tooBig"
    )
    max_repetitions: Annotated[int, Field(ge=1, le=200)] = 25
    bulk: bool = Field(default=True, description="read runs of table rows with GETBULK (v2c/v3)")
    retries: Annotated[int, Field(ge=0, le=5)] = 1
    mib_dirs: list[Path] = Field(default_factory=list, description="folders of MIB files for MODULE::symbol OIDs")
    tables: list[SnmpTable] = Field(default_factory=list, description="table columns discover() expands to points")
    discover_oids: list[str] = Field(
        default_factory=lambda: ["1.3.6.1.2.1.1"], description="subtrees discover() walks when no tables are given"
    )
    # SET over v1/v2c puts the write community on the wire in clear: off unless asked for here.
    allow_set_v1_v2c: bool = Field(
        default=False, description="v1/v2c: send SETs (writable points, actions) with the write community"
    )
    write_community_file: Path | None = None
    write_community_env: str | None = None

    _community: SecretStr | None = PrivateAttr(default=None)
    _write_community: SecretStr | None = PrivateAttr(default=None)
    _read_only: tuple[tuple[PointConfig, ...], tuple[PointConfig, ...]] | None = PrivateAttr(default=None)

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> Any:
        return _norm_version(v)

    @field_validator("discover_oids", mode="before")
    @classmethod
    def _roots(cls, v: Any) -> Any:
        return [normalize_oid(x) for x in v] if isinstance(v, list) else v

    @field_validator("mib_dirs")
    @classmethod
    def _dirs(cls, v: list[Path]) -> list[Path]:
        return [config_path(p) for p in v]

    @model_validator(mode="after")
    def _credentials(self) -> SnmpDevice:
        if self.version == "3":
            if self.community_file is not None or self.community_env is not None:
                raise ValueError("SNMPv3 uses `user` and keys, not a community")
            if self.user is None:
                raise ValueError("SNMPv3 needs `user`")
            self._load_keys()
        else:
            for name in ("user", "auth_key_file", "auth_key_env", "priv_key_file", "priv_key_env"):
                if getattr(self, name) is not None:
                    raise ValueError(f"`{name}` is for SNMPv3 (version: 3)")
            community = read_secret(self.community_file, self.community_env, "community")
            if community is None:
                raise ValueError(f"SNMPv{self.version} needs community_file or community_env")
            if not community.get_secret_value():
                raise ValueError("the community is empty")
            object.__setattr__(self, "_community", community)
        return self

    @model_validator(mode="after")
    def _set_permission(self) -> SnmpDevice:
        given = self.write_community_file is not None or self.write_community_env is not None
        if self.version == "3":
            if given or self.allow_set_v1_v2c:
                raise ValueError(
                    "SNMPv3 SETs use the device's `user`: write_community_* and allow_set_v1_v2c are for v1/v2c"
                )
            return self
        if not self.allow_set_v1_v2c:
            if given:
                raise ValueError(
                    "write_community_file/write_community_env is set but SET over SNMPv1/v2c is off: "
                    "the community travels in clear; set `allow_set_v1_v2c: true` to send it (SNMPv3 is safer)"
                )
            asked = _writable_ids(self.points)
            if asked or self.actions:
                what = f"writable points ({', '.join(asked)})" if asked else f"actions ({', '.join(self.actions)})"
                raise ValueError(
                    f"{what} need SET, and SET over SNMPv{self.version} sends the community in clear: "
                    "set `allow_set_v1_v2c: true` with write_community_file or write_community_env, or use SNMPv3"
                )
            return self
        secret = read_secret(self.write_community_file, self.write_community_env, "write_community")
        if secret is None:
            raise ValueError("allow_set_v1_v2c needs write_community_file or write_community_env (the SET community)")
        if not secret.get_secret_value():
            raise ValueError("the write community is empty")
        object.__setattr__(self, "_write_community", secret)
        return self

    @property
    def community(self) -> str | None:
        return _secret_text(self._community)

    @property
    def write_community(self) -> str | None:
        """The v1/v2c community SETs are sent with (None unless allow_set_v1_v2c)."""
        return _secret_text(self._write_community)

    @property
    def set_allowed(self) -> bool:
        """Whether this device may be sent a SET: always on v3, on v1/v2c only when its config says so."""
        return self.version == "3" or self.allow_set_v1_v2c

    @property
    def resolved_points(self) -> tuple[PointConfig, ...]:
        """The resolved points; on a v1/v2c device without allow_set_v1_v2c, a profile's writable ones read-only.

        A profile says what the device can take; whether SETs go out in clear is the device's
        decision (its own writable points without it are a config error, see `_set_permission`).
        """
        points = self._resolved
        if self.set_allowed or not any(p.writable for p in points):
            return points
        cached = self._read_only
        if cached is None or cached[0] is not points:
            demoted = tuple(p.model_copy(update={"writable": False}) if p.writable else p for p in points)
            cached = (points, demoted)
            self._read_only = cached
        return cached[1]

    @property
    def resolved_actions(self) -> dict[str, ActionConfig]:
        """The resolved actions; none on a v1/v2c device without allow_set_v1_v2c (see resolved_points)."""
        return self._resolved_actions if self.set_allowed else {}

    @property
    def security_level(self) -> str:
        if self.version != "3":
            return "community"
        if self._priv_key is not None:
            return "authPriv"
        return "authNoPriv" if self._auth_key is not None else "noAuthNoPriv"

    def protocol_address(self) -> dict[str, Any]:
        out: dict[str, Any] = {"host": self.host, "port": self.port, "version": self.version}
        if self.version == "3":
            out["user"] = self.user
            out["security"] = self.security_level
            if self.context:
                out["context"] = self.context
        return out


def _writable_ids(items: Any) -> list[str]:
    """Ids of the points a device's own `points` list makes writable (repeat blocks included)."""
    out: list[str] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        if "repeat" in item:
            out += _writable_ids(item.get("points"))
        elif item.get("writable") not in (None, False, "false", "False"):
            out.append(str(item.get("id", "?")))
    return out


def _usm_keys(model: Any, auth: str, priv: str) -> tuple[SecretStr | None, SecretStr | None]:
    """Read and check the USM keys of a user (a device or a trap user)."""
    auth_key = read_secret(getattr(model, f"{auth}_file"), getattr(model, f"{auth}_env"), auth)
    priv_key = read_secret(getattr(model, f"{priv}_file"), getattr(model, f"{priv}_env"), priv)
    if priv_key is not None and auth_key is None:
        raise ValueError("privacy needs authentication too: give an auth key")
    for name, key, protocol, field in (
        ("auth", auth_key, model.auth_protocol, "auth_protocol"),
        ("priv", priv_key, model.priv_protocol, "priv_protocol"),
    ):
        if key is not None:
            # RFC 3414 passphrases are at least 8 characters; agents reject shorter ones.
            if len(key.get_secret_value()) < 8:
                raise ValueError(f"the {name} key must be at least 8 characters")
            if protocol is None:
                choices = "SHA-256, SHA-512, SHA, ..." if name == "auth" else "AES-128, AES-256, DES, ..."
                raise ValueError(f"an {name} key needs `{field}` ({choices})")
        elif protocol is not None:
            raise ValueError(f"`{field}` is set but no {name} key is given ({name}_key_file / {name}_key_env)")
    return auth_key, priv_key


class TrapUser(UsmKeys):
    """An SNMPv3 user whose notifications the listener accepts.

    Informs need nothing more. A v3 trap is authenticated with the sender's own engine ID, which
    the receiver must know in advance (RFC 3414): list the senders' snmpEngineIDs in `engine_ids`.
    """

    user: Annotated[str, Field(min_length=1, max_length=32)]
    engine_ids: Annotated[list[str], WithJsonSchema({"type": "array", "items": {"type": ["string", "integer"]}})] = (
        Field(default_factory=list, description="hex snmpEngineIDs of v3 trap senders")
    )

    @field_validator("engine_ids", mode="before")
    @classmethod
    def _hex(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        out = []
        for item in v:
            text = str(item).strip().lower().removeprefix("0x").replace(":", "")
            if not re.fullmatch(r"[0-9a-f]{10,64}", text) or len(text) % 2:
                raise ValueError(f"not an engine ID: {item!r} (5 to 32 bytes in hex)")
            out.append(text)
        return out

    @model_validator(mode="after")
    def _keys(self) -> TrapUser:
        self._load_keys()
        return self


class TrapSettings(Strict):
    """The notification receiver: off unless this section is given."""

    listen: str = Field(description="host:port to receive on, e.g. 0.0.0.0:162 or 127.0.0.1:10162")
    communities_file: Path | None = Field(default=None, description="v1/v2c communities, one per line")
    communities_env: str | None = Field(default=None, description="v1/v2c communities, comma separated")
    users: list[TrapUser] = Field(default_factory=list)

    _communities: tuple[SecretStr, ...] = PrivateAttr(default=())

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        split_listen(v)
        return v

    @model_validator(mode="after")
    def _accepts_something(self) -> TrapSettings:
        communities: list[SecretStr] = []
        secret = read_secret(self.communities_file, self.communities_env, "communities")
        if secret is not None:
            text = secret.get_secret_value()
            parts = text.split(",") if self.communities_env is not None else text.splitlines()
            for part in parts:
                item = part.strip()
                if item and not item.startswith("#"):
                    communities.append(SecretStr(item))
        if not communities and not self.users:
            raise ValueError("the trap listener accepts nothing: give communities_file/communities_env or users")
        object.__setattr__(self, "_communities", tuple(communities))
        return self

    @property
    def communities(self) -> list[str]:
        return [c.get_secret_value() for c in self._communities]


def split_listen(value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port)."""
    host, sep, port = value.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"use host:port, e.g. 127.0.0.1:10162 (got {value!r})")
    return host, port_number(port, listen=True)


class SnmpSection(Strict):
    """The top-level `snmp:` section: the trap listener and MIB folders shared by all devices."""

    traps: TrapSettings | None = Field(default=None, description="the trap/inform listener; off when unset")
    mib_dirs: list[Path] = Field(default_factory=list, description="MIB folders searched for every device")
    mib_modules: list[str] = Field(
        default_factory=list, description="MIB modules loaded at start, to name trap varbinds and scans"
    )
    mib_cache: Path | None = Field(
        default=None, description="where compiled MIBs are kept between starts; a temporary folder when unset"
    )

    @field_validator("mib_dirs")
    @classmethod
    def _dirs(cls, v: list[Path]) -> list[Path]:
        return [config_path(p) for p in v]

    @field_validator("mib_cache")
    @classmethod
    def _cache(cls, v: Path | None) -> Path | None:
        return config_path(v) if v is not None else None


DeviceModel = SnmpDevice
SectionModel = SnmpSection
