"""``plot``: PNG charts from a recording — a timeline per device and a per-hour summary chart.

Data: the ``summary`` messages (one per window, e.g. 10 s) carry mean probabilities over all face
observations, the mean and max face count and the number of frames, so hours of recording are a few
thousand rows. A device with no summaries falls back to its ``faces`` messages (one per frame that had a
face, so face counts there ignore empty frames). Points are aggregated into at most ``max_bins`` time bins,
weighted by the number of face observations, so a chart of a day looks like a chart of ten minutes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from edge.tools.subscribe.store import Recording, StoreError, is_number

log = logging.getLogger(__name__)

#: Fixed colours for the FER labels so every chart reads the same; other labels take tab10 colours.
LABEL_COLORS = {
    "angry": "#d62728", "disgust": "#2ca02c", "fear": "#9467bd", "happy": "#f2c80f",
    "sad": "#1f77b4", "surprise": "#ff7f0e", "neutral": "#9e9e9e", "contempt": "#8c564b",
}
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


@dataclass
class Binned:
    """A series aggregated into equal time bins; NaN where a bin has no data."""

    start: np.ndarray       # bin start times, UNIX seconds
    width_s: float
    probs: np.ndarray       # (bins, labels) weighted mean probabilities; NaN without faces
    faces_mean: np.ndarray  # NaN without data
    faces_max: np.ndarray   # NaN without data
    has_data: np.ndarray    # bool


def bin_series(s: Series, width_s: float, t0: float | None = None) -> Binned:
    """Aggregate ``s`` into bins of ``width_s`` seconds starting at ``t0`` (default: aligned before the first row)."""
    t0 = np.floor(s.ts.min() / width_s) * width_s if t0 is None else t0
    idx = ((s.ts - t0) // width_s).astype(int)
    n = int(idx.max()) + 1
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


def _colors(labels: list[str]) -> list[str]:
    from matplotlib import colormaps

    tab = colormaps["tab10"]
    return [LABEL_COLORS.get(lab, tab(i % 10)) for i, lab in enumerate(labels)]


def _figure(width: int, height: int, dpi: int):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError("plot needs matplotlib: pip install matplotlib") from None
    if width < 200 or height < 150 or dpi < 10:
        raise PlotError(f"image {width}x{height} px at {dpi} dpi is too small; use at least 200x150 px and 10 dpi")
    # Figure() without pyplot: no global state, no GUI backend; savefig without bbox='tight' keeps the exact size.
    return Figure(figsize=(width / dpi, height / dpi), dpi=dpi)


def _dt(ts: np.ndarray) -> list[datetime]:
    return [datetime.fromtimestamp(float(t)).astimezone() for t in ts]


def plot_timeline(s: Series, device: str, out: Path, width: int = 1600, height: int = 900, dpi: int = 100,
                  max_bins: int = 600) -> Path:
    """Timeline PNG: stacked probabilities, dominant-emotion band, and face count over time."""
    fig = _figure(width, height, dpi)
    span = float(s.ts.max() - s.ts.min())
    min_bin = float(np.median(np.diff(s.ts))) if len(s.ts) > 1 and s.source == "summary" else 0.0
    b = bin_series(s, choose_bin(span, max_bins, min_bin))
    x = _dt(b.start + b.width_s / 2)
    colors = _colors(s.labels)
    ax_p, ax_d, ax_f = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [5, 0.6, 2]})
    stacked = np.nan_to_num(b.probs, nan=0.0)
    ax_p.stackplot(x, stacked.T, labels=s.labels, colors=colors, step=None, linewidth=0)
    ax_p.set_ylim(0, 1)
    ax_p.set_ylabel("mean probability")
    ax_p.set_title(f"{device}: emotions over time ({s.source} data, {b.width_s:g} s bins)")
    ax_p.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    # Dominant band: one coloured cell per bin with faces; white where nobody was seen.
    faced = ~np.isnan(b.probs).any(axis=1) if len(s.labels) else np.zeros(len(x), bool)
    edges = _dt(np.append(b.start, b.start[-1] + b.width_s))
    if len(s.labels):
        dom = np.argmax(stacked, axis=1)
        for i in np.flatnonzero(faced):
            ax_d.axvspan(edges[i], edges[i + 1], color=colors[dom[i]], linewidth=0)
    ax_d.set_yticks([])
    ax_d.set_ylabel("dominant", rotation=0, ha="right", va="center", fontsize="small")
    ax_f.fill_between(x, 0, np.nan_to_num(b.faces_max), step="mid", alpha=0.25, color="#555555", label="max")
    ax_f.step(x, b.faces_mean, where="mid", color="#222222", label="mean")
    ax_f.set_ylim(bottom=0)
    ax_f.set_ylabel("faces")
    ax_f.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    ax_f.set_xlabel(f"time ({datetime.now().astimezone().tzname()})")
    fig.autofmt_xdate()
    fig.subplots_adjust(left=0.09, right=0.88, top=0.94, bottom=0.12, hspace=0.08)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out


def plot_hourly(series: dict[str, Series], out: Path, width: int = 1600, height: int = 900, dpi: int = 100) -> Path:
    """Per-hour summary PNG: one panel per device, a stacked bar of mean probabilities per clock hour, and the
    mean face count on a second axis."""
    fig = _figure(width, height, dpi)
    axes = fig.subplots(len(series), 1, squeeze=False)[:, 0]
    for ax, (device, s) in zip(axes, series.items(), strict=True):
        local = _dt(s.ts)
        hour0 = min(local).replace(minute=0, second=0, microsecond=0)
        b = bin_series(s, 3600.0, t0=hour0.timestamp())
        hours = [hour0 + timedelta(hours=i) for i in range(len(b.start))]
        bottom = np.zeros(len(hours))
        probs = np.nan_to_num(b.probs, nan=0.0)
        for j, (lab, col) in enumerate(zip(s.labels, _colors(s.labels), strict=True)):
            ax.bar(hours, probs[:, j], width=timedelta(minutes=50), bottom=bottom, color=col, label=lab, align="edge")
            bottom += probs[:, j]
        ax.set_ylim(0, 1)
        ax.set_ylabel("mean probability")
        ax.set_title(f"{device}: per-hour summary")
        ax2 = ax.twinx()
        ax2.plot([h + timedelta(minutes=25) for h in hours], b.faces_mean, "o-", color="black", label="faces (mean)")
        ax2.set_ylim(bottom=0)
        ax2.set_ylabel("faces")
        ax.legend(loc="upper left", bbox_to_anchor=(1.06, 1.0), fontsize="small", frameon=False)
    fig.autofmt_xdate()
    fig.subplots_adjust(left=0.07, right=0.84, top=0.94, bottom=0.12, hspace=0.5)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out


def plot_recording(db: Path, out_dir: Path, devices: list[str] | None = None, since: float | None = None,
                   until: float | None = None, width: int = 1600, height: int = 900, dpi: int = 100,
                   max_bins: int = 600) -> list[Path]:
    """Write ``timeline_<device>.png`` for each device and ``hourly.png``; return the paths.

    Raises:
        PlotError: no data to plot. StoreError: the recording cannot be opened.
    """
    rec = Recording(db, readonly=True)
    try:
        wanted = devices or rec.devices()
        if not wanted:
            raise PlotError(f"{db}: the recording has no messages yet")
        series: dict[str, Series] = {}
        for dev in wanted:
            try:
                series[dev] = load_series(rec, dev, since, until)
            except PlotError as exc:
                if devices:  # asked for by name: say so; otherwise just skip devices without data
                    raise
                log.info("%s", exc)
        if not series:
            raise PlotError(f"{db}: no summary or faces messages to plot in the chosen range")
    finally:
        rec.close()
    paths = []
    for dev, s in series.items():
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in dev)
        paths.append(plot_timeline(s, dev, out_dir / f"timeline_{safe}.png", width, height, dpi, max_bins))
    paths.append(plot_hourly(series, out_dir / "hourly.png", width, height, dpi))
    return paths


__all__ = ["PlotError", "StoreError", "Series", "load_series", "bin_series", "choose_bin", "plot_timeline",
           "plot_hourly", "plot_recording"]
