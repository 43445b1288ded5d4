"""The payload bodies built from the tracker's tracks (edge.runtime.report): boxes as clipped frame fractions,
probabilities by label, track events, the summary window's means, and the CPU temperature reading. Every body is
checked against the published JSON Schema inside a real envelope."""

from __future__ import annotations

import numpy as np
import pytest

from edge.bundle import FER_LABELS
from edge.protocol.envelope import make_envelope
from edge.runtime.report import (
    SummaryWindow,
    faces_body,
    fraction_box,
    probs_dict,
    read_cpu_temp,
    track_end_event,
    track_start_event,
)
from edge.runtime.track import Tracker
from tests.support.mqtt import validator

LABELS = list(FER_LABELS)


def onehot(label: str, p: float = 0.9) -> np.ndarray:
    """Probabilities with ``p`` on ``label`` and the rest spread evenly."""
    out = np.full(len(LABELS), (1.0 - p) / (len(LABELS) - 1))
    out[LABELS.index(label)] = p
    return out


def valid(kind: str, body: dict) -> dict:
    validator().validate(make_envelope(kind, "dev1", 1, body, ts=1_700_000_000.0))
    return body


def test_a_box_is_a_frame_fraction_clipped_to_the_frame():
    assert fraction_box((64, 48, 128, 96), 640, 480) == [0.1, 0.1, 0.2, 0.2]
    # Reaching past the left and bottom edges: only the part inside the frame is reported.
    assert fraction_box((-20, 400, 100, 200), 640, 480) == [0.0, round(400 / 480, 4), 0.125, round(80 / 480, 4)]
    assert fraction_box((700, 10, 50, 50), 640, 480)[2] == 0.0  # wholly outside: no width


def test_probabilities_are_keyed_by_label_in_model_order_and_rounded():
    d = probs_dict(["happy", "sad"], np.array([0.123456, 0.876544]))
    assert list(d) == ["happy", "sad"] and d == {"happy": 0.1235, "sad": 0.8765}
    # Python's round of each element's double, whatever the array's float type (a float32 one included).
    p = np.random.default_rng(2).random(500)
    for arr in (p, p.astype(np.float32)):
        values = list(probs_dict([str(i) for i in range(500)], arr).values())
        assert values == [round(float(v), 4) for v in arr] and all(type(v) is float for v in values)
    with pytest.raises(ValueError):  # a model whose output does not match its labels is an error, not a guess
        probs_dict(["happy", "sad"], np.array([1.0]))


def test_the_faces_body_reports_each_observed_track_with_smoothed_and_raw_probabilities():
    tracker = Tracker(LABELS, smoothing=0.5, uncertain_below=0.5)
    tracker.update([(100, 100, 80, 80), (400, 200, 60, 60)], np.stack([onehot("happy"), onehot("sad", 0.4)]), ts=1.0)
    update = tracker.update([(102, 100, 80, 80), (400, 200, 60, 60)], np.stack([onehot("angry"), onehot("sad", 0.4)]),
                            ts=1.1)
    body = valid("faces", faces_body(update.observed, LABELS, tracker.emotion, frame_no=7, width=640, height=480))
    assert (body["frame"], body["width"], body["height"]) == (7, 640, 480)
    first, second = body["faces"]
    assert (first["track_id"], second["track_id"]) == (1, 2)
    assert first["raw_probs"]["angry"] == 0.9 and first["probs"]["angry"] == pytest.approx(0.5 * 0.9 + 0.5 * 0.1 / 6, abs=1e-4)
    assert first["emotion"] == tracker.emotion(update.observed[0].probs)[0]
    assert second["emotion"] == "uncertain" and second["confidence"] == 0.4  # under uncertain_below
    assert first["box"] == fraction_box((102, 100, 80, 80), 640, 480)


def test_track_events_name_the_track_and_its_dominant_emotion_over_its_observations():
    tracker = Tracker(LABELS, max_missed_frames=0)
    start = tracker.update([(10, 10, 50, 50)], onehot("happy")[None], ts=10.0).started[0]
    assert valid("events", track_start_event(start)) == {"event": "track_start", "track_id": 1}
    for ts, label in ((10.5, "happy"), (11.0, "surprise"), (12.25, "happy")):
        tracker.update([(10, 10, 50, 50)], onehot(label)[None], ts=ts)
    ended = tracker.update([], np.zeros((0, len(LABELS))), ts=13.0).ended
    body = valid("events", track_end_event(ended[0], LABELS))
    assert body == {"event": "track_end", "track_id": 1, "duration_s": 2.25, "dominant_emotion": "happy"}


def test_a_summary_window_counts_frames_and_faces_and_averages_the_raw_probabilities():
    tracker = Tracker(LABELS)
    window = SummaryWindow(start_ts=1000.0, start_mono=50.0)
    window.add(tracker.update([(10, 10, 50, 50)], onehot("happy")[None], ts=1.0).observed)
    window.add(tracker.update([(10, 10, 50, 50), (300, 10, 50, 50)], np.stack([onehot("happy"), onehot("sad")]),
                              ts=2.0).observed)
    window.add(tracker.update([], np.zeros((0, len(LABELS))), ts=3.0).observed)
    body = valid("summary", window.body(LABELS, end_ts=1010.0, now_mono=60.0))
    assert (body["frames"], body["faces_max"], body["faces_mean"]) == (3, 2, 1.0)
    assert (body["start_ts"], body["end_ts"], body["window_s"]) == (1000.0, 1010.0, 10.0)
    assert body["dominant_emotion"] == "happy"  # two happy observations against one sad
    assert body["mean_probs"]["happy"] == pytest.approx((0.9 + 0.9 + 0.1 / 6) / 3, abs=1e-4)
    assert [(t["track_id"], t["observations"], t["dominant_emotion"]) for t in body["tracks"]] == [
        (1, 2, "happy"), (2, 1, "sad")]


def test_a_window_sums_in_arrays_of_its_own_exactly_as_plain_sums():
    """The window adds each frame's raw probabilities in place: its sums must be the plain ones to the bit, and the
    tracks' own arrays must stay as they were."""
    rng = np.random.default_rng(6)
    tracker = Tracker(LABELS)
    window = SummaryWindow(start_ts=0.0, start_mono=0.0)
    seen: dict[int, list] = {}
    for i in range(40):
        boxes = [(10.0 + i, 10.0, 50.0, 50.0), (300.0, 10.0, 50.0, 50.0)][: 1 + i % 2]
        observed = tracker.update(boxes, rng.dirichlet(np.ones(len(LABELS)), len(boxes)), ts=float(i)).observed
        kept = [t.raw_probs.copy() for t in observed]
        window.add(observed)
        for t, raw in zip(observed, kept, strict=True):
            np.testing.assert_array_equal(t.raw_probs, raw)
            seen.setdefault(t.track_id, []).append(raw)
    by_track = {}
    for tid, raws in seen.items():
        acc = np.zeros_like(raws[0])
        for r in raws:
            acc = acc + r
        by_track[tid] = acc
    # Added in frame order, one track after the other: the same order of float additions.
    order = [r for i in range(40) for r in ([seen[1][i]] if i % 2 == 0 else [seen[1][i], seen[2][i // 2]])]
    total = order[0].copy()
    for r in order[1:]:
        total = total + r
    assert window.prob_sum is not None and window.observations == len(order) == 60
    np.testing.assert_array_equal(window.prob_sum, total)
    for tid, (n, psum) in window.tracks.items():
        assert n == len(seen[tid])
        np.testing.assert_array_equal(psum, by_track[tid])


def test_a_window_without_faces_has_no_dominant_emotion():
    window = SummaryWindow(start_ts=0.0, start_mono=5.0)
    body = valid("summary", window.body(LABELS, end_ts=0.0, now_mono=5.0))
    assert body["dominant_emotion"] is None and body["mean_probs"] == {} and body["tracks"] == []
    assert body["frames"] == 0 and body["faces_mean"] == 0.0 and body["window_s"] > 0


def test_the_cpu_temperature_is_read_in_degrees_and_missing_or_garbled_files_give_none(tmp_path):
    zone = tmp_path / "temp"
    zone.write_text("48312\n")
    assert read_cpu_temp(zone) == 48.3
    assert read_cpu_temp(tmp_path / "absent") is None
    zone.write_text("not a number\n")
    assert read_cpu_temp(zone) is None
