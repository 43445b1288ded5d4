"""MQTT test support: a persistent-session subscriber, a config for a test broker, the payload validator."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt

from edge.config import Config, parse_config
from edge.protocol.envelope import KINDS, load_schema
from edge.protocol.topics import parse_topic
from tests.support.broker import Broker


@functools.cache
def validator() -> jsonschema.Draft202012Validator:
    """The Draft 2020-12 validator of edge/protocol/payloads.schema.json (built once)."""
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def sink_config(state_dir: Path, broker: Broker | None, device_id: str = "dev1", **mqtt_opts: Any) -> Config:
    """A config publishing to ``broker`` with fast reconnects, state in ``state_dir``."""
    mqtt_section: dict[str, Any] = {"reconnect_min_s": 0.2, "reconnect_max_s": 1.0}
    if broker is not None:
        mqtt_section.update(host=broker.host, port=broker.port)
    mqtt_section.update(mqtt_opts)
    return parse_config({"device": {"id": device_id, "state_dir": str(state_dir)}, "mqtt": mqtt_section})


class Collector:
    """A QoS 1 subscriber with a persistent session (clean_session False, fixed client id).

    The broker keeps its subscription and queues messages for it while it is disconnected (broker restart,
    or before it reconnects), so it loses nothing; it reconnects on its own.
    """

    def __init__(self, broker: Broker, topic: str = "emotion/#", client_id: str = "test-collector",
                 tls_ca: Path | None = None, username: str | None = None, password: str | None = None):
        self.broker = broker
        self.topic = topic
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(0.1, 0.5)
        if tls_ca is not None:
            self.client.tls_set(ca_certs=str(tls_ca))
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def start(self, timeout: float = 5.0) -> Collector:
        """Connect, subscribe, and wait for the SUBACK."""
        self.client.connect(self.broker.host, self.broker.port, keepalive=5)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            raise RuntimeError("collector did not get its SUBACK")
        return self

    def stop(self) -> None:
        """Disconnect (the broker keeps the session)."""
        self.client.disconnect()
        self.client.loop_stop()

    def envelopes(self, kind: str | None = None) -> list[dict[str, Any]]:
        """All JSON envelopes received so far (duplicates included), optionally of one kind."""
        with self._lock:
            msgs = list(self.messages)
        out = []
        for t, payload, _ in msgs:
            parsed = parse_topic(t, "emotion")
            if parsed is None or parsed[1] not in KINDS:  # availability and the plain state/... topics
                continue
            env = json.loads(payload)
            if kind is None or env["kind"] == kind:
                out.append(env)
        return out

    def raw(self, topic: str) -> list[bytes]:
        """Payloads received on one exact topic."""
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def wait_for(self, predicate: Callable[[Collector], bool], timeout: float = 10.0) -> bool:
        """Poll ``predicate(self)`` until true or ``timeout``; returns the last result."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.05)
        return predicate(self)

    def unique_seqs(self) -> list[int]:
        """Seqs in first-arrival order with duplicates removed (how a subscriber dedups)."""
        seen: set[int] = set()
        out = []
        for env in self.envelopes():
            if env["seq"] not in seen:
                seen.add(env["seq"])
                out.append(env["seq"])
        return out


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; its last value decides (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def assert_in_order_without_gaps(seqs: list[int], expected: range) -> None:
    """First-arrival seqs must be exactly ``expected``: none missing, none reordered."""
    missing = sorted(set(expected) - set(seqs))
    assert not missing, f"missing seqs: {missing[:20]} ({len(missing)} in all)"
    assert seqs == sorted(seqs), f"reordered seqs, first bad pair at {_first_disorder(seqs)}"
    assert seqs == list(expected)


def _first_disorder(seqs: list[int]) -> tuple[int, int] | None:
    for a, b in zip(seqs, seqs[1:], strict=False):
        if b < a:
            return a, b
    return None


LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def _probs(top: int) -> dict[str, float]:
    rest = 0.4 / (len(LABELS) - 1)
    return {label: (0.6 if i == top else rest) for i, label in enumerate(LABELS)}


def status_body(state: str = "running", frames: int = 0, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """A complete status body as the daemon sends it: ``stats`` (default: an empty outbox) is the sink's
    ``stats()``, put in as :meth:`edge.runtime.daemon.Daemon.status_body` does (outbox, then mqtt last)."""
    stats = stats or {"pending": 0, "dropped": 0}
    body = {
        "state": state,
        "model_id": "tiny-test-0",
        "model": {"id": "tiny-test-0", "runtime": "ai_edge_litert", "labels": LABELS},
        "detector": "mediapipe",
        "source": {"uri": "demo", "state": "ok", "error": None, "retries": 0},
        "fps": 9.5,
        "frames": frames,
        "dropped_frames": 0,
        "latency_ms": {"capture": 0.4, "detect": 1.1, "classify": 0.2, "track": 0.05, "publish": 0.1},
        "outbox": {"pending": stats["pending"], "dropped": stats["dropped"]},
        "cpu_temp_c": None,
        "uptime_s": 12.5,
        "version": "0.1.0",
        "model_push": None,
    }
    if "mqtt" in stats:
        body["mqtt"] = stats["mqtt"]
    return body


def faces_body(frame: int, n_faces: int = 1) -> dict[str, Any]:
    """A faces body with ``n_faces`` tracks."""
    return {
        "frame": frame,
        "width": 640,
        "height": 480,
        "faces": [
            {
                "track_id": i,
                "box": [0.1 + 0.2 * i, 0.2, 0.15, 0.2],
                "emotion": LABELS[(frame + i) % len(LABELS)],
                "confidence": 0.6,
                "probs": _probs((frame + i) % len(LABELS)),
                "raw_probs": _probs((frame + i) % len(LABELS)),
            }
            for i in range(n_faces)
        ],
    }


def summary_body() -> dict[str, Any]:
    """A summary body over one window with one track."""
    return {
        "window_s": 10.0,
        "start_ts": 1_700_000_000.0,
        "end_ts": 1_700_000_010.0,
        "frames": 100,
        "faces_mean": 1.0,
        "faces_max": 1,
        "dominant_emotion": "happy",
        "mean_probs": _probs(3),
        "tracks": [{"track_id": 0, "observations": 100, "dominant_emotion": "happy", "mean_probs": _probs(3)}],
    }


def event_body(i: int) -> dict[str, Any]:
    """A track_start event for track ``i``."""
    return {"event": "track_start", "track_id": i}


def publish_mixed(sink: Any, start: int, n: int) -> None:
    """``n`` contract messages of every kind through a sink, as the daemon would send them (2 faces, then a
    summary, an event and a status, repeating)."""
    for i in range(start, start + n):
        kind = ("faces", "faces", "summary", "events", "status")[i % 5]
        body = {"faces": faces_body(i, 1 + i % 3), "summary": summary_body(), "events": event_body(i),
                "status": status_body(frames=i)}[kind]
        sink.publish(kind, body)


class RecordingSession:
    """A broker session with no broker behind it (:class:`edge.runtime.publish.base.BrokerSession`): it keeps what
    is published and which topics were subscribed, so a channel's own checks and answers can be driven directly."""

    connected = False

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.subscribed: list[str] = []

    def publish(self, kind: str, body: dict[str, Any]) -> int:
        self.published.append((kind, body))
        return len(self.published)

    def events(self) -> list[dict[str, Any]]:
        """The ``events`` bodies published so far."""
        return [body for kind, body in self.published if kind == "events"]

    def publish_raw(self, topic: str, payload: bytes | str, retain: bool = False, qos: int = 1,
                    properties: Any = None) -> None:
        self.published.append(("raw", {"topic": topic, "payload": payload}))

    def subscribe(self, topic: str, callback: Any, **options: Any) -> None:
        self.subscribed.append(topic)

    def add_connect_hook(self, fn: Any) -> None:
        """Never called back: this session never connects."""
