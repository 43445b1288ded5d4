"""Temperature calibration: the device's scaling, the workstation's ECE and fit, and a bundle that carries it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edge.bundle import BundleError, load_bundle
from edge.runtime.classify.calibration import temperature_scale
from tests.support.bundles import with_manifest
from train_export.analysis.calibration import (
    crossfit_ece,
    expected_calibration_error,
    fit_temperature,
    reliability,
)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def miscalibrated(n: int, true_t: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities softmax(z) of faces whose labels are drawn from softmax(z / true_t): off by ``true_t``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, (n, 5))
    p_true = softmax(z / true_t)
    y = np.array([rng.choice(5, p=p) for p in p_true])
    return softmax(z), y


def test_scaling_keeps_the_winner_and_zeros_and_sums_to_one():
    p = np.array([[0.6, 0.3, 0.1, 0.0], [0.25, 0.25, 0.4, 0.1]])
    for t in (0.3, 1.0, 2.5):
        q = temperature_scale(p, t)
        np.testing.assert_allclose(q.sum(axis=1), 1.0)
        assert (q.argmax(axis=1) == p.argmax(axis=1)).all() and q[0, 3] == 0.0
    np.testing.assert_allclose(temperature_scale(p, 1.0), p)
    assert temperature_scale(p, 0.5)[0, 0] > 0.6 > temperature_scale(p, 2.0)[0, 0]
    # T < 1 is softmax(log p / T): 0.6 ** 2 / (0.6 ** 2 + 0.3 ** 2 + 0.1 ** 2)
    assert temperature_scale(p, 0.5)[0, 0] == pytest.approx(0.36 / 0.46)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            temperature_scale(p, bad)


def test_ece_of_known_cases():
    y = np.array([0, 0, 1, 1])
    certain_right = np.eye(2)[y]
    assert expected_calibration_error(certain_right, y) == 0.0
    assert expected_calibration_error(np.eye(2)[1 - y], y) == 1.0  # sure and always wrong
    # Two faces at 0.7 (one right: |0.5 - 0.7|) and two at 0.9 (both right: |1 - 0.9|): (2 * 0.2 + 2 * 0.1) / 4.
    p = np.array([[0.7, 0.3], [0.3, 0.7], [0.1, 0.9], [0.9, 0.1]])
    assert expected_calibration_error(p, np.array([0, 0, 1, 0])) == pytest.approx(0.15)
    rows = reliability(p, np.array([0, 0, 1, 0]))
    assert [r["n"] for r in rows] == [2, 2] and rows[0]["accuracy"] == 0.5


def test_scaling_is_the_plain_formula_to_the_bit_and_leaves_its_input_alone():
    """temperature_scale works in place on its own arrays: the values must be the plain formula's, exactly."""
    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.full(7, 0.4), 200)
    p[::3, 2] = 0.0
    p[::5, :] = np.array([0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    before = p.copy()
    for t in (0.3, 0.6243, 2.5):
        with np.errstate(divide="ignore"):
            logp = np.log(np.clip(p, 0.0, None)) / t
        logp -= logp.max(axis=1, keepdims=True)
        out = np.exp(logp)
        np.testing.assert_array_equal(temperature_scale(p, t), out / out.sum(axis=1, keepdims=True))
    np.testing.assert_array_equal(p, before)


@pytest.mark.parametrize("true_t", [0.5, 2.0])
def test_the_fitted_temperature_recovers_the_miscalibration(true_t):
    probs, y = miscalibrated(6000, true_t)
    t = fit_temperature(probs, y)
    assert t == pytest.approx(true_t, rel=0.12)
    before = expected_calibration_error(probs, y)
    assert expected_calibration_error(temperature_scale(probs, t), y) < before / 2
    assert crossfit_ece(probs, y) < before / 2


def test_the_classifier_applies_the_bundle_temperature(tiny_bundle, tmp_path):
    from edge.runtime.classify.classifier import Classifier

    faces = np.random.default_rng(1).integers(0, 256, (6, 48, 48), dtype=np.uint8)
    plain = Classifier(tiny_bundle).classify_faces(faces)
    calibrated_dir = with_manifest(tiny_bundle, tmp_path / "calibrated",
                                   calibration={"method": "temperature", "temperature": 0.5, "fitted_on": "test"})
    clf = Classifier(calibrated_dir)
    assert clf.temperature == 0.5
    np.testing.assert_allclose(clf.classify_faces(faces), temperature_scale(plain, 0.5), atol=1e-9)

    # With flip TTA each pass is calibrated, as the temperature was fitted, before the mirror is averaged in.
    mirrored = Classifier(tiny_bundle).classify_faces(np.ascontiguousarray(faces[:, :, ::-1]))
    both = (temperature_scale(plain, 0.5) + temperature_scale(mirrored, 0.5)) / 2
    np.testing.assert_allclose(Classifier(calibrated_dir, flip_tta=True).classify_faces(faces), both, atol=1e-9)

    frozen = with_manifest(tiny_bundle, tmp_path / "frozen", calibration={"method": "temperature", "temperature": 0})
    with pytest.raises(BundleError, match="calibration.temperature"):
        load_bundle(frozen)


def test_a_bundle_format_this_runtime_cannot_read_names_the_upgrade(tiny_bundle, tmp_path):
    bundle = tmp_path / "future"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    manifest["format_version"] = 1  # a bundle from before calibration still loads
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(bundle)[0].calibration is None
    manifest["format_version"] = 3
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="bundle format 3 is not supported.*upgrade the edge package"):
        load_bundle(bundle)
