"""Face detection on the demo's public-domain faces with the real MediaPipe and the real Haar cascade."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from edge.preprocess import square_box
from edge.runtime.capture.demo import DemoSource
from edge.runtime.detect import make_detector
from edge.runtime.detect.base import BLAZEFACE_MODEL, BOX_ADJUST, BoxAdjust, DetectorError, verify_model
from edge.runtime.detect.haar import HaarDetector
from edge.runtime.detect.mediapipe_tasks import MediaPipeDetector

pytest.importorskip("mediapipe")


@pytest.fixture(scope="module")
def mediapipe_detector():
    det = MediaPipeDetector(min_confidence=0.5, min_face_size=40, max_faces=5)
    yield det
    det.close()


def _centre_inside(det, pos):
    x, y, side = pos
    bx, by, bw, bh = det.raw_box
    return x <= bx + bw / 2 <= x + side and y <= by + bh / 2 <= y + side


@pytest.mark.parametrize("backend", ["mediapipe", "opencv"])
def test_detectors_find_each_demo_face_where_it_was_pasted(backend, mediapipe_detector):
    det = mediapipe_detector if backend == "mediapipe" else HaarDetector(min_face_size=40, max_faces=5)
    demo = DemoSource(faces=2, vanish=False)
    for index in (0, 37, 90):
        frame = demo.render(index)
        found = det.detect(frame)
        assert len(found) == 2, (backend, index, found)
        for pos in demo.positions(index):
            assert sum(_centre_inside(d, pos) for d in found) == 1


def test_mediapipe_detects_on_a_grayscale_plane_and_maps_to_main_coordinates(mediapipe_detector):
    demo = DemoSource(faces=1)
    frame = demo.render(10)
    lores = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (320, 240), interpolation=cv2.INTER_AREA)
    found = mediapipe_detector.detect(lores, scale=(2.0, 2.0))
    assert len(found) == 1 and _centre_inside(found[0], demo.positions(10)[0])
    assert 0.5 <= found[0].score <= 1.0


def test_max_faces_keeps_the_largest_and_min_face_size_filters():
    demo = DemoSource(faces=3, vanish=False)
    frame = demo.render(0)
    det = MediaPipeDetector(max_faces=1, min_face_size=40)
    try:
        one = det.detect(frame)
        all_faces = MediaPipeDetector(max_faces=5).detect(frame)
        assert len(one) == 1 and len(all_faces) >= 2
        assert one[0].raw_box[2] == max(d.raw_box[2] for d in all_faces)
        det.min_face_size = 1000
        assert det.detect(frame) == []
    finally:
        det.close()


def test_fer_framing_correction_is_applied_to_boxes(mediapipe_detector):
    found = mediapipe_detector.detect(DemoSource(faces=1).render(0))[0]
    assert found.box == pytest.approx(BOX_ADJUST["mediapipe"].apply(found.raw_box))
    assert found.box != found.raw_box


def test_box_adjust_scales_about_the_centre_and_shifts_down():
    x, y, w, h = BoxAdjust(scale=0.5, shift=0.1).apply((100, 100, 40, 40))
    assert (w, h) == (20, 20)
    assert (x + w / 2, y + h / 2) == (120, 124)


@pytest.mark.parametrize("backend", ["mediapipe", "opencv"])
def test_the_corrected_crop_still_contains_the_detected_face(backend, mediapipe_detector):
    det = mediapipe_detector if backend == "mediapipe" else HaarDetector()
    found = det.detect(DemoSource(faces=1).render(0))[0]
    x0, y0, side = square_box(found.box)
    rx, ry, rw, rh = found.raw_box
    slack = 0.1 * rh  # the MediaPipe correction moves the crop up by 7.5% of the box height
    assert x0 <= rx + slack and y0 <= ry + slack
    assert x0 + side >= rx + rw - slack and y0 + side >= ry + rh - slack


def test_altered_model_file_is_refused(tmp_path):
    bad = tmp_path / "face.tflite"
    shutil.copy(BLAZEFACE_MODEL, bad)
    with open(bad, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    with pytest.raises(DetectorError, match="altered or corrupted"):
        verify_model(bad)
    with pytest.raises(DetectorError, match="missing"):
        verify_model(tmp_path / "nope.tflite")
    assert verify_model() == BLAZEFACE_MODEL


def test_make_detector_picks_backends(caplog):
    with caplog.at_level("INFO", logger="edge.runtime.detect"):
        det = make_detector(backend="auto")
    try:
        assert det.name == "blazeface"
        assert "face detector: BlazeFace short range in LiteRT" in caplog.text and "'auto'" in caplog.text
    finally:
        det.close()
    for backend in ("blazeface", "mediapipe", "opencv"):
        det = make_detector(backend=backend)
        assert det.name == backend
        det.close()
    with pytest.raises(DetectorError, match="backend: must be 'auto', 'blazeface', 'mediapipe' or 'opencv', not the string 'dlib'"):
        make_detector(backend="dlib")


def test_a_configured_detector_that_cannot_load_is_an_error_never_a_downgrade(monkeypatch):
    import edge.runtime.classify.interpreter as interp

    def no_runtime(*_a, **_k):
        raise interp.RuntimeMissing("no TFLite runtime found (ai_edge_litert: ModuleNotFoundError)")

    monkeypatch.setattr("edge.runtime.detect.blazeface.make_interpreter", no_runtime)
    with pytest.raises(DetectorError, match="ai_edge_litert"):
        make_detector(backend="blazeface")


def test_auto_falls_back_to_haar_and_says_why(monkeypatch, caplog):
    import edge.runtime.classify.interpreter as interp

    def no_runtime(*_a, **_k):
        raise interp.RuntimeMissing("no TFLite runtime found")

    monkeypatch.setattr("edge.runtime.detect.blazeface.make_interpreter", no_runtime)
    with caplog.at_level("WARNING", logger="edge.runtime.detect"):
        det = make_detector(backend="auto")
    assert det.name == "opencv"
    [line] = [r.getMessage() for r in caplog.records if "face detector" in r.getMessage()]
    assert "BlazeFace cannot load" in line and "install ai-edge-litert" in line


def test_opencv_without_cascade_support_says_what_to_do(monkeypatch):
    monkeypatch.delattr(cv2, "CascadeClassifier")
    with pytest.raises(DetectorError, match="OpenCV 5 dropped it"):
        HaarDetector()


def test_empty_frame_has_no_faces(mediapipe_detector):
    assert mediapipe_detector.detect(np.full((480, 640, 3), 90, np.uint8)) == []
    assert HaarDetector().detect(np.full((480, 640), 90, np.uint8)) == []
