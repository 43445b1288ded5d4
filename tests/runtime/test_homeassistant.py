"""Home Assistant discovery: the device config checked against Home Assistant's own rules, its templates rendered
against real messages, retained publishing through the real MQTT sink (once per start, again when Home Assistant
comes online or the model changes), the migration from per-entity configs, and removal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from jinja2.sandbox import SandboxedEnvironment

from edge.config import parse_config
from edge.runtime.homeassistant import (
    STATE_FILE,
    HomeAssistantDiscovery,
    discovery,
    discovery_message,
)
from edge.runtime.publish.mqtt import MqttSink
from edge.runtime.state import STATE_NAMES
from tests.support.mqtt import LABELS, Collector, sink_config, status_body, summary_body, validator
from tests.support.paths import REPO

#: Extracted from Home Assistant 2025.4 by ``python -m tests.support.ha_schema extract`` (see tests/support/ha_schema.py).
RULES = json.loads((REPO / "tests" / "support" / "ha_mqtt_rules.json").read_text(encoding="utf-8"))
#: Documented options newer than the extracted release: ``default_entity_id`` (Home Assistant 2025.10) replaces
#: ``object_id``; older releases ignore it (discovery drops unknown keys).
NEWER_OPTIONS = {"default_entity_id"}
DEVICE_TOPIC = "homeassistant/device/emotion_edge_kitchen/config"


def render(template: str, payload: dict) -> str:
    """Render a value template the way Home Assistant does (sandboxed Jinja, ``value_json``)."""
    return SandboxedEnvironment().from_string(template).render(value_json=payload).strip()


def _config(**ha):
    return parse_config({"device": {"id": "kitchen", "name": "Kitchen Pi"}, "mqtt": {"topic_prefix": "emo"},
                         "homeassistant": ha})


def _expand(d: dict, table: dict) -> dict:
    return {table.get(k, k): v for k, v in d.items()}


def ha_problems(payload: dict) -> list[str]:
    """What Home Assistant's discovery rules (:data:`RULES`) reject in a device-based discovery payload."""
    problems = []
    p = _expand(payload, RULES["abbreviations"])
    top = RULES["device_discovery"]
    problems += [f"unknown top-level key {k}" for k in set(p) - set(top["allowed"])]
    problems += [f"missing top-level key {k}" for k in set(top["required"]) - set(p)]
    device = _expand(p.get("device", {}), RULES["device_abbreviations"])
    problems += [f"unknown device key {k}" for k in set(device) - set(RULES["device_info"]["allowed"])]
    if not device.get("identifiers"):
        problems.append("the device needs identifiers")
    origin = _expand(p.get("origin", {}), RULES["origin_abbreviations"])
    problems += [f"unknown origin key {k}" for k in set(origin) - set(RULES["origin"]["allowed"])]
    problems += [f"missing origin key {k}" for k in set(RULES["origin"]["required"]) - set(origin)]
    for cid, raw in p.get("components", {}).items():
        comp = _expand(raw, RULES["abbreviations"])
        platform = comp.pop("platform", None)
        rules = RULES["platforms"].get(platform)
        if rules is None:
            problems.append(f"{cid}: platform {platform!r} is not one this test knows")
            continue
        for option in RULES["shared_options"]:
            if option in p and option not in comp:
                comp[option] = p[option]
        problems += [f"{cid}: unknown key {k}" for k in set(comp) - set(rules["allowed"]) - NEWER_OPTIONS]
        problems += [f"{cid}: missing key {k}" for k in set(rules["required"]) - set(comp)]
        if "unique_id" not in comp:
            problems.append(f"{cid}: entity platforms need a unique_id")
        if comp.get("entity_category") not in (None, *RULES["entity_categories"]):
            problems.append(f"{cid}: entity_category {comp['entity_category']!r}")
        if "expire_after" in comp and not (isinstance(comp["expire_after"], int) and comp["expire_after"] > 0):
            problems.append(f"{cid}: expire_after must be a positive integer")
        if comp.get("qos", 0) not in (0, 1, 2):
            problems.append(f"{cid}: qos {comp['qos']!r}")
        if "command_topic" in comp and any(c in comp["command_topic"] for c in "+#"):
            problems.append(f"{cid}: a command topic takes no wildcards")
        if platform == "sensor":
            if comp.get("device_class") not in (None, *RULES["sensor_device_classes"]):
                problems.append(f"{cid}: sensor device_class {comp['device_class']!r}")
            if comp.get("state_class") not in (None, *RULES["sensor_state_classes"]):
                problems.append(f"{cid}: state_class {comp['state_class']!r}")
            # Home Assistant's validate_sensor_state_and_device_class_config.
            if "options" in comp and (comp.get("device_class") != "enum" or not comp["options"]
                                      or "state_class" in comp or "unit_of_measurement" in comp):
                problems.append(f"{cid}: options need device_class enum and no unit or state class")
    return problems


def test_the_device_config_follows_home_assistants_rules():
    topic, payload = discovery_message(_config(), LABELS, version="1.2.3")
    assert topic == DEVICE_TOPIC
    assert ha_problems(payload) == []
    assert payload["dev"] == {"ids": ["emotion_edge_kitchen"], "name": "Kitchen Pi", "mf": "emotion-edge",
                              "mdl": "Edge emotion monitor", "sw": "1.2.3"}  # no model_id: HA means hardware
    assert payload["o"] == {"name": "emotion-edge", "sw": "1.2.3"}, "no support URL unless one is configured"
    assert payload["avty"] == [{"topic": "emo/kitchen/availability", "payload_available": "online",
                                "payload_not_available": "offline"}]
    cmps = payload["cmps"]
    expected = {"dominant_emotion", "face_count", *(f"prob_{lab}" for lab in LABELS), "presence", "privacy",
                "publish_status", "reload_model", "track", "emotion_change", "fps", "cpu_temperature", "state", "outbox_pending",
                "model"}
    assert set(cmps) == {f"emotion_edge_kitchen_{name}" for name in expected}
    for cid, comp in cmps.items():
        # The component key and unique_id are one; default_entity_id is the platform's entity id of it. No
        # object_id: deprecated in Home Assistant 2025.10 and no longer honoured from 2026.4.
        assert comp["unique_id"] == cid and "object_id" not in comp
        assert comp["default_entity_id"] == f"{comp['platform']}.{cid}"
        assert comp["qos"] == 1 and comp["name"]
    # The old unique ids stay, so Home Assistant keeps their entity registry entries.
    assert "emotion_edge_kitchen_prob_happy" in cmps and "emotion_edge_kitchen_dominant_emotion" in cmps
    diagnostics = {cid for cid, c in cmps.items() if c.get("entity_category") == "diagnostic"}
    assert diagnostics == {f"emotion_edge_kitchen_{n}" for n in
                           ("fps", "cpu_temperature", "state", "outbox_pending", "model", "publish_status")}
    assert cmps["emotion_edge_kitchen_reload_model"]["entity_category"] == "config"
    # Fed by periodic messages: unavailable after three missed periods (default intervals 10 s).
    assert {cid: c.get("expire_after") for cid, c in cmps.items() if "expire_after" in c} == {
        **{cid: 30 for cid in cmps if cid.split("emotion_edge_kitchen_")[1] in
           {"dominant_emotion", "face_count", "presence", *(f"prob_{lab}" for lab in LABELS)}},
        **{cid: 30 for cid in diagnostics - {"emotion_edge_kitchen_publish_status"}}}
    presence = cmps["emotion_edge_kitchen_presence"]
    assert presence["platform"] == "binary_sensor" and presence["device_class"] == "occupancy"
    assert presence["state_topic"] == "emo/kitchen/state/presence"
    privacy = cmps["emotion_edge_kitchen_privacy"]
    assert privacy["command_topic"] == "emo/kitchen/paused/set" and privacy["state_topic"] == "emo/kitchen/state/paused"
    assert (privacy["payload_on"], privacy["payload_off"]) == ("ON", "OFF")
    assert cmps["emotion_edge_kitchen_track"]["event_types"] == ["track_start", "track_end"]
    assert cmps["emotion_edge_kitchen_emotion_change"]["event_types"] == ["emotion_change"]
    faces = cmps["emotion_edge_kitchen_face_count"]
    assert faces["state_topic"] == "emo/kitchen/state/face_count" and "value_template" not in faces
    # Every label has its probability sensor, disabled until the user enables it; nothing else is disabled.
    assert {cid for cid, c in cmps.items() if c.get("enabled_by_default") is False} == {
        f"emotion_edge_kitchen_prob_{lab}" for lab in LABELS}
    assert cmps["emotion_edge_kitchen_state"]["options"] == list(STATE_NAMES)
    custom = discovery_message(_config(discovery_prefix="ha", support_url="https://example.org/help"), ["a", "b"])
    assert custom[0] == "ha/device/emotion_edge_kitchen/config"
    assert custom[1]["o"]["url"] == "https://example.org/help"
    assert {c for c in custom[1]["cmps"] if "_prob_" in c} == {"emotion_edge_kitchen_prob_a", "emotion_edge_kitchen_prob_b"}


def test_the_rule_check_catches_what_home_assistant_rejects():
    _, payload = discovery_message(_config(), LABELS)
    cmps = payload["cmps"]
    cmps["emotion_edge_kitchen_presence"]["expire_aftr"] = 5
    cmps["emotion_edge_kitchen_state"]["unit_of_measurement"] = "x"
    del cmps["emotion_edge_kitchen_track"]["event_types"]
    del payload["o"]
    assert sorted(ha_problems(payload)) == [
        "emotion_edge_kitchen_presence: unknown key expire_aftr",
        "emotion_edge_kitchen_state: options need device_class enum and no unit or state class",
        "emotion_edge_kitchen_track: missing key event_types",
        "missing origin key name",
        "missing top-level key origin",
    ]


@pytest.mark.skipif(not os.environ.get("EMOTION_EDGE_HA_PYTHON"),
                    reason="set EMOTION_EDGE_HA_PYTHON to a Python with the homeassistant package (see tests/support/ha_schema.py)")
def test_the_device_config_passes_home_assistants_own_schemas(tmp_path):
    payload = tmp_path / "device.json"
    payload.write_text(json.dumps(discovery_message(_config(support_url="https://example.org/x"), LABELS)[1]))
    r = subprocess.run([os.environ["EMOTION_EDGE_HA_PYTHON"], "-m", "tests.support.ha_schema", "validate", str(payload)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def _envelope(kind: str, body: dict, seq: int = 9) -> dict:
    msg = {"schema_version": 1, "device_id": "kitchen", "kind": kind, "ts": 1.0, "seq": seq, **body}
    assert not list(validator().iter_errors(msg)), "the fixture must be a valid message"
    return msg


def test_templates_read_real_messages():
    cmps = discovery_message(_config(), LABELS)[1]["cmps"]

    def tpl(name: str, key: str = "value_template") -> str:
        return cmps[f"emotion_edge_kitchen_{name}"][key]

    busy = _envelope("summary", summary_body())
    empty = _envelope("summary", {**summary_body(), "frames": 50, "faces_mean": 0.0, "faces_max": 0,
                                  "dominant_emotion": None, "mean_probs": {}, "tracks": []})
    assert render(tpl("dominant_emotion"), busy) == "happy"
    assert render(tpl("dominant_emotion"), empty) == "none"
    assert render(tpl("dominant_emotion"), {**busy, "dominant_emotion": "bored"}) == "none"
    assert json.loads(render(tpl("dominant_emotion", "json_attributes_template"), busy)) == {
        "window_s": 10.0, "frames": 100, "faces_mean": 1.0}
    assert render(tpl("prob_happy"), busy) == "60.0" and render(tpl("prob_happy"), empty) == "0"
    assert render(tpl("prob_sad"), busy) == "6.7"

    status = _envelope("status", {**status_body(), "paused": False, "outbox": {"pending": 3, "dropped": 0},
                                  "mqtt": {"connected": True, "refused": False, "error": None, "protocol": "5"}})
    assert render(tpl("fps"), status) == "9.5"
    assert render(tpl("cpu_temperature"), status) == "None"  # Home Assistant's "unknown"
    assert render(tpl("cpu_temperature"), {**status, "cpu_temp_c": 51.2}) == "51.2"
    assert render(tpl("outbox_pending"), status) == "3"
    assert render(tpl("model"), status) == "tiny-test-0"
    for state in STATE_NAMES:
        assert render(tpl("state"), _envelope("status", {**status, "state": state})) == state
    assert render(tpl("state"), {**status, "state": "exploded"}) == "None"

    start = _envelope("events", {"event": "track_start", "track_id": 4})
    end = _envelope("events", {"event": "track_end", "track_id": 4, "duration_s": 2.5, "dominant_emotion": "sad"})
    command = _envelope("events", {"event": "command", "track_id": None, "command": "pause", "ok": True,
                                   "detail": "capture paused, camera released"})
    assert json.loads(render(tpl("track"), start)) == {"event_type": "track_start", "track_id": 4,
                                                       "duration_s": None, "dominant_emotion": None}
    assert json.loads(render(tpl("track"), end)) == {"event_type": "track_end", "track_id": 4, "duration_s": 2.5,
                                                     "dominant_emotion": "sad"}
    assert render(tpl("track"), command) == "", "other events render empty, which Home Assistant ignores"
    change = _envelope("events", {"event": "emotion_change", "track_id": 4, "previous_emotion": "neutral",
                                  "emotion": "happy", "confidence": 0.71})
    assert json.loads(render(tpl("emotion_change"), change)) == {
        "event_type": "emotion_change", "track_id": 4, "previous_emotion": "neutral", "emotion": "happy",
        "confidence": 0.71}
    assert render(tpl("emotion_change"), start) == "" and render(tpl("track"), change) == ""


def _retained_configs(broker, prefix: str = "homeassistant", wait: float = 1.0) -> dict[str, dict]:
    """What a Home Assistant that starts now would read: the retained configs."""
    c = Collector(broker, topic=f"{prefix}/+/+/config", client_id=f"ha-{time.monotonic_ns()}").start()
    time.sleep(wait)
    c.stop()
    return {t: json.loads(payload) for t, payload, retained in c.messages if retained and payload}


@pytest.mark.slow
def test_discovery_through_the_mqtt_sink_once_per_start_republish_migration_and_removal(broker, tmp_path):
    cfg = sink_config(tmp_path / "state", broker, device_id="kitchen")
    # What an earlier version left behind: retained per-entity configs, listed in the state file.
    legacy = [f"homeassistant/sensor/kitchen_{o}/config" for o in ("dominant_emotion", "face_count", "prob_happy")]
    seeder = Collector(broker, topic="unused/x", client_id="seeder").start()
    for t in legacy:
        body = {"name": "x", "unique_id": t, "state_topic": "emotion/kitchen/summary",
                "device": {"identifiers": ["emotion_edge_kitchen"]}}
        seeder.client.publish(t, json.dumps(body), qos=1, retain=True).wait_for_publish(5)
    (cfg.state_dir() / STATE_FILE).write_text(json.dumps(legacy))
    assert set(_retained_configs(broker)) == set(legacy)

    sink = MqttSink(cfg)
    model = {"id": "m1", "labels": list(LABELS)}
    ha = HomeAssistantDiscovery(cfg, sink.session, lambda: (model["id"], model["labels"]), check_interval_s=0.1,
                                migration_gap_s=0.2)
    watcher = Collector(broker, topic="homeassistant/#", client_id="ha-watch").start()
    try:
        ha.start()
        assert watcher.wait_for(lambda c: c.raw(DEVICE_TOPIC))
        time.sleep(1.0)  # a second announce (the old double publish at start) would arrive by now
        assert len(watcher.raw(DEVICE_TOPIC)) == 1, "one device config per start"
        assert all(watcher.raw(t)[-1:] == [b""] for t in legacy), "the old per-entity configs are cleared"
        sent = [t for t, payload, retained in watcher.messages if not retained]
        assert max(sent.index(t) for t in legacy) < sent.index(DEVICE_TOPIC), "and cleared first"
        retained = _retained_configs(broker)
        assert list(retained) == [DEVICE_TOPIC] and ha_problems(retained[DEVICE_TOPIC]) == []
        assert json.loads((cfg.state_dir() / STATE_FILE).read_text()) == [DEVICE_TOPIC]

        # Home Assistant restarts: it announces itself and the config comes again.
        seeder.client.publish("homeassistant/status", "online", qos=1).wait_for_publish(5)
        assert watcher.wait_for(lambda c: len(c.raw(DEVICE_TOPIC)) == 2)

        # A pushed model with fewer labels: the config comes again without that label's component (Home
        # Assistant removes a component a device config leaves out).
        model.update(id="m2", labels=[lab for lab in LABELS if lab != "disgust"])
        assert watcher.wait_for(lambda c: len(c.raw(DEVICE_TOPIC)) == 3)
        cmps = _retained_configs(broker)[DEVICE_TOPIC]["cmps"]
        assert "emotion_edge_kitchen_prob_disgust" not in cmps and "emotion_edge_kitchen_prob_fear" in cmps
        assert cmps["emotion_edge_kitchen_dominant_emotion"]["options"] == [*model["labels"], "none"]
    finally:
        watcher.stop()
        ha.stop()
        sink.close(2)

    # Plain state topics that a daemon left retained, for --purge to clear.
    for leaf in ("state/presence", "state/paused", "status"):
        seeder.client.publish(f"emotion/kitchen/{leaf}", b"x", qos=1, retain=True).wait_for_publish(5)
    seeder.stop()
    r = subprocess.run([sys.executable, "-m", "edge", "ha-remove", "--device-id", "kitchen", "--purge",
                        "--mqtt-host", broker.host, "--mqtt-port", str(broker.port)],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"cleared {DEVICE_TOPIC}" in r.stdout
    # The device config + status + availability + the four state topics.
    assert "removed 7 retained topics of device 'kitchen'" in r.stdout
    assert _retained_configs(broker) == {}
    leftovers = Collector(broker, topic="emotion/kitchen/#", client_id="leftovers").start()
    time.sleep(0.5)
    leftovers.stop()
    assert [t for t, p, retained in leftovers.messages if retained and p] == []


def test_disabled_discovery_publishes_nothing(broker, tmp_path):
    cfg = parse_config({"device": {"id": "quiet", "state_dir": str(tmp_path / "state")},
                        "mqtt": {"host": broker.host, "port": broker.port}, "homeassistant": {"enabled": False}})
    sink = MqttSink(cfg)
    try:
        assert sink.wait_connected(10)
        assert discovery(cfg, sink.session, lambda: ("tiny", list(LABELS))) is None
        sink.publish("status", status_body())
        assert sink.flush(10)
        assert _retained_configs(broker, wait=0.5) == {}
    finally:
        sink.close(2)
