"""Dataset loaders on small CSV and folder fixtures made here, malformed rows and strict mode included."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from edge.bundle import FER_LABELS
from edge.preprocess import resize_face
from train_export.data.load import DataError, canonical_label, load_dataset

SIX = [name for name in FER_LABELS if name != "disgust"]


def _pixels(face: np.ndarray) -> str:
    return " ".join(str(int(v)) for v in face.ravel())


def _face(seed: int, side: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)


@pytest.fixture
def fer_csv(tmp_path):
    """A Kaggle-style CSV: 3 Training rows, 1 PublicTest row, and one malformed row of each kind."""
    rows = [
        ("0", _pixels(_face(0)), "Training"),           # angry
        ("3", _pixels(_face(1)), "Training"),           # happy
        ("1", _pixels(_face(2)), "Training"),           # disgust
        ("6", _pixels(_face(3)), "PublicTest"),         # neutral
        ("4", _pixels(_face(4))[:-4], "Training"),      # wrong pixel count (2303 values)
        ("9", _pixels(_face(5)), "Training"),           # unknown label
        ("2", _pixels(_face(6, side=24)), "Training"),  # smaller face: resized, not malformed
    ]
    path = tmp_path / "fer2013.csv"
    path.write_text("emotion,pixels,Usage\n" + "".join(f"{e},{p},{u}\n" for e, p, u in rows))
    return path


def test_csv_uses_usage_for_splits_and_skips_malformed_rows(fer_csv, caplog):
    with caplog.at_level(logging.WARNING, logger="train_export.data.load"):
        train = load_dataset(fer_csv, split="train")
    assert train.labels == list(FER_LABELS)
    assert train.y.tolist() == [0, 3, 1, 2]
    assert train.x.shape == (4, 48, 48) and train.x.dtype == np.uint8
    np.testing.assert_array_equal(train.x[0], _face(0))
    np.testing.assert_array_equal(train.x[3], resize_face(_face(6, side=24), 48))
    assert train.skipped == {"wrong pixel count": 1, "unknown label": 1}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one line per kind of problem
    assert any("wrong pixel count" in w and "line 6" in w for w in warnings)

    val = load_dataset(fer_csv, split="val")
    assert val.y.tolist() == [FER_LABELS.index("neutral")]
    np.testing.assert_array_equal(val.x[0], _face(3))


def test_csv_strict_names_the_first_bad_row(fer_csv):
    with pytest.raises(DataError, match=r"fer2013.csv line 6: wrong pixel count"):
        load_dataset(fer_csv, split="train", strict=True)


def test_csv_six_class_subset_remaps_ids(fer_csv):
    data = load_dataset(fer_csv, labels=SIX, split="train")
    assert data.labels == SIX
    # angry, happy, fear; the disgust row is left out without being called malformed
    assert data.y.tolist() == [SIX.index("angry"), SIX.index("happy"), SIX.index("fear")]
    assert "unknown label" in data.skipped and data.skipped["unknown label"] == 1


def test_csv_without_usage_column_and_with_names(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text(f"emotion,pixels\nHappiness,{_pixels(_face(7))}\nsurprised,{_pixels(_face(8))}\n")
    data = load_dataset(path, split="val")
    assert data.y.tolist() == [FER_LABELS.index("happy"), FER_LABELS.index("surprise")]


def test_csv_with_wrong_header_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("label,image\n0,1 2 3\n")
    with pytest.raises(DataError, match="expected a header 'emotion,pixels"):
        load_dataset(path)


def _write(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


@pytest.fixture
def face_tree(tmp_path):
    """``<root>/train/<class>/`` with synonyms, mixed case, a colour non-square image and bad files."""
    root = tmp_path / "faces"
    _write(root / "train" / "Anger" / "a.png", _face(10))
    _write(root / "train" / "happiness" / "h.png", _face(11))
    colour = np.random.default_rng(12).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    _write(root / "train" / "Surprised" / "s.jpg", colour)
    _write(root / "train" / "disgusted" / "d.png", _face(13))
    _write(root / "train" / "contempt" / "c.png", _face(14))
    (root / "train" / "sadness").mkdir()
    (root / "train" / "sadness" / "broken.png").write_bytes(b"not a png")
    _write(root / "val" / "NEUTRAL" / "n.png", _face(15))
    return root, colour


def test_folder_layout_with_synonyms_colour_and_bad_files(face_tree):
    root, colour = face_tree
    data = load_dataset(root, split="train")
    names = [data.labels[i] for i in data.y]
    assert names == ["angry", "disgust", "happy", "surprise"]  # class folders in sorted order
    np.testing.assert_array_equal(data.x[0], _face(10))
    gray = cv2.cvtColor(cv2.imread(str(root / "train" / "Surprised" / "s.jpg")), cv2.COLOR_BGR2GRAY)
    expected = cv2.resize(gray[:, 10:70], (48, 48), interpolation=cv2.INTER_AREA)  # centre square of 60x80
    np.testing.assert_array_equal(data.x[3], expected)
    assert data.skipped == {"unknown label": 1, "unreadable image": 1}
    assert load_dataset(root, split="val").y.tolist() == [FER_LABELS.index("neutral")]


def test_folder_strict_and_label_sets(face_tree):
    root, _ = face_tree
    with pytest.raises(DataError, match="unknown label|unreadable image"):
        load_dataset(root, split="train", strict=True)
    with_contempt = load_dataset(root, labels=[*SIX, "contempt"], split="train")
    assert "contempt" in [with_contempt.labels[i] for i in with_contempt.y]
    assert "disgust" not in [with_contempt.labels[i] for i in with_contempt.y]
    assert with_contempt.skipped == {"unreadable image": 1}


def test_folder_without_split_folders_and_missing_split(tmp_path):
    flat = tmp_path / "flat"
    _write(flat / "Sad" / "x.png", _face(20, side=96))
    data = load_dataset(flat, split="val")
    np.testing.assert_array_equal(data.x[0], resize_face(_face(20, side=96), 48))
    only_train = tmp_path / "only_train"
    _write(only_train / "train" / "sad" / "x.png", _face(21))
    with pytest.raises(DataError, match="none for 'test'"):
        load_dataset(only_train, split="test")


def test_npz_and_errors(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.stack([_face(30), _face(31)]), y=np.array([1, 5]))
    assert load_dataset(path, labels=SIX).y.tolist() == [SIX.index("surprise")]
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "missing.npz")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported dataset"):
        load_dataset(tmp_path / "notes.txt")


def test_canonical_label():
    assert canonical_label(" Happiness ") == "happy"
    assert canonical_label("FEARFUL") == "fear"
    assert canonical_label("contempt") == "contempt"


def test_csv_with_a_byte_order_mark_loads(tmp_path):
    """Excel and pandas' utf-8-sig write a BOM before the header."""
    path = tmp_path / "bom.csv"
    path.write_bytes(("\ufeffemotion,pixels,Usage\n" + f"3,{_pixels(_face(9))},Training\n").encode("utf-8"))
    assert load_dataset(path, split="train").y.tolist() == [FER_LABELS.index("happy")]


def test_the_csv_split_is_part_of_the_source_name(fer_csv, tmp_path):
    """train refuses --train == --val faces by comparing these names (see tests/train_export/test_e2e.py)."""
    assert load_dataset(fer_csv, split="train").source.endswith("[training]")
    assert load_dataset(fer_csv, split="val").source.endswith("[publictest]")
    plain = tmp_path / "plain.csv"
    plain.write_text(f"emotion,pixels\n3,{_pixels(_face(7))}\n")
    assert load_dataset(plain, split="train").source == load_dataset(plain, split="val").source


def test_npz_damaged_or_with_non_pixel_values_is_refused(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.stack([_face(40), _face(41)]), y=np.array([0, 3]))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # an interrupted copy
    with pytest.raises(DataError, match="is not an archive"):
        load_dataset(cut)
    scaled = tmp_path / "scaled.npz"
    np.savez(scaled, x=np.stack([_face(40), _face(41)]).astype(np.float32) / 255, y=np.array([0, 3]))
    with pytest.raises(DataError, match="uint8 pixels 0-255.*scale"):
        load_dataset(scaled)
    wide = tmp_path / "wide.npz"
    np.savez(wide, x=np.stack([_face(40), _face(41)]).astype(np.int16), y=np.array([0, 3]))
    np.testing.assert_array_equal(load_dataset(wide).x[1], _face(41))
