"""Evaluate emotion models on labelled faces: accuracy, macro-F1, per-class scores, confusion matrices, calibration.

One set of faces can carry several label sets (:class:`Truth`): FER2013's single tagger and the FER+ crowd's
majority (:func:`train_export.data.ferplus.truths_for`). The model scores each face once; the first truth gives
the report's top-level figures, the others a ``label_sets`` block each.

The same report is produced for a Keras model (``.keras``), a bare ``.tflite`` file and a model bundle; the
TFLite ones run in the device's classifier (:class:`edge.runtime.classify.classifier.Classifier`, LiteRT). Optional
horizontal-flip test-time augmentation (TTA) averages the probabilities of each face and its mirror image.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.bundle import FER_LABELS, MANIFEST_FILE
from edge.preprocess import Preprocessing, normalize
from train_export import progress
from train_export.analysis.calibration import ECE_BINS, expected_calibration_error

log = logging.getLogger(__name__)

Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass
class LoadedModel:
    """A model ready to score uint8 faces.

    Attributes:
        predict: Maps N x S x S uint8 faces to N x classes probabilities.
        labels: Class names in output order.
        prep: The preprocessing the model expects.
        kind: "keras", "float32 tflite" or "int8 tflite".
        path: Where it was loaded from.
        runtime: Which runtime ran it ("keras/<backend>", "ai_edge_litert", ...).
    """

    predict: Predictor
    labels: list[str]
    prep: Preprocessing
    kind: str
    path: str
    runtime: str


@dataclass(frozen=True)
class Truth:
    """One label set for (some of) the faces of an evaluation.

    Attributes:
        name: What the labels are ("fer2013", "ferplus_majority", ...), as reports name them.
        rows: Indices of the faces this label set labels.
        y: Their labels, in the model's label order.
    """

    name: str
    rows: np.ndarray
    y: np.ndarray

    @classmethod
    def every(cls, y: np.ndarray, name: str = "labels") -> Truth:
        """A label for every face."""
        return cls(name, np.arange(len(y)), np.asarray(y))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts with true classes as rows and predicted classes as columns."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def scores(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix, JSON-ready.

    A class that is never predicted has precision 0 (and never present: recall 0), as in scikit-learn's
    ``zero_division=0``; macro-F1 averages over all classes of the label set.
    """
    cm = confusion_matrix(y_true, y_pred, len(labels))
    tp = np.diag(cm).astype(np.float64)
    pred_n, true_n = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, pred_n, out=np.zeros_like(tp), where=pred_n > 0)
    recall = np.divide(tp, true_n, out=np.zeros_like(tp), where=true_n > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    n = int(cm.sum())
    return {
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(f1.mean()),
        "n": n,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(true_n[i])}
            for i, name in enumerate(labels)
        },
        "confusion": cm.tolist(),
    }


def predict_with_tta(predict: Predictor, faces: np.ndarray, flip: bool) -> np.ndarray:
    """Probabilities of ``faces``; with ``flip``, the mean over each face and its horizontal mirror."""
    probs = predict(faces)
    if flip:
        probs = (probs + predict(np.ascontiguousarray(faces[:, :, ::-1]))) / 2.0
    return probs


def run_hparams(model_path: Path | str) -> dict[str, Any]:
    """The ``hparams.json`` of the run folder a ``.keras`` model sits in, or {} when there is none."""
    hp_path = Path(model_path).parent / "hparams.json"
    return json.loads(hp_path.read_text(encoding="utf-8")) if hp_path.is_file() else {}


def keras_labels(model_path: Path | str, labels: list[str] | None) -> list[str]:
    """Labels of a Keras model: its run's ``hparams.json`` when there is one, else ``labels`` or the FER 7."""
    run_labels = run_hparams(model_path).get("labels")
    if run_labels:
        if labels and list(labels) != list(run_labels):
            raise ValueError(f"--labels {labels} differ from the run's labels {run_labels} (hparams.json)")
        return list(run_labels)
    return list(labels or FER_LABELS)


def load_keras(model_path: Path | str, labels: list[str] | None = None, batch_size: int = 256) -> LoadedModel:
    """Load a ``.keras`` model (e.g. a run's ``best.keras``) as a :class:`LoadedModel`."""
    import keras

    model_path = Path(model_path)
    labels = keras_labels(model_path, labels)
    model = keras.saving.load_model(model_path, compile=False)
    if int(model.output_shape[-1]) != len(labels):
        raise ValueError(f"{model_path} has {model.output_shape[-1]} outputs but {len(labels)} labels {labels}")
    return keras_predictor(model, labels, str(model_path), batch_size)


def keras_predictor(model: Any, labels: list[str], path: str, batch_size: int = 256) -> LoadedModel:
    """Wrap an in-memory Keras model (input size read from the model) as a :class:`LoadedModel`."""
    import keras

    prep = Preprocessing(input_size=int(model.input_shape[1]))

    def predict(faces: np.ndarray) -> np.ndarray:
        x = normalize(faces, prep)[..., None]
        return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float32)

    return LoadedModel(predict, list(labels), prep, "keras", path, f"keras/{keras.backend.backend()}")


def from_classifier(clf: Any, path: str) -> LoadedModel:
    """Wrap an :class:`edge.runtime.classify.classifier.Classifier` (the device's path) as a :class:`LoadedModel`."""
    return LoadedModel(clf.classify_faces, clf.labels, clf.prep, f"{clf.manifest.input.dtype} tflite", path,
                       clf.runtime)


def load_any(path: Path | str, labels: list[str] | None = None, num_threads: int = 1) -> LoadedModel:
    """Load a bundle folder, a bare ``.tflite`` file (``labels`` name its outputs) or a ``.keras`` model."""
    from train_export.export.litert import classifier_from_file, load_classifier

    path = Path(path)
    if path.is_dir():
        if not (path / MANIFEST_FILE).is_file():
            raise ValueError(f"{path} is a folder without {MANIFEST_FILE}; give a bundle folder, a .tflite or a .keras file")
        clf = load_classifier(path, threads=num_threads)
        if labels and list(labels) != clf.labels:
            raise ValueError(f"--labels {labels} differ from the bundle's labels {clf.labels}")
        return from_classifier(clf, str(path))
    if not path.is_file():
        raise FileNotFoundError(f"model {path} does not exist")
    if path.suffix == ".tflite":
        return from_classifier(classifier_from_file(path, list(labels or FER_LABELS), threads=num_threads), str(path))
    if path.suffix in (".keras", ".h5"):
        return load_keras(path, labels)
    raise ValueError(f"{path}: unknown model type; give a bundle folder, a .tflite or a .keras file")


def predict_in_chunks(predict: Predictor, faces: np.ndarray, desc: str, chunk: int = 512) -> np.ndarray:
    """``predict(faces)`` a chunk at a time, with a progress bar (on a terminal) of the faces scored."""
    if len(faces) <= chunk:
        return predict(faces)
    out = []
    with progress.bar(total=len(faces), desc=desc, unit="face", leave=False) as bar:
        for start in range(0, len(faces), chunk):
            out.append(predict(faces[start:start + chunk]))
            bar.update(len(out[-1]))
    return np.concatenate(out)


def evaluate(model: LoadedModel, faces: np.ndarray, y: np.ndarray | Sequence[Truth], tta: bool = False,
             probs: np.ndarray | None = None) -> dict[str, Any]:
    """Report of one model on ``faces`` (N x S x S uint8), scored once (not at all when ``probs``, the model's
    probabilities of ``faces``, are given).

    ``y`` is a label per face (``model.labels`` order), or a list of :class:`Truth`: the first gives the top-level
    figures, each one a ``label_sets[name]`` block. Every block has the expected calibration error (``ece``,
    15 equal-width bins of top-1 confidence) beside accuracy and macro-F1.
    """
    truths = [Truth.every(y)] if isinstance(y, np.ndarray) else list(y)
    name = Path(model.path).name
    if probs is None:
        probs = predict_in_chunks(model.predict, faces, f"scoring {name}")
    flipped = None
    if tta:
        # The mean over each face and its mirror, as predict_with_tta computes it, reusing the plain pass.
        mirrored = predict_in_chunks(model.predict, np.ascontiguousarray(faces[:, :, ::-1]), f"scoring {name} mirrored")
        flipped = (probs + mirrored) / 2.0
    blocks = {t.name: score_probs(probs[t.rows], t.y, model.labels, None if flipped is None else flipped[t.rows])
              for t in truths}
    report = {"model": model.path, "kind": model.kind, "runtime": model.runtime, "labels": model.labels,
              "truth": truths[0].name, **blocks[truths[0].name]}
    if len(truths) > 1:
        report["label_sets"] = {k: {f: v[f] for f in ("accuracy", "macro_f1", "ece", "n", "per_class")}
                                for k, v in blocks.items()}
    log.info("%s (%s): accuracy %.4f, macro-F1 %.4f, ECE %.4f on %d faces (%s)", model.path, model.kind,
             report["accuracy"], report["macro_f1"], report["ece"], report["n"], truths[0].name)
    return report


def score_probs(probs: np.ndarray, y: np.ndarray, labels: list[str], flipped: np.ndarray | None = None
                ) -> dict[str, Any]:
    """:func:`scores` of ``probs``' top-1 against ``y``, with the ECE and, given ``flipped``, the flip-TTA block."""
    report = {**scores(y, probs.argmax(axis=1), labels), "ece": expected_calibration_error(probs, y),
              "ece_bins": ECE_BINS}
    if flipped is not None:
        t = scores(y, flipped.argmax(axis=1), labels)
        report["tta_flip"] = {"accuracy": t["accuracy"], "macro_f1": t["macro_f1"],
                              "gain_pp": round(100 * (t["accuracy"] - report["accuracy"]), 3)}
    return report


def plot_confusion(cm: np.ndarray | list, labels: list[str], png_path: Path | str, title: str = "") -> None:
    """Save the confusion matrix as counts and as row-normalised rates (recall on the diagonal), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    rates = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(labels)
    fig, axes = plt.subplots(1, 2, figsize=(5 + 1.3 * n, 0.9 * n + 1.8))
    for ax, mat, fmt, name in ((axes[0], cm, "{:.0f}", "counts"), (axes[1], rates, "{:.2f}", "row-normalised")):
        ax.imshow(mat / max(mat.max(), 1e-9), cmap="Blues", vmin=0, vmax=1)
        for i in range(n):
            for j in range(n):
                dark = mat[i, j] / max(mat.max(), 1e-9) > 0.6
                ax.text(j, i, fmt.format(mat[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
        ax.set_xticks(range(n), labels, rotation=45, ha="right")
        ax.set_yticks(range(n), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def markdown_table(reports: list[dict[str, Any]]) -> str:
    """Side-by-side summary of several reports as a markdown table."""
    lines = ["| model | kind | runtime | labels | n | accuracy | macro-F1 | ECE | flip-TTA accuracy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        tta = r.get("tta_flip", {}).get("accuracy")
        sets = r.get("label_sets") or {r.get("truth", "labels"): r}
        for i, (name, b) in enumerate(sets.items()):
            head = f"| {r['model']} | {r['kind']} | {r['runtime']} |" if i == 0 else "| | | |"
            lines.append(
                f"{head} {name} | {b['n']} | {b['accuracy']:.4f} | {b['macro_f1']:.4f} | {b.get('ece', float('nan')):.4f} | "
                + (f"{tta:.4f} |" if tta is not None and i == 0 else "- |")
            )
    return "\n".join(lines)


def write_report(report: dict[str, Any], json_path: Path | str) -> None:
    """Write a report as indented JSON (parent folders created)."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
