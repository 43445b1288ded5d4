"""What the frame loop publishes through: the one :class:`Sink` protocol and its error."""

from __future__ import annotations

from typing import Any, Protocol

OUTBOX_FILE = "outbox.db"


class SinkError(Exception):
    """A sink cannot be set up (bad TLS files, closed sink); the message says what to fix."""


class Sink(Protocol):
    """What the frame loop publishes through."""

    def publish(self, kind: str, body: dict[str, Any]) -> int:
        """Wrap ``body`` in the envelope, queue it, return its seq; never blocks on the network."""
        ...

    def close(self, timeout: float = 5.0) -> None:
        """Flush what can be flushed within ``timeout``, publish offline status/availability, disconnect."""
        ...


def _offline_copy(status: dict[str, Any]) -> dict[str, Any]:
    # outbox and mqtt are dropped so that the sink fills them in fresh.
    body = {k: v for k, v in status.items() if k not in ("mqtt", "outbox")}
    body["state"] = "offline"
    return body
