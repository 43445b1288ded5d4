"""State that never lies, with the daemon on the demo (``python -m edge run``: BlazeFace, the shipped int8 model)
against a real Mosquitto: the plain pause switch (``P/D/paused/set``) pauses and resumes, and within 3 s the plain
topics and status say so (emotion ``none``, 0 faces, presence ``OFF``, fps 0); ``/metrics`` has a series per label
of the model and ``/api/*`` answer JSON; a clean stop leaves the nobody-state retained; after ``kill -9`` the Last
Will says offline, the live views show the device offline, and the next start corrects the retained values before
it says ``online``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from edge.tools.dashboard.feed import device_json
from edge.tools.subscribe.view import FeedState
from tests.support.broker import free_port
from tests.support.mqtt import Collector, validator, wait_until
from tests.support.paths import REPO as ROOT

LABELS = json.loads((ROOT / "edge/models/default/manifest.json").read_text())["labels"]
NOBODY = {"state/emotion": b"none", "state/face_count": b"0", "state/presence": b"OFF"}


def _start(tmp_path: Path, broker, device: str, metrics_port: int | None = None) -> subprocess.Popen:
    config = tmp_path / f"{device}.toml"
    text = (f'[device]\nid = "{device}"\nstate_dir = "{tmp_path / device}"\n[source]\nmax_fps = 10\n'
            "[mqtt]\nsummary_interval_s = 1.0\nstatus_interval_s = 5.0\nreconnect_min_s = 0.2\n")
    if metrics_port is not None:
        text += f"[metrics]\nenabled = true\nport = {metrics_port}\n"
    config.write_text(text)
    return subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--config", str(config), "--mqtt-host", broker.host,
         "--mqtt-port", str(broker.port)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)


def _get(port: int, path: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        assert r.status == 200
        return r.headers["Content-Type"], r.read()


def _metrics(port: int) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(_get(port, "/metrics")[1].decode())}


def _last(col: Collector, topic: str, since: int = 0) -> bytes | None:
    values = [p for t, p, _ in col.messages[since:] if t == topic]
    return values[-1] if values else None


def _statuses(col: Collector, since: int = 0) -> list[dict]:
    out = [json.loads(p) for t, p, _ in col.messages[since:] if t.endswith("/status")]
    for m in out:
        validator().validate(m)
    return out


def _retained(broker, topic: str) -> dict[str, bytes]:
    late = Collector(broker, topic=topic, client_id=f"late-{time.monotonic_ns()}").start()
    time.sleep(0.5)
    late.stop()
    return {t: p for t, p, retained in late.messages if retained}


def test_the_plain_switch_pauses_and_resumes_and_every_reading_says_so(broker, tmp_path):
    port = free_port()
    col = Collector(broker, topic="emotion/sw/#", client_id="sw-watch").start()
    proc = _start(tmp_path, broker, "sw", port)
    p = "emotion/sw"
    try:
        assert col.wait_for(lambda c: _last(c, f"{p}/state/presence") == b"ON"
                            and (_last(c, f"{p}/state/emotion") or b"").decode() in LABELS, timeout=90), \
            proc.stderr.read() if proc.poll() is not None else "no face seen"
        # /metrics: a series for each label of the model, the demo's face in view.
        families = _metrics(port)
        seen = {s.labels["emotion"] for s in families["emotion_edge_emotion_observations"]
                if s.name == "emotion_edge_emotion_observations_total"}
        assert seen >= set(LABELS) and sum(s.value for s in families["emotion_edge_emotion_observations"]
                                          if s.name.endswith("_total")) > 0
        assert wait_until(lambda: {s.labels["emotion"] for s in _metrics(port)["emotion_edge_emotion_probability"]}
                          == set(LABELS), timeout=10)
        # Every series the Prometheus dashboard charts is one the device serves (``up`` is Prometheus's own).
        dashboard = json.loads((ROOT / "integrations/grafana/emotion-prometheus.json").read_text())
        charted = {name for panel in dashboard["panels"] for t in panel["targets"]
                   for name in re.findall(r"\b(emotion_edge_\w+|up)\b", t["expr"])}
        served = {s.name for samples in families.values() for s in samples}
        assert charted - {"up"} <= served and "emotion_edge_emotion_probability" in charted, charted - served
        dominant = {s.labels["emotion"]: s.value for s in families["emotion_edge_dominant_emotion"]}
        assert set(dominant) == {*LABELS, "uncertain", "none"} and sum(dominant.values()) == 1
        assert dominant["none"] == 0
        # The device API on the same server.
        kind, body = _get(port, "/api/stats")
        stats = json.loads(body)
        assert kind == "application/json" and stats["device_id"] == "sw" and stats["state"] == "running"
        assert stats["model"]["labels"] == LABELS and stats["fps"] > 0
        version = json.loads(_get(port, "/api/version")[1])
        assert version["device_id"] == "sw" and version["version"] and version["model_id"] == stats["model_id"]
        config = json.loads(_get(port, "/api/config")[1])
        assert config["device"]["id"] == "sw" and config["mqtt"]["port"] == broker.port
        assert config["mqtt"]["password_env"] == "<redacted>"

        # Pause with the plain switch, any case: every reading says nobody is seen. (Well under a second on an
        # idle machine; the deadline is generous because the suite's other work can stall this one for seconds.)
        mark = len(col.messages)
        col.client.publish(f"{p}/paused/set", "on", qos=1).wait_for_publish(5)
        assert col.wait_for(lambda c: _last(c, f"{p}/state/paused", mark) == b"ON"
                            and all(_last(c, f"{p}/{leaf}", mark) == v for leaf, v in NOBODY.items())
                            and any(s["paused"] and s["fps"] == 0 for s in _statuses(c, mark)), timeout=20)
        assert all(s["fps"] == 0 for s in _statuses(col, mark) if s["paused"])
        fam = _metrics(port)
        assert fam["emotion_edge_fps"][0].value == 0 and fam["emotion_edge_paused"][0].value == 1
        assert {s.labels["emotion"]: s.value for s in fam["emotion_edge_dominant_emotion"]}["none"] == 1
        assert fam["emotion_edge_emotion_probability"] == []
        assert json.loads(_get(port, "/api/stats")[1])["fps"] == 0
        # What the live views show while paused: fps 0.
        feed = FeedState("emotion")
        for t, payload, _ in col.messages:
            feed.update(t, payload)
        [view] = feed.snapshot()
        assert device_json(view, time.time(), 2.0, 30.0)["fps"] == 0

        # OFF brings the face back; anything else is answered, not run.
        mark = len(col.messages)
        col.client.publish(f"{p}/paused/set", "OFF", qos=1).wait_for_publish(5)
        assert col.wait_for(lambda c: _last(c, f"{p}/state/paused", mark) == b"OFF"
                            and _last(c, f"{p}/state/presence", mark) == b"ON", timeout=30)
        assert int(_last(col, f"{p}/state/face_count", mark)) > 0
        col.client.publish(f"{p}/paused/set", "maybe", qos=1).wait_for_publish(5)
        assert col.wait_for(lambda c: any(e.get("event") == "command" and e["code"] == "malformed"
                                          for e in c.envelopes("events")))
        assert _last(col, f"{p}/state/paused") == b"OFF"

        # Home Assistant's device config: no object_id anywhere, every entity follows the availability topic.
        [ha] = _retained(broker, "homeassistant/device/emotion_edge_sw/config").values()
        assert b"object_id" not in ha
        payload = json.loads(ha)
        assert payload["avty"][0]["topic"] == f"{p}/availability"
        assert not [c for c in payload["cmps"].values() if "availability" in c or "avty" in c]
        assert payload["cmps"]["emotion_edge_sw_privacy"]["command_topic"] == f"{p}/paused/set"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        col.stop()
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    retained = _retained(broker, f"{p}/#")
    assert {leaf: retained[f"{p}/{leaf}"] for leaf in NOBODY} == NOBODY, "a stopped device says nobody is there"
    assert retained[f"{p}/availability"] == b"offline"
    status = json.loads(retained[f"{p}/status"])
    assert status["state"] == "offline" and status["fps"] == 0


def test_after_kill_9_the_views_say_offline_and_the_next_start_corrects_the_retained_values_first(broker, tmp_path):
    p = "emotion/crash"
    col = Collector(broker, topic=f"{p}/#", client_id="crash-watch").start()
    proc = _start(tmp_path, broker, "crash")
    try:
        assert col.wait_for(lambda c: _last(c, f"{p}/state/presence") == b"ON"
                            and any(s["fps"] > 0 for s in _statuses(c)), timeout=90)
    finally:
        proc.kill()
        proc.wait(30)
    assert col.wait_for(lambda c: _last(c, f"{p}/availability") == b"offline", timeout=30), "the Last Will"
    retained = _retained(broker, f"{p}/#")
    assert retained[f"{p}/state/presence"] == b"ON", "what a crash leaves behind (nobody could say otherwise)"
    assert json.loads(retained[f"{p}/status"])["state"] != "offline"
    # The live views trust the Last Will over the stale retained status.
    feed = FeedState("emotion")
    for t, payload in retained.items():
        feed.update(t, payload)
    [view] = feed.snapshot()
    shown = device_json(view, time.time(), 1e9, 1e9)
    assert shown["state"] == "offline" and shown["fps"] == 0 and shown["faces"] == []
    assert shown["health"] == {"level": "bad", "reason": "offline"}
    col.stop()

    watch = Collector(broker, topic=f"{p}/#", client_id="crash-restart").start()
    proc = _start(tmp_path, broker, "crash")
    try:
        assert watch.wait_for(lambda c: any(t == f"{p}/availability" and v == b"online" and not r
                                            for t, v, r in c.messages), timeout=60)
        live = [(t, v) for t, v, r in watch.messages if not r]
        before = live[:[t for t, _ in live].index(f"{p}/availability")]
        assert before, "the corrected values come before 'online'"
        assert all(t.startswith(f"{p}/state/") for t, _ in before), before
        first = {}
        for t, v in before:
            first.setdefault(t[len(p) + 1:], v)
        assert {leaf: first.get(leaf) for leaf in NOBODY} == NOBODY
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        watch.stop()
    assert proc.returncode == 0
