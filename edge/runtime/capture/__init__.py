"""Frame capture: Picamera2, OpenCV (USB camera, video file, RTSP/HTTP stream), image folder, the demo.

Every source implements :class:`edge.runtime.capture.base.Source` and yields
:class:`edge.runtime.capture.base.Frame` objects; :func:`open_source` (:mod:`edge.runtime.capture.uri`) picks one from a URI, and
:class:`edge.runtime.capture.managed.ManagedSource` wraps it with the rate cap and the reopen backoff. Each
backend module is imported only when its source is opened (Picamera2 exists only on a Pi).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge.lazy import lazy_exports
from edge.runtime.capture.base import Frame, Source, SourceError, SourceFatal

if TYPE_CHECKING:
    from edge.runtime.capture.demo import DemoSource
    from edge.runtime.capture.folder import FolderSource
    from edge.runtime.capture.managed import ManagedSource
    from edge.runtime.capture.opencv import OpenCVSource
    from edge.runtime.capture.pi_camera import Picamera2Source
    from edge.runtime.capture.uri import may_appear_later, open_source

#: The public surface: other packages import these from here, not from the modules that define them.
__all__ = [
    "DemoSource",
    "FolderSource",
    "Frame",
    "ManagedSource",
    "OpenCVSource",
    "Picamera2Source",
    "Source",
    "SourceError",
    "SourceFatal",
    "may_appear_later",
    "open_source",
]

__getattr__ = lazy_exports(__name__, {
    "ManagedSource": "managed",
    "DemoSource": "demo",
    "FolderSource": "folder",
    "OpenCVSource": "opencv",
    "Picamera2Source": "pi_camera",
    "may_appear_later": "uri",
    "open_source": "uri",
})
