"""The Raspberry Pi camera through Picamera2 (the one module that imports it, lazily)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edge.runtime.capture.base import Frame, SourceError, SourceFatal

log = logging.getLogger(__name__)


def _default_camera_factory() -> Any:
    """The one place Picamera2 is imported (lazily: it exists only on a Pi, from apt python3-picamera2)."""
    try:
        from picamera2 import Picamera2
    except ImportError as exc:
        raise SourceFatal(
            f"picamera2 is not importable ({exc}); on Raspberry Pi OS run 'apt install python3-picamera2' and "
            "create the venv with --system-site-packages"
        ) from None
    try:
        return Picamera2()
    except Exception as exc:  # libcamera raises assorted errors when no camera is attached
        raise SourceError(f"no camera available through libcamera ({exc}); check the ribbon cable and 'rpicam-hello'") from None


#: Longest wait for one Pi camera frame before the capture counts as failed.
CAPTURE_TIMEOUT_S = 5.0


class Picamera2Source:
    """Raspberry Pi camera through Picamera2: BGR main stream for crops, lores YUV420 Y plane for detection.

    Args:
        width: Main stream width.
        height: Main stream height.
        lores_width: Low-resolution stream width (detection).
        lores_height: Low-resolution stream height.
        camera_factory: Returns a Picamera2-like object; the thin seam tests replace (default imports picamera2).
    """

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        lores_width: int = 320,
        lores_height: int = 240,
        camera_factory: Callable[[], Any] | None = None,
    ) -> None:
        self._cam = (camera_factory or _default_camera_factory)()
        # "RGB888" is BGR in memory, which is what OpenCV and edge.preprocess expect.
        config = self._cam.create_video_configuration(
            main={"size": (width, height), "format": "RGB888"},
            lores={"size": (lores_width, lores_height), "format": "YUV420"},
        )
        try:
            self._cam.configure(config)
            self._cam.start()
        except Exception as exc:
            self._safe_close()
            raise SourceError(f"cannot start the Pi camera ({exc})") from None
        # configure() writes back the sizes libcamera really uses (e.g. an odd YUV420 height made even):
        # the Y-plane slice and the detection-to-crop scale must use those, not the requested ones.
        width, height = config["main"]["size"]
        lores_width, lores_height = config["lores"]["size"]
        self.lores = (lores_width, lores_height)
        self._scale = (width / lores_width, height / lores_height)
        self._index = 0

    def read(self) -> Frame | None:
        """Capture one request and take both streams from it, so the lores plane matches the main image."""
        try:
            # With a timeout: a stalled sensor (ribbon cable, "Dequeue timer expired") must become a SourceError
            # that reopens the camera and shows in status, not a read that blocks the loop for good.
            request = self._cam.wait(self._cam.capture_request(wait=False), timeout=CAPTURE_TIMEOUT_S)
            try:
                main = request.make_array("main")
                yuv = request.make_array("lores")
            finally:
                request.release()
        except Exception as exc:
            # A timed-out capture job stays queued and would block stop(); Picamera2 documents this call for
            # exactly that case ("so that the camera can be closed").
            self._flush()
            raise SourceError(f"Pi camera capture failed ({exc.__class__.__name__}: {exc})") from None
        lw, lh = self.lores
        # YUV420 arrays are (h*3/2) x stride; the first h rows, first w columns are the Y (luma) plane.
        y_plane = np.ascontiguousarray(yuv[:lh, :lw])
        frame = Frame(main, self._index, time.time(), y_plane, self._scale)
        self._index += 1
        return frame

    def _flush(self) -> None:
        try:
            getattr(self._cam, "cancel_all_and_flush", lambda: None)()
        except Exception as exc:
            log.debug("Picamera2.cancel_all_and_flush failed: %s", exc)

    def _safe_close(self) -> None:
        self._flush()
        for step in ("stop", "close"):
            try:
                getattr(self._cam, step)()
            except Exception as exc:
                log.debug("Picamera2.%s failed: %s", step, exc)

    def close(self) -> None:
        """Stop and close the camera."""
        self._safe_close()
