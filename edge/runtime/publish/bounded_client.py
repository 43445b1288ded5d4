"""A paho client that never holds an incoming message above its topic's size cap in memory.

paho reads a whole PUBLISH packet into one buffer before anyone sees it, so a single 40 MB message on the
command topic would cost the daemon 40 MB and more in copies, whatever the handler then does. This client reads
a PUBLISH's header (topic and packet id, a few bytes) first, asks ``size_limit(topic)`` how large its payload
may be, and streams a larger payload off the socket in small chunks that it throws away. The message then
reaches :attr:`BoundedClient.on_oversized` ``(topic, size)`` instead of ``on_message``, and is acknowledged
as usual, so the broker does not send it again. Memory stays at one chunk whatever the sender sends.

It hooks paho's private ``_sock_recv`` (the one place paho reads the socket) and ``_handle_on_message``. MQTT
3.1.1 and 5: an MQTT 5 header also carries properties, which are counted as part of the payload here (the
remaining length after topic and packet id) and dropped with it; the bytes paho finally parses stand in as an
empty property list and a zero payload. QoS 0 and 1 only (the device subscribes with QoS 1, so the broker sends
nothing at QoS 2, whose delivery paho completes on a later packet). pyproject.toml pins paho
2.x, and the tests send real oversized messages through a real broker, so a paho change that breaks the hook
fails them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, cast

import paho.mqtt.client as mqtt

from edge.runtime.loglimit import LogLimiter
from edge.runtime.publish.base import OversizedCallback

log = logging.getLogger(__name__)

#: Bytes read and discarded at once from an oversized payload.
DISCARD_CHUNK = 64 * 1024
_PUBLISH = 0x30
# Keys this client adds to paho's per-packet state; paho makes a fresh dict for each packet, so they reset.
_DECIDED = "edge_decided"
_DROPPED = "edge_dropped"


class BoundedClient(mqtt.Client):
    """:class:`paho.mqtt.client.Client` with a per-topic cap on incoming payloads.

    Set :attr:`size_limit` and :attr:`on_oversized` after construction (both None: plain paho).
    """

    #: ``size_limit(topic) -> bytes`` the payload of a message on ``topic`` may have.
    size_limit: Callable[[str], int] | None = None
    #: ``on_oversized(topic, size)``, called on the network thread for each message dropped unread.
    on_oversized: Callable[[str, int], None] | None = None

    def _sock_recv(self, bufsize: int) -> bytes:
        # paho's TypedDict does not know the two keys this class keeps in the packet.
        packet = cast("dict[str, Any]", self._in_packet)
        if self.size_limit is None or not packet["have_remaining"] or packet["command"] & 0xF0 != _PUBLISH:
            return super()._sock_recv(bufsize)
        if not packet.get(_DECIDED):
            have, header = len(packet["packet"]), self._header_size(packet)
            if have < header:  # read no further than the header, so nothing of the payload is buffered yet
                return super()._sock_recv(min(bufsize, header - have))
            packet[_DECIDED] = True
            buf = packet["packet"]
            topic = bytes(buf[2:2 + (buf[0] << 8 | buf[1])]).decode("utf-8", "replace")
            size = packet["remaining_length"] - header
            if size > self.size_limit(topic):
                packet[_DROPPED] = size
        if _DROPPED not in packet:
            return super()._sock_recv(bufsize)
        data = super()._sock_recv(min(bufsize, DISCARD_CHUNK))
        if len(data) <= 1:
            return data  # b"" is paho's "connection lost"
        # paho appends what this returns and counts it off the packet: count off the rest here, and hand it one
        # zero byte instead (MQTT 5: a zero property length first; then payload bytes nobody reads).
        packet["to_process"] -= len(data) - 1
        return b"\x00"

    @staticmethod
    def _header_size(packet: dict[str, Any]) -> int:
        """Bytes of the PUBLISH variable header: topic length, topic, and the packet id when QoS > 0."""
        buf = packet["packet"]
        if len(buf) < 2:
            return 2
        qos = (packet["command"] & 0x06) >> 1
        return min(packet["remaining_length"], 2 + (buf[0] << 8 | buf[1]) + (2 if qos else 0))

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        size = cast("dict[str, Any]", self._in_packet).get(_DROPPED)
        if size is None:
            super()._handle_on_message(message)
        elif self.on_oversized is not None:
            self.on_oversized(message.topic, size)


class SizeCaps:
    """The size cap of each subscription, and who hears of a message dropped for exceeding it.

    Args:
        default_bytes: The cap of a subscription that sets none, and of a message no subscription matches.
    """

    def __init__(self, default_bytes: int) -> None:
        self._default = default_bytes
        self._lock = threading.Lock()
        self._caps: dict[str, tuple[int, OversizedCallback | None]] = {}
        self._dropped_log = LogLimiter(log)

    def add(self, subscription: str, max_bytes: int | None, on_oversized: OversizedCallback | None) -> None:
        """Cap payloads on ``subscription`` (a topic filter) at ``max_bytes`` (None: the default); a larger one
        goes to ``on_oversized(topic, size)`` (None: a rate-limited warning)."""
        with self._lock:
            self._caps[subscription] = (max_bytes or self._default, on_oversized)

    def attach(self, client: BoundedClient) -> None:
        """Make ``client`` enforce these caps."""
        client.size_limit = self.limit
        client.on_oversized = self.dropped

    def _matching(self, topic: str) -> list[tuple[int, OversizedCallback | None]]:
        with self._lock:
            caps = list(self._caps.items())
        return [cap for sub, cap in caps if mqtt.topic_matches_sub(sub, topic)]

    def limit(self, topic: str) -> int:
        """The largest payload a subscription matching ``topic`` takes."""
        return max((limit for limit, _ in self._matching(topic)), default=self._default)

    def dropped(self, topic: str, size: int) -> None:
        """A ``size``-byte message on ``topic`` was dropped unread: tell its subscriptions (network thread)."""
        for limit, callback in self._matching(topic):
            try:
                if callback is not None:
                    callback(topic, size)
                else:
                    self._dropped_log.warning(f"oversized {topic}", "dropped a %d-byte message on %s unread: above "
                                              "the %d-byte limit", size, topic, limit)
            except Exception:
                log.exception("oversized-message handler for MQTT topic %s failed", topic)
