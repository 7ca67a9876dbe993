"""Config models of the DLMS/COSEM driver: the meter's link, addressing, security and points."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

from gateway.models import DeviceConfig, Duration, PointConfig, Port, Strict, read_config_file, read_secret

# Interface classes the driver reads; anything else is refused at config time rather than at
# the first poll.
DATA, REGISTER, EXTENDED_REGISTER, DEMAND_REGISTER, PROFILE_GENERIC, CLOCK = 1, 3, 4, 5, 7, 8
READABLE_CLASSES = frozenset({DATA, REGISTER, EXTENDED_REGISTER, DEMAND_REGISTER, PROFILE_GENERIC, CLOCK})

CLOCK_OBIS = "0.0.1.0.0.255"

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

    @field_validator("obis", "column", mode="before")
    @classmethod
    def _obis(cls, v: Any) -> Any:
        return None if v is None else normalize_obis(v)

    @model_validator(mode="after")
    def _consistent(self) -> DlmsPoint:
        if self.class_id not in READABLE_CLASSES:
            raise ValueError(
                f"class {self.class_id} is not read by the dlms driver (use 1 Data, 3 Register, 4 Extended "
                "register, 5 Demand register, 7 Profile generic or 8 Clock)"
            )
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


class DlmsTcp(Strict):
    host: str
    port: Port = 4059


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


def physical_from_serial(serial_number: int) -> int:
    """The DLMS default formula (as coded in Gurux): SN mod 10000 + 1000."""
    return serial_number % 10000 + 1000


class DlmsDevice(DeviceConfig):
    """A DLMS/COSEM meter on HDLC (RS-485 bus, optical probe, TCP) or the TCP wrapper."""

    point_model: ClassVar[type[PointConfig]] = DlmsPoint

    driver: Literal["dlms"]
    transport: Literal["hdlc", "wrapper"] | None = Field(
        default=None, description="default: wrapper over `tcp`, hdlc over `bus` or `optical`"
    )
    tcp: DlmsTcp | None = None
    optical: OpticalSettings | None = None
    # addressing (IEC 62056-46 / -47)
    client_address: Annotated[int, Field(ge=1, le=127)] | None = Field(
        default=None, description="client SAP; default 16 (public) without authentication, 1 (management) with"
    )
    logical_address: Annotated[int, Field(ge=0, le=0x3FFF)] = 1
    physical_address: Annotated[int, Field(ge=0, le=0x3FFF)] | None = None
    serial_number: Annotated[int, Field(ge=0)] | None = None
    address_size: Literal[1, 2, 4] | None = Field(default=None, description="HDLC server address bytes; default auto")
    # security
    auth: Auth = "none"
    password_file: Path | None = None
    password_env: str | None = None
    keys_file: Path | None = None
    security: Security = "authenticated_encrypted"
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
    # time
    timezone: str = Field(default="UTC", description="the meter's zone, for date-times without a deviation")
    deviation: Literal["standard", "inverted"] = Field(
        default="standard", description="standard: deviation = UTC - local (minutes); inverted: local - UTC"
    )
    clock_sync: bool = False
    clock_sync_threshold: Duration = 10.0

    _password: SecretStr | None = PrivateAttr(default=None)
    _keys: DlmsKeys | None = PrivateAttr(default=None)

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
    def release_after_poll(self) -> bool:
        return self.close_after_poll if self.close_after_poll is not None else self.interval >= 60.0

    def implicit_bus(self) -> str | None:
        if self.tcp is not None:
            return f"dlms-{self.resolved_transport}:{self.tcp.host}:{self.tcp.port}"
        if self.optical is not None:
            return f"dlms-optical:{self.optical.port}"
        return None

    def protocol_address(self) -> dict[str, Any]:
        out: dict[str, Any] = {"transport": self.resolved_transport, "client": self.client_sap}
        if self.tcp is not None:
            out.update(host=self.tcp.host, port=self.tcp.port)
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
