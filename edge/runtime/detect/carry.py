"""Detect every N frames; carry each face between detections by template matching on a coarse sample grid.

The detector is most of a frame's work (BlazeFace about 1 ms a frame here, the classifier about 0.4 ms a face),
while a face moves little from one frame to the next. :class:`CarryingDetector` wraps any
:class:`~edge.runtime.detect.base.FaceDetector` and runs it only

* on every frame while no face is being carried (nothing to carry, and any frame may bring a face: an empty
  room costs the detector on every frame, as before, and the first face to enter is found at once),
* every ``every`` frames while faces are carried (so another face that enters is found within ``every`` frames),
* at once, on the current frame, when any carried face's match falls under ``min_match`` (the face moved too
  far or too fast, turned, was covered or left: the detector then decides whether it is still there),
* on the next ``every`` frames without trying to carry after carrying failed on ``FAILS_BEFORE_REST`` frames in a
  row: frames that have nothing to do with each other (an image folder) then cost the detector alone.

In between, each face of the last detection is looked for near its previous place on a coarse grid: its detector
box at the last detection sampled about 16 x 16 times (the gray image, or a BGR image's green channel; a Pi
camera's low-resolution Y plane where the source gives one) is the template, and the best normalised
cross-correlation within 6 samples either way (about a third of the face) wins, refined to a fraction of a sample.
Its box, FER-framed box and keypoints move by that offset (sizes stay those of the last
detection). Matching against the detection's own patch, not the previous frame's, means no drift accumulates
between detections. The classifier still runs on every frame, on the carried boxes; the
:class:`~edge.runtime.track.Tracker` sees the carried boxes as ordinary detections, so a face the detector no
longer finds stops being carried at that detection and its track ends after ``tracking.max_missed_frames``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.imaging import Template, match_template
from edge.runtime.detect.base import Detection, FaceDetector

#: Template side in samples: a face is matched on a grid of about this many samples across its detector box.
TEMPLATE_SIDE = 16
#: Search radius in grid samples either way (6 of 16: a face may move about 0.37 of its size between frames).
SEARCH = 6
#: Carrying that failed on this many frames in a row rests for ``every`` frames (detect only): a stream of unrelated
#: images (an image folder, a video of cuts) would otherwise pay for a match that fails on every frame.
FAILS_BEFORE_REST = 2


def _sample(image: np.ndarray, x0: int, y0: int, nx: int, ny: int, step: int) -> np.ndarray:
    """``ny`` x ``nx`` samples ``step`` pixels apart from (x0, y0) of a gray or BGR image (BGR: green, the channel
    closest to luminance, with no conversion), as float32."""
    sub = image[y0 : y0 + ny * step : step, x0 : x0 + nx * step : step]
    if sub.ndim == 3:
        sub = sub[:, :, 1]
    return sub.astype(np.float32)


@dataclass
class _Carried:
    """One face being carried: its last detection, its template and where that template sits."""

    det: Detection
    template: Template  # the samples of the last detection's box, th x tw
    th: int
    tw: int
    step: int  # sample spacing in detection-image pixels
    x: int  # template's top-left in detection-image pixels at the last detection
    y: int
    dx: float = 0.0  # current offset from there, detection-image pixels
    dy: float = 0.0


def _template(image: np.ndarray, det: Detection, scale: tuple[float, float]) -> _Carried | None:
    """The template of ``det``'s raw box (clipped to the image); None if too little of it is inside or it is flat."""
    x, y, w, h = det.raw_box
    x, y, w, h = x / scale[0], y / scale[1], w / scale[0], h / scale[1]  # main image -> detection image
    step = max(1, round(max(w, h) / TEMPLATE_SIDE))
    x0, y0 = max(0, round(x)), max(0, round(y))
    tw = min(round(w / step), (image.shape[1] - 1 - x0) // step + 1)
    th = min(round(h / step), (image.shape[0] - 1 - y0) // step + 1)
    if tw < TEMPLATE_SIDE // 2 or th < TEMPLATE_SIDE // 2:
        return None
    template = Template.of(_sample(image, x0, y0, tw, th, step))
    if template.flat:  # nothing to locate: carrying it would never succeed
        return None
    return _Carried(det, template, th, tw, step, x0, y0)


def _peak(values: np.ndarray, i: int) -> float:
    """Sub-sample offset of a maximum at ``values[i]`` from a parabola through it and its neighbours."""
    if i <= 0 or i >= len(values) - 1:
        return 0.0
    a, b, c = float(values[i - 1]), float(values[i]), float(values[i + 1])
    d = a - 2 * b + c
    return 0.0 if d >= 0 else max(-0.5, min(0.5, 0.5 * (a - c) / d))


def _match(image: np.ndarray, c: _Carried) -> tuple[float, float, float]:
    """Best normalised cross-correlation of ``c``'s template near its current place: (score, dx, dy) with the
    offset in detection-image pixels from the template's place at the last detection."""
    s, th, tw = c.step, c.th, c.tw
    cx, cy = c.x + round(c.dx), c.y + round(c.dy)
    # The search grid: SEARCH samples either way of the current place, cut to whole samples inside the image.
    left = min(SEARCH, cx // s)
    top = min(SEARCH, cy // s)
    nx = left + tw + min(SEARCH, (image.shape[1] - 1 - cx) // s - tw + 1)
    ny = top + th + min(SEARCH, (image.shape[0] - 1 - cy) // s - th + 1)
    if nx < tw or ny < th:
        return 0.0, c.dx, c.dy
    rx0, ry0 = cx - left * s, cy - top * s
    ncc = match_template(_sample(image, rx0, ry0, nx, ny, s), c.template)
    iy, ix = divmod(int(ncc.argmax()), ncc.shape[1])  # the flat index's row and column
    score = float(ncc[iy, ix])
    fx, fy = ix + _peak(ncc[iy, :], ix), iy + _peak(ncc[:, ix], iy)
    return score, rx0 + fx * s - c.x, ry0 + fy * s - c.y


def _moved(d: Detection, dx: float, dy: float) -> Detection:
    """``d`` translated by (dx, dy) main-image pixels."""
    def mv(b: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        return (b[0] + dx, b[1] + dy, b[2], b[3])

    return Detection(mv(d.box), d.score, mv(d.raw_box), tuple((px + dx, py + dy) for px, py in d.keypoints))


class CarryingDetector:
    """A detector that runs its inner detector every ``every`` frames and carries faces in between.

    Args:
        inner: The real detector.
        every: Run ``inner`` on one frame in this many (1 = every frame, no carrying).
        min_match: Normalised cross-correlation under which a carried face sends the frame to ``inner`` at once.

    Attributes:
        detected: Whether the last :meth:`detect` ran the inner detector (benchmarks and tests read it).
    """

    def __init__(self, inner: FaceDetector, every: int, min_match: float) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1, not {every}")
        self.inner = inner
        self.name = inner.name
        self.every = every
        self.min_match = min_match
        self.detected = False
        self._carried: list[_Carried] = []
        self._since = every  # frames since the last detection: the first frame detects
        self._shape: tuple[int, ...] = ()
        self._fails = 0  # carries that failed in a row
        self._rest = 0  # frames left on which carrying is not tried

    def detect(self, image: np.ndarray, scale: tuple[float, float] = (1.0, 1.0)) -> list[Detection]:
        """The faces in ``image``, detected or carried (see the module docstring)."""
        if self._rest > 0:
            self._rest -= 1
        elif self.every > 1 and self._since < self.every and self._carried:
            carried = self._carry(image, scale)
            if carried is not None:
                self._since, self._fails = self._since + 1, 0
                self.detected = False
                return carried
            self._fails += 1
            if self._fails >= FAILS_BEFORE_REST:
                self._rest = self.every
        return self._detect(image, scale)

    def close(self) -> None:
        """Release the inner detector."""
        self._carried = []
        self.inner.close()

    def _detect(self, image: np.ndarray, scale: tuple[float, float]) -> list[Detection]:
        dets = self.inner.detect(image, scale=scale)
        self._since, self.detected = 1, True
        if self.every > 1:
            self._carried = [c for c in (_template(image, d, scale) for d in dets) if c is not None]
            self._shape = image.shape
        return dets

    def _carry(self, image: np.ndarray, scale: tuple[float, float]) -> list[Detection] | None:
        """Every carried face moved to its best match, or None if any match is too weak (detect instead)."""
        if image.shape != self._shape:  # the frame size changed: nothing carried is valid
            return None
        out = []
        for c in self._carried:
            score, dx, dy = _match(image, c)
            if score < self.min_match:
                return None
            c.dx, c.dy = dx, dy
            out.append(_moved(c.det, dx * scale[0], dy * scale[1]))
        return out
