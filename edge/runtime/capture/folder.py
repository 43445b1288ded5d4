"""The images of a folder as frames."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from edge.imaging import require_opencv
from edge.runtime.capture.base import IMAGE_SUFFIXES, Frame, SourceError, SourceFatal
from edge.runtime.loglimit import LogLimiter

log = logging.getLogger(__name__)
# A looping folder meets the same bad file on every pass: say so once per file, then count (see loglimit).
_skipped = LogLimiter(log)


class FolderSource:
    """The images of a folder, in file-name order (an unreadable file is skipped, with a warning the first time
    and then a count at most once a minute)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        # read() decodes with OpenCV: refuse the folder now rather than at the first frame.
        require_opencv(f"image folder {self.folder}", SourceFatal)
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
                _skipped.warning(str(path), "skipping %s: not a readable image", str(path))
                continue
            frame = Frame(image, self._index, time.time())
            self._index += 1
            return frame
        return None

    def close(self) -> None:
        """Nothing to release."""
