"""A bus serves one transaction at a time, in arrival order, and releases on errors."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from gateway.buses import Bus, BusConfig, FailoverSettings, PathSet, TcpSettings, tcp_probe
from gateway.config import ConfigError, load_config_text


async def test_transactions_are_serialised_and_fifo() -> None:
    bus = Bus("b")
    order: list[str] = []
    inside = 0

    async def device(name: str, n: int) -> None:
        nonlocal inside
        for i in range(n):
            async with bus.transaction():
                inside += 1
                assert inside == 1
                order.append(f"{name}{i}")
                await asyncio.sleep(0)
                inside -= 1

    await asyncio.gather(device("a", 3), device("b", 3))
    assert order == ["a0", "b0", "a1", "b1", "a2", "b2"]  # take turns, nobody starves
    assert bus.transactions == 6


async def test_an_error_inside_releases_the_bus() -> None:
    bus = Bus("b")
    with pytest.raises(RuntimeError):
        async with bus.transaction():
            raise RuntimeError("device said no")
    async with asyncio.timeout(1):
        async with bus.transaction():
            pass


async def test_turnaround_is_kept_between_transactions() -> None:
    bus = Bus("b", BusConfig.model_validate({"id": "b", "serial": {"port": "/dev/null"}, "turnaround": "50ms"}))
    async with bus.transaction():
        pass
    start = time.monotonic()
    async with bus.transaction():
        pass
    assert time.monotonic() - start >= 0.045


# --- alternate paths: the switch logic, on a clock the test turns ------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def paths(n: int = 2, clock: Clock | None = None, **settings: object) -> PathSet:
    endpoints = [TcpSettings(host=f"10.0.0.{7 + i}", port=502) for i in range(n)]
    fo = FailoverSettings.model_validate({"failback_after": 60, "probe_interval": 5, **settings})
    return PathSet("b", endpoints, fo, clock=clock or Clock(), probe=None)


def test_a_connection_failure_moves_to_the_next_path_at_once() -> None:
    ps = paths()
    seen: list[str] = []
    ps.watch(lambda p: seen.append(str(p.active)))
    assert str(ps.current()) == "10.0.0.7:502"
    ps.connect_failed("connection refused")
    assert str(ps.current()) == "10.0.0.8:502"
    assert (ps.switches, ps.failovers, seen) == (1, 1, ["10.0.0.8:502"])


def test_consecutive_timeouts_move_and_an_answer_resets_the_count() -> None:
    ps = paths(after_timeouts=3)
    ps.timed_out()
    ps.timed_out()
    ps.answered()  # not in a row
    ps.timed_out()
    ps.timed_out()
    assert ps.current().index == 0
    ps.timed_out()
    assert ps.current().index == 1


def test_silence_on_every_path_is_the_devices_not_the_path() -> None:
    ps = paths(after_timeouts=2)
    for _ in range(2):
        ps.timed_out()
    assert ps.current().index == 1
    for _ in range(10):  # just as silent here: no ping-pong
        ps.timed_out()
    assert (ps.current().index, ps.switches) == (1, 1)
    ps.answered()  # something answers: timeouts are evidence again
    ps.timed_out()
    ps.timed_out()
    assert ps.current().index == 0


def test_failback_only_after_the_preferred_path_was_reachable_for_the_whole_time() -> None:
    clock = Clock()
    ps = paths(clock=clock)
    ps.connect_failed("refused")
    assert ps.current().index == 1
    ps.probe_result(True)
    clock.now += 30
    ps.probe_result(False)  # one failed probe restarts the wait
    clock.now += 40
    ps.probe_result(True)
    clock.now += 59
    assert ps.current().index == 1
    clock.now += 1
    assert ps.current().index == 0
    assert (ps.failovers, ps.failbacks) == (1, 1)


def test_a_preferred_path_that_fails_again_soon_waits_longer_each_time() -> None:
    clock = Clock()
    ps = paths(clock=clock)
    holds = []
    for _ in range(6):
        ps.connect_failed("refused")
        holds.append(ps.hold)
        ps.probe_result(True)
        clock.now += ps.hold
        assert ps.current().index == 0
        clock.now += 1  # fails again right after the return
    assert holds == [60, 120, 240, 480, 960, 960]
    # A preferred path that carried traffic for longer than the hold starts from the base again.
    clock.now += 2000
    ps.connect_failed("refused")
    assert ps.hold == 60


def test_no_flapping_under_an_intermittent_preferred_path() -> None:
    clock = Clock()
    ps = paths(clock=clock)
    ps.connect_failed("refused")
    # The preferred endpoint answers every other probe for ten minutes: the bus stays away.
    for n in range(120):
        ps.probe_result(n % 2 == 0)
        clock.now += 5
        assert ps.current().index == 1
    assert ps.switches == 1


def test_three_paths_in_order_and_all_down_is_not_announced() -> None:
    ps = paths(3)
    seen: list[int] = []
    ps.watch(lambda p: seen.append(p.active.index))
    ps.connect_failed("refused")
    ps.connect_failed("refused")
    assert ps.current().index == 2 and seen == [1, 2]
    for _ in range(9):  # everything down: it keeps trying in turn, quietly
        ps.connect_failed("refused")
    assert seen == [1, 2] and ps.announced.index == 2
    assert ps.current().index == 2  # 11 steps around three paths
    ps.connect_failed("refused")
    ps.connected()  # path 0 is back: announced
    assert seen == [1, 2, 0]


def test_one_endpoint_never_switches() -> None:
    ps = paths(1)
    ps.connect_failed("refused")
    for _ in range(10):
        ps.timed_out()
    assert (ps.current().index, ps.switches) == (0, 0)


async def test_the_probe_task_probes_the_preferred_path_off_the_bus_and_fails_back() -> None:
    probed: list[tuple[str, int]] = []
    reachable = asyncio.Event()
    three_probes = asyncio.Event()
    back = asyncio.Event()

    async def probe(host: str, port: int, timeout: float) -> bool:
        probed.append((host, port))
        if len(probed) >= 3:
            three_probes.set()
        return reachable.is_set()

    endpoints = [TcpSettings(host="127.0.0.1", port=1502), TcpSettings(host="127.0.0.2", port=1502)]
    fo = FailoverSettings.model_validate({"failback_after": "0.2s", "probe_interval": "0.05s"})
    ps = PathSet("b", endpoints, fo, probe=probe)
    try:
        ps.connect_failed("refused")
        await asyncio.wait_for(three_probes.wait(), 5)
        assert ps.current().index == 1 and set(probed) == {("127.0.0.1", 1502)}
        reachable.set()
        started = time.monotonic()
        ps.watch(lambda p: back.set())

        async def driver() -> None:
            while True:  # the switch happens where a driver asks for the endpoint: a transaction boundary
                ps.current()
                await asyncio.sleep(0.02)

        polls = asyncio.create_task(driver())
        try:
            await asyncio.wait_for(back.wait(), 5)
        finally:
            polls.cancel()
        assert ps.current().index == 0 and time.monotonic() - started >= 0.2
    finally:
        await ps.close()


async def test_tcp_probe_on_loopback() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    assert await tcp_probe("127.0.0.1", port, 1.0)
    server.close()
    await server.wait_closed()
    assert not await tcp_probe("127.0.0.1", port, 1.0)


def test_a_named_bus_owns_its_paths() -> None:
    cfg = BusConfig.model_validate(
        {"id": "gw", "tcp": [{"host": "10.0.0.7"}, {"host": "10.0.0.8"}], "failover": {"after_timeouts": 2}}
    )
    bus = Bus("gw", cfg)
    assert bus.paths is not None and bus.path == "10.0.0.7:502" and bus.paths.settings.after_timeouts == 2
    assert bus.use_paths([TcpSettings(host="x")]) is bus.paths
    assert cfg.tcp is not None and (cfg.tcp.host, cfg.tcp.port, cfg.tcp.key) == (
        "10.0.0.7",
        502,
        "10.0.0.7:502,10.0.0.8:502",
    )
    assert Bus("serial").path is None


# --- alternate paths: config ------------------------------------------------------------------


def config_issues(devices: str) -> list[str]:
    try:
        load_config_text(f"site: s\ndevices:\n{devices}", "t.yaml")
    except ConfigError as exc:
        return [str(i) for i in exc.issues]
    return []


def test_tcp_takes_one_mapping_or_a_list_preferred_first() -> None:
    cfg = load_config_text(
        "site: s\nbuses:\n  - {id: gw, tcp: [{host: 10.0.0.7}, {host: 10.0.0.8}]}\ndevices:\n"
        "  - {id: a, driver: modbus, tcp: [{host: 10.0.0.7}, {host: 10.0.0.8, port: 1502}], points: []}\n"
        "  - {id: b, driver: modbus, tcp: {host: 10.0.0.9}, points: []}\n"
        "  - {id: c, driver: dlms, tcp: [{host: 10.0.0.7}, {host: 10.0.0.8}], failover: {failback_after: 2s}}\n"
        "  - {id: d, driver: modbus, bus: gw, points: []}\n",
        "t.yaml",
    )
    a, b, c, _ = cfg.devices
    assert a.implicit_bus() == "modbus-tcp:10.0.0.7:502,10.0.0.8:1502"
    assert b.implicit_bus() == "modbus-tcp:10.0.0.9:502"
    assert c.implicit_bus() == "dlms-wrapper:10.0.0.7:4059,10.0.0.8:4059"  # DLMS' default port
    assert a.protocol_address()["paths"] == ["10.0.0.7:502", "10.0.0.8:1502"]
    assert "paths" not in b.protocol_address()
    assert cfg.buses[0].tcp is not None and len(cfg.buses[0].tcp) == 2
    failover = getattr(c, "failover", None)
    assert failover is not None and failover.probe_interval == 2.0  # never longer than failback_after


def test_path_config_errors_name_file_line_and_field() -> None:
    assert config_issues("  - id: a\n    driver: modbus\n    tcp: []\n    points: []\n") == [
        "t.yaml:5 devices[0].tcp: an empty list: give at least one `{host, port}`"
    ]
    dup = "  - id: a\n    driver: modbus\n    tcp:\n      - {host: h}\n      - {host: H, port: 502}\n    points: []\n"
    assert config_issues(dup) == ["t.yaml:7 devices[0].tcp[1]: H:502 is listed twice (also [0])"]
    assert config_issues("  - {id: a, driver: modbus, tcp: {host: h}, failover: {}, points: []}\n") == [
        "t.yaml:3 devices[0].failover: `failover` needs a list of two or more endpoints, preferred first"
    ]
    bad = "  - id: a\n    driver: modbus\n    tcp: [{host: h}, {host: i}]\n    failover: {failback_after: 1s, probe_interval: 2s}\n"
    assert config_issues(bad + "    points: []\n") == [
        "t.yaml:6 devices[0].failover.failback_after: failback_after must be at least probe_interval"
    ]
    # Devices behind the same endpoints share one bus and switch together: they must agree.
    two = (
        "  - {id: a, driver: modbus, tcp: [{host: h}, {host: i}], points: []}\n"
        "  - {id: b, driver: modbus, tcp: [{host: h}, {host: i}], failover: {after_timeouts: 1}, points: []}\n"
        "  - {id: c, driver: modbus, tcp: [{host: i}, {host: h}], points: []}\n"
        "  - {id: d, driver: modbus, tcp: {host: h}, transport: rtu_over_tcp, points: []}\n"
    )
    assert config_issues(two) == [
        "t.yaml:4 devices[1].failover: devices[0] has the same endpoints with another `failover`",
        "t.yaml:5 devices[2].tcp: i:502 is also an endpoint of devices[0], which lists other endpoints: "
        "list the same ones in the same order, or put both devices on one named bus",
    ]


# --- alternate paths: the Modbus driver on a bus with two endpoints ---------------------------


async def test_modbus_devices_switch_together_on_a_half_open_path_but_not_for_one_dead_unit() -> None:
    from drivers.modbus.twin import ModbusTwin
    from gateway.driver import DeviceError
    from tests.harness import TcpProxy
    from tests.modbus.util import METER, assert_values, device, driver, points

    pts = points(METER[:3])
    async with ModbusTwin(pts, units=[1, 2, 3], update_interval=0) as twin:
        a, b = TcpProxy(twin.port), TcpProxy(twin.port)
        await a.start()
        await b.start()
        tcp = [{"host": "127.0.0.1", "port": a.port}, {"host": "127.0.0.1", "port": b.port}]
        devs = [device(id=f"m{u}", unit=u, timeout=0.1, tcp=tcp, failover={"after_timeouts": 2}) for u in (1, 2, 3)]
        bus = Bus(devs[0].implicit_bus() or "", None)
        drivers = [await driver(dev, pts, bus) for dev in devs]
        try:
            for d in drivers:
                await d.read()
            assert bus.paths is not None and bus.path == f"127.0.0.1:{a.port}"
            twin.faults.set("silent", target=2)  # one dead meter among live ones: never the path's fault
            for _ in range(4):
                for d in drivers:
                    with contextlib.suppress(DeviceError):
                        await d.read()
            assert bus.paths.switches == 0
            twin.faults.clear(2)
            a.stall()  # the preferred path accepts but carries nothing any more
            outcomes = []
            for d in drivers:
                try:
                    await d.read()
                    outcomes.append("ok")
                except DeviceError:
                    outcomes.append("timeout")
            # two timeouts of units that answered before move the whole bus; the third reads on the other path
            assert outcomes == ["timeout", "timeout", "ok"]
            assert bus.path == f"127.0.0.1:{b.port}" and bus.paths.failovers == 1
            for u, d in zip((1, 2, 3), drivers, strict=True):
                assert_values(twin, u, pts, (await d.read()).values)
        finally:
            await bus.close()
            await a.stop()
            await b.stop()
