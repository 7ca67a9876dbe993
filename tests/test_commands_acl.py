"""The mosquitto ACL that docs/commands.md shows does what it says: one user may command devices."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
from pathlib import Path

import aiomqtt
import pytest

from tests.harness import Mosquitto

DOC = Path(__file__).resolve().parent.parent / "docs" / "commands.md"
USERS = {"edgegw": "gw-secret", "scada-operator": "op-secret", "dashboard": "view-secret"}


def make_passwd(passwd: Path) -> None:
    passwd.touch()
    for user, secret in USERS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, secret], check=True, capture_output=True)


def doc_acl() -> str:
    blocks = re.findall(r"```\n(# /etc/mosquitto/edgegw\.acl\n.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1, "docs/commands.md shows one ACL file"
    return str(blocks[0])


async def test_only_the_operator_account_reaches_the_command_topics(tmp_path: Path) -> None:
    passwd, acl = tmp_path / "passwd", tmp_path / "edgegw.acl"
    make_passwd(passwd)
    acl.write_text(doc_acl(), encoding="utf-8")
    extra = f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n"
    async with Mosquitto(tmp_path, extra=extra) as broker:
        got: list[str] = []
        ready = asyncio.Event()

        async def gateway_side() -> None:
            async with aiomqtt.Client("127.0.0.1", broker.port, username="edgegw", password=USERS["edgegw"]) as c:
                await c.subscribe("edgegw/+/+/command", qos=1)
                ready.set()
                async for msg in c.messages:
                    got.append(bytes(msg.payload).decode())

        listener = asyncio.create_task(gateway_side())
        try:
            await asyncio.wait_for(ready.wait(), 10)
            for user in ("dashboard", "scada-operator"):
                async with aiomqtt.Client("127.0.0.1", broker.port, username=user, password=USERS[user]) as c:
                    await c.publish("edgegw/lab/m1/command", user.encode(), qos=1)
            async with asyncio.timeout(10):
                while "scada-operator" not in got:  # noqa: ASYNC110 - bounded wait on a list
                    await asyncio.sleep(0.02)
            # The operator's message came after the dashboard's on the same broker: had the
            # dashboard's been let through, it would have arrived first.
            assert got == ["scada-operator"]
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await listener
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", broker.port) as c:  # anonymous
                await c.publish("edgegw/lab/m1/command", b"x", qos=1)
