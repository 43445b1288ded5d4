"""Greedy IoU tracking of face boxes with exponentially smoothed emotion probabilities.

A track is a face seen in consecutive frames. Each frame's detections are matched to the existing tracks by
box overlap (highest IoU first), unmatched detections start new tracks with fresh integer ids, and a track
that goes unmatched for more than ``max_missed_frames`` frames ends. Probabilities are smoothed per track so
a single odd frame does not flip the reported emotion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import numpy as np

from edge.config import TrackingConfig

Box = tuple[float, float, float, float]

#: Reported instead of a label when the top smoothed probability is under the configured threshold.
UNCERTAIN = "uncertain"
#: The ``[tracking]`` defaults: the constructor's keyword defaults are these, so no setting has two defaults.
_DEFAULT = TrackingConfig()


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes."""
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    ix = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    iy = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    """One tracked face.

    Attributes:
        track_id: Stable integer id, unique for the tracker's lifetime.
        box: Latest box (x, y, w, h) in pixels.
        probs: Smoothed class probabilities.
        raw_probs: Probabilities of the latest observation.
        start_ts: Time of the first observation.
        last_ts: Time of the latest observation.
        observations: Frames in which the face was detected.
        missed: Consecutive frames without a detection.
        prob_sum: Sum of raw probabilities over observations (for the track's dominant emotion).
    """

    track_id: int
    box: Box
    probs: np.ndarray
    raw_probs: np.ndarray
    start_ts: float
    last_ts: float
    observations: int = 1
    missed: int = 0
    prob_sum: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.prob_sum = np.array(self.raw_probs, dtype=np.float64)  # always a copy

    def mean_probs(self) -> np.ndarray:
        """Mean of the raw probabilities over all observations."""
        return self.prob_sum / max(1, self.observations)


@dataclass
class TrackUpdate:
    """Result of one :meth:`Tracker.update`.

    Attributes:
        observed: Tracks matched or started in this frame, in detection order.
        started: Tracks that began in this frame.
        ended: Tracks that ended in this frame (missed too long).
    """

    observed: list[Track]
    started: list[Track]
    ended: list[Track]


class Tracker:
    """Match detections to tracks and smooth their probabilities.

    Args:
        labels: Class labels in probability order.
        iou_threshold: Minimum IoU to continue a track.
        max_missed_frames: Frames a track survives without a detection.
        smoothing: Weight of the newest probabilities in the exponential moving average (1 = no smoothing).
        uncertain_below: Top smoothed probability under which the emotion is reported as ``"uncertain"``.
        first_id: Id of the first new track (a replacement tracker continues its predecessor's numbering).
    """

    def __init__(
        self,
        labels: list[str],
        iou_threshold: float = _DEFAULT.iou_threshold,
        max_missed_frames: int = _DEFAULT.max_missed_frames,
        smoothing: float = _DEFAULT.smoothing,
        uncertain_below: float = _DEFAULT.uncertain_below,
        first_id: int = 1,
    ) -> None:
        self.labels = list(labels)
        self.iou_threshold = iou_threshold
        self.max_missed_frames = max_missed_frames
        self.smoothing = smoothing
        self.uncertain_below = uncertain_below
        self.tracks: list[Track] = []
        self.next_id = first_id

    @classmethod
    def from_config(cls, labels: list[str], section: TrackingConfig, first_id: int = 1) -> Tracker:
        """A tracker with the settings of a ``[tracking]`` section."""
        return cls(labels, section.iou_threshold, section.max_missed_frames, section.smoothing,
                   section.uncertain_below, first_id)

    def update(self, boxes: list[Box], probs: np.ndarray, ts: float) -> TrackUpdate:
        """Feed one frame's detections (boxes and their N x C probabilities) observed at time ``ts``."""
        probs = np.asarray(probs, dtype=np.float64).reshape(len(boxes), -1) if len(boxes) else probs
        pairs = []
        for ti, track in enumerate(self.tracks):
            for di, box in enumerate(boxes):
                overlap = iou(track.box, box)
                # ">=" with a 0 threshold would chain unrelated faces; require some overlap at least.
                if overlap > 0 and overlap >= self.iou_threshold:
                    pairs.append((overlap, ti, di))
        pairs.sort(key=lambda p: -p[0])
        track_for_det: dict[int, Track] = {}
        used_tracks: set[int] = set()
        for _, ti, di in pairs:
            if ti in used_tracks or di in track_for_det:
                continue
            used_tracks.add(ti)
            track_for_det[di] = self.tracks[ti]

        started: list[Track] = []
        observed: list[Track] = []
        a = self.smoothing
        for di, box in enumerate(boxes):
            p = np.asarray(probs[di], dtype=np.float64)
            if di not in track_for_det:
                track = Track(self.next_id, cast(Box, tuple(box)), p.copy(), p.copy(), ts, ts)
                self.next_id += 1
                self.tracks.append(track)
                started.append(track)
            else:
                track = track_for_det[di]
                track.box = cast(Box, tuple(box))  # a copy, whatever sequence the caller passed
                track.probs = a * p + (1.0 - a) * track.probs
                track.raw_probs = p.copy()
                track.prob_sum += p
                track.observations += 1
                track.missed = 0
                track.last_ts = ts
            observed.append(track)

        ended: list[Track] = []
        observed_ids = {t.track_id for t in observed}
        for track in self.tracks:
            if track.track_id not in observed_ids:
                track.missed += 1
                if track.missed > self.max_missed_frames:
                    ended.append(track)
        if ended:
            ended_ids = {t.track_id for t in ended}
            self.tracks = [t for t in self.tracks if t.track_id not in ended_ids]
        return TrackUpdate(observed, started, ended)

    def close_all(self) -> list[Track]:
        """End every track (at shutdown or on a model change) and return them."""
        ended, self.tracks = self.tracks, []
        return ended

    def emotion(self, probs: np.ndarray) -> tuple[str, float]:
        """The reported emotion label (or ``"uncertain"``) and the top probability of ``probs``."""
        top = int(probs.argmax())
        conf = float(probs[top])
        return (self.labels[top] if conf >= self.uncertain_below else UNCERTAIN), conf
