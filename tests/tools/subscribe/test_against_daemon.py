"""The subscriber tools and Home Assistant discovery against the real daemon: one short ``python -m edge run``
(demo faces, the tiny int8 bundle, a real Mosquitto) while a recorder runs, then check what arrived."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
from jinja2.sandbox import SandboxedEnvironment

from edge.protocol.broker import BrokerSettings
from edge.protocol.envelope import KINDS
from edge.tools.subscribe.plot import plot_recording
from edge.tools.subscribe.record import Recorder
from edge.tools.subscribe.view import FeedState
from edge.tools.subscribe.watch import WatchView, to_text
from tests.support.broker import Broker, mosquitto_available
from tests.support.mqtt import Collector
from tests.support.paths import REPO

DEVICE = "hallway"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def daemon_run(tmp_path_factory, tiny_bundle):
    """Run the daemon for 40 demo frames with 0.5 s summaries; return the broker, collected messages, recording."""
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
    d = tmp_path_factory.mktemp("daemon_run")
    broker = Broker(d / "mosquitto").start()
    collector = Collector(broker, topic="#", client_id="everything").start()
    recorder = Recorder(BrokerSettings(host=broker.host, port=broker.port), d / "rec.sqlite")
    recorder.start()
    cfg = d / "edge.toml"
    cfg.write_text(
        f'[device]\nid = "{DEVICE}"\nname = "Hallway"\nstate_dir = "{d / "state"}"\n'
        f'[source]\nuri = "demo"\nmax_fps = 20\n'
        f'[classifier]\nmodel = "{tiny_bundle}"\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nsummary_interval_s = 0.5\nstatus_interval_s = 0.5\n'
    )
    run = subprocess.run([sys.executable, "-m", "edge", "run", "--config", str(cfg), "--max-frames", "40"],
                         cwd=REPO, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    # The daemon closed its sink after the last PUBACK; wait until the last message (offline status) is stored.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
            json.loads(p).get("state") == "offline" for t, p, _ in collector.messages if t.endswith("/status")):
        time.sleep(0.05)
    time.sleep(0.3)
    recorder.stop()
    collector.stop()
    yield broker, collector, d / "rec.sqlite"
    broker.stop()


def _by_topic(collector: Collector) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for topic, payload, _ in collector.messages:
        out.setdefault(topic, []).append(payload)
    return out


def test_discovery_state_topics_and_template_fields_match_what_the_daemon_publishes(daemon_run):
    _, collector, _ = daemon_run
    topics = _by_topic(collector)
    configs = {t: json.loads(p[-1]) for t, p in topics.items() if t.startswith("homeassistant/") and p[-1]}
    status = json.loads(topics[f"emotion/{DEVICE}/status"][-1])
    labels = status["model"]["labels"]
    assert list(configs) == [f"homeassistant/device/emotion_edge_{DEVICE}/config"]
    [device_config] = configs.values()
    assert device_config["dev"]["sw"] == status["version"] and device_config["dev"]["name"] == "Hallway"
    avail = device_config["avty"][0]
    seen = {p.decode() for p in topics[avail["topic"]]}
    assert seen == {avail["payload_available"], avail["payload_not_available"]}  # online, then offline at stop
    cmps = device_config["cmps"]
    assert {c for c in cmps if "_prob_" in c} == {f"emotion_edge_{DEVICE}_prob_{lab}" for lab in labels}
    env = SandboxedEnvironment()
    for cid, cfg in cmps.items():
        if "state_topic" not in cfg:
            continue  # buttons only send
        states = topics.get(cfg["state_topic"], [])
        assert len(states) >= 2, f"{cid}: nothing arrived on its state topic {cfg['state_topic']}"
        if cfg["platform"] in ("binary_sensor", "switch"):  # plain ON/OFF topics
            on, off = (cfg["payload_on"], cfg["payload_off"]) if cfg["platform"] == "binary_sensor" else \
                (cfg["state_on"], cfg["state_off"])
            assert {p.decode() for p in states} <= {on, off}
            continue
        if "value_template" not in cfg:  # a plain number topic (Faces: state/face_count)
            assert all(p.decode().isdigit() for p in states), (cid, states)
            continue
        fields = set(re.findall(r"value_json\.(\w+)", cfg["value_template"] + cfg.get("json_attributes_template", "")))
        assert fields
        for raw in states:
            msg = json.loads(raw)
            if cfg["platform"] == "event":
                value = env.from_string(cfg["value_template"]).render(value_json=msg).strip()
                if msg["event"] in cfg["event_types"]:
                    assert json.loads(value)["event_type"] == msg["event"]
                else:
                    assert value == ""
                continue
            # Fields that only some messages of a kind carry are read with a default (duration_s and the like).
            assert fields <= set(msg), f"{cid}: template reads {fields - set(msg)} that the daemon does not send"
            value = env.from_string(cfg["value_template"]).render(value_json=msg).strip()
            if cfg.get("device_class") == "enum":
                assert value in cfg["options"]
            if cid.endswith("_dominant_emotion"):
                assert value == (msg["dominant_emotion"] or "none")
            elif cid.endswith("_face_count"):
                assert int(value) == msg["faces_max"]
            elif "_prob_" in cid:
                label = cid.rsplit("_prob_", 1)[1]
                assert float(value) == pytest.approx(100 * msg["mean_probs"].get(label, 0.0), abs=0.051)
            elif cid.endswith("_state"):
                assert value == msg["state"]
    # The demo has faces: at least one window must name a dominant emotion, so the enum is really exercised.
    assert any(json.loads(p)["dominant_emotion"] for p in topics[f"emotion/{DEVICE}/summary"])
    assert b"ON" in topics[f"emotion/{DEVICE}/state/presence"]


def test_recorder_stored_every_daemon_message_once_and_plot_reads_them(daemon_run, tmp_path):
    _, collector, db = daemon_run
    sent = {json.loads(p)["seq"] for t, p, _ in collector.messages
            if t.startswith(f"emotion/{DEVICE}/") and t.rsplit("/", 1)[1] in KINDS}
    from edge.tools.subscribe.store import Recording

    rec = Recording(db, readonly=True)
    assert rec.seqs(DEVICE) == sorted(sent)
    assert rec.count(kind="faces") == 40
    assert rec.labels(DEVICE)[:2] == ["angry", "disgust"]
    rec.close()
    paths = plot_recording(db, tmp_path, width=700, height=400, dpi=70)
    assert sorted(p.name for p in paths) == ["hourly.png", f"timeline_{DEVICE}.png"]
    for p in paths:
        assert p.read_bytes()[16:24] == (700).to_bytes(4, "big") + (400).to_bytes(4, "big")


def test_watch_view_of_the_daemon_messages(daemon_run):
    _, collector, _ = daemon_run
    st = FeedState("emotion", stale_s=1e9)
    last_faces_ts = 0.0
    live = None
    for topic, payload, _ in collector.messages:
        going = payload == b"offline" or (topic.endswith("/status") and json.loads(payload)["state"] == "offline")
        if going and live is None:  # what was shown while the device ran
            live = to_text(WatchView(st).render(now=0.0))
        st.update(topic, payload, now=0.0)
        if topic.endswith("/faces"):
            last_faces_ts = json.loads(payload)["ts"]
    assert last_faces_ts and live
    assert re.search(r"track \d+: \w+ \(\d\.\d\d\)", live)
    text = to_text(WatchView(st).render(now=0.0))
    assert f"{DEVICE}  [offline]  state=offline" in text and "fps=0.0  faces=0" in text
    assert not re.search(r"track \d+: \w+ \(\d\.\d\d\)", text), "an offline device has nobody in view"
    assert "summary: dominant=" in text
