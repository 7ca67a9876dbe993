"""Hot-standby pair: instances of one `ha.group` elect one active through retained MQTT topics.

Topics, all retained, QoS 1, under `{prefix}/{site}/ha/{group}/` (docs/mqtt.md):

* `lease`: `{"holder", "epoch", "since"}`, the current claim. A claim is (epoch, instance) and
  the greater one wins on every instance, epoch first: two instances that claim at once agree
  without a third party.
* `member/{instance}`: the instance's own state and role; its connection's last will sets it
  `offline`, which is what releases the lease when the active dies.
* `seq/{device}`: `{"next": N, ...}`: no `seq` at or above N has been used. The active raises it
  (and waits for the broker's acknowledgement) before it uses the numbers below it, so a new
  active that starts at N never repeats one.
* `state/{device}`: the device's driver state (DLMS profile cursors), versioned, after each commit.

The rules that decide are pure functions at the top, so they are tested on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiomqtt
import structlog

from gateway.config import HA_SETTLE, HaConfig
from gateway.publish import Publisher
from gateway.state import VERSION_KEY, StateStore

ACTIVE = "active"
STANDBY = "standby"
CLAIMING = "claiming"
ROLES = (ACTIVE, STANDBY, CLAIMING)


@dataclass(frozen=True, order=True, slots=True)
class Claim:
    """A lease claim; the greater (epoch, then instance name) wins everywhere."""

    epoch: int
    instance: str


def parse_claim(payload: bytes) -> Claim | None:
    """The claim a `lease` message carries, None for an empty (deleted) or unusable one."""
    try:
        body = json.loads(payload)
        return Claim(int(body["epoch"]), str(body["holder"]))
    except (ValueError, TypeError, KeyError):
        return None


def lease_free(top: Claim | None, members: dict[str, str], me: str) -> bool:
    """May a standby claim? The greatest claim seen has no live holder.

    `members` is each instance's last member state (`online`/`offline`). A holder without a
    member message counts as gone (its retained state was cleared), and a lease held by this
    instance while it stands by is a leftover of its own earlier run.
    """
    if top is None or top.instance == me:
        return True
    return members.get(top.instance) != "online"


def next_claim(top: Claim | None, me: str) -> Claim:
    return Claim((top.epoch if top is not None else 0) + 1, me)


def seq_window(partition_window: float, interval: float) -> int:
    """Seq numbers a device uses in `partition_window` (one message per poll, and a margin for pushes)."""
    return math.ceil(partition_window / interval) + 100


def seq_start(local_next: int, broker_next: int | None) -> int:
    """Where a new active continues a device: above what it used and what anyone reserved."""
    return max(local_next, broker_next or 0, 1)


def newer_state(local: Any, broker: Any) -> bool:
    """Is the broker's copy of a device's state newer than the local one? (versions are [epoch, n])."""
    if not isinstance(broker, list) or len(broker) != 2:
        return False
    if not isinstance(local, list) or len(local) != 2:
        return True
    return (int(broker[0]), int(broker[1])) > (int(local[0]), int(local[1]))


class _StateMirror:
    """One device's state, copied retained to the broker after each local commit."""

    def __init__(self, ha: HaCoordinator, device: str) -> None:
        self.ha = ha
        self.device = device

    def stamp(self, previous: Any) -> Any:
        epoch = self.ha.epoch
        if isinstance(previous, list) and len(previous) == 2 and previous[0] == epoch:
            return [epoch, int(previous[1]) + 1]
        return [epoch, 1]

    def publish(self, data: dict[str, Any]) -> None:
        if self.ha.role == ACTIVE:
            body = {"instance": self.ha.instance, "version": data.get(VERSION_KEY), "state": data}
            self.ha.publisher.submit_retained(self.ha.topic(f"state/{self.device}"), body)


class HaCoordinator:
    """This instance's side of the election; starts and stops polling through `activate`/`deactivate`."""

    def __init__(
        self,
        cfg: HaConfig,
        publisher: Publisher,
        devices: Callable[[], dict[str, float]],
        activate: Callable[[], Awaitable[None]],
        deactivate: Callable[[], Awaitable[None]],
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.cfg = cfg
        self.instance = cfg.name
        self.group = cfg.group
        self.publisher = publisher
        self.base = f"{publisher.base}/ha/{cfg.group}"
        self.status_topic = f"{publisher.base}/gateway/status"
        self.devices = devices
        self._activate_cb = activate
        self._deactivate_cb = deactivate
        self.log = log.bind(instance=self.instance, group=cfg.group)
        self.role = STANDBY
        self.own: Claim | None = None  # our claim while claiming, our lease while active
        self.lease: Claim | None = None  # the last lease message (what the broker retains)
        self.top: Claim | None = None  # the greatest claim seen
        self.members: dict[str, str] = {}
        self.seq_seen: dict[str, int] = {}
        self.state_seen: dict[str, dict[str, Any]] = {}
        self.takeovers = 0
        self._settle_until = math.inf  # not connected yet
        self._claim_deadline = 0.0
        self._claim_after = math.inf
        self._confirmed = True
        self._member_sent = False
        self._reasserted = 0.0
        self._low: set[str] = set()
        # Members heard live (not from the retained store) since our connect, and the deadline of
        # our ping to a lease holder whose `online` may be a leftover (a broker that restarted
        # while it died never fired its will).
        self._fresh: set[str] = set()
        self._probe: tuple[str, float] | None = None  # (holder, deadline)
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def epoch(self) -> int:
        return self.own.epoch if self.own is not None and self.role == ACTIVE else 0

    def topic(self, leaf: str) -> str:
        return f"{self.base}/{leaf}"

    # -- wiring ----------------------------------------------------------------------------

    def attach(self) -> None:
        """Set the publisher up for HA mode (before it starts)."""
        pub = self.publisher
        pub.will_topic = self.topic(f"member/{self.instance}")
        pub.will_extra = {"instance": self.instance}
        pub.client_suffix = f"-{self.instance}"
        pub.announce_status = False
        pub.hold_on_connect = True
        pub.on_connection = self._on_connection
        pub.subscribe(f"{self.base}/#", self._on_message)
        seq = pub.seq
        seq.ceiling = {}
        seq.on_low = self._seq_low

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ha")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def adopt_state(self, device: str, store: StateStore) -> None:
        """A device's state as a new active starts it: the broker's copy when that is newer."""
        seen = self.state_seen.get(device)
        if seen is not None and isinstance(seen.get("state"), dict):
            broker = seen["state"]
            if newer_state(store.get(VERSION_KEY), broker.get(VERSION_KEY)):
                try:
                    store.replace(broker)
                except OSError as exc:
                    self.log.warning("cannot write device state taken from the broker", device=device, error=str(exc))
                self.log.info("device state taken from the broker", device=device, version=broker.get(VERSION_KEY))
        store.mirror = _StateMirror(self, device)

    async def prepare(self, device: str) -> None:
        """Reserve seq numbers for a device the active starts (one a reload added) before it polls."""
        ceiling = self.publisher.seq.ceiling
        if self.role != ACTIVE or (ceiling is not None and device in ceiling):
            return
        try:
            await self._reserve([device], start=True)
        except (aiomqtt.MqttError, OSError):
            self._low.add(device)  # after the reconnect; its messages wait for it (counted drops)

    def status(self) -> dict[str, Any]:
        """The pair's part of the retained gateway/status (published by the active)."""
        return {"role": self.role, "instance": self.instance, "group": self.group, "epoch": self.epoch}

    # -- events from the publisher (sync, on the loop) -------------------------------------

    def _on_connection(self, up: bool) -> None:
        if up:
            self._settle_until = time.monotonic() + HA_SETTLE
            # After a connect the holder reasserts its lease first (a broker that lost its retained
            # messages); a standby claims one settle later, so it does not take over needlessly.
            self._claim_after = self._settle_until + HA_SETTLE
            self._fresh.clear()
            self._probe = None
            self._confirmed = False
            self._member_sent = False
        self._kick.set()

    def _on_message(self, msg: aiomqtt.Message) -> None:
        leaf = str(msg.topic)[len(self.base) + 1 :]
        payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload or "").encode()
        kind, _, name = leaf.partition("/")
        if kind == "lease" and not name:
            claim = parse_claim(payload) if payload else None
            self.lease = claim
            if claim is not None and (self.top is None or claim > self.top):
                self.top = claim
        elif kind == "ping" and name == self.instance:
            self._member_sent = False  # answer with our member state, live
        elif kind == "member" and name:
            if not msg.retain:
                self._fresh.add(name)
            try:
                self.members[name] = str(json.loads(payload).get("state")) if payload else "gone"
            except (ValueError, AttributeError):
                self.members[name] = "gone"
        elif kind == "seq" and name:
            with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
                value = int(json.loads(payload)["next"])
                self.seq_seen[name] = max(self.seq_seen.get(name, 0), value)
        elif kind == "state" and name:
            with contextlib.suppress(ValueError, AttributeError):
                body = json.loads(payload) if payload else None
                if isinstance(body, dict):
                    old = self.state_seen.get(name, {}).get("state", {})
                    if not isinstance(old, dict) or newer_state(
                        old.get(VERSION_KEY), body.get("state", {}).get(VERSION_KEY)
                    ):
                        self.state_seen[name] = body
        else:
            return
        self._kick.set()

    def _seq_low(self, device: str) -> None:
        if device not in self._low:
            self._low.add(device)
            self._kick.set()

    # -- the state machine -----------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await self._kick.wait()
            self._kick.clear()
            try:
                await self._step()
            except (aiomqtt.MqttError, OSError) as exc:
                # The connection went mid-step: the next connect starts the step over.
                self.log.debug("ha step interrupted", error=str(exc))
            except Exception as exc:  # the election must outlive a bug in one step
                self.log.error("ha step failed", error=repr(exc), exc_info=exc)
                await asyncio.sleep(1.0)

    async def _step(self) -> None:
        pub = self.publisher
        if not pub.connected:
            return
        if not self._member_sent:
            self._member_sent = True
            await self._publish_member()
        now = time.monotonic()
        if now < self._settle_until:
            return  # the retained lease and members are still arriving
        if self.role == ACTIVE:
            await self._step_active(now)
        elif self.role == CLAIMING:
            await self._step_claiming(now)
        else:
            if not self._confirmed:
                self._confirmed = True
                pub.release()
            if now < self._claim_after or await self._probing(now):
                return
            if lease_free(self.top, self.members, self.instance):
                await self._claim(now)

    async def _probing(self, now: float) -> bool:
        """Ask a lease holder that looks online but was not heard since our connect; True while waiting.

        Its retained `online` may be all that is left of it: when a broker restarts (or a NATS
        server shuts down) while the holder dies, its will may never be published.
        """
        holder = self.top.instance if self.top is not None else None
        if holder is None or holder == self.instance or self.members.get(holder) != "online":
            return False
        if holder in self._fresh:
            return False
        if self._probe is None or self._probe[0] != holder:
            self._probe = (holder, now + 2 * HA_SETTLE)
            await self.publisher.publish_now(self.topic(f"ping/{holder}"), b"", retain=False)
            return True
        if now < self._probe[1]:
            return True
        self.log.warning("the lease holder does not answer; treating it as gone", holder=holder)
        self.members[holder] = "silent"
        return False

    async def _step_active(self, now: float) -> None:
        assert self.own is not None
        if self.top is not None and self.top > self.own:
            await self._step_down(self.top)
            return
        if self.lease != self.own and now - self._reasserted > HA_SETTLE:
            # A stale or cleared lease: ours is the greatest claim, say so again.
            self._reasserted = now
            await self._publish_lease(self.own)
        if self.members.get(self.instance) not in (None, "online"):
            await self._publish_member()  # our old connection's will came in after the reconnect
        if not self._confirmed:
            self._confirmed = True
            self._low |= set(self.devices())
            self.log.info("lease confirmed after reconnect", epoch=self.own.epoch)
            self._publish_status()
            self.publisher.release()
        if self._low:
            await self._reserve(sorted(self._low))

    async def _step_claiming(self, now: float) -> None:
        assert self.own is not None
        if self.top is not None and self.top > self.own:
            self.log.info("a greater claim won; standing by", holder=self.top.instance, epoch=self.top.epoch)
            self.role, self.own = STANDBY, None
            await self._publish_member()
            return
        if now < self._claim_deadline:
            return
        if self.lease == self.own:
            await self._become_active()
        else:
            # Another claim was retained after ours, and ours is greater: write it again.
            await self._publish_lease(self.own)
            self._claim_deadline = time.monotonic() + HA_SETTLE

    async def _claim(self, now: float) -> None:
        claim = next_claim(self.top, self.instance)
        previous = self.top
        self.role, self.own = CLAIMING, claim
        self.top = claim
        self.log.info(
            "claiming the lease",
            epoch=claim.epoch,
            previous_holder=previous.instance if previous else None,
            previous_state=self.members.get(previous.instance) if previous else None,
        )
        await self._publish_lease(claim)
        self._claim_deadline = time.monotonic() + HA_SETTLE

    async def _become_active(self) -> None:
        assert self.own is not None
        self.role = ACTIVE
        try:
            await self._reserve(sorted(self.devices()), start=True)
        except (aiomqtt.MqttError, OSError):
            # Cut off before polling started: claim again after the reconnect (the lease is ours,
            # so the claim is free and the epoch grows).
            self.role, self.own = STANDBY, None
            raise
        if self.role != ACTIVE or (self.top is not None and self.top > self.own):
            return  # a greater claim came in meanwhile: the next step stands down, nothing started
        self.takeovers += 1
        self.log.warning("active: polling starts", epoch=self.own.epoch)
        # The pair's status first: the devices poll at once when they start, and a consumer sees
        # who is active before it sees that instance's first data.
        self._publish_status()
        await self._activate_cb()
        self._confirmed = True
        await self._publish_member()
        self.publisher.release()

    async def _step_down(self, winner: Claim) -> None:
        self.log.warning("standing by: a newer lease holds", holder=winner.instance, epoch=winner.epoch)
        self.role, self.own = STANDBY, None
        seq = self.publisher.seq
        if seq.ceiling is not None:
            seq.ceiling.clear()
        self._low.clear()
        await self._deactivate_cb()
        self.publisher.forget_retained([self.status_topic, *(self.topic(f"state/{d}") for d in self.devices())])
        await self._publish_member()
        # What was buffered while cut off is real data with our instance and our own seq: drain it.
        self._confirmed = True
        self.publisher.release()

    # -- seq reservations ------------------------------------------------------------------

    async def _reserve(self, devices: list[str], start: bool = False) -> None:
        """Move each device's broker-acknowledged reservation forward; only then may it use the numbers."""
        if not devices:
            return
        seq = self.publisher.seq
        own = self.own
        intervals = self.devices()
        begin: dict[str, int] = {}
        tops: dict[str, int] = {}
        for dev in devices:
            self._low.discard(dev)
            interval = intervals.get(dev)
            if interval is None:
                continue
            window = seq_window(self.cfg.partition_window, interval)
            # A device this instance starts (or that a reload added) continues above anyone's
            # reservation; one it keeps publishing continues its own count, without a jump.
            fresh = start or seq.ceiling is None or dev not in seq.ceiling
            first = seq_start(seq.peek(dev), self.seq_seen.get(dev)) if fresh else seq.peek(dev)
            begin[dev] = first
            tops[dev] = first + 2 * window
            seq.low_water[dev] = window
        seq.advance(begin, tops)  # on disk before the broker hears of it, so a restart stays above
        await asyncio.gather(*(self._publish_seq(dev, top) for dev, top in tops.items()))
        # A greater claim seen meanwhile: its holder may already count from our old reservation.
        if self.role == ACTIVE and own is not None and self.own == own and (self.top is None or self.top <= own):
            ceiling = seq.ceiling if seq.ceiling is not None else {}
            for dev, top in tops.items():
                ceiling[dev] = max(ceiling.get(dev, 0), top)
                if dev in seq.stalled:
                    seq.stalled.discard(dev)
                    self.log.info("seq reservation renewed: publishing the device's data again", device=dev)
            seq.ceiling = ceiling

    async def _publish_seq(self, device: str, top: int) -> None:
        body = {"next": top, "instance": self.instance, "epoch": self.epoch}
        await self.publisher.publish_now(self.topic(f"seq/{device}"), json.dumps(body).encode())
        self.seq_seen[device] = max(self.seq_seen.get(device, 0), top)

    # -- messages --------------------------------------------------------------------------

    async def _publish_lease(self, claim: Claim) -> None:
        body = {"holder": claim.instance, "epoch": claim.epoch, "since": int(time.time() * 1000)}
        await self.publisher.publish_now(self.topic("lease"), json.dumps(body).encode())

    async def _publish_member(self) -> None:
        body = {
            "state": "online",
            "role": self.role,
            "instance": self.instance,
            "epoch": self.own.epoch if self.own is not None else None,
            "since": int(time.time() * 1000),
        }
        await self.publisher.publish_now(self.topic(f"member/{self.instance}"), json.dumps(body).encode())

    def _publish_status(self) -> None:
        status = {"state": "online", "since": int(time.time() * 1000), **self.status()}
        self.publisher.submit_retained(self.status_topic, status)
