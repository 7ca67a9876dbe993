"""Device identification (FC 43 / MEI 14): the codec, our client against our twin on every framing,
the profile `identity:` key, and pymodbus on either side."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.client import (
    ExceptionReply,
    IdentificationUnsupported,
    ModbusLink,
    ReplyError,
    SerialEndpoint,
    TcpEndpoint,
    read_identification,
)
from drivers.modbus.codec import (
    OBJECT_NAMES,
    DeviceIdReply,
    device_id_length,
    device_id_request,
    parse_device_id,
)
from drivers.modbus.twin import ModbusTwin
from gateway.cli import EXIT_CONFIG, main
from gateway.profiles import IDENTITY_OBJECTS, ProfileError, load_profile, matching_profiles, shipped_profiles
from tests.modbus.util import points

IDENT = {
    "vendor_name": "ACME Meters",
    "product_code": "AM-300",
    "revision": "2.10",
    "vendor_url": "https://acme.example",
    "product_name": "AcmeMeter",
    "model_name": "AM-300/4",
    "user_application_name": "board 7",
}


def reply(code: int, conformity: int, more: int, nxt: int, objects: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(bytes((oid, len(v))) + v for oid, v in objects)
    return bytes((0x2B, 0x0E, code, conformity, more, nxt, len(objects))) + body


# --- the codec ------------------------------------------------------------------------------------


def test_request_and_reply_decode() -> None:
    assert device_id_request(1, 0) == bytes.fromhex("2b0e0100")
    with pytest.raises(ValueError):
        device_id_request(5, 0)
    pdu = reply(2, 0x82, 0xFF, 4, [(0, b"ACME"), (1, b"X1"), (2, b"1.0"), (3, b"")])
    assert device_id_length(pdu) == len(pdu)
    assert parse_device_id(pdu) == DeviceIdReply(2, 0x82, True, 4, ((0, b"ACME"), (1, b"X1"), (2, b"1.0"), (3, b"")))
    # What the stream says about its length, piece by piece (RTU has no length field).
    assert [device_id_length(pdu[:n]) for n in (3, 7, 8, 12)] == [None, None, None, None]
    assert device_id_length(pdu + b"trailing") == len(pdu)
    assert device_id_length(b"\x03\x02\x00\x01\x00\x00\x00") == 0  # not an FC 43 reply


@pytest.mark.parametrize(
    ("pdu", "why"),
    [
        (reply(1, 0x81, 0, 0, [(0, b"A")])[:-1], "malformed"),  # cut short
        (reply(1, 0x81, 0, 0, [(0, b"A")]) + b"x", "malformed"),  # trailing byte
        (reply(1, 0x81, 0x01, 0, [(0, b"A")]), "more follows"),
        (reply(1, 0x05, 0, 0, [(0, b"A")]), "conformity level"),
        (bytes((0x2B, 0x0D, 1, 0x81, 0, 0, 0)), "malformed"),  # another MEI type
        (reply(1, 0x81, 0, 0, [(0, b"A" * 250)]), "malformed"),  # beyond 253 bytes
    ],
)
def test_malformed_replies(pdu: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_device_id(pdu)


@given(st.binary(max_size=300))
def test_parser_is_total(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        parse_device_id(data)
    n = device_id_length(data)
    assert n is None or 0 <= n <= 253


def test_object_names_are_the_profile_keys() -> None:
    assert tuple(OBJECT_NAMES[i] for i in range(7)) == IDENTITY_OBJECTS


# --- our client against our twin ----------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("framing", ["tcp", "rtu", "ascii"])
async def test_regular_identity_with_continuation(framing: str) -> None:
    ident = {**IDENT, "model_name": "M" * 200}  # 0-6 do not fit one reply: "more follows"
    async with ModbusTwin(points(), units=[1, 3], framing=framing, update_interval=0, identity=ident) as twin:  # type: ignore[arg-type]
        link = ModbusLink(TcpEndpoint("127.0.0.1", twin.port, framing))  # type: ignore[arg-type]
        try:
            got = await read_identification(link, 3, 1.0)
            assert got.as_dict() == ident and got.level == "regular" and not got.missing
            assert link.requests == 2
            # A twin that splits after every object: seven replies, the same objects.
            twin.identity_split = 1
            assert (await read_identification(link, 1, 1.0)).as_dict() == ident
            assert link.requests == 2 + 7
            # Basic only: objects 0-2, in two replies.
            twin.identity_split = 2
            basic = await read_identification(link, 1, 1.0, regular=False)
            assert basic.as_dict() == {k: IDENT[k] for k in ("vendor_name", "product_code", "revision")}
        finally:
            await link.close()


@pytest.mark.asyncio
async def test_basic_conformity_device_and_a_device_without_fc43() -> None:
    async with ModbusTwin(points(), units=[1], update_interval=0) as twin:
        link = ModbusLink(TcpEndpoint("127.0.0.1", twin.port))
        try:
            with pytest.raises(IdentificationUnsupported, match="not supported: exception 1 \\(illegal function\\)"):
                await read_identification(link, 1, 1.0)
            # A basic-conformity device refuses the regular category (exception 3): read as basic.
            twin.set_identity({"vendor_name": "V", "product_code": "P", "revision": "1"})
            got = await read_identification(link, 1, 1.0)
            assert got.as_dict() == {"vendor_name": "V", "product_code": "P", "revision": "1"}
            assert got.level == "basic"
            # A gateway answering for a missing unit is not "unsupported".
            twin.set_identity(None)
            twin._handlers[0x2B] = lambda u, pdu: bytes((0xAB, 11))
            with pytest.raises(ExceptionReply) as exc:
                await read_identification(link, 1, 1.0)
            assert not isinstance(exc.value, IdentificationUnsupported) and exc.value.code == 11
        finally:
            await link.close()


class Scripted(ModbusTwin):
    """A twin whose FC 43 replies are given by the test (malformed devices)."""

    script: list[bytes]

    def _device_id(self, u: Any, pdu: bytes) -> bytes:
        return self.script.pop(0) if self.script else bytes((0xAB, 4))


@pytest.mark.asyncio
@pytest.mark.parametrize("framing", ["tcp", "rtu"])
async def test_malformed_devices_are_reply_errors(framing: str) -> None:
    async with Scripted(points(), units=[1], framing=framing, update_interval=0) as twin:  # type: ignore[arg-type]
        link = ModbusLink(TcpEndpoint("127.0.0.1", twin.port, framing))  # type: ignore[arg-type]
        try:
            # "More follows" that never progresses.
            twin.script = [reply(2, 0x82, 0xFF, 0, [(0, b"A")])]
            with pytest.raises(ReplyError, match="does not progress"):
                await read_identification(link, 1, 0.5)
            # A reply for another category (an extended answer to a regular request).
            twin.script = [reply(3, 0x83, 0, 0, [(0, b"A")])]
            with pytest.raises(ReplyError, match="code 3 to a code 2"):
                await read_identification(link, 1, 0.5)
            twin.script = [reply(2, 0x07, 0, 0, [(0, b"A")])]
            with pytest.raises(ReplyError, match="conformity level 0x07"):
                await read_identification(link, 1, 0.5)
            # The connection is still good for the next request.
            twin.script = [reply(2, 0x82, 0, 0, [(0, b"A"), (1, b"B"), (2, b"C")])]
            assert (await read_identification(link, 1, 0.5)).as_dict()["product_code"] == "B"
        finally:
            await link.close()


@pytest.mark.asyncio
@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
async def test_rtu_on_a_serial_line(line: tuple[str, str]) -> None:
    twin_side, gw_side = line
    ident = {**IDENT, "user_application_name": "U" * 120}
    async with ModbusTwin(points(), units=[2, 5], serial=twin_side, update_interval=0, identity=ident):
        link = ModbusLink(SerialEndpoint(gw_side))
        try:
            assert (await read_identification(link, 5, 1.0)).as_dict() == ident
            assert (await read_identification(link, 2, 1.0, regular=False)).get("vendor_name") == "ACME Meters"
        finally:
            await link.close()


@pytest.mark.asyncio
async def test_twin_serves_its_profiles_identity() -> None:
    for name in sorted(shipped_profiles("modbus")):
        identity = load_profile(shipped_profiles("modbus")[name]).identity
        assert identity is not None, name
        small = {"ibgw100-ibsm": {"meters": 1}, "robotina-bm-sm": {"cells": 1}}.get(name, {})
        async with ModbusTwin.create(name, vars=small, update_interval=0) as twin:
            link = ModbusLink(TcpEndpoint("127.0.0.1", twin.port))
            try:
                got = await read_identification(link, twin.units[0], 1.0)
            finally:
                await link.close()
            assert got.get("vendor_name") == identity.vendor_name
            assert [p.name for p in matching_profiles("modbus", got.get("vendor_name"), got.get("product_code"))] == [
                name
            ]


# --- the profile key ------------------------------------------------------------------------------

PROFILE = """\
profile: acme
driver: modbus
identity:
  vendor_name: ACME Meters
  product_code: AM-300
  match: ["AM-3?0", "AM 300*"]
points:
  - {id: v, address: 0, quantity: voltage, unit: V}
"""


def test_identity_matching_rule(tmp_path: Path) -> None:
    path = tmp_path / "acme.yaml"
    path.write_text(PROFILE)
    identity = load_profile(path).identity
    assert identity is not None and identity.objects() == {"vendor_name": "ACME Meters", "product_code": "AM-300"}
    assert identity.matches("acme  meters", "am-300")  # case and repeated blanks do not count
    assert identity.matches("ACME Meters", "AM-310") and identity.matches("ACME Meters", "AM 300 X")
    assert not identity.matches("ACME", "AM-300")  # the vendor must be the same
    assert not identity.matches("ACME Meters", "AM-3000") and not identity.matches("ACME Meters", None)


@pytest.mark.parametrize(
    ("change", "line", "message"),
    [
        (("  product_code: AM-300\n", "  product_code: 300\n"), 5, "identity.product_code must be text"),
        (("  match:", "  revision: 1.10\n  match:"), 6, "identity.revision must be text"),
        (("  match:", "  vendr: x\n  match:"), 6, "identity: unknown key 'vendr'"),
        (("  product_code: AM-300\n", ""), 3, "identity needs `product_code`"),
        (("  vendor_name: ACME Meters\n", '  vendor_name: "ACMÉ"\n'), 4, "printable ASCII"),
        (('["AM-3?0", "AM 300*"]', '["AM", ""]'), 6, "identity.match is empty"),
        ((PROFILE[PROFILE.index("identity:") : PROFILE.index("points:")], "identity: ACME\n"), 3, "must be a mapping"),
    ],
)
def test_bad_identity_is_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: tuple[str, str], line: int, message: str
) -> None:
    assert change[0] in PROFILE
    path = tmp_path / "acme.yaml"
    path.write_text(PROFILE.replace(*change))
    with pytest.raises(ProfileError):
        load_profile(path)
    assert main(["check", "--profile", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"{path}:{line} " in err and message in err, err


# --- pymodbus on either side ----------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("framer", ["socket", "rtu"])
async def test_our_client_against_a_pymodbus_server(framer: str) -> None:
    from pymodbus import FramerType
    from pymodbus.pdu.device import ModbusDeviceIdentification
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    ident = {**IDENT, "model_name": "M" * 150, "user_application_name": "U" * 90}  # more than one reply
    names = dict(
        VendorName=ident["vendor_name"],
        ProductCode=ident["product_code"],
        MajorMinorRevision=ident["revision"],
        VendorUrl=ident["vendor_url"],
        ProductName=ident["product_name"],
        ModelName=ident["model_name"],
        UserApplicationName=ident["user_application_name"],
    )
    sim = SimDevice(id=7, simdata=[SimData(0, values=[1, 2], datatype=DataType.REGISTERS)])
    server = ModbusTcpServer(
        sim,
        address=("127.0.0.1", 0),
        framer=FramerType(framer),
        identity=ModbusDeviceIdentification(info_name=names),  # type: ignore[no-untyped-call]
    )
    await server.serve_forever(background=True)
    try:
        port = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        link = ModbusLink(TcpEndpoint("127.0.0.1", port, "tcp" if framer == "socket" else "rtu"))
        try:
            got = await read_identification(link, 7, 1.0)
            assert got.as_dict() == ident
            assert link.requests >= 2  # the stream was continued
            basic = await read_identification(link, 7, 1.0, regular=False)
            assert basic.as_dict() == {k: ident[k] for k in ("vendor_name", "product_code", "revision")}
        finally:
            await link.close()
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


@pytest.mark.asyncio
@pytest.mark.parametrize("framing", ["tcp", "rtu"])
async def test_pymodbus_client_reads_the_twins_identity(framing: str) -> None:
    from pymodbus import FramerType
    from pymodbus.client import AsyncModbusTcpClient
    from pymodbus.pdu.mei_message import ReadDeviceInformationResponse

    async with ModbusTwin.create("legrand-emdx3", units=[3], framing=framing, update_interval=0) as twin:
        framer = FramerType.SOCKET if framing == "tcp" else FramerType.RTU
        client = AsyncModbusTcpClient("127.0.0.1", port=twin.port, framer=framer, timeout=1, retries=0)
        await client.connect()
        try:
            rr = await client.read_device_information(read_code=2, object_id=0, device_id=3)
            assert isinstance(rr, ReadDeviceInformationResponse)
            assert rr.information == {0: b"Legrand", 1: b"412045", 2: b"twin", 4: b"EMDX3"}
            assert rr.conformity == 0x82 and rr.more_follows == 0
            one = await client.read_device_information(read_code=4, object_id=1, device_id=3)
            assert isinstance(one, ReadDeviceInformationResponse) and one.information == {1: b"412045"}
            missing = await client.read_device_information(read_code=4, object_id=5, device_id=3)
            assert missing.isError() and missing.exception_code == 2
        finally:
            client.close()
