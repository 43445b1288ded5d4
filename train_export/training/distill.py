"""Knowledge distillation by soft labels: an ensemble of trained teachers labels the training faces once.

Running teachers inside every training step would multiply the cost of an epoch on a CPU; instead
:func:`teacher_soft_labels` averages the teachers' (optionally flip-averaged, temperature-softened)
probabilities over the *clean* training faces once, and :func:`save_soft_labels` stores them with a
fingerprint of the labels they belong to. A student trained with ``HParams.soft_labels`` then learns from
``(1 - distill_alpha) * one_hot + distill_alpha * teacher`` (mixed along with the faces by mixup/CutMix, and
label-smoothed by the loss unless ``label_smoothing`` is 0), so
it sees the teachers' "dark knowledge" (which wrong classes are plausible) at no per-step cost. The student's
own augmentation is light enough (a few degrees, a few pixels) that a clean-face label stays a fair target.

The file is refused for a dataset it was not made from (other size, labels or label order), so a student
cannot silently learn from soft labels of other faces.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
import zlib
from pathlib import Path

import numpy as np

from edge.runtime.classify.calibration import temperature_scale
from train_export import progress
from train_export.analysis.evaluate import LoadedModel, predict_with_tta, scores
from train_export.data.load import DataError, FaceData

log = logging.getLogger(__name__)


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Re-normalised ``probs ** (1 / T)``, i.e. ``softmax(log(probs) / T)``: T > 1 flattens, T = 1 keeps (float32)."""
    return temperature_scale(probs, temperature).astype(np.float32)


def teacher_soft_labels(
    teachers: list[tuple[LoadedModel, np.ndarray]], temperature: float = 1.0, flip: bool = True, batch: int = 1024
) -> np.ndarray:
    """Mean of the teachers' softened probabilities → N x classes float32.

    Each teacher comes with the same N faces at its own input size (N x S x S uint8). Faces are scored in
    batches with a progress bar; ``flip`` averages each face with its mirror image first.
    """
    if not teachers:
        raise ValueError("at least one teacher is needed")
    first, faces0 = teachers[0]
    for t, faces in teachers[1:]:
        if t.labels != first.labels:
            raise ValueError(f"teacher {t.path} has labels {t.labels}, not {first.labels} like {first.path}")
        if len(faces) != len(faces0):
            raise ValueError(f"teacher {t.path} got {len(faces)} faces, {first.path} got {len(faces0)}")
    out = np.zeros((len(faces0), len(first.labels)), dtype=np.float64)
    with progress.bar(total=len(teachers) * len(faces0), unit="face", desc="teachers") as bar:
        for t, faces in teachers:
            for start in range(0, len(faces), batch):
                chunk = faces[start : start + batch]
                out[start : start + len(chunk)] += soften(predict_with_tta(t.predict, chunk, flip), temperature)
                bar.update(len(chunk))
    return (out / len(teachers)).astype(np.float32)


def _fingerprint(data: FaceData) -> str:
    # The label names and the sequence of N labels: another dataset, split, order or label set gives another
    # print. The pixels are left out so teachers and student may use different input sizes.
    h = hashlib.sha256()
    h.update(json.dumps(list(data.labels)).encode())
    h.update(np.ascontiguousarray(data.y.astype(np.int64)).tobytes())
    return h.hexdigest()


def save_soft_labels(path: Path | str, soft: np.ndarray, data: FaceData, meta: dict) -> None:
    """Write soft labels for ``data`` (with a fingerprint of its label names and label sequence) and ``meta``."""
    if soft.shape != (len(data), len(data.labels)):
        raise ValueError(f"soft labels of shape {soft.shape} do not fit {len(data)} faces x {len(data.labels)} labels")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, soft=soft.astype(np.float32), labels=np.array(data.labels),
                        fingerprint=np.array(_fingerprint(data)), meta=np.array(json.dumps(meta)))


def load_soft_labels(path: Path | str, data: FaceData) -> np.ndarray:
    """Soft labels from :func:`save_soft_labels`, checked against ``data``'s label names and label sequence."""
    return load_soft_labels_with_meta(path, data)[0]


def load_soft_labels_with_meta(path: Path | str, data: FaceData) -> tuple[np.ndarray, dict]:
    """:func:`load_soft_labels` and the file's metadata (its teachers, temperature, flip...)."""
    soft, labels, fingerprint, meta = _read_soft_labels(path)
    if labels != list(data.labels) or fingerprint != _fingerprint(data):
        raise DataError(f"soft labels {path} were made for other training faces or labels ({labels}); "
                        "make them again for this dataset with 'emotion-train soft-labels'")
    return soft, meta


def soft_labels_labels(path: Path | str) -> list[str]:
    """The label names a soft-labels file was made with (to load its training faces in that order)."""
    return _read_soft_labels(path)[1]


def _read_soft_labels(path: Path | str) -> tuple[np.ndarray, list[str], str, dict]:
    path = Path(path)
    try:
        loaded = np.load(path)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy array, not an archive
            raise ValueError("a bare array, not an .npz archive")
        with loaded as npz:
            meta = json.loads(str(npz["meta"])) if "meta" in npz.files else {}
            return npz["soft"], [str(s) for s in npz["labels"]], str(npz["fingerprint"]), meta
    except FileNotFoundError:
        raise DataError(f"soft labels {path} do not exist; make them with 'emotion-train soft-labels'") from None
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path} is not a soft-labels file from 'emotion-train soft-labels' ({exc})") from None


def check_scored_alike(first: dict, other: dict, other_name: str = "") -> None:
    """Raise DataError unless two soft-label sets' metadata share the softening temperature and the flip averaging.

    ``other_name`` names the second set in the message (default: its teachers).
    """
    for key in ("temperature", "flip"):
        if other.get(key) != first.get(key):
            name = other_name or f"teachers {other.get('teachers')}"
            raise DataError(f"soft labels to merge differ in {key}: {name} was scored at temperature "
                            f"{other.get('temperature')}, flip {other.get('flip')}, teachers {first.get('teachers')} "
                            f"at temperature {first.get('temperature')}, flip {first.get('flip')}; score them alike "
                            "(soft-labels --temperature / --no-flip)")


def merge_soft_labels(parts: list[tuple[np.ndarray, dict]]) -> tuple[np.ndarray, dict]:
    """Average soft-label sets of disjoint teacher groups, each weighted by its number of teachers.

    The result is what one ``soft-labels`` run over all the teachers would have written, so teachers scored on
    different machines (a lent GPU's, this machine's) join one ensemble without being scored again. The parts
    must share the softening temperature and the flip averaging, or their mean would mix two kinds of target.
    """
    if not parts:
        raise ValueError("at least one set of soft labels is needed")
    first = parts[0][1]
    for soft, meta in parts[1:]:
        check_scored_alike(first, meta)
        if soft.shape != parts[0][0].shape:
            raise DataError(f"soft labels to merge have shapes {parts[0][0].shape} and {soft.shape}")
    names = [t for _, meta in parts for t in meta.get("teachers", [])]
    if len(set(names)) < len(names):
        log.warning("soft labels to merge name a teacher more than once (%s): it counts that many times", names)
    weights = [max(1, len(meta.get("teachers", []))) for _, meta in parts]
    total = sum(w * soft.astype(np.float64) for w, (soft, _) in zip(weights, parts, strict=True))
    merged = {"teachers": names,
              "temperature": first.get("temperature"), "flip": first.get("flip")}
    return (total / sum(weights)).astype(np.float32), merged


def ensemble_report(teachers: list[tuple[LoadedModel, np.ndarray]], y: np.ndarray, flip: bool = True) -> dict:
    """Accuracy and macro-F1 of each teacher and of their mean on labelled faces (e.g. validation)."""
    labels = teachers[0][0].labels
    rows, total = {}, np.zeros((len(y), len(labels)))
    for t, faces in teachers:
        p = predict_with_tta(t.predict, faces, flip)
        total += p
        s = scores(y, p.argmax(axis=1), labels)
        rows[t.path] = {"accuracy": s["accuracy"], "macro_f1": s["macro_f1"]}
    s = scores(y, total.argmax(axis=1), labels)
    rows["ensemble"] = {"accuracy": s["accuracy"], "macro_f1": s["macro_f1"]}
    return rows
