"""The built-in demo source: public-domain faces with two expressions moving over a 640x480 canvas.

Faces (``edge/assets/demo/``, provenance and licence in ``edge/assets/README.md``): the astronaut Eileen Collins
(NASA portrait; the model reads her smile as happy) and Commodore Grace Hopper (US Navy portrait; read as
neutral), both public domain, shipped with the package so the demo needs no network, no camera and no image
library. Up to three faces: the astronaut, Hopper, and the astronaut again, mirrored. The faces
drift along slow Lissajous paths, and the second one leaves the picture for a while every cycle, so tracking has
ids to keep and tracks to start and end. Frames are a pure function of the frame index (deterministic).
"""

from __future__ import annotations

import math
import time

import numpy as np

from edge.imaging import bgr_to_gray, resize
from edge.package_data import package_path
from edge.runtime.capture.base import Frame, SourceError

#: The demo's face patches: square crops of 1.5x the face box, 160x160 BGR uint8 arrays in numpy's ``.npy``
#: format (the portraits' pixels, so that reading them needs no image library).
DEMO_FACES = package_path("assets", "demo")
#: (patch file, horizontal mirror, drawn side in px, grayscale). A patch drawn at 176-184 px holds a face of
#: 117-124 px, which both BlazeFace and the Haar cascade find in every frame (Hopper's neutral reading is the
#: weaker one, the first to fall under the tracker's "uncertain" threshold as a face shrinks; desaturated faces
#: are missed by BlazeFace in a few frames, so all three stay in colour).
_FACES = (
    ("astronaut.npy", False, 184, False),
    ("grace_hopper.npy", False, 176, False),
    ("astronaut.npy", True, 176, False),
)
#: Frames in one motion cycle; with ``vanish`` the second face is absent for the last fifth of each cycle.
CYCLE = 200


def _patch(name: str, mirror: bool, side: int, gray: bool) -> np.ndarray:
    """Read one face patch (BGR), mirrored, resized and desaturated as asked."""
    try:
        img = np.load(DEMO_FACES / name, allow_pickle=False)
    except (OSError, ValueError):
        img = None
    if img is None or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise SourceError(f"the demo face {DEMO_FACES / name} is missing or unreadable; reinstall emotion-edge")
    if gray:
        img = np.repeat(bgr_to_gray(img)[:, :, None], 3, axis=2)
    if mirror:
        img = img[:, ::-1]
    return resize(img, side, side)


#: Smallest face side the demo draws (the detector's default min_face_size is 40 px).
MIN_FACE_SIDE = 48


class DemoSource:
    """Synthetic frames with 1-3 moving public-domain faces (never ends).

    Args:
        width: Frame width.
        height: Frame height.
        faces: Number of faces (1-3).
        vanish: Let the second face leave the picture for a fifth of every cycle (track start/end events).
    """

    def __init__(self, width: int = 640, height: int = 480, faces: int = 2, vanish: bool = True) -> None:
        if not 1 <= faces <= len(_FACES):
            raise SourceError(f"demo faces must be 1-{len(_FACES)}, got {faces}")
        self.width, self.height, self.faces = width, height, faces
        self.vanish = vanish
        self._patches = [_patch(*spec) for spec in _FACES[:faces]]
        # Each face keeps to its own lane of width / faces: in a small frame the faces are scaled down to fit.
        fit = min(width // faces, height - 1) / max(p.shape[0] for p in self._patches)
        if fit < 1:
            self._patches = [resize(p, *(max(1, int(p.shape[0] * fit)),) * 2) for p in self._patches]
        if min(p.shape[0] for p in self._patches) < MIN_FACE_SIDE:
            raise SourceError(f"demo frame {width}x{height} is too small for {faces} face(s) of at least "
                              f"{MIN_FACE_SIDE} px; use at least 320x240")
        # A soft static background (vertical gradient plus a little texture) so the detector sees a scene. Built
        # one float32 plane at a time: float64 frame-sized temporaries would leave megabytes in the heap of a Pi.
        rng = np.random.default_rng(7)
        gray = rng.standard_normal((height, width), dtype=np.float32)
        gray *= 6.0
        gray += np.linspace(70, 150, height, dtype=np.float32)[:, None]
        self._background = np.empty((height, width, 3), np.uint8)
        for channel, gain in enumerate((0.9, 1.0, 1.1)):
            self._background[..., channel] = np.clip(gray * gain, 0, 255)
        self._index = 0

    def positions(self, index: int) -> list[tuple[int, int, int] | None]:
        """Top-left corner and side of each face patch at frame ``index`` (None when that face is hidden)."""
        out: list[tuple[int, int, int] | None] = []
        t = 2 * math.pi * (index % CYCLE) / CYCLE
        for k, patch in enumerate(self._patches):
            side = patch.shape[0]
            if self.vanish and k == 1 and index % CYCLE >= CYCLE * 4 // 5:
                out.append(None)
                continue
            # Each face keeps to its own third of the width so faces do not overlap.
            lane_w = self.width / len(self._patches)
            span_x = max(0.0, lane_w - side)
            span_y = max(0.0, self.height - side)
            fx = 0.5 + 0.5 * math.sin(t + k * 2.1)
            fy = 0.5 + 0.4 * math.sin(2 * t + k * 1.3)
            out.append((int(lane_w * k + span_x * fx), int(span_y * fy), side))
        return out

    def render(self, index: int) -> np.ndarray:
        """The BGR frame number ``index``."""
        frame = self._background.copy()
        for patch, pos in zip(self._patches, self.positions(index), strict=True):
            if pos is None:
                continue
            x, y, side = pos
            # A plain paste: blending would cost more than the detector on a Pi and changes nothing for it.
            frame[y : y + side, x : x + side] = patch
        return frame

    def read(self) -> Frame:
        """The next frame (the demo never ends)."""
        frame = Frame(self.render(self._index), self._index, time.time())
        self._index += 1
        return frame

    def close(self) -> None:
        """Nothing to release."""
