"""Detecting on one frame in N: faces are carried between detections, new faces are found within N frames, lost
faces are dropped (the real BlazeFace on the demo source's moving faces, whose true places the demo knows)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from edge.config import parse_config
from edge.runtime.capture.demo import CYCLE, DemoSource
from edge.runtime.detect.blazeface import BlazeFaceDetector
from edge.runtime.detect.carry import CarryingDetector
from edge.runtime.track import Tracker, iou


def truth(src: DemoSource, index: int, k: int) -> tuple[float, float, float, float] | None:
    """The true square of demo face ``k`` at frame ``index`` (None while it is hidden)."""
    pos = src.positions(index)[k]
    return None if pos is None else (float(pos[0]), float(pos[1]), float(pos[2]), float(pos[2]))


def covering(dets, box) -> list:
    """The detections whose raw box overlaps ``box`` as a face detector's box does (IoU >= 0.3)."""
    return [d for d in dets if iou(d.raw_box, box) >= 0.3]


@pytest.fixture
def blazeface():
    det = BlazeFaceDetector(threads=1)
    yield det
    det.close()


def test_a_moving_face_is_carried_between_detections(blazeface):
    every = 10
    src = DemoSource(faces=1, vanish=False)
    det = CarryingDetector(blazeface, every, min_match=0.6)
    carried_frames, moved = 0, []
    first_carried_box = None
    for i in range(40):
        frame = src.read()
        dets = det.detect(frame.image)
        true = truth(src, i, 0)
        assert len(covering(dets, true)) == 1, f"frame {i}: the face is not where a box says"
        if not det.detected:
            carried_frames += 1
            box = dets[0].raw_box
            first_carried_box = first_carried_box or box
            moved.append(abs(box[0] - first_carried_box[0]) + abs(box[1] - first_carried_box[1]))
            # The carried box follows the face closely, not only roughly (a fixed box would drift off it).
            assert iou(box, blazeface.detect(frame.image)[0].raw_box) > 0.8
    assert carried_frames >= 40 - 40 // every - 2  # most frames were carried, not detected
    assert max(moved) > 10  # and the face really moved while it was carried


def test_every_1_detects_every_frame(blazeface):
    det = CarryingDetector(blazeface, 1, min_match=0.6)
    src = DemoSource(faces=1, vanish=False)
    for _ in range(3):
        det.detect(src.read().image)
        assert det.detected


@pytest.mark.parametrize("every", [3, 5])
def test_a_new_face_is_found_within_n_frames_and_a_lost_one_is_dropped(blazeface, every):
    src = DemoSource(faces=2, vanish=True)
    det = CarryingDetector(blazeface, every, min_match=0.6)
    tracker = Tracker(["a", "b"], max_missed_frames=2)
    hide, back = CYCLE * 4 // 5, CYCLE
    start = hide - 12
    src._index = start  # noqa: SLF001 - start the demo shortly before its second face leaves
    found_after = lost_after = None
    face2_track = None
    for i in range(start, back + 3 * every):
        frame = src.read()
        dets = det.detect(frame.image)
        update = tracker.update([d.raw_box for d in dets], np.full((len(dets), 2), 0.5), frame.ts)
        true2 = truth(src, i, 1)
        if i < hide:
            assert covering(dets, true2), f"frame {i}: face 2 lost while still in the picture"
            face2_track = next(t.track_id for t in update.observed if iou(t.box, true2) >= 0.3)
        elif i < back:
            # Face 2 left: it is never reported where it was, and its track ends.
            assert len(dets) == 1, f"frame {i}: {len(dets)} faces reported, 1 is in the picture"
            if lost_after is None and face2_track in {t.track_id for t in update.ended}:
                lost_after = i - hide
        elif found_after is None and covering(dets, true2):
            found_after = i - back
        assert covering(dets, truth(src, i, 0)), f"frame {i}: face 1 lost"
    assert lost_after is not None and lost_after <= 2 + 1
    assert found_after is not None and found_after < every


def test_a_frame_of_another_size_is_detected_again(blazeface):
    det = CarryingDetector(blazeface, 10, min_match=0.6)
    det.detect(DemoSource(faces=1, vanish=False).read().image)
    det.detect(DemoSource(width=320, height=240, faces=1, vanish=False).read().image)
    assert det.detected


@pytest.mark.parametrize("every", [1, 4])
def test_the_daemon_detects_on_one_frame_in_every_n_frames(tmp_path, every):
    from edge.runtime.assemble import assemble
    from edge.runtime.publish.stdout import StdoutSink

    cfg = parse_config({"device": {"id": "carry", "state_dir": str(tmp_path)}, "source": {"uri": "demo"},
                                 "detector": {"backend": "blazeface", "every_n_frames": every}})
    with assemble(cfg, sink=StdoutSink("carry", stream=io.StringIO())) as daemon:
        runs = []
        for _ in range(8):
            daemon.process_frame(daemon.source.poll(max_wait=5))
            runs.append(getattr(daemon.detector, "detected", True))
            assert daemon.face_count >= 1
        assert sum(runs) == (8 if every == 1 else 2)


def test_while_no_face_is_seen_every_frame_is_detected(blazeface):
    det = CarryingDetector(blazeface, 5, min_match=0.6)
    empty = np.full((480, 640, 3), 120, np.uint8)
    for _ in range(3):
        assert det.detect(empty) == [] and det.detected
    # The first face to enter is found on the frame it enters.
    assert det.detect(DemoSource(faces=1, vanish=False).read().image) and det.detected


def test_unrelated_frames_rest_the_carrying(monkeypatch):
    """A stream whose every frame is another image: after two failed carries in a row the detector alone runs
    for ``every`` frames, so an image folder does not pay for a match on every frame."""
    import edge.runtime.detect.carry as carry
    from edge.runtime.detect.base import Detection

    class OneFace:
        name = "fake"

        def detect(self, image, scale=(1.0, 1.0)):
            return [Detection((100.0, 100.0, 80.0, 80.0), 0.9, (100.0, 100.0, 80.0, 80.0), ())]

        def close(self):
            pass

    tries = []
    real_match = carry._match
    monkeypatch.setattr(carry, "_match", lambda image, c: tries.append(1) or real_match(image, c))
    det = CarryingDetector(OneFace(), 5, min_match=0.6)
    rng = np.random.default_rng(0)
    detected = []
    for _ in range(30):
        det.detect(rng.integers(0, 256, (240, 320), dtype=np.uint8))  # noise: nothing matches the last frame
        detected.append(det.detected)
    assert all(detected)  # every frame went to the detector
    assert len(tries) <= 30 // (5 + carry.FAILS_BEFORE_REST) * carry.FAILS_BEFORE_REST + carry.FAILS_BEFORE_REST
