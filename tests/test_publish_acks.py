"""PUBACKs read by the publisher's AckReader: the same outcome as paho's own parser, packet for packet."""

from __future__ import annotations

import socket

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.publish import AckReader


class _Rig:
    """A paho client on one end of a socket pair (as aiomqtt runs it), the reader installed on it."""

    def __init__(self, max_inflight: int = 20) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t")
        self.client.max_inflight_messages_set(max_inflight)
        ours, self.broker = socket.socketpair()
        ours.setblocking(False)
        self.broker.settimeout(5)
        self.client._sock = ours
        self.client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED  # type: ignore[attr-defined]
        self.client.on_socket_register_write = lambda c, u, s: None
        self.client.on_socket_unregister_write = lambda c, u, s: None
        self.ours: set[int] = set()
        self.fast: list[int] = []  # acknowledged through the reader
        self.slow: list[int] = []  # through paho's callback
        self.done = 0
        self.client.on_publish = lambda c, u, mid, r, p: self.slow.append(mid)
        AckReader(self.client, self._acked, self._done)

    def _acked(self, mid: int) -> bool:
        if mid not in self.ours:
            return False
        self.ours.discard(mid)
        self.fast.append(mid)
        return True

    def _done(self) -> None:
        self.done += 1

    def publish(self, n: int, ours: bool = True) -> list[int]:
        mids = [self.client.publish(f"t/{k}", b"x", 1).mid for k in range(n)]
        if ours:
            self.ours.update(mids)
        self.client.loop_write()
        return mids

    def read(self) -> None:
        """What aiomqtt does when the socket is readable."""
        self.client.loop_read()


def puback(mid: int) -> bytes:
    return b"\x40\x02" + mid.to_bytes(2, "big")


def test_a_run_of_pubacks_is_handled_in_one_read_and_paho_agrees() -> None:
    rig = _Rig()
    mids = rig.publish(10)
    rig.broker.sendall(b"".join(puback(m) for m in mids))
    rig.read()
    assert rig.fast == mids and rig.slow == [] and rig.done == 1
    assert not rig.client._out_messages and rig.client._inflight_messages == 0


def test_other_packets_and_split_packets_go_through_paho() -> None:
    rig = _Rig()
    mine = rig.publish(4)
    theirs = rig.publish(2, ours=False)  # aiomqtt's own publishes
    # A PUBACK of ours, one of aiomqtt's, a PINGRESP, then ours again, the last one cut in two.
    stream = puback(mine[0]) + puback(theirs[0]) + b"\xd0\x00" + puback(mine[1]) + puback(theirs[1])
    stream += puback(mine[2]) + puback(mine[3])[:3]
    rig.broker.sendall(stream)
    rig.read()
    assert rig.fast == [mine[0]]
    # paho's parser took the rest it could, its callback saw all of them.
    assert rig.slow == [theirs[0], mine[1], theirs[1], mine[2]]
    rig.broker.sendall(puback(mine[3])[3:])
    rig.read()
    assert rig.slow[-1] == mine[3]
    assert not rig.client._out_messages and rig.client._inflight_messages == 0
    # Back at a packet boundary: the reader takes the next run itself.
    again = rig.publish(3)
    rig.broker.sendall(b"".join(puback(m) for m in again))
    rig.read()
    assert rig.fast == [mine[0], *again]


def test_messages_paho_held_past_its_window_go_out_after_the_acks() -> None:
    rig = _Rig(max_inflight=3)
    mids = rig.publish(5)  # two wait in paho's table
    assert rig.client._inflight_messages == 3
    sent = b""
    while sent.count(b"t/") < 3:
        sent += rig.broker.recv(1 << 16)
    rig.broker.sendall(puback(mids[0]) + puback(mids[1]))
    rig.read()
    assert rig.fast == mids[:2]
    rig.client.loop_write()
    while sent.count(b"t/") < 5:
        sent += rig.broker.recv(1 << 16)
    assert rig.client._inflight_messages == 3


def test_a_closed_connection_is_paho_s_to_report() -> None:
    rig = _Rig()
    rig.publish(1)
    lost: list[object] = []
    rig.client.on_disconnect = lambda c, u, flags, rc, p: lost.append(rc)
    rig.broker.close()
    rig.read()
    assert lost and rig.client._sock is None
