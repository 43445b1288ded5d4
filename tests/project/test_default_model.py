"""The shipped default bundle: a valid int8 bundle the device loads when no model is configured, within the
size and parameter budget, whose report files agree with its manifest, and whose claimed validation accuracy
is what the device path really scores on FER2013 ``val.npz`` against the FER+ majority, calibration included
(skipped when the data folder is absent).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge.bundle import FER_LABELS, MANIFEST_FILE, MODEL_FILE, default_bundle_dir, load_bundle
from tests.support.paths import SHARED_DATA

DEFAULT = default_bundle_dir()
VAL = SHARED_DATA / "val.npz"
VOTES = VAL.parent / "ferplus.npz"


def test_default_bundle_is_a_valid_int8_bundle_within_budget():
    manifest, model_path = load_bundle(DEFAULT)  # schema, sha256, size
    assert manifest.labels == list(FER_LABELS)
    assert manifest.input.dtype == "int8" and manifest.output.dtype == "int8"
    assert (DEFAULT / MODEL_FILE).stat().st_size + (DEFAULT / MANIFEST_FILE).stat().st_size <= 1_000_000
    assert 0 < manifest.architecture["params"] <= 1_000_000
    m = manifest.metrics
    # Scored against the FER+ crowd's majority of the val faces that have one, int8 within 0.5 pp of float.
    assert m["truth"] == "ferplus_majority" and m["n"] == 3370 and m["label_sets"]["fer2013"]["n"] == 3589
    assert abs(m["float_accuracy"] - m["accuracy"]) <= 0.005
    assert manifest.calibration is not None and m["ece"] <= 0.05 and m["ece_crossfit"] <= 0.05
    report = json.loads((DEFAULT / "evaluation.json").read_text())
    assert report["accuracy"] == m["accuracy"] and report["macro_f1"] == m["macro_f1"]
    assert (DEFAULT / "confusion.png").stat().st_size > 0
    assert (DEFAULT / "README.md").read_text().count(manifest.model_id) >= 1  # the reproduction notes are its own


def test_the_device_classifier_loads_the_default_when_no_model_is_given():
    from edge.runtime.classify.classifier import Classifier

    clf = Classifier()  # no bundle: the shipped one
    assert clf.bundle_dir == DEFAULT and clf.model_id == load_bundle(DEFAULT)[0].model_id
    faces = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    probs = clf.classify_faces(faces)
    assert probs.shape == (5, 7) and np.allclose(probs.sum(axis=1), 1.0, atol=0.05)


@pytest.mark.skipif(not (VAL.is_file() and VOTES.is_file()),
                    reason="FER2013 val.npz and ferplus.npz are not beside the checkout (../shared/data/fer2013)")
def test_claimed_validation_figures_are_what_the_device_path_scores():
    from edge.bundle import FER_LABELS
    from edge.runtime.classify.classifier import Classifier
    from train_export.analysis.calibration import expected_calibration_error
    from train_export.data.ferplus import load_votes, majority_labels

    manifest, _ = load_bundle(DEFAULT)
    with np.load(VAL) as npz:
        x, y = npz["x"], npz["y"].astype(np.int64)
    probs = Classifier(DEFAULT).classify_faces(x)  # calibrated, as the device reports them
    majority, has = majority_labels(load_votes(VOTES, "val"), list(FER_LABELS))
    accuracy = float((probs[has].argmax(axis=1) == majority[has]).mean())
    assert accuracy == pytest.approx(manifest.metrics["accuracy"], abs=0.002), accuracy
    assert expected_calibration_error(probs[has], majority[has]) == pytest.approx(manifest.metrics["ece"], abs=0.002)
    fer2013 = float((probs.argmax(axis=1) == y).mean())
    assert fer2013 == pytest.approx(manifest.metrics["label_sets"]["fer2013"]["accuracy"], abs=0.002), fer2013
