"""The accuracy benchmarks score against the FER+ crowd majority where ``ferplus.npz`` lies beside the data
(``--truth auto``, the default), against the archive's own FER2013 labels with ``--truth fer2013``, and refuse
``--truth ferplus`` without the votes in one line. One loader does it for every script (``peer_fer.load_data``)."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

from edge.bundle import FER_LABELS
from tests.support.bundles import with_manifest
from tests.support.paths import REPO
from train_export.data.ferplus import FERPLUS_COLUMNS

BENCHMARKS = REPO / "benchmarks"
SCRIPTS = ("peer_fer", "robustness", "generalisation", "prior_correction", "calibration", "detect_interval")


@pytest.fixture
def scripts(monkeypatch):
    """The benchmark scripts as modules (they import each other by file name, as when run as scripts)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return {name: importlib.import_module(name) for name in SCRIPTS}


@pytest.fixture
def archive(tiny_bundle, tmp_path):
    """``val.npz`` whose FER2013 labels the tiny bundle gets all wrong, ``ferplus.npz`` beside it whose crowd
    majority it gets all right, but for the last two faces, whose votes tie (no majority: left out)."""
    from edge.runtime.classify.classifier import Classifier

    x = np.random.default_rng(7).integers(0, 256, (12, 48, 48), dtype=np.uint8)
    pred = Classifier(tiny_bundle).classify_faces(x).argmax(axis=1)
    votes = np.zeros((len(x), len(FERPLUS_COLUMNS)), np.uint8)
    for i, label in enumerate(pred):
        col = FERPLUS_COLUMNS.index(FER_LABELS[label])
        votes[i, col] = 7
        votes[i, (col + 1) % 7] = 3 if i < len(x) - 2 else 7  # the last two: a 7-7 tie
    np.savez(tmp_path / "val.npz", x=x, y=((pred + 1) % 7).astype(np.uint8))
    np.savez(tmp_path / "ferplus.npz", val_votes=votes)
    return tmp_path / "val.npz"


def test_every_accuracy_benchmark_takes_the_same_truth_option(scripts):
    for name, module in scripts.items():
        parser = module.build_parser()
        assert parser.parse_args([]).truth == "auto", name
        assert parser.parse_args(["--truth", "fer2013"]).truth == "fer2013", name
        with pytest.raises(SystemExit):
            parser.parse_args(["--truth", "crowd"])


@pytest.mark.parametrize(("truth", "faces", "accuracy"), [("auto", 10, 1.0), ("ferplus", 10, 1.0), ("fer2013", 12, 0.0)])
def test_robustness_and_prior_correction_score_against_the_chosen_truth(scripts, tiny_bundle, archive, tmp_path, truth,
                                                                        faces, accuracy):
    out = tmp_path / "r.json"
    assert scripts["robustness"].main(["--model", str(tiny_bundle), "--data", str(archive), "--only", "JPEG q20",
                                       "--truth", truth, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == faces and result["table"]["clean"]["tiny-test-0"]["accuracy"] == accuracy

    counts = dict(zip(FER_LABELS, [3995, 436, 4097, 7215, 4830, 3171, 4965], strict=True))
    bundle = with_manifest(tiny_bundle, tmp_path / "b", training={"train_data": {"class_counts": counts}})
    assert scripts["prior_correction"].main(["--model", str(bundle), "--data", str(archive), "--taus", "0.5",
                                             "--truth", truth, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == faces and result["table"]["0"]["accuracy"] == accuracy


def test_ferplus_truth_without_the_votes_is_one_line_error(scripts, tiny_bundle, archive, tmp_path, capsys):
    (archive.parent / "ferplus.npz").unlink()
    assert scripts["robustness"].main(["--model", str(tiny_bundle), "--data", str(archive), "--truth", "ferplus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "ferplus.npz" in err and len(err.strip().splitlines()) == 1
    # auto falls back to the archive's own labels, every face of them
    out = tmp_path / "r.json"
    assert scripts["robustness"].main(["--model", str(tiny_bundle), "--data", str(archive), "--only", "JPEG q20",
                                       "--json", str(out)]) == 0
    assert json.loads(out.read_text())["n"] == 12
