"""OpenCV Haar cascade (frontal face), the last fallback detector."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.config import DetectorConfig
from edge.imaging import require_opencv
from edge.runtime.detect.base import BOX_ADJUST, Detection, DetectorError, finish_detections

HAAR_FILE = "haarcascade_frontalface_default.xml"
#: The ``[detector]`` defaults: the constructor's keyword defaults are these, so no setting has two defaults.
_DEFAULT = DetectorConfig()


class HaarDetector:
    """OpenCV Haar cascade (frontal face), the fallback when MediaPipe is not installed.

    Args:
        min_face_size: Minimum box side in main-image pixels (also passed to the cascade as minSize).
        max_faces: Keep at most this many faces, largest first.
        max_side: Detection runs on a copy downscaled so its longer side is at most this (Haar is slow).
    """

    name = "opencv"

    def __init__(
        self, min_face_size: int = _DEFAULT.min_face_size, max_faces: int = _DEFAULT.max_faces, max_side: int = 320
    ) -> None:
        cv2 = require_opencv("the Haar cascade face detector", DetectorError)

        if not hasattr(cv2, "CascadeClassifier"):
            raise DetectorError(
                f"OpenCV {cv2.__version__} has no CascadeClassifier (OpenCV 5 dropped it); install "
                "'opencv-python-headless<5' or use detector.backend = 'mediapipe'"
            )
        folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
        candidates = [Path(folder) / HAAR_FILE] if folder else []
        candidates.append(Path("/usr/share/opencv4/haarcascades") / HAAR_FILE)  # Debian's opencv-data
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise DetectorError(
                f"no {HAAR_FILE} found (looked in {', '.join(map(str, candidates))}); "
                "install opencv-python-headless<5 or apt-get install opencv-data"
            )
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise DetectorError(f"OpenCV could not read the Haar cascade {path}")
        self.min_face_size = min_face_size
        self.max_faces = max_faces
        self.max_side = max_side
        self.adjust = BOX_ADJUST["opencv"]

    def detect(self, image: np.ndarray, scale: tuple[float, float] = (1.0, 1.0)) -> list[Detection]:
        """Faces in ``image`` (gray or BGR); ``scale`` maps its pixels to main-image pixels."""
        import cv2

        from edge.preprocess import to_gray

        gray = to_gray(image)
        h, w = gray.shape
        f = min(1.0, self.max_side / max(h, w))
        small = cv2.resize(gray, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA) if f < 1 else gray
        min_side = max(8, int(self.min_face_size * f / max(scale)))
        found = self._cascade.detectMultiScale(small, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
        raw = [((x / f, y / f, bw / f, bh / f), 1.0) for (x, y, bw, bh) in (found if len(found) else [])]
        return finish_detections(raw, self.adjust, self.min_face_size, self.max_faces, scale)

    def close(self) -> None:
        """Nothing to release."""
