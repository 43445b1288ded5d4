"""The bounds on input the device does not control, without a broker: log lines logged once then counted, the
token bucket, the command parser (size, depth, types), clipped answers, and a looping image folder with a bad
file (issue 25, defects 2-4)."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np

from edge.protocol.envelope import COMMAND_CODES, DETAIL_CHARS, ECHO_CHARS, clip, command_event, load_schema
from edge.runtime.capture import open_source
from edge.runtime.capture.managed import ManagedSource
from edge.runtime.loglimit import ARG_CHARS, LogLimiter
from edge.runtime.publish.command_channel import CommandChannel, CommandRefused, parse_command
from edge.runtime.ratelimit import TokenBucket
from tests.support.mqtt import RecordingSession, sink_config


class Clock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name]


def test_a_repeated_warning_is_logged_once_then_counted_once_a_minute(caplog):
    caplog.set_level(logging.WARNING, logger="t.limit")
    clock = Clock()
    limiter = LogLimiter(logging.getLogger("t.limit"), interval_s=60, clock=clock)
    assert limiter.warning("a", "skipping %s: bad", "x.jpg")
    for _ in range(57):
        clock.now += 1
        assert not limiter.warning("a", "skipping %s: bad", "x.jpg")
    assert limiter.warning("b", "other %s", "key")  # keys are counted apart
    clock.now += 10  # 67 s after the first line
    assert limiter.warning("a", "skipping %s: bad", "x.jpg")
    assert _lines(caplog, "t.limit") == ["skipping x.jpg: bad", "other key",
                                         "skipping x.jpg: bad (repeated 57 times since)"]


def test_limited_lines_are_short_and_forgotten_keys_are_bounded(caplog):
    caplog.set_level(logging.WARNING, logger="t.limit2")
    limiter = LogLimiter(logging.getLogger("t.limit2"), max_keys=8)
    limiter.warning("k", "refused: %s", "A" * 8_000_000)
    [line] = _lines(caplog, "t.limit2")
    assert len(line) <= len("refused: ") + ARG_CHARS and line.endswith("…")
    for i in range(100):
        limiter.warning(f"key{i}", "x")
    assert len(limiter._keys) == 8


def test_the_token_bucket_allows_a_burst_then_the_rate():
    clock = Clock()
    bucket = TokenBucket(5, clock=clock)
    assert sum(bucket.take() for _ in range(20)) == 5
    clock.now += 1.0
    assert sum(bucket.take() for _ in range(20)) == 5
    clock.now += 0.2
    assert bucket.take() and not bucket.take()


def test_command_parser_bounds_size_depth_and_types():
    def code(payload: bytes) -> str:
        try:
            parse_command(payload, 1024)
        except CommandRefused as exc:
            return exc.code
        return "ok"

    assert code(b'{"command": "publish_status"}') == "ok"
    assert code(b"[" * 1000) == "malformed"  # RecursionError in the parser: an answer, never a traceback
    assert code(b'{"command": "x", "a": ' + b"[" * 1000 + b"]" * 1000 + b"}") == "oversized"  # 2 kB > 1 kB
    assert code(b'{"a": ' + b"[" * 500 + b"]" * 500 + b"}") == "malformed"
    assert code(b"\xff\xfe\x00garbage") == "malformed"
    assert code(b'{"command":"pause\xed\xa0\x80"}') == "malformed"  # a lone surrogate: not UTF-8
    assert code(b'{"command": 5}') == "malformed"
    assert code(b'"publish_status"') == "malformed"
    assert code(b" " * 1025) == "oversized"


def test_answers_clip_what_they_echo_and_match_the_schema():
    event = command_event("x" * 10_000, False, "d" * 10_000, {"request_id": "r" * 65}, "unknown_command")
    assert len(event["command"]) == ECHO_CHARS and event["command"].endswith("…")
    assert len(event["detail"]) == DETAIL_CHARS
    assert "request_id" not in event  # too long to be an id: not echoed
    assert clip("short") == "short" and clip(12345, 3) == "12…"
    schema = load_schema()
    [command_rule] = [r for r in schema["$defs"]["events"]["allOf"]
                      if r.get("if", {}).get("properties", {}).get("event", {}).get("const") == "command"]
    assert tuple(command_rule["then"]["properties"]["code"]["enum"]) == COMMAND_CODES


def test_a_command_flood_gets_at_most_the_rate_of_answers(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="edge.runtime.publish.command_channel")
    session = RecordingSession()
    channel = CommandChannel(session, sink_config(tmp_path / "state", None, max_command_bytes=1024, command_rate=3))
    channel.start()
    for _ in range(500):
        channel.on_message("p/d/command", b"[" * 1000)
    channel.close()
    answers = session.events()
    assert len(answers) == 3 and all(a["code"] == "malformed" for a in answers)
    assert channel.dropped == 497
    lines = _lines(caplog, "edge.runtime.publish.command_channel")
    assert len(lines) == 2, lines  # one "not done (malformed)" and one "dropping commands", then counted
    assert any("dropping commands unanswered" in ln for ln in lines)


def test_a_looping_folder_warns_once_about_an_unreadable_image(tmp_path, caplog):
    """Before: 'skipping X: not a readable image' on every pass through the folder, forever."""
    caplog.set_level(logging.WARNING, logger="edge.runtime.capture.folder")
    cv2.imwrite(str(tmp_path / "a.png"), np.full((48, 64, 3), 10, np.uint8))
    (tmp_path / "b.jpg").write_bytes(b"not an image")
    src = ManagedSource(lambda: open_source(str(tmp_path)), str(tmp_path), 0.0, True, 0.01, 0.01)
    src.open_now()
    frames = 0
    for _ in range(40):
        frames += src.poll(0.05) is not None
    src.close()
    assert frames >= 10  # ten passes over the folder
    lines = _lines(caplog, "edge.runtime.capture.folder")
    assert lines == [f"skipping {tmp_path / 'b.jpg'}: not a readable image"]


def test_the_schema_accepts_every_answer_code():
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema())
    for code in COMMAND_CODES:
        body = command_event("publish_status", code == "ok", "x", {"request_id": "r-1"}, code)
        msg = {"schema_version": 1, "device_id": "d", "kind": "events", "ts": 1.0, "seq": 1, **body}
        validator.validate(json.loads(json.dumps(msg)))
