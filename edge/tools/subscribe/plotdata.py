"""The data side of ``plot``: a device's observations from a recording, and their aggregation into time bins.

No matplotlib here: the maths is tested on its own, and :mod:`edge.tools.subscribe.plot` draws it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo

import numpy as np

from edge.tools.subscribe.store import Recording, is_number

_NICE_BINS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400)


class PlotError(Exception):
    """Nothing to plot or a bad argument; one line."""


@dataclass
class Series:
    """Observations of one device, one row per message (summary window or frame)."""

    ts: np.ndarray          # message time, UNIX seconds
    frames: np.ndarray      # frames covered by the row
    faces_mean: np.ndarray  # mean faces per frame in the row
    faces_max: np.ndarray   # max faces in one frame of the row
    probs: np.ndarray       # (rows, labels) mean probabilities; rows without faces are 0
    labels: list[str]
    source: str             # "summary" or "faces"

    @property
    def weight(self) -> np.ndarray:
        """Face observations per row (what a probability mean is weighted by)."""
        return self.faces_mean * self.frames


def _window_middle(summary: dict) -> float:
    """When a summary's faces were seen: the middle of its window. Its envelope ``ts`` is the window's end, so
    an hour-long window would otherwise land in the next hour's bar."""
    start, end = summary.get("start_ts"), summary.get("end_ts")
    if is_number(start) and is_number(end) and start <= end:
        return (float(start) + float(end)) / 2
    return float(summary["ts"])


def load_series(rec: Recording, device: str, since: float | None = None, until: float | None = None) -> Series:
    """The observations of ``device`` from its summaries, else from its faces messages.

    Raises:
        PlotError: the device has neither.
    """
    labels = rec.labels(device)
    rows = []
    for m in rec.iter_messages(device, "summary", since, until):
        p = m.get("mean_probs") or {}
        rows.append((_window_middle(m), m.get("frames") or 0, m.get("faces_mean") or 0.0, m.get("faces_max") or 0,
                     [float(p.get(lab, 0.0)) for lab in labels]))
    source = "summary"
    if not rows:
        source = "faces"
        for m in rec.iter_messages(device, "faces", since, until):
            faces = m.get("faces") or []
            if not faces:
                continue
            mean = [float(np.mean([(f.get("probs") or {}).get(lab, 0.0) for f in faces])) for lab in labels]
            rows.append((m["ts"], 1, float(len(faces)), len(faces), mean))
    if not rows:
        raise PlotError(f"device {device!r} has no summary or faces messages in the recording (and range)")
    ts, frames, fmean, fmax, probs = zip(*rows, strict=True)
    return Series(np.asarray(ts, float), np.asarray(frames, float), np.asarray(fmean, float),
                  np.asarray(fmax, float), np.asarray(probs, float).reshape(len(rows), len(labels)), labels, source)


def choose_bin(span_s: float, max_bins: int, min_bin_s: float = 0.0) -> float:
    """The smallest 'nice' bin width (1 s, 2 s, 5 s ... 1 day) giving at most ``max_bins`` bins."""
    for b in _NICE_BINS_S:
        if b >= min_bin_s and span_s / b <= max_bins:
            return float(b)
    return float(max(span_s / max_bins, _NICE_BINS_S[-1]))


def aligned_start(t: float, width_s: float, tz: tzinfo = timezone.utc) -> float:
    """The start of the bin holding ``t``: a multiple of ``width_s`` on the clock of ``tz`` (so hour and day
    bins start on the hour, or at midnight, of the zone the axis shows, also in zones offset by half an hour)."""
    offset = datetime.fromtimestamp(t, tz).utcoffset()
    off = offset.total_seconds() if offset else 0.0
    return math.floor((t + off) / width_s) * width_s - off


@dataclass
class Binned:
    """A series aggregated into equal time bins; NaN where a bin has no data."""

    start: np.ndarray       # bin start times, UNIX seconds
    width_s: float
    probs: np.ndarray       # (bins, labels) weighted mean probabilities; NaN without faces
    faces_mean: np.ndarray  # NaN without data
    faces_max: np.ndarray   # NaN without data
    has_data: np.ndarray    # bool

    @property
    def edges(self) -> np.ndarray:
        """Bin edges (one more than bins), UNIX seconds."""
        return np.append(self.start, self.start[-1] + self.width_s)

    @property
    def faced(self) -> np.ndarray:
        """Bins in which somebody was seen (their probabilities are known)."""
        return ~np.isnan(self.probs).any(axis=1) if self.probs.shape[1] else np.zeros(len(self.start), bool)

    def dominant(self) -> np.ndarray:
        """Index of the top label per bin, -1 where nobody was seen."""
        if not self.probs.shape[1]:
            return np.full(len(self.start), -1)
        return np.where(self.faced, np.argmax(np.nan_to_num(self.probs, nan=-1.0), axis=1), -1)


def bin_series(s: Series, width_s: float, t0: float | None = None, t_end: float | None = None) -> Binned:
    """Aggregate ``s`` into bins of ``width_s`` seconds from ``t0`` (default: aligned before the first row), up to
    the bin holding ``t_end`` (default: the last row), so several devices can share one set of bins."""
    t0 = np.floor(s.ts.min() / width_s) * width_s if t0 is None else t0
    idx = ((s.ts - t0) // width_s).astype(int)
    n = int(max(idx.max(), 0 if t_end is None else (t_end - t0) // width_s)) + 1
    w = s.weight
    frames = np.bincount(idx, weights=s.frames, minlength=n)
    wsum = np.bincount(idx, weights=w, minlength=n)
    rows = np.bincount(idx, minlength=n)
    probs = np.full((n, len(s.labels)), np.nan)
    faced = wsum > 0
    for j in range(len(s.labels)):
        acc = np.bincount(idx, weights=w * s.probs[:, j], minlength=n)
        probs[faced, j] = acc[faced] / wsum[faced]
    has = rows > 0
    fmean = np.full(n, np.nan)
    fmean[has] = np.where(frames[has] > 0, wsum[has] / np.maximum(frames[has], 1e-9), 0.0)
    fmax = np.full(n, np.nan)
    np.fmax.at(fmax, idx, s.faces_max)
    return Binned(t0 + np.arange(n) * width_s, width_s, probs, fmean, fmax, has)


def local_zone() -> tzinfo:
    """This machine's time zone, with its daylight-saving rules (``TZ`` or /etc/localtime)."""
    from dateutil import tz  # a dependency of matplotlib

    return tz.tzlocal()
