"""Dependency-free systemd notification (``sd_notify``) for ``Type=notify`` units with a watchdog.

systemd passes ``NOTIFY_SOCKET`` (a filesystem path, or ``@name`` for an abstract socket) and, when
``WatchdogSec=`` is set, ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``). Outside systemd both are absent and every call
is a cheap no-op, so the daemon can call :meth:`Notifier.watchdog` from its frame loop unconditionally.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Send ``READY=1``, ``STATUS=...``, ``WATCHDOG=1`` and ``STOPPING=1`` to systemd when it listens.

    Args:
        environ: Environment to read (defaults to ``os.environ``); tests pass their own.
        clock: Monotonic clock in seconds (injectable for tests).
    """

    def __init__(self, environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        env = os.environ if environ is None else environ
        self._clock = clock
        self._address = self._parse_address(env.get("NOTIFY_SOCKET", ""))
        self._sock: socket.socket | None = None
        self.watchdog_interval_s = self._parse_watchdog(env)
        self._last_ping = float("-inf")
        self._progressing = True

    @staticmethod
    def _parse_address(raw: str) -> str | bytes | None:
        if not raw:
            return None
        if raw.startswith("@"):
            # Abstract namespace: the leading '@' stands for a NUL byte.
            return b"\0" + raw[1:].encode()
        if raw.startswith("/"):
            return raw
        log.warning("ignoring NOTIFY_SOCKET=%r: not a path or abstract socket (vsock is not supported)", raw)
        return None

    @staticmethod
    def _parse_watchdog(env: Mapping[str, str]) -> float | None:
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if not usec:
            return None
        if pid and pid.isdigit() and int(pid) != os.getpid():
            # The watchdog belongs to another process (e.g. we are a child of the service's main process).
            return None
        try:
            value = int(usec)
        except ValueError:
            log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
            return None
        return value / 1e6 if value > 0 else None

    @property
    def enabled(self) -> bool:
        """Whether a notification socket is configured."""
        return self._address is not None

    def notify(self, message: str) -> bool:
        """Send one raw notification (e.g. ``"READY=1"``); return whether it was sent."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), self._address)
            return True
        except OSError as exc:
            # systemd not listening any more must never take the daemon down.
            log.debug("sd_notify %r failed: %s", message, exc)
            return False

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd start-up is complete (``READY=1``), with an optional status line."""
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> bool:
        """Set the free-form status line shown by ``systemctl status``."""
        return self.notify(f"STATUS={text}")

    def stopping(self) -> bool:
        """Tell systemd a graceful stop has begun."""
        return self.notify("STOPPING=1")

    def watchdog(self, force: bool = False) -> bool:
        """Ping the watchdog, at most twice per watchdog interval (call it every frame).

        Returns whether a ping was sent.
        """
        if self.watchdog_interval_s is None or self._address is None:
            return False
        now = self._clock()
        # systemd recommends pinging at half the interval; this keeps the per-frame cost to a clock read.
        if not force and now - self._last_ping < self.watchdog_interval_s / 2:
            return False
        self._last_ping = now
        return self.notify("WATCHDOG=1")

    def watchdog_while(self, progressing: bool) -> bool:
        """:meth:`watchdog`, but only while the publisher makes ``progressing``: a dead or hung publisher starves
        the watchdog, so systemd restarts the service (where ``WatchdogSec=`` is set). Logs each change, once."""
        if progressing != self._progressing:
            self._progressing = progressing
            if progressing:
                log.info("the publisher makes progress again; feeding the systemd watchdog again")
            else:
                log.error("the publisher thread died or hangs; no longer feeding the systemd watchdog, so systemd "
                          "restarts the service (where WatchdogSec= is set)")
        return progressing and self.watchdog()

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
