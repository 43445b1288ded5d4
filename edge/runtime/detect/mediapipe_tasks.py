"""MediaPipe Tasks FaceDetector with the vendored BlazeFace short-range model (needs the mediapipe package)."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edge.config import DetectorConfig
from edge.imaging import require_opencv
from edge.runtime.detect.base import BOX_ADJUST, Detection, DetectorError, finish_detections, verify_model
from edge.runtime.native import quiet_native_stderr

#: The ``[detector]`` defaults: the constructor's keyword defaults are these, so no setting has two defaults.
_DEFAULT = DetectorConfig()


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
def _without_pyplot() -> Iterator[None]:
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
        self,
        min_confidence: float = _DEFAULT.min_confidence,
        min_face_size: int = _DEFAULT.min_face_size,
        max_faces: int = _DEFAULT.max_faces,
        model_path: Path | None = None,
    ) -> None:
        path = verify_model() if model_path is None else Path(model_path)
        # detect() converts colours with OpenCV: refuse now rather than on the first frame.
        require_opencv("the MediaPipe face detector (detector.backend = 'mediapipe')", DetectorError)
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
            with quiet_native_stderr():  # MediaPipe's C++ core prints its start-up lines on fd 2
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
        return finish_detections(raw, self.adjust, self.min_face_size, self.max_faces, scale)

    def close(self) -> None:
        """Close the MediaPipe graph (explicitly: its __del__ at interpreter exit is noisy)."""
        det, self._det = self._det, None
        if det is not None:
            with quiet_native_stderr():
                det.close()
