"""Greedy IoU tracking, stable ids, smoothing, uncertainty and track start/end."""

from __future__ import annotations

import numpy as np
import pytest

from edge.runtime.track import UNCERTAIN, Tracker, iou

LABELS = ["a", "b", "c"]


def onehot(i, p=0.9):
    v = np.full(3, (1 - p) / 2)
    v[i] = p
    return v


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)


def test_ids_are_stable_while_faces_move_and_new_faces_get_new_ids():
    tr = Tracker(LABELS, iou_threshold=0.3)
    u1 = tr.update([(0, 0, 50, 50), (200, 0, 50, 50)], np.stack([onehot(0), onehot(1)]), 0.0)
    assert [t.track_id for t in u1.started] == [1, 2]
    # Both move a little, listed in the other order: ids follow the boxes, not the order.
    u2 = tr.update([(205, 3, 50, 50), (4, 2, 50, 50)], np.stack([onehot(1), onehot(0)]), 0.1)
    assert [t.track_id for t in u2.observed] == [2, 1] and u2.started == []
    u3 = tr.update([(400, 300, 50, 50)], np.stack([onehot(2)]), 0.2)
    assert [t.track_id for t in u3.started] == [3]


def test_greedy_matching_prefers_the_best_overlap():
    tr = Tracker(LABELS, iou_threshold=0.1)
    tr.update([(0, 0, 100, 100)], np.stack([onehot(0)]), 0.0)
    # Two candidates overlap the track; the better one continues it, the other starts a new track.
    u = tr.update([(60, 0, 100, 100), (5, 0, 100, 100)], np.stack([onehot(0), onehot(0)]), 0.1)
    assert [t.track_id for t in u.observed] == [2, 1]


def test_track_ends_after_max_missed_frames():
    tr = Tracker(LABELS, max_missed_frames=2)
    tr.update([(0, 0, 50, 50)], np.stack([onehot(0)]), 0.0)
    tr.update([(0, 0, 50, 50)], np.stack([onehot(0)]), 1.0)
    assert tr.update([], np.zeros((0, 3)), 2.0).ended == []
    assert tr.update([], np.zeros((0, 3)), 3.0).ended == []
    ended = tr.update([], np.zeros((0, 3)), 4.0).ended
    assert [t.track_id for t in ended] == [1]
    assert ended[0].last_ts - ended[0].start_ts == 1.0 and ended[0].observations == 2
    assert tr.tracks == []


def test_a_face_back_within_max_missed_keeps_its_id():
    tr = Tracker(LABELS, max_missed_frames=3)
    tr.update([(0, 0, 50, 50)], np.stack([onehot(0)]), 0.0)
    tr.update([], np.zeros((0, 3)), 0.1)
    u = tr.update([(2, 2, 50, 50)], np.stack([onehot(0)]), 0.2)
    assert [t.track_id for t in u.observed] == [1] and u.started == []


def test_exponential_smoothing_and_uncertain_state():
    tr = Tracker(LABELS, smoothing=0.5, uncertain_below=0.6)
    tr.update([(0, 0, 50, 50)], np.stack([onehot(0, 0.9)]), 0.0)
    track = tr.tracks[0]
    assert tr.emotion(track.probs) == ("a", pytest.approx(0.9))
    tr.update([(0, 0, 50, 50)], np.stack([onehot(1, 0.9)]), 0.1)
    # 0.5 * new + 0.5 * old: a and b tie at 0.475, below 0.6 -> uncertain.
    assert track.probs == pytest.approx([0.475, 0.475, 0.05])
    assert tr.emotion(track.probs)[0] == UNCERTAIN
    assert track.raw_probs == pytest.approx(onehot(1, 0.9))
    tr.update([(0, 0, 50, 50)], np.stack([onehot(1, 0.9)]), 0.2)
    assert tr.emotion(track.probs)[0] == "b"


def test_close_all_ends_every_track_with_its_mean():
    tr = Tracker(LABELS)
    tr.update([(0, 0, 50, 50), (100, 100, 50, 50)], np.stack([onehot(0), onehot(2)]), 0.0)
    tr.update([(0, 0, 50, 50), (100, 100, 50, 50)], np.stack([onehot(0), onehot(1, 0.5)]), 0.1)
    ended = tr.close_all()
    assert [tr.labels[int(np.argmax(t.mean_probs()))] for t in ended] == ["a", "c"]
    assert tr.tracks == []
