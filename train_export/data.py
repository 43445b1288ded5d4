"""Loading face datasets into uint8 arrays: FER2013 ``.npz`` archives, the Kaggle CSV, and image folders.

Every loader returns a :class:`FaceData` of square uint8 grayscale faces already passed through the shared
preprocessing's resize (:func:`edge.preprocess.prepare_batch`), and integer labels in the order of the
requested label set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.bundle import FER_LABELS
from edge.preprocess import Preprocessing, prepare_batch

log = logging.getLogger(__name__)


class DataError(Exception):
    """A dataset cannot be read; the message says what is wrong and what to do."""


@dataclass
class FaceData:
    """Faces ``x`` (N x S x S uint8) with labels ``y`` (N int64) named by ``labels``."""

    x: np.ndarray
    y: np.ndarray
    labels: list[str]

    def __len__(self) -> int:
        return len(self.y)

    def class_counts(self) -> np.ndarray:
        """Number of faces per label."""
        return np.bincount(self.y, minlength=len(self.labels))


def remap_labels(y: np.ndarray, source: list[str], target: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Map label ids from ``source`` names to ``target`` names; returns (new labels, keep mask).

    Faces whose class is not in ``target`` are dropped (e.g. training a 6-class model without 'disgust').
    """
    lookup = np.full(len(source), -1, dtype=np.int64)
    for i, name in enumerate(source):
        if name in target:
            lookup[i] = target.index(name)
    mapped = lookup[y]
    keep = mapped >= 0
    return mapped[keep], keep


def load_npz(path: Path | str, labels: list[str] | None = None, prep: Preprocessing | None = None) -> FaceData:
    """Read an archive with ``x`` (N x H x W uint8) and ``y`` (N labels in FER order)."""
    path = Path(path)
    labels = list(labels or FER_LABELS)
    try:
        with np.load(path) as npz:
            x, y = npz["x"], npz["y"].astype(np.int64)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"{path} is not an archive with arrays 'x' and 'y' ({exc})") from None
    if x.ndim != 3 or len(x) != len(y):
        raise DataError(f"{path}: expected x of shape N x H x W and y of length N, got {x.shape} and {y.shape}")
    if y.min(initial=0) < 0 or y.max(initial=0) >= len(FER_LABELS):
        raise DataError(f"{path}: labels must be 0..{len(FER_LABELS) - 1} in FER order")
    y, keep = remap_labels(y, list(FER_LABELS), labels)
    x = prepare_batch(x[keep].astype(np.uint8), prep or Preprocessing())
    log.info("loaded %d faces from %s", len(y), path)
    return FaceData(x, y, labels)


def load_dataset(
    source: Path | str,
    labels: list[str] | None = None,
    split: str = "train",
    strict: bool = False,
    input_size: int = 48,
) -> FaceData:
    """Load faces from an ``.npz`` archive, a FER2013 CSV, or a folder-per-class image tree.

    ``split`` picks the CSV's ``Usage`` rows ("train" = Training, "val" = PublicTest, "test" = PrivateTest)
    and, for folders, a ``train/``/``val``/``test`` sub-folder when one exists.
    """
    source = Path(source)
    prep = Preprocessing(input_size=input_size)
    if source.suffix == ".npz":
        return load_npz(source, labels, prep)
    raise DataError(f"{source}: unsupported dataset (expected .npz, .csv or a folder)")
