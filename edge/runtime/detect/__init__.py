"""Face detection: MediaPipe BlazeFace (short range, bundled model) by default, OpenCV Haar as the fallback.

Every detector implements :class:`edge.runtime.detect.base.FaceDetector` and returns
:class:`edge.runtime.detect.base.Detection` boxes in FER framing; :func:`make_detector` creates the configured
one. Backend modules are imported only when chosen.
"""

from __future__ import annotations

import logging

from edge.runtime.detect.base import MEDIAPIPE_MODEL, DetectorError, FaceDetector

log = logging.getLogger(__name__)


def make_detector(
    backend: str = "auto", min_confidence: float = 0.5, min_face_size: int = 40, max_faces: int = 5
) -> FaceDetector:
    """Create the configured detector; ``"auto"`` tries MediaPipe, then falls back to OpenCV with a warning."""
    if backend in ("auto", "mediapipe"):
        try:
            from edge.runtime.detect.mediapipe_tasks import MediaPipeDetector

            det = MediaPipeDetector(min_confidence, min_face_size, max_faces)
            log.info("face detector: MediaPipe BlazeFace short range (%s)", MEDIAPIPE_MODEL.name)
            return det
        except DetectorError as exc:
            if backend == "mediapipe":
                raise
            log.warning("MediaPipe detector unavailable (%s); falling back to the OpenCV Haar cascade", exc)
    if backend not in ("auto", "opencv"):
        raise DetectorError(f"unknown detector backend {backend!r}; use 'auto', 'mediapipe' or 'opencv'")
    from edge.runtime.detect.haar import HAAR_FILE, HaarDetector

    det = HaarDetector(min_face_size, max_faces)
    log.info("face detector: OpenCV Haar cascade (%s)", HAAR_FILE)
    return det
