"""Frame sources (Picamera2, OpenCV VideoCapture, image folder, demo) and the retrying, rate-capped wrapper.

Every source yields :class:`Frame` objects: the main image (BGR or gray, for cropping faces) and optionally a
smaller grayscale image for detection (Picamera2's lores Y plane) with the scale between the two.
:class:`ManagedSource` opens a source, caps the frame rate, and on failure or end reopens it with exponential
backoff, never blocking for long so the frame loop keeps pinging the watchdog and publishing status.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}


class SourceError(Exception):
    """A frame source cannot be opened or read; the message says which and why."""


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


#: Longest wait for a frame from a live camera or stream before it counts as stopped.
LIVE_READ_TIMEOUT_S = 5.0


class _LatestFrame:
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
    the newest frame (see :class:`_LatestFrame`), so a loop slower than the camera gets current frames.

    Args:
        uri: Camera index as a string, a file path, or a URL.
        width: Requested width (cameras only).
        height: Requested height (cameras only).
        live: Read continuously, keeping the newest frame; default: for cameras and URLs.
    """

    def __init__(self, uri: str, width: int = 640, height: int = 480, live: bool | None = None) -> None:
        import cv2

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
        self._grabber = _LatestFrame(self._cap, uri) if self.live else None
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


class FolderSource:
    """The images of a folder, in file-name order (unreadable files are skipped with a warning)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        try:
            self.files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as exc:
            raise SourceError(f"cannot read image folder {self.folder}: {exc.strerror or exc}") from None
        if not self.files:
            raise SourceError(f"image folder {self.folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self._pos = 0
        self._index = 0

    def read(self) -> Frame | None:
        """Next decodable image, or None after the last one."""
        import cv2

        while self._pos < len(self.files):
            path = self.files[self._pos]
            self._pos += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                log.warning("skipping %s: not a readable image", path)
                continue
            frame = Frame(image, self._index, time.time())
            self._index += 1
            return frame
        return None

    def close(self) -> None:
        """Nothing to release."""


def _default_camera_factory() -> Any:
    """The one place Picamera2 is imported (lazily: it exists only on a Pi, from apt python3-picamera2)."""
    try:
        from picamera2 import Picamera2
    except ImportError as exc:
        raise SourceError(
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


def open_source(uri: str, cfg: Any = None, camera_factory: Callable[[], Any] | None = None) -> Source:
    """Open the source named by ``uri`` ('demo', 'picamera2', camera index, folder, file or URL).

    Args:
        uri: What to open.
        cfg: A :class:`edge.config.SourceConfig` (sizes); None uses 640x480 and a 320x240 lores stream.
        camera_factory: Picamera2 seam for tests.
    """
    width, height = (cfg.width, cfg.height) if cfg is not None else (640, 480)
    if uri == "demo":
        from edge.demo import DemoSource

        return DemoSource(width=width, height=height)
    if uri.startswith("demo:"):
        from edge.demo import DemoSource

        try:
            faces = int(uri.split(":", 1)[1])
        except ValueError:
            raise SourceError(f"bad demo source {uri!r}; use 'demo' or 'demo:N' with N faces (1-3)") from None
        return DemoSource(width=width, height=height, faces=faces)
    if uri == "picamera2":
        lw, lh = (cfg.picamera_lores_width, cfg.picamera_lores_height) if cfg is not None else (320, 240)
        return Picamera2Source(width, height, lw, lh, camera_factory)
    if Path(uri).is_dir():
        return FolderSource(uri)
    return OpenCVSource(uri, width, height)


def backoff_delay(attempt: int, initial_s: float, max_s: float) -> float:
    """Wait before reopen attempt ``attempt`` (1-based): ``initial_s * 2**(attempt-1)`` capped at ``max_s``."""
    return min(max_s, initial_s * (2.0 ** max(0, attempt - 1)))


class ManagedSource:
    """Opens a source, caps its frame rate, and reopens it with exponential backoff when it fails or ends.

    :meth:`poll` never blocks longer than ``max_wait`` seconds, so the caller's loop stays responsive (watchdog,
    status, stop requests) even while the source is down.

    Args:
        opener: Returns an opened :class:`Source` or raises :class:`SourceError`.
        uri: Name of the source, for status.
        max_fps: Frame-rate cap; 0 means none.
        loop: Reopen a finite source (file, folder, demo) at its end instead of finishing.
        retry_initial_s: First backoff wait.
        retry_max_s: Longest backoff wait.
        clock: Monotonic clock (injectable for tests).
        wait: ``wait(seconds)`` that returns early when a stop is requested (injectable for tests).
    """

    def __init__(
        self,
        opener: Callable[[], Source],
        uri: str,
        max_fps: float = 0.0,
        loop: bool = True,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], Any] | None = None,
    ) -> None:
        self._opener = opener
        self.uri = uri
        self.max_fps = max_fps
        self.loop = loop
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self._clock = clock
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._src: Source | None = None
        self._next_attempt = 0.0
        self._next_frame_at = 0.0
        self._fails = 0
        self.state = "retrying"
        self.error: str | None = None
        self.retries = 0
        self.finished = False
        self.frames_read = 0
        self._since_open = 0
        #: Seconds the last successful read took (the capture stage, without rate-cap waiting).
        self.last_read_s = 0.0
        #: Frame slots missed because the loop fell behind ``max_fps`` (overload).
        self.dropped = 0

    def status(self) -> dict:
        """``{uri, state, error, retries}`` for the status payload."""
        return {"uri": self.uri, "state": self.state, "error": self.error, "retries": self.retries}

    def open_now(self) -> None:
        """Open the source at once; raise :class:`SourceError` if it cannot be (used to fail fast at start-up)."""
        try:
            self._src = self._opener()
        except SourceError:
            raise
        except Exception as exc:  # a driver or permission failure is an unusable source too, not a crash
            raise SourceError(f"cannot open {self.uri}: {exc.__class__.__name__}: {exc}") from None
        self.state, self.error = "ok", None
        self._since_open = 0

    def schedule_retry(self, message: str) -> None:
        """Record a failure and schedule the next attempt with backoff."""
        self._close_src()
        self._fails += 1
        delay = backoff_delay(self._fails, self.retry_initial_s, self.retry_max_s)
        self._next_attempt = self._clock() + delay
        self.state, self.error = "retrying", message
        log.warning("source %s: %s; retrying in %.1f s", self.uri, message, delay)

    def _close_src(self) -> None:
        if self._src is not None:
            try:
                self._src.close()
            except Exception as exc:
                log.debug("closing source %s failed: %s", self.uri, exc)
            self._src = None

    def poll(self, max_wait: float = 1.0) -> Frame | None:
        """Return the next frame, or None if none is due within ``max_wait`` s (backoff, rate cap or end)."""
        if self.finished:
            return None
        now = self._clock()
        if self._src is None:
            if now < self._next_attempt:
                self._wait(min(max_wait, self._next_attempt - now))
                return None
            if self._fails:
                self.retries += 1
            try:
                self.open_now()
                log.info("source %s opened", self.uri)
            except SourceError as exc:
                self.schedule_retry(str(exc))
                return None
        if self.max_fps > 0:
            interval = 1.0 / self.max_fps
            now = self._clock()
            if self._since_open == 0:
                self._next_frame_at = now  # the first frame after an open is due at once
            if now < self._next_frame_at:
                delay = self._next_frame_at - now
                if delay > max_wait:
                    self._wait(max_wait)
                    return None
                self._wait(delay)
            # Schedule from the due time, not from now, so the average rate holds; but never bank a backlog:
            # slots already past are counted as dropped frames instead.
            late = self._clock() - self._next_frame_at
            if late >= interval:
                self.dropped += int(late / interval)
                self._next_frame_at = self._clock()
            self._next_frame_at += interval
        t0 = time.perf_counter()
        try:
            frame = self._src.read()
        except SourceError as exc:
            self.schedule_retry(str(exc))
            return None
        except Exception as exc:  # a driver bug must not kill the daemon: treat it as a failed read
            self.schedule_retry(f"unexpected {exc.__class__.__name__}: {exc}")
            return None
        if frame is None:
            self._close_src()
            if self.loop:
                log.info("source %s ended; restarting it (source.loop = true)", self.uri)
                # A finite source that ends immediately again must not spin: reopening goes through backoff
                # only if it produced no frame at all since the last open.
                if self._since_open == 0:
                    self.schedule_retry("source ended without producing a frame")
                return None
            self.state, self.finished = "ended", True
            log.info("source %s ended", self.uri)
            return None
        self.last_read_s = time.perf_counter() - t0
        self.frames_read += 1
        self._since_open += 1
        self._fails = 0
        self.state, self.error = "ok", None
        return frame

    def stop(self) -> None:
        """Wake a waiting :meth:`poll` (used by the daemon's stop)."""
        self._stop.set()

    def close(self) -> None:
        """Close the underlying source."""
        self._close_src()
