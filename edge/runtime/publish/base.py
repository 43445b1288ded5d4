"""What the frame loop and its extensions publish through: the one :class:`Sink` protocol and its error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

#: The device's SQLite file in its state folder: the outbox and the persisted seq counter.
OUTBOX_FILE = "outbox.db"

MessageCallback = Callable[[str, bytes], None]
#: ``on_oversized(topic, size)``: a message above the subscription's ``max_bytes`` was dropped unread.
OversizedCallback = Callable[[str, int], None]
#: Runs a command; may return the body of its ``command`` event (for an MQTT 5 response topic).
CommandHandler = Callable[[dict[str, Any]], "dict[str, Any] | None"]


class SinkError(Exception):
    """A sink cannot be set up (bad TLS files, closed sink); the message says what to fix."""


class Sink(Protocol):
    """Where payloads go. Both sinks (MQTT, stdout) implement all of it; without a broker
    (:attr:`has_broker` false) the broker-only calls do nothing."""

    #: Whether a broker is behind this sink (Home Assistant discovery and model pushes need one).
    has_broker: bool

    @property
    def connected(self) -> bool:
        """Whether a broker session is up right now."""
        ...

    def alive(self) -> bool:
        """Whether the sink's own threads run and make progress (the daemon feeds the systemd watchdog only then)."""
        ...

    def publish(self, kind: str, body: dict[str, Any]) -> int:
        """Wrap ``body`` in the envelope, queue it, return its seq; never blocks on the network."""
        ...

    def publish_raw(self, topic: str, payload: bytes | str, retain: bool = False, qos: int = 1) -> None:
        """Publish without envelope or outbox (discovery configs)."""
        ...

    def publish_state(self, leaf: str, value: str) -> None:
        """Set the retained plain-value topic ``<prefix>/<device>/<leaf>`` (:data:`edge.protocol.topics.STATE_TOPICS`);
        only the newest value of each is kept and sent, outside the outbox."""
        ...

    def subscribe(self, topic: str, callback: MessageCallback, max_bytes: int | None = None,
                  on_oversized: OversizedCallback | None = None) -> None:
        """Subscribe now and after every reconnect; ``callback(topic, payload)`` runs on the network thread. A
        payload above ``max_bytes`` (default: ``mqtt.max_command_bytes``) is dropped unread and reported to
        ``on_oversized(topic, size)`` instead."""
        ...

    def add_connect_hook(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` after every successful (re)connect."""
        ...

    def set_command_handler(self, handler: CommandHandler) -> None:
        """Run ``handler(command dict)`` for each command that arrives (on a worker thread)."""
        ...

    def stats(self) -> dict[str, int]:
        """``{"pending": ..., "dropped": ...}`` of the outbox."""
        ...

    def close(self, timeout: float = 5.0) -> None:
        """Flush what can be flushed within ``timeout``, publish offline status/availability, disconnect."""
        ...


def offline_copy(status: dict[str, Any]) -> dict[str, Any]:
    """The last status body with state ``offline``, sent on close (the sink fills in outbox and mqtt afresh)."""
    body = {k: v for k, v in status.items() if k not in ("mqtt", "outbox")}
    body["state"] = "offline"
    body["fps"] = 0.0  # a stopped device processes nothing
    return body
