"""MqttSink against a real Mosquitto: delivery, order across broker restarts and absence, retained state,
commands and extension hooks."""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from edge.runtime.publish import open_publisher
from edge.runtime.publish.command_channel import CommandChannel
from edge.runtime.publish.mqtt import MqttSink
from tests.support.mqtt import (
    Collector,
    assert_in_order_without_gaps,
    event_body,
    faces_body,
    sink_config,
    status_body,
    summary_body,
    validator,
    wait_until,
)


def _publish_mix(sink: MqttSink, n: int, start: int = 0) -> list[int]:
    seqs = []
    for i in range(start, start + n):
        if i % 50 == 0:
            seqs.append(sink.publish("status", status_body(frames=i)))
        elif i % 25 == 0:
            seqs.append(sink.publish("summary", summary_body()))
        elif i % 10 == 0:
            seqs.append(sink.publish("events", event_body(i)))
        else:
            seqs.append(sink.publish("faces", faces_body(i, 1 + i % 3)))
    return seqs


def test_all_messages_arrive_valid_and_in_order(broker, tmp_path):
    col = Collector(broker).start()
    sink = MqttSink(sink_config(tmp_path / "state", broker))
    try:
        seqs = _publish_mix(sink, 500)
        assert seqs == list(range(1, 501))
        assert col.wait_for(lambda c: len(c.unique_seqs()) >= 500)
        assert sink.flush(5)
        stats = sink.stats()
        assert (stats["pending"], stats["dropped"], stats["mqtt"]["connected"]) == (0, 0, True)
        sink.publish("status", {**status_body("offline", frames=500), "fps": 0.0})  # the daemon's last status
    finally:
        sink.close()
    assert_in_order_without_gaps(col.unique_seqs(), range(1, 502))  # + the last status, sent before close()
    for env in col.envelopes():
        validator().validate(env)
        assert env["device_id"] == "dev1"
    kinds = {env["kind"] for env in col.envelopes()}
    assert kinds == {"status", "faces", "summary", "events"}
    for t in ("emotion/dev1/status", "emotion/dev1/faces", "emotion/dev1/summary", "emotion/dev1/events"):
        assert col.raw(t), f"nothing on {t}"
    col.stop()


def test_retained_status_and_availability_then_clean_offline(broker, tmp_path):
    sink = MqttSink(sink_config(tmp_path / "state", broker))
    assert sink.wait_connected(5)
    sink.publish("status", status_body("running", frames=42, stats=sink.stats()))
    assert sink.flush(5)
    # A subscriber arriving later gets the retained state.
    late = Collector(broker, client_id="late").start()
    assert late.wait_for(lambda c: c.raw("emotion/dev1/availability") and c.envelopes("status"))
    assert late.raw("emotion/dev1/availability")[-1] == b"online"
    status = late.envelopes("status")[-1]
    assert status["frames"] == 42 and status["mqtt"]["connected"] is True and status["state"] == "running"
    # The daemon's last status (Daemon._shutdown), then the close.
    sink.publish("status", {**status_body("offline", frames=42, stats=sink.stats()), "fps": 0.0})
    sink.close()
    assert late.wait_for(lambda c: c.raw("emotion/dev1/availability")[-1:] == [b"offline"])
    assert late.wait_for(lambda c: c.envelopes("status")[-1]["state"] == "offline")
    offline = late.envelopes("status")[-1]
    validator().validate(offline)
    assert offline["frames"] == 42
    late.stop()
    # And it is retained: a new subscriber sees offline without anyone publishing.
    later = Collector(broker, client_id="later").start()
    assert later.wait_for(lambda c: c.raw("emotion/dev1/availability") == [b"offline"])
    assert later.wait_for(lambda c: [e["state"] for e in c.envelopes("status")] == ["offline"])
    later.stop()


def test_broker_restart_mid_stream_loses_and_reorders_nothing(broker, tmp_path):
    col = Collector(broker).start()
    sink = MqttSink(sink_config(tmp_path / "state", broker))
    total = 600
    done = threading.Event()

    def produce() -> None:
        for i in range(total):
            sink.publish("faces" if i % 10 else "events", faces_body(i) if i % 10 else event_body(i))
            time.sleep(0.002)
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        assert col.wait_for(lambda c: len(c.unique_seqs()) >= 100)
        broker.restart()  # mid-stream: the producer keeps going while the broker is away
        producer.join(20)
        assert done.is_set()
        assert col.wait_for(lambda c: len(c.unique_seqs()) >= total, timeout=12)
    finally:
        sink.close()
        col.stop()
    assert_in_order_without_gaps(col.unique_seqs(), range(1, total + 1))
    for env in col.envelopes():
        validator().validate(env)


def test_broker_absent_at_start_then_everything_arrives(broker, tmp_path):
    # Register the collector's persistent session, then take the broker away before the device starts.
    col = Collector(broker).start()
    col.stop()
    broker.stop()
    sink = MqttSink(sink_config(tmp_path / "state", broker))
    try:
        seqs = _publish_mix(sink, 120)
        assert wait_until(lambda: "unreachable" in (sink.connection_state()["error"] or "")), sink.connection_state()
        assert not sink.connected and sink.stats()["pending"] == 120
        broker.start()
        col.start()
        assert sink.flush(10), sink.stats()
        assert col.wait_for(lambda c: len(c.unique_seqs()) >= 120), len(col.unique_seqs())
    finally:
        sink.publish("status", {**status_body("offline", frames=120), "fps": 0.0})  # the daemon's last status
        sink.close()
        col.stop()
    assert_in_order_without_gaps(col.unique_seqs(), range(seqs[0], seqs[-1] + 2))


def test_commands_reach_the_handler_and_bad_ones_are_answered(broker, tmp_path):
    got: list[dict] = []

    def handle(cmd: dict) -> None:
        if cmd["command"] == "explode":
            raise RuntimeError("boom")
        got.append(cmd)

    sink = MqttSink(sink_config(tmp_path / "state", broker))
    channel = CommandChannel(sink.session, sink_config(tmp_path / "state", broker), handle)
    channel.start()
    col = Collector(broker, topic="emotion/dev1/events", client_id="events").start()
    assert sink.wait_connected(5)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="operator")
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    try:
        assert sink.wait_subscribed(5), "the broker must acknowledge the command topic subscription"
        pub.publish("emotion/dev1/command", json.dumps({"command": "publish_status"}), qos=1).wait_for_publish(5)
        pub.publish("emotion/dev1/command", b"{not json", qos=1).wait_for_publish(5)
        pub.publish("emotion/dev1/command", json.dumps(["reload_model"]), qos=1).wait_for_publish(5)
        pub.publish("emotion/dev1/command", json.dumps({"command": "explode", "request_id": "r-9"}),
                    qos=1).wait_for_publish(5)
        assert col.wait_for(lambda c: len(c.envelopes("events")) >= 3)
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == [{"command": "publish_status"}]
        answers = col.envelopes("events")
        assert all(a["event"] == "command" and a["ok"] is False for a in answers)
        assert "not JSON" in answers[0]["detail"] and "'command'" in answers[1]["detail"]
        assert answers[2]["detail"] == "command failed: boom" and answers[2]["request_id"] == "r-9"
        for a in answers:
            validator().validate(a)
    finally:
        pub.loop_stop()
        channel.close()
        sink.close()
        col.stop()


def test_extension_hooks_resubscribe_and_run_after_every_reconnect(broker, tmp_path):
    sink = MqttSink(sink_config(tmp_path / "state", broker))
    assert sink.wait_connected(5)  # extensions usually register after the sink is up
    received: list[tuple[str, bytes]] = []
    connects: list[float] = []

    def on_connect() -> None:
        connects.append(time.monotonic())
        sink.session.publish_raw("homeassistant/sensor/dev1/config", b'{"name":"x"}', retain=True)

    sink.session.add_connect_hook(on_connect)
    sink.session.subscribe("emotion/group/+/model/push", lambda t, p: received.append((t, p)))
    col = Collector(broker, topic="homeassistant/#", client_id="ha").start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pusher")
    try:
        deadline = time.monotonic() + 5
        while not connects and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(connects) == 1, "a hook added while connected runs right away"
        broker.restart()
        deadline = time.monotonic() + 8
        while len(connects) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(connects) >= 2, "the connect hook must run again after a reconnect"
        assert sink.wait_connected(5)
        assert sink.wait_subscribed(5), "every subscription is made (and acknowledged) again after a reconnect"
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        pub.publish("emotion/group/lab/model/push", b"bundle", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received == [("emotion/group/lab/model/push", b"bundle")], "subscription must survive the restart"
        assert col.wait_for(lambda c: c.raw("homeassistant/sensor/dev1/config"))
    finally:
        pub.loop_stop()
        sink.close()
        col.stop()


def test_open_publisher_uses_a_broker_on_localhost_when_no_host_is_set(broker, tmp_path):
    sink = open_publisher(sink_config(tmp_path / "state", None, port=broker.port))[0]
    try:
        assert isinstance(sink, MqttSink) and sink.host == "localhost"
        assert sink.wait_connected(5)
    finally:
        sink.close()


def test_a_frozen_broker_never_blocks_publish_and_bounds_what_is_in_flight(broker, tmp_path):
    """The broker process stops reading (SIGSTOP, like a hung broker or a dead link without a FIN): publish()
    keeps returning at once, at most mqtt.max_inflight messages await their PUBACK, and everything arrives in
    order once the broker runs again."""
    import signal

    col = Collector(broker, topic="emotion/dev1/+", client_id="frozen-watch").start()
    sink = MqttSink(sink_config(tmp_path / "state", broker, max_inflight=5))
    try:
        assert sink.wait_connected(10) and sink.wait_subscribed(10)
        broker.proc.send_signal(signal.SIGSTOP)
        seqs: list[int] = []
        publisher = threading.Thread(target=lambda: seqs.extend(_publish_mix(sink, 200)), daemon=True)
        publisher.start()
        publisher.join(30)
        assert not publisher.is_alive(), "publish() waited for the network"
        assert len(seqs) == 200
        assert wait_until(lambda: len(sink.pump.in_flight) == 5)  # the window filled, and went no further
        time.sleep(0.3)
        assert len(sink.pump.in_flight) == 5 and sink.stats()["pending"] >= 200
        broker.proc.send_signal(signal.SIGCONT)
        assert sink.flush(30), sink.stats()
        assert col.wait_for(lambda c: len(c.unique_seqs()) >= 200)
        assert_in_order_without_gaps([s for s in col.unique_seqs() if s >= seqs[0]], range(seqs[0], seqs[-1] + 1))
    finally:
        if broker.proc and broker.proc.poll() is None:
            broker.proc.send_signal(signal.SIGCONT)
        sink.close(2)
        col.stop()


def test_reconnects_back_off_exponentially_up_to_the_maximum(tmp_path, monkeypatch):
    """No broker on the port, past the quick window: the waits between attempts double from reconnect_min_s and
    stop at reconnect_max_s (checked through the wait seam, without waiting them)."""
    import edge.runtime.publish.connection
    from tests.support.broker import free_port

    monkeypatch.setattr(edge.runtime.publish.connection, "QUICK_RECONNECT_S", 0.0)
    delays: list[float] = []
    cfg = sink_config(tmp_path / "state", None, host="127.0.0.1", port=free_port())
    sink = MqttSink(cfg, backoff_wait=lambda d: (delays.append(d), time.sleep(0.005)))
    try:
        assert wait_until(lambda: len(delays) >= 6)
    finally:
        sink.close(timeout=0.2)
    assert delays[:6] == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_an_acknowledged_session_resets_the_backoff(tmp_path, broker_factory, monkeypatch):
    """After failures have grown the wait to reconnect_max_s, a session the broker accepted and acknowledged makes
    the next reconnect wait reconnect_min_s again, however short it was (quick window off, waits recorded)."""
    import edge.runtime.publish.connection

    monkeypatch.setattr(edge.runtime.publish.connection, "QUICK_RECONNECT_S", 0.0)
    broker = broker_factory()  # made, not started: the first attempts fail
    delays: list[float] = []
    cfg = sink_config(tmp_path / "state", broker)  # reconnect_min_s 0.2, reconnect_max_s 1.0
    sink = MqttSink(cfg, backoff_wait=lambda d: (delays.append(d), time.sleep(0.005)))
    try:
        assert wait_until(lambda: len(delays) >= 5)
        assert delays[3:5] == pytest.approx([1.0, 1.0])
        broker.start()
        assert wait_until(lambda: sink.connection.alive() and sink.connection._acknowledged)
        before = len(delays)
        broker.stop()
        assert wait_until(lambda: len(delays) >= before + 2)
    finally:
        sink.close(timeout=0.2)
    assert delays[before:before + 2] == pytest.approx([0.2, 0.4])


def test_after_a_loss_reconnects_are_quick_for_a_while(tmp_path, broker_factory):
    """Within QUICK_RECONNECT_S of losing an acknowledged session every attempt waits only reconnect_min_s, so a
    broker that returns after a short outage is found again within that."""
    broker = broker_factory()
    broker.start()
    delays: list[float] = []
    cfg = sink_config(tmp_path / "state", broker)  # reconnect_min_s 0.2, reconnect_max_s 1.0
    sink = MqttSink(cfg, backoff_wait=lambda d: (delays.append(d), time.sleep(0.005)))
    try:
        assert wait_until(lambda: sink.connection._acknowledged)
        broker.stop()
        assert wait_until(lambda: len(delays) >= 8)
        assert sink.connection.alive()
    finally:
        sink.close(timeout=0.2)
    assert delays[:8] == pytest.approx([0.2] * 8)
