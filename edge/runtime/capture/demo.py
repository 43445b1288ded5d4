"""The built-in demo source: a public-domain face from scikit-image moving over a 640x480 canvas.

Face: scikit-image's ``astronaut`` (Eileen Collins, NASA, public domain), shipped inside the installed
scikit-image package, so the demo needs no network and no camera; up to three copies (as is, mirrored and
smaller, desaturated). scikit-image's CC0 ``camera`` shows a half-profile that BlazeFace finds only at
about a third of the frames and the frontal Haar cascade never, so it is not used. The faces drift along slow Lissajous paths, and the second one leaves the picture for a while every cycle, so tracking
has ids to keep and tracks to start and end. Frames are a pure function of the frame index (deterministic).
"""

from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path

import numpy as np

from edge.runtime.capture.base import Frame, SourceError

#: (source image, face box x, y, w, h in that image, horizontal mirror, display scale, grayscale). The box is
#: where BlazeFace finds the face in the 512x512 original; the patch cut around it is 1.5x that box. Faces
#: of 110-125 px in a 640x480 frame are found in every frame by both detectors.
_FACES = (
    ("astronaut", (177, 82, 95, 95), False, 1.3, False),
    ("astronaut", (177, 82, 95, 95), True, 1.15, False),
    ("astronaut", (177, 82, 95, 95), False, 1.2, True),
)
#: Frames in one motion cycle; with ``vanish`` the second face is absent for the last fifth of each cycle.
CYCLE = 200


def _load(name: str) -> np.ndarray:
    """Read ``<name>.png`` from scikit-image's bundled data folder as BGR.

    The file is read with OpenCV instead of ``skimage.data`` because importing scikit-image pulls in SciPy
    (about 30 MB of RSS for two PNG files).
    """
    import cv2

    spec = importlib.util.find_spec("skimage")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" if spec and spec.submodule_search_locations else None
    path = folder / f"{name}.png" if folder else None
    img = cv2.imread(str(path), cv2.IMREAD_COLOR) if path is not None and path.is_file() else None
    if img is None:
        raise SourceError(
            f"the demo source needs scikit-image's bundled {name}.png (not found); pip install 'emotion-edge[edge]'"
        )
    return img


def _patch(name: str, box: tuple[int, int, int, int], mirror: bool, scale: float, gray: bool) -> np.ndarray:
    """Cut a square face patch around ``box``, mirrored, scaled and desaturated as asked."""
    import cv2

    img = _load(name)
    if gray:
        img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    x, y, w, h = box
    side = int(max(w, h) * 1.5)
    cx, cy = x + w // 2, y + h // 2
    x0, y0 = max(0, cx - side // 2), max(0, cy - side // 2)
    patch = img[y0 : y0 + side, x0 : x0 + side]
    if mirror:
        patch = patch[:, ::-1]
    size = max(16, int(round(patch.shape[0] * scale)))
    return cv2.resize(np.ascontiguousarray(patch), (size, size), interpolation=cv2.INTER_AREA)


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
            import cv2

            self._patches = [cv2.resize(p, (max(1, int(p.shape[0] * fit)),) * 2, interpolation=cv2.INTER_AREA)
                             for p in self._patches]
        if min(p.shape[0] for p in self._patches) < MIN_FACE_SIDE:
            raise SourceError(f"demo frame {width}x{height} is too small for {faces} face(s) of at least "
                              f"{MIN_FACE_SIDE} px; use at least 320x240")
        # A soft static background (vertical gradient plus a little texture) so the detector sees a scene.
        yy = np.linspace(70, 150, height, dtype=np.float32)[:, None, None]
        rng = np.random.default_rng(7)
        bg = yy + rng.normal(0, 6, (height, width, 1)).astype(np.float32)
        self._background = np.clip(np.concatenate([bg * 0.9, bg, bg * 1.1], axis=2), 0, 255).astype(np.uint8)
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
