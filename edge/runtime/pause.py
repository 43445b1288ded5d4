"""The privacy pause's persisted half: a small file in the state folder that says "paused" across restarts.

While the file exists the daemon starts paused and never opens the camera; only the ``resume`` command removes
it. A file that exists but cannot be read still means paused: when in doubt, the camera stays off.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: The file in the state folder; its presence is the pause.
PAUSE_FILE = "privacy_pause.json"


class PauseFile:
    """Whether the device is paused, persisted in ``<state dir>/privacy_pause.json``.

    Args:
        state_dir: The device's state folder.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / PAUSE_FILE
        #: Whether capture is paused.
        self.paused = self.path.exists() or self.path.is_symlink()
        #: UNIX time the pause began (None when not paused or unknown).
        self.since: float | None = None
        if self.paused:
            try:
                self.since = float(json.loads(self.path.read_text(encoding="utf-8"))["since"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("%s is unreadable (%s); staying paused (send 'resume' to end the pause)", self.path, exc)
            log.info("privacy pause is on (%s): capture stays off until a 'resume' command", self.path)

    def set(self, paused: bool) -> str | None:
        """Pause or resume and persist it; return None, or what went wrong persisting it (the new state holds in
        memory anyway: a pause must never wait for the disk)."""
        self.paused = paused
        self.since = time.time() if paused else None
        try:
            if paused:
                tmp = self.path.with_name(self.path.name + ".tmp")
                tmp.write_text(json.dumps({"paused": True, "since": self.since}) + "\n", encoding="utf-8")
                tmp.replace(self.path)
            else:
                self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.error("cannot %s %s (%s)", "write" if paused else "remove", self.path, exc)
            return f"cannot {'write' if paused else 'remove'} {self.path} ({exc.strerror or exc})"
        return None
