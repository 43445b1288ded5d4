"""The bodies of the ``faces``, ``summary`` and ``events`` payloads, built from the tracker's tracks.

Numbers and labels only: no image or face crop ever goes into a body (privacy). The field names are the MQTT
contract (``edge/protocol/payloads.schema.json``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.runtime.track import Track

CPU_TEMP_FILE = Path("/sys/class/thermal/thermal_zone0/temp")

Box = tuple[float, float, float, float]


def read_cpu_temp(path: Path = CPU_TEMP_FILE) -> float | None:
    """CPU temperature in °C from the Linux thermal zone (millidegrees), None where there is none."""
    try:
        return round(int(path.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


def probs_dict(labels: Sequence[str], probs: np.ndarray) -> dict[str, float]:
    """``{label: probability}`` rounded to 4 decimals, in the model's label order."""
    # tolist(): the same doubles as float() of each element, without a numpy scalar per label.
    return {label: round(p, 4) for label, p in zip(labels, probs.tolist(), strict=True)}


def fraction_box(box: Box, width: int, height: int) -> list[float]:
    """``[x, y, w, h]`` as fractions of the frame, clipped to it (a box may reach past the edge)."""
    x, y, w, h = box
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    return [round(x0 / width, 4), round(y0 / height, 4), round((x1 - x0) / width, 4), round((y1 - y0) / height, 4)]


def faces_body(tracks: Sequence[Track], labels: Sequence[str], emotion: Callable[[np.ndarray], tuple[str, float]],
               frame_no: int, width: int, height: int) -> dict[str, Any]:
    """The ``faces`` body of one frame: each observed track's box, smoothed emotion and probabilities."""
    faces = []
    for t in tracks:
        label, conf = emotion(t.probs)
        faces.append({
            "track_id": t.track_id,
            "box": fraction_box(t.box, width, height),
            "emotion": label,
            "confidence": round(conf, 4),
            "probs": probs_dict(labels, t.probs),
            "raw_probs": probs_dict(labels, t.raw_probs),
        })
    return {"frame": frame_no, "width": width, "height": height, "faces": faces}


def track_start_event(track: Track) -> dict[str, Any]:
    """The ``events`` body of a track that began."""
    return {"event": "track_start", "track_id": track.track_id}


def track_end_event(track: Track, labels: Sequence[str]) -> dict[str, Any]:
    """The ``events`` body of a track that ended: its duration and dominant emotion over its observations."""
    return {
        "event": "track_end", "track_id": track.track_id, "duration_s": round(max(0.0, track.last_ts - track.start_ts), 3),
        "dominant_emotion": labels[int(np.argmax(track.mean_probs()))],
    }


@dataclass
class SummaryWindow:
    """Accumulators of one ``summary`` window.

    Attributes:
        start_ts: Wall-clock start of the window (UNIX seconds).
        start_mono: Monotonic start, for the window's length.
    """

    start_ts: float
    start_mono: float
    frames: int = 0
    faces_total: int = 0
    faces_max: int = 0
    prob_sum: np.ndarray | None = None
    observations: int = 0
    tracks: dict[int, list] = field(default_factory=dict)  # track_id -> [observations, prob_sum]

    def add(self, tracks: Sequence[Track]) -> None:
        """Count one frame and the raw probabilities of its observed tracks."""
        self.frames += 1
        self.faces_total += len(tracks)
        self.faces_max = max(self.faces_max, len(tracks))
        for t in tracks:
            p = t.raw_probs
            # The sums are this window's own arrays, so they are added to in place.
            if self.prob_sum is None:
                self.prob_sum = p.copy()
            else:
                self.prob_sum += p
            self.observations += 1
            entry = self.tracks.get(t.track_id)
            if entry is None:
                self.tracks[t.track_id] = [1, np.zeros_like(p) + p]  # a sum from 0, as every later one
            else:
                entry[0] += 1
                entry[1] += p

    def body(self, labels: Sequence[str], end_ts: float, now_mono: float) -> dict[str, Any]:
        """The ``summary`` body of the window ending now."""
        mean = self.prob_sum / self.observations if self.prob_sum is not None and self.observations else None
        tracks = []
        for tid, (n, psum) in sorted(self.tracks.items()):
            tp = psum / n
            tracks.append({"track_id": tid, "observations": n, "dominant_emotion": labels[int(np.argmax(tp))],
                           "mean_probs": probs_dict(labels, tp)})
        return {
            "window_s": round(max(now_mono - self.start_mono, 1e-3), 3),
            "start_ts": self.start_ts,
            "end_ts": end_ts,
            "frames": self.frames,
            "faces_mean": round(self.faces_total / self.frames, 3) if self.frames else 0.0,
            "faces_max": self.faces_max,
            "dominant_emotion": labels[int(np.argmax(mean))] if mean is not None else None,
            "mean_probs": probs_dict(labels, mean) if mean is not None else {},
            "tracks": tracks,
        }
