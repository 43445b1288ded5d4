"""``watch``: the view folds real contract messages (one device, and 20 in one line each); the live client
against a real Mosquitto."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time

from edge.protocol.broker import BrokerSettings
from edge.protocol.envelope import encode, make_envelope
from edge.protocol.topics import parse_topic
from edge.runtime.publish.mqtt import MqttSink
from edge.tools.subscribe.client import subscription_filters
from edge.tools.subscribe.view import FeedState
from edge.tools.subscribe.watch import Watcher, WatchView, bar, format_age, sparkline, to_text
from tests.support.mqtt import faces_body, sink_config, status_body, summary_body
from tests.support.paths import REPO


def _msg(kind: str, seq: int, body: dict, device: str = "pi1", ts: float | None = None) -> bytes:
    return encode(make_envelope(kind, device, seq, body, ts=ts))


def _text(st: FeedState, now: float, width: int = 100, **kw) -> str:
    return to_text(WatchView(st).render(now, width=width, **kw), width=width)


def test_bar_and_sparkline():
    assert bar(0.0, 10) == " " * 10
    assert bar(1.0, 10) == "█" * 10
    assert bar(0.5, 10) == "█" * 5 + " " * 5
    assert bar(0.55, 10).startswith("█████▌")
    assert sparkline([0, 1, 2, 4]) == "▁▃▅█"  # 7 steps: 1/4 -> 2, 2/4 -> 4
    assert sparkline([0, 0]) == "▁▁"
    assert [format_age(a) for a in (None, 0.42, 12.4, 185, 7260)] == ["-", "0.4s", "12s", "3m05s", "2h01m"]


def test_topics():
    assert parse_topic("emotion/pi1/faces", "emotion") == ("pi1", "faces")
    assert parse_topic("emotion/pi1/availability", "emotion") == ("pi1", "availability")
    assert parse_topic("emotion/pi1/command", "emotion") is None
    assert parse_topic("emotion/group/g/model/push", "emotion") is None
    assert parse_topic("other/pi1/faces", "emotion") is None
    assert "home/+/summary" in subscription_filters("home")
    assert "home/pi2/availability" in subscription_filters("home", ["pi2"])


def test_view_shows_devices_tracks_bars_and_drops_redeliveries():
    st = FeedState("emotion", stale_s=5)
    now = 1000.0
    assert st.update("emotion/pi1/availability", b"online", now)
    assert st.update("emotion/pi1/status", _msg("status", 1, {**status_body(frames=120), "cpu_temp_c": 51.5,
                                                              "outbox": {"pending": 2, "dropped": 0}}), now)
    two_faces = _msg("faces", 2, faces_body(3, 2), ts=now)
    assert st.update("emotion/pi1/faces", two_faces, now)  # tracks happy (3) and sad (4)
    assert st.update("emotion/pi2/availability", b"offline", now)
    assert not st.update("emotion/pi1/faces", b"not json", now)
    text = _text(st, now + 1, width=120)
    assert "pi1  [online]  state=running  age 1.0s  fps=9.5  faces=2" in text
    assert "pi2  [offline]  age -" in text and "(offline)" in text
    # The status figures, on the line under the device.
    assert ("up 12s · cpu 51.5°C · frames 120 (0 dropped) · outbox 2 pending · latency 1.9 ms · "
            "model tiny-test-0 · mediapipe") in text
    assert "track 0: happy (0.60)" in text and "track 1: sad (0.60)" in text
    happy = next(line for line in text.splitlines() if line.strip().startswith("happy "))
    assert happy.rstrip().endswith("33.3%")  # (0.6 + 0.0667) / 2 over the two tracks

    # A redelivered older faces message (the same message again) does not replace the newer view.
    st.update("emotion/pi1/faces", _msg("faces", 3, faces_body(0, 1), ts=now + 1), now + 1)
    st.update("emotion/pi1/faces", two_faces, now + 1)
    text = _text(st, now + 1.5)
    assert "faces=1" in text and "track 0: angry" in text and st.devices["pi1"].duplicates == 1

    # No faces update for longer than stale_s: nobody there; the last summary's bars are shown instead.
    st.update("emotion/pi1/summary", _msg("summary", 4, summary_body()), now + 2)
    text = _text(st, now + 60)
    assert "faces=0" in text and "track" not in text and "age 58s" in text
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
        assert "cam7  [online]  state=running  age" in text, text
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
        assert "door  [online]  state=running  age" in r.stdout and "\x1b[" not in r.stdout  # no colour in a pipe
    finally:
        sink.close(2)


def test_watch_without_rich_says_what_to_install():
    """rich is in the [subscribe] extra, not in a device install: one line saying so, no traceback."""
    code = ("import sys; sys.modules['rich'] = None; from edge.cli import main; "
            "sys.exit(main(['watch', '--once', '--mqtt-port', '1']))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr == ("error: watch needs rich: from a checkout: pip install -e '.[subscribe]' "
                                              "(or from a built wheel: pip install "
                                              "'dist/emotion_edge-VERSION-py3-none-any.whl[subscribe]')\n"), r.stderr


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
    st = FeedState("emotion", stale_s=5)
    now = 1000.0
    assert st.update("emotion/pi1/faces", _msg("faces", 500, faces_body(3, 2), ts=now), now)
    assert st.update("emotion/pi1/faces", _msg("faces", 1, faces_body(0, 1), ts=now + 5), now + 5)
    assert st.devices["pi1"].duplicates == 0 and st.devices["pi1"].last_seq == 1
    assert "track 0: angry" in _text(st, now + 5.5)
    odd = [("faces", {"faces": [1]}), ("summary", {"mean_probs": [0.2]}), ("summary", {"faces_mean": None,
           "mean_probs": {"happy": "x"}}), ("status", {"model": {"labels": "happy"}}), ("faces", {"faces": []})]
    for i, (kind, body) in enumerate(odd[:-1]):
        env = json.dumps({"seq": 600 + i, "ts": now + 10 + i, "kind": kind, **body}).encode()
        assert not st.update(f"emotion/pi2/{kind}", env, now + 10)
    assert not st.update("emotion/pi2/faces", json.dumps({"seq": 9, "ts": None, "faces": []}).encode(), now)
    assert not st.update("emotion/pi2/faces", json.dumps({"seq": True, "ts": 1.0, "faces": []}).encode(), now)
    text = _text(st, now + 11)
    assert "cannot show" not in text and "pi1" in text


def _fleet(n: int, now: float) -> FeedState:
    """``n`` simulated devices: room-07 offline, room-03 silent for a minute, the others live with 1-3 faces."""
    st = FeedState("emotion", stale_s=5)
    for i in range(n):
        dev = f"room-{i:02d}"
        seen = now - 60 if i == 3 else now - 0.1 * i
        st.update(f"emotion/{dev}/availability", b"offline" if i == 7 else b"online", seen)
        st.update(f"emotion/{dev}/status", _msg("status", 1, {**status_body(), "cpu_temp_c": 40.0 + i,
                                                               "outbox": {"pending": i, "dropped": 0}}, dev), seen)
        st.update(f"emotion/{dev}/faces", _msg("faces", 2, faces_body(i, 1 + i % 3), dev, ts=seen), seen)
    return st


def test_twenty_devices_are_one_line_each_when_they_do_not_fit():
    now = 5000.0
    st = _fleet(20, now)
    text = _text(st, now, width=110, height=40)  # 20 full blocks are ~300 lines
    lines = text.splitlines()
    # room-03's face is stale, room-07 is offline: neither counts as a face in view.
    assert lines[0] == "20 devices · 19 online · 2 in trouble · 36 faces in view"
    assert lines[1].split() == ["device", "link", "state", "age", "fps", "faces", "emotion", "confidence", "cpu",
                                "°C", "outbox", "dropped", "health"]
    rows = {line.split()[0]: line for line in lines[2:] if line.strip()}
    assert list(rows) == [f"room-{i:02d}" for i in range(20)] and len(lines) == 22
    assert all(len(line) <= 110 for line in lines)
    assert rows["room-05"].split()[:7] == ["room-05", "online", "running", "0.5s", "9.5", "3", "angry"]
    assert rows["room-07"].split()[1] == "offline" and rows["room-07"].rstrip().endswith("offline")
    # Its retained status still says running at 9.5 fps; the Last Will decides what is shown.
    assert rows["room-07"].split()[2] == "offline" and rows["room-07"].split()[4:6] == ["0.0", "0"]
    assert rows["room-03"].rstrip().endswith("silent for 60s") and "1m00s" in rows["room-03"]
    assert "45.0" in rows["room-05"] and " 5 " in rows["room-05"]  # CPU temperature, outbox backlog
    # A few devices that fit get the full view; --compact asks for lines anyway.
    few = _fleet(2, now)
    assert "emotions (now):" in _text(few, now, height=40)
    assert _text(few, now, height=40, compact=True).splitlines()[0].startswith("2 devices · 2 online")


def test_colour_on_a_terminal_only():
    now = 5000.0
    view = WatchView(_fleet(3, now))
    plain = to_text(view.render(now, compact=True), color=False)
    coloured = to_text(view.render(now, compact=True), color=True)
    assert "\x1b[" not in plain and "\x1b[" in coloured
    assert "\x1b[1;32monline" in coloured  # availability in bold green
    assert "38;2;214;39;40m" in coloured  # the emotion in its chart colour (angry #d62728)


def test_a_paused_device_shows_fps_0_even_from_an_older_daemons_status():
    """A status that still carries the last rate while paused (an older daemon's): no frame is processed, so 0."""
    st = FeedState("emotion", stale_s=5)
    now = 1000.0
    st.update("emotion/pi1/availability", b"online", now)
    st.update("emotion/pi1/status", _msg("status", 1, {**status_body(state="paused"), "paused": True}, ts=now), now)
    assert status_body()["fps"] > 0
    text = _text(st, now + 1, width=120)
    assert "pi1  [online]  state=paused" in text and "fps=0.0" in text, text
