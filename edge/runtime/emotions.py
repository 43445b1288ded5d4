"""What the tracked faces feel, frame by frame: ``emotion_change`` events and the figures ``/metrics`` serves.

A track's reported emotion is its smoothed probabilities' top label, or ``uncertain`` under
``tracking.uncertain_below`` (:meth:`edge.runtime.track.Tracker.emotion`, the same as in ``faces``). When it changes
from the last one reported for that track, an ``emotion_change`` event says so. Events are rate-bounded twice,
so a face hovering between two labels cannot flood the outbox: a track reports a change at most once per
:data:`MIN_CHANGE_INTERVAL_S`, and the device at most :data:`MAX_CHANGES_PER_S` per second (bursts of as many).
A change that is held back is not lost: the next allowed event names the last emotion reported as the previous
one, so the events always chain. A track's first emotion is no change (``track_start`` announces the track).

The figures (read by :class:`edge.runtime.metrics.DaemonCollector` on its HTTP thread; every attribute is
replaced, never mutated, so a reader always sees one frame's values): the mean smoothed probability per label
over the faces observed in the last frame, the emotion reported for that mean (``none`` when nobody was), and
per label the count of face observations since start whose reported emotion it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edge.protocol.topics import NO_EMOTION
from edge.runtime.ratelimit import TokenBucket
from edge.runtime.track import UNCERTAIN, Track

#: A track reports an emotion change at most this often (seconds between two of its events).
MIN_CHANGE_INTERVAL_S = 1.0
#: The device sends at most this many ``emotion_change`` events per second, in bursts of as many.
MAX_CHANGES_PER_S = 5.0

#: ``emotion(probs) -> (label or "uncertain", top probability)``.
EmotionOf = Callable[[np.ndarray], "tuple[str, float]"]


def emotion_change_event(track_id: int, previous: str, emotion: str, confidence: float) -> dict[str, Any]:
    """The ``events`` body of a track whose reported emotion changed from ``previous`` to ``emotion``."""
    return {"event": "emotion_change", "track_id": track_id, "previous_emotion": previous, "emotion": emotion,
            "confidence": round(float(confidence), 4)}


class EmotionWatch:
    """Per-track reported emotions, the change events, and the per-label figures.

    Args:
        labels: The model's labels, in probability order (``clf.labels``).
        clock: Monotonic seconds; a test seam.
    """

    def __init__(self, labels: Sequence[str], clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._bucket = TokenBucket(MAX_CHANGES_PER_S, clock=clock)
        # track_id -> (last reported emotion, monotonic time of its last change event)
        self._reported: dict[int, tuple[str, float]] = {}
        #: Label order of :attr:`mean_probs` and :attr:`counts`.
        self.labels: list[str] = list(labels)
        #: Mean smoothed probabilities over the faces of the last frame (None: nobody, or paused).
        self.mean_probs: np.ndarray | None = None
        #: The emotion reported for :attr:`mean_probs`: a label, ``uncertain``, or ``none`` when nobody is seen.
        self.dominant: str = NO_EMOTION
        #: Face observations since start per reported emotion (every label and ``uncertain``; a new model's
        #: labels are added, none is ever removed, so the counters only grow).
        self.counts: dict[str, int] = dict.fromkeys([*self.labels, UNCERTAIN], 0)

    def set_labels(self, labels: Sequence[str]) -> None:
        """A new model: its labels from now on (the per-track emotions must be forgotten by the caller first)."""
        self.labels = list(labels)
        counts = dict(self.counts)
        for lab in self.labels:
            counts.setdefault(lab, 0)
        self.counts = counts
        self.clear()

    def observe(self, observed: Sequence[Track], emotion: EmotionOf) -> list[dict[str, Any]]:
        """One frame's observed tracks: update the figures, return the ``emotion_change`` bodies to publish."""
        now = self._clock()
        events = []
        counts = dict(self.counts)
        label = NO_EMOTION
        for t in observed:
            label, conf = emotion(t.probs)
            counts[label] = counts.get(label, 0) + 1
            last = self._reported.get(t.track_id)
            if last is None:
                self._reported[t.track_id] = (label, float("-inf"))
            elif label != last[0] and now - last[1] >= MIN_CHANGE_INTERVAL_S and self._bucket.take():
                self._reported[t.track_id] = (label, now)
                events.append(emotion_change_event(t.track_id, last[0], label, conf))
        self.counts = counts
        if len(observed) == 1:  # one face, the usual case: its own probabilities (and emotion) are the mean
            self.mean_probs, self.dominant = observed[0].probs.copy(), label
        elif observed:
            mean = np.mean([t.probs for t in observed], axis=0)
            self.mean_probs, self.dominant = mean, emotion(mean)[0]
        else:
            self.mean_probs, self.dominant = None, NO_EMOTION
        return events

    def forget(self, track_id: int) -> None:
        """The track ended."""
        self._reported.pop(track_id, None)

    def clear(self) -> None:
        """Nobody is seen any more (a pause, a stop, a new model): every track is forgotten."""
        self._reported = {}
        self.mean_probs, self.dominant = None, NO_EMOTION
