"""Loading face datasets into uint8 arrays: FER2013 ``.npz`` archives, the Kaggle CSV, and image folders.

Every loader returns a :class:`FaceData` of square uint8 grayscale faces already passed through the shared
preprocessing's resize (:func:`edge.preprocess.prepare_batch`), and integer labels in the order of the
requested label set.

Malformed input (a CSV row with the wrong pixel count, an unknown label, an unreadable image) is skipped and
counted, with one log line per kind of problem; with ``strict=True`` the first one raises :class:`DataError`
naming the row or file. Faces of a known class that is not in the requested label set (``disgust`` for a
6-class model) are left out without being called malformed.
"""

from __future__ import annotations

import csv
import gzip
import logging
import math
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.bundle import FER_LABELS
from edge.preprocess import Preprocessing, prepare_batch, resize_face, to_gray

log = logging.getLogger(__name__)


class DataError(Exception):
    """A dataset cannot be read; the message says what is wrong and what to do."""


@dataclass
class FaceData:
    """Faces ``x`` (N x S x S uint8) with labels ``y`` (N int64) named by ``labels``.

    ``targets`` (N x labels float32, rows summing to 1), where present, are what training learns instead of the
    one-hot ``y``: the FER+ crowd's vote shares (:mod:`train_export.data.ferplus`).
    """

    x: np.ndarray
    y: np.ndarray
    labels: list[str]
    source: str = ""
    skipped: dict[str, int] = field(default_factory=dict)
    targets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)

    def class_counts(self) -> np.ndarray:
        """Number of faces per label."""
        return np.bincount(self.y, minlength=len(self.labels))

    def describe(self) -> dict:
        """JSON-ready summary (source, size, faces per class, what was skipped) for manifests and reports."""
        counts = self.class_counts()
        return {
            "source": self.source,
            "n": int(len(self)),
            "input_size": int(self.x.shape[1]) if self.x.ndim == 3 else None,
            "class_counts": {name: int(c) for name, c in zip(self.labels, counts, strict=True)},
            "skipped": dict(self.skipped),
        }


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
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path} is not an archive with arrays 'x' and 'y' ({exc.__class__.__name__}: {exc})") from None
    if x.ndim != 3 or len(x) != len(y):
        raise DataError(f"{path}: expected x of shape N x H x W and y of length N, got {x.shape} and {y.shape}")
    x = _as_pixels(x, path)
    if y.min(initial=0) < 0 or y.max(initial=0) >= len(FER_LABELS):
        raise DataError(f"{path}: labels must be 0..{len(FER_LABELS) - 1} in FER order")
    y, keep = remap_labels(y, list(FER_LABELS), labels)
    x = prepare_batch(x[keep], prep or Preprocessing())
    log.info("loaded %d faces from %s", len(y), path)
    return FaceData(x, y, labels, source=str(path))


def _as_pixels(x: np.ndarray, path: Path) -> np.ndarray:
    """``x`` as uint8 pixels; whole numbers 0-255 of another dtype are converted, anything else is refused
    (a cast would silently turn faces scaled to [0, 1] into black images)."""
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind in "iuf" and x.size and np.isfinite(x).all() and x.min() >= 0 and x.max() <= 255 \
            and (x.dtype.kind != "f" or np.array_equal(x, np.round(x))):
        return x.astype(np.uint8)
    lo, hi = (float(x.min()), float(x.max())) if x.size and x.dtype.kind in "iuf" else (None, None)
    raise DataError(f"{path}: x must hold uint8 pixels 0-255, got {x.dtype} values in [{lo}, {hi}]; "
                    "scale faces stored as 0-1 floats by 255 and save them as uint8")


#: Folder and CSV class names that mean a FER label (lower case). Names not listed map to themselves, so
#: ``contempt`` is a label only when the requested label set has it.
LABEL_SYNONYMS = {
    "anger": "angry",
    "angry": "angry",
    "mad": "angry",
    "disgusted": "disgust",
    "disgust": "disgust",
    "fearful": "fear",
    "fear": "fear",
    "scared": "fear",
    "afraid": "fear",
    "happiness": "happy",
    "happy": "happy",
    "joy": "happy",
    "sadness": "sad",
    "sad": "sad",
    "surprised": "surprise",
    "surprise": "surprise",
    "neutral": "neutral",
    "calm": "neutral",
}

#: Sub-folder names of each split in a folder dataset, and ``Usage`` values of each split in the Kaggle CSV.
SPLIT_FOLDERS = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation", "publictest"),
    "test": ("test", "testing", "privatetest"),
}
CSV_USAGE = {"train": "training", "val": "publictest", "test": "privatetest"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}


def canonical_label(name: str) -> str:
    """Normalise a class name: lower case, trimmed, synonyms mapped (``Anger`` → ``angry``)."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    return LABEL_SYNONYMS.get(key, key)


class _Problems:
    """Counts skipped inputs per kind of problem; raises on the first one in strict mode."""

    def __init__(self, source: Path, strict: bool, what: str):
        self.source = source
        self.strict = strict
        self.what = what
        self.counts: dict[str, int] = {}
        self.first: dict[str, str] = {}

    def add(self, kind: str, where: str, detail: str) -> None:
        """Record one malformed row/file (``where`` names it, ``detail`` says what is wrong)."""
        if self.strict:
            raise DataError(
                f"{where}: {kind}: {detail}; fix or remove it, or run without --strict to skip such {self.what}s"
            )
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.first.setdefault(kind, f"{where}: {detail}")

    def report(self) -> dict[str, int]:
        """Log one warning line per kind of problem and return the counts."""
        for kind, n in self.counts.items():
            log.warning("skipped %d %s(s) of %s: %s (first: %s)", n, self.what, self.source, kind, self.first[kind])
        return dict(self.counts)


def _label_lookup(labels: list[str]) -> dict[str, int]:
    return {canonical_label(name): i for i, name in enumerate(labels)}


def center_square_face(gray: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop a grayscale image to a square, then resize it with the shared :func:`resize_face`."""
    h, w = gray.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return resize_face(gray[y0 : y0 + side, x0 : x0 + side], size)


def read_face_image(path: Path | str, size: int) -> np.ndarray | None:
    """Read an image file as a ``size`` x ``size`` uint8 grayscale face, or None when it cannot be decoded.

    Colour images go through :func:`edge.preprocess.to_gray` (the device's BGR→gray), non-square ones are
    centre-cropped to a square first, so a face crop saved from the device reads back as the device saw it.
    """
    import cv2

    # IMREAD_COLOR also turns 16-bit and palette images into 8-bit BGR, so to_gray sees what a camera gives.
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        return None
    return center_square_face(to_gray(img), size)


def _finish(xs: list[np.ndarray], ys: list[int], labels: list[str], source: Path | str, size: int,
            problems: _Problems, excluded: dict[str, int]) -> FaceData:
    skipped = problems.report()
    for name, n in excluded.items():
        log.info("left out %d face(s) of class %r of %s: not in the label set %s", n, name, source, labels)
    if not ys:
        raise DataError(f"no usable faces in {source} (skipped: {skipped or 'none'}); check the path, split and labels")
    x = np.stack(xs).astype(np.uint8) if xs else np.zeros((0, size, size), np.uint8)
    data = FaceData(x, np.asarray(ys, dtype=np.int64), list(labels), source=str(source), skipped=skipped)
    log.info("loaded %d faces from %s", len(data), source)
    return data


def load_csv(
    path: Path | str,
    labels: list[str] | None = None,
    split: str | None = "train",
    strict: bool = False,
    prep: Preprocessing | None = None,
) -> FaceData:
    """Read the FER2013 Kaggle CSV (``emotion,pixels[,Usage]``).

    ``emotion`` is a FER class id (0-6, FER order) or a class name; ``pixels`` are space-separated grey
    levels of a square face of any side (resized to the input size). When a ``Usage`` column exists, only the
    rows of ``split`` are read ("train" = Training, "val" = PublicTest, "test" = PrivateTest); ``split=None``
    reads all rows.
    """
    path = Path(path)
    labels = list(labels or FER_LABELS)
    size = (prep or Preprocessing()).input_size
    lookup = _label_lookup(labels)
    problems = _Problems(path, strict, "row")
    excluded: dict[str, int] = {}
    xs: list[np.ndarray] = []
    ys: list[int] = []
    try:
        # opened here (not in the with) so a missing file is one DataError line; gzip for Kaggle's .csv.gz
        # utf-8-sig: a CSV re-saved by Excel or pandas starts with a byte-order mark before "emotion"
        f = (gzip.open(path, "rt", newline="", encoding="utf-8-sig") if path.suffix.lower() == ".gz"  # noqa: SIM115
             else open(path, newline="", encoding="utf-8-sig"))  # noqa: SIM115
    except OSError as exc:
        raise DataError(f"cannot open {path} ({exc.strerror or exc})") from None
    try:
        with f:
            csv.field_size_limit(1 << 24)
            reader = csv.reader(f)
            header = [h.strip().lower() for h in next(reader, [])]
            if "emotion" not in header or "pixels" not in header:
                raise DataError(f"{path}: expected a header 'emotion,pixels[,Usage]', got {','.join(header) or 'nothing'}")
            i_emo, i_pix = header.index("emotion"), header.index("pixels")
            i_use = header.index("usage") if "usage" in header else None
            want_usage = CSV_USAGE.get(split) if split else None
            if split and i_use is not None and want_usage is None:
                raise DataError(f"unknown split {split!r}; use one of {sorted(CSV_USAGE)}")
            if split and i_use is None:
                log.info("%s has no Usage column: all rows are used for split %r", path, split)
            for row_no, row in enumerate(reader, start=2):  # line numbers as an editor shows them
                where = f"{path.name} line {row_no}"
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) <= max(i_emo, i_pix, i_use or 0):
                    problems.add("missing columns", where, f"{len(row)} column(s)")
                    continue
                if want_usage and i_use is not None and row[i_use].strip().lower() != want_usage:
                    continue
                raw = row[i_emo].strip()
                name = FER_LABELS[int(raw)] if raw.isdigit() and int(raw) < len(FER_LABELS) else canonical_label(raw)
                if name not in lookup:
                    if name in FER_LABELS:
                        excluded[name] = excluded.get(name, 0) + 1
                    else:
                        problems.add("unknown label", where, f"emotion {raw!r} is not one of {labels}")
                    continue
                try:
                    pixels = np.array(row[i_pix].split(), dtype=np.int64)
                except ValueError:
                    problems.add("non-numeric pixels", where, "pixels must be space-separated integers 0-255")
                    continue
                side = math.isqrt(len(pixels))
                if side < 8 or side * side != len(pixels):
                    problems.add("wrong pixel count", where, f"{len(pixels)} values, expected a square such as 2304 (48x48)")
                    continue
                if pixels.min() < 0 or pixels.max() > 255:
                    problems.add("pixel out of range", where, "values must be 0-255")
                    continue
                xs.append(resize_face(pixels.astype(np.uint8).reshape(side, side), size))
                ys.append(lookup[name])
    except (UnicodeDecodeError, csv.Error, EOFError, OSError) as exc:
        raise DataError(f"{path} is not a readable CSV text file ({exc.__class__.__name__}: {exc})") from None
    # The split goes into the source name: the manifest records it, and train refuses train == val faces.
    shown = f"{path} [{want_usage}]" if split and i_use is not None else str(path)
    return _finish(xs, ys, labels, shown, size, problems, excluded)


def _split_dir(root: Path, split: str | None) -> Path:
    """The folder of ``split`` under ``root`` (case-insensitive), or ``root`` when it has no split folders."""
    subdirs = {d.name.lower(): d for d in root.iterdir() if d.is_dir()}
    split_names = {name for names in SPLIT_FOLDERS.values() for name in names}
    if not split or not (split_names & set(subdirs)):
        return root
    if split not in SPLIT_FOLDERS:
        raise DataError(f"unknown split {split!r}; use one of {sorted(SPLIT_FOLDERS)}")
    for name in SPLIT_FOLDERS[split]:
        if name in subdirs:
            return subdirs[name]
    raise DataError(
        f"{root} has split folders {sorted(split_names & set(subdirs))} but none for {split!r} "
        f"(expected one of {list(SPLIT_FOLDERS[split])})"
    )


def load_folder(
    root: Path | str,
    labels: list[str] | None = None,
    split: str | None = "train",
    strict: bool = False,
    prep: Preprocessing | None = None,
) -> FaceData:
    """Read a folder-per-class image tree: ``<root>/<split>/<class>/*.png|jpg`` or ``<root>/<class>/*``.

    Class folder names are case-insensitive and may be synonyms (``Anger``, ``happiness``, ``surprised``...).
    Images may be colour and of any size: they become grayscale, are centre-cropped to a square and resized
    to the input size through the shared preprocessing.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    labels = list(labels or FER_LABELS)
    size = (prep or Preprocessing()).input_size
    lookup = _label_lookup(labels)
    base = _split_dir(root, split)
    problems = _Problems(base, strict, "image")
    excluded: dict[str, int] = {}
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for class_dir in sorted((d for d in base.iterdir() if d.is_dir()), key=lambda d: d.name.lower()):
        name = canonical_label(class_dir.name)
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if name not in lookup:
            if name in FER_LABELS:
                excluded[name] = excluded.get(name, 0) + len(files)
            else:
                for p in files:
                    problems.add("unknown label", str(p), f"class folder {class_dir.name!r} is not one of {labels}")
            continue
        for p in files:
            face = read_face_image(p, size)
            if face is None:
                problems.add("unreadable image", str(p), "not a decodable image")
                continue
            xs.append(face)
            ys.append(lookup[name])
    return _finish(xs, ys, labels, base, size, problems, excluded)


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
    if labels is not None:
        unknown_canon = [n for n in labels if canonical_label(n) != n]
        if unknown_canon:
            raise DataError(f"labels {unknown_canon} are not canonical names; use {[canonical_label(n) for n in labels]}")
    if not source.exists():
        raise DataError(f"{source} does not exist")
    if source.is_dir():
        return load_folder(source, labels, split, strict, prep)
    if source.suffix.lower() == ".npz":
        return load_npz(source, labels, prep)
    if source.suffix.lower() in (".csv", ".gz"):
        return load_csv(source, labels, split, strict, prep)
    raise DataError(f"{source}: unsupported dataset (expected .npz, .csv or a folder)")
