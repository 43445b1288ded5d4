"""Hostile and careless input over a real Mosquitto, in-process: oversized, deeply nested, garbage and flooded
commands, push refusals that would echo megabytes, and a TLS client at a plain port (issue 25, defects 1-3, 6)."""

from __future__ import annotations

import base64
import json
import logging
import time

import paho.mqtt.client as mqtt

from edge.config import parse_config
from edge.protocol.envelope import DETAIL_CHARS, ECHO_CHARS
from edge.runtime.models.manager import ModelManager
from edge.runtime.models.push import REASON_CHARS, ModelPushReceiver
from edge.runtime.publish.command_channel import CommandChannel
from edge.runtime.publish.mqtt import MqttSink
from tests.support.mqtt import Collector, RecordingSession, sink_config, validator, wait_until
from tests.support.push import make_keys

TOPIC = "emotion/dev1/command"


def _operator(broker) -> mqtt.Client:
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="operator")
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    return pub


def _send(pub: mqtt.Client, payload: bytes | str) -> None:
    pub.publish(TOPIC, payload, qos=1).wait_for_publish(30)


def _long_lines(caplog, limit: int = 1000) -> list[int]:
    return [len(r.getMessage()) for r in caplog.records if len(r.getMessage()) > limit]


def test_oversized_nested_and_garbage_commands_get_short_coded_answers(broker, tmp_path, caplog):
    """Before: a big payload was parsed whole and echoed (an 80 MB answer from 40 MB), and "[[[[..." raised
    RecursionError out of the handler (a traceback and no answer)."""
    caplog.set_level(logging.INFO)
    got: list[dict] = []

    def handle(cmd: dict) -> None:
        got.append(cmd)
        raise RuntimeError("Z" * 100_000)  # a handler failure that would quote its input

    cfg = sink_config(tmp_path / "state", broker)
    sink = MqttSink(cfg)
    channel = CommandChannel(sink.session, cfg, handle)
    channel.start()
    col = Collector(broker, topic="emotion/dev1/events", client_id="events").start()
    pub = _operator(broker)
    try:
        assert sink.wait_subscribed(5)
        _send(pub, json.dumps({"command": "publish_status", "pad": "x" * 200_000}))
        _send(pub, b"[" * 5000)
        _send(pub, json.dumps({"command": "A" * 5000, "request_id": "r-7"}))
        _send(pub, bytes(range(256)) * 10)
        assert col.wait_for(lambda c: len(c.envelopes("events")) >= 4), col.envelopes("events")
    finally:
        pub.loop_stop()
        channel.close()
        sink.close()
        col.stop()
    answers = col.envelopes("events")
    # The handler's failure is answered from the worker thread, the others from the network thread: their order
    # between the two threads is not part of the contract, so take the answers in the order they were sent.
    failed = [a for a in answers if a["code"] == "failed"]
    answers = [a for a in answers if a["code"] != "failed"]
    answers.insert(2, *failed)
    assert [a["code"] for a in answers] == ["oversized", "malformed", "failed", "malformed"], answers
    assert "200" in answers[0]["detail"] and "max_command_bytes = 65536" in answers[0]["detail"]
    assert "nested too deeply" in answers[1]["detail"]
    assert len(got) == 1 and len(got[0]["command"]) == 5000  # the handler gets the command itself...
    assert len(answers[2]["command"]) == ECHO_CHARS and answers[2]["request_id"] == "r-7"  # ...the answer a clip
    assert len(answers[2]["detail"]) <= DETAIL_CHARS
    for a in answers:
        validator().validate(a)
        assert len(json.dumps(a)) < 1500
    assert not _long_lines(caplog), "a log line quotes the input"
    assert not any(r.exc_info and "RecursionError" in str(r.exc_info[1].__class__) for r in caplog.records)


def test_a_command_flood_is_answered_at_the_rate_and_leaves_the_outbox_small(broker, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="edge.runtime.publish.command_channel")
    handled: list[dict] = []
    cfg = sink_config(tmp_path / "state", broker, command_rate=20.0, outbox={"memory_s": 0.05})
    sink = MqttSink(cfg)
    channel = CommandChannel(sink.session, cfg, lambda cmd: handled.append(cmd))
    channel.start()
    col = Collector(broker, topic="emotion/dev1/events", client_id="events").start()
    pub = _operator(broker)
    try:
        assert sink.wait_subscribed(5)
        started = time.monotonic()
        infos = [pub.publish(TOPIC, b"[" * 3000 if i % 2 else b"{not json", qos=1) for i in range(2000)]
        for info in infos:
            info.wait_for_publish(30)
        # Every message reached the device once the broker has nothing left for it: wait for the drops.
        assert wait_until(lambda: channel.dropped + len(col.envelopes("events")) >= 2000, 30)
        elapsed = time.monotonic() - started
        assert sink.flush(10)
    finally:
        pub.loop_stop()
        channel.close()
        sink.close()
        col.stop()
    answers = len(col.envelopes("events"))
    assert 20 <= answers <= 20 + 20 * elapsed + 5, (answers, elapsed)
    assert channel.dropped == 2000 - answers
    lines = [r.getMessage() for r in caplog.records]
    assert sum("dropping commands unanswered" in ln for ln in lines) == 1, lines  # then counted, once a minute
    assert len(lines) <= 4, lines
    on_disk = sum(p.stat().st_size for p in (tmp_path / "state").glob("outbox.db*"))
    assert on_disk < 512 * 1024, on_disk


def test_push_refusals_never_echo_unbounded_fields(tmp_path, caplog):
    """Before: a refusal quoted the push's format, key id or algorithm whole (bounded only by max_bytes)."""
    caplog.set_level(logging.WARNING)
    _, public = make_keys(tmp_path)
    cfg = parse_config({"device": {"id": "dev1", "state_dir": str(tmp_path / "state")},
                        "model_push": {"enabled": True, "trusted_keys": [str(public)]}})
    models = ModelManager(cfg.classifier, cfg.state_dir())
    receiver = ModelPushReceiver(cfg, RecordingSession(), models)
    receiver.start()
    big = "K" * 2_000_000
    sig = base64.b64encode(bytes(64)).decode()
    manifest = base64.b64encode(b"{}").decode()
    payloads = [
        {"format": big},
        {"format": "emotion-edge-model-push/1", "manifest": manifest, "push_id": big,
         "signature": {"algorithm": "ed25519", "key_id": big, "signature": sig}},
        {"format": "emotion-edge-model-push/1", "manifest": manifest, "signature": {"algorithm": big}},
    ]
    try:
        results = [receiver.handle("emotion/dev1/model/push", json.dumps(p).encode()) for p in payloads]
    finally:
        receiver.stop()
    assert [r["code"] for r in results] == ["malformed", "untrusted_key", "bad_signature"], results
    for r in results:
        assert len(r["reason"]) <= REASON_CHARS and len(json.dumps(r)) < 1500, r
        assert all(len(str(r[k] or "")) <= ECHO_CHARS for k in ("push_id", "key_id"))
    assert not _long_lines(caplog)


def test_a_tls_client_at_a_plain_port_is_told_tls_may_be_the_cause(broker, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="edge.runtime.publish.connection")
    sink = MqttSink(sink_config(tmp_path / "state", broker, tls={"enabled": True}))
    try:
        assert wait_until(lambda: any("TLS listener" in r.getMessage() for r in caplog.records), 10)
    finally:
        sink.close(1)
    line = next(r.getMessage() for r in caplog.records if "TLS listener" in r.getMessage())
    assert f"mqtt.tls.enabled is true: is port {broker.port} a TLS listener?" in line
