"""MQTT 5 in the daemon's sink, against a real Mosquitto: message expiry on per-frame messages (seen by an MQTT 5
subscriber and applied by the broker), the fallback to MQTT 3.1.1 for a broker that refuses MQTT 5, and command
request/response (response topic, correlation data)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.protocol.envelope import KINDS
from edge.runtime.publish.command_channel import CommandChannel
from edge.runtime.publish.mqtt import MqttSink
from tests.support.broker import Broker
from tests.support.mqtt import (
    Collector,
    assert_in_order_without_gaps,
    event_body,
    faces_body,
    sink_config,
    summary_body,
    wait_until,
)


class V5Subscriber:
    """An MQTT 5 client that keeps every message with its properties; ``session_s`` > 0 keeps its session
    (and the broker queues for it) while it is away."""

    def __init__(self, broker: Broker, topic: str, client_id: str, session_s: int = 0) -> None:
        self.broker, self.topic, self.session_s = broker, topic, session_s
        self.messages: list[mqtt.MQTTMessage] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(self.topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = lambda c, u, msg: self.messages.append(msg)

    def start(self) -> V5Subscriber:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_s
        self._subscribed.clear()
        self.client.connect(self.broker.host, self.broker.port, keepalive=10, clean_start=self.session_s == 0,
                            properties=props)
        self.client.loop_start()
        assert self._subscribed.wait(5)
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def json_messages(self) -> list[mqtt.MQTTMessage]:
        """The messages on the JSON kinds' topics (not availability)."""
        return [m for m in list(self.messages) if m.topic.rsplit("/", 1)[-1] in KINDS]

    def kinds(self) -> list[str]:
        return [json.loads(m.payload)["kind"] for m in self.json_messages()]


def _expiry(msg: mqtt.MQTTMessage) -> int | None:
    return getattr(msg.properties, "MessageExpiryInterval", None)


def test_faces_messages_expire_and_the_rest_do_not(broker, tmp_path):
    sink = MqttSink(sink_config(tmp_path / "state", broker, faces_expiry_s=1))
    live = V5Subscriber(broker, "emotion/dev1/+", "live").start()
    away = V5Subscriber(broker, "emotion/dev1/+", "away", session_s=300).start()
    away.stop()  # its session stays: the broker queues QoS 1 messages for it
    try:
        assert sink.wait_connected(10)
        assert sink.connection_state()["protocol"] == "5"
        sink.publish("faces", faces_body(1))
        sink.publish("summary", summary_body())
        sink.publish("events", event_body(1))
        assert sink.flush(10)
        assert wait_until(lambda: {"faces", "summary", "events"} <= set(live.kinds()))
        by_kind = {json.loads(m.payload)["kind"]: m for m in live.json_messages()}
        assert _expiry(by_kind["faces"]) == 1
        assert _expiry(by_kind["summary"]) is None and _expiry(by_kind["events"]) is None
        time.sleep(2.2)  # longer than the faces expiry
        away.messages.clear()
        away.start()
        assert wait_until(lambda: {"summary", "events"} <= set(away.kinds()))
        time.sleep(0.3)
        assert "faces" not in away.kinds(), "the broker discarded the stale per-frame message"
    finally:
        live.stop()
        away.stop()
        sink.close(2)


def test_no_expiry_when_it_is_turned_off(broker, tmp_path):
    sink = MqttSink(sink_config(tmp_path / "state", broker, faces_expiry_s=0))
    sub = V5Subscriber(broker, "emotion/dev1/faces", "sub").start()
    try:
        assert sink.wait_connected(10)
        sink.publish("faces", faces_body(1))
        assert wait_until(lambda: sub.messages)
        assert _expiry(sub.messages[0]) is None
    finally:
        sub.stop()
        sink.close(2)


class V311OnlyBroker:
    """What an MQTT 3.1.1-only broker does in front of the real one: a CONNECT of protocol level 5 gets the
    3.1.1 CONNACK "unacceptable protocol version" (MQTT 3.1.1 section 3.1.2.2) and the connection is closed;
    a 3.1.1 connection is passed through to Mosquitto byte for byte."""

    def __init__(self, upstream: Broker) -> None:
        self.upstream = upstream
        self.levels: list[int] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = "127.0.0.1", self._server.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self._server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        head = b""
        while len(head) < 9:  # fixed header (2+), then protocol name (6) and level: enough for a short CONNECT
            chunk = conn.recv(64)
            if not chunk:
                conn.close()
                return
            head += chunk
        i = 1
        while head[i] & 0x80:  # the remaining-length varint
            i += 1
        level = head[i + 1 + 6]
        self.levels.append(level)
        if level == 5:
            conn.sendall(b"\x20\x02\x00\x01")
            conn.close()
            return
        up = socket.create_connection((self.upstream.host, self.upstream.port))
        up.sendall(head)

        def pipe(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=pipe, args=(conn, up), daemon=True).start()
        threading.Thread(target=pipe, args=(up, conn), daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._server.close()


def test_a_broker_that_refuses_mqtt5_gets_mqtt311_and_loses_nothing(broker, tmp_path):
    old = V311OnlyBroker(broker)
    col = Collector(broker).start()
    cfg = sink_config(tmp_path / "state", None, host=old.host, port=old.port, reconnect_min_s=5, reconnect_max_s=10)
    sink = MqttSink(cfg)
    try:
        # Connected well before the 5 s backoff: the downgrade retries at once.
        assert sink.wait_connected(4)
        assert old.levels[:2] == [5, 4]
        assert sink.connection_state() == {"connected": True, "refused": False, "error": None, "protocol": "3.1.1"}
        seqs = [sink.publish("faces", faces_body(i)) for i in range(50)]
        assert sink.flush(10)
        assert col.wait_for(lambda c: len(c.unique_seqs()) >= 50)
        assert_in_order_without_gaps(col.unique_seqs(), range(seqs[0], seqs[-1] + 1))
    finally:
        sink.close(2)
        col.stop()
        old.close()


def _request(client: mqtt.Client, payload: str, response_topic: str, correlation: bytes) -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = response_topic
    props.CorrelationData = correlation
    client.publish("emotion/dev1/command", payload, qos=1, properties=props).wait_for_publish(5)


def test_commands_answer_the_response_topic_with_the_correlation_data(broker, tmp_path):
    cfg = sink_config(tmp_path / "state", broker)
    sink = MqttSink(cfg)
    handled = []

    def handler(cmd):
        handled.append(cmd)
        body = {"event": "command", "track_id": None, "command": cmd["command"], "ok": True, "detail": "done"}
        sink.publish("events", body)
        return body

    channel = CommandChannel(sink.session, cfg, handler)
    channel.start()
    replies = V5Subscriber(broker, "requester/replies/#", "requester").start()
    events = Collector(broker, topic="emotion/dev1/events").start()
    try:
        assert sink.wait_subscribed(10)
        _request(replies.client, '{"command": "publish_status"}', "requester/replies/1", b"\x00corr-1")
        _request(replies.client, "not json", "requester/replies/2", b"corr-2")
        # A response topic inside the device's topic tree is not answered (events still are).
        _request(replies.client, '{"command": "publish_status"}', "emotion/dev1/status", b"corr-3")
        assert wait_until(lambda: len(replies.messages) >= 2)
        assert events.wait_for(lambda c: len(c.envelopes("events")) >= 3)
        time.sleep(0.3)
        by_topic = {m.topic: m for m in replies.messages}
        assert set(by_topic) == {"requester/replies/1", "requester/replies/2"}
        first = by_topic["requester/replies/1"]
        assert first.properties.CorrelationData == b"\x00corr-1"
        assert json.loads(first.payload) == {"device_id": "dev1", "event": "command", "track_id": None,
                                             "command": "publish_status", "ok": True, "detail": "done"}
        assert not first.retain
        bad = json.loads(by_topic["requester/replies/2"].payload)
        assert bad["ok"] is False and bad["command"] is None and "not JSON" in bad["detail"]
        assert by_topic["requester/replies/2"].properties.CorrelationData == b"corr-2"
        assert len(handled) == 2
    finally:
        replies.stop()
        events.stop()
        channel.close()
        sink.close(2)


def test_a_wildcard_response_topic_is_not_answered_and_keeps_the_session(broker, tmp_path):
    """paho refuses to publish to a topic with '+' or '#': such a response topic is refused up front, so it can
    neither raise in the network loop nor cost the session."""
    cfg = sink_config(tmp_path / "state", broker)
    sink = MqttSink(cfg)
    channel = CommandChannel(sink.session, cfg, lambda cmd: {"event": "command", "track_id": None,
                                                             "command": cmd["command"], "ok": True, "detail": "done"})
    channel.start()
    replies = V5Subscriber(broker, "requester/#", "requester-w").start()
    try:
        assert sink.wait_subscribed(10)
        _request(replies.client, '{"command": "publish_status"}', "requester/+/x", b"c1")
        _request(replies.client, '{"command": "publish_status"}', "requester/#", b"c2")
        _request(replies.client, '{"command": "publish_status"}', "requester/ok", b"c3")
        assert wait_until(lambda: any(m.topic == "requester/ok" for m in replies.messages))
        assert sink.connected and sink.connection_state()["error"] is None
        assert {m.topic for m in replies.messages} == {"requester/ok"}
    finally:
        replies.stop()
        channel.close()
        sink.close(2)
