"""The GPU job's data carrier (train_export/gpu_job/pack.py): faces, labels and FER+ votes come back identical."""

from pathlib import Path

import numpy as np
import pytest

from train_export.gpu_job import pack as carrier


def _archives(folder: Path, n_train: int = 300, n_val: int = 130) -> Path:
    """FER2013-shaped archives of random faces (not a multiple of the mosaic's row) and their vote counts."""
    rng = np.random.default_rng(5)
    folder.mkdir()
    for split, n in (("train", n_train), ("val", n_val)):
        np.savez(folder / f"{split}.npz", x=rng.integers(0, 256, (n, 48, 48), dtype=np.uint8),
                 y=rng.integers(0, 7, n).astype(np.uint8))
    np.savez(folder / "ferplus.npz", train_votes=rng.integers(0, 4, (n_train, 10)).astype(np.uint8),
             val_votes=rng.integers(0, 4, (n_val, 10)).astype(np.uint8))
    return folder


def test_pack_then_unpack_gives_every_array_back_identical(tmp_path):
    src = _archives(tmp_path / "data")
    carrier.pack(src, tmp_path / "packed")
    carrier.unpack(tmp_path / "packed", tmp_path / "out")
    for name in ("train.npz", "val.npz", "ferplus.npz"):
        with np.load(src / name) as want, np.load(tmp_path / "out" / name) as got:
            assert sorted(got.files) == sorted(want.files)
            for key in want.files:
                assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key]), (name, key)
    carrier.verify(src, tmp_path / "packed")  # the same check, as the preparation runs it: no exit


def test_verify_names_a_vote_that_changed(tmp_path):
    src = _archives(tmp_path / "data")
    carrier.pack(src, tmp_path / "packed")
    with np.load(tmp_path / "packed" / "ferplus.npz") as z:
        votes = {k: z[k].copy() for k in z.files}
    votes["val_votes"][3, 0] += 1
    np.savez(tmp_path / "packed" / "ferplus.npz", **votes)
    with pytest.raises(SystemExit, match="ferplus.npz:val_votes"):
        carrier.verify(src, tmp_path / "packed")


def test_pack_refuses_votes_for_other_rows(tmp_path):
    src = _archives(tmp_path / "data")
    with np.load(src / "ferplus.npz") as z:
        np.savez(src / "ferplus.npz", train_votes=z["train_votes"][:-1], val_votes=z["val_votes"])
    with pytest.raises(SystemExit, match="train_votes"):
        carrier.pack(src, tmp_path / "packed")
    assert not (tmp_path / "packed" / "ferplus.npz").exists()
