"""The local debug preview: the newest frame, annotated, written to a folder on the device.

Off unless ``privacy.debug_preview_dir`` is set; never published. One rolling file (``preview.jpg``): a preview
is for looking at now, not an archive of faces.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edge.config import ConfigError
from edge.imaging import require_opencv
from edge.runtime.capture.base import Frame
from edge.runtime.track import Track

log = logging.getLogger(__name__)


class PreviewWriter:
    """Writes ``<folder>/preview.jpg`` with each track's box, id and emotion.

    Args:
        folder: Where the preview goes (created when missing).

    Raises:
        ConfigError: OpenCV (which draws and encodes the preview) is not installed.
    """

    def __init__(self, folder: Path) -> None:
        # write() draws with OpenCV: refuse the setting now, not on every frame.
        require_opencv("privacy.debug_preview_dir (the debug preview)", ConfigError)
        self.folder = Path(folder)
        self._error: str | None = None
        log.warning("privacy.debug_preview_dir is set: annotated frames are written to %s (local only)", self.folder)

    def write(self, frame: Frame, tracks: Sequence[Track], emotion: Callable[[np.ndarray], tuple[str, float]]) -> None:
        """Annotate and write one frame; a failure is logged once until it changes, never raised."""
        import cv2

        try:
            img = frame.image.copy() if frame.image.ndim == 3 else cv2.cvtColor(frame.image, cv2.COLOR_GRAY2BGR)
            for t in tracks:
                x, y, w, h = (int(round(v)) for v in t.box)
                label, conf = emotion(t.probs)
                cv2.rectangle(img, (x, y), (x + w, y + h), (0, 255, 0), 2)
                cv2.putText(img, f"#{t.track_id} {label} {conf:.2f}", (x, max(12, y - 4)),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1)
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / "preview.tmp.jpg"
            cv2.imwrite(str(tmp), img)
            tmp.replace(self.folder / "preview.jpg")
        except Exception as exc:
            # Once per distinct failure: a read-only folder would otherwise log on every frame.
            if str(exc) != self._error:
                log.warning("debug preview to %s failed: %s (logged once until it changes)", self.folder, exc)
                self._error = str(exc)
        else:
            if self._error is not None:
                log.info("debug preview to %s works again", self.folder)
                self._error = None
