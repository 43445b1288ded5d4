"""The recipes in integrations/: every field they read exists in the payload schema (and in real payloads), the
Grafana dashboard reads what the Telegraf config writes, and the Node-RED flow runs in a real Node-RED against
a real Mosquitto where Node-RED is installed (NODE_RED, or node-red on PATH; .ci/run installs it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from typing import Any

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from edge.bundle import load_bundle
from edge.protocol.envelope import KINDS, load_schema, make_envelope
from tests.support.broker import free_port
from tests.support.mqtt import Collector, faces_body, sink_config, status_body, summary_body, validator
from tests.support.paths import REPO

RECIPES = REPO / "integrations"
FLOW = RECIPES / "node-red" / "emotion-flow.json"
TELEGRAF = RECIPES / "telegraf" / "emotion.conf"
GRAFANA = RECIPES / "grafana" / "emotion-dashboard.json"
#: The labels of the shipped model: the ones a recipe may name inside mean_probs.
LABELS = load_bundle(REPO / "edge" / "models" / "default")[0].labels
SAMPLES = {"status": status_body(), "summary": summary_body(), "faces": faces_body(3, 2)}


def _kind_of(topic: str) -> str:
    prefix, device, kind = topic.split("/")
    assert (prefix, device) == ("emotion", "+") and kind in (*KINDS, "availability"), topic
    return kind


def _schema_has(kind: str, path: str) -> bool:
    """Whether the dotted ``path`` names a field of ``kind`` in payloads.schema.json (a key of mean_probs must
    be one of the shipped model's labels)."""
    defs = load_schema()["$defs"]
    node: dict[str, Any] = {"properties": {**defs["envelope"]["properties"], **defs[kind]["properties"]}}
    for part in path.split("."):
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif "additionalProperties" in node and part in LABELS:
            node = node["additionalProperties"]
        else:
            return False
    return True


def _sample(kind: str) -> dict[str, Any]:
    """A schema-valid payload of ``kind``, as the daemon's sink sends it."""
    body = {**SAMPLES[kind]}
    if kind == "status":
        body.update(outbox={"pending": 0, "dropped": 0})
    msg = make_envelope(kind, "hallway", 7, body)
    validator().validate(msg)
    return msg


def _resolve(msg: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        msg = msg[part]
    return msg


# --- Node-RED ---------------------------------------------------------------------------------------------------
def test_node_red_flow_is_well_formed_and_reads_only_schema_fields():
    flow = json.loads(FLOW.read_text())
    ids = {n["id"]: n for n in flow}
    assert len(ids) == len(flow)
    tab = next(n for n in flow if n["type"] == "tab")
    for n in flow:
        if n["type"] not in ("tab", "mqtt-broker"):
            assert n["z"] == tab["id"]
        for wire in n.get("wires", []):
            assert all(w in ids for w in wire), n["name"]
    inputs = [n for n in flow if n["type"] == "mqtt in"]
    assert {_kind_of(n["topic"]) for n in inputs} == {"summary", "status", "availability"}
    for n in inputs:
        assert ids[n["broker"]]["type"] == "mqtt-broker" and n["qos"] == "1"
        kind = _kind_of(n["topic"])
        assert n["datatype"] == ("utf8" if kind == "availability" else "json")
        (fn_id,) = n["wires"][0]
        code = ids[fn_id]["func"]
        if kind == "availability":
            assert '"online"' in code
            continue
        # `s` is the payload; `outbox` and `probs` are its sub-objects.
        read = {f"{m}" for m in re.findall(r"\bs\.(\w+)", code)}
        read |= {f"outbox.{m}" for m in re.findall(r"\boutbox\.(\w+)", code)}
        read |= {f"mean_probs.{m}" for m in re.findall(r"\bprobs\.(\w+)", code)}
        assert len(read) >= 5, read
        if kind == "summary":  # every probability, whatever the model's labels: none is named in the flow
            assert "probs: s.mean_probs" in code and not re.findall(r"\bprobs\.(\w+)", code), code
        for path in read:
            assert _schema_has(kind, path), (kind, path)
            _resolve(_sample(kind), path)


def _node_red() -> str | None:
    return os.environ.get("NODE_RED") or shutil.which("node-red")


@pytest.mark.skipif(_node_red() is None, reason="Node-RED is not installed (npm install node-red@4; set NODE_RED)")
def test_node_red_flow_runs_against_the_broker(broker, tmp_path):
    from edge.runtime.publish.mqtt import MqttSink

    flow = json.loads(FLOW.read_text())
    for n in flow:
        if n["type"] == "mqtt-broker":  # what a user does: point the broker node at their broker
            n.update(broker=broker.host, port=str(broker.port))
    (tmp_path / "flows.json").write_text(json.dumps(flow))
    settings = tmp_path / "settings.js"
    settings.write_text(f'module.exports = {{uiHost: "127.0.0.1", uiPort: {free_port()}, flowFile: "flows.json", '
                        'credentialSecret: false, httpAdminRoot: false};\n')
    log = tmp_path / "node-red.log"
    proc = subprocess.Popen([_node_red(), "--userDir", str(tmp_path), "--settings", str(settings)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    sink = MqttSink(sink_config(tmp_path / "state", broker, device_id="hallway"))
    collector = Collector(broker, topic="emotion/hallway/summary").start()
    try:
        deadline = time.monotonic() + 60
        while "Connected to broker" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        sink.publish("status", {**status_body(), "cpu_temp_c": 48.5})
        sink.publish("summary", summary_body())
        assert sink.flush(10)
        out = ""
        while time.monotonic() < deadline and not all(s in out for s in ("[debug:mood]", "[debug:health]",
                                                                             "[debug:online]")):
            time.sleep(0.1)
            out = log.read_text()
        # A redelivery (the same message again, as QoS 1 may deliver it) is dropped by the flow.
        assert collector.wait_for(lambda c: c.raw("emotion/hallway/summary"))
        (sent,) = collector.raw("emotion/hallway/summary")
        collector.client.publish("emotion/hallway/summary", sent, qos=1).wait_for_publish(10)
        assert collector.wait_for(lambda c: len(c.raw("emotion/hallway/summary")) == 2)
        time.sleep(1.0)
    finally:
        collector.stop()
        sink.close(2)
        proc.terminate()
        proc.wait(20)
    out = log.read_text()
    assert out.count("[debug:mood]") == 1, out
    # Node-RED prints each debug message with util.inspect: the device's numbers as the flow made them.
    mood = out.split("[debug:mood]", 1)[1].split("[debug:", 1)[0]
    assert "device: 'hallway'" in mood and "dominant_emotion: 'happy'" in mood and "happy: 0.6" in mood, mood
    health = out.split("[debug:health]", 1)[1].split("[debug:", 1)[0]
    assert "state: 'running'" in health and "cpu_temp_c: 48.5" in health and "fps: 9.5" in health, health
    assert "{ device: 'hallway', online: true }" in out
    assert "error" not in out.lower(), out


# --- Telegraf -------------------------------------------------------------------------------------------------
def _expand(text: str, env: dict[str, str]) -> str:
    """Telegraf's ``${VAR:-default}`` expansion (done before it parses the file)."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1)) or m.group(2), text)


def _telegraf(env: dict[str, str] | None = None) -> dict[str, Any]:
    return tomllib.loads(_expand(TELEGRAF.read_text(), env or {}))


def test_telegraf_reads_the_topic_prefix_from_one_place():
    text = TELEGRAF.read_text()
    assert "emotion/" not in re.sub(r"#.*", "", text), "no topic spelled out: all from EMOTION_TOPIC_PREFIX"
    conf = _telegraf({"EMOTION_TOPIC_PREFIX": "upstairs"})
    for c in conf["inputs"]["mqtt_consumer"]:
        (topic,) = c["topics"]
        assert topic.startswith("upstairs/+/") and c["topic_parsing"][0]["topic"] == topic


def telegraf_fields() -> dict[str, set[str]]:
    """Measurement -> the field names the Telegraf config writes (its json_v2 renames, or the path)."""
    out: dict[str, set[str]] = {}
    conf = _telegraf()
    for consumer in conf["inputs"]["mqtt_consumer"]:
        for j in consumer.get("json_v2", []):
            out[j["measurement_name"]] = {f.get("rename", f["path"]) for f in j.get("field", [])}
        if consumer.get("data_format") == "value":
            dests = {m["dest"] for e in conf["processors"]["enum"] if consumer["name_override"] in e["namepass"]
                     for m in e["mapping"]}
            out[consumer["name_override"]] = {"value", *dests}
    return out


def test_telegraf_config_reads_schema_fields_from_each_topic():
    conf = _telegraf()
    consumers = conf["inputs"]["mqtt_consumer"]
    assert {_kind_of(t) for c in consumers for t in c["topics"]} == {"summary", "status", "availability"}
    for c in consumers:
        (topic,) = c["topics"]
        kind = _kind_of(topic)
        assert c["qos"] == 1 and c["topic_parsing"][0] == {"topic": topic, "tags": "_/device/_"}
        if kind == "availability":
            assert c["data_format"] == "value" and c["data_type"] == "string"
            continue
        assert c["data_format"] == "json_v2"
        (j,) = c["json_v2"]
        assert j["timestamp_path"] == "ts" and j["timestamp_format"] == "unix"
        required = set(load_schema()["$defs"][kind]["required"]) | set(load_schema()["$defs"]["envelope"]["required"])
        msg = _sample(kind)
        for entry in [*j.get("field", []), *j.get("tag", [])]:
            path = entry["path"]
            assert _schema_has(kind, path), (kind, path)
            top = path.split(".")[0]
            # A path Telegraf must find (not optional) is one the schema requires: parsing never fails on it.
            assert entry.get("optional") or top in required, (kind, path)
            value = _resolve(msg, path)
            kind_ok = {"float": (int, float), "int": (int,), "string": (str,)}.get(entry.get("type"), (str,))
            assert value is None or isinstance(value, kind_ok), (path, value)
        names = [f.get("rename", f["path"]) for f in j.get("field", [])]
        assert len(names) == len(set(names)) and all("." not in n for n in names), names
    probs = {f["path"].split(".")[1] for c in consumers for j in c.get("json_v2", []) for f in j.get("field", [])
             if f["path"].startswith("mean_probs.")}
    assert probs == set(LABELS)  # a field per label of the shipped model
    status = next(j for c in consumers for j in c.get("json_v2", []) if j["measurement_name"] == "emotion_status")
    assert "tag" not in status and {"path": "state", "type": "string"} in [
        {k: v for k, v in f.items() if k in ("path", "type")} for f in status["field"]], "state is a field, not a tag"
    (enum,) = conf["processors"]["enum"]
    assert enum["mapping"][0]["value_mappings"] == {"online": 1, "offline": 0}


# --- Grafana --------------------------------------------------------------------------------------------------
def test_grafana_dashboard_reads_what_telegraf_writes():
    dash = json.loads(GRAFANA.read_text())
    fields = telegraf_fields()
    bucket = _telegraf()["outputs"]["influxdb_v2"][0]["bucket"]
    assert [i["name"] for i in dash["__inputs"]] == ["DS_INFLUXDB"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) >= 6
    (device_var,) = dash["templating"]["list"]
    assert f'bucket: "{bucket}"' in device_var["query"] and 'tag: "device"' in device_var["query"]
    seen: set[tuple[str, str]] = set()
    for p in dash["panels"]:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["datasource"]["uid"] == "${DS_INFLUXDB}"
        for t in p["targets"]:
            q = t["query"]
            assert f'from(bucket: "{bucket}")' in q and "r.device =~ /^${device:regex}$/" in q, q
            (measurement,) = re.findall(r'r\._measurement == "(\w+)"', q)
            assert measurement in fields, measurement
            wanted = re.findall(r'r\._field == "(\w+)"', q)
            patterns = re.findall(r"r\._field =~ /(.+?)/", q)
            assert wanted or patterns, q
            for name in wanted:
                assert name in fields[measurement], (p["title"], measurement, name)
                seen.add((measurement, name))
            for pattern in patterns:
                hits = {f for f in fields[measurement] if re.search(pattern, f)}
                assert hits == {f"p_{lab}" for lab in LABELS}, (pattern, hits)
    assert ("emotion_availability", "online") in seen and ("emotion_summary", "dominant_emotion") in seen
