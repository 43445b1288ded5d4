"""The retained plain-value topics (``<prefix>/<device>/state/...``) against a real Mosquitto: only the newest value
goes out after an outage, a broker that lost its retained store gets them again, the JSON kinds keep their
order meanwhile, and the daemon on the demo publishes them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from edge.protocol.topics import STATE_FACE_COUNT, STATE_TOPICS
from edge.runtime.publish.command_channel import CommandChannel
from edge.runtime.publish.mqtt import MqttSink
from tests.support.mqtt import Collector, assert_in_order_without_gaps, event_body, sink_config, wait_until
from tests.support.paths import REPO as ROOT


def _retained(broker, topic: str = "emotion/#") -> dict[str, bytes]:
    late = Collector(broker, topic=topic, client_id=f"late-{time.monotonic_ns()}").start()
    time.sleep(0.5)
    late.stop()
    return {t: p for t, p, retained in late.messages if retained}


def test_only_the_newest_value_goes_out_after_an_outage_and_json_order_holds(broker, tmp_path):
    col = Collector(broker).start()
    sink = MqttSink(sink_config(tmp_path / "state", broker))
    try:
        assert sink.wait_connected(10)
        first = sink.publish("events", event_body(0))
        sink.publish_state(STATE_FACE_COUNT, "1")
        # "0" first: a new sink says nobody is there until told otherwise (a crashed run's value is corrected).
        assert col.wait_for(lambda c: c.raw("emotion/dev1/state/face_count") == [b"0", b"1"])
        broker.stop()
        assert wait_until(lambda: not sink.connected)
        for i in range(2, 6):  # the broker is away: values replace each other, JSON messages queue
            sink.publish_state(STATE_FACE_COUNT, str(i))
            sink.publish("events", event_body(i))
        broker.start()
        assert sink.wait_connected(15) and sink.flush(15)
        assert col.wait_for(lambda c: b"5" in c.raw("emotion/dev1/state/face_count"))
        time.sleep(0.3)
        live = [p for t, p, retained in col.messages if t == "emotion/dev1/state/face_count" and not retained]
        # The broker may redeliver "1" to the subscriber after its restart (QoS 1: at least once); what must never
        # go out are the values that were replaced while it was away.
        deduped = [v for i, v in enumerate(live) if i == 0 or v != live[i - 1]]
        assert deduped == [b"0", b"1", b"5"], f"only the newest value after the outage: {live}"
        assert_in_order_without_gaps(col.unique_seqs(), range(first, first + 5))
    finally:
        sink.close(2)
        col.stop()


def test_a_broker_that_lost_its_retained_store_gets_the_values_again(broker_factory, tmp_path):
    broker = broker_factory("volatile", persistence=False).start()
    sink = MqttSink(sink_config(tmp_path / "state", broker))
    try:
        assert sink.wait_connected(10)
        sink.publish_state("state/paused", "ON")
        assert wait_until(lambda: _retained(broker).get("emotion/dev1/state/paused") == b"ON")
        broker.stop()
        assert wait_until(lambda: not sink.connected)
        broker.start()  # no persistence: every retained message is gone
        assert sink.wait_connected(15)
        assert wait_until(lambda: _retained(broker).get("emotion/dev1/state/paused") == b"ON", timeout=10)
    finally:
        sink.close(2)


def test_the_daemon_on_the_demo_publishes_the_plain_topics(broker, tmp_path):
    config = tmp_path / "edge.toml"
    config.write_text(f'[device]\nid = "plain"\nstate_dir = "{tmp_path / "state"}"\n'
                      "[source]\nmax_fps = 0\n[homeassistant]\nenabled = false\n"
                      "[mqtt]\nsummary_interval_s = 0.5\n")
    col = Collector(broker, topic="emotion/plain/state/#").start()
    proc = subprocess.run(
        [sys.executable, "-m", "edge", "run", "--config", str(config), "--mqtt-host", broker.host,
         "--mqtt-port", str(broker.port), "--max-frames", "40"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert col.wait_for(lambda c: c.raw("emotion/plain/state/presence")[-1:] == [b"OFF"])
    col.stop()
    assert b"ON" in col.raw("emotion/plain/state/presence"), "the demo's face was present"
    assert any(int(v) > 0 for v in col.raw("emotion/plain/state/face_count"))
    retained = _retained(broker)
    assert set(retained) >= {f"emotion/plain/{leaf}" for leaf in STATE_TOPICS}
    assert retained["emotion/plain/state/face_count"] == b"0", "a stopped device says nobody is there"
    assert retained["emotion/plain/state/paused"] == b"OFF"
    labels = set(json.loads((ROOT / "edge/models/default/manifest.json").read_text())["labels"])
    assert retained["emotion/plain/state/emotion"].decode() in labels | {"none"}


def test_a_new_sink_corrects_a_crashed_runs_retained_values_before_it_says_online(broker, tmp_path):
    seeder = Collector(broker, topic="unused/x", client_id="seeder").start()
    for leaf, value in (("state/emotion", "happy"), ("state/face_count", "2"), ("state/presence", "ON"),
                        ("availability", "offline")):  # what a crashed run leaves retained (the Will said offline)
        seeder.client.publish(f"emotion/dev1/{leaf}", value, qos=1, retain=True).wait_for_publish(5)
    seeder.stop()
    col = Collector(broker, topic="emotion/dev1/#", client_id="crash-watch").start()
    sink = MqttSink(sink_config(tmp_path / "state", broker))  # no daemon: the sink alone says it
    try:
        assert col.wait_for(lambda c: any(t.endswith("/availability") and not r for t, _, r in c.messages))
        live = [(t, v) for t, v, r in col.messages if not r]
        assert live[:4] == [("emotion/dev1/state/emotion", b"none"), ("emotion/dev1/state/face_count", b"0"),
                            ("emotion/dev1/state/presence", b"OFF"), ("emotion/dev1/availability", b"online")]
    finally:
        sink.close(2)
        col.stop()


def test_the_plain_switch_goes_through_the_command_guards(broker, tmp_path):
    cfg = sink_config(tmp_path / "state", broker, command_rate=2.0, max_command_bytes=1024)
    ran: list[dict] = []
    sink = MqttSink(cfg)
    channel = CommandChannel(sink.session, cfg, lambda cmd: ran.append(cmd) or {"event": "command"})
    channel.start()
    col = Collector(broker, topic="emotion/dev1/events", client_id="guards").start()
    try:
        assert sink.wait_subscribed(10)
        col.client.publish("emotion/dev1/paused/set", " On ", qos=1).wait_for_publish(5)
        assert wait_until(lambda: ran == [{"command": "pause"}])
        time.sleep(1.1)  # the bucket refills (2 per second)
        col.client.publish("emotion/dev1/paused/set", "x" * 2000, qos=1).wait_for_publish(5)
        assert col.wait_for(lambda c: any(e["code"] == "oversized" for e in c.envelopes("events")))
        time.sleep(1.1)
        for _ in range(20):  # a flood: at most the bucket's burst is looked at
            col.client.publish("emotion/dev1/paused/set", "off", qos=1)
        assert wait_until(lambda: len(ran) >= 2)
        time.sleep(1.0)
        assert 2 <= len(ran) <= 5 and all(c == {"command": "resume"} for c in ran[1:])
    finally:
        channel.close()
        sink.close(2)
        col.stop()
