"""Home Assistant discovery: payload contents, templates rendered against real messages, retained publishing
through the real MQTT sink, re-publish on HA restart, model changes, and removal."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jinja2.sandbox import SandboxedEnvironment

from edge.config import parse_config
from edge.runtime.homeassistant import HomeAssistantDiscovery, attach, config_topic, discovery_messages
from edge.runtime.publish.mqtt import MqttSink
from tests.mqtt_support import LABELS, Collector, sink_config, status_body, summary_body, validator

REPO = Path(__file__).resolve().parent.parent


def render(template: str, payload: dict) -> str:
    """Render a value template the way Home Assistant does (sandboxed Jinja, ``value_json``)."""
    return SandboxedEnvironment().from_string(template).render(value_json=payload).strip()


def _config(**ha):
    return parse_config({"device": {"id": "kitchen", "name": "Kitchen Pi"}, "mqtt": {"topic_prefix": "emo"},
                         "homeassistant": ha})


def test_discovery_payloads_carry_the_required_fields():
    msgs = dict(discovery_messages(_config(), LABELS, "sepse-1", version="1.2.3"))
    assert set(msgs) == {f"homeassistant/sensor/kitchen_{o}/config"
                         for o in ["dominant_emotion", "face_count", *(f"prob_{lab}" for lab in LABELS)]}
    assert len({p["unique_id"] for p in msgs.values()}) == len(msgs)
    for p in msgs.values():
        assert p["state_topic"] == "emo/kitchen/summary"
        assert p["availability"] == [{"topic": "emo/kitchen/availability", "payload_available": "online",
                                      "payload_not_available": "offline"}]
        assert p["device"]["identifiers"] == ["emotion_edge_kitchen"]
        assert p["device"]["name"] == "Kitchen Pi" and p["device"]["sw_version"] == "1.2.3"
        assert p["device"]["model"] and p["device"]["model_id"] == "sepse-1"
        assert p["origin"]["name"] == "emotion-edge" and p["origin"]["sw_version"] == "1.2.3"
        assert p["origin"]["support_url"].startswith("https://")
        assert p["name"] and p["value_template"]
    dom = msgs["homeassistant/sensor/kitchen_dominant_emotion/config"]
    assert dom["device_class"] == "enum" and dom["options"] == [*LABELS, "none"]
    assert "unit_of_measurement" not in dom and "state_class" not in dom  # HA rejects these on enum sensors
    happy = msgs["homeassistant/sensor/kitchen_prob_happy/config"]
    assert happy["unit_of_measurement"] == "%" and happy["state_class"] == "measurement"
    custom = dict(discovery_messages(_config(discovery_prefix="ha", support_url="https://example.org/help"),
                                     ["a", "b"], "m"))
    assert set(custom) == {"ha/sensor/kitchen_dominant_emotion/config", "ha/sensor/kitchen_face_count/config",
                           "ha/sensor/kitchen_prob_a/config", "ha/sensor/kitchen_prob_b/config"}
    assert all(p["origin"]["support_url"] == "https://example.org/help" for p in custom.values())


def test_templates_read_real_summary_fields():
    msgs = dict(discovery_messages(_config(), LABELS, "m"))
    busy = {"schema_version": 1, "device_id": "kitchen", "kind": "summary", "ts": 1.0, "seq": 9, **summary_body()}
    empty = {**busy, "seq": 10, "frames": 50, "faces_mean": 0.0, "faces_max": 0, "dominant_emotion": None,
             "mean_probs": {}, "tracks": []}
    for msg in (busy, empty):
        assert not list(validator().iter_errors(msg)), "the fixture must be a valid summary"
    dom = msgs[config_topic(_config(), "dominant_emotion")]
    assert render(dom["value_template"], busy) == "happy"
    assert render(dom["value_template"], empty) == "none"
    assert render(dom["value_template"], {**busy, "dominant_emotion": "bored"}) == "none"
    assert json.loads(render(dom["json_attributes_template"], busy)) == {
        "window_s": 10.0, "frames": 100, "faces_mean": 1.0}
    faces = msgs[config_topic(_config(), "face_count")]
    assert render(faces["value_template"], busy) == "1" and render(faces["value_template"], empty) == "0"
    happy = msgs[config_topic(_config(), "prob_happy")]
    assert render(happy["value_template"], busy) == "60.0"
    assert render(happy["value_template"], empty) == "0"
    sad = msgs[config_topic(_config(), "prob_sad")]
    assert render(sad["value_template"], busy) == "6.7"


def _retained_configs(broker, prefix: str = "homeassistant", wait: float = 1.0) -> dict[str, dict]:
    """What a Home Assistant that starts now would read: the retained configs."""
    c = Collector(broker, topic=f"{prefix}/+/+/config", client_id=f"ha-{time.monotonic_ns()}").start()
    time.sleep(wait)
    c.stop()
    out: dict[str, dict] = {}
    for t, payload, retained in c.messages:
        if retained and payload:
            out[t] = json.loads(payload)
    return out


@pytest.mark.slow
def test_discovery_through_the_mqtt_sink_republish_model_change_and_removal(broker, tmp_path):
    cfg = sink_config(tmp_path / "state", broker, device_id="kitchen")
    sink = MqttSink(cfg)
    model = {"id": "m1", "labels": list(LABELS)}
    ha = HomeAssistantDiscovery(cfg, sink, lambda: (model["id"], model["labels"]), check_interval_s=0.1)
    try:
        assert sink.wait_connected(10)
        watcher = Collector(broker, topic="homeassistant/#", client_id="ha-watch").start()
        ha.start()
        assert watcher.wait_for(lambda c: len(c.messages) >= 9)
        sink.publish("summary", summary_body())
        assert sink.flush(10)
        retained = _retained_configs(broker)
        assert len(retained) == 9 and all(p["device"]["model_id"] == "m1" for p in retained.values())

        # Home Assistant restarts: it announces itself and the configs come again.
        before = len(watcher.messages)
        pub = Collector(broker, topic="unused/x", client_id="ha-core").start()
        pub.client.publish("homeassistant/status", "online", qos=1).wait_for_publish(5)
        assert watcher.wait_for(lambda c: len(c.messages) >= before + 9)

        # A pushed model with fewer labels: its configs are re-published, the gone label's config is cleared.
        model.update(id="m2", labels=[lab for lab in LABELS if lab != "disgust"])
        assert watcher.wait_for(lambda c: b"" in c.raw("homeassistant/sensor/kitchen_prob_disgust/config"))
        retained = _retained_configs(broker)
        assert len(retained) == 8 and "homeassistant/sensor/kitchen_prob_disgust/config" not in retained
        assert retained["homeassistant/sensor/kitchen_dominant_emotion/config"]["options"] == [*model["labels"], "none"]
        pub.stop()
        watcher.stop()
    finally:
        ha.stop()
        sink.close(2)

    # Restarted with the full label set while it was stopped, and then with fewer labels again: the configs
    # of labels that are gone are cleared although this process never published them (the state file knows).
    def start_once_with(model_id: str, labels: list[str]) -> None:
        """A fresh daemon process's discovery: a new sink and extension that publish once, then stop."""
        restarted = MqttSink(cfg)
        try:
            assert restarted.wait_connected(10)
            HomeAssistantDiscovery(cfg, restarted, lambda: (model_id, labels), check_interval_s=60).publish()
            assert restarted.flush(10)
        finally:
            restarted.close(2)

    start_once_with("m3", list(LABELS))
    start_once_with("m4", [lab for lab in LABELS if lab not in ("disgust", "fear")])
    retained = _retained_configs(broker)
    assert len(retained) == 7 and not any("prob_disgust" in t or "prob_fear" in t for t in retained), sorted(retained)

    # Removal (what the uninstaller runs): every retained config of this device is cleared.
    r = subprocess.run([sys.executable, "-m", "edge", "ha-remove", "--device-id", "kitchen", "--purge",
                        "--mqtt-host", broker.host, "--mqtt-port", str(broker.port)],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "removed 9 retained topics of device 'kitchen'" in r.stdout  # 7 configs + status + availability
    assert _retained_configs(broker) == {}
    leftovers = Collector(broker, topic="emotion/kitchen/+", client_id="leftovers").start()
    time.sleep(0.5)
    leftovers.stop()
    assert [t for t, p, retained in leftovers.messages if retained and p] == []


def test_disabled_discovery_publishes_nothing(broker, tmp_path):
    cfg = parse_config({"device": {"id": "quiet", "state_dir": str(tmp_path / "state")},
                        "mqtt": {"host": broker.host, "port": broker.port}, "homeassistant": {"enabled": False}})
    sink = MqttSink(cfg)

    class Registry:  # the daemon's add_extension, reduced to what attach() calls
        def __init__(self):
            self.extensions = []

        def add_extension(self, ext):
            self.extensions.append(ext)

    daemon = Registry()
    try:
        assert sink.wait_connected(10)
        assert attach(daemon, sink, cfg) is None and daemon.extensions == []
        sink.publish("status", status_body())
        assert sink.flush(10)
        assert _retained_configs(broker, wait=0.5) == {}
    finally:
        sink.close(2)
