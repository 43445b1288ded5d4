"""What every face detector returns (:class:`Detection`, in FER framing) and the framing correction.

Detectors return boxes in *FER framing*: each raw detector box is corrected (scaled about its centre and
shifted) so that the shared crop of :func:`edge.preprocess.crop_face` (a square of ``crop_scale`` x the longer
side) frames the face the way FER2013 frames its 48x48 faces. The corrections were measured by
``benchmarks/crop_calibration.py`` on FER2013 validation faces (see :data:`BOX_ADJUST`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edge.bundle import sha256_file
from edge.package_data import package_path

#: The package's bundled assets folder (edge/assets).
ASSETS = package_path("assets")
#: The vendored BlazeFace short-range model.
BLAZEFACE_MODEL = ASSETS / "face_detection_short_range.tflite"


#: sha256 of the vendored BlazeFace model (provenance in edge/assets/README.md).
BLAZEFACE_MODEL_SHA256 = "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"


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
    # The same model decoded the same way in LiteRT (edge.runtime.detect.blazeface): the same boxes.
    "blazeface": BoxAdjust(scale=1.024, shift=-0.075),
    "opencv": BoxAdjust(scale=0.817, shift=0.0),
}


@dataclass(frozen=True)
class Detection:
    """One face.

    Attributes:
        box: FER-framed box (x, y, w, h) in pixels of the frame's main image.
        score: Detector confidence in [0, 1] (1.0 for Haar, which has none).
        raw_box: The detector's own box before the FER framing correction, same coordinates.
        keypoints: Landmarks (x, y) in main-image pixels where the detector gives them (BlazeFace: right eye,
            left eye, nose tip, mouth centre, right and left ear tragion, the subject's right first); empty for
            Haar.
    """

    box: tuple[float, float, float, float]
    score: float
    raw_box: tuple[float, float, float, float]
    keypoints: tuple[tuple[float, float], ...] = ()

    @property
    def eyes(self) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """The two eye centres (the first two keypoints: right eye, left eye), or None without keypoints."""
        return (self.keypoints[0], self.keypoints[1]) if len(self.keypoints) >= 2 else None


class FaceDetector(Protocol):
    """What the frame loop needs from a detector."""

    name: str

    def detect(self, image: np.ndarray, scale: tuple[float, float] = (1.0, 1.0)) -> list[Detection]:
        """Faces in a grayscale (HxW) or BGR (HxWx3) uint8 image; ``scale`` maps its pixels to the main image's
        (Picamera2's lores stream)."""
        ...

    def close(self) -> None:
        """Release native resources."""
        ...


def finish_detections(
    raw: list[tuple],
    adjust: BoxAdjust,
    min_face_size: int,
    max_faces: int,
    scale: tuple[float, float] = (1.0, 1.0),
) -> list[Detection]:
    """Filter by size, keep the largest ``max_faces``, map to main-image pixels, apply the FER correction.

    Each raw entry is ``(box, score)`` or ``(box, score, keypoints)``, in the detection image's pixels.
    """
    sx, sy = scale
    out = []
    for (x, y, w, h), score, *rest in raw:
        rb = (x * sx, y * sy, w * sx, h * sy)
        if max(rb[2], rb[3]) < min_face_size:
            continue
        points = tuple((px * sx, py * sy) for px, py in rest[0]) if rest else ()
        out.append(Detection(adjust.apply(rb), float(score), rb, points))
    out.sort(key=lambda d: -(d.raw_box[2] * d.raw_box[3]))
    return out[:max_faces]


def verify_model(path: Path = BLAZEFACE_MODEL, expected: str = BLAZEFACE_MODEL_SHA256) -> Path:
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
