"""The retrying, rate-capped wrapper around a source that the frame loop polls.

:class:`ManagedSource` opens a source, caps the frame rate, and on failure or end reopens it with exponential
backoff, never blocking for long so the frame loop keeps pinging the watchdog and publishing status. The privacy
pause (:meth:`ManagedSource.pause`) closes the source and keeps it closed: while paused nothing opens or reads it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edge.config import SourceConfig
from edge.runtime.backoff import backoff_delay
from edge.runtime.capture.base import Frame, Source, SourceError, SourceFatal
from edge.runtime.capture.uri import may_appear_later, open_source

log = logging.getLogger(__name__)

#: The ``[source]`` defaults: the constructor's keyword defaults are these, so no setting has two defaults.
_DEFAULT = SourceConfig()


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
        max_fps: float = _DEFAULT.max_fps,
        loop: bool = _DEFAULT.loop,
        retry_initial_s: float = _DEFAULT.retry_initial_s,
        retry_max_s: float = _DEFAULT.retry_max_s,
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
        self._since_open = 0
        #: Seconds the last successful read took (the capture stage, without rate-cap waiting).
        self.last_read_s = 0.0
        #: Frame slots missed because the loop fell behind ``max_fps`` (overload).
        self.dropped = 0
        #: The privacy pause: the source stays closed until :meth:`resume`.
        self.paused = False

    @classmethod
    def from_config(cls, section: SourceConfig) -> ManagedSource:
        """The source of a ``[source]`` section (not opened yet: see :meth:`start`)."""
        return cls(lambda: open_source(section.uri, section), section.uri, section.max_fps, section.loop,
                   section.retry_initial_s, section.retry_max_s)

    def status(self) -> dict:
        """``{uri, state, error, retries}`` for the status payload."""
        return {"uri": self.uri, "state": self.state, "error": self.error, "retries": self.retries}

    def pause(self) -> None:
        """Close the source (the camera is released) and keep it closed: :meth:`poll` and :meth:`open_now` do
        nothing until :meth:`resume`. Call it from the thread that polls, or while that thread is held off."""
        self.paused = True
        self._close_src()
        self.state, self.error = "paused", None

    def resume(self) -> None:
        """End the pause: the next :meth:`poll` opens the source at once (no backoff left from before)."""
        if not self.paused:
            return
        self.paused = False
        self._fails = 0
        self._next_attempt = 0.0
        self.state = "retrying"

    def open_now(self) -> None:
        """Open the source at once; raise :class:`SourceError` if it cannot be (used to fail fast at start-up).
        Does nothing while paused: a paused device never opens its camera."""
        if self.paused:
            return
        try:
            self._src = self._opener()
        except SourceFatal as exc:
            self.state, self.error, self.finished = "failed", str(exc), True
            raise
        except SourceError:
            raise
        except Exception as exc:  # a driver or permission failure is an unusable source too, not a crash
            raise SourceError(f"cannot open {self.uri}: {exc.__class__.__name__}: {exc}") from None
        self.state, self.error = "ok", None
        self._since_open = 0

    def start(self) -> None:
        """Open the source at start-up: a source that cannot open fails the start (:class:`SourceError`), except
        one that may legitimately appear later (:func:`edge.runtime.capture.may_appear_later`), which is retried
        with backoff, visible in status. Does nothing while paused."""
        try:
            self.open_now()
        except SourceFatal:
            raise
        except SourceError as exc:
            if not may_appear_later(self.uri):
                raise
            log.warning("source %s not available yet (%s); retrying with backoff", self.uri, exc)
            self.schedule_retry(str(exc))

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
        """Return the next frame, or None if none is due within ``max_wait`` s (backoff, rate cap, end or pause)."""
        if self.finished or self.paused:
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
            except SourceFatal as exc:
                log.error("source %s can never open here: %s", self.uri, exc)
                return None
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
        src = self._src
        if src is None:  # open_now() opens nothing while paused (pause() runs on this thread or holds it off)
            return None
        t0 = time.perf_counter()
        try:
            frame = src.read()
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
