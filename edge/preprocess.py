"""The one face preprocessing that training and the device share.

Training (``train_export``) feeds FER2013-style 48x48 crops through :func:`resize_face` and
:func:`normalize`; the device feeds detector boxes through :func:`crop_face` (which ends in the same
:func:`resize_face`) and the same :func:`normalize`. Given the detector's two eye keypoints, :func:`crop_face`
first turns the face so that the eyes are level (:func:`eye_roll`): a tilted head is framed the way FER2013
frames a face, and with level eyes the crop is pixel for pixel the unaligned one. The manifest of a model bundle names this code by
:data:`PREPROCESSING_ID` and records its parameters, so a bundle made for another preprocessing is refused
at load time.

Only numpy is used here (the resampling is :mod:`edge.imaging`'s): this module runs on a Raspberry Pi, where
the Pi camera's install carries no OpenCV.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from edge.imaging import bgr_to_gray, invert_affine, resize, warp_affine

#: Identifier of this preprocessing, written into every model bundle's manifest.
PREPROCESSING_ID = "gray-sqcrop-area-v1"

#: FER2013 faces fill most of the 48x48 frame with a little hair and chin around them. A face detector box is
#: tighter, so the device crops a square ``crop_scale`` times the box's longer side, centred on the box
#: (shifted up by ``crop_shift`` of the box height, since detector boxes sit low on the forehead).
DEFAULT_CROP_SCALE = 1.25
DEFAULT_CROP_SHIFT = 0.0


@dataclass(frozen=True)
class Preprocessing:
    """Parameters of the shared preprocessing, as stored in a bundle manifest.

    Attributes:
        id: Which preprocessing code these parameters belong to (:data:`PREPROCESSING_ID`).
        input_size: Side of the square grayscale face the model sees, in pixels.
        crop_scale: Side of the square crop as a multiple of the detector box's longer side.
        crop_shift: Vertical shift of the crop centre as a fraction of the box height (negative is up).
        scale: The float model input is ``pixel * scale + offset`` for a uint8 pixel.
        offset: See ``scale``.
    """

    id: str = PREPROCESSING_ID
    input_size: int = 48
    crop_scale: float = DEFAULT_CROP_SCALE
    crop_shift: float = DEFAULT_CROP_SHIFT
    scale: float = 1.0 / 255.0
    offset: float = 0.0

    def to_dict(self) -> dict:
        """Return the parameters as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        """Build from a manifest block, refusing unknown keys so typos surface."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {sorted(unknown)}")
        return cls(**data)


def to_gray(frame: np.ndarray) -> np.ndarray:
    """Return a 2-D uint8 grayscale view or copy of ``frame``.

    Accepts 2-D grayscale, HxWx1, and HxWx3 BGR (OpenCV's and Picamera2 "RGB888" memory order) images.
    """
    if frame.ndim == 2:
        gray = frame
    elif frame.ndim == 3 and frame.shape[2] == 1:
        gray = frame[:, :, 0]
    elif frame.ndim == 3 and frame.shape[2] in (3, 4):
        gray = bgr_to_gray(frame)
    else:
        raise ValueError(f"unsupported frame shape {frame.shape}; expected HxW, HxWx1, HxWx3 or HxWx4")
    if gray.dtype != np.uint8:
        gray = np.clip(gray, 0, 255).astype(np.uint8)
    return gray


def square_box(
    box: tuple[float, float, float, float], crop_scale: float = DEFAULT_CROP_SCALE, crop_shift: float = 0.0
) -> tuple[int, int, int]:
    """Turn a detector box ``(x, y, w, h)`` into the square crop ``(x0, y0, side)`` the model expects."""
    x, y, w, h = box
    side = max(1, int(round(max(w, h) * crop_scale)))
    cx = x + w / 2.0
    cy = y + h / 2.0 + crop_shift * h
    return int(round(cx - side / 2.0)), int(round(cy - side / 2.0)), side


def resize_face(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize a square grayscale face to ``size`` x ``size`` uint8.

    Area interpolation when shrinking (what camera crops usually need) and linear when enlarging
    (:func:`edge.imaging.resize`).
    """
    return resize(gray, size, size)


Point = tuple[float, float]


def eye_roll(eyes: tuple[Point, Point]) -> float:
    """The roll of the eye line in degrees, in (-90, 90]: positive when the eye on the image's right is lower.

    ``eyes`` are the two eye centres (x, y) in pixels, in either order, so a mirrored (selfie) frame, which
    swaps the subject's right and left in the image, gives the same roll.
    """
    (ax, ay), (bx, by) = eyes
    if bx < ax or (bx == ax and by < ay):
        ax, ay, bx, by = bx, by, ax, ay
    return math.degrees(math.atan2(by - ay, bx - ax))


def crop_face(
    frame: np.ndarray,
    box: tuple[float, float, float, float],
    prep: Preprocessing | None = None,
    eyes: tuple[Point, Point] | None = None,
) -> np.ndarray:
    """Cut the face in ``box`` (x, y, w, h in pixels) out of a frame (grayscale, or BGR) as a model-sized uint8
    grayscale square.

    Parts of the square crop outside the frame are filled by replicating the border, as a detector box near
    the frame edge is common and a black band would look like no FER2013 face. With ``eyes`` (the two eye
    centres, pixels of the same frame) the square is turned about its centre by the eyes' roll first, so the
    eyes come out level (:func:`eye_roll`); without them, or with level eyes, nothing is turned. A BGR frame is
    converted to gray only where the crop reads it (gray is per pixel, so this is the crop of the whole gray
    frame, pixel for pixel, at a fraction of the cost: the face is a few percent of a room camera's frame).
    """
    prep = prep or Preprocessing()
    x0, y0, side = square_box(box, prep.crop_scale, prep.crop_shift)
    h, w = frame.shape[:2]
    x1, y1 = x0 + side, y0 + side
    if min(w, x1) <= max(0, x0) or min(h, y1) <= max(0, y0):
        raise ValueError(f"face box {box} lies outside the {w}x{h} frame")
    roll = eye_roll(eyes) if eyes is not None else 0.0
    if roll != 0.0:
        # Sample the turned square straight from the frame (one interpolation at the frame's resolution, then the
        # same area resize as every crop). The centre is the crop's middle pixel, so a zero turn would give the
        # plain crop below, border replication included.
        cx, cy = x0 + (side - 1) / 2.0, y0 + (side - 1) / 2.0
        # The map from frame pixels to crop pixels: a turn by the roll about the centre (OpenCV's
        # getRotationMatrix2D, term for term: y is down, so a positive roll turns the eye line back to level),
        # then the crop's offset. It is inverted for sampling the way cv2.warpAffine inverts it, so the sample
        # positions are OpenCV's to the last bit. (Plain floats: the same double arithmetic as numpy's, without
        # its per-scalar cost on every face.)
        a = math.radians(roll)
        cos, sin = math.cos(a), math.sin(a)
        # Only the part of the frame the turned square can read (its bounding box, 2 px more for the bilinear
        # taps), clipped to the frame: where it is clipped, the frame's own edge is replicated, as before.
        reach = side / 2.0 * (abs(cos) + abs(sin)) + 2.0
        rx0, ry0 = max(0, math.floor(cx - reach)), max(0, math.floor(cy - reach))
        rx1, ry1 = min(w, math.ceil(cx + reach) + 1), min(h, math.ceil(cy + reach) + 1)
        region = to_gray(frame[ry0:ry1, rx0:rx1])
        # The map of frame pixels, shifted to the region's: a region pixel (a, b) is the frame pixel (a + rx0, b + ry0).
        m = ((cos, sin, (1 - cos) * cx - sin * cy - x0 + (cos * rx0 + sin * ry0)),
             (-sin, cos, sin * cx + (1 - cos) * cy - y0 + (-sin * rx0 + cos * ry0)))
        crop = warp_affine(region, invert_affine(m), side, side, "replicate")
        return resize_face(crop, prep.input_size)
    crop = to_gray(frame[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)])
    pad_l, pad_t = max(0, -x0), max(0, -y0)
    pad_r, pad_b = max(0, x1 - w), max(0, y1 - h)
    if pad_l or pad_t or pad_r or pad_b:
        crop = np.pad(crop, ((pad_t, pad_b), (pad_l, pad_r)), mode="edge")
    return resize_face(crop, prep.input_size)


def normalize(faces: np.ndarray, prep: Preprocessing | None = None) -> np.ndarray:
    """Map uint8 faces (N x S x S or S x S) to the float32 model input ``pixel * scale + offset``."""
    prep = prep or Preprocessing()
    return faces.astype(np.float32) * np.float32(prep.scale) + np.float32(prep.offset)


def quantize_input(faces: np.ndarray, scale: float, zero_point: int, dtype: np.dtype, prep: Preprocessing) -> np.ndarray:
    """Produce the integer input tensor of a quantized model from uint8 faces.

    Goes through :func:`normalize` so the integer path sees exactly what the float model was trained on.
    """
    info = np.iinfo(dtype)
    q = np.round(normalize(faces, prep) / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def prepare_batch(gray_faces: np.ndarray, prep: Preprocessing | None = None) -> np.ndarray:
    """Resize a stack of square uint8 faces (N x H x W) to the model's input size, as training does."""
    prep = prep or Preprocessing()
    if gray_faces.ndim != 3:
        raise ValueError(f"expected N x H x W faces, got shape {gray_faces.shape}")
    if gray_faces.shape[1:] == (prep.input_size, prep.input_size):
        return np.ascontiguousarray(gray_faces, dtype=np.uint8)
    return np.stack([resize_face(f, prep.input_size) for f in gray_faces])
