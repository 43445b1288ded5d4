"""Face detection: BlazeFace short range in LiteRT by default, MediaPipe Tasks as an option, OpenCV Haar last.

Every detector implements :class:`edge.runtime.detect.base.FaceDetector` and returns
:class:`edge.runtime.detect.base.Detection` boxes in FER framing (with the eye, nose and mouth keypoints where
the detector gives them); :func:`make_detector` creates the configured one. Backend modules are imported only
when chosen.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from edge.lazy import lazy_exports
from edge.runtime.detect.base import BLAZEFACE_MODEL, Detection, DetectorError, FaceDetector
from edge.schema import Invalid

log = logging.getLogger(__name__)

#: The configurable backends, most preferred first ("auto" tries blazeface, then opencv).
BACKENDS = ("blazeface", "mediapipe", "opencv")


def _create(backend: str, min_confidence: float, min_face_size: int, max_faces: int, threads: int) -> FaceDetector:
    if backend == "blazeface":
        from edge.runtime.detect.blazeface import BlazeFaceDetector

        return BlazeFaceDetector(min_confidence, min_face_size, max_faces, threads=threads)
    if backend == "mediapipe":
        from edge.runtime.detect.mediapipe_tasks import MediaPipeDetector

        return MediaPipeDetector(min_confidence, min_face_size, max_faces)
    if backend == "opencv":
        from edge.runtime.detect.haar import HaarDetector

        return HaarDetector(min_face_size, max_faces)
    raise DetectorError(f"unknown detector backend {backend!r}; use 'auto', {', '.join(map(repr, BACKENDS))}")


_DESCRIPTION = {
    "blazeface": f"BlazeFace short range in LiteRT ({BLAZEFACE_MODEL.name})",
    "mediapipe": f"MediaPipe Tasks BlazeFace short range ({BLAZEFACE_MODEL.name})",
    "opencv": "OpenCV Haar cascade (frontal face)",
}


def make_detector(section: DetectorConfig | None = None, **overrides: Any) -> FaceDetector:
    """Create the detector of a ``[detector]`` section (default: the defaults), with keyword ``overrides`` of its
    fields (``make_detector(backend="opencv")``); frame skipping (``every_n_frames``) is the caller's
    (:class:`edge.runtime.detect.carry.CarryingDetector`).

    A configured backend that cannot be created is an error (:class:`DetectorError`, saying what to install),
    never a silent downgrade. ``"auto"`` takes BlazeFace in LiteRT (the runtime the classifier needs anyway)
    and, only if that cannot load, the Haar cascade; it logs which one it chose and why.

    Raises:
        DetectorError: the backend is unknown or cannot be created.
    """
    if section is None:
        from edge.config import DetectorConfig

        section = DetectorConfig()
    try:
        d = dataclasses.replace(section, **overrides)
    except Invalid as exc:  # the message names the field and, for the backend, the valid ones
        raise DetectorError(str(exc)) from None
    backend, min_confidence, min_face_size, max_faces, threads = (
        d.backend, d.min_confidence, d.min_face_size, d.max_faces, d.threads)
    if backend != "auto":
        det = _create(backend, min_confidence, min_face_size, max_faces, threads)
        log.info("face detector: %s (detector.backend = %r)", _DESCRIPTION[backend], backend)
        return det
    try:
        det = _create("blazeface", min_confidence, min_face_size, max_faces, threads)
    except DetectorError as exc:
        log.warning("face detector: %s, because BlazeFace cannot load (%s); it is about 5x slower and finds "
                    "fewer faces: install ai-edge-litert to get BlazeFace back", _DESCRIPTION["opencv"], exc)
        return _create("opencv", min_confidence, min_face_size, max_faces, threads)
    log.info("face detector: %s (detector.backend = 'auto': the default)", _DESCRIPTION["blazeface"])
    return det


if TYPE_CHECKING:
    from edge.config import DetectorConfig
    from edge.runtime.detect.blazeface import BlazeFaceDetector
    from edge.runtime.detect.carry import CarryingDetector
    from edge.runtime.detect.haar import HaarDetector
    from edge.runtime.detect.mediapipe_tasks import MediaPipeDetector

#: The public surface: other packages import these from here, not from the modules that define them.
__all__ = [
    "BACKENDS",
    "BLAZEFACE_MODEL",
    "BlazeFaceDetector",
    "CarryingDetector",
    "Detection",
    "DetectorError",
    "FaceDetector",
    "HaarDetector",
    "MediaPipeDetector",
    "make_detector",
]

__getattr__ = lazy_exports(__name__, {
    "BlazeFaceDetector": "blazeface",
    "MediaPipeDetector": "mediapipe_tasks",
    "HaarDetector": "haar",
    "CarryingDetector": "carry",
})
