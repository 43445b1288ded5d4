"""OpenCV ``VideoCapture`` sources: a camera index, a video file, or an RTSP/HTTP stream."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.imaging import require_opencv
from edge.runtime.capture.base import Frame, SourceError, SourceFatal

log = logging.getLogger(__name__)


#: Longest wait for a frame from a live camera or stream before it counts as stopped.
LIVE_READ_TIMEOUT_S = 5.0


class LatestFrame:
    """Reads a live capture on its own thread and keeps only the newest frame.

    A live camera or stream produces frames at its own rate; read only when the loop is ready, OpenCV would hand
    out the oldest buffered frame (seconds old for RTSP, and the backlog grows until the stream breaks). So the
    thread takes every frame off the device (``grab``), but converts one to BGR (``retrieve``) only while the loop
    is waiting for a frame: a loop at 10 fps behind a 30 fps camera converts a third of the frames. For a V4L2
    USB camera in MJPEG mode ``retrieve`` is the JPEG decode, the costly half on a Pi; for FFmpeg streams ``grab``
    already decodes and the saving is the colour conversion. The price is a wait: each frame the loop gets was
    grabbed after it asked, so a read waits up to one frame interval for it (under the default rate cap that wait
    falls inside the frame slot). The thread owns the capture and releases it when it ends, so a read blocked in
    FFmpeg never races a release.

    Attributes:
        grabbed: Frames taken off the device.
        decoded: Frames decoded for the loop.
        error: Why the capture ended, if a driver error ended it.
    """

    def __init__(self, cap: Any, name: str) -> None:
        self._cap = cap
        self._cond = threading.Condition()
        self._image: np.ndarray | None = None
        self._ts = 0.0
        self._seq = 0
        self._waiting = 0
        self._ended = False
        self._closing = False
        self.grabbed = 0
        self.decoded = 0
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"capture {name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._closing:
                if not self._cap.grab():
                    break
                with self._cond:
                    # Stamped under the lock that newest() registers its wait under, so a frame decoded for a
                    # waiting loop always carries a time after the loop asked.
                    ts = time.time()  # when the frame arrived, not when the loop got round to it
                    self.grabbed += 1
                    wanted = self._waiting > 0
                if not wanted:
                    continue  # nobody is waiting: the next grab replaces this frame undecoded
                ok, image = self._cap.retrieve()
                if not ok or image is None:
                    break
                with self._cond:
                    self.decoded += 1
                    self._image, self._ts, self._seq = image, ts, self._seq + 1
                    self._cond.notify_all()
        except Exception as exc:  # a driver error ends the capture like a stream that stops, with its reason
            self.error = f"{exc.__class__.__name__}: {exc}"
            log.warning("capture of %s failed: %s", self._thread.name, self.error)
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()
            self._cap.release()

    def newest(self, after: int, timeout: float) -> tuple[np.ndarray, float, int] | None:
        """The newest frame with a sequence number above ``after``; None if the capture ended or timed out."""
        with self._cond:
            self._waiting += 1
            try:
                self._cond.wait_for(lambda: self._seq > after or self._ended, timeout)
            finally:
                self._waiting -= 1
            if self._seq > after and self._image is not None:
                return self._image, self._ts, self._seq
            return None

    def close(self) -> None:
        self._closing = True
        self._thread.join(2.0)
        if self._thread.is_alive():
            log.warning("the capture thread is still blocked in a read; it releases the device when that returns")


class OpenCVSource:
    """OpenCV ``VideoCapture``: a camera index ("0"), a video file, or an RTSP/HTTP URL.

    Files are read frame by frame. Live sources (cameras, URLs) are read continuously on a thread that keeps only
    the newest frame (see :class:`LatestFrame`), so a loop slower than the camera gets current frames.

    Args:
        uri: Camera index as a string, a file path, or a URL.
        width: Requested width (cameras only).
        height: Requested height (cameras only).
        live: Read continuously, keeping the newest frame; default: for cameras and URLs.
    """

    def __init__(self, uri: str, width: int = 640, height: int = 480, live: bool | None = None) -> None:
        cv2 = require_opencv(f"source {uri!r} (a camera index, video file or stream)", SourceFatal)

        self.uri = uri
        self.is_camera = uri.isdigit()
        if not self.is_camera and "://" not in uri and not Path(uri).exists():
            raise SourceError(f"video source {uri!r} does not exist (expected a file, folder, camera index or URL)")
        self._cap = cv2.VideoCapture(int(uri) if self.is_camera else uri)
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(f"OpenCV cannot open {uri!r} (no such camera, unsupported codec or unreachable URL)")
        if self.is_camera:
            self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
            self._cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # V4L2: hand out a recent buffer, not a queued old one
        self.live = (self.is_camera or "://" in uri) if live is None else live
        self._grabber = LatestFrame(self._cap, uri) if self.live else None
        self._seq = 0
        self._index = 0

    def read(self) -> Frame | None:
        """Next frame; None at the end of a file; a camera or stream that stops delivering raises."""
        if self._grabber is not None:
            got = self._grabber.newest(self._seq, LIVE_READ_TIMEOUT_S)
            if got is None:
                why = f" ({self._grabber.error})" if self._grabber.error else ""
                raise SourceError(f"{self.uri!r} stopped delivering frames{why}")
            image, ts, self._seq = got
        else:
            ok, image = self._cap.read()
            if not ok or image is None:
                return None
            ts = time.time()
        frame = Frame(image, self._index, ts)
        self._index += 1
        return frame

    def close(self) -> None:
        """Release the capture (a live source's thread releases it when it ends)."""
        if self._grabber is not None:
            self._grabber.close()
        else:
            self._cap.release()
