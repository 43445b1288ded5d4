"""Face detection: MediaPipe BlazeFace (short range, bundled model) by default, OpenCV Haar as the fallback.

Both detectors return boxes in *FER framing*: each raw detector box is corrected (scaled about its centre and
shifted) so that the shared crop of :func:`edge.preprocess.crop_face` (a square of ``crop_scale`` x the longer
side) frames the face the way FER2013 frames its 48x48 faces. The corrections were measured by
``benchmarks/crop_calibration.py`` on FER2013 validation faces (see :data:`BOX_ADJUST`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edge.bundle import sha256_file

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
MEDIAPIPE_MODEL = ASSETS / "face_detection_short_range.tflite"
#: sha256 of the vendored BlazeFace model (provenance in edge/assets/README.md).
MEDIAPIPE_MODEL_SHA256 = "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"
HAAR_FILE = "haarcascade_frontalface_default.xml"


class DetectorError(Exception):
    """A face detector cannot be created; the message says what to install or change."""


@dataclass(frozen=True)
class BoxAdjust:
    """Turns a raw detector box into a FER-framed box.

    Attributes:
        scale: Multiply the box's width and height by this (about its centre).
        shift: Move the box centre down by this fraction of the raw box height (negative is up).
    """

    scale: float = 1.0
    shift: float = 0.0

    def apply(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """Return the adjusted ``(x, y, w, h)``."""
        x, y, w, h = box
        cx, cy = x + w / 2.0, y + h / 2.0 + self.shift * h
        nw, nh = w * self.scale, h * self.scale
        return (cx - nw / 2.0, cy - nh / 2.0, nw, nh)


#: Per-detector corrections to FER framing, measured by benchmarks/crop_calibration.py on the first 600 FER2013
#: val faces upsampled 4x onto a 640x480 canvas, so that with the shared DEFAULT_CROP_SCALE 1.25 and
#: DEFAULT_CROP_SHIFT 0.0 both detectors crop like FER2013. Measured medians (FER side / box side; centre
#: offset / box height, + is down): MediaPipe 1.280 and -0.075 (its box is a bit tight and sits low);
#: Haar 1.021 and +0.005 (its box already spans about the whole FER frame, so it must shrink).
BOX_ADJUST: dict[str, BoxAdjust] = {
    "mediapipe": BoxAdjust(scale=1.024, shift=-0.075),
    "opencv": BoxAdjust(scale=0.817, shift=0.0),
}


@dataclass(frozen=True)
class Detection:
    """One face.

    Attributes:
        box: FER-framed box (x, y, w, h) in pixels of the frame's main image.
        score: Detector confidence in [0, 1] (1.0 for Haar, which has none).
        raw_box: The detector's own box before the FER framing correction, same coordinates.
    """

    box: tuple[float, float, float, float]
    score: float
    raw_box: tuple[float, float, float, float]


class FaceDetector(Protocol):
    """What the frame loop needs from a detector."""

    name: str

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in a grayscale (HxW) or BGR (HxWx3) uint8 image, in that image's pixel coordinates."""
        ...

    def close(self) -> None:
        """Release native resources."""
        ...


def _finish(
    raw: list[tuple[tuple[float, float, float, float], float]],
    adjust: BoxAdjust,
    min_face_size: int,
    max_faces: int,
    scale: tuple[float, float] = (1.0, 1.0),
) -> list[Detection]:
    """Filter by size, keep the largest ``max_faces``, map to main-image pixels, apply the FER correction."""
    sx, sy = scale
    out = []
    for (x, y, w, h), score in raw:
        rb = (x * sx, y * sy, w * sx, h * sy)
        if max(rb[2], rb[3]) < min_face_size:
            continue
        out.append(Detection(adjust.apply(rb), float(score), rb))
    out.sort(key=lambda d: -(d.raw_box[2] * d.raw_box[3]))
    return out[:max_faces]


def verify_model(path: Path = MEDIAPIPE_MODEL, expected: str = MEDIAPIPE_MODEL_SHA256) -> Path:
    """Check the bundled BlazeFace model's sha256; raise :class:`DetectorError` if missing or altered."""
    if not path.is_file():
        raise DetectorError(f"face detector model {path} is missing; reinstall the package (see edge/assets/README.md)")
    digest = sha256_file(path)
    if digest != expected:
        raise DetectorError(
            f"face detector model {path} has sha256 {digest[:12]}… instead of {expected[:12]}…; "
            "it was altered or corrupted, restore it from edge/assets/README.md"
        )
    return path


def _keep_tensorflow_out_of_mediapipe() -> None:
    """Stop MediaPipe from importing TensorFlow.

    ``mediapipe.tasks.python.core.optional_dependencies`` imports ``tensorflow.tools.docs`` whenever TensorFlow is
    installed, only to mark API docs; on a workstation that costs seconds and hundreds of MB, and edge must never
    import TensorFlow. Pre-seed that module with the no-op MediaPipe itself uses when TensorFlow is absent.
    """
    name = "mediapipe.tasks.python.core.optional_dependencies"
    if name not in sys.modules:
        stub = types.ModuleType(name)
        stub.doc_controls = types.SimpleNamespace(do_not_generate_docs=lambda obj: obj)  # type: ignore[attr-defined]
        sys.modules[name] = stub


@contextlib.contextmanager
def _without_pyplot():
    """Let MediaPipe import without loading matplotlib.

    ``mediapipe.tasks.python.vision`` imports its ``drawing_utils``, which imports ``matplotlib.pyplot`` at
    module level (about 37 MB of RSS) although only its drawing helpers use it, and the daemon never draws with
    them. While MediaPipe is imported, stand-in modules answer for matplotlib; they are removed afterwards, so a
    later real ``import matplotlib`` in the same process is unaffected.
    """
    if "matplotlib" in sys.modules:
        yield
        return
    stubs = {name: types.ModuleType(name) for name in ("matplotlib", "matplotlib.pyplot")}
    stubs["matplotlib"].pyplot = stubs["matplotlib.pyplot"]  # type: ignore[attr-defined]
    sys.modules.update(stubs)
    try:
        yield
    finally:
        for name, stub in stubs.items():
            if sys.modules.get(name) is stub:
                del sys.modules[name]


class MediaPipeDetector:
    """MediaPipe Tasks FaceDetector with the vendored BlazeFace short-range model (best for faces within ~2 m).

    Args:
        min_confidence: Minimum detection score.
        min_face_size: Minimum box side in main-image pixels.
        max_faces: Keep at most this many faces, largest first.
        model_path: Model file (the vendored one by default; verified by sha256 when it is the default).
    """

    name = "mediapipe"

    def __init__(
        self, min_confidence: float = 0.5, min_face_size: int = 40, max_faces: int = 5, model_path: Path | None = None
    ) -> None:
        path = verify_model() if model_path is None else Path(model_path)
        # MediaPipe's C++ core logs to stderr through absl/glog; keep it to errors unless asked otherwise.
        os.environ.setdefault("GLOG_minloglevel", "2")
        _keep_tensorflow_out_of_mediapipe()
        try:
            with _without_pyplot():
                import mediapipe as mp
                from mediapipe.tasks.python import BaseOptions, vision
        except Exception as exc:  # ImportError, or a broken native extension
            raise DetectorError(
                f"mediapipe is not usable ({exc.__class__.__name__}: {exc}); install it with "
                "'pip install --no-deps mediapipe' plus the [mediapipe-deps] extra, or set detector.backend = 'opencv'"
            ) from None
        self._mp = mp
        options = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_path=str(path)),
            min_detection_confidence=min_confidence,
            running_mode=vision.RunningMode.IMAGE,
        )
        try:
            self._det = vision.FaceDetector.create_from_options(options)
        except Exception as exc:
            raise DetectorError(f"mediapipe cannot load {path} ({exc})") from None
        # MediaPipe's own __del__ prints a traceback if the graph is still open at interpreter shutdown (its
        # executor is gone by then, and so it is for plain atexit hooks): close it in the threading shutdown
        # hook, which runs before the executors stop. Callers should still close() explicitly.
        register = getattr(threading, "_register_atexit", atexit.register)
        register(self.close)
        self.min_face_size = min_face_size
        self.max_faces = max_faces
        self.adjust = BOX_ADJUST["mediapipe"]

    def detect(self, image: np.ndarray, scale: tuple[float, float] = (1.0, 1.0)) -> list[Detection]:
        """Faces in ``image`` (gray or BGR); ``scale`` maps its pixels to main-image pixels (lores streams)."""
        import cv2

        # The model takes RGB only (a GRAY8 mp.Image fails inside the graph), so convert here.
        if image.ndim == 2:
            rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        else:
            rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        result = self._det.detect(self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=rgb))
        raw = []
        for d in result.detections:
            b = d.bounding_box
            score = d.categories[0].score if d.categories else 1.0
            raw.append(((float(b.origin_x), float(b.origin_y), float(b.width), float(b.height)), score))
        return _finish(raw, self.adjust, self.min_face_size, self.max_faces, scale)

    def close(self) -> None:
        """Close the MediaPipe graph (explicitly: its __del__ at interpreter exit is noisy)."""
        det, self._det = self._det, None
        if det is not None:
            det.close()


class HaarDetector:
    """OpenCV Haar cascade (frontal face), the fallback when MediaPipe is not installed.

    Args:
        min_face_size: Minimum box side in main-image pixels (also passed to the cascade as minSize).
        max_faces: Keep at most this many faces, largest first.
        max_side: Detection runs on a copy downscaled so its longer side is at most this (Haar is slow).
    """

    name = "opencv"

    def __init__(self, min_face_size: int = 40, max_faces: int = 5, max_side: int = 320) -> None:
        import cv2

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
        return _finish(raw, self.adjust, self.min_face_size, self.max_faces, scale)

    def close(self) -> None:
        """Nothing to release."""


def make_detector(
    backend: str = "auto", min_confidence: float = 0.5, min_face_size: int = 40, max_faces: int = 5
) -> MediaPipeDetector | HaarDetector:
    """Create the configured detector; ``"auto"`` tries MediaPipe, then falls back to OpenCV with a warning."""
    if backend in ("auto", "mediapipe"):
        try:
            det = MediaPipeDetector(min_confidence, min_face_size, max_faces)
            log.info("face detector: MediaPipe BlazeFace short range (%s)", MEDIAPIPE_MODEL.name)
            return det
        except DetectorError as exc:
            if backend == "mediapipe":
                raise
            log.warning("MediaPipe detector unavailable (%s); falling back to the OpenCV Haar cascade", exc)
    if backend not in ("auto", "opencv"):
        raise DetectorError(f"unknown detector backend {backend!r}; use 'auto', 'mediapipe' or 'opencv'")
    det = HaarDetector(min_face_size, max_faces)
    log.info("face detector: OpenCV Haar cascade (%s)", HAAR_FILE)
    return det
