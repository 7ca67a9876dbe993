"""The SNMP poller's socket is bound to the address it sends from, never to every interface."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from drivers.snmp.client import Agent, community_data, route_source
from drivers.snmp.runtime import SnmpRuntime

twin_module = pytest.importorskip("drivers.snmp.twin")
SYS_UPTIME = (1, 3, 6, 1, 2, 1, 1, 3, 0)


def udp_sockets_of_this_process() -> list[tuple[str, int]]:
    """(local address, port) of every UDP socket this process holds, from /proc (IPv4 and IPv6)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    out = []
    for table, family in (("udp", socket.AF_INET), ("udp6", socket.AF_INET6)):
        path = Path("/proc/self/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] not in inodes:
                continue
            hex_addr, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_addr)
            # /proc prints the address as 32-bit words in host byte order.
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            out.append((socket.inet_ntop(family, words), int(hex_port, 16)))
    return out


@pytest.fixture
async def runtime() -> AsyncIterator[SnmpRuntime]:
    rt = SnmpRuntime(None, structlog.get_logger("test"))
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


async def poll(runtime: SnmpRuntime, host: str, port: int) -> Agent:
    agent = Agent(
        runtime.engine_for(), community_data("public", "2c"), host, port, version="2c", timeout=1.0, retries=1
    )
    response = await agent.get([SYS_UPTIME])
    assert response.status == 0 and response.varbinds[0][0] == SYS_UPTIME
    return agent


async def test_a_poll_to_loopback_leaves_from_a_loopback_socket(runtime: SnmpRuntime) -> None:
    async with twin_module.SnmpTwin.create(host="127.0.0.1", community="public") as twin:
        before = set(udp_sockets_of_this_process())
        agent = await poll(runtime, "127.0.0.1", twin.port)
        again = await poll(runtime, "127.0.0.1", twin.port)  # a second agent shares the socket
        opened = set(udp_sockets_of_this_process()) - before
    bound = agent.local_address()
    assert bound is not None and bound[0] == "127.0.0.1", bound
    assert again.local_address() == bound
    assert opened == {bound}, opened  # one new socket, on 127.0.0.1, none on 0.0.0.0


async def test_ipv6_loopback_too(runtime: SnmpRuntime) -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    async with twin_module.SnmpTwin.create(host="::1", community="public") as twin:
        agent = await poll(runtime, "::1", twin.port)
    bound = agent.local_address()
    assert bound is not None and bound[0] == "::1", bound
    assert ("::", bound[1]) not in udp_sockets_of_this_process()


def test_the_source_is_what_the_kernel_routes_from() -> None:
    assert route_source("127.0.0.1", 161, socket.AF_INET) == "127.0.0.1"
    assert route_source("127.0.0.2", 161, socket.AF_INET).startswith("127.")
