"""Wiring: start back to front, stop front to back, SIGHUP reload, SIGTERM drain."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import signal
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from gateway import logs
from gateway.buses import Bus, TcpPaths
from gateway.commands import Commands, Rejected, Request, Result, parse_request
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.driver import Driver, DriverContext, DriverRuntime
from gateway.ha import ACTIVE, HaCoordinator
from gateway.health import Health, sd_notify
from gateway.models import DeviceConfig, PointConfig
from gateway.normalize import Batch, set_instance
from gateway.publish import Publisher
from gateway.registry import DRIVERS, load_object
from gateway.scheduler import DeviceRunner, DeviceStats, SkipLog
from gateway.sparkplug import SparkplugNode
from gateway.state import StateStore


def device_meta(device: DeviceConfig, points: Any) -> dict[str, Any]:
    return {
        "device": device.id,
        "driver": device.driver,
        "profile": device.profile_meta or None,
        "address": device.protocol_address(),
        "interval": device.interval,
        "tags": device.tags,
        "points": [_point_meta(p) for p in points if p.publish],
    }


def _point_meta(point: PointConfig) -> dict[str, Any]:
    meta = point.to_def().meta()
    report = point.report_meta()
    if report is not None:
        # Report by exception: the last value holds until the next one (docs/mqtt.md).
        meta["report"] = report
    return meta


def settle_memory() -> None:
    """After the devices are built: collect once, then keep what lives on out of the collector's scans.

    The objects built at start (imports, config, devices' tables and runners) live as long as the
    daemon, yet each full collection walked all of them: 260 ms with 1000 devices, a pause of
    every device's delivery that showed as the p99 latency. Frozen, they are not walked; what
    becomes garbage later is collected as before. A reload thaws them first (it frees runners).
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def build_driver(
    device: DeviceConfig,
    bus: Bus,
    state: StateStore,
    runtime: DriverRuntime | None,
    log: structlog.typing.FilteringBoundLogger,
    points: Sequence[PointConfig] | None = None,
) -> Driver[Any, Any]:
    """The device's driver, with its configured points (or the ones discovery found)."""
    spec = DRIVERS[device.driver]
    cls = load_object(spec.driver)
    ctx = DriverContext(
        device=device,
        points=device.resolved_points if points is None else points,
        log=log,
        bus=bus,
        state=state,
        runtime=runtime,
    )
    driver: Driver[Any, Any] = cls(ctx)
    return driver


def bus_for(device: DeviceConfig, cfg: GatewayConfig) -> tuple[str, Bus]:
    """The key and a new Bus for the transport a device uses: a named bus, a shared endpoint, or its own."""
    key = device.bus or device.implicit_bus() or f"device:{device.id}"
    bus = Bus(key, cfg.bus_config(device.bus) if device.bus else None)
    tcp = getattr(device, "tcp", None)
    if isinstance(tcp, TcpPaths):
        # The device's own endpoints (one, or several to fail over between) belong to its bus.
        bus.use_paths(tcp, getattr(device, "failover", None))
    return key, bus


async def start_runtime(
    kind: str, cfg: GatewayConfig, log: structlog.typing.FilteringBoundLogger
) -> DriverRuntime | None:
    """The kind's shared runtime (BACnet stack, SNMP engine), started; None for kinds without one."""
    spec = DRIVERS[kind]
    if spec.runtime is None:
        return None
    runtime: DriverRuntime = load_object(spec.runtime)(cfg.section(kind), log)
    await runtime.start()
    return runtime


class Gateway:
    """The running daemon: a publisher, shared runtimes and buses, one runner per device."""

    def __init__(self, cfg: GatewayConfig, config_path: Path | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.log = logs.get(site=cfg.site)
        self.state_dir = cfg.state_dir
        self.publisher = Publisher(cfg.mqtt, cfg.site, cfg.buffer, self.state_dir, self.log.bind(component="mqtt"))
        self.runtimes: dict[str, DriverRuntime] = {}
        self.buses: dict[str, Bus] = {}
        self.runners: dict[str, DeviceRunner] = {}
        # Skipped ticks are one overload of the process, logged once for every device together.
        self.skip_log = SkipLog(self.log.bind(component="scheduler"))
        self.states: dict[str, StateStore] = {}
        self._meta_points: dict[str, int] = {}  # id() of the point list each device's meta describes
        self.health = Health(self, cfg.health.listen, cfg.health.watchdog_stall, self.log.bind(component="health"))
        self.commands = commands_policy(cfg, self.log.bind(component="commands"))
        self._commands_running: set[asyncio.Task[None]] = set()
        self.started = time.time()
        # HA mode: devices run only while this instance holds the lease (gateway/ha.py).
        self.ha: HaCoordinator | None = None
        # Sparkplug B on its own session (gateway/sparkplug.py); with `ha`, only while active.
        self.sparkplug: SparkplugNode | None = None
        self._role_lock = asyncio.Lock()
        set_instance(cfg.ha.name if cfg.ha is not None else None)
        if cfg.ha is not None:
            self.ha = HaCoordinator(
                cfg.ha,
                self.publisher,
                self._ha_devices,
                self._ha_activate,
                self._ha_deactivate,
                self.log.bind(component="ha"),
            )
            self.ha.attach()

    # -- start -----------------------------------------------------------------------------

    async def start(self) -> None:
        # What can fail for reasons outside the config (a port taken, a buffer folder locked by
        # another instance, no write access) fails first, before any device is touched.
        await self.health.start()
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        self.publisher.open_buffer()
        if self.cfg.commands.enabled:
            self.publisher.subscribe(f"{self.publisher.base}/+/command", self._on_command)
        self.publisher.start()
        if self.ha is None:
            self._sparkplug_start()
        if self.ha is not None:
            self.ha.start()
        for device in self.cfg.devices:
            if device.enabled:
                await self._add_device(device)
        settle_memory()
        self.log.info(
            "gateway started",
            ha=None if self.ha is None else f"{self.ha.group}/{self.ha.instance}",
            devices=len(self.runners),
            buses=len(self.buses),
            brokers=" ".join(e.address for e in self.cfg.mqtt.endpoints),
        )
        sd_notify("READY=1\nSTATUS=" + self.summary())

    def _sparkplug_start(self) -> None:
        spb = self.cfg.mqtt.sparkplug
        if spb is None or self.sparkplug is not None:
            return
        # With `ha`, a client id per instance (as for the JSON session): a new active must not take
        # over the old one's MQTT session, whose will would then say the node died.
        suffix = f"-{self.cfg.ha.name}" if self.cfg.ha is not None else ""
        self.sparkplug = SparkplugNode(
            spb,
            self.cfg.mqtt,
            self.cfg.site,
            self.cfg.buffer,
            self.log.bind(component="sparkplug"),
            suffix,
            self.state_dir,
        )
        if self.ha is not None:
            self.sparkplug.may_birth = self._ha_confirmed
        self.sparkplug.start()

    def _ha_confirmed(self) -> bool:
        # The coordinator releases the JSON session once it has seen this instance's lease after
        # the connect: a returning active that lost it must not be born as the edge node.
        pub = self.publisher
        return self.ha is not None and self.ha.role == ACTIVE and pub.connected and not pub.hold

    async def _sparkplug_stop(self, drain_timeout: float) -> None:
        node, self.sparkplug = self.sparkplug, None
        if node is not None:
            await node.stop(drain_timeout)

    def _submit(self, batch: Batch, on_done: Any = None) -> None:
        # The JSON message carries the delivery contract (on_done commits driver state); the
        # Sparkplug copy has its own queue and buffer.
        if self.sparkplug is not None:
            self.sparkplug.data(batch)
        self.publisher.submit_batch(batch, on_done)

    async def _runtime(self, kind: str) -> DriverRuntime | None:
        if kind not in self.runtimes:
            runtime = await start_runtime(kind, self.cfg, self.log.bind(component=kind))
            if runtime is None:
                return None
            self.runtimes[kind] = runtime
        return self.runtimes[kind]

    def _bus_for(self, device: DeviceConfig) -> Bus:
        key, bus = bus_for(device, self.cfg)
        return self.buses.setdefault(key, bus)

    def _state_for(self, device: DeviceConfig) -> StateStore:
        if device.id not in self.states:
            path = self.state_dir / "devices" / f"{device.id}.json" if self.state_dir else None
            self.states[device.id] = StateStore(path)
            if self.ha is not None:
                self.ha.adopt_state(device.id, self.states[device.id])
        return self.states[device.id]

    async def _add_device(self, device: DeviceConfig) -> None:
        if self.ha is not None and self.ha.role != ACTIVE:
            return  # a standby polls nothing; activation adds every enabled device
        log = self.log.bind(device=device.id, driver=device.driver)
        bus = self._bus_for(device)
        log = log.bind(bus=bus.id)
        runtime = await self._runtime(device.driver)
        state = self._state_for(device)
        if self.ha is not None:
            await self.ha.prepare(device.id)
        publisher = self.publisher
        runner = DeviceRunner(
            device,
            partial(build_driver, device, bus, state, runtime, log),
            self._submit if self.cfg.mqtt.sparkplug is not None else publisher.submit_batch,
            self._on_status,
            log,
            state=state,
            on_event=partial(publisher.submit_event, device.id),
            saturated=publisher.saturated,
            skip_log=self.skip_log,
        )
        self.runners[device.id] = runner
        if self.sparkplug is not None:
            self.sparkplug.add_device(device.id, partial(_points_of, runner))
        self._publish_meta(runner)
        publisher.submit_retained(publisher.topic(device.id, "status"), runner.stats.status())
        runner.start()
        # Let the loop turn between devices: the broker connection (started before the devices)
        # and the devices built so far make progress while the rest are built, instead of all of
        # them waiting until the last of a hundred devices is ready (issue 13: start to first data).
        await asyncio.sleep(0)

    # -- commands ----------------------------------------------------------------------------

    def _on_command(self, msg: Any) -> None:
        """A request on `{prefix}/{site}/{device}/command`: answered once, on its own task."""
        device = str(msg.topic).split("/")[-2]
        if self.ha is not None and self.ha.role != ACTIVE:
            return  # the active answers; two answers to one request would be worse than none
        props = getattr(msg, "properties", None)
        who = {str(k): str(v) for k, v in (getattr(props, "UserProperty", None) or []) if k in ("client_id", "user")}
        reply_to = getattr(props, "ResponseTopic", None) or self.publisher.topic(device, "command/result")
        correlation = getattr(props, "CorrelationData", None)
        try:
            req = parse_request(device, bytes(msg.payload), {"via": "mqtt", **who})
        except Rejected as exc:
            req = Request(device=device, id=_request_id(bytes(msg.payload)), who={"via": "mqtt", **who})
            self._answer(Result("rejected", req, error=str(exc)), reply_to, correlation)
            return
        task = asyncio.create_task(self._command(req, reply_to, correlation), name=f"command:{device}")
        self._commands_running.add(task)
        task.add_done_callback(self._commands_running.discard)

    async def _command(self, req: Request, reply_to: str, correlation: bytes | None) -> None:
        result = await self.commands.run(req, self.runners.get(req.device))
        self._answer(result, reply_to, correlation)

    def _answer(self, result: Result, reply_to: str, correlation: bytes | None) -> None:
        properties = None
        if correlation is not None:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.CorrelationData = correlation
        self.publisher.submit_message(reply_to, json.dumps(result.body()).encode(), properties)
        self.publisher.submit_event(result.request.device, self.commands.audit(result))

    def _publish_meta(self, runner: DeviceRunner) -> None:
        topic = self.publisher.topic(runner.device.id, "meta")
        points = runner.points
        self._meta_points[runner.device.id] = id(points)
        self.publisher.submit_retained(topic, lambda: device_meta(runner.device, points))

    def _on_status(self, device: DeviceConfig, stats: DeviceStats) -> None:
        runner = self.runners.get(device.id)
        # Meta goes out again only when discovery replaced the points, not on every state change.
        if runner is not None and self._meta_points.get(device.id) != id(runner.points):
            self._publish_meta(runner)
        self.publisher.submit_retained(self.publisher.topic(device.id, "status"), stats.status())
        if self.sparkplug is not None:
            self.sparkplug.status(device.id, stats.state.value)

    # -- HA roles ----------------------------------------------------------------------------

    def _ha_devices(self) -> dict[str, float]:
        return {d.id: d.interval for d in self.cfg.devices if d.enabled}

    async def _ha_activate(self) -> None:
        async with self._role_lock:
            self._sparkplug_start()
            for device in self.cfg.devices:
                if device.enabled and device.id not in self.runners:
                    await self._add_device(device)
            settle_memory()

    async def _ha_deactivate(self) -> None:
        """Stop polling at once; what this instance published about the devices is the new active's now."""
        async with self._role_lock:
            ids = list(self.runners)
            await asyncio.gather(*(self._remove_device(i, forget=False) for i in ids), return_exceptions=True)
            self.publisher.forget_retained(self.publisher.topic(i, leaf) for i in ids for leaf in ("status", "meta"))
            # A standby has no edge node session: NDEATH now, the new active births its own.
            await self._sparkplug_stop(drain_timeout=1.0)
            settle_memory()

    # -- reload ----------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Apply a changed config file without touching unchanged devices; False when rejected."""
        if self.config_path is None:
            return False
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            self.log.error(
                "reload rejected: the new config is invalid; the running one stays", errors=[str(i) for i in exc.issues]
            )
            return False
        restart_needed = [
            name
            for name in ("site", "mqtt", "buffer", "state_dir", "health", "commands", "ha")
            if getattr(new, name) != getattr(self.cfg, name)
        ]
        restart_needed += [k for k in DRIVERS if new.section(k) != self.cfg.section(k) and k in self.runtimes]
        if restart_needed:
            self.log.warning("reload: these sections change only on restart", sections=restart_needed)
        old = {d.id: d for d in self.cfg.devices if d.enabled}
        fresh = {d.id: d for d in new.devices if d.enabled}
        old_buses = {b.id: b for b in self.cfg.buses}
        changed_buses = {b.id for b in new.buses if old_buses.get(b.id) not in (None, b)}
        removed = [i for i in old if i not in fresh]
        added = [i for i in fresh if i not in old]
        changed = [
            i
            for i in fresh
            if i in old and (_fingerprint(fresh[i]) != _fingerprint(old[i]) or (fresh[i].bus in changed_buses))
        ]
        for dev_id in removed + changed:
            await self._remove_device(dev_id, forget=dev_id in removed)
        if removed or changed:
            # What the removed runners held (drivers, tables, connections) is freed now, before
            # their successors are built, so the successors reuse that memory: left to the
            # collector's own pace, each reload of a changed fleet added its size to the RSS.
            gc.unfreeze()
            gc.collect()
        for bus_id in changed_buses:
            bus = self.buses.pop(bus_id, None)
            if bus is not None:
                await bus.close()
        self.cfg = new if not restart_needed else _keep_sections(self.cfg, new)
        for dev_id in added + changed:
            await self._add_device(fresh[dev_id])
        settle_memory()
        self.log.info(
            "config reloaded",
            added=added,
            removed=removed,
            changed=changed,
            unchanged=len(fresh) - len(added) - len(changed),
        )
        return True

    async def _remove_device(self, dev_id: str, forget: bool) -> None:
        runner = self.runners.pop(dev_id, None)
        if runner is None:
            return
        await runner.stop()
        self.states.pop(dev_id, None)
        if self.sparkplug is not None:
            self.sparkplug.remove_device(dev_id)
        if forget:
            offline = {"state": "removed", "since": int(time.time() * 1000), "last_success": None, "last_error": None}
            self.publisher.submit_retained(self.publisher.topic(dev_id, "status"), offline)
        # A private bus goes with its device; shared ones stay while other devices use them.
        in_use = {r.driver.ctx.bus.id for r in self.runners.values()}
        for key in [k for k in self.buses if k not in in_use]:
            await self.buses.pop(key).close()

    # -- stop ------------------------------------------------------------------------------

    async def stop(self, drain_timeout: float = 10.0) -> None:
        sd_notify("STOPPING=1")
        active = self.ha is not None and self.ha.role == ACTIVE
        if self.ha is not None:
            await self.ha.stop()  # no role change while stopping
        if self._commands_running:
            # A command under way is answered (ok, or timeout) before the devices go.
            await asyncio.wait(set(self._commands_running), timeout=2.0)
        runners = list(self.runners.values())
        await asyncio.gather(*(r.stop() for r in runners), return_exceptions=True)
        self.skip_log.close()
        # A clean stop says so per device: a consumer tells it from a crash (the gateway's will).
        now_ms = int(time.time() * 1000)
        for r in runners:
            stopped = {**r.stats.status(), "state": "offline", "reason": "stopped", "since": now_ms}
            self.publisher.submit_retained(self.publisher.topic(r.device.id, "status"), stopped)
        if active and self.ha is not None:
            # The pair's status says the active stopped; the standby's takeover says online again.
            stopped_ha = {"state": "offline", "reason": "stopped", "since": now_ms, **self.ha.status()}
            self.publisher.submit_retained(self.ha.status_topic, stopped_ha)
        delivered = await self.publisher.drain(drain_timeout)
        if not delivered:
            self.log.warning("stopping before the broker acknowledged everything", backlog=self.publisher.backlog)
        await self._sparkplug_stop(drain_timeout=min(drain_timeout, 2.0))
        await self.publisher.stop()
        for runtime in self.runtimes.values():
            with contextlib.suppress(Exception):
                await runtime.stop()
        for bus in self.buses.values():
            await bus.close()
        await self.health.stop()
        self.log.info("gateway stopped")

    def summary(self) -> str:
        runners = list(self.runners.values())
        online = sum(1 for r in runners if r.stats.state.value == "online")
        broker = "connected" if self.publisher.connected else "disconnected"
        role = "" if self.ha is None else f"{self.ha.role} ({self.ha.instance}), "
        return f"{role}{online}/{len(runners)} devices online, broker {broker}, backlog {self.publisher.backlog}"


def _points_of(runner: DeviceRunner) -> Sequence[PointConfig]:
    return runner.points


def commands_policy(cfg: GatewayConfig, log: structlog.typing.FilteringBoundLogger) -> Commands:
    c = cfg.commands
    return Commands(c.enabled, c.max_age, c.timeout, frozenset(c.devices) if c.devices is not None else None, log)


def _request_id(payload: bytes) -> str | None:
    """The caller's id of a request that is otherwise unusable, if it has one."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    rid = body.get("id") if isinstance(body, dict) else None
    return None if rid is None else str(rid)


def _fingerprint(device: DeviceConfig) -> tuple[str, tuple[str, ...]]:
    points = (*device.resolved_points, *device.calculated_points)
    return device.model_dump_json(), tuple(p.model_dump_json() for p in points)


def _keep_sections(old: GatewayConfig, new: GatewayConfig) -> GatewayConfig:
    """The new devices and buses with the sections that need a restart kept as they run."""
    return new.model_copy(
        update={
            "site": old.site,
            "mqtt": old.mqtt,
            "buffer": old.buffer,
            "state_dir": old.state_dir,
            "health": old.health,
            "commands": old.commands,
            "ha": old.ha,
        }
    )


def _loop_errors(log: structlog.typing.FilteringBoundLogger) -> Any:
    """Errors that escaped a library's callback: one line each kind per minute, the daemon goes on."""
    last: dict[str, float] = {}

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        what = f"{type(exc).__name__}: {exc}" if exc is not None else str(context.get("message"))
        key = what[:120]
        now = time.monotonic()
        if now - last.get(key, -1e9) >= 60.0:
            last[key] = now
            log.warning(
                "error in an event-loop callback (ignored)", error=what, where=str(context.get("handle", ""))[:120]
            )

    return handler


async def run(cfg: GatewayConfig, config_path: Path | None, stop_event: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop_event`); SIGHUP reloads."""
    loop = asyncio.get_running_loop()
    stop = stop_event or asyncio.Event()
    gw = Gateway(cfg, config_path)
    reloading: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        task = asyncio.create_task(gw.reload())
        reloading.add(task)

        def done(t: asyncio.Task[bool]) -> None:
            reloading.discard(t)
            sd_notify("READY=1\nSTATUS=" + gw.summary())

        task.add_done_callback(done)

    loop.set_exception_handler(_loop_errors(gw.log))
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await gw.start()
    except OSError as exc:
        gw.log.error("cannot start", error=str(exc))
        await gw.stop(drain_timeout=0.0)
        return 1
    except BaseException:
        # Whatever went wrong, stop what did start, so that nothing is left running at exit.
        await gw.stop(drain_timeout=0.0)
        raise
    try:
        await stop.wait()
    finally:
        await gw.stop()
    return 0
