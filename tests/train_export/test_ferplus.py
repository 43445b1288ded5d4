"""FER+ crowd votes: training targets, the majority truth, evaluation with both label sets, and the data wiring.

Votes are made up here (ten per face, in FER+'s column order); the checks on the real ``ferplus.npz`` run only
where it is beside the checkout.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge.bundle import FER_LABELS
from tests.support.paths import SHARED_DATA as SHARED
from train_export.data.ferplus import (
    FERPLUS_COLUMNS,
    load_votes,
    majority_labels,
    truths_for,
    vote_targets,
    with_majority_labels,
    with_vote_targets,
)
from train_export.data.load import DataError, load_dataset

LABELS = list(FER_LABELS)


def votes_row(**counts: int) -> list[int]:
    """One row of ten votes from column names (FER+'s order)."""
    row = [0] * len(FERPLUS_COLUMNS)
    for name, n in counts.items():
        row[FERPLUS_COLUMNS.index(name)] = n
    return row


VOTES = np.array([
    votes_row(neutral=6, sad=4),                  # neutral, a clear plurality
    votes_row(happy=9, contempt=1),               # contempt's vote is dropped from the target
    votes_row(angry=5, disgust=5),                # a tie: no majority truth
    votes_row(contempt=6, neutral=4),             # contempt's plurality: no truth, a neutral target
    votes_row(unknown=7, not_a_face=3),           # no vote for a label: no target, no truth
    votes_row(),                                  # a face FER+ dropped
    votes_row(fear=4, surprise=3, unknown=3),     # fear
], dtype=np.uint8)


def test_targets_are_the_shares_of_the_votes_for_the_labels():
    targets, usable = vote_targets(VOTES.astype(np.int64), LABELS)
    assert usable.tolist() == [True, True, True, True, False, False, True]
    np.testing.assert_allclose(targets[usable].sum(axis=1), 1.0, atol=1e-6)
    assert targets[0, LABELS.index("neutral")] == pytest.approx(0.6)
    assert targets[0, LABELS.index("sad")] == pytest.approx(0.4)
    assert targets[1, LABELS.index("happy")] == pytest.approx(1.0)  # renormalised without contempt
    assert targets[6, LABELS.index("fear")] == pytest.approx(4 / 7)
    assert not targets[~usable].any()


def test_the_majority_is_a_unique_plurality_among_the_labels():
    y, mask = majority_labels(VOTES.astype(np.int64), LABELS)
    assert mask.tolist() == [True, True, False, False, False, False, True]
    assert [LABELS[i] for i in y[mask]] == ["neutral", "happy", "fear"]
    assert (y[~mask] == -1).all()


def test_a_label_without_votes_is_refused_by_name():
    with pytest.raises(DataError, match="bored"):
        vote_targets(VOTES.astype(np.int64), ["happy", "bored"])


@pytest.fixture()
def archive(tmp_path):
    """A val.npz of seven faces with their FER2013 labels, and ferplus.npz beside it."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (len(VOTES), 48, 48), dtype=np.uint8)
    y = np.array([4, 3, 0, 6, 2, 6, 2])  # FER2013 ids: sad, happy, angry, neutral, fear, neutral, fear
    np.savez(tmp_path / "val.npz", x=x, y=y)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "ferplus.npz", train_votes=VOTES, val_votes=VOTES)
    return tmp_path


def test_training_faces_get_vote_targets_and_lose_the_unusable_rows(archive):
    data = with_vote_targets(load_dataset(archive / "train.npz"), archive / "ferplus.npz", "train")
    assert len(data) == 5 and data.targets is not None and data.targets.shape == (5, 7)
    assert [LABELS[i] for i in data.y] == ["neutral", "happy", "angry", "neutral", "fear"]  # arg-max of the targets
    assert data.skipped["no FER+ vote for the labels"] == 2


def test_validation_faces_get_the_majority(archive):
    data = with_majority_labels(load_dataset(archive / "val.npz", split="val"), archive / "ferplus.npz", "val")
    assert [LABELS[i] for i in data.y] == ["neutral", "happy", "fear"] and data.targets is None
    assert len(data.x) == 3


def test_votes_for_other_rows_are_refused(archive, tmp_path):
    np.savez(tmp_path / "short.npz", train_votes=VOTES[:3], val_votes=VOTES[:3])
    with pytest.raises(DataError, match="votes for 3 faces"):
        with_vote_targets(load_dataset(archive / "train.npz"), tmp_path / "short.npz", "train")


@pytest.mark.parametrize("content", [b"not an archive", None])
def test_a_missing_or_broken_votes_file_is_one_clear_error(tmp_path, content):
    path = tmp_path / "ferplus.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match="ferplus.npz"):
        load_votes(path, "val")
    with pytest.raises(DataError, match="splits"):
        load_votes(path, "test")


def test_evaluation_truths_are_the_majority_then_the_archive_labels(archive):
    data = load_dataset(archive / "val.npz", split="val")
    truths = truths_for(data, "val")
    assert [t.name for t in truths] == ["ferplus_majority", "fer2013"]
    assert truths[0].rows.tolist() == [0, 1, 6] and len(truths[1].rows) == 7
    # A label subset drops rows, so the votes no longer fit: the archive's labels alone, no error.
    subset = load_dataset(archive / "val.npz", labels=["happy", "sad", "neutral"], split="val")
    assert [t.name for t in truths_for(subset, "val")] == ["fer2013"]
    # The archive's name says which rows the votes are for, whatever split the command was given.
    train = load_dataset(archive / "train.npz")
    assert [t.name for t in truths_for(train, "val")] == ["ferplus_majority", "fer2013"]
    # Votes named explicitly that do not fit are an error, not a silent fallback.
    np.savez(archive / "short.npz", train_votes=VOTES[:3], val_votes=VOTES[:3])
    with pytest.raises(DataError, match="votes for 3 faces"):
        truths_for(data, "val", archive / "short.npz")
    (archive / "ferplus.npz").unlink()
    assert [t.name for t in truths_for(data, "val")] == ["labels"]


def test_training_batches_learn_the_targets_and_validation_the_labels(archive):
    from edge.preprocess import Preprocessing
    from train_export.data.batches import FaceSequence
    from train_export.hparams import HParams

    hp = HParams(batch_size=8, mix_prob=0.0, class_weight="none")
    data = with_vote_targets(load_dataset(archive / "train.npz"), archive / "ferplus.npz", "train")
    _, y, _ = FaceSequence(data, hp, Preprocessing(), training=True)[0]
    order = FaceSequence(data, hp, Preprocessing(), training=True).order
    np.testing.assert_allclose(y, data.targets[order[: len(y)]])
    _, yv, _ = FaceSequence(data, hp, Preprocessing(), training=False)[0]
    np.testing.assert_array_equal(yv, np.eye(7)[data.y])


@pytest.mark.skipif(not (SHARED / "ferplus.npz").is_file(), reason="ferplus.npz is not beside the checkout")
def test_the_real_votes_fit_the_archives_and_give_the_documented_counts():
    for split, n in (("train", 28709), ("val", 3589)):
        votes = load_votes(SHARED / "ferplus.npz", split)
        assert votes.shape == (n, 10)
        assert votes.min() >= 0 and votes.sum(axis=1).max() <= 10  # ten taggers (a few rows have nine votes)
    _, mask = majority_labels(load_votes(SHARED / "ferplus.npz", "val"), LABELS)
    assert int(mask.sum()) == 3370  # the val faces the FER+ accuracy is measured on (model card)
