"""publish_qos1 against paho's own publish: the same bytes on the wire, the same state in paho."""

from __future__ import annotations

import logging
import socket
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.publish import publish_qos1


def _client(max_inflight: int = 20) -> tuple[mqtt.Client, socket.socket]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t")
    client.max_inflight_messages_set(max_inflight)
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    broker.settimeout(5)
    client._sock = ours
    client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED  # type: ignore[attr-defined]
    client.on_socket_register_write = lambda c, u, s: None
    client.on_socket_unregister_write = lambda c, u, s: None
    return client, broker


def _state(client: mqtt.Client) -> list[Any]:
    msgs = [
        (m.mid, m.topic, bytes(m.payload), m.qos, m.retain, m.dup, m.state, m.properties, m.info.mid, m.info.rc)
        for m in client._out_messages.values()
    ]
    packets = [
        (p["command"], p["mid"], p["qos"], p["pos"], p["to_process"], bytes(p["packet"])) for p in client._out_packet
    ]
    return [client._last_mid, client._inflight_messages, msgs, packets]


CASES: list[tuple[str, bytes, bool]] = [
    ("edgegw/site/dev/data", b'{"v":1}', False),
    ("edgegw/site/dev/meta", b"m" * 200, True),  # a two-byte remaining length
    ("t", b"", False),  # an empty payload
    ("edgegw/s/\u00e9t\u00e9/data", b"x" * 20_000, False),  # a UTF-8 topic, three length bytes
]


def test_the_same_packets_and_state_as_paho() -> None:
    ours, _b1 = _client()
    theirs, _b2 = _client()
    for c in (ours, theirs):
        c._last_mid = 65533  # the message id wraps to 1 on the way
    for topic, payload, retain in CASES * 2:
        rc, mid = publish_qos1(ours, topic, payload, retain)
        info = theirs.publish(topic, payload, 1, retain)
        assert (rc, mid) == (info.rc, info.mid)
        assert _state(ours) == _state(theirs)
    # What goes out on the wire.
    for c in (ours, theirs):
        c.loop_write()
    assert _b1.recv(1 << 20) == _b2.recv(1 << 20)


def test_the_other_cases_are_paho_s() -> None:
    # paho's window full: paho queues the message itself (no packet yet).
    client, _broker = _client(max_inflight=1)
    publish_qos1(client, "a", b"1", False)
    rc, mid = publish_qos1(client, "a", b"2", False)
    assert rc == 0 and client._out_messages[mid].state == mqtt.mqtt_ms_queued and len(client._out_packet) == 1
    # Debug logging: paho's path, which logs the message.
    client, _broker = _client()
    lines: list[str] = []
    client.on_log = lambda c, u, level, buf: lines.append(buf)
    publish_qos1(client, "a", b"1", False)
    assert any("Sending PUBLISH" in line for line in lines)
    client, _broker = _client()
    logger = logging.getLogger("t-publish-qos1")
    logger.setLevel(logging.DEBUG)
    client.enable_logger(logger)
    assert publish_qos1(client, "a", b"1", False) == (0, 1)
    # No connection: what paho says.
    client, _broker = _client()
    client._sock = None
    rc, _mid = publish_qos1(client, "a", b"1", False)
    assert rc == mqtt.MQTT_ERR_NO_CONN
