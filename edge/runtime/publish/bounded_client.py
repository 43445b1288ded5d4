"""A paho client that never holds an incoming message above its topic's size cap in memory.

paho reads a whole PUBLISH packet into one buffer before anyone sees it, so a single 40 MB message on the
command topic would cost the daemon 40 MB and more in copies, whatever the handler then does. This client reads
a PUBLISH's header (topic and packet id, a few bytes) first, asks ``size_limit(topic)`` how large its payload
may be, and streams a larger payload off the socket in small chunks that it throws away. The message then
reaches :attr:`BoundedClient.on_oversized` ``(topic, size)`` instead of ``on_message``, and is acknowledged
as usual, so the broker does not send it again. Memory stays at one chunk whatever the sender sends.

It also reads the socket in large chunks (:data:`READ_CHUNK`) and parses every packet they hold in one
:meth:`BoundedClient.loop_read` (within :data:`READ_BUDGET_S`): paho alone reads a packet with three or four
``recv`` calls and only as many packets per loop as it has messages in flight, so a flood of small inbound
messages (commands) would hold up the PUBACKs queued behind them, and with them every outbound publish. A
PUBLISH that :attr:`BoundedClient.admit` refuses (the command rate is used up) is skipped whole, straight from
that buffer, before paho parses it (a QoS 1 one is still acknowledged): a flood costs a few microseconds per
message instead of paho's full decode.

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
import time
from collections.abc import Callable
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from edge.runtime.loglimit import LogLimiter
from edge.runtime.publish.base import OversizedCallback

log = logging.getLogger(__name__)

#: Bytes read and discarded at once from an oversized payload.
DISCARD_CHUNK = 64 * 1024
#: Bytes asked of the socket at once; paho's small reads are served from them.
READ_CHUNK = 64 * 1024
#: Longest time one :meth:`BoundedClient.loop_read` parses buffered packets before the caller gets to write.
READ_BUDGET_S = 0.05
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
    #: ``admit(topic) -> bool``, asked for each inbound PUBLISH before it is parsed: False skips it unread.
    admit: Callable[[str], bool] | None = None
    #: Bytes read from the socket and not yet handed to paho (from offset ``_rpos``).
    _rbuf: bytes = b""
    _rpos: int = 0

    def buffered(self) -> bool:
        """Whether bytes read from the socket wait to be parsed (then :meth:`loop_read` needs no select)."""
        return self._rpos < len(self._rbuf)

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Parse packets until the socket has no more (or :data:`READ_BUDGET_S` passed); see the module doc.
        Like paho's, but not limited to as many packets as there are messages in flight."""
        deadline = time.monotonic() + READ_BUDGET_S
        while time.monotonic() < deadline:
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            self._skim()
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                break
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _skim(self) -> None:
        """Skip the complete PUBLISH packets at the head of the read buffer that :attr:`admit` refuses."""
        if self.admit is None or self._in_packet["command"] != 0:
            return
        buf, pos, end = self._rbuf, self._rpos, len(self._rbuf)
        while pos < end:
            command = buf[pos]
            qos = (command & 0x06) >> 1
            if command & 0xF0 != _PUBLISH or qos > 1:
                break
            length, shift, i = 0, 0, pos + 1
            while i < end and i < pos + 5:
                length |= (buf[i] & 0x7F) << shift
                shift += 7
                i += 1
                if not buf[i - 1] & 0x80:
                    break
            else:
                break  # the length is not all in the buffer yet (or is malformed: paho reports that)
            if buf[i - 1] & 0x80 or i + length > end or length < 2:
                break  # paho reads the rest of it
            topic_end = i + 2 + (buf[i] << 8 | buf[i + 1])
            if topic_end + 2 * qos > i + length or self.admit(bytes(buf[i + 2:topic_end]).decode("utf-8", "replace")):
                break
            if qos:
                self._send_puback(buf[topic_end] << 8 | buf[topic_end + 1])
            pos = i + length
        self._rpos = pos

    def _read(self, bufsize: int) -> bytes:
        """Up to ``bufsize`` bytes from the read buffer, refilled from the socket with one large read."""
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(max(bufsize, READ_CHUNK))
            if len(data) <= bufsize:
                return data
            self._rbuf, self._rpos = data, 0
        out = self._rbuf[self._rpos:self._rpos + bufsize]
        self._rpos += len(out)
        if self._rpos >= len(self._rbuf):
            self._rbuf, self._rpos = b"", 0
        return out

    def _sock_recv(self, bufsize: int) -> bytes:
        # paho's TypedDict does not know the two keys this class keeps in the packet.
        packet = cast("dict[str, Any]", self._in_packet)
        if self.size_limit is None or not packet["have_remaining"] or packet["command"] & 0xF0 != _PUBLISH:
            return self._read(bufsize)
        if not packet.get(_DECIDED):
            have, header = len(packet["packet"]), self._header_size(packet)
            if have < header:  # read no further than the header, so nothing of the payload is buffered yet
                return self._read(min(bufsize, header - have))
            packet[_DECIDED] = True
            buf = packet["packet"]
            topic = bytes(buf[2:2 + (buf[0] << 8 | buf[1])]).decode("utf-8", "replace")
            size = packet["remaining_length"] - header
            if size > self.size_limit(topic):
                packet[_DROPPED] = size
        if _DROPPED not in packet:
            return self._read(bufsize)
        data = self._read(min(bufsize, DISCARD_CHUNK))
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
