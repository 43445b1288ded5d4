"""The daemon as a real process under hostile input over a real Mosquitto: a 40 MB command, and a seeded fuzz of
the command and model-push topics, with its memory read from /proc (issue 25, defects 1-3)."""

from __future__ import annotations

import base64
import json
import random

import paho.mqtt.client as mqtt
import pytest

from edge.bundle import MODEL_FILE, default_bundle_dir
from edge.protocol.push import build_push
from tests.support.hostile import DaemonProcess, fuzz_payload
from tests.support.mqtt import Collector, validator
from tests.support.push import make_keys, signed_copy

pytestmark = pytest.mark.slow

COMMAND = "emotion/dev1/command"
PUSH = "emotion/dev1/model/push"
#: The issue's bound: a hostile payload may raise the daemon's peak memory by less than this over its idle peak.
MEMORY_BOUND_MB = 50


def _operator(broker) -> mqtt.Client:
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fuzzer")
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    return pub


def _answers(col: Collector) -> list[dict]:
    return [e for e in col.envelopes("events") if e["event"] == "command"]


def _log_is_bounded(d: DaemonProcess) -> None:
    text = d.log_text()
    assert "Traceback" not in text, text[-3000:]
    longest = max(map(len, text.splitlines()), default=0)
    assert longest < 1500, f"a {longest}-character log line"
    assert len(text) < 200_000, f"{len(text)} bytes of log"


def test_a_40_mb_command_is_refused_unread_and_memory_stays_bounded(broker, tmp_path):
    """Before: peak RSS 148 -> 557 MB, an 80 MB answer, an 80 MB log line and an 80 MB outbox.db."""
    faces = Collector(broker, topic="emotion/dev1/faces", client_id="faces").start()
    events = Collector(broker, topic="emotion/dev1/events", client_id="events").start()
    d = DaemonProcess(tmp_path / "d", broker).start()
    pub = _operator(broker)
    try:
        d.wait_publishing(faces, faces=10)
        idle_peak = d.mb("VmHWM")
        # The worst case before: an unknown command is echoed twice (name and detail), an 80 MB answer.
        huge = b'{"request_id": "big", "command": "' + b"x" * (40 * 1024 * 1024) + b'"}'
        pub.publish(COMMAND, huge, qos=1).wait_for_publish(60)
        del huge
        pub.publish(COMMAND, json.dumps({"command": "publish_status", "request_id": "after"}), qos=1).wait_for_publish(10)
        assert events.wait_for(lambda c: len(_answers(c)) >= 2, 30), d.log_text()[-3000:]
        d.wait_publishing(faces, faces=5)
        peak = d.mb("VmHWM")
    finally:
        pub.loop_stop()
        code = d.stop()
        faces.stop()
        events.stop()
    oversized, after = _answers(events)[:2]
    assert oversized["code"] == "oversized" and "request_id" not in oversized  # it was never read
    assert after["code"] == "ok" and after["request_id"] == "after"
    for e in (oversized, after):
        validator().validate(e)
        assert len(json.dumps(e)) < 1000
    print(f"40 MB command: peak RSS {peak:.1f} MB, idle peak {idle_peak:.1f} MB")
    assert peak - idle_peak < MEMORY_BOUND_MB, f"peak RSS {peak:.0f} MB vs {idle_peak:.0f} MB idle"
    assert code == 0
    _log_is_bounded(d)
    assert sum(p.stat().st_size for p in d.state.glob("outbox.db*")) < 1024 * 1024


def test_a_seeded_fuzz_of_the_command_and_push_topics(broker, tmp_path):
    """300 payloads (random JSON, deep nesting, huge strings, wrong types, binary garbage): the daemon stays up,
    answers every command, keeps publishing with the same model, and its memory stays bounded."""
    private, public = make_keys(tmp_path)
    d = DaemonProcess(tmp_path / "d", broker, mqtt_toml="command_rate = 1000.0",
                      extra_toml=f'[model_push]\nenabled = true\ntrusted_keys = ["{public}"]\nmax_bytes = 2097152\n')
    faces = Collector(broker, topic="emotion/dev1/faces", client_id="faces").start()
    events = Collector(broker, topic="emotion/dev1/events", client_id="events").start()
    status = Collector(broker, topic="emotion/dev1/status", client_id="status").start()
    d.start()
    pub = _operator(broker)
    rng = random.Random(25)
    try:
        d.wait_publishing(faces, faces=10)
        model_id = status.envelopes("status")[-1]["model_id"]
        idle_peak = d.mb("VmHWM")
        sent = {COMMAND: 0, PUSH: 0}
        for i in range(300):
            target = COMMAND if i % 3 else PUSH
            payload = fuzz_payload(rng)
            pub.publish(target, payload, qos=1).wait_for_publish(30)
            sent[target] += bool(payload) or target == COMMAND  # an empty push only clears a retained one
        def answered(event: str) -> int:
            return sum(e["event"] == event for e in events.envelopes("events"))
        assert events.wait_for(lambda c: answered("command") >= sent[COMMAND], 60), (answered("command"), sent)
        assert answered("model_push") >= 20  # the first burst; more beyond the push rate limit are dropped
        # A validly signed push of the running model, and a tampered copy, still get their answers after all that.
        signed = build_push(signed_copy(default_bundle_dir(), tmp_path / "signed", private), push_id="real")
        msg = json.loads(signed)
        model = bytearray(base64.b64decode(msg["model"]))
        model[200] ^= 1
        assert len(model) == (default_bundle_dir() / MODEL_FILE).stat().st_size
        d.wait_publishing(faces, faces=10)  # two seconds: the push rate limit has tokens again
        before = answered("model_push")
        pub.publish(PUSH, signed, qos=1).wait_for_publish(10)
        pub.publish(PUSH, json.dumps({**msg, "push_id": "bad", "model": base64.b64encode(model).decode()}),
                    qos=1).wait_for_publish(10)
        assert events.wait_for(lambda c: answered("model_push") >= before + 2, 30)
        peak = d.mb("VmHWM")
        assert d.alive
        assert {s["model_id"] for s in status.envelopes("status")} == {model_id}
    finally:
        pub.loop_stop()
        code = d.stop()
        for c in (faces, events, status):
            c.stop()
    results = {e.get("push_id"): e["code"] for e in events.envelopes("events") if e["event"] == "model_push"}
    assert results["real"] == "already_running" and results["bad"] == "tampered", results
    for e in events.envelopes("events"):
        validator().validate(e)
        assert len(json.dumps(e)) < 1500
    print(f"fuzz: peak RSS {peak:.1f} MB, idle peak {idle_peak:.1f} MB, {sent}, answers {answered('command')} "
          f"command / {answered('model_push')} push")
    assert peak - idle_peak < MEMORY_BOUND_MB, f"peak RSS {peak:.0f} MB vs {idle_peak:.0f} MB idle"
    assert code == 0
    _log_is_bounded(d)
