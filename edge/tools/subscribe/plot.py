"""``plot``: PNG charts from a recording — a timeline per device, a per-hour chart, and a fleet overview.

Data: the ``summary`` messages (one per window, e.g. 10 s) carry mean probabilities over all face
observations, the mean and max face count and the number of frames, so hours of recording are a few
thousand rows. A device with no summaries falls back to its ``faces`` messages (one per frame that had a
face, so face counts there ignore empty frames). Points are aggregated into at most ``max_bins`` time bins,
weighted by the number of face observations, so a chart of a day looks like a chart of ten minutes. Every
panel draws a bin over the same edges (``[start, start + width)``), so the stacked area, the dominant-emotion
band and the face count line up. Times are UTC unless ``local_time`` asks for this machine's zone.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.tools.subscribe.plotdata import (
    PlotError,
    Series,
    aligned_start,
    bin_series,
    choose_bin,
    load_series,
    local_zone,
)
from edge.tools.subscribe.store import Recording
from edge.tools.subscribe.view import label_colors

if TYPE_CHECKING:  # matplotlib is imported where a figure is made: it is an optional dependency
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

#: What the dominant-emotion band shows where nobody was seen.
EMPTY_COLOR = "#ffffff"
#: From this many devices on, hourly.png is a grid of small panels with one shared legend.
GRID_FROM = 5


def figure(width: int, height: int, dpi: int) -> Figure:
    """A matplotlib Figure of exactly ``width`` x ``height`` pixels, without pyplot (no global state, no GUI)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError("plot needs matplotlib: pip install matplotlib") from None
    if width < 200 or height < 150 or dpi < 10:
        raise PlotError(f"image {width}x{height} px at {dpi} dpi is too small; use at least 200x150 px and 10 dpi")
    return Figure(figsize=(width / dpi, height / dpi), dpi=dpi)


def date_num(ts: np.ndarray | float) -> np.ndarray:
    """UNIX seconds as matplotlib date numbers (days since matplotlib's epoch, 1970 by default)."""
    from matplotlib import dates

    return np.asarray(ts, float) / 86400.0 + dates.date2num(datetime(1970, 1, 1, tzinfo=timezone.utc))


def time_axis(ax: Axes, tz: tzinfo, show_offset: bool = True) -> str:
    """Format ``ax``'s x axis as dates in ``tz`` (the date beside the last tick unless not ``show_offset``);
    return the axis label, e.g. ``time (UTC)``."""
    from matplotlib import dates

    locator = dates.AutoDateLocator(tz=tz)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator, tz=tz, show_offset=show_offset))
    return f"time ({datetime.now(tz).tzname() or 'local'})"


def _row_spacing(s: Series) -> float:
    """The usual time between summaries (their window): no bin is made finer, or it would show gaps between
    windows that are not there; 0 for frame data."""
    return float(np.median(np.diff(s.ts))) if len(s.ts) > 1 and s.source == "summary" else 0.0


def save(fig: Figure, out: Path) -> Path:
    """Write ``fig`` as a PNG of its exact size (no bbox='tight'), creating the folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=fig.dpi)
    return out


def timeline_figure(s: Series, device: str, width: int = 1600, height: int = 900, dpi: int = 100,
                    max_bins: int = 600, tz: tzinfo = timezone.utc) -> Figure:
    """Timeline: stacked probabilities, dominant-emotion band, and face count over time, bin for bin."""
    from matplotlib.patches import Patch

    fig = figure(width, height, dpi)
    width_s = choose_bin(float(s.ts.max() - s.ts.min()), max_bins, _row_spacing(s))
    b = bin_series(s, width_s, aligned_start(float(s.ts.min()), width_s, tz))
    edges = date_num(b.edges)
    colors = label_colors(s.labels)
    ax_p, ax_d, ax_f = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [5, 0.6, 2]})
    stacked = np.nan_to_num(b.probs, nan=0.0)
    # step="post" over the edges: bin i is flat from its start to its end, like its cell in the band below.
    if s.labels:  # a device that never saw anybody has no labels, and nothing to stack
        ax_p.stackplot(edges, np.vstack([stacked, stacked[-1:]]).T, labels=s.labels, colors=colors, step="post",
                       linewidth=0)
    ax_p.set_ylim(0, 1)
    ax_p.set_ylabel("mean probability")
    ax_p.set_title(f"{device}: emotions over time ({s.source} data, {b.width_s:g} s bins)")
    dom = b.dominant()
    cells = [colors[i] if i >= 0 else EMPTY_COLOR for i in dom]
    ax_d.bar(edges[:-1], np.ones(len(dom)), width=np.diff(edges), align="edge", color=cells, linewidth=0)
    ax_d.set_ylim(0, 1)
    ax_d.set_yticks([])
    ax_d.set_ylabel("dominant", rotation=0, ha="right", va="center", fontsize="small")
    handles, names = ax_p.get_legend_handles_labels()
    handles.append(Patch(facecolor=EMPTY_COLOR, edgecolor="#999999", linewidth=0.5))
    names.append("nobody seen (band)")
    ax_p.legend(handles, names, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    ax_f.stairs(np.nan_to_num(b.faces_max), edges, fill=True, alpha=0.25, color="#555555", label="max")
    ax_f.stairs(b.faces_mean, edges, color="#222222", label="mean", linewidth=1.2)
    ax_f.set_ylim(bottom=0)
    ax_f.set_ylabel("faces")
    ax_f.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    ax_f.set_xlim(edges[0], edges[-1])
    ax_f.set_xlabel(time_axis(ax_f, tz))
    fig.subplots_adjust(left=0.09, right=0.86, top=0.94, bottom=0.1, hspace=0.08)
    return fig


def _legend_below(fig: Figure, handles: list, names: list[str]) -> None:
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 10), fontsize="small", frameon=False)


def hourly_figure(series: dict[str, Series], width: int = 1600, height: int = 900, dpi: int = 100,
                  tz: tzinfo = timezone.utc) -> Figure:
    """Per-hour summary: per device, a stacked bar of mean probabilities per clock hour of ``tz`` and the
    mean face count (markers, on a second axis). One panel per device in a column; from :data:`GRID_FROM`
    devices on, a grid of small panels, so 20 devices stay readable. One legend names every colour and marker."""
    from matplotlib.lines import Line2D

    fig = figure(width, height, dpi)
    n = len(series)
    cols = 1 if n < GRID_FROM else math.ceil(math.sqrt(n * width / height / 2))
    rows = math.ceil(n / cols)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    t_min = min(float(s.ts.min()) for s in series.values())
    t_max = max(float(s.ts.max()) for s in series.values())
    hour0 = aligned_start(t_min, 3600.0, tz)
    handles: dict[str, object] = {}
    for ax, (device, s) in zip(axes, series.items(), strict=False):
        b = bin_series(s, 3600.0, t0=hour0, t_end=t_max)
        left = date_num(b.start)
        bottom = np.zeros(len(left))
        probs = np.nan_to_num(b.probs, nan=0.0)
        for j, (lab, col) in enumerate(zip(s.labels, label_colors(s.labels), strict=True)):
            handles[lab] = ax.bar(left, probs[:, j], width=50 / 1440, bottom=bottom, color=col, align="edge")
            bottom += probs[:, j]
        ax.set_ylim(0, 1)
        ax.set_title(device if cols > 1 else f"{device}: per-hour summary", fontsize="small" if cols > 1 else None)
        ax2 = ax.twinx()
        ax2.plot(left + 25 / 1440, b.faces_mean, "o-", color="black", markersize=3 if cols > 1 else 5)
        ax2.set_ylim(bottom=0)
        xlabel = time_axis(ax, tz, show_offset=cols == 1)
        if cols == 1:
            ax.set_ylabel("mean probability")
            ax2.set_ylabel("faces")
        else:
            ax.tick_params(labelsize="x-small")
            ax2.tick_params(labelsize="x-small")
    for ax in axes[n:]:
        ax.set_visible(False)
    handles["faces (mean per frame, right axis)"] = Line2D([], [], color="black", marker="o")
    _legend_below(fig, list(handles.values()), list(handles))
    if cols > 1:  # the date once, not under each of the small panels
        xlabel += datetime.fromtimestamp(hour0, tz).strftime(", from %Y-%m-%d %H:%M")
    fig.supxlabel(xlabel, y=0.055, fontsize="small")
    fig.subplots_adjust(left=0.07, right=0.94, top=0.95, bottom=0.14, hspace=0.55 if cols > 1 else 0.45,
                        wspace=0.35)
    return fig


def overview_figure(series: dict[str, Series], width: int = 1600, height: int = 900, dpi: int = 100,
                    max_bins: int = 600, tz: tzinfo = timezone.utc) -> Figure:
    """Fleet overview: one row per device with its dominant emotion per time bin (white: nobody seen), on
    one shared time axis, and below it the faces in view over all devices."""
    from matplotlib.patches import Patch

    fig = figure(width, height, dpi)
    t_min = min(float(s.ts.min()) for s in series.values())
    t_max = max(float(s.ts.max()) for s in series.values())
    width_s = choose_bin(t_max - t_min, max_bins, max(_row_spacing(s) for s in series.values()))
    t0 = aligned_start(t_min, width_s, tz)
    binned = {dev: bin_series(s, width_s, t0=t0, t_end=t_max) for dev, s in series.items()}
    n_bins = max(len(b.start) for b in binned.values())
    image = np.ones((len(series), n_bins, 3))
    total_faces = np.zeros(n_bins)
    seen: set[str] = set()
    for row, (dev, b) in enumerate(binned.items()):
        colors = label_colors(series[dev].labels)
        for i, d in enumerate(b.dominant()):
            if d >= 0:
                image[row, i] = [int(colors[d][k:k + 2], 16) / 255 for k in (1, 3, 5)]
                seen.add(series[dev].labels[d])
        total_faces[: len(b.start)] += np.nan_to_num(b.faces_mean)
    every = list(dict.fromkeys(lab for s in series.values() for lab in s.labels))
    legend = {lab: col for lab, col in zip(every, label_colors(every), strict=True) if lab in seen}
    edges = date_num(t0 + np.arange(n_bins + 1) * width_s)
    ax, ax_f = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [max(3, len(series) / 3), 1]})
    ax.imshow(image, aspect="auto", interpolation="nearest", extent=(edges[0], edges[-1], len(series), 0))
    ax.set_yticks(np.arange(len(series)) + 0.5, list(series), fontsize="small" if len(series) > 10 else None)
    ax.set_title(f"{len(series)} devices: dominant emotion per {width_s:g} s bin")
    ax_f.stairs(total_faces, edges, fill=True, color="#555555", alpha=0.5)
    ax_f.set_ylabel("faces\n(all devices)")
    ax_f.set_ylim(bottom=0)
    ax_f.set_xlabel(time_axis(ax_f, tz))
    handles = [Patch(color=c) for c in legend.values()] + [Patch(facecolor=EMPTY_COLOR, edgecolor="#999999")]
    _legend_below(fig, handles, [*legend, "nobody seen"])
    fig.subplots_adjust(left=0.12, right=0.97, top=0.94, bottom=0.14, hspace=0.08)
    return fig


def plot_recording(db: Path, out_dir: Path, devices: list[str] | None = None, since: float | None = None,
                   until: float | None = None, width: int = 1600, height: int = 900, dpi: int = 100,
                   max_bins: int = 600, local_time: bool = False) -> list[Path]:
    """Write ``timeline_<device>.png`` for each device, ``hourly.png`` and, for two or more devices,
    ``overview.png`` (one row per device); return the paths.

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
    tz = local_zone() if local_time else timezone.utc
    paths = []
    for dev, s in series.items():
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in dev)
        paths.append(save(timeline_figure(s, dev, width, height, dpi, max_bins, tz), out_dir / f"timeline_{safe}.png"))
    paths.append(save(hourly_figure(series, width, height, dpi, tz), out_dir / "hourly.png"))
    if len(series) > 1:
        paths.append(save(overview_figure(series, width, height, dpi, max_bins, tz), out_dir / "overview.png"))
    return paths


