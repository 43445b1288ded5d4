"""The outbox pump (edge.runtime.publish.pump) over a real Mosquitto: an in-flight window in seq order, removal
from the outbox only on PUBACK, a fresh session resending from the oldest unacknowledged message, and MQTT 5
expiry on the kinds that have one."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt

from edge.runtime.publish.outbox import Outbox
from edge.runtime.publish.pump import OutboxPump
from tests.mqtt_support import Collector, wait_until


def _client(broker, client_id: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert wait_until(client.is_connected)
    return client


def _fill(outbox: Outbox, n: int) -> list[int]:
    return [outbox.add("events", "lab/dev1/events", lambda seq: f'{{"seq":{seq}}}'.encode()) for _ in range(n)]


def test_the_window_fills_in_order_and_only_acknowledged_messages_leave_the_outbox(broker, tmp_path):
    outbox = Outbox(tmp_path / "outbox.db")
    pump = OutboxPump(outbox, max_inflight=3)
    seqs = _fill(outbox, 8)
    col = Collector(broker, topic="lab/dev1/#").start()
    client = _client(broker, "pump")
    try:
        pump.tick(client)
        assert list(pump.in_flight) == seqs[:3], "no more than max_inflight at once, oldest first"
        assert outbox.pending() == 8, "sent is not done: nothing leaves before its PUBACK"
        assert wait_until(lambda: all(info.is_published() for info in pump.in_flight.values()))
        pump.tick(client)  # settles the three, sends the next three
        assert outbox.pending() == 5 and list(pump.in_flight) == seqs[3:6]
        assert wait_until(lambda: (pump.tick(client), outbox.pending() == 0)[1]), outbox.pending()
        assert col.wait_for(lambda c: len(c.messages) >= 8)
    finally:
        client.loop_stop()
        client.disconnect()
        col.stop()
        outbox.close()
    assert [t for t, _, _ in col.messages] == ["lab/dev1/events"] * 8
    assert [int(p.decode().split(":")[1].rstrip("}")) for _, p, _ in col.messages] == seqs


def test_a_new_session_resends_from_the_oldest_unacknowledged_message(broker, tmp_path):
    outbox = Outbox(tmp_path / "outbox.db")
    pump = OutboxPump(outbox, max_inflight=4)
    seqs = _fill(outbox, 4)
    # A session whose PUBACKs are never read (its network loop does not run after the CONNACK): it ends with all
    # four in flight.
    first = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="first", protocol=mqtt.MQTTv5)
    first.connect(broker.host, broker.port)
    assert wait_until(lambda: (first.loop(0.05), first.is_connected())[1])
    pump.tick(first)
    assert list(pump.in_flight) == seqs and not any(i.is_published() for i in pump.in_flight.values())
    first.disconnect()
    pump.reset()
    assert not pump.in_flight and outbox.pending() == 4, "what was in flight stays in the outbox"
    client = _client(broker, "second")
    try:
        pump.tick(client)
        assert list(pump.in_flight) == seqs, "the next session starts again from the oldest message"
        assert wait_until(lambda: (pump.tick(client), outbox.pending() == 0)[1])
    finally:
        client.loop_stop()
        client.disconnect()
        outbox.close()


def test_faces_carry_their_expiry_on_mqtt5_and_other_kinds_none(broker, tmp_path):
    outbox = Outbox(tmp_path / "outbox.db")
    pump = OutboxPump(outbox, max_inflight=10, expiry_s={"faces": 7, "summary": 0})
    got: list[tuple[str, int | None]] = []
    subscribed = threading.Event()
    sub = _client(broker, "watcher")
    sub.on_message = lambda c, u, m: got.append((m.topic, getattr(m.properties, "MessageExpiryInterval", None)))
    sub.on_subscribe = lambda *args: subscribed.set()
    sub.subscribe("lab/dev1/#", qos=1)
    client = _client(broker, "pump-3")
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
