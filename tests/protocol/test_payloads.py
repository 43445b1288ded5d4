"""Envelope, JSON Schema, persisted seq, and the stdout sink."""

from __future__ import annotations

import io
import json
import math

import pytest

from edge.protocol.envelope import ENVELOPE_FIELDS, PayloadError, encode, make_envelope
from edge.runtime.publish import open_publisher
from edge.runtime.publish.seq import SeqCounter
from edge.runtime.publish.stdout import StdoutSink
from tests.support.broker import free_port
from tests.support.mqtt import event_body, faces_body, sink_config, status_body, summary_body, validator


def _env(kind, body, seq=1):
    body = dict(body)
    if kind == "status":
        body["outbox"] = {"pending": 0, "dropped": 0}
    return make_envelope(kind, "dev1", seq, body)


@pytest.mark.parametrize(
    "kind,body",
    [("status", status_body()), ("faces", faces_body(3, 2)), ("summary", summary_body()), ("events", event_body(4))],
)
def test_every_kind_validates_and_starts_with_the_envelope(kind, body):
    env = _env(kind, body, seq=7)
    # Compact UTF-8 JSON, byte for byte what json.dumps makes with these options.
    assert encode(env) == json.dumps(env, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    msg = json.loads(encode(env))
    assert list(msg)[: len(ENVELOPE_FIELDS)] == list(ENVELOPE_FIELDS)
    assert msg["kind"] == kind and msg["seq"] == 7 and msg["schema_version"] == 1
    validator().validate(msg)


@pytest.mark.parametrize(
    "mutate,why",
    [
        (lambda m: m.update(surprise_field=1), "unknown field"),
        (lambda m: m.pop("seq"), "missing seq"),
        (lambda m: m.update(kind="summary"), "body of another kind"),
        (lambda m: m["faces"][0].update(box=[0.1, 0.2, 1.5, 0.2]), "box outside the frame"),
        (lambda m: m.update(faces=[]), "faces without a track"),
        (lambda m: m["faces"][0].pop("raw_probs"), "missing raw_probs"),
    ],
)
def test_schema_rejects_malformed_faces(mutate, why):
    msg = _env("faces", faces_body(1))
    mutate(msg)
    assert not validator().is_valid(msg), why


def test_event_fields_depend_on_the_event():
    ok = _env("events", {"event": "track_end", "track_id": 1, "duration_s": 2.5, "dominant_emotion": "sad"})
    validator().validate(ok)
    assert not validator().is_valid(_env("events", {"event": "track_end", "track_id": 1})), "track_end needs duration"
    assert not validator().is_valid(_env("events", {**event_body(1), "ok": True})), "ok belongs to command events"
    cmd = {"event": "command", "track_id": None, "command": "publish_status", "ok": True, "detail": None}
    validator().validate(_env("events", cmd))


def test_envelope_refuses_bad_input():
    with pytest.raises(PayloadError, match="unknown payload kind"):
        make_envelope("video", "dev1", 1, {})
    with pytest.raises(PayloadError, match="envelope field"):
        make_envelope("events", "dev1", 1, {"seq": 3})
    with pytest.raises(PayloadError, match="not JSON"):
        encode(make_envelope("status", "dev1", 1, {"fps": math.nan}))


def test_seq_counter_persists_across_reopen(tmp_path):
    db = tmp_path / "outbox.db"
    c = SeqCounter(db)
    assert [c.next() for _ in range(3)] == [1, 2, 3]
    c.close()
    c = SeqCounter(db)
    assert c.next() == 4
    c.close()


def test_stdout_sink_prints_valid_envelopes_and_the_last_status_before_close(tmp_path):
    cfg = sink_config(tmp_path / "state", None)
    out = io.StringIO()
    sink = StdoutSink.from_config(cfg, out)
    seqs = [sink.publish("status", status_body("starting")), sink.publish("faces", faces_body(1)),
            sink.publish("summary", summary_body()), sink.publish("events", event_body(0))]
    sink.publish("status", {**status_body("offline"), "fps": 0.0})  # the daemon's last status, before the close
    sink.close()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [m["kind"] for m in lines] == ["status", "faces", "summary", "events", "status"]
    assert [m["seq"] for m in lines] == seqs + [seqs[-1] + 1]
    assert lines[-1]["state"] == "offline"
    assert lines[0]["outbox"] == {"pending": 0, "dropped": 0}, "the body goes out as the daemon made it"
    for m in lines:
        validator().validate(m)
    # The sequence continues in the next run (same state dir).
    out2 = io.StringIO()
    sink2 = StdoutSink.from_config(cfg, out2)
    assert sink2.publish("events", event_body(1)) == seqs[-1] + 2
    sink2.close()
    with pytest.raises(Exception, match="closed"):
        sink2.publish("events", event_body(2))


def test_open_publisher_falls_back_to_stdout_when_no_broker_answers(tmp_path, caplog):
    cfg = sink_config(tmp_path / "state", None, port=free_port())
    sink = open_publisher(cfg, io.StringIO())[0]
    try:
        assert isinstance(sink, StdoutSink)
        assert "printing the JSON time series to stdout" in caplog.text
    finally:
        sink.close()
    disabled = sink_config(tmp_path / "state", None, enabled=False, host="127.0.0.1")
    sink = open_publisher(disabled, io.StringIO())[0]
    assert isinstance(sink, StdoutSink)
    sink.close()
