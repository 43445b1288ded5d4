"""What the live tools know about each device, folded from the contract messages: shared by ``watch`` (the
terminal) and ``dashboard`` (the web page), so both show the same numbers.

:class:`FeedState` is a pure function of the messages seen (no network, no terminal), so it is tested by
feeding it messages; :func:`health`, :func:`live_tracks` and :func:`emotion_mix` derive what a view shows.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from edge.protocol.topics import parse_topic
from edge.tools.subscribe.client import decode_json, envelope_ok
from edge.tools.subscribe.store import is_number

#: Fixed colours for the FER labels so every chart, terminal and page reads the same.
LABEL_COLORS = {
    "angry": "#d62728", "disgust": "#2ca02c", "fear": "#9467bd", "happy": "#f2c80f",
    "sad": "#1f77b4", "surprise": "#ff7f0e", "neutral": "#9e9e9e", "contempt": "#8c564b",
}
#: Colours for labels outside :data:`LABEL_COLORS` (matplotlib's tab10 order), picked by label position.
EXTRA_COLORS = ("#17becf", "#bcbd22", "#e377c2", "#7f7f7f", "#8c564b", "#1f77b4", "#ff7f0e", "#2ca02c")


def label_colors(labels: list[str]) -> list[str]:
    """One ``#rrggbb`` colour per label: the fixed FER colours, else a tab10 colour by position."""
    return [LABEL_COLORS.get(lab, EXTRA_COLORS[i % len(EXTRA_COLORS)]) for i, lab in enumerate(labels)]


@dataclass
class DeviceView:
    """What the live tools know about one device.

    ``last_seen`` and ``faces_ts`` are this machine's clock when the message arrived (ages are measured on one
    clock, whatever the device's clock says); ``status`` is the body of the newest status message.
    """

    device: str
    availability: str = "?"
    state: str | None = None
    model_id: str | None = None
    labels: list[str] = field(default_factory=list)
    fps: float | None = None
    status: dict[str, Any] = field(default_factory=dict)
    last_seq: int | None = None
    last_ts: float = float("-inf")
    last_seen: float = 0.0
    faces_ts: float = 0.0
    tracks: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    face_history: deque = field(default_factory=lambda: deque(maxlen=30))
    duplicates: int = 0
    messages: int = 0

    @property
    def offline(self) -> bool:
        """Whether the device is off the air: its Last Will (or clean stop) said ``offline``, or its last status did.
        After a crash the retained status still says what it said before, so availability decides."""
        return self.availability == "offline" or self.state == "offline"

    @property
    def shown_state(self) -> str | None:
        """The state to show: ``offline`` while :attr:`offline`, else the last status's."""
        return "offline" if self.offline else self.state

    @property
    def shown_fps(self) -> float | None:
        """The frame rate to show: 0 while offline or paused (no frame is processed), else the last status's."""
        return 0.0 if self.offline or self.state == "paused" else self.fps


def _probs_ok(v: Any) -> bool:
    return isinstance(v, dict) and all(is_number(p) for p in v.values())


def body_ok(kind: str, msg: dict[str, Any]) -> bool:
    """Whether the fields the views show have the contract's types (another publisher's JSON may not)."""
    if kind == "status":
        model = msg.get("model")
        return (isinstance(msg.get("state"), (str, type(None))) and (msg.get("fps") is None or is_number(msg["fps"]))
                and (model is None or (isinstance(model, dict) and isinstance(model.get("labels", []), list)
                                       and all(isinstance(x, str) for x in model.get("labels", [])))))
    if kind == "faces":
        faces = msg.get("faces", [])
        return isinstance(faces, list) and all(
            isinstance(f, dict) and _probs_ok(f.get("probs", {})) and (f.get("confidence") is None or is_number(f["confidence"]))
            for f in faces)
    if kind == "summary":
        return (_probs_ok(msg.get("mean_probs", {})) and (msg.get("faces_mean") is None or is_number(msg["faces_mean"]))
                and isinstance(msg.get("dominant_emotion"), (str, type(None))))
    return True


class FeedState:
    """Folds contract messages into per-device views. Thread-safe: paho's thread updates, a view reads.

    Args:
        prefix: Topic prefix.
        stale_s: A device that sent no ``faces`` update for this long shows zero faces (the daemon only
            publishes ``faces`` for frames with at least one face).
    """

    def __init__(self, prefix: str = "emotion", stale_s: float = 2.0) -> None:
        self.prefix = prefix
        self.stale_s = stale_s
        self.devices: dict[str, DeviceView] = {}
        self._lock = threading.Lock()

    def update(self, topic: str, payload: bytes, now: float | None = None) -> bool:
        """Apply one MQTT message; ``False`` if it is not a contract topic or not a valid payload."""
        parsed = parse_topic(topic, self.prefix)
        if parsed is None:
            return False
        device, kind = parsed
        now = time.time() if now is None else now
        with self._lock:
            view = self.devices.setdefault(device, DeviceView(device))
            if kind == "availability":
                text = payload.decode("utf-8", "replace").strip()
                if text:
                    view.availability = text
                return bool(text)
            msg = decode_json(payload)
            if msg is None or not envelope_ok(msg) or not body_ok(kind, msg):
                return False
            seq, ts = msg["seq"], float(msg["ts"])
            # A redelivery is an old message: no higher seq and no newer ts. A device whose state folder was
            # wiped starts again at seq 1, with newer timestamps: that is news, not a redelivery.
            if view.last_seq is not None and seq <= view.last_seq and ts <= view.last_ts and kind != "status":
                view.duplicates += 1  # its content is already shown
                return True
            view.last_seq = seq if view.last_seq is None or ts > view.last_ts else max(seq, view.last_seq)
            view.last_ts = max(ts, view.last_ts)
            view.last_seen = now
            view.messages += 1
            if kind == "status":
                view.status = msg
                view.state = msg.get("state")
                model = msg.get("model") or {}
                view.model_id = msg.get("model_id") or model.get("id")
                view.labels = list(model.get("labels") or view.labels)
                view.fps = msg.get("fps")
            elif kind == "faces":
                view.tracks = list(msg.get("faces") or [])
                view.faces_ts = now
                view.face_history.append(len(view.tracks))
            elif kind == "summary":
                view.summary = msg
            return True

    def snapshot(self) -> list[DeviceView]:
        """Copies of the device views, sorted by device id, to render without holding the lock."""
        with self._lock:
            return [copy.deepcopy(self.devices[k]) for k in sorted(self.devices)]


def labels_of(view: DeviceView) -> list[str]:
    """The device's class labels: the model's from its status, else those seen in its probabilities."""
    if view.labels:
        return view.labels
    seen: dict[str, None] = {}
    for t in view.tracks:
        seen.update(dict.fromkeys(t.get("probs") or {}))
    seen.update(dict.fromkeys((view.summary or {}).get("mean_probs") or {}))
    return list(seen)


def live_tracks(view: DeviceView, now: float, stale_s: float) -> list[dict[str, Any]]:
    """The tracks of the last ``faces`` message, or none when it is older than ``stale_s`` (nobody there) or the
    device is offline."""
    return view.tracks if now - view.faces_ts <= stale_s and not view.offline else []


def emotion_mix(view: DeviceView, now: float, stale_s: float) -> tuple[dict[str, float], str]:
    """Per-label probability to show and where it comes from: the mean over the live tracks ("now"), else the
    last summary window ("last 10s"), else nothing (``{}``, "")."""
    labels = labels_of(view)
    live = live_tracks(view, now, stale_s)
    if live:
        return {lab: sum((t.get("probs") or {}).get(lab, 0.0) for t in live) / len(live) for lab in labels}, "now"
    if view.summary and view.summary.get("mean_probs"):
        return ({lab: float(view.summary["mean_probs"].get(lab, 0.0)) for lab in labels},
                f"last {view.summary.get('window_s', '?')}s")
    return {}, ""


def age_s(view: DeviceView, now: float) -> float | None:
    """Seconds since the device's last contract message arrived, ``None`` if none has."""
    return now - view.last_seen if view.last_seen else None


def health(view: DeviceView, now: float, stale_after_s: float = 30.0) -> tuple[str, str]:
    """``(level, reason)`` of a device: level ``ok``, ``warn`` or ``bad``, reason a few words for a person.

    ``bad``: offline, never heard, or silent for ``stale_after_s`` (a hung daemon whose Last Will has not
    fired); ``warn``: degraded, a source retrying, the broker link down, or messages dropped by the outbox.
    """
    age = age_s(view, now)
    st = view.status
    if view.availability == "offline" or view.state == "offline":
        return "bad", "offline"
    if age is None:
        return "bad", "no messages yet"
    if age > stale_after_s:
        return "bad", f"silent for {age:.0f}s"
    source = found if isinstance(found := st.get("source"), dict) else {}
    outbox = found if isinstance(found := st.get("outbox"), dict) else {}
    mqtt = found if isinstance(found := st.get("mqtt"), dict) else {}
    if view.state == "degraded":
        return "warn", "degraded"
    if source.get("state") not in (None, "ok"):
        return "warn", f"source {source.get('state')}"
    if mqtt.get("connected") is False:
        return "warn", "broker link down"
    if is_number(outbox.get("dropped")) and outbox["dropped"] > 0:
        return "warn", f"outbox dropped {outbox['dropped']}"
    return "ok", "ok"


def status_figures(view: DeviceView) -> dict[str, Any]:
    """The status numbers the views show, flat and JSON-ready (``None`` where the device did not say)."""
    st = view.status

    def sub(key: str) -> dict[str, Any]:
        return found if isinstance(found := st.get(key), dict) else {}

    def num(value: Any) -> float | None:
        return value if is_number(value) else None

    latency = sub("latency_ms")
    stages = [num(latency.get(k)) for k in ("capture", "detect", "classify", "track", "publish")]
    return {
        "frames": num(st.get("frames")), "dropped_frames": num(st.get("dropped_frames")),
        "cpu_temp_c": num(st.get("cpu_temp_c")), "uptime_s": num(st.get("uptime_s")),
        "outbox_pending": num(sub("outbox").get("pending")), "outbox_dropped": num(sub("outbox").get("dropped")),
        "source_state": sub("source").get("state"), "source_error": sub("source").get("error"),
        "mqtt_connected": sub("mqtt").get("connected"), "detector": st.get("detector"),
        "latency_ms": round(sum(s for s in stages if s is not None), 2) if any(s is not None for s in stages) else None,
        "version": st.get("version"),
    }
