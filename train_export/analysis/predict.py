"""Batch prediction: classify the faces in an image folder or a video file with a bundle, into a CSV.

Faces are found with the device's detector (:func:`edge.runtime.detect.make_detector`: MediaPipe, else OpenCV Haar),
cropped and classified by the device's :class:`edge.runtime.classify.classifier.Classifier` (shared ``crop_face``, LiteRT). With
``detect=False`` every image is taken as an already-cropped face (e.g. FER2013-style 48x48 crops).
"""

from __future__ import annotations

import contextlib
import csv
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edge.preprocess import to_gray
from train_export import progress
from train_export.data.load import IMAGE_SUFFIXES, center_square_face
from train_export.export.litert import load_classifier

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]
BASE_COLUMNS = ["source", "frame", "face", "x", "y", "w", "h", "label", "confidence"]


def csv_columns(labels: list[str]) -> list[str]:
    """Columns of the predictions CSV: :data:`BASE_COLUMNS` then ``score_<label>`` per class."""
    return BASE_COLUMNS + [f"score_{name}" for name in labels]


class _HaarDetector:
    """OpenCV Haar cascade, for an ``edge`` package that has no ``edge.runtime.detect``; boxes as plain tuples."""

    def __init__(self, min_face_size: int, max_faces: int):
        import cv2

        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise FileNotFoundError(f"no Haar cascade at {path}; install opencv-python-headless<5")
        self.min_face_size, self.max_faces = min_face_size, max_faces

    def find(self, frame: np.ndarray) -> list[Box]:
        found = self.cascade.detectMultiScale(to_gray(frame), 1.1, 5, minSize=(self.min_face_size,) * 2)
        boxes = sorted((tuple(float(v) for v in b) for b in found), key=lambda b: -b[2] * b[3])
        return boxes[: self.max_faces]

    def close(self) -> None:
        """Nothing to release."""


class FaceFinder:
    """Boxes ``(x, y, w, h)`` of faces in a frame from the device's detector (``edge.runtime.detect``).

    Falls back to OpenCV's Haar cascade when ``edge.runtime.detect`` is not installed. Use as a context manager so
    the detector's native resources are released.
    """

    def __init__(self, backend: str = "auto", min_face_size: int = 24, max_faces: int = 10):
        try:
            from edge.runtime.detect import make_detector
        except ImportError:
            log.warning("edge.runtime.detect is not available; using OpenCV's Haar cascade")
            self._haar: _HaarDetector | None = _HaarDetector(min_face_size, max_faces)
            self._det = None
            return
        self._haar = None
        self._det = make_detector(backend=backend, min_face_size=min_face_size, max_faces=max_faces)

    def __call__(self, frame: np.ndarray) -> list[Box]:
        """Face boxes ``(x, y, w, h)`` in pixels of ``frame``."""
        if self._haar is not None:
            return self._haar.find(frame)
        return [d.box for d in self._det.detect(frame)]

    def close(self) -> None:
        """Release the detector."""
        if self._det is not None:
            self._det.close()
            self._det = None

    def __enter__(self) -> FaceFinder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def image_files(folder: Path) -> list[Path]:
    """The images under ``folder`` (recursive, sorted).

    Raises:
        FileNotFoundError: there are none.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    return files


def frame_total(source: Path, every: int = 1) -> int | None:
    """How many images or video frames :func:`iter_frames` will yield, for a progress bar; ``None`` if unknown."""
    if source.is_dir():
        return len(image_files(source))
    import cv2

    cap = cv2.VideoCapture(str(source))
    try:
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    finally:
        cap.release()
    return -(-frames // every) if frames > 0 else None


def iter_frames(source: Path, every: int = 1) -> Iterator[tuple[str, int, np.ndarray]]:
    """Yield ``(source name, frame index, BGR or gray image)`` from an image folder (recursive, sorted) or a video.

    Unreadable images are logged and skipped.
    """
    import cv2

    if source.is_dir():
        for p in image_files(source):
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                log.warning("skipping %s: not a readable image", p)
                continue
            yield str(p.relative_to(source)), 0, img
        return
    if not source.is_file():
        raise FileNotFoundError(f"input {source} does not exist; give an image folder or a video file")
    cap = cv2.VideoCapture(str(source))
    if not cap.isOpened():
        raise ValueError(f"{source} cannot be opened as a video; give an image folder or a video file OpenCV reads")
    try:
        index = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if index % every == 0:
                yield source.name, index, frame
            index += 1
    finally:
        cap.release()
    if index == 0:
        raise ValueError(f"{source} holds no readable video frames")


def predict_to_csv(
    bundle_dir: Path | str,
    source: Path | str,
    out_csv: Path | str,
    detect: bool = True,
    every: int = 1,
    detector: str = "auto",
    num_threads: int = 1,
) -> int:
    """Write one CSV row per face (per image or video frame); returns the number of rows.

    Args:
        bundle_dir: Model bundle folder.
        source: Image folder or video file.
        out_csv: Output CSV path.
        detect: Find faces with the device's detector; False takes each image as one face crop.
        every: For videos, classify every ``every``-th frame.
        detector: Detector backend for :func:`edge.runtime.detect.make_detector` ("auto", "mediapipe", "opencv").
        num_threads: Interpreter threads.
    """
    clf = load_classifier(bundle_dir, threads=num_threads)
    labels, size = clf.labels, clf.prep.input_size
    source = Path(source)
    if not detect and not source.is_dir():
        raise ValueError("--no-detect needs an image folder of face crops, not a video")
    find = FaceFinder(detector) if detect else None
    rows = frames = faceless = 0
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    total = frame_total(source, every) if source.exists() else None
    with open(out_csv, "w", newline="", encoding="utf-8") as f, find or contextlib.nullcontext(), \
            progress.bar(total=total, desc="predict", unit="image" if source.is_dir() else "frame") as bar:
        writer = csv.writer(f)
        writer.writerow(csv_columns(labels))
        for name, index, img in iter_frames(source, every):
            bar.update()
            frames += 1
            gray = to_gray(img)
            if find is None:
                h, w = gray.shape
                boxes: list[Box] = [(0.0, 0.0, float(w), float(h))]
                probs = clf.classify_faces(center_square_face(gray, size)[None])
            else:
                boxes = find(img)
                if not boxes:
                    faceless += 1
                    continue
                probs = clf.classify(gray, boxes)  # the device's crop_face + classifier
            for k, (box, p) in enumerate(zip(boxes, probs, strict=True)):
                best = int(p.argmax())
                writer.writerow([name, index, k, *(round(float(v), 1) for v in box), labels[best],
                                 f"{p[best]:.4f}", *(f"{v:.4f}" for v in p)])
                rows += 1
    log.info("%d face row(s) from %d image(s)/frame(s) of %s written to %s; %d without a face",
             rows, frames, source, out_csv, faceless)
    return rows
