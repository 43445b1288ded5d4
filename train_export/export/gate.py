"""Export a trained Keras model as a device bundle, gated on int8 accuracy.

Steps: convert to full-integer int8 (representative faces drawn from the training data) and to float32
TFLite; evaluate both in the device's interpreter on validation faces (and the Keras model beside them);
refuse when int8 accuracy is more than ``margin_pp`` percentage points below float; fit the temperature that
calibrates the int8 model's probabilities on the validation faces; otherwise write the bundle (``model.tflite``
+ ``manifest.json`` with the calibration, metrics, training config and architecture), a reports folder beside it
(``evaluation.json``, ``confusion.png``, ``model_float.tflite``) and, when asked, sign it.

Where FER+ votes exist for the validation faces (:func:`train_export.data.ferplus.truths_for`), every figure is
against the FER+ majority, with the FER2013 labels' figures beside them.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.bundle import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, Manifest
from edge.preprocess import normalize
from edge.runtime.classify.calibration import temperature_scale
from train_export import progress
from train_export.analysis.calibration import crossfit_ece, expected_calibration_error, fit_temperature
from train_export.analysis.evaluate import (
    Truth,
    evaluate,
    from_classifier,
    keras_labels,
    keras_predictor,
    plot_confusion,
    predict_in_chunks,
    run_hparams,
    write_report,
)
from train_export.data.ferplus import truths_for
from train_export.data.load import FaceData, load_dataset

log = logging.getLogger(__name__)

#: A bundle above this size is still written, with a warning: the default model must stay this small.
BUNDLE_SIZE_BUDGET = 1024 * 1024


class ExportError(Exception):
    """The export cannot go on; the message says why and what to do."""


class ExportRefused(ExportError):
    """int8 accuracy fell more than the allowed margin below float.

    Attributes:
        reports: The evaluation reports (``int8``, ``float``, ``keras``) that led to the refusal.
    """

    def __init__(self, message: str, reports: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.reports = reports or {}


@dataclass
class ExportResult:
    """What an export produced."""

    bundle_dir: Path
    reports_dir: Path
    manifest: Manifest
    report: dict[str, Any]


def representative_faces(data: FaceData, n: int, seed: int = 0) -> np.ndarray:
    """``n`` training faces (stratified by class, seeded) as normalised float inputs for int8 calibration."""
    rng = np.random.default_rng(seed)
    n = min(n, len(data))
    per_class = [np.flatnonzero(data.y == c) for c in range(len(data.labels))]
    counts = data.class_counts()
    take = np.floor(n * counts / max(counts.sum(), 1)).astype(int)
    idx = np.concatenate([rng.choice(ix, size=min(k, len(ix)), replace=False) for ix, k in zip(per_class, take, strict=True)])
    if len(idx) < n:  # rounding down left a few: fill at random from the rest
        rest = np.setdiff1d(np.arange(len(data)), idx)
        idx = np.concatenate([idx, rng.choice(rest, size=n - len(idx), replace=False)])
    return normalize(data.x[np.sort(idx)])[..., None]


def train_description(train: FaceData, hparams: dict[str, Any], votes: Path | str | None,
                      train_source: Path | str) -> dict[str, Any]:
    """:meth:`FaceData.describe` of the faces as the run trained on them: with ``label_source`` "ferplus", the
    faces with FER+ votes and the classes of their vote targets, which the device's class-prior correction reads."""
    if hparams.get("label_source") != "ferplus":
        return train.describe()
    from train_export.data.ferplus import FERPLUS_FILE, ferplus_beside, with_vote_targets

    path = Path(votes) if votes else ferplus_beside(train_source)
    if path is None:
        raise ExportError(f"the model was trained on FER+ votes but there is no {FERPLUS_FILE} beside {train_source}; "
                          "pass --ferplus")
    return with_vote_targets(train, path, "train").describe()


def calibrate(probs: np.ndarray, truth: Truth) -> tuple[dict[str, Any], dict[str, float]]:
    """Fit the temperature of a model's probabilities ``probs`` of the ``truth`` faces (its rows, in order).

    Returns the manifest's ``calibration`` block and the figures: the ECE before, after (fitted and scored on
    the same faces, as shipped), and cross-fitted (each half scaled by a temperature fitted on the other half:
    what a face the temperature never saw can expect).
    """
    temperature = fit_temperature(probs, truth.y)
    figures = {
        "temperature": round(temperature, 4),
        "ece_uncalibrated": expected_calibration_error(probs, truth.y),
        "ece": expected_calibration_error(temperature_scale(probs, temperature), truth.y),
        "ece_crossfit": crossfit_ece(probs, truth.y),
    }
    log.info("calibration: temperature %.3f, ECE %.4f -> %.4f (cross-fitted %.4f) on %d faces (%s)", temperature,
             figures["ece_uncalibrated"], figures["ece"], figures["ece_crossfit"], len(truth.y), truth.name)
    return {"method": "temperature", "temperature": round(temperature, 4),
            "fitted_on": f"{len(truth.y)} validation faces, {truth.name}"}, figures


def default_reports_dir(bundle_dir: Path) -> Path:
    """``<bundle>.reports`` beside the bundle folder, so the bundle holds only what the device loads."""
    return bundle_dir.parent / f"{bundle_dir.name}.reports"


def sign(bundle_dir: Path, key: Path) -> str:
    """Sign a bundle with ``edge.protocol.signing.sign_bundle``; returns the key id."""
    if importlib.util.find_spec("edge.protocol.signing") is None:
        raise ExportError("--sign-key needs edge.protocol.signing, which this installation lacks; update the edge package")
    from edge.protocol.signing import sign_bundle

    if not Path(key).is_file():
        raise ExportError(f"signing key {key} does not exist; create one with the edge key tool")
    return sign_bundle(bundle_dir, key).key_id


def export_model(
    model_path: Path | str,
    out_dir: Path | str,
    train_source: Path | str,
    val_source: Path | str,
    margin_pp: float = 1.0,
    rep_size: int = 300,
    labels: list[str] | None = None,
    reports_dir: Path | str | None = None,
    model_id: str | None = None,
    sign_key: Path | str | None = None,
    tta: bool = False,
    strict: bool = False,
    seed: int = 0,
    ferplus: Path | str | None = None,
) -> ExportResult:
    """Convert, evaluate, gate, calibrate and package a ``.keras`` model; see the module docstring.

    ``ferplus`` names the FER+ votes of the validation rows (default: ``ferplus.npz`` beside ``val_source``).

    Raises:
        ExportRefused: int8 accuracy is more than ``margin_pp`` points below float (nothing is written).
        ExportError: the model, data or signing key cannot be used.
    """
    import keras

    from edge.bundle import load_bundle
    from train_export.export.bundle_writer import write_bundle
    from train_export.export.litert import classifier_from_bytes
    from train_export.export.quantize import convert_float, convert_int8
    from train_export.model.spec import describe

    model_path, out_dir = Path(model_path), Path(out_dir)
    if margin_pp < 0 or rep_size < 1:
        raise ExportError(f"--margin-pp must be >= 0 and --rep-size >= 1 (got {margin_pp}, {rep_size})")
    reports_dir = Path(reports_dir) if reports_dir else default_reports_dir(out_dir)
    if not model_path.is_file():
        raise ExportError(f"model {model_path} does not exist; pass a run's best.keras")
    labels = keras_labels(model_path, labels)
    hparams = run_hparams(model_path)
    model = keras.saving.load_model(model_path, compile=False)
    if int(model.output_shape[-1]) != len(labels):
        raise ExportError(f"{model_path} has {model.output_shape[-1]} outputs but {len(labels)} labels {labels}")
    size = int(model.input_shape[1])
    kmodel = keras_predictor(model, labels, str(model_path))
    prep = kmodel.prep

    # Steps as a bar on a terminal: the conversions take minutes on a Pi-sized model and print nothing.
    with progress.bar(total=6, desc="export", unit="step") as steps:
        steps.set_postfix_str("loading the data")
        train = load_dataset(train_source, labels=labels, split="train", strict=strict, input_size=size)
        val = load_dataset(val_source, labels=labels, split="val", strict=strict, input_size=size)
        truths = truths_for(val, "val", ferplus)
        rep = representative_faces(train, rep_size, seed)
        steps.update()
        steps.set_postfix_str(f"int8 conversion, {len(rep)} calibration faces")
        log.info("converting %s to int8 with %d representative training faces", model_path, len(rep))
        int8_bytes = convert_int8(model, rep)
        steps.update()
        steps.set_postfix_str("float32 conversion")
        float_bytes = convert_float(model)
        steps.update()
        models = {
            "int8": from_classifier(classifier_from_bytes(int8_bytes, labels, prep, "candidate-int8"),
                                    "model.tflite (int8)"),
            "float": from_classifier(classifier_from_bytes(float_bytes, labels, prep, "candidate-float"),
                                     "model_float.tflite"),
            "keras": kmodel,
        }
        reports = {}
        # The int8 model's probabilities serve its report and its calibration: scored once.
        int8_probs = predict_in_chunks(models["int8"].predict, val.x, "scoring int8")
        for name, m in models.items():
            steps.set_postfix_str(f"evaluating {name} on {len(val)} faces")
            reports[name] = evaluate(m, val.x, truths, tta=tta, probs=int8_probs if name == "int8" else None)
            steps.update()
    int8_acc, float_acc = reports["int8"]["accuracy"], reports["float"]["accuracy"]
    gap_pp = 100.0 * (float_acc - int8_acc)
    if gap_pp > margin_pp:
        raise ExportRefused(
            f"int8 accuracy {100 * int8_acc:.2f}% is {gap_pp:.2f} pp below float {100 * float_acc:.2f}% on "
            f"{val.source} ({reports['int8']['n']} faces, {truths[0].name}), more than the allowed {margin_pp} pp; "
            "nothing written "
            "(retrain, e.g. with ReLU6 or more calibration faces via --rep-size, or raise --margin-pp)",
            reports,
        )

    calibration, calibrated = calibrate(int8_probs[truths[0].rows], truths[0])
    r8 = reports["int8"]
    metrics: dict[str, Any] = {
        "accuracy": r8["accuracy"],
        "macro_f1": r8["macro_f1"],
        "n": r8["n"],
        "per_class": r8["per_class"],
        "float_accuracy": float_acc,
        "float_macro_f1": reports["float"]["macro_f1"],
        "keras_accuracy": reports["keras"]["accuracy"],
        "int8_gap_pp": round(gap_pp, 3),
        "data": val.source,
        "truth": truths[0].name,
        **calibrated,
    }
    if "label_sets" in r8:
        metrics["label_sets"] = {k: {f: v[f] for f in ("accuracy", "macro_f1", "n")}
                                 for k, v in r8["label_sets"].items()}
    if tta:
        metrics["tta_flip_accuracy"] = r8["tta_flip"]["accuracy"]
    best_json = model_path.parent / "best.json"
    training = {
        "hparams": hparams,
        # What the model learned from: with FER+ votes, the vote targets' classes (the device's class prior).
        "train_data": train_description(train, hparams, ferplus, train_source),
        "val_data": val.describe(),
        "representative_faces": len(rep),
        "source_model": str(model_path),
        "best": json.loads(best_json.read_text()) if best_json.is_file() else None,
    }
    architecture = {**describe(model), **{k: hparams[k] for k in ("model", "width", "depth", "se") if k in hparams}}
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    model_id = model_id or f"{hparams.get('model', model.name)}-w{hparams.get('width', 1)}-{stamp}"
    manifest = write_bundle(out_dir, int8_bytes, labels, prep, model_id, metrics=metrics, training=training,
                            architecture=architecture, calibration=calibration)
    load_bundle(out_dir)  # what the device will do: fail here rather than on the Pi
    # The bundle's own files only: the folder may also hold a README, reports or a confusion matrix.
    bundle_bytes = sum((out_dir / n).stat().st_size for n in (MODEL_FILE, MANIFEST_FILE, SIGNATURE_FILE)
                       if (out_dir / n).is_file())
    if bundle_bytes > BUNDLE_SIZE_BUDGET:
        log.warning("bundle %s is %d bytes, above the %d-byte budget of the shipped model", out_dir, bundle_bytes,
                    BUNDLE_SIZE_BUDGET)

    reports_dir.mkdir(parents=True, exist_ok=True)
    (reports_dir / "model_float.tflite").write_bytes(float_bytes)
    report = {**{k: r8[k] for k in ("accuracy", "macro_f1", "n", "per_class", "confusion", "labels")},
              "model_id": model_id, "bundle": str(out_dir), "bundle_bytes": bundle_bytes,
              "model_bytes": (out_dir / MODEL_FILE).stat().st_size, "float_model_bytes": len(float_bytes),
              "int8_gap_pp": round(gap_pp, 3), "margin_pp": margin_pp, "data": val.describe(), "models": reports,
              "truth": truths[0].name, "calibration": {**calibration, **calibrated}}
    write_report(report, reports_dir / "evaluation.json")
    plot_confusion(r8["confusion"], labels, reports_dir / "confusion.png",
                   title=f"{model_id} int8 on {Path(val.source).name}: acc {100 * int8_acc:.1f}%")
    log.info("wrote bundle %s (%d bytes) and reports in %s", out_dir, bundle_bytes, reports_dir)
    if sign_key:
        log.info("bundle signed with key %s", sign(out_dir, Path(sign_key)))
    return ExportResult(out_dir, reports_dir, manifest, report)
