"""FER+ crowd labels: ten taggers' votes per FER2013 face, as training targets and as the evaluation truth.

FER+ (Barsoum et al. 2016, labels MIT-licensed by Microsoft) had every FER2013 face re-tagged by ten people.
``ferplus.npz`` holds ``train_votes`` and ``val_votes``, one row of ten vote counts per row of ``train.npz`` and
``val.npz``, in FER+'s own column order (:data:`FERPLUS_COLUMNS`, not the order of FER2013's ``y``).

How the votes become labels (measured on ``val``, 2026-12-07; ``EXPERIMENTS.md``):

* **Targets** (:func:`vote_targets`): the share of each of the model's labels among the votes for them. Votes for
  ``contempt``, ``unknown`` and ``NF`` (not a face) are dropped and the rest renormalised: contempt is the
  plurality of 26 of 3,589 val faces (0.7 %), too few to learn an eighth class from, and unknown / not-a-face are
  a statement about the image, not an expression. A face with no vote for any of the model's labels (the 149 train
  and 10 val rows FER+ dropped, and faces all of whose votes were unknown/NF/contempt) is left out of training.
* **Truth** (:func:`majority_labels`): the plurality of the ten votes where it is unique and one of the model's
  labels. Ties and faces whose plurality is contempt, unknown or not-a-face have no single answer that people agree
  on, so they are left out of the accuracy (3,370 of 3,589 val faces remain).
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from train_export.data.load import DataError, FaceData, canonical_label

log = logging.getLogger(__name__)

#: FER+'s vote columns, in its own order, with the canonical label names this project uses.
FERPLUS_COLUMNS = ("neutral", "happy", "surprise", "sad", "angry", "disgust", "fear", "contempt", "unknown", "not_a_face")
#: The file beside the FER2013 archives, and the array of each split.
FERPLUS_FILE = "ferplus.npz"
SPLIT_ARRAYS = {"train": "train_votes", "val": "val_votes"}


def load_votes(path: Path | str, split: str) -> np.ndarray:
    """The ``split``'s vote counts (N x 10 int64, FER+ column order) from ``ferplus.npz``.

    Raises:
        DataError: the file is missing or unreadable, or has no such split.
    """
    path = Path(path)
    if split not in SPLIT_ARRAYS:
        raise DataError(f"FER+ votes exist for the splits {sorted(SPLIT_ARRAYS)}, not {split!r}")
    try:
        with np.load(path) as npz:
            votes = npz[SPLIT_ARRAYS[split]]
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; FER+ votes are read from {FERPLUS_FILE} beside train.npz") from None
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path} is not a FER+ votes archive with {SPLIT_ARRAYS[split]!r} ({exc})") from None
    if votes.ndim != 2 or votes.shape[1] != len(FERPLUS_COLUMNS) or votes.dtype.kind not in "iu":
        raise DataError(f"{path}: {SPLIT_ARRAYS[split]} must be N x {len(FERPLUS_COLUMNS)} vote counts, "
                        f"got {votes.dtype} {votes.shape}")
    return votes.astype(np.int64)


def _columns(labels: list[str]) -> list[int]:
    """FER+ column of each label, in the model's order."""
    cols = []
    for name in labels:
        canon = canonical_label(name)
        if canon not in FERPLUS_COLUMNS[:7]:
            raise DataError(f"label {name!r} has no FER+ votes; FER+ votes for {list(FERPLUS_COLUMNS[:7])}")
        cols.append(FERPLUS_COLUMNS.index(canon))
    return cols


def vote_targets(votes: np.ndarray, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(targets N x C float32 summing to 1, usable mask): each label's share of the votes for the model's labels.

    Rows with no vote for any of ``labels`` get a zero row and ``False`` in the mask.
    """
    kept = votes[:, _columns(labels)].astype(np.float64)
    total = kept.sum(axis=1, keepdims=True)
    usable = total[:, 0] > 0
    targets = np.divide(kept, total, out=np.zeros_like(kept), where=total > 0)
    return targets.astype(np.float32), usable


def majority_labels(votes: np.ndarray, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(label ids N, mask): the unique plurality of all ten votes where it is one of ``labels``.

    ``mask`` is False for dropped faces, ties, and pluralities of a column outside ``labels`` (contempt,
    unknown, not-a-face in the product's label set); their label id is -1.
    """
    top = votes.max(axis=1)
    winners = (votes == top[:, None]).sum(axis=1)
    plural = votes.argmax(axis=1)
    lookup = np.full(len(FERPLUS_COLUMNS), -1, dtype=np.int64)
    for i, col in enumerate(_columns(labels)):
        lookup[col] = i
    y = np.where((top > 0) & (winners == 1), lookup[plural], -1)
    return y, y >= 0


def _check_rows(data: FaceData, votes: np.ndarray, path: Path | str) -> None:
    if len(votes) != len(data):
        raise DataError(f"{path} has votes for {len(votes)} faces but {data.source} gave {len(data)}: FER+ votes "
                        "fit the full train.npz/val.npz rows in order (all seven FER2013 labels loaded)")


def with_vote_targets(data: FaceData, path: Path | str, split: str) -> FaceData:
    """Training faces with the FER+ vote shares as targets; faces without usable votes are left out.

    ``y`` becomes the arg-max of the targets (it drives class counts and class weights, not the loss).
    """
    votes = load_votes(path, split)
    _check_rows(data, votes, path)
    targets, usable = vote_targets(votes, data.labels)
    log.info("FER+ vote targets for %d of %d faces of %s (%d without a vote for %s left out)", usable.sum(),
             len(data), data.source, (~usable).sum(), data.labels)
    skipped = {**data.skipped, "no FER+ vote for the labels": int((~usable).sum())}
    return replace(data, x=data.x[usable], y=targets[usable].argmax(axis=1).astype(np.int64),
                   targets=targets[usable], skipped=skipped, source=f"{data.source} + FER+ votes")


def with_majority_labels(data: FaceData, path: Path | str, split: str) -> FaceData:
    """Evaluation faces labelled by the FER+ majority (:func:`majority_labels`); faces without one are left out."""
    votes = load_votes(path, split)
    _check_rows(data, votes, path)
    y, mask = majority_labels(votes, data.labels)
    skipped = {**data.skipped, "no unique FER+ plurality among the labels": int((~mask).sum())}
    return replace(data, x=data.x[mask], y=y[mask], targets=None, skipped=skipped,
                   source=f"{data.source} + FER+ majority")


def ferplus_beside(data_path: Path | str) -> Path | None:
    """``ferplus.npz`` in the folder of a FER2013 ``.npz`` archive, or None when there is none."""
    candidate = Path(data_path).parent / FERPLUS_FILE
    return candidate if Path(data_path).suffix.lower() == ".npz" and candidate.is_file() else None


def truths_for(data: FaceData, split: str, votes_path: Path | str | None = None) -> list:
    """The label sets an evaluation of ``data`` reports: the FER+ majority first, where votes exist, then ``y``.

    Votes are read from ``votes_path`` or from ``ferplus.npz`` beside ``data``'s archive; without them (another
    dataset, a split FER+ does not cover, a label set with classes FER+ has no votes for, or a subset of the
    archive's rows) the only truth is the data's own labels.
    """
    from train_export.analysis.evaluate import Truth

    path = Path(votes_path) if votes_path else ferplus_beside(data.source)
    stem = Path(data.source).stem
    split = stem if stem in SPLIT_ARRAYS else split  # train.npz holds the train rows whatever --split says
    if path is None or split not in SPLIT_ARRAYS:
        return [Truth.every(data.y, "labels")]
    own = Truth.every(data.y, "fer2013")  # FER+ re-tagged FER2013: the archive's own labels are FER2013's
    votes = load_votes(path, split)
    if len(votes) != len(data):
        if votes_path:
            raise DataError(f"{votes_path} has votes for {len(votes)} faces but {data.source} gave {len(data)}: "
                            "FER+ votes fit the full train.npz/val.npz rows in order (all seven labels loaded)")
        log.info("%s: %d faces, %d FER+ vote rows: scoring against the data's own labels only", data.source,
                 len(data), len(votes))
        return [own]
    try:
        y, mask = majority_labels(votes, data.labels)
    except DataError as exc:
        log.info("no FER+ majority for these labels (%s): scoring against the data's own labels only", exc)
        return [own]
    return [Truth("ferplus_majority", np.flatnonzero(mask), y[mask]), own]
