"""``plot``: aggregation maths and PNGs of the asked size from a recording made in the test."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.tools.subscribe.plot import plot_recording
from edge.tools.subscribe.plotdata import PlotError, Series, bin_series, choose_bin
from edge.tools.subscribe.store import Recording
from edge.tools.subscribe.view import LABEL_COLORS
from tests.support.mqtt import LABELS, faces_body, status_body
from tests.support.paths import REPO

T0 = 1_763_900_000.0  # a fixed UNIX time so the recording is the same on every run


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def _probs(top: str) -> dict[str, float]:
    """Mass only on ``top`` and neutral, so other labels' colours appear only in the legend."""
    probs = dict.fromkeys(LABELS, 0.0)
    probs["neutral"] = 0.2
    probs[top] += 0.8
    return probs


def _summary(device: str, seq: int, ts: float, top: str | None, faces: float) -> dict:
    return {"schema_version": 1, "device_id": device, "kind": "summary", "ts": ts, "seq": seq,
            "window_s": 60.0, "start_ts": ts - 60, "end_ts": ts, "frames": 600, "faces_mean": faces,
            "faces_max": int(np.ceil(faces)), "dominant_emotion": top,
            "mean_probs": _probs(top) if top else {}, "tracks": []}


def make_recording(db: Path, hours: float = 3.0) -> None:
    """Two devices, one summary a minute: 'kitchen' is happy in its first hour, sad in the second, empty in
    the third; 'hall' is neutral throughout, and has a status message with the label order."""
    rec = Recording(db)
    rec.add_message("hall", "emotion/hall/status", {"schema_version": 1, "device_id": "hall", "kind": "status",
                                                    "ts": T0, "seq": 1, **status_body()})
    for i in range(int(hours * 60)):
        ts = T0 + 60 * (i + 1)
        hour = i // 60
        top, faces = [("happy", 1.5), ("sad", 2.0), (None, 0.0)][min(hour, 2)]
        rec.add_message("kitchen", "emotion/kitchen/summary", _summary("kitchen", i + 1, ts, top, faces))
        rec.add_message("hall", "emotion/hall/summary", _summary("hall", i + 2, ts, "neutral", 1.0))
    rec.close()


def _has_color(path: Path, hex_color: str, min_pixels: int = 50) -> bool:
    from matplotlib.image import imread

    img = (imread(path)[..., :3] * 255).round().astype(int)
    rgb = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(img - rgb).sum(axis=-1) <= 6).sum()) >= min_pixels


def test_choose_bin_keeps_hours_of_data_to_a_few_hundred_bins():
    assert choose_bin(600, 600) == 1
    assert choose_bin(8 * 3600, 600) == 60
    assert choose_bin(8 * 3600, 600, min_bin_s=120) == 120
    assert 7 * 24 * 3600 / choose_bin(7 * 24 * 3600, 600) <= 600


def test_bin_series_weights_by_face_observations_and_marks_gaps():
    labels = ["happy", "sad"]
    s = Series(
        ts=np.array([0.0, 5.0, 12.0, 35.0]),
        frames=np.array([10.0, 10.0, 10.0, 10.0]),
        faces_mean=np.array([1.0, 3.0, 0.0, 1.0]),
        faces_max=np.array([1.0, 4.0, 0.0, 2.0]),
        probs=np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.5, 0.5]]),
        labels=labels, source="summary",
    )
    b = bin_series(s, 10.0)
    assert len(b.start) == 4
    # Bin 0: 10 observations all happy + 30 all sad -> 25% happy.
    np.testing.assert_allclose(b.probs[0], [0.25, 0.75])
    assert b.faces_mean[0] == pytest.approx(2.0) and b.faces_max[0] == 4
    # Bin 1: frames but no faces -> face count 0, probabilities unknown.
    assert b.faces_mean[1] == 0 and np.isnan(b.probs[1]).all()
    # Bin 2: no data at all.
    assert not b.has_data[2] and np.isnan(b.faces_mean[2])
    np.testing.assert_allclose(b.probs[3], [0.5, 0.5])


def test_plot_writes_timelines_and_hourly_chart_of_the_asked_size(tmp_path):
    db = tmp_path / "rec.sqlite"
    make_recording(db)
    paths = plot_recording(db, tmp_path / "out", width=900, height=600, dpi=90)
    names = sorted(p.name for p in paths)
    assert names == ["hourly.png", "overview.png", "timeline_hall.png", "timeline_kitchen.png"]
    for p in paths:
        assert png_size(p) == (900, 600)
        assert p.stat().st_size > 10_000
    kitchen = tmp_path / "out" / "timeline_kitchen.png"
    # The dominant band and the stacked areas show both moods of the kitchen, and none of the hall's.
    # (2000 pixels is far more than a legend swatch.)
    assert _has_color(kitchen, LABEL_COLORS["happy"], 2000) and _has_color(kitchen, LABEL_COLORS["sad"], 2000)
    assert not _has_color(kitchen, LABEL_COLORS["angry"], 2000)
    hall = tmp_path / "out" / "timeline_hall.png"
    assert _has_color(hall, LABEL_COLORS["neutral"], 20000) and not _has_color(hall, LABEL_COLORS["happy"], 2000)


def test_plot_falls_back_to_faces_messages(tmp_path):
    db = tmp_path / "rec.sqlite"
    rec = Recording(db)
    for i in range(300):
        rec.add_message("cam", "emotion/cam/faces", {"schema_version": 1, "device_id": "cam", "kind": "faces",
                                                    "ts": T0 + i * 0.1, "seq": i + 1, **faces_body(i, 1 + i % 2)})
    rec.close()
    (path_t, path_h) = plot_recording(db, tmp_path / "out", width=640, height=480, dpi=80)
    assert png_size(path_t) == (640, 480) and png_size(path_h) == (640, 480)


def test_plot_errors_are_clear(tmp_path):
    db = tmp_path / "rec.sqlite"
    make_recording(db, hours=0.1)
    with pytest.raises(PlotError, match="no summary or faces messages"):
        plot_recording(db, tmp_path / "out", devices=["nope"])
    with pytest.raises(PlotError, match="too small"):
        plot_recording(db, tmp_path / "out", width=20, height=20)


def test_plot_cli(tmp_path):
    db = tmp_path / "rec.sqlite"
    make_recording(db, hours=1.5)
    out = tmp_path / "pngs"
    r = subprocess.run([sys.executable, "-m", "edge", "plot", "--db", str(db), "--out", str(out),
                        "--device", "kitchen", "--width", "800", "--height", "500", "--dpi", "100", "--local-time"],
                       cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "TZ": "Asia/Kolkata"})
    assert r.returncode == 0, r.stderr
    printed = [Path(line) for line in r.stdout.split()]
    assert sorted(p.name for p in printed) == ["hourly.png", "timeline_kitchen.png"]
    assert all(png_size(p) == (800, 500) for p in printed)

    missing = subprocess.run([sys.executable, "-m", "edge", "plot", "--db", str(tmp_path / "none.sqlite")],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "no such recording" in missing.stderr


def test_a_summary_is_placed_in_the_middle_of_its_window(tmp_path):
    """The envelope ts is the window's end: an hour-long window must count for the hour it covers."""
    from edge.tools.subscribe.plotdata import load_series

    rec = Recording(tmp_path / "r.sqlite")
    hour = 3600 * (int(T0) // 3600)
    msg = _summary("kitchen", 1, hour + 3600, "happy", 1.0)
    msg.update(window_s=3600.0, start_ts=hour, end_ts=hour + 3600)
    rec.add_message("kitchen", "emotion/kitchen/summary", msg)
    odd = _summary("kitchen", 2, hour + 7200, "sad", 1.0)
    odd.update(start_ts=None)  # not a number: fall back to the envelope ts
    rec.add_message("kitchen", "emotion/kitchen/summary", odd)
    series = load_series(rec, "kitchen")
    rec.close()
    assert list(series.ts) == [hour + 1800, hour + 7200]


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])


def _drawn(fig):
    """Draw ``fig`` (made without pyplot) on an Agg canvas, as savefig does; return the canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas


def _first_column(fig, ax, hex_color: str, height_frac: float) -> int:
    """The first pixel column, left to right, where ``ax`` shows ``hex_color`` at ``height_frac`` of its height."""
    canvas = _drawn(fig)
    img = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)
    box = ax.get_window_extent()
    row = int(round(img.shape[0] - (box.y0 + height_frac * box.height)))
    x0, x1 = int(np.ceil(box.x0)), int(box.x1)
    hits = np.flatnonzero(np.abs(img[row, x0:x1] - _rgb(hex_color)).sum(axis=-1) <= 6)
    assert hits.size, f"{hex_color} not found on row {row}"
    return x0 + int(hits[0])


def _kitchen(tmp_path: Path, hours: float = 2.0):
    from edge.tools.subscribe.plotdata import load_series

    db = tmp_path / "rec.sqlite"
    make_recording(db, hours=hours)
    rec = Recording(db, readonly=True)
    try:
        return load_series(rec, "kitchen")
    finally:
        rec.close()


def test_dominant_band_and_stacked_area_change_mood_at_the_same_pixel(tmp_path):
    """Both draw bin i over [start_i, start_i + width): the kitchen's first happy bin and its turn to sad start at
    one x in both. (Drawn at bin centres, as before, the area started 12 px and turned 8 px after the band
    with these 300 s bins, 28 px wide.)"""
    from edge.tools.subscribe.plot import timeline_figure

    fig = timeline_figure(_kitchen(tmp_path), "kitchen", width=900, height=500, dpi=100, max_bins=40)
    ax_p, ax_d, ax_f = fig.axes[:3]
    happy, sad = LABEL_COLORS["happy"], LABEL_COLORS["sad"]
    assert _first_column(fig, ax_p, happy, 0.5) == _first_column(fig, ax_d, happy, 0.5)
    assert _first_column(fig, ax_p, sad, 0.1) == _first_column(fig, ax_d, sad, 0.5)
    # The face count steps up (1.5 -> 2 faces) at the same bin edge too: its line is drawn over the edges.
    _, stairs_mean = ax_f.patches[:2]
    edges = stairs_mean.get_data().edges
    np.testing.assert_allclose(ax_d.patches[0].get_x(), edges[0])


def test_legends_name_every_colour_and_marker(tmp_path):
    from edge.tools.subscribe.plot import hourly_figure, timeline_figure

    s = _kitchen(tmp_path)
    fig = timeline_figure(s, "kitchen", width=900, height=500, dpi=100)
    ax_p, _, ax_f = fig.axes[:3]
    assert [t.get_text() for t in ax_p.get_legend().get_texts()] == [*LABELS, "nobody seen (band)"]
    assert [t.get_text() for t in ax_f.get_legend().get_texts()] == ["max", "mean"]
    hourly = hourly_figure({"kitchen": s}, width=900, height=500, dpi=100)
    names = [t.get_text() for t in hourly.legends[0].get_texts()]
    assert names == [*LABELS, "faces (mean per frame, right axis)"]  # the marker line has its entry


def test_times_are_utc_unless_local_time_is_asked(tmp_path, monkeypatch):
    import time as time_mod
    from datetime import timezone

    from edge.tools.subscribe.plot import timeline_figure
    from edge.tools.subscribe.plotdata import aligned_start, local_zone

    s = _kitchen(tmp_path, hours=3)

    def ticks(fig) -> list[str]:
        _drawn(fig)
        return [t.get_text() for t in fig.axes[2].get_xticklabels()]

    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+5:30: clock hours start at half past in UTC
    time_mod.tzset()
    try:
        tz = local_zone()
        assert aligned_start(T0, 3600, tz) % 3600 == 1800 and aligned_start(T0, 3600) % 3600 == 0
        utc = timeline_figure(s, "kitchen", 900, 500, 100, tz=timezone.utc)
        local = timeline_figure(s, "kitchen", 900, 500, 100, tz=tz)
        assert utc.axes[2].get_xlabel() == "time (UTC)" and local.axes[2].get_xlabel() == "time (IST)"
        assert "12:30" in ticks(utc) and "18:00" in ticks(local)  # T0 is 12:13 UTC, 17:43 in Kolkata
    finally:
        monkeypatch.delenv("TZ")
        time_mod.tzset()


def make_fleet_recording(db: Path, devices: int = 20, minutes: int = 60) -> list[str]:
    """``devices`` simulated devices, one summary every 2 minutes each (each message is a committed transaction:
    fewer keep the test fast); the moods rotate every 30 minutes and room-13 never sees anybody."""
    moods = ["happy", "sad", "neutral", "angry", "surprise"]
    rec = Recording(db)
    names = [f"room-{d:02d}" for d in range(devices)]
    for d, dev in enumerate(names):
        for i in range(0, minutes, 2):
            top = None if d == 13 else moods[(d + i // 30) % len(moods)]
            rec.add_message(dev, f"emotion/{dev}/summary",
                            _summary(dev, i + 1, T0 + 60 * (i + 1), top, 1.0 + d % 3 if top else 0.0))
    rec.close()
    return names


def test_twenty_devices_get_a_grid_of_hourly_panels_and_a_one_row_per_device_overview(tmp_path):
    from edge.tools.subscribe.plot import hourly_figure, overview_figure
    from edge.tools.subscribe.plotdata import load_series

    db = tmp_path / "fleet.sqlite"
    names = make_fleet_recording(db)
    paths = plot_recording(db, tmp_path / "out", width=400, height=250, dpi=25)
    assert sorted(p.name for p in paths) == sorted([f"timeline_{n}.png" for n in names] + ["hourly.png",
                                                                                          "overview.png"])
    assert all(png_size(p) == (400, 250) for p in paths)
    rec = Recording(db, readonly=True)
    series = {n: load_series(rec, n) for n in names}
    rec.close()
    hourly = hourly_figure(series, 1600, 900, 100)
    titled = [ax.get_title() for ax in hourly.axes if ax.get_visible() and ax.get_title()]
    assert titled == names  # one small panel per device, in a grid
    boxes = [ax.get_position() for ax in hourly.axes if ax.get_title()]
    assert len({round(b.x0, 3) for b in boxes}) >= 4 and min(b.height for b in boxes) > 0.1
    overview = overview_figure(series, 1600, 900, 100)
    ax = overview.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert ax.get_title() == "20 devices: dominant emotion per 120 s bin"  # never finer than the summaries
    legend = [t.get_text() for t in overview.legends[0].get_texts()]
    assert legend == ["angry", "happy", "sad", "surprise", "neutral", "nobody seen"]  # label order, seen ones
    row13 = ax.get_images()[0].get_array()[13]
    assert np.all(row13 == 1.0)  # room-13: white, nobody seen
