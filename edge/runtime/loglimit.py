"""Log hygiene for what the device does not control (network payloads, files in a watched folder).

An attacker who can publish to the device's topics, or a bad file in an image folder, must not be able to fill
the log (on a Pi that is journald on the SD card): a warning caused by input is logged the first time for its
key, then only counted, and the count is logged with the next occurrence at least ``interval_s`` later
("... (repeated 57 times since)"). Each argument is clipped, so one line is bounded too; with a bounded set of
keys (result codes, file names) the log grows by a bounded number of bytes per minute whatever arrives. Control
characters in arguments are escaped, so input cannot end a line and forge the next one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from edge.protocol.envelope import clip

#: Longest argument of a limited log line (a reason may quote input, itself clipped to ECHO_CHARS).
ARG_CHARS = 300
#: Line breaks and other control characters, shown escaped (\\n, \\x1b...).
_ESCAPES = {c: repr(chr(c))[1:-1] for c in (*range(0x20), 0x7F, 0x85, 0x2028, 0x2029)}


def printable(text: str, limit: int = ARG_CHARS) -> str:
    """``text`` clipped to ``limit`` characters with control characters escaped: safe inside one log line."""
    return clip(text, limit).translate(_ESCAPES)


class LogLimiter:
    """"Logged once, then counted" per key, at most one line per key per ``interval_s``.

    Args:
        logger: Where the lines go.
        interval_s: Shortest time between two lines of one key.
        max_keys: Keys remembered (the oldest is forgotten first), so many distinct keys cannot grow memory.
        clock: Monotonic seconds; a test seam.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0, max_keys: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._interval = interval_s
        self._max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        #: key -> [time of its last line, occurrences not logged since]
        self._keys: OrderedDict[str, list[float]] = OrderedDict()

    def log(self, level: int, key: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Log ``msg % args`` (each string argument made :func:`printable`) unless ``key`` was logged within
        ``interval_s``, in which case it is only counted; returns whether a line was written."""
        now = self._clock()
        with self._lock:
            state = self._keys.get(key)
            if state is not None and now - state[0] < self._interval:
                state[1] += 1
                return False
            repeated = int(state[1]) if state is not None else 0
            self._keys[key] = [now, 0]
            self._keys.move_to_end(key)
            while len(self._keys) > self._max_keys:
                self._keys.popitem(last=False)
        text = msg % tuple(printable(a) if isinstance(a, str) else a for a in args)
        if repeated:
            text += f" (repeated {repeated} times since)"
        self._log.log(level, "%s", text, exc_info=exc_info)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        """:meth:`log` at WARNING."""
        return self.log(logging.WARNING, key, msg, *args)
