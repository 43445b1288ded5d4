"""A token bucket: at most ``rate`` events per second on average, bursts of up to ``burst``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """Admits an event when a token is left; tokens refill at ``rate`` per second up to ``burst``.

    Args:
        rate: Tokens added per second.
        burst: Most tokens held (default: ``rate``, at least 1): how many events pass at once after a quiet time.
        clock: Monotonic seconds; a test seam.
    """

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = max(1.0, rate if burst is None else burst)
        self._tokens = self._burst
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Use one token if there is one (True), else False; never blocks."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False
