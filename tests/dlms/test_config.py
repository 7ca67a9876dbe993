"""The dlms device model: links, addressing, secrets, derived settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from drivers.dlms.config import DlmsDevice
from gateway.config import ConfigError, parse_device
from tests.dlms.util import KEYS_TEXT


def dev(**kw: Any) -> DlmsDevice:
    return DlmsDevice.model_validate({"id": "m", "driver": "dlms", **kw})


def test_links_and_defaults() -> None:
    d = dev(tcp={"host": "10.0.0.5"})
    assert d.resolved_transport == "wrapper" and d.tcp is not None and d.tcp.port == 4059
    assert d.implicit_bus() == "dlms-wrapper:10.0.0.5:4059"
    assert d.client_sap == 16 and d.physical == 17
    assert d.protocol_address() == {
        "transport": "wrapper",
        "client": 16,
        "host": "10.0.0.5",
        "port": 4059,
        "logical": 1,
        "auth": "none",
    }
    h = dev(tcp={"host": "10.0.0.5", "port": 4001}, transport="hdlc", serial_number=12345678)
    assert h.implicit_bus() == "dlms-hdlc:10.0.0.5:4001" and h.physical == 6678
    assert h.protocol_address()["physical"] == 6678
    b = dev(bus="rs485-1", physical_address=21)
    assert b.resolved_transport == "hdlc" and b.implicit_bus() is None
    o = dev(optical={"port": "/dev/ttyUSB2"})
    assert o.implicit_bus() == "dlms-optical:/dev/ttyUSB2" and o.optical is not None and o.optical.mode_e
    assert dev(tcp={"host": "h"}, interval="15min").release_after_poll
    assert not dev(tcp={"host": "h"}, interval="15min", close_after_poll=False).release_after_poll
    assert not dev(tcp={"host": "h"}, interval="10s").release_after_poll


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({}, "exactly one of"),
        ({"tcp": {"host": "h"}, "bus": "b"}, "exactly one of"),
        ({"bus": "b"}, "physical_address"),
        ({"bus": "b", "transport": "wrapper", "physical_address": 3}, "wrapper"),
        ({"tcp": {"host": "h"}, "physical_address": 3, "serial_number": 5}, "not both"),
        ({"tcp": {"host": "h"}, "auth": "low"}, "password"),
        ({"tcp": {"host": "h"}, "auth": "high_gmac"}, "keys_file"),
        ({"tcp": {"host": "h"}, "auth": "low", "password_env": "HOME", "client_address": 16}, "public client"),
        ({"tcp": {"host": "h"}, "password_env": "HOME"}, "auth low"),
        ({"tcp": {"host": "h"}, "timezone": "Mars/Olympus"}, "time zone"),
        ({"tcp": {"host": "h"}, "profile_chunk": "1min"}, "profile_chunk"),
        ({"tcp": {"host": "h"}, "backfill": "500d"}, "400d"),
    ],
)
def test_invalid_devices(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        dev(**kw)


def test_secrets_are_read_relative_to_the_config_and_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "meter.keys").write_text(KEYS_TEXT)
    (tmp_path / "pw").write_text("12345678\n")
    raw = {"id": "m", "driver": "dlms", "tcp": {"host": "h"}, "auth": "high_gmac", "keys_file": "meter.keys"}
    d = parse_device(raw, tmp_path)
    assert isinstance(d, DlmsDevice) and d.keys is not None and d.keys.system_title == b"EDG00001"
    assert d.client_sap == 1
    d = parse_device({**raw, "auth": "low", "keys_file": None, "password_file": "pw"}, tmp_path)
    assert isinstance(d, DlmsDevice) and d.password is not None
    assert d.password.get_secret_value() == "12345678" and "12345678" not in repr(d)
    with pytest.raises(ConfigError, match="cannot read keys_file"):
        parse_device({**raw, "keys_file": "nope.keys"}, tmp_path)
