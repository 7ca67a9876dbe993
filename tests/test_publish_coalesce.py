"""QoS 1 packets launched together leave in one socket write, in order, and are acknowledged by id."""

from __future__ import annotations

import socket
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.publish import coalesce


def _client() -> tuple[mqtt.Client, socket.socket]:
    """A paho client on one end of a socket pair, set up as aiomqtt runs it (writes deferred)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t")
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    broker.settimeout(5)
    client._sock = ours
    client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED  # type: ignore[attr-defined]
    client.on_socket_register_write = lambda c, u, s: None
    client.on_socket_unregister_write = lambda c, u, s: None
    return client, broker


def _packets(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(first byte, topic, payload) of each PUBLISH in a stream."""
    out = []
    pos = 0
    while pos < len(data):
        mult, length, i = 1, 0, pos + 1
        while True:
            length += (data[i] & 127) * mult
            mult *= 128
            i += 1
            if data[i - 1] < 128:
                break
        body = data[i : i + length]
        tlen = (body[0] << 8) | body[1]
        skip = 2 if data[pos] & 0x06 else 0  # the message id of QoS 1
        out.append((data[pos], body[2 : 2 + tlen], body[2 + tlen + skip :]))
        pos = i + length
    return out


def test_queued_qos1_packets_go_out_in_one_write_in_order() -> None:
    client, broker = _client()
    acked: list[int] = []
    client.on_publish = lambda c, u, mid, r, p: acked.append(mid)
    sent: list[tuple[str, bytes, int]] = [(f"t/{k}", f"payload {k}".encode() * (k + 1), 1) for k in range(5)]
    sent.append(("t/qos0", b"zero", 0))
    sent += [(f"t/{k}", f"late {k}".encode(), 1) for k in range(5, 8)]
    mids = [client.publish(topic, payload, qos).mid for topic, payload, qos in sent]
    writes: list[int] = []
    real_send = client._sock_send

    def counting_send(buf: Any) -> int:
        n = real_send(buf)
        writes.append(n)
        return n

    client._sock_send = counting_send  # type: ignore[method-assign]
    coalesce(client)
    # Five QoS 1 packets, the QoS 0 one as it was, three QoS 1 packets.
    assert len(client._out_packet) == 3
    client.loop_write()
    assert len(writes) == 3 and not client._out_packet
    data = b""
    while len(data) < sum(writes):
        data += broker.recv(1 << 16)
    got = _packets(data)
    assert [(topic.decode(), payload) for _first, topic, payload in got] == [(t, p) for t, p, _q in sent]
    # The PUBACKs still find their messages by id.
    for mid, (_t, _p, qos) in zip(mids, sent, strict=True):
        if qos:
            broker.sendall(b"\x40\x02" + mid.to_bytes(2, "big"))
    while len(acked) < len(sent):
        client.loop_read()
    assert sorted(acked) == sorted(mids)


def test_a_packet_paho_has_begun_to_write_is_left_alone() -> None:
    client, _broker = _client()
    for k in range(3):
        client.publish(f"t/{k}", b"x" * 10, 1)
    client._out_packet[0]["pos"] = 3  # partly written
    client._out_packet[0]["to_process"] -= 3
    coalesce(client)
    assert len(client._out_packet) == 2 and client._out_packet[0]["pos"] == 3
