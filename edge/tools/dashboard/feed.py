"""The dashboard's data: each device's live numbers as JSON, and a timeline of the last minutes.

The page gets one ``snapshot`` (every device and its whole timeline) when it connects, then an ``update`` per
sample: every device's numbers and its newest timeline rows (a few, so a client that missed one update loses
no point). Only numbers and labels leave this module: never a face box, never an image.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from edge.tools.subscribe.view import (
    DeviceView,
    FeedState,
    age_s,
    emotion_mix,
    health,
    label_colors,
    labels_of,
    live_tracks,
    status_figures,
)

#: Timeline rows repeated in every update, so a client that skipped an update (slow tab) has no gap.
OVERLAP_ROWS = 5


def _round(value: Any, digits: int) -> Any:
    return round(value, digits) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def device_json(view: DeviceView, now: float, stale_s: float, stale_after_s: float) -> dict[str, Any]:
    """One device's live numbers for the page."""
    labels = labels_of(view)
    probs, source = emotion_mix(view, now, stale_s)
    level, reason = health(view, now, stale_after_s)
    summary = view.summary or {}
    return {
        "device": view.device,
        "availability": view.availability,
        "state": view.shown_state,
        "model_id": view.model_id,
        "fps": _round(view.shown_fps, 2),
        "age_s": _round(age_s(view, now), 2),
        "seq": view.last_seq,
        "messages": view.messages,
        "health": {"level": level, "reason": reason},
        "figures": {k: _round(v, 2) for k, v in status_figures(view).items()},
        "labels": labels,
        "colors": label_colors(labels),
        "faces": [{"track_id": t.get("track_id"), "emotion": t.get("emotion"),
                   "confidence": _round(t.get("confidence"), 3)} for t in live_tracks(view, now, stale_s)],
        "mix": {"source": source, "probs": {k: round(v, 3) for k, v in probs.items()}},
        "summary": {"dominant_emotion": summary.get("dominant_emotion"),
                    "faces_mean": _round(summary.get("faces_mean"), 2),
                    "window_s": summary.get("window_s")} if view.summary else None,
    }


@dataclass
class _Track:
    labels: list[str]
    rows: deque = field(default_factory=deque)


class Timeline:
    """Per device, one row per sample: ``[t, faces, p(label 1), ...]`` over the last ``window_s`` seconds.

    ``p`` is the mean over the faces in view, ``None`` while nobody is (a gap in the chart). A device whose
    labels change (a new model) starts a new timeline.
    """

    def __init__(self, window_s: float = 300.0) -> None:
        self.window_s = window_s
        self._tracks: dict[str, _Track] = {}
        self._lock = threading.Lock()

    def sample(self, views: list[DeviceView], now: float, stale_s: float) -> None:
        """Add one row per device at time ``now`` and drop rows older than the window."""
        with self._lock:
            for v in views:
                labels = labels_of(v)
                track = self._tracks.get(v.device)
                if track is None or track.labels != labels:
                    track = self._tracks[v.device] = _Track(labels)
                live = live_tracks(v, now, stale_s)
                if live:
                    probs, _ = emotion_mix(v, now, stale_s)
                    ps: list[float | None] = [round(probs.get(lab, 0.0), 3) for lab in labels]
                else:
                    ps = [None] * len(labels)
                track.rows.append([round(now, 2), len(live), *ps])
                while track.rows and track.rows[0][0] < now - self.window_s:
                    track.rows.popleft()

    def series(self, last: int | None = None) -> dict[str, dict[str, Any]]:
        """Every device's labels and rows (only the ``last`` rows when given)."""
        with self._lock:
            return {dev: {"labels": t.labels, "rows": list(t.rows)[-last:] if last else list(t.rows)}
                    for dev, t in self._tracks.items()}


class DashboardFeed:
    """Samples a :class:`FeedState` into a :class:`Timeline` and writes the page's JSON messages.

    Args:
        state: The folded messages (fed by the subscriber).
        window_s: Length of the timeline.
        stale_after_s: A device silent this long is shown in trouble (see :func:`~edge.tools.subscribe.view.health`).
        broker: How the page names the broker (e.g. ``127.0.0.1:1883``).
    """

    def __init__(self, state: FeedState, window_s: float = 300.0, stale_after_s: float = 30.0,
                 broker: str = "") -> None:
        self.state = state
        self.timeline = Timeline(window_s)
        self.stale_after_s = stale_after_s
        self.broker = broker
        self._update = ""
        self._generation = 0
        self._changed = threading.Condition()

    @property
    def generation(self) -> int:
        """How many updates were published so far (a client that got a snapshot waits for the next one)."""
        with self._changed:
            return self._generation

    def _message(self, now: float, last: int | None, views: list[DeviceView] | None = None) -> dict[str, Any]:
        views = self.state.snapshot() if views is None else views
        return {"now": round(now, 2), "prefix": self.state.prefix, "broker": self.broker,
                "window_s": self.timeline.window_s,
                "devices": [device_json(v, now, self.state.stale_s, self.stale_after_s) for v in views],
                "series": self.timeline.series(last)}

    def tick(self, now: float | None = None) -> None:
        """Take one sample and publish the update to every waiting client."""
        now = time.time() if now is None else now
        views = self.state.snapshot()
        self.timeline.sample(views, now, self.state.stale_s)
        update = json.dumps(self._message(now, OVERLAP_ROWS, views), separators=(",", ":"))
        with self._changed:
            self._update = update
            self._generation += 1
            self._changed.notify_all()

    def snapshot(self, now: float | None = None) -> str:
        """Every device with its whole timeline, as JSON (what a client gets first, and ``/api/state``)."""
        return json.dumps(self._message(time.time() if now is None else now, None), separators=(",", ":"))

    def wait_update(self, seen: int, timeout: float) -> tuple[int, str | None]:
        """The newest update after generation ``seen``: ``(generation, json)``, or ``(seen, None)`` on timeout."""
        with self._changed:
            self._changed.wait_for(lambda: self._generation != seen, timeout)
            if self._generation == seen:
                return seen, None
            return self._generation, self._update

    def wake_all(self) -> None:
        """Wake every waiting client (at shutdown, so its handler sees the server stopping)."""
        with self._changed:
            self._changed.notify_all()
