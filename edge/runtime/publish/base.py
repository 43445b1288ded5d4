"""The two seams of publishing: :class:`Sink`, all the frame loop needs, and :class:`BrokerSession`, what the
features that talk to a broker need (Home Assistant discovery, the command channel, model pushes).

Every sink is a :class:`Sink`; only the MQTT sink also has a broker session (``MqttSink.session``). Whoever needs a
broker is handed a :class:`BrokerSession` or None (see :func:`edge.runtime.publish.open_publisher`), never a sink
to ask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

if TYPE_CHECKING:  # paho is loaded by the MQTT sink only: a stdout run does without it
    from paho.mqtt.properties import Properties

#: The device's SQLite file in its state folder: the outbox and the persisted seq counter.
OUTBOX_FILE = "outbox.db"

MessageCallback = Callable[[str, bytes], None]
#: A callback that also gets the message's MQTT 5 properties (None on MQTT 3.1.1).
PropertiesCallback = Callable[[str, bytes, "Properties | None"], None]
#: ``on_oversized(topic, size)``: a message above the subscription's ``max_bytes`` was dropped unread.
OversizedCallback = Callable[[str, int], None]


class SinkError(Exception):
    """A sink cannot be set up (bad TLS files, closed sink); the message says what to fix."""


class _OutboxStats(TypedDict):
    #: Messages not yet acknowledged (in the outbox).
    pending: int
    #: Messages dropped by the outbox bound since the outbox was created.
    dropped: int


class SinkStats(_OutboxStats, total=False):
    """The sink's own figures, which the daemon puts into its status body."""

    #: The broker connection (``connected``, ``refused``, ``error``, ``protocol``); only a sink with a broker has one.
    mqtt: dict[str, Any]


class Sink(Protocol):
    """Where the frame loop's payloads go (MQTT through the outbox, or JSON lines on stdout)."""

    def publish(self, kind: str, body: dict[str, Any]) -> int:
        """Wrap ``body`` in the envelope, queue it, return its seq; never blocks on the network. The body goes out
        as given (the daemon builds status bodies whole, with :meth:`stats` in them)."""
        ...

    def publish_state(self, leaf: str, value: str) -> None:
        """Set the retained plain-value topic ``<prefix>/<device>/<leaf>`` (:data:`edge.protocol.topics.STATE_TOPICS`);
        only the newest value of each is kept and sent, outside the outbox. Without a broker nothing is sent (the
        JSON lines carry the same figures)."""
        ...

    def stats(self) -> SinkStats:
        """The sink's own figures right now."""
        ...

    def alive(self) -> bool:
        """Whether the sink's own threads run and make progress (the daemon feeds the systemd watchdog only then)."""
        ...

    def close(self, timeout: float = 5.0) -> None:
        """Flush what can be flushed within ``timeout``, say availability offline (MQTT), and stop."""
        ...


class BrokerSession(Protocol):
    """The broker behind an MQTT sink: what discovery, commands and model pushes use besides the outbox."""

    @property
    def connected(self) -> bool:
        """Whether a broker session is up right now."""
        ...

    def publish(self, kind: str, body: dict[str, Any]) -> int:
        """The sink's :meth:`Sink.publish` (answers and push results are ``events`` in the device's sequence)."""
        ...

    def publish_raw(self, topic: str, payload: bytes | str, retain: bool = False, qos: int = 1,
                    properties: Properties | None = None) -> None:
        """Publish without envelope or outbox (discovery configs, MQTT 5 responses); held in memory while
        disconnected. ``properties`` (MQTT 5) are dropped on an MQTT 3.1.1 session."""
        ...

    def subscribe(self, topic: str, callback: MessageCallback | PropertiesCallback, *, with_properties: bool = False,
                  max_bytes: int | None = None, on_oversized: OversizedCallback | None = None,
                  gate: Callable[[str], bool] | None = None) -> None:
        """Subscribe (QoS 1) now and after every reconnect; ``callback(topic, payload)`` runs on the network thread
        (``callback(topic, payload, properties)`` with ``with_properties``). A payload above ``max_bytes``
        (default ``mqtt.max_command_bytes``) is dropped unread and reported to ``on_oversized(topic, size)``.
        ``gate(topic)``, for a topic without wildcards, is asked before a message is parsed: False skips it unread."""
        ...

    def add_connect_hook(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` on the network thread after every successful (re)connect, and at once if connected now."""
        ...
