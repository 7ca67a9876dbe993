"""Config models of the BACnet/IP driver: the gateway's own BACnet port, the devices and their points.

Kept free of bacpypes3 imports: the config is loaded for every gateway, BACnet or not.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, WithJsonSchema, field_validator, model_validator

from drivers.bacnet.codec import canonical_object, canonical_property
from gateway.models import ActionConfig, DeviceConfig, Duration, PointConfig, Strict, port_number

Segmentation = Literal["segmented-both", "segmented-transmit", "segmented-receive", "no-segmentation"]

_HOST_PORT = re.compile(r"^(?P<host>\d{1,3}(?:\.\d{1,3}){3})(?::(?P<port>\d{1,5}))?$")
_LOCAL = re.compile(r"^(?P<host>\d{1,3}(?:\.\d{1,3}){3})(?:/(?P<prefix>\d{1,2}))?(?::(?P<port>\d{1,5}))?$")
_MAC_HEX = re.compile(r"^0x(?:[0-9A-Fa-f]{2})+$")

#: A BACnet command priority: 1 (manual life safety) .. 16 (lowest); 8 is "manual operator".
Priority = Annotated[int, Field(ge=1, le=16)]
DEFAULT_WRITE_PRIORITY = 8


def ipv4_port(value: str, what: str, default_port: int = 47808) -> str:
    """Validate `a.b.c.d[:port]` and return it with the port made explicit."""
    m = _HOST_PORT.match(value.strip())
    if not m:
        raise ValueError(f"{what} must be an IPv4 address with an optional port, e.g. 10.0.0.5:47808")
    ipaddress.IPv4Address(m.group("host"))
    try:
        port = port_number(m.group("port") or default_port)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    return f"{m.group('host')}:{port}"


class BbmdSettings(Strict):
    """Register the gateway as a foreign device with this BBMD (a BACnet/IP broadcast manager)."""

    address: str
    ttl: Annotated[Duration, Field(ge=5, le=65535)] = 300.0

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return ipv4_port(v, "bbmd.address")


class BacnetSection(Strict):
    """The top-level `bacnet:` section: the gateway's own BACnet/IP port, shared by every BACnet device."""

    local_address: str = Field(
        default="0.0.0.0/32:47808",
        description="address/prefix:port to bind; the prefix gives the broadcast address for Who-Is",
    )
    network: Annotated[int, Field(ge=1, le=65534)] | None = Field(
        default=None, description="the local network number, when the site assigns one"
    )
    device_instance: Annotated[int, Field(ge=0, le=4194302)] = 4194302
    device_name: Annotated[str, Field(min_length=1, max_length=64)] = "edgegw"
    vendor_identifier: Annotated[int, Field(ge=0, le=65535)] = 999
    max_apdu: Annotated[int, Field(ge=50, le=1476)] = 1476
    segmentation: Segmentation = "segmented-both"
    max_segments: Literal[2, 4, 8, 16, 32, 64] = 16
    apdu_timeout: Duration = Field(default=3.0, description="the stack's retry timer; a floor, raised to fit devices")
    apdu_retries: Annotated[int, Field(ge=0, le=5)] = 1
    bbmd: BbmdSettings | None = None

    @field_validator("local_address")
    @classmethod
    def _local(cls, v: str) -> str:
        m = _LOCAL.match(v.strip())
        if not m:
            raise ValueError("local_address is address[/prefix][:port], e.g. 10.0.0.2/24:47808")
        ipaddress.IPv4Address(m.group("host"))
        prefix = int(m.group("prefix") or 32)
        if not 0 <= prefix <= 32:
            raise ValueError("local_address: prefix length must be 0..32")
        try:
            port = port_number(m.group("port") or 47808, listen=True)
        except ValueError as exc:
            raise ValueError(f"local_address: {exc}") from None
        return f"{m.group('host')}/{prefix}:{port}"

    @field_validator("apdu_timeout")
    @classmethod
    def _apdu_timeout(cls, v: float) -> float:
        if not 0.05 <= v <= 60:
            raise ValueError("apdu_timeout must be between 50ms and 60s")
        return v


#: An object reference and a property name, in canonical form whatever abbreviation was written.
ObjectRef = Annotated[str, BeforeValidator(lambda v: canonical_object(str(v)))]
PropertyRef = Annotated[
    str, BeforeValidator(lambda v: canonical_property(str(v))), WithJsonSchema({"type": ["string", "integer"]})
]


class BacnetPoint(PointConfig):
    """A BACnet point: one property of one object of the device."""

    object: ObjectRef = Field(description='"type,instance", e.g. "analog-value,3" (AV,3 and numeric types accepted)')
    property: PropertyRef = Field(default="present-value", description='a property name, optionally "name[index]"')
    cov: bool | None = Field(default=None, description="subscribe to COV for this point; default: the device's `cov`")

    def protocol_address(self) -> dict[str, Any]:
        return {"object": self.object, "property": self.property}

    def float_digits(self) -> int | None:
        # Analog present values are BACnet REALs: single precision.
        return 9 if self.object.startswith("analog-") and self.property == "present-value" else None


class BacnetWriteStep(Strict):
    """One WriteProperty of a named action: a fixed `value` (null: relinquish) or the action argument `arg`."""

    object: ObjectRef = Field(description='"type,instance", e.g. "analog-value,3001"')
    property: PropertyRef = Field(default="present-value", description='a property name, optionally "name[index]"')
    value: int | float | bool | str | None = Field(
        default=None, description="the raw value to write, in the object's own units; null relinquishes"
    )
    arg: str | None = Field(default=None, description="write the value of this action argument instead")
    priority: Priority | None = Field(default=None, description="default: the device's `write_priority`")

    @model_validator(mode="after")
    def _value_or_arg(self) -> BacnetWriteStep:
        given = "value" in self.model_fields_set
        if given == (self.arg is not None):
            raise ValueError("a write step has a `value` (null to relinquish) or an `arg`, exactly one of them")
        return self


class BacnetAction(ActionConfig):
    """A named action: WriteProperty steps sent in order, in one bus transaction, each read back."""

    writes: list[BacnetWriteStep] = Field(min_length=1)

    @model_validator(mode="after")
    def _known_args(self) -> BacnetAction:
        for i, step in enumerate(self.writes):
            if step.arg is not None and step.arg not in self.args:
                known = ", ".join(sorted(self.args)) or "none"
                raise ValueError(f"writes[{i}].arg {step.arg!r} is not an argument of the action (args: {known})")
        return self


class BacnetDevice(DeviceConfig):
    """A BACnet device, on the local BACnet/IP network or routed behind a BACnet router."""

    point_model: ClassVar[type[PointConfig]] = BacnetPoint
    action_model: ClassVar[type[ActionConfig]] = BacnetAction

    driver: Literal["bacnet"]
    address: str = Field(description="ip[:port] of the device, or of the router in front of a routed device")
    network: Annotated[int, Field(ge=1, le=65534)] | None = Field(
        default=None, description="the routed device's network number (e.g. 50 behind a BCPME)"
    )
    mac: int | str | None = Field(
        default=None, description="the routed device's MAC on that network: 0-255, 0x hex bytes or ip:port"
    )
    device_instance: Annotated[int, Field(ge=0, le=4194302)] | None = None
    cov: bool = False
    cov_lifetime: Annotated[Duration, Field(ge=10, le=86400)] = 300.0
    cov_confirmed: bool = True
    max_apdu: Annotated[int, Field(ge=50, le=1476)] | None = Field(
        default=None, description="override the device's max-apdu-length-accepted"
    )
    rpm: Literal["auto", "on", "off"] = "auto"
    write_priority: Priority = Field(
        default=DEFAULT_WRITE_PRIORITY,
        description="priority of commands that do not name one (8: manual operator); 1-16",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return ipv4_port(v, "address")

    @field_validator("mac", mode="before")
    @classmethod
    def _mac(cls, v: Any) -> int | str | None:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise ValueError("mac is 0-255, 0x hex bytes or ip:port")
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v.strip())
        if isinstance(v, int):
            if not 0 <= v <= 255:
                raise ValueError("a numeric mac is one byte, 0-255")
            return v
        text = str(v).strip()
        if _MAC_HEX.match(text):
            return "0x" + text[2:].lower()
        return ipv4_port(text, "mac")

    @model_validator(mode="after")
    def _routed(self) -> BacnetDevice:
        if (self.network is None) != (self.mac is None):
            raise ValueError("a routed device needs both `network` and `mac`")
        return self

    def bacnet_address(self) -> str:
        """The device's address in bacpypes3 notation: `ip:port`, or `net:mac` for a routed device."""
        if self.network is None or self.mac is None:
            return self.address
        return f"{self.network}:{self.mac}"

    def protocol_address(self) -> dict[str, Any]:
        out: dict[str, Any] = {"address": self.address}
        if self.network is not None:
            out.update(network=self.network, mac=self.mac)
        if self.device_instance is not None:
            out["device_instance"] = self.device_instance
        return out


DeviceModel = BacnetDevice
SectionModel = BacnetSection
