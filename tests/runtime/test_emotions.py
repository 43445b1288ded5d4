"""``emotion_change`` events from the real tracker's smoothed emotions: the first emotion of a track is no change,
a change names the previous and the new emotion, per-track and per-device rate bounds hold back flicker without
breaking the chain, ended tracks are forgotten, and every event is valid against the payload schema. The labels
are the model's (any list), never a fixed seven."""

from __future__ import annotations

import numpy as np

from edge.protocol.envelope import make_envelope
from edge.runtime.emotions import MAX_CHANGES_PER_S, MIN_CHANGE_INTERVAL_S, EmotionWatch
from edge.runtime.track import Tracker, iou
from tests.support.mqtt import validator

LABELS = ["calm", "joy", "anger"]  # not the FER labels: nothing may depend on them


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def one_hot(i: int, n: int = len(LABELS), p: float = 0.9) -> np.ndarray:
    v = np.full(n, (1 - p) / (n - 1))
    v[i] = p
    return v


def step(tracker: Tracker, watch: EmotionWatch, boxes: list, probs: list, clock: Clock, dt: float = 0.1) -> list:
    clock.t += dt
    update = tracker.update(boxes, np.array(probs), clock.t)
    for t in update.ended:
        watch.forget(t.track_id)
    return watch.observe(update.observed, tracker.emotion)


def test_changes_are_reported_chained_rate_bounded_and_schema_valid():
    clock = Clock()
    tracker = Tracker(LABELS, smoothing=1.0, uncertain_below=0.4, max_missed_frames=0)
    watch = EmotionWatch(LABELS, clock=clock)
    box = (10.0, 10.0, 50.0, 50.0)
    assert step(tracker, watch, [box], [one_hot(0)], clock) == [], "a track's first emotion is no change"
    assert watch.dominant == "calm" and watch.counts["calm"] == 1 and set(watch.counts) == {*LABELS, "uncertain"}
    clock.t += MIN_CHANGE_INTERVAL_S
    [event] = step(tracker, watch, [box], [one_hot(1, p=0.8)], clock)
    assert event == {"event": "emotion_change", "track_id": 1, "previous_emotion": "calm", "emotion": "joy",
                     "confidence": 0.8}
    validator().validate(make_envelope("events", "dev", 7, event))
    # Flicker within the per-track interval is held back; the next event still chains from "joy".
    assert step(tracker, watch, [box], [one_hot(2)], clock) == []
    assert step(tracker, watch, [box], [one_hot(0)], clock) == []
    clock.t += MIN_CHANGE_INTERVAL_S
    [event] = step(tracker, watch, [box], [one_hot(2)], clock)
    assert (event["previous_emotion"], event["emotion"]) == ("joy", "anger")
    # Under tracking.uncertain_below the reported emotion is "uncertain", a change like any other.
    clock.t += MIN_CHANGE_INTERVAL_S
    [event] = step(tracker, watch, [box], [np.full(3, 1 / 3)], clock)
    assert event["emotion"] == "uncertain" and watch.dominant == "uncertain"
    # The track ends (missed one frame): forgotten, and nobody is in view.
    assert step(tracker, watch, [], [], clock) == [] and watch.mean_probs is None and watch.dominant == "none"


def test_the_device_wide_bound_holds_with_many_faces():
    clock = Clock()
    tracker = Tracker(LABELS, smoothing=1.0)
    watch = EmotionWatch(LABELS, clock=clock)
    boxes = [(i * 100.0, 0.0, 50.0, 50.0) for i in range(20)]
    step(tracker, watch, boxes, [one_hot(0)] * 20, clock)
    clock.t += MIN_CHANGE_INTERVAL_S
    events = step(tracker, watch, boxes, [one_hot(1)] * 20, clock)
    assert len(events) == MAX_CHANGES_PER_S, "a burst of at most the per-second bound"
    assert np.allclose(watch.mean_probs, one_hot(1)) and watch.dominant == "joy"
    clock.t += MIN_CHANGE_INTERVAL_S  # the bucket refills; the held-back tracks report now
    events = step(tracker, watch, boxes, [one_hot(1)] * 20, clock)
    assert len(events) == MAX_CHANGES_PER_S and all(e["previous_emotion"] == "calm" for e in events)


def test_the_figures_of_one_face_are_its_own_and_of_several_their_mean():
    tracker, watch, clock = Tracker(LABELS, smoothing=0.5), EmotionWatch(LABELS), Clock()
    rng = np.random.default_rng(3)
    for _ in range(5):
        step(tracker, watch, [(10, 10, 50, 50)], list(rng.dirichlet(np.ones(3), 1)), clock)
        (track,) = tracker.tracks
        assert watch.mean_probs is not None and watch.mean_probs is not track.probs
        np.testing.assert_array_equal(watch.mean_probs, np.mean([track.probs], axis=0))
        assert watch.dominant == tracker.emotion(track.probs)[0]
    step(tracker, watch, [(10, 10, 50, 50), (300, 10, 50, 50)], list(rng.dirichlet(np.ones(3), 2)), clock)
    np.testing.assert_array_equal(watch.mean_probs, np.mean([t.probs for t in tracker.tracks], axis=0))
    step(tracker, watch, [], [], clock)
    assert watch.mean_probs is None and watch.dominant == "none"


def test_a_new_model_brings_its_labels_and_keeps_the_counters():
    watch = EmotionWatch(LABELS)
    watch.counts = {**watch.counts, "joy": 4}
    watch.set_labels(["x", "joy"])
    assert watch.labels == ["x", "joy"] and watch.counts["joy"] == 4 and watch.counts["x"] == 0
    assert watch.dominant == "none"


def test_the_daemon_publishes_the_change_of_a_tracked_face(tmp_path):
    """The real pipeline (demo frame, BlazeFace, the shipped int8 model): one face, seen first as it is and then
    with its pixels altered in place (another face in the same box, so the same track), gives one schema-valid
    ``emotion_change`` with the emotions the model reported for each frame."""
    import cv2

    from edge.config import Config, parse_config
    from edge.runtime.assemble import assemble
    from edge.runtime.capture.base import Frame
    from edge.runtime.capture.demo import DEMO_FACES, DemoSource
    from tests.support.daemon import ListSink

    def config(uncertain_below: float) -> Config:
        return parse_config({
            "device": {"id": "test-dev", "state_dir": str(tmp_path / "state")},
            "mqtt": {"status_interval_s": 60, "summary_interval_s": 60},
            "tracking": {"smoothing": 1.0, "uncertain_below": uncertain_below}})

    src = DemoSource(faces=1, vanish=False)
    image = src.read().image
    # Another face in the same place (the demo's other portrait pasted over the patch), then milder changes.
    x, y, side = src.positions(0)[0] or (0, 0, 0)
    swapped = image.copy()
    swapped[y : y + side, x : x + side] = cv2.resize(np.load(DEMO_FACES / "grace_hopper.npy"), (side, side))
    variants = [swapped, cv2.flip(image, 1), cv2.convertScaleAbs(image, alpha=0.5, beta=60),
                cv2.GaussianBlur(image, (9, 9), 4), cv2.convertScaleAbs(image, alpha=1.6, beta=-60)]
    with assemble(config(0.0), sink=ListSink()) as probe:
        def top(img):
            dets = probe.detector.detect(img)
            assert len(dets) == 1
            _, probs = probe.models.classify(img, [d.box for d in dets], [d.eyes for d in dets])
            return dets[0].raw_box, int(np.argmax(probs[0])), float(np.max(probs[0]))

        box, label, conf = top(image)
        for other in variants:
            other_box, other_label, other_conf = top(other)
            same_place = iou(box, other_box) >= config(0.0).tracking.iou_threshold
            if same_place and (other_label != label or abs(other_conf - conf) > 0.02):
                break
        else:
            raise AssertionError("no variant of the demo face changed the model's answer in place")
        labels = probe.models.classifier.labels
    # Either the label differs, or one frame is reported "uncertain": a threshold between the two confidences.
    threshold = 0.0 if other_label != label else (conf + other_conf) / 2
    sink = ListSink()
    with assemble(config(threshold), sink=sink) as d:
        for i, img in enumerate((image, image, other, other)):
            d.process_frame(Frame(img, i, 1000.0 + i))
    [event] = sink.of("events", "emotion_change")
    expected = [labels[label] if conf >= threshold else "uncertain",
                labels[other_label] if other_conf >= threshold else "uncertain"]
    assert [event["previous_emotion"], event["emotion"]] == expected
    assert event["track_id"] == sink.of("events", "track_start")[0]["track_id"]
    assert abs(event["confidence"] - other_conf) < 1e-3
