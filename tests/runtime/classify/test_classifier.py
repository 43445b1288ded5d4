"""The classifier on a real int8 bundle (the untrained tiny_bundle): batching, probabilities, flip TTA."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edge.bundle import BundleError
from edge.runtime.capture.demo import DemoSource
from edge.runtime.classify.classifier import Classifier


@pytest.fixture(scope="module")
def clf(tiny_bundle):
    return Classifier(tiny_bundle)


def faces(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 48), dtype=np.uint8)


def test_loads_with_the_preferred_runtime(clf):
    assert clf.runtime == "ai_edge_litert"
    assert clf.model_id.startswith("tiny-test")
    assert len(clf.labels) == 7


def test_tensorflow_is_not_a_device_runtime(tiny_bundle):
    """edge never imports TensorFlow, even when asked to and even on a machine that has it."""
    from edge.config import ConfigError, parse_config
    from edge.runtime.classify.interpreter import RuntimeMissing, make_interpreter

    with pytest.raises(RuntimeMissing):
        make_interpreter(str(tiny_bundle / "model.tflite"), prefer="tensorflow")
    with pytest.raises(ConfigError, match="classifier.runtime"):
        parse_config({"classifier": {"runtime": "tensorflow"}})


@pytest.mark.parametrize("n", [1, 3, 5])
def test_a_batch_of_n_faces_gives_n_rows_that_sum_to_one(clf, n):
    p = clf.classify_faces(faces(n))
    assert p.shape == (n, 7)
    assert np.allclose(p.sum(axis=1), 1.0)
    assert (p >= 0).all()


def test_batched_rows_equal_one_at_a_time(clf):
    batch = faces(4, seed=1)
    together = clf.classify_faces(batch)
    alone = np.concatenate([clf.classify_faces(batch[i : i + 1]) for i in range(4)])
    assert np.allclose(together, alone, atol=1e-6)


def test_the_integer_input_is_the_shared_normalise_and_quantize(clf):
    """The classifier looks the integer input up per pixel value; it must be exactly what
    edge.preprocess.quantize_input (the path training's normalize feeds) makes of the same faces."""
    from edge.preprocess import quantize_input

    batch = np.concatenate([faces(3, seed=2), np.arange(256, dtype=np.uint8).repeat(9)[:2304].reshape(1, 48, 48)])
    scale, zero = clf._in["quantization"]
    expected = quantize_input(batch[..., None], scale, int(zero), np.dtype(clf._in["dtype"]), clf.prep)
    got = clf._quantize(batch)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_the_probabilities_are_the_plain_dequantize_to_the_bit(clf):
    """The classifier looks each int8 output level up in a table made once per model; on every one of the 256
    levels (and a row of nothing but the lowest, which sums to 0 and falls back to uniform) the probabilities
    must be exactly the plain formula's: dequantize, clip at 0, renormalise."""
    levels = np.arange(-128, 128, dtype=np.int8)
    y = np.concatenate([np.stack([np.roll(levels, -7 * i)[:7] for i in range(37)]), np.full((1, 7), -128, np.int8)])
    assert set(y.ravel().tolist()) == set(levels.tolist())
    scale, zero = clf._out["quantization"]
    plain = np.clip((y.astype(np.float64) - zero) * scale, 0.0, None)
    sums = plain.sum(axis=1, keepdims=True)
    expected = np.divide(plain, sums, out=np.full_like(plain, 1.0 / 7), where=sums > 0)
    got = clf._dequantize(y)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got[-1], np.full(7, 1.0 / 7))


def test_one_face_is_cropped_as_in_a_stack_and_never_shares_the_frame(clf):
    frame = DemoSource(faces=1).render(0)
    box, eyes = (250.0, 160.0, 130.0, 130.0), ((285.0, 200.0), (345.0, 206.0))
    from edge.preprocess import crop_face

    for f, b, e in ((frame, box, eyes), (frame, box, None)):
        one = clf.crops(f, [b], [e])
        assert one.shape == (1, 48, 48) and one.dtype == np.uint8 and one.flags.c_contiguous
        np.testing.assert_array_equal(one, np.stack([crop_face(f, b, clf.prep, e if clf.align_eyes else None)]))
    # A gray frame already the model's size, boxed whole: its crop is the frame's own pixels, so it is copied.
    small = np.ascontiguousarray(faces(1, seed=4)[0])
    whole = clf.crops(small, [(4.8, 4.8, 38.4, 38.4)])
    np.testing.assert_array_equal(whole[0], small)
    assert not np.shares_memory(whole, small)


def test_different_faces_give_different_outputs(clf):
    p = clf.classify_faces(np.stack([np.zeros((48, 48), np.uint8), np.full((48, 48), 255, np.uint8)]))
    assert not np.allclose(p[0], p[1])


def test_flip_tta_averages_a_face_with_its_mirror(tiny_bundle, clf):
    tta = Classifier(tiny_bundle, flip_tta=True)
    f = faces(3, seed=2)
    expected = (clf.classify_faces(f) + clf.classify_faces(f[:, :, ::-1].copy())) / 2
    assert np.allclose(tta.classify_faces(f), expected, atol=1e-6)


def test_classify_crops_boxes_from_a_frame(clf):
    frame = DemoSource(faces=1).render(0)
    boxes = [(100.0, 100.0, 120.0, 120.0), (600.0, 440.0, 80.0, 80.0)]  # the second reaches past the edge
    crops = clf.crops(frame, boxes)
    assert crops.shape == (2, 48, 48) and crops.dtype == np.uint8
    assert clf.classify(frame, boxes).shape == (2, 7)
    assert clf.classify(frame, []).shape == (0, 7)


def test_wrong_face_size_is_refused(clf):
    with pytest.raises(ValueError, match="48 x 48"):
        clf.classify_faces(np.zeros((1, 64, 64), np.uint8))


def test_a_tampered_model_is_refused(tiny_bundle, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    data = bytearray((bad / "model.tflite").read_bytes())
    data[200] ^= 0xFF
    (bad / "model.tflite").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        Classifier(bad)


def test_manifest_labels_that_disagree_with_the_model_are_refused(tiny_bundle, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["labels"] = manifest["labels"][:6]
    manifest["output"]["shape"] = [1, 6]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="labels"):
        Classifier(bad)


@pytest.mark.parametrize(("change", "text"), [
    (lambda m: m["output"].update(shape=[]), r"output.shape: expected \[batch, classes\]"),
    (lambda m: m.update(format_version=2.0), "format_version: must be a whole number"),
    (lambda m: m.update(sha256=m["sha256"] + "\n"), "sha256: .* is not allowed: it must be 64 lowercase hex digits"),
])
def test_a_malformed_manifest_is_a_bundle_error_naming_the_key(tiny_bundle, tmp_path, change, text):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    change(manifest)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=f"invalid manifest: {text}"):
        Classifier(bad)


def test_an_unreadable_manifest_is_a_bundle_error(tiny_bundle, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    (bad / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)  # nested deeper than Python recurses
    with pytest.raises(BundleError, match="is not valid JSON"):
        Classifier(bad)


def test_missing_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        Classifier(tmp_path / "nope")


def test_a_crop_from_the_bgr_frame_is_the_crop_of_the_whole_gray_frame():
    """crop_face converts only the part of a BGR frame it reads: pixel for pixel what converting the whole frame
    first gives, turned or not, inside the frame or across its edge."""
    import cv2

    from edge.preprocess import crop_face, to_gray

    rng = np.random.default_rng(3)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (5, 5), 2)
    gray = to_gray(bgr)
    boxes = [(300.0, 200.0, 90.0, 110.0), (-30.0, 400.0, 120.0, 120.0), (600.0, -20.0, 80.0, 70.0), (5.0, 5.0, 300.0, 300.0)]
    for box in boxes:
        cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 3
        for eyes in (None, ((cx - 20, cy - 9), (cx + 20, cy + 9)), ((cx - 20, cy + 14), (cx + 20, cy - 14))):
            np.testing.assert_array_equal(crop_face(bgr, box, eyes=eyes), crop_face(gray, box, eyes=eyes))
