"""Which source a URI names, and whether one that is not there yet may come up later."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.runtime.capture.base import Source, SourceError

#: Sources that may legitimately be absent at start (a camera not plugged in yet) besides camera indexes and
#: stream URLs: these are retried with backoff instead of failing the start.
DEVICE_SOURCES = ("picamera2",)


def may_appear_later(uri: str) -> bool:
    """Whether a source that cannot be opened at start may come up later (a camera, a camera index, a stream
    URL), so the start goes on and retries it; a file, a folder or a bad name fails the start instead."""
    return uri in DEVICE_SOURCES or uri.isdigit() or "://" in uri


def open_source(uri: str, cfg: Any = None, camera_factory: Callable[[], Any] | None = None) -> Source:
    """Open the source named by ``uri`` ('demo', 'picamera2', camera index, folder, file or URL).

    Args:
        uri: What to open.
        cfg: A :class:`edge.config.SourceConfig` (sizes); None uses 640x480 and a 320x240 lores stream.
        camera_factory: Picamera2 seam for tests.
    """
    width, height = (cfg.width, cfg.height) if cfg is not None else (640, 480)
    if uri == "demo":
        from edge.runtime.capture.demo import DemoSource

        return DemoSource(width=width, height=height)
    if uri.startswith("demo:"):
        from edge.runtime.capture.demo import DemoSource

        try:
            faces = int(uri.split(":", 1)[1])
        except ValueError:
            raise SourceError(f"bad demo source {uri!r}; use 'demo' or 'demo:N' with N faces (1-3)") from None
        return DemoSource(width=width, height=height, faces=faces)
    if uri == "picamera2":
        lw, lh = (cfg.picamera_lores_width, cfg.picamera_lores_height) if cfg is not None else (320, 240)
        from edge.runtime.capture.pi_camera import Picamera2Source

        return Picamera2Source(width, height, lw, lh, camera_factory)
    if Path(uri).is_dir():
        from edge.runtime.capture.folder import FolderSource

        return FolderSource(uri)
    from edge.runtime.capture.opencv import OpenCVSource

    return OpenCVSource(uri, width, height)
