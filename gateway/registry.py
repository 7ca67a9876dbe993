"""The explicit list of drivers: kind -> DriverSpec.

Config models are imported eagerly (they are light and the config needs them); a driver's
protocol library is imported only when a device of that kind runs, so a gateway with Modbus
devices only never loads bacpypes3, pysnmp or gurux.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.models import DeviceConfig, Strict

if TYPE_CHECKING:
    from gateway.twin import Twin


@dataclass(frozen=True, slots=True)
class DriverSpec:
    kind: str
    summary: str
    config_module: str  # exports DeviceModel, optionally SectionModel (a top-level config section)
    driver: str  # "module:Class", a gateway.driver.Driver subclass
    runtime: str | None = None  # "module:Class", a gateway.driver.DriverRuntime subclass
    twin: str | None = None  # "module:Class", a gateway.twin.Twin subclass (the device twin)
    scanner: str | None = None  # "module:function", main(argv) -> exit status
    profiles: str | None = None  # folder of the shipped profiles; None: `profiles/` beside the config module

    @property
    def profile_dir(self) -> Path:
        """Where the kind's shipped profiles live (a kind need not live under drivers/)."""
        if self.profiles is not None:
            return Path(self.profiles)
        return Path(_config_module(self.config_module).__file__).parent / "profiles"

    @property
    def device_model(self) -> type[DeviceConfig]:
        return _config_module(self.config_module).DeviceModel  # type: ignore[no-any-return]

    @property
    def twin_class(self) -> type[Twin]:
        if self.twin is None:
            raise LookupError(f"the {self.kind} driver has no twin")
        return load_object(self.twin)  # type: ignore[no-any-return]

    @property
    def section_model(self) -> type[Strict] | None:
        return getattr(_config_module(self.config_module), "SectionModel", None)


@cache
def _config_module(name: str) -> Any:
    return importlib.import_module(name)


def load_object(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


DRIVERS: dict[str, DriverSpec] = {
    spec.kind: spec
    for spec in (
        DriverSpec(
            kind="modbus",
            summary="Modbus TCP, RTU on RS-485, RTU over TCP",
            config_module="drivers.modbus.config",
            driver="drivers.modbus.driver:ModbusDriver",
            twin="drivers.modbus.twin:ModbusTwin",
            scanner="drivers.modbus.scan:main",
        ),
        DriverSpec(
            kind="dlms",
            summary="DLMS/COSEM over HDLC (RS-485, optical port, TCP) and the TCP wrapper",
            config_module="drivers.dlms.config",
            driver="drivers.dlms.driver:DlmsDriver",
            twin="drivers.dlms.twin:DlmsTwin",
        ),
        DriverSpec(
            kind="bacnet",
            summary="BACnet/IP, routed devices, ReadPropertyMultiple, COV",
            config_module="drivers.bacnet.config",
            driver="drivers.bacnet.driver:BacnetDriver",
            runtime="drivers.bacnet.runtime:BacnetRuntime",
            twin="drivers.bacnet.twin:BacnetTwin",
            scanner="drivers.bacnet.scan:main",
        ),
        DriverSpec(
            kind="snmp",
            summary="SNMP v1/v2c/v3 polling, traps and informs",
            config_module="drivers.snmp.config",
            driver="drivers.snmp.driver:SnmpDriver",
            runtime="drivers.snmp.runtime:SnmpRuntime",
            twin="drivers.snmp.twin:SnmpTwin",
            scanner="drivers.snmp.scan:main",
        ),
    )
}
