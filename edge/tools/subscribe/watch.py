"""``watch``: a live terminal view of one or many devices, redrawn in place with ANSI escapes.

Per device: online/offline, state, model, fps, face count with a sparkline of its history, each track's
smoothed emotion and confidence, and one bar per emotion. The view is a pure function of the messages seen
(:class:`WatchState`), so it is tested without a terminal; ``--once`` prints a single plain snapshot.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from edge.protocol.broker import BrokerSettings
from edge.protocol.topics import parse_topic
from edge.tools.subscribe.client import (
    Subscriber,
    decode_json,
    envelope_ok,
    subscription_filters,
)
from edge.tools.subscribe.store import is_number

log = logging.getLogger(__name__)

_SPARK = "▁▂▃▄▅▆▇█"
_EIGHTHS = " ▏▎▍▌▋▊▉█"


def bar(fraction: float, width: int) -> str:
    """A horizontal bar of ``width`` cells filled to ``fraction`` (0..1), with eighth-cell resolution."""
    fraction = min(max(float(fraction), 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    text = "█" * full + (_EIGHTHS[part] if part else "")
    return text.ljust(width)


def sparkline(values: Sequence[float], top: float | None = None) -> str:
    """One character per value, scaled to ``top`` (default the largest value)."""
    if not values:
        return ""
    top = top if top is not None else max(values)
    if top <= 0:
        return _SPARK[0] * len(values)
    return "".join(_SPARK[min(len(_SPARK) - 1, int(v / top * (len(_SPARK) - 1) + 0.5))] for v in values)


@dataclass
class DeviceView:
    """What the watcher knows about one device."""

    device: str
    availability: str = "?"
    state: str | None = None
    model_id: str | None = None
    labels: list[str] = field(default_factory=list)
    fps: float | None = None
    last_seq: int | None = None
    last_ts: float = float("-inf")
    last_seen: float = 0.0
    faces_ts: float = 0.0
    tracks: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    face_history: deque = field(default_factory=lambda: deque(maxlen=30))
    duplicates: int = 0


def _probs_ok(v: Any) -> bool:
    return isinstance(v, dict) and all(is_number(p) for p in v.values())


def body_ok(kind: str, msg: dict[str, Any]) -> bool:
    """Whether the fields the view shows have the contract's types (another publisher's JSON may not)."""
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


class WatchState:
    """Folds contract messages into per-device views and renders them as text.

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
            if kind == "status":
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

    def _labels(self, view: DeviceView) -> list[str]:
        if view.labels:
            return view.labels
        seen: dict[str, None] = {}
        for t in view.tracks:
            seen.update(dict.fromkeys(t.get("probs") or {}))
        seen.update(dict.fromkeys((view.summary or {}).get("mean_probs") or {}))
        return list(seen)

    def render(self, now: float | None = None, width: int = 80) -> list[str]:
        """The current view as lines of text (no escape codes)."""
        now = time.time() if now is None else now
        lines: list[str] = []
        with self._lock:
            views = [self.devices[k] for k in sorted(self.devices)]
            if not views:
                return [f"waiting for devices on {self.prefix}/+/... "]
            for v in views:
                try:
                    lines.extend(self._render_device(v, now, width))
                except Exception as exc:  # one odd device must not take the whole view down
                    lines.extend([f"■ {v.device}: cannot show its last messages ({exc.__class__.__name__}: {exc})"[:width], ""])
        return lines

    def _render_device(self, v: DeviceView, now: float, width: int) -> list[str]:
        """The lines of one device's block."""
        lines: list[str] = []
        live = v.tracks if now - v.faces_ts <= self.stale_s else []
        fps = f"{v.fps:.1f}" if isinstance(v.fps, (int, float)) else "-"
        head = f"■ {v.device}  [{v.availability}]"
        if v.state:
            head += f"  state={v.state}"
        head += f"  fps={fps}  faces={len(live)}"
        if v.face_history:
            head += f"  {sparkline(list(v.face_history))}"
        lines.append(head[:width])
        if v.model_id:
            lines.append(f"  model {v.model_id}"[:width])
        for t in live:
            conf = t.get("confidence")
            conf_s = f"{conf:.2f}" if isinstance(conf, (int, float)) else "-"
            lines.append(f"  track {t.get('track_id')}: {t.get('emotion', '?')} ({conf_s})"[:width])
        labels = self._labels(v)
        if live:
            probs = {lab: sum((t.get("probs") or {}).get(lab, 0.0) for t in live) / len(live) for lab in labels}
            source = "now"
        elif v.summary and v.summary.get("mean_probs"):
            probs = {lab: float(v.summary["mean_probs"].get(lab, 0.0)) for lab in labels}
            source = f"last {v.summary.get('window_s', '?')}s"
        else:
            probs, source = {}, ""
        if probs:
            name_w = max(len(lab) for lab in labels)
            bar_w = max(5, min(30, width - name_w - 12))
            lines.append(f"  emotions ({source}):")
            for lab in labels:
                p = probs.get(lab, 0.0)
                lines.append(f"    {lab:<{name_w}} {bar(p, bar_w)} {p * 100:5.1f}%"[:width])
        if v.summary:
            dom = v.summary.get("dominant_emotion") or "none"
            lines.append(f"  summary: dominant={dom} faces_mean={v.summary.get('faces_mean') or 0:.2f}"[:width])
        lines.append("")
        return lines


class Watcher:
    """Subscribes and feeds a :class:`WatchState`."""

    def __init__(self, settings: BrokerSettings, devices: Sequence[str] = ("+",), stale_s: float = 2.0) -> None:
        self.state = WatchState(settings.topic_prefix, stale_s)
        self.subscriber = Subscriber(settings, subscription_filters(settings.topic_prefix, devices), self._on_message)

    def _on_message(self, client: mqtt.Client, msg: mqtt.MQTTMessage) -> None:
        self.state.update(msg.topic, msg.payload)

    def run(
        self, duration: float | None = None, once: bool = False, refresh_s: float = 0.5, out: TextIO | None = None
    ) -> None:
        """Show the view until ``duration`` elapses (or Ctrl-C).

        With ``once``, collect for ``duration`` seconds and print one plain snapshot; otherwise redraw in
        place on a terminal (alternate screen), or append snapshots when the output is not a terminal.
        """
        out = out or sys.stdout
        self.subscriber.start()
        deadline = None if duration is None else time.monotonic() + duration
        tty = out.isatty() and not once
        try:
            if once:
                time.sleep(duration or 0)
                out.write("\n".join(self.state.render()) + "\n")
                return
            if tty:
                out.write("\x1b[?1049h\x1b[?25l")  # alternate screen, hidden cursor: the user's scrollback stays intact
            while deadline is None or time.monotonic() < deadline:
                lines = self.state.render(width=shutil.get_terminal_size().columns if tty else 100)
                if tty:
                    out.write("\x1b[H" + "".join(line + "\x1b[K\n" for line in lines) + "\x1b[J")
                else:
                    out.write("\n".join(lines) + "\n")
                out.flush()
                time.sleep(refresh_s)
        finally:
            if tty:
                out.write("\x1b[?25h\x1b[?1049l")
                out.flush()
            self.subscriber.stop()
