"""Eye-level alignment in the shared crop, the class-prior correction of the classifier, and their config options.

Real parts throughout: OpenCV geometry on synthetic faces with known eye positions, the int8 ``tiny_bundle``
and the shipped default through LiteRT, the demo source and BlazeFace in the frame loop.
"""

from __future__ import annotations

import io
import json
import shutil

import cv2
import numpy as np
import pytest

from edge.bundle import BundleError, read_manifest
from edge.config import ConfigError, parse_config
from edge.preprocess import Preprocessing, crop_face, eye_roll
from edge.runtime.classify.classifier import Classifier

PREP = Preprocessing()


def _face_frame(angle: float = 0.0) -> tuple[np.ndarray, tuple[float, float, float, float], tuple]:
    """A 640x480 frame with a synthetic face (two dark eyes, a mouth) turned by ``angle`` degrees (OpenCV sense,
    counter-clockwise on screen) about its centre; returns the frame, its detector box and its two eye centres."""
    frame = np.full((480, 640), 90, np.uint8)
    cx, cy = 320.0, 240.0
    cv2.ellipse(frame, (320, 240), (80, 100), 0, 0, 360, 200, -1)
    eyes = [(290.0, 215.0), (350.0, 215.0)]
    for ex, ey in eyes:
        cv2.circle(frame, (int(ex), int(ey)), 9, 20, -1)
    cv2.rectangle(frame, (295, 285), (345, 295), 40, -1)
    m = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    frame = cv2.warpAffine(frame, m, (640, 480), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    turned = tuple(tuple(float(v) for v in m @ np.array([x, y, 1.0])) for x, y in eyes)
    side = 200 / PREP.crop_scale
    return frame, (cx - side / 2, cy - side / 2, side, side), turned


def _dark_blob_rows(face: np.ndarray) -> tuple[float, float]:
    """Mean row of the dark pixels in the left and in the right half of the crop's upper half (the two eyes)."""
    top = face[: face.shape[0] // 2]
    rows = []
    for half in (top[:, : face.shape[1] // 2], top[:, face.shape[1] // 2 :]):
        ys, _ = np.nonzero(half < 80)
        rows.append(float(ys.mean()))
    return rows[0], rows[1]


def test_eye_roll_is_the_eye_line_angle_in_either_order():
    assert eye_roll(((10.0, 10.0), (20.0, 10.0))) == 0.0
    assert eye_roll(((10.0, 10.0), (20.0, 20.0))) == pytest.approx(45.0)  # the image-right eye lower: positive
    assert eye_roll(((20.0, 20.0), (10.0, 10.0))) == pytest.approx(45.0)  # a mirrored frame swaps them: same roll
    assert eye_roll(((10.0, 20.0), (20.0, 10.0))) == pytest.approx(-45.0)
    assert eye_roll(((10.0, 10.0), (10.0, 30.0))) == pytest.approx(90.0)


def test_level_eyes_change_nothing_and_a_box_off_the_frame_is_still_refused():
    frame, box, eyes = _face_frame(0.0)
    np.testing.assert_array_equal(crop_face(frame, box, PREP, eyes), crop_face(frame, box, PREP))
    edge = (600.0, 400.0, 120.0, 120.0)  # partly outside: the turned crop replicates the border like the plain one
    level = ((610.0, 430.0), (650.0, 430.0))
    np.testing.assert_array_equal(crop_face(frame, edge, PREP, level), crop_face(frame, edge, PREP))
    with pytest.raises(ValueError, match="outside"):
        crop_face(frame, (900.0, 900.0, 50.0, 50.0), PREP, ((0.0, 0.0), (1.0, 1.0)))


@pytest.mark.parametrize("angle", [-30.0, -12.0, 20.0, 35.0])
def test_a_tilted_face_comes_out_level_and_like_the_upright_one(angle):
    upright, box, _ = _face_frame(0.0)
    tilted, _, eyes = _face_frame(angle)
    assert eye_roll(eyes) == pytest.approx(-angle, abs=1e-6)  # a counter-clockwise turn lifts the right eye
    want = crop_face(upright, box, PREP).astype(float)
    plain = crop_face(tilted, box, PREP).astype(float)
    aligned = crop_face(tilted, box, PREP, eyes).astype(float)
    left, right = _dark_blob_rows(aligned)
    assert abs(left - right) < 0.6  # level eyes, to a pixel fraction at 48 px
    assert np.abs(aligned - want).mean() < 0.25 * np.abs(plain - want).mean()
    assert np.abs(aligned - want).mean() < 4.0  # grey levels: the same face, resampled once


def test_classifier_aligns_only_when_asked_and_checks_the_eye_list(tiny_bundle):
    tilted, box, eyes = _face_frame(25.0)
    off, on = Classifier(tiny_bundle, align_eyes=False), Classifier(tiny_bundle)  # on unless switched off
    np.testing.assert_array_equal(off.crops(tilted, [box], [eyes]), off.crops(tilted, [box]))
    np.testing.assert_array_equal(on.crops(tilted, [box], [eyes]), crop_face(tilted, box, PREP, eyes)[None])
    np.testing.assert_array_equal(on.crops(tilted, [box], [None]), off.crops(tilted, [box]))  # Haar: no keypoints
    assert on.classify(tilted, [box, box], [eyes, None]).shape == (2, 7)
    with pytest.raises(ValueError, match="one entry"):
        on.crops(tilted, [box, box], [eyes])


def _bundle_with_counts(src, dst, counts: dict[str, int]):
    shutil.copytree(src, dst)
    path = dst / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["training"] = {"train_data": {"n": sum(counts.values()), "class_counts": counts}}
    path.write_text(json.dumps(manifest))
    return dst


def test_prior_correction_divides_by_the_training_prior(tiny_bundle, tmp_path):
    labels = read_manifest(tiny_bundle).labels
    counts = dict(zip(labels, [400, 40, 400, 700, 500, 300, 500], strict=True))
    bundle = _bundle_with_counts(tiny_bundle, tmp_path / "b", counts)
    prior = np.array(list(counts.values()), float) / sum(counts.values())
    assert read_manifest(bundle).class_prior() == pytest.approx(list(prior))
    faces = np.random.default_rng(3).integers(0, 256, (16, 48, 48), dtype=np.uint8)
    base = Classifier(bundle).classify_faces(faces)
    np.testing.assert_array_equal(Classifier(bundle, prior_correction=0.0).classify_faces(faces), base)
    for tau in (0.5, 1.0):
        got = Classifier(bundle, prior_correction=tau).classify_faces(faces)
        # softmax(log p - tau log prior) = p * prior^-tau, renormalised
        want = base * prior**-tau
        np.testing.assert_allclose(got, want / want.sum(axis=1, keepdims=True), rtol=1e-9)
        np.testing.assert_allclose(got.sum(axis=1), 1.0)
    strong = Classifier(bundle, prior_correction=2.0).classify_faces(faces)
    rare = labels.index("disgust")
    assert (strong.argmax(axis=1) == rare).sum() >= (base.argmax(axis=1) == rare).sum()
    assert strong[:, rare].mean() > base[:, rare].mean()  # the rare class gains probability


def test_prior_correction_needs_the_training_counts(tiny_bundle):
    assert read_manifest(tiny_bundle).class_prior() is None  # the test bundle records no training data
    Classifier(tiny_bundle, prior_correction=0.0)  # off: no counts needed
    with pytest.raises(BundleError, match="prior_correction = 0") as err:
        Classifier(tiny_bundle, prior_correction=0.5)
    assert "\n" not in str(err.value)


def test_the_shipped_model_records_its_training_prior():
    prior = read_manifest(Classifier(None).bundle_dir).class_prior()
    assert prior is not None and sum(prior) == pytest.approx(1.0)
    assert min(prior) == prior[1]  # disgust, 0.9 % of the training faces' FER+ vote targets
    assert prior[1] == pytest.approx(267 / 28556)


def test_config_options_are_validated_and_reach_the_classifier(tmp_path):
    from edge.runtime.classify.classifier import Classifier

    assert parse_config({}).classifier.align_eyes is True and parse_config({}).classifier.prior_correction == 0.0
    c = parse_config({"classifier": {"align_eyes": False, "prior_correction": 0.5}}).classifier
    clf = Classifier.from_config(None, c)
    assert clf.align_eyes is False and clf.prior_correction == 0.5
    for bad, key in (({"prior_correction": -0.1}, "prior_correction"), ({"prior_correction": 3}, "prior_correction"),
                     ({"align_eyes": "maybe"}, "align_eyes")):
        with pytest.raises(ConfigError, match=f"classifier.{key}") as err:
            parse_config({"classifier": bad})
        assert "\n" not in str(err.value)


def test_the_frame_loop_hands_the_detector_eyes_to_the_classifier(tmp_path, tiny_bundle):
    from edge.config import parse_config
    from edge.runtime.assemble import assemble
    from edge.runtime.capture.demo import DemoSource
    from edge.runtime.publish.stdout import StdoutSink

    config = parse_config({
        "device": {"id": "t", "state_dir": str(tmp_path / "state")},
        # Every frame detected: the second detect() below must see the frame as the loop did, not carry it.
        "detector": {"backend": "blazeface", "every_n_frames": 1},
        "classifier": {"model": str(tiny_bundle)},  # align_eyes is on by default
    })
    sink = StdoutSink("t", stream=io.StringIO())
    with assemble(config, sink=sink) as d:
        seen = []
        real = d.models.classify
        d.models.classify = lambda image, boxes, eyes=None: (seen.append((boxes, eyes)), real(image, boxes, eyes))[1]
        src = DemoSource(faces=2)
        frame = src.read()
        assert d.models.classifier.align_eyes
        d.process_frame(frame)
        dets = d.detector.detect(frame.image)
        assert seen and seen[0][1] == [det.eyes for det in dets] and all(e is not None for e in seen[0][1])
    sink.close()
