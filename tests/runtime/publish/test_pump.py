"""The outbox pump (edge.runtime.publish.pump) over a real paho client and a real Mosquitto: a bounded window of
messages in flight, in seq order; a message leaves the outbox only after its PUBACK; a session that ends resends
what was unacknowledged; a message paho refuses is dropped (counted) instead of blocking the ones after it."""

from __future__ import annotations

import json
import threading

import paho.mqtt.client as mqtt
import pytest

from edge.runtime.publish.outbox import Outbox
from edge.runtime.publish.pump import OutboxPump
from tests.support.mqtt import Collector, wait_until


@pytest.fixture
def client(broker):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pump-test")
    c.connect(broker.host, broker.port, keepalive=5)
    c.loop_start()
    assert wait_until(c.is_connected)
    yield c
    c.disconnect()
    c.loop_stop()


def fill(outbox: Outbox, n: int, topic: str = "emotion/dev1/events") -> list[int]:
    return [outbox.add("events", topic, lambda seq: json.dumps({"seq": seq}).encode()) for _ in range(n)]


def seqs_received(col: Collector) -> list[int]:
    return [json.loads(p)["seq"] for _, p, _ in col.messages]


def test_a_bounded_window_goes_out_in_seq_order_and_leaves_the_outbox_only_once_acknowledged(broker, client, tmp_path):
    col = Collector(broker, topic="emotion/dev1/events").start()
    outbox = Outbox(tmp_path / "outbox.db")
    sent = fill(outbox, 5)
    pump = OutboxPump(outbox, max_inflight=2)
    try:
        pump.tick(client)
        assert list(pump.in_flight) == sent[:2]  # the window, oldest first
        assert outbox.pending() == 5  # nothing is removed before its PUBACK is seen
        for _ in range(5):  # 5 messages, 2 at a time: at most 3 rounds
            assert wait_until(lambda: all(info.is_published() for info in pump.in_flight.values()))
            pump.tick(client)  # settles the acknowledged ones, then refills the window
            assert len(pump.in_flight) <= 2
        assert outbox.pending() == 0
        assert col.wait_for(lambda c: len(c.messages) == 5)
        assert seqs_received(col) == sent
    finally:
        col.stop()
        outbox.close()


def test_after_a_session_ends_the_unacknowledged_messages_go_out_again_from_the_oldest(broker, client, tmp_path):
    outbox = Outbox(tmp_path / "outbox.db")
    sent = fill(outbox, 3)
    pump = OutboxPump(outbox, max_inflight=10)
    try:
        pump.tick(client)
        assert list(pump.in_flight) == sent
        pump.reset()  # the session ended before anything was settled
        assert not pump.in_flight and outbox.pending() == 3
        pump.tick(client)
        assert list(pump.in_flight) == sent  # resent in order (QoS 1: at least once)
        assert wait_until(lambda: all(info.is_published() for info in pump.in_flight.values()))
        pump.settle()
        assert outbox.pending() == 0 and not pump.in_flight
    finally:
        outbox.close()


def test_a_message_paho_refuses_is_dropped_and_counted_and_the_next_one_still_goes(broker, client, tmp_path):
    col = Collector(broker, topic="emotion/dev1/events").start()
    outbox = Outbox(tmp_path / "outbox.db")
    bad = fill(outbox, 1, topic="emotion/dev1/#")  # a wildcard: no PUBLISH may carry it
    good = fill(outbox, 1)
    pump = OutboxPump(outbox, max_inflight=10)
    try:
        pump.tick(client)
        assert list(pump.in_flight) == good and bad[0] not in pump.in_flight
        assert outbox.dropped() == 1
        assert wait_until(lambda: all(info.is_published() for info in pump.in_flight.values()))
        pump.settle()
        assert outbox.pending() == 0
        assert col.wait_for(lambda c: len(c.messages) == 1)
        assert seqs_received(col) == good
    finally:
        col.stop()
        outbox.close()


def _client5(broker, client_id: str) -> mqtt.Client:
    """An MQTT 5 client (message expiry is an MQTT 5 property)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert wait_until(client.is_connected)
    return client


def test_faces_carry_their_expiry_on_mqtt5_and_other_kinds_none(broker, tmp_path):
    outbox = Outbox(tmp_path / "outbox.db")
    pump = OutboxPump(outbox, max_inflight=10, expiry_s={"faces": 7, "summary": 0})
    got: list[tuple[str, int | None]] = []
    subscribed = threading.Event()
    sub = _client5(broker, "watcher")
    sub.on_message = lambda c, u, m: got.append((m.topic, getattr(m.properties, "MessageExpiryInterval", None)))
    sub.on_subscribe = lambda *args: subscribed.set()
    sub.subscribe("lab/dev1/#", qos=1)
    client = _client5(broker, "pump-3")
    try:
        assert subscribed.wait(10)
        for kind in ("faces", "summary", "events"):
            outbox.add(kind, f"lab/dev1/{kind}", lambda seq: b"{}")
        assert wait_until(lambda: (pump.tick(client), outbox.pending() == 0)[1])
        assert wait_until(lambda: len(got) == 3), got
    finally:
        for c in (client, sub):
            c.loop_stop()
            c.disconnect()
        outbox.close()
    expiry = dict(got)
    assert expiry["lab/dev1/faces"] is not None and 0 < expiry["lab/dev1/faces"] <= 7
    assert expiry["lab/dev1/summary"] is None and expiry["lab/dev1/events"] is None
