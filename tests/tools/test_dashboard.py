"""``dashboard``: the page's JSON from real contract messages, the server against a real Mosquitto, and the page
in a real headless Chromium with the daemon on the demo."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edge.protocol.broker import BrokerSettings
from edge.protocol.envelope import encode, make_envelope
from edge.runtime.publish.mqtt import MqttSink
from edge.tools.dashboard.feed import OVERLAP_ROWS, DashboardFeed, device_json
from edge.tools.dashboard.server import Dashboard
from edge.tools.subscribe.view import FeedState
from tests.support.browser import Browser, chromium_available
from tests.support.mqtt import Collector, faces_body, sink_config, status_body, summary_body, wait_until
from tests.support.paths import REPO

STATIC = REPO / "edge" / "tools" / "dashboard" / "static"


def _msg(kind: str, seq: int, body: dict, device: str = "pi1", ts: float | None = None) -> bytes:
    return encode(make_envelope(kind, device, seq, body, ts=ts))


def _fed_state(now: float) -> FeedState:
    st = FeedState("emotion", stale_s=2)
    st.update("emotion/pi1/availability", b"online", now)
    st.update("emotion/pi1/status", _msg("status", 1, {**status_body(frames=120), "cpu_temp_c": 51.5,
                                                       "outbox": {"pending": 2, "dropped": 0}}), now)
    st.update("emotion/pi1/faces", _msg("faces", 2, faces_body(3, 2), ts=now), now)
    st.update("emotion/pi1/summary", _msg("summary", 3, summary_body(), ts=now), now)
    st.update("emotion/pi2/availability", b"offline", now)
    return st


def test_device_json_has_the_live_numbers_and_never_a_box_or_image():
    now = 1000.0
    st = _fed_state(now)
    pi1, pi2 = (device_json(v, now + 0.5, st.stale_s, 30.0) for v in st.snapshot())
    assert (pi1["availability"], pi1["state"], pi1["fps"], pi1["age_s"]) == ("online", "running", 9.5, 0.5)
    assert pi1["health"] == {"level": "ok", "reason": "ok"}
    assert pi1["figures"]["cpu_temp_c"] == 51.5 and pi1["figures"]["frames"] == 120
    assert pi1["figures"]["outbox_pending"] == 2 and pi1["figures"]["latency_ms"] == 1.85
    assert [(f["track_id"], f["emotion"], f["confidence"]) for f in pi1["faces"]] == [(0, "happy", 0.6), (1, "sad", 0.6)]
    assert pi1["mix"]["source"] == "now" and pi1["mix"]["probs"]["happy"] == pytest.approx(0.333, abs=1e-3)
    assert pi1["summary"]["dominant_emotion"] == "happy" and pi1["colors"][3] == "#f2c80f"
    assert pi2["health"] == {"level": "bad", "reason": "offline"} and pi2["faces"] == []
    text = json.dumps([pi1, pi2])
    assert '"box"' not in text and "raw_probs" not in text  # numbers and labels only, no face position
    # Nobody in view for longer than stale_s: no faces, the last summary's mix instead.
    later = device_json(st.snapshot()[0], now + 10, st.stale_s, 30.0)
    assert later["faces"] == [] and later["mix"]["source"] == "last 10.0s"
    assert device_json(st.snapshot()[0], now + 60, st.stale_s, 30.0)["health"] == {"level": "bad",
                                                                                   "reason": "silent for 60s"}


def test_timeline_rows_gaps_window_and_overlapping_updates():
    now = 1000.0
    st = _fed_state(now)
    feed = DashboardFeed(st, window_s=5.0)
    for i in range(8):
        feed.tick(now + i)  # faces at `now` are live for 2 s, then nobody: probabilities become gaps
    rows = feed.timeline.series()["pi1"]["rows"]
    assert [r[0] for r in rows] == [now + i for i in range(2, 8)]  # the last 5 s (and the edge)
    assert all(r[1] == 0 and r[2:] == [None] * 7 for r in rows[1:])  # nobody there
    snapshot = json.loads(feed.snapshot(now + 8))
    assert len(snapshot["series"]["pi1"]["rows"]) == 6 and {d["device"] for d in snapshot["devices"]} == {"pi1", "pi2"}
    generation, update = feed.wait_update(0, timeout=0.1)
    assert generation == 8 and len(json.loads(update)["series"]["pi1"]["rows"]) == OVERLAP_ROWS
    assert feed.wait_update(generation, timeout=0.05) == (generation, None)
    # A new model with other labels starts a new timeline for that device.
    st.update("emotion/pi1/status", _msg("status", 9, {**status_body(), "model": {
        "id": "m2", "runtime": "ai_edge_litert", "labels": ["happy", "other"]}}, ts=now + 9), now + 9)
    feed.tick(now + 9)
    assert feed.timeline.series()["pi1"] == {"labels": ["happy", "other"], "rows": [[now + 9, 0, None, None]]}


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_server_serves_page_assets_state_and_events_from_a_real_broker(broker, tmp_path):
    sink = MqttSink(sink_config(tmp_path / "state", broker, device_id="porch"))
    dash = Dashboard(BrokerSettings(host=broker.host, port=broker.port), port=0, sample_s=0.2)
    try:
        sink.publish("status", status_body())
        assert sink.flush(10)
        dash.start()
        sink.publish("faces", faces_body(5, 1))
        assert sink.flush(10)
        # The device shows once the retained status arrived, its faces once the faces message did.
        assert wait_until(lambda: any(d["faces"] for d in json.loads(_get(dash.url + "api/state")[2])["devices"]), 10)
        state = json.loads(_get(dash.url + "api/state")[2])
        assert state["devices"][0]["device"] == "porch" and state["devices"][0]["faces"][0]["emotion"] == "surprise"

        status, headers, page = _get(dash.url)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert headers["Content-Security-Policy"].startswith("default-src 'self'")
        # Every script and style comes from this server: nothing from a CDN.
        refs = re.findall(rb'(?:src|href)="([^"]+)"', page)
        assert refs and all(r.startswith(b"/static/") for r in refs), refs
        for ref in refs:
            code, hdrs, body = _get(dash.url + ref.decode().lstrip("/"))
            assert code == 200 and body == (STATIC / ref.decode().rsplit("/", 1)[1]).read_bytes(), ref
        assert _get(dash.url + "static/../server.py")[0] == 404
        assert _get(dash.url + "static/LICENSE.uPlot.txt")[0] == 404  # only page files are served
        assert _get(dash.url + "nope")[0] == 404

        with urllib.request.urlopen(dash.url + "events", timeout=10) as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            events = []
            while len(events) < 2:
                line = stream.readline().decode()
                if line.startswith("event: "):
                    events.append(line.split()[1])
                elif line.startswith("data: "):
                    assert json.loads(line[6:])["devices"][0]["device"] == "porch"
        assert events == ["snapshot", "update"]
    finally:
        dash.stop()
        sink.close(2)


def test_dashboard_cli_one_clear_line_when_the_port_is_taken(broker):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "edge", "dashboard", "--mqtt-host", broker.host, "--mqtt-port",
                            str(broker.port), "--port", str(port), "--duration", "1"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"cannot serve the dashboard on 127.0.0.1:{port}" in r.stderr and "--port" in r.stderr


def test_shipped_assets_are_small_and_have_their_provenance():
    sizes = {p.name: p.stat().st_size for p in STATIC.iterdir()}
    assert sum(sizes.values()) < 100_000, sizes
    readme = (STATIC / "README.md").read_text()
    import hashlib

    for name in ("uPlot.iife.min.js", "uPlot.min.css"):
        assert hashlib.sha256((STATIC / name).read_bytes()).hexdigest() in readme, name
    assert "MIT" in (STATIC / "LICENSE.uPlot.txt").read_text()


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))


def _dashboard_url(proc: subprocess.Popen, timeout: float = 30) -> str:
    """The URL the dashboard prints on stderr (it was started with --port 0)."""
    deadline, seen = time.monotonic() + timeout, ""
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            seen += os.read(proc.stderr.fileno(), 4096).decode()
            found = re.search(r"dashboard on (http://\S+/)", seen)
            if found:
                return found.group(1)
    raise AssertionError(f"the dashboard did not start: {seen}")


@pytest.mark.slow
@pytest.mark.skipif(not chromium_available(), reason="chromium is not installed (apt-get install -y chromium)")
def test_page_in_headless_chromium_shows_the_demo_devices_and_their_numbers_change(broker, tmp_path):
    """The daemon on the demo (default model) for two devices -> Mosquitto -> dashboard -> Chromium."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    daemons = [_start([sys.executable, "-m", "edge", "run", "--source", "demo", "--mqtt-host", broker.host,
                       "--mqtt-port", str(broker.port), "--device-id", dev], {**env, "STATE_DIRECTORY": str(
                           tmp_path / dev)}, tmp_path / f"{dev}.log") for dev in ("hallway", "kitchen")]
    dash = subprocess.Popen([sys.executable, "-m", "edge", "dashboard", "--mqtt-host", broker.host, "--mqtt-port",
                             str(broker.port), "--port", "0", "--sample", "0.5"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = _dashboard_url(dash)
        with Browser(880, 680) as page:
            page.goto(url)
            card = "document.querySelector('.card[data-device=\"{}\"]')"
            for dev in ("hallway", "kitchen"):
                page.wait_for(f"{card.format(dev)}?.dataset.seq", timeout=40)
            hall = card.format("hallway")
            first = int(page.evaluate(f"{hall}.dataset.seq"))
            # Live numbers in the same page, without a reload: the message number grows, updates arrive.
            page.wait_for(f"+{hall}.dataset.seq > {first} && +document.getElementById('updates').dataset.updates >= 3")
            text = page.evaluate(f"{hall}.innerText")
            assert "online" in text and "running" in text, text
            fps = page.evaluate(f"{hall}.querySelector('[data-k=fps]').textContent")
            assert re.fullmatch(r"\d+\.\d", fps), fps
            # The demo shows faces: an emotion per face with a confidence bar, and one bar per emotion.
            face = page.wait_for(f"{hall}.querySelector('.faces .row')?.innerText")
            assert re.match(r"#\d+ \w+\s+(0\.\d\d|1\.00)", face), face  # a confidence of two decimals
            assert page.evaluate(f"{hall}.querySelectorAll('.mix .row').length") == 7
            assert page.evaluate(f"{hall}.querySelector('.chart canvas') !== null")  # the timeline is drawn
            assert page.evaluate("document.querySelectorAll('img, video').length") == 0  # numbers, never images
            assert "2 devices" in page.evaluate("document.getElementById('fleet').textContent")
            shot = page.screenshot(tmp_path / "dashboard.png")
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            if os.environ.get("DASHBOARD_SCREENSHOT"):  # how docs/dashboard.png is made: a longer timeline first
                time.sleep(float(os.environ.get("DASHBOARD_SCREENSHOT_WAIT", "60")))
                page.screenshot(Path(os.environ["DASHBOARD_SCREENSHOT"]))
            # A crash: the Last Will says offline, and the card says so whatever its retained status still says.
            kitchen = card.format("kitchen")
            pauser = Collector(broker, topic="unused/x", client_id="pauser").start()
            pauser.client.publish("emotion/kitchen/command", '{"command":"publish_status"}', qos=1).wait_for_publish(5)
            page.wait_for(f"+{kitchen}.querySelector('[data-k=fps]').textContent > 0", timeout=40)
            daemons[1].kill()
            page.wait_for(f"{kitchen}.querySelector('[data-k=fps]').textContent === '0.0' && "
                          f"{kitchen}.innerText.includes('nobody in view')", timeout=40)
            text = page.evaluate(f"{kitchen}.innerText")
            assert "offline" in text and "running" not in text, text
            # Paused with the plain switch: the card shows fps 0.
            pauser.client.publish("emotion/hallway/paused/set", "ON", qos=1).wait_for_publish(5)
            pauser.stop()
            page.wait_for(f"{hall}.querySelector('[data-k=fps]').textContent === '0.0' && "
                          f"{hall}.innerText.includes('paused')", timeout=40)
            # The footer's counts agree with the cards: the faces shown, and the updates that showed them.
            page.wait_for("document.querySelectorAll('.faces .row').length === 0", timeout=40)
            fleet = page.evaluate("document.getElementById('fleet').textContent")
            assert fleet.endswith(" 0 faces in view") and "1 in trouble" in fleet, fleet
            assert int(page.evaluate("document.getElementById('updates').dataset.updates")) > 0
    finally:
        dash.terminate()
        for d in daemons:
            d.terminate()
        for p in (dash, *daemons):
            p.wait(20)
