"""The LiteRT BlazeFace detector against MediaPipe's own FaceDetector (where MediaPipe is installed), plus unit
tests of its parts (anchors, decoding, weighted NMS) and of the native-stderr guard."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest

import edge.runtime.detect.blazeface_decode as bf
from benchmarks.crop_calibration import place  # the FER-face canvas of the calibration, not a copy of it
from edge.runtime.capture.demo import DemoSource
from edge.runtime.detect.base import BLAZEFACE_MODEL, BOX_ADJUST, Detection
from edge.runtime.detect.blazeface import BlazeFaceDetector
from edge.runtime.detect.blazeface_decode import decode, ssd_anchors, weighted_nms
from edge.runtime.native import quiet_native_stderr
from tests.support.paths import REPO, SHARED_DATA

FER_VAL = SHARED_DATA / "val.npz"


# ---------------------------------------------------------------------------------------------- anchors


def test_short_range_anchors_have_mediapipes_layout():
    a = ssd_anchors(**bf.SHORT_RANGE_ANCHORS)
    assert a.shape == (896, 4) and a.dtype == np.float32
    # 16x16 grid, 2 anchors per cell (stride 8: one aspect ratio + the interpolated one) ...
    assert a[0].tolist() == a[1].tolist() == [0.03125, 0.03125, 1.0, 1.0]
    assert a[2].tolist() == [0.09375, 0.03125, 1.0, 1.0]  # next cell along x first (order y, x, anchor)
    assert a[32].tolist() == [0.03125, 0.09375, 1.0, 1.0]  # next row after 16 cells x 2
    assert a[511].tolist() == [0.96875, 0.96875, 1.0, 1.0]
    # ... then the three stride-16 layers merged into one 8x8 grid with 3 x 2 = 6 anchors per cell.
    assert (a[512:518] == [0.0625, 0.0625, 1.0, 1.0]).all()
    assert a[518].tolist() == [0.1875, 0.0625, 1.0, 1.0]
    assert a[-1].tolist() == [0.9375, 0.9375, 1.0, 1.0]
    assert (a[:, 2:] == 1.0).all()  # fixed_anchor_size


def test_anchor_scales_follow_ssd_when_sizes_are_not_fixed():
    a = ssd_anchors(**{**bf.SHORT_RANGE_ANCHORS, "fixed_anchor_size": False})
    s0 = 0.1484375
    s1 = s0 + (0.75 - s0) / 3  # linear over the 4 layers
    assert a[0, 2:] == pytest.approx([s0, s0], rel=1e-6)
    assert a[1, 2:] == pytest.approx([np.sqrt(s0 * s1)] * 2, rel=1e-6)  # interpolated scale
    # The stride-16 cell holds layers 1, 2, 3 (each: scale, then sqrt(scale * next); the last "next" is 1.0).
    s2, s3 = s0 + (0.75 - s0) * 2 / 3, 0.75
    expect = [s1, np.sqrt(s1 * s2), s2, np.sqrt(s2 * s3), s3, np.sqrt(s3 * 1.0)]
    assert a[512:518, 2] == pytest.approx(expect, rel=1e-6)
    assert len(ssd_anchors(strides=(8, 16), reduce_boxes_in_lowest_layer=True)) == 16 * 16 * 3 + 8 * 8 * 2


# ----------------------------------------------------------------------------------------------- decode


def _raw(n: int) -> np.ndarray:
    return np.zeros((n, 16), np.float32)


def test_decode_boxes_keypoints_and_scores_by_hand():
    anchors = np.array([[0.5, 0.5, 1, 1], [0.25, 0.75, 1, 1], [0.1, 0.1, 1, 1]], np.float32)
    raw = _raw(3)
    raw[0, :4] = [12.8, -6.4, 32.0, 64.0]  # x, y offsets and w, h in 128-px tensor pixels (XYWH)
    raw[0, 4:6] = [-12.8, 0.0]  # keypoint 0 x, y offset
    raw[0, 14:16] = [0.0, 25.6]  # keypoint 5
    raw[1, :4] = [0, 0, 12.8, 12.8]
    scores = np.array([1000.0, 0.0, -0.01], np.float32)  # clipped to 100 -> 1.0; exactly 0.5; just below
    boxes, s, kp = decode(raw, scores, anchors, min_score=0.5)
    assert s.tolist() == [1.0, 0.5]  # >= threshold is kept (MediaPipe skips only score < thresh)
    cx, cy, w, h = 0.6, 0.45, 0.25, 0.5
    assert boxes[0] == pytest.approx([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    assert kp[0, 0] == pytest.approx([0.4, 0.5]) and kp[0, 5] == pytest.approx([0.5, 0.7])
    assert kp[0, 1] == pytest.approx([0.5, 0.5])  # zero offsets: the anchor centre
    assert boxes[1] == pytest.approx([0.2, 0.7, 0.3, 0.8])
    assert kp.shape == (2, 6, 2)


def test_decode_drops_negative_and_nan_sizes_but_keeps_zero():
    anchors = np.full((3, 4), 0.5, np.float32)
    anchors[:, 2:] = 1
    raw = _raw(3)
    raw[0, 2] = -1.0
    raw[1, 3] = np.nan
    boxes, s, _ = decode(raw, np.ones(3, np.float32), anchors)
    assert len(boxes) == 1 and boxes[0].tolist() == [0.5, 0.5, 0.5, 0.5]


def test_threshold_first_decode_equals_decoding_everything():
    rng = np.random.default_rng(3)
    anchors = ssd_anchors()
    raw = rng.normal(0, 20, (1, 896, 16)).astype(np.float32)
    raw[0, :, 2:4] = np.abs(raw[0, :, 2:4])
    logits = rng.normal(-3, 4, (1, 896, 1)).astype(np.float32)
    for thr in (0.0, 0.3, 0.5, 0.9, 0.999):
        boxes, s, kp = decode(raw, logits, anchors, min_score=thr)
        # Brute force the way TensorsToDetectionsCalculator does it: every anchor, float32, then filter.
        sc = (1 / (1 + np.exp(-np.clip(logits.ravel(), -100, 100)))).astype(np.float32)
        r = raw[0]
        xc = r[:, 0] / 128 * anchors[:, 2] + anchors[:, 0]
        yc = r[:, 1] / 128 * anchors[:, 3] + anchors[:, 1]
        w, h = r[:, 2] / 128 * anchors[:, 2], r[:, 3] / 128 * anchors[:, 3]
        keep = sc >= np.float32(thr)
        assert s.tolist() == sc[keep].tolist()
        np.testing.assert_allclose(boxes, np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], 1)[keep], atol=1e-6)
        kx = r[:, 4::2] / 128 * anchors[:, 2:3] + anchors[:, 0:1]
        np.testing.assert_allclose(kp[:, :, 0], kx[keep], atol=1e-6)


# -------------------------------------------------------------------------------------------------- NMS


def _kp(n: int, value: float) -> np.ndarray:
    return np.full((n, 6, 2), value, np.float32)


def test_weighted_nms_merges_overlaps_by_score_and_keeps_the_best_score():
    boxes = np.array([[0.0, 0.0, 1.0, 1.0], [0.1, 0.0, 1.1, 1.0], [5, 5, 6, 6]], np.float32)
    scores = np.array([0.6, 0.9, 0.7], np.float32)
    kps = np.concatenate([_kp(1, 1.0), _kp(1, 2.0), _kp(1, 9.0)])
    b, s, k = weighted_nms(boxes, scores, kps, threshold=0.3)
    assert s.tolist() == pytest.approx([0.9, 0.7])  # best first; merged output keeps the top score
    wx0 = (0.6 * 0.0 + 0.9 * 0.1) / 1.5
    wx1 = (0.6 * 1.0 + 0.9 * 1.1) / 1.5
    assert b[0] == pytest.approx([wx0, 0.0, wx1, 1.0])
    assert k[0] == pytest.approx(np.full((6, 2), (0.6 * 1 + 0.9 * 2) / 1.5))
    assert b[1].tolist() == [5, 5, 6, 6] and (k[1] == 9).all()


def test_weighted_nms_threshold_is_strict_and_not_transitive():
    # Unit squares shifted by half a side: IoU(a, b) = 0.5 / 1.5 = 1/3 (exact in float32 arithmetic).
    a, b, c = [0.0, 0.0, 1.0, 1.0], [0.5, 0.0, 1.5, 1.0], [1.0, 0.0, 2.0, 1.0]
    boxes = np.array([a, b, c], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    _, s, _ = weighted_nms(boxes, scores, _kp(3, 0), threshold=float(np.float32(1) / np.float32(3)))
    assert len(s) == 3  # IoU == threshold does not suppress (MediaPipe: similarity > threshold)
    _, s, _ = weighted_nms(boxes, scores, _kp(3, 0), threshold=0.3)
    # a absorbs b (1/3 > 0.3) but not c (IoU(a, c) = 0); c then stands alone although it overlaps b.
    assert s.tolist() == pytest.approx([0.9, 0.7])


def test_weighted_nms_zero_area_best_box_ends_the_loop_like_mediapipe():
    boxes = np.array([[0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0]], np.float32)
    b, s, _ = weighted_nms(boxes, np.array([0.9, 0.8], np.float32), _kp(2, 0))
    # Its IoU with itself is 0, so nothing is removed: MediaPipe emits it and stops (the other box is lost).
    assert s.tolist() == pytest.approx([0.9]) and b[0].tolist() == [0.5, 0.5, 0.5, 0.5]
    assert len(weighted_nms(boxes[:0], np.empty(0, np.float32), _kp(0, 0))[1]) == 0


# --------------------------------------------------------------------------------------- preprocessing


@pytest.fixture(scope="module")
def ours():
    det = BlazeFaceDetector(min_face_size=0, max_faces=99)
    yield det
    det.close()


@pytest.mark.parametrize("shape", [(480, 640, 3), (720, 1280, 3), (960, 1280), (240, 320), (640, 480, 3), (500, 500)])
def test_letterbox_tensor_equals_mediapipes_warp(ours, shape):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    h, w = shape[:2]
    ours._to_tensor(img)
    got = ours._input[0].copy()
    # MediaPipe: ROI = image padded to a centred square; tensor pixel d samples image pixel d * side/128 + offset.
    side = max(w, h)
    m = np.array([[side / 128, 0, (w - side) / 2], [0, side / 128, (h - side) / 2]])
    rgb = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB if img.ndim == 2 else cv2.COLOR_BGR2RGB)
    warped = cv2.warpAffine(rgb, m, (128, 128), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_CONSTANT)
    np.testing.assert_allclose(got, warped.astype(np.float32) * (2 / 255) - 1, atol=1e-6)
    fast = ours._map(w, h)[-1] is not None
    assert fast == (shape[:2] in [(480, 640), (720, 1280), (960, 1280)])  # exact every-k-th-pixel cases


# ------------------------------------------------------------------------------------- against MediaPipe


def _need_mediapipe() -> None:
    """Skip without mediapipe; import it the way the mediapipe backend does (no TensorFlow, no matplotlib)."""
    from edge.runtime.detect import mediapipe_tasks as ed

    ed._keep_tensorflow_out_of_mediapipe()
    with ed._without_pyplot():
        pytest.importorskip("mediapipe")


@contextlib.contextmanager
def mediapipe_runner():
    """MediaPipe Tasks FaceDetector configured like edge.runtime.detect.mediapipe_tasks.MediaPipeDetector (defaults otherwise).

    Yields ``run(image) -> [(MediaPipe's int bounding_box, score, keypoints in pixels)]``.
    """
    _need_mediapipe()
    from edge.runtime.detect import mediapipe_tasks as ed

    with ed._without_pyplot():
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision
    assert vision.FaceDetectorOptions.min_suppression_threshold == bf.NMS_THRESHOLD  # what we reproduce
    options = vision.FaceDetectorOptions(
        base_options=BaseOptions(model_asset_path=str(BLAZEFACE_MODEL)), min_detection_confidence=0.5
    )
    with quiet_native_stderr():
        det = vision.FaceDetector.create_from_options(options)

    def run(img: np.ndarray) -> list[tuple[tuple[int, int, int, int], float, list[tuple[float, float]]]]:
        rgb = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB if img.ndim == 2 else cv2.COLOR_BGR2RGB)
        with quiet_native_stderr():
            res = det.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb))
        h, w = img.shape[:2]
        return [
            ((d.bounding_box.origin_x, d.bounding_box.origin_y, d.bounding_box.width, d.bounding_box.height),
             d.categories[0].score, [(k.x * w, k.y * h) for k in d.keypoints])
            for d in res.detections
        ]

    try:
        yield run
    finally:
        with quiet_native_stderr():
            det.close()


@pytest.fixture(scope="module")
def mp_tasks():
    with mediapipe_runner() as run:
        yield run


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def compare(ours: BlazeFaceDetector, mp_run, img: np.ndarray, where: str) -> int:
    """Both detectors find the same faces: IoU >= 0.9, int boxes within 1 px, keypoints within 1.5 px."""
    theirs = mp_run(img)
    mine = ours.detect(img)
    assert len(mine) == len(theirs), (where, [d.raw_box for d in mine], [t[0] for t in theirs])
    unused = list(mine)
    for box, score, kps in theirs:
        best = max(unused, key=lambda d: iou(d.raw_box, box))
        unused.remove(best)
        overlap = iou(best.raw_box, box)
        # MediaPipe's pixel box truncates each float to int (detection_transformation_calculator.cc).
        trunc = np.array([int(v) for v in best.raw_box])
        kd = max(float(np.hypot(px - qx, py - qy)) for (px, py), (qx, qy) in zip(best.keypoints, kps, strict=True))
        assert overlap >= 0.9, (where, best.raw_box, box)
        assert np.abs(trunc - np.array(box)).max() <= 1, (where, best.raw_box, box)
        assert kd <= 1.5, (where, best.keypoints, kps)
        assert best.score == pytest.approx(score, abs=1e-3), where
    return len(theirs)


DEMO_CASES = [(faces, index) for faces in (1, 2, 3) for index in (0, 37, 90, 150, 170)]


@pytest.mark.parametrize(("faces", "index"), DEMO_CASES)
def test_same_faces_as_mediapipe_on_demo_frames(ours, mp_tasks, faces, index):
    frame = DemoSource(faces=faces).render(index)  # index 170: the second face has left the picture
    n = compare(ours, mp_tasks, frame, f"demo faces={faces} index={index}")
    assert n == sum(p is not None for p in DemoSource(faces=faces).positions(index))
    # The Pi's lores path: a 320x240 gray plane (fractional sampling step 2.5, bilinear like MediaPipe).
    lores = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (320, 240), interpolation=cv2.INTER_AREA)
    compare(ours, mp_tasks, lores, f"lores faces={faces} index={index}")


def test_same_faces_as_mediapipe_on_fer_faces(ours, mp_tasks):
    if not FER_VAL.is_file():
        pytest.skip(f"{FER_VAL} is not here")
    faces = np.load(FER_VAL)["x"][:50]
    found = 0
    for i, face in enumerate(faces):
        canvas, _ = place(face, 4)
        found += compare(ours, mp_tasks, canvas, f"FER val {i}")
        if i % 10 == 0:  # and the same face as a BGR frame
            compare(ours, mp_tasks, cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR), f"FER val {i} BGR")
    assert found >= 30  # 36 of these 50 at min_confidence 0.5, by both identically


def test_raw_box_and_fer_box_match_mediapipedetector():
    _need_mediapipe()
    from edge.runtime.detect.mediapipe_tasks import MediaPipeDetector

    frame = DemoSource(faces=2, vanish=False).render(37)
    with quiet_native_stderr():
        theirs = MediaPipeDetector()
    try:
        with quiet_native_stderr():
            ref = theirs.detect(frame)
        mine = BlazeFaceDetector().detect(frame)
    finally:
        with quiet_native_stderr():
            theirs.close()
    assert len(mine) == len(ref) == 2
    for a, b in zip(mine, ref, strict=True):  # both sorted largest first
        assert np.abs(np.array(a.raw_box) - np.array(b.raw_box)).max() < 1.0
        assert np.abs(np.array(a.box) - np.array(b.box)).max() < 1.5
        assert a.box == pytest.approx(BOX_ADJUST["mediapipe"].apply(a.raw_box))


# ------------------------------------------------------------------------------------ detector behaviour


def test_keypoints_are_in_mediapipes_order_on_an_unmirrored_face(ours):
    demo = DemoSource(faces=1)
    (d,) = ours.detect(demo.render(0))
    kp = dict(zip(bf.KEYPOINT_NAMES, d.keypoints, strict=True))
    x, y, side = demo.positions(0)[0]
    assert all(x <= px <= x + side and y <= py <= y + side for px, py in d.keypoints)
    # Subject's right eye/ear appear on the image's left; eyes above nose above mouth.
    assert kp["right_eye"][0] < kp["nose_tip"][0] < kp["left_eye"][0]
    assert kp["right_ear_tragion"][0] < kp["right_eye"][0] and kp["left_eye"][0] < kp["left_ear_tragion"][0]
    assert max(kp["right_eye"][1], kp["left_eye"][1]) < kp["nose_tip"][1] < kp["mouth_center"][1]


def test_scale_maps_lores_pixels_to_main_pixels(ours):
    frame = cv2.cvtColor(DemoSource(faces=1).render(10), cv2.COLOR_BGR2GRAY)
    lores = cv2.resize(frame, (320, 240), interpolation=cv2.INTER_AREA)
    (a,) = ours.detect(lores)
    (b,) = ours.detect(lores, scale=(2.0, 2.0))
    assert b.raw_box == pytest.approx(tuple(v * 2 for v in a.raw_box))
    assert np.array(b.keypoints) == pytest.approx(np.array(a.keypoints) * 2)
    assert b.box == pytest.approx(BOX_ADJUST["mediapipe"].apply(b.raw_box))
    assert 0.5 <= b.score <= 1.0


def test_size_filter_max_faces_and_empty_frames():
    frame = DemoSource(faces=3, vanish=False).render(0)
    det = BlazeFaceDetector(max_faces=5)
    try:
        all_faces = det.detect(frame)
        assert len(all_faces) == 3 and all(isinstance(d, Detection) for d in all_faces)
        areas = [d.raw_box[2] * d.raw_box[3] for d in all_faces]
        assert areas == sorted(areas, reverse=True)
        det.max_faces = 1
        assert det.detect(frame) == all_faces[:1]
        det.min_face_size = 1000
        assert det.detect(frame) == []
        det.min_face_size = 40
        assert det.detect(np.full((480, 640, 3), 90, np.uint8)) == []
        assert det.detect(np.full((480, 640), 90, np.uint8)) == []
        with pytest.raises(ValueError, match="uint8"):
            det.detect(frame.astype(np.float32))
    finally:
        det.close()
    with pytest.raises(RuntimeError, match="closed"):
        det.detect(frame)
    assert det.name == "blazeface"


def test_a_file_that_is_not_a_model_is_a_detector_error(tmp_path):
    from edge.runtime.detect.base import DetectorError

    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"not a model" * 100)
    with pytest.raises(DetectorError, match="cannot load"):
        BlazeFaceDetector(model_path=bad)


# ------------------------------------------------------------------------------------------ native_quiet


def test_quiet_native_stderr_captures_fd2_and_logs_it_at_debug(capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="edge.native")
    with quiet_native_stderr():
        os.write(2, b"INFO: native chatter\nsecond line\n")
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert "native chatter" not in err and "after" in err
    got = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "edge.native"]
    assert got == [(logging.DEBUG, "INFO: native chatter"), (logging.DEBUG, "second line")]


def test_quiet_native_stderr_restores_fd2_on_exceptions_and_reports_louder(capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="edge.native")
    before = os.fstat(2).st_ino
    with pytest.raises(KeyError), quiet_native_stderr():
        os.write(2, b"ERROR: why it failed\n")
        raise KeyError("boom")
    assert os.fstat(2).st_ino == before
    os.write(2, b"visible\n")
    assert "visible" in capfd.readouterr().err
    assert [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "edge.native"] == [
        (logging.WARNING, "ERROR: why it failed")
    ]


def test_quiet_native_stderr_from_many_threads_leaves_fd2_intact(capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="edge.native")
    before = os.fstat(2).st_ino

    def work(i: int) -> None:
        for j in range(20):
            with quiet_native_stderr():
                os.write(2, f"t{i}-{j}\n".encode())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert os.fstat(2).st_ino == before
    assert capfd.readouterr().err == ""
    assert len([r for r in caplog.records if r.name == "edge.native"]) == 80


def test_litert_chatter_is_hidden_by_default_and_shown_at_debug():
    """In a fresh process (LiteRT prints its XNNPACK line only once per process)."""
    code = (
        "import logging; logging.basicConfig(level=logging.{level});"
        "from edge.runtime.detect.blazeface import BlazeFaceDetector; BlazeFaceDetector().close()"
    )
    quiet = subprocess.run([sys.executable, "-c", code.format(level="WARNING")], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    loud = subprocess.run([sys.executable, "-c", code.format(level="DEBUG")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert loud.returncode == 0, loud.stderr
    assert "DEBUG:edge.native:INFO: Created TensorFlow Lite XNNPACK delegate for CPU." in loud.stderr

