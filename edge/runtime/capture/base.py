"""What every frame source yields (:class:`Frame`) and implements (:class:`Source`), and its one error.

Sources yield the main image (BGR or gray, for cropping faces) and optionally a smaller grayscale image for
detection (Picamera2's lores Y plane) with the scale between the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}


class SourceError(Exception):
    """A frame source cannot be opened or read; the message says which and why."""


class SourceFatal(SourceError):
    """A source that can never work on this system (e.g. picamera2 is not installed): retrying is pointless, so
    the daemon exits with an error instead and systemd shows the unit failed."""


@dataclass
class Frame:
    """One captured frame.

    Attributes:
        image: Main image, HxWx3 BGR or HxW gray uint8; faces are cropped from it.
        index: Frame number from the source, starting at 0 after each (re)open.
        ts: Capture time (UNIX seconds).
        detect_image: Optional smaller gray image to detect on (Picamera2 lores); None means use ``image``.
        detect_scale: Multiply ``detect_image`` pixel coordinates by this (x, y) to get ``image`` coordinates.
    """

    image: np.ndarray
    index: int
    ts: float
    detect_image: np.ndarray | None = None
    detect_scale: tuple[float, float] = (1.0, 1.0)

    @property
    def width(self) -> int:
        """Width of the main image."""
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        """Height of the main image."""
        return int(self.image.shape[0])


class Source(Protocol):
    """An opened frame source."""

    def read(self) -> Frame | None:
        """The next frame, or None at the end of a finite source; raises :class:`SourceError` on failure."""
        ...

    def close(self) -> None:
        """Release the device or file."""
        ...
