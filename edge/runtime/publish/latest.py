"""The retained plain-value topics (``<prefix>/<device>/state/...``): only the newest value of each one matters.

Unlike the JSON kinds these are not history, so they bypass the outbox: a value set while the broker is away
replaces the one before it instead of queueing behind it, and every new session sends the current value of every
topic again (a broker that lost its retained store, or a value whose PUBACK never came, is put right at once).
The outbox's order and seq guarantees are untouched: nothing here takes a seq or an outbox slot.
"""

from __future__ import annotations

import threading


class LatestValues:
    """Thread-safe ``topic -> newest payload`` with the set of topics whose value is still to be sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, bytes] = {}
        # Insertion-ordered, so values go out in the order they were set.
        self._due: dict[str, None] = {}

    def set(self, topic: str, payload: bytes | str) -> None:
        """Make ``payload`` the value of ``topic`` and send it with the next network-loop iteration (even when it
        equals the value before: a re-publish refreshes Home Assistant's ``expire_after``)."""
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        with self._lock:
            self._values[topic] = data
            self._due.pop(topic, None)
            self._due[topic] = None

    def take_due(self) -> list[tuple[str, bytes]]:
        """The ``(topic, payload)`` pairs to send now; they count as sent."""
        with self._lock:
            out = [(t, self._values[t]) for t in self._due]
            self._due.clear()
            return out

    def all_due(self) -> None:
        """A new session: every known value is to be sent again."""
        with self._lock:
            self._due = dict.fromkeys(self._values)

    def get(self, topic: str) -> bytes | None:
        """The current value of ``topic`` (None if never set)."""
        with self._lock:
            return self._values.get(topic)
