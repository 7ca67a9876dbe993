"""MQTT over TLS: the server certificate is verified against the CA file, a client certificate works,
and a broker whose certificate the CA did not sign gets no data."""

from __future__ import annotations

import asyncio
import datetime
import getpass
import ipaddress
import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from drivers.modbus.twin import ModbusTwin
from tests.harness import Daemon, free_port, wait_port
from tests.test_e2e_modbus import device_yaml, twin_points

pytestmark = pytest.mark.slow


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(folder: Path, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name)).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def issue(folder: Path, name: str, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], server: bool) -> None:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )  # fmt: skip
    if server:
        san = x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        )
        builder = builder.add_extension(san, critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


class TlsBroker:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.plain = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> TlsBroker:
        f = self.folder
        conf = f / "mosquitto.conf"
        conf.write_text(
            # Run as root (CI), mosquitto would drop to its own user and lose the 0700 tmp folder.
            f"user {getpass.getuser()}\nper_listener_settings true\n"
            f"listener {self.port} 127.0.0.1\ncafile {f / 'ca.pem'}\ncertfile {f / 'server.pem'}\n"
            f"keyfile {f / 'server.key'}\nrequire_certificate true\nallow_anonymous true\n"
            f"listener {self.plain} 127.0.0.1\nallow_anonymous true\npersistence false\n",
            encoding="utf-8",
        )
        self.proc = await asyncio.create_subprocess_exec(
            shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await wait_port(self.plain)
        await wait_port(self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        await self.proc.wait()


@pytest.fixture
async def tls_broker(tmp_path: Path) -> AsyncIterator[TlsBroker]:
    ca = make_ca(tmp_path, "ca")
    issue(tmp_path, "server", ca, server=True)
    issue(tmp_path, "client", ca, server=False)
    make_ca(tmp_path, "other-ca")  # a CA that did not sign the broker's certificate
    async with TlsBroker(tmp_path) as broker:
        yield broker


async def first_data(port: int, timeout: float) -> bytes | None:
    """The first data message on the plain listener (the same broker), or None."""
    async with aiomqtt.Client("127.0.0.1", port, identifier="tls-watch") as client:
        await client.subscribe("edgegw/+/+/data", qos=1)
        try:
            async with asyncio.timeout(timeout):
                async for msg in client.messages:
                    return bytes(msg.payload)
        except TimeoutError:
            return None
    return None


def config(tmp: Path, broker: TlsBroker, twin_port: int, ca: str) -> Path:
    cfg = tmp / f"site-{ca}.yaml"
    cfg.write_text(
        f"site: tls\nmqtt:\n  url: mqtts://127.0.0.1:{broker.port}\n"
        f"  tls: {{ca_file: {ca}.pem, cert_file: client.pem, key_file: client.key}}\n"
        f"devices:\n{device_yaml('pdu-1', twin_port, 1)}",
        encoding="utf-8",
    )
    return cfg


async def test_tls_with_ca_and_client_certificate(tmp_path: Path, tls_broker: TlsBroker) -> None:
    async with ModbusTwin(twin_points(), units=[1], port=0) as twin:
        watch = asyncio.create_task(first_data(tls_broker.plain, 20))
        await asyncio.sleep(0.2)
        daemon = Daemon(config(tmp_path, tls_broker, twin.port, "ca"), tmp_path)
        await daemon.start()
        try:
            assert await watch is not None, daemon.output()[-2000:]
        finally:
            await daemon.stop()


async def test_a_broker_certificate_from_another_ca_is_refused(tmp_path: Path, tls_broker: TlsBroker) -> None:
    async with ModbusTwin(twin_points(), units=[1], port=0) as twin:
        watch = asyncio.create_task(first_data(tls_broker.plain, 4))
        await asyncio.sleep(0.2)
        daemon = Daemon(config(tmp_path, tls_broker, twin.port, "other-ca"), tmp_path)
        await daemon.start()
        try:
            assert await watch is None
        finally:
            await daemon.stop()
        assert "cannot reach the broker" in daemon.output()
        assert "CERTIFICATE_VERIFY_FAILED" in daemon.output() or "certificate verify failed" in daemon.output()


def test_there_is_no_switch_to_skip_verification() -> None:
    from gateway.config import TlsConfig
    from gateway.publish import tls_context

    assert "insecure" not in TlsConfig.model_fields
    ctx = tls_context(__import__("gateway.config", fromlist=["MqttConfig"]).MqttConfig(url="mqtts://127.0.0.1"))
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
