"""``watch``: the view folds real contract messages; the live client against a real Mosquitto."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from edge.protocol.broker import BrokerSettings
from edge.protocol.envelope import encode, make_envelope
from edge.protocol.topics import parse_topic
from edge.runtime.publish.mqtt import MqttSink
from edge.tools.subscribe.client import subscription_filters
from edge.tools.subscribe.watch import Watcher, WatchState, bar, sparkline
from tests.mqtt_support import faces_body, sink_config, status_body, summary_body

REPO = Path(__file__).resolve().parent.parent


def _msg(kind: str, seq: int, body: dict, device: str = "pi1", ts: float | None = None) -> bytes:
    return encode(make_envelope(kind, device, seq, body, ts=ts))


def test_bar_and_sparkline():
    assert bar(0.0, 10) == " " * 10
    assert bar(1.0, 10) == "█" * 10
    assert bar(0.5, 10) == "█" * 5 + " " * 5
    assert bar(0.55, 10).startswith("█████▌")
    assert sparkline([0, 1, 2, 4]) == "▁▃▅█"  # 7 steps: 1/4 -> 2, 2/4 -> 4
    assert sparkline([0, 0]) == "▁▁"


def test_topics():
    assert parse_topic("emotion/pi1/faces", "emotion") == ("pi1", "faces")
    assert parse_topic("emotion/pi1/availability", "emotion") == ("pi1", "availability")
    assert parse_topic("emotion/pi1/command", "emotion") is None
    assert parse_topic("emotion/group/g/model/push", "emotion") is None
    assert parse_topic("other/pi1/faces", "emotion") is None
    assert "home/+/summary" in subscription_filters("home")
    assert "home/pi2/availability" in subscription_filters("home", ["pi2"])


def test_view_shows_devices_tracks_bars_and_drops_redeliveries():
    st = WatchState("emotion", stale_s=5)
    now = 1000.0
    assert st.update("emotion/pi1/availability", b"online", now)
    assert st.update("emotion/pi1/status", _msg("status", 1, status_body()), now)
    two_faces = _msg("faces", 2, faces_body(3, 2), ts=now)
    assert st.update("emotion/pi1/faces", two_faces, now)  # tracks happy (3) and sad (4)
    assert st.update("emotion/pi2/availability", b"offline", now)
    assert not st.update("emotion/pi1/faces", b"not json", now)
    text = "\n".join(st.render(now + 1, width=100))
    assert "pi1  [online]  state=running  fps=9.5  faces=2" in text
    assert "pi2  [offline]" in text
    assert "model tiny-test-0" in text
    assert "track 0: happy (0.60)" in text and "track 1: sad (0.60)" in text
    happy = next(line for line in text.splitlines() if line.strip().startswith("happy "))
    assert happy.rstrip().endswith("33.3%")  # (0.6 + 0.0667) / 2 over the two tracks

    # A redelivered older faces message (the same message again) does not replace the newer view.
    st.update("emotion/pi1/faces", _msg("faces", 3, faces_body(0, 1), ts=now + 1), now + 1)
    st.update("emotion/pi1/faces", two_faces, now + 1)
    text = "\n".join(st.render(now + 1.5))
    assert "faces=1" in text and "track 0: angry" in text and st.devices["pi1"].duplicates == 1

    # No faces update for longer than stale_s: nobody there; the last summary's bars are shown instead.
    st.update("emotion/pi1/summary", _msg("summary", 4, summary_body()), now + 2)
    text = "\n".join(st.render(now + 60))
    assert "faces=0" in text and "track" not in text
    assert "emotions (last 10.0s):" in text and "summary: dominant=happy" in text


def test_watch_once_against_broker_sees_live_and_retained_messages(broker, tmp_path):
    sink = MqttSink(sink_config(tmp_path / "state", broker, device_id="cam7"))
    try:
        sink.publish("status", status_body())
        assert sink.flush(10)
        watcher = Watcher(BrokerSettings(host=broker.host, port=broker.port), stale_s=3600)
        out = io.StringIO()
        t = threading.Thread(target=watcher.run, kwargs={"duration": 2.0, "once": True, "out": out})
        t.start()
        deadline = time.monotonic() + 10
        while not watcher.subscriber.subscribed and time.monotonic() < deadline:
            time.sleep(0.02)
        sink.publish("faces", faces_body(5, 1))  # tracks 'surprise'
        t.join(20)
        text = out.getvalue()
        assert "cam7  [online]  state=running" in text, text
        assert "track 0: surprise (0.60)" in text, text
    finally:
        sink.close(2)


def test_watch_cli_once_shows_retained_status(broker, tmp_path):
    sink = MqttSink(sink_config(tmp_path / "state", broker, device_id="door"))
    try:
        sink.publish("status", status_body())
        assert sink.flush(10)
        r = subprocess.run([sys.executable, "-m", "edge", "watch", "--once", "--duration", "1",
                            "--mqtt-host", broker.host, "--mqtt-port", str(broker.port), "--device", "door"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "door  [online]  state=running" in r.stdout and "\x1b[" not in r.stdout
    finally:
        sink.close(2)


def test_watch_rejects_multi_level_device_filter():
    r = subprocess.run([sys.executable, "-m", "edge", "watch", "--once", "--device", "#"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "use a device id or '+'" in r.stderr and "Traceback" not in r.stderr


def test_status_payload_fields_used_by_watch_exist_in_schema():
    from edge.protocol.envelope import load_schema

    defs = load_schema()["$defs"]
    status, summary = defs["status"]["properties"], defs["summary"]["properties"]
    face = defs["faces"]["properties"]["faces"]["items"]["properties"]
    assert {"fps", "model_id", "state"} <= set(status) and "labels" in status["model"]["properties"]
    assert {"faces_mean", "dominant_emotion", "mean_probs", "window_s"} <= set(summary)
    assert {"track_id", "emotion", "confidence", "probs"} <= set(face)


def test_refused_connection_is_one_clear_line(broker_factory):
    b = broker_factory("closed", allow_anonymous=False).start()
    r = subprocess.run([sys.executable, "-m", "edge", "watch", "--once", "--duration", "0",
                        "--mqtt-host", b.host, "--mqtt-port", str(b.port)],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: broker 127.0.0.1:"), r.stderr
    assert "refused the connection" in lines[0] and "--mqtt-username" in lines[0]


def test_a_restarted_seq_is_news_and_odd_payloads_are_ignored():
    """A device whose state folder was wiped starts at seq 1 again with newer timestamps: shown, not dropped.
    JSON with the wrong field types (another publisher, a hand-typed test) is refused, never rendered."""
    st = WatchState("emotion", stale_s=5)
    now = 1000.0
    assert st.update("emotion/pi1/faces", _msg("faces", 500, faces_body(3, 2), ts=now), now)
    assert st.update("emotion/pi1/faces", _msg("faces", 1, faces_body(0, 1), ts=now + 5), now + 5)
    assert st.devices["pi1"].duplicates == 0 and st.devices["pi1"].last_seq == 1
    assert "track 0: angry" in "\n".join(st.render(now + 5.5))
    odd = [("faces", {"faces": [1]}), ("summary", {"mean_probs": [0.2]}), ("summary", {"faces_mean": None,
           "mean_probs": {"happy": "x"}}), ("status", {"model": {"labels": "happy"}}), ("faces", {"faces": []})]
    for i, (kind, body) in enumerate(odd[:-1]):
        env = json.dumps({"seq": 600 + i, "ts": now + 10 + i, "kind": kind, **body}).encode()
        assert not st.update(f"emotion/pi2/{kind}", env, now + 10)
    assert not st.update("emotion/pi2/faces", json.dumps({"seq": 9, "ts": None, "faces": []}).encode(), now)
    assert not st.update("emotion/pi2/faces", json.dumps({"seq": True, "ts": 1.0, "faces": []}).encode(), now)
    text = "\n".join(st.render(now + 11))
    assert "cannot show" not in text and "pi1" in text
