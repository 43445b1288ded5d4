"""The outbox pump: keep up to ``max_inflight`` outbox messages in flight, in seq order, and remove each one from
the outbox only once its PUBACK arrived.

It runs on the connection's network thread (:class:`edge.runtime.publish.connection.MqttConnection` calls it as
its session worker), so it needs no lock of its own: the outbox is thread-safe. On an MQTT 5 session a message
of a kind with an expiry (``faces``: ``mqtt.faces_expiry_s``) carries the Message Expiry Interval, so the broker
discards it for subscribers that do not take it in time; the outbox still hands every message to the broker in
order.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.runtime.publish.outbox import Outbox

log = logging.getLogger(__name__)

#: Sessions in a row that may end with the same oldest message unacknowledged (and nothing acknowledged at all)
#: before that message is taken for one the broker refuses (it drops the connection on a malformed packet) and
#: dropped, so it cannot block the queue for good.
MAX_SEND_TRIES = 5


class OutboxPump:
    """Sends the outbox over the current session.

    Args:
        outbox: The disk outbox.
        max_inflight: Messages sent and awaiting their PUBACK at once (keeps order and memory bounded).
        expiry_s: MQTT 5 message expiry in seconds per payload kind (kinds not named, or 0, never expire).
    """

    def __init__(self, outbox: Outbox, max_inflight: int, expiry_s: Mapping[str, int] | None = None) -> None:
        self.outbox = outbox
        self.max_inflight = max_inflight
        # Built once: paho packs the properties at each publish, so one object serves every message of a kind.
        self._expiry: dict[str, Properties] = {}
        for kind, seconds in (expiry_s or {}).items():
            if seconds > 0:
                props = Properties(PacketTypes.PUBLISH)
                props.MessageExpiryInterval = int(seconds)
                self._expiry[kind] = props
        #: seq -> paho's handle of each message sent in this session and not yet acknowledged.
        self.in_flight: OrderedDict[int, mqtt.MQTTMessageInfo] = OrderedDict()
        self._cursor = 0
        #: The oldest message of the sessions that ended without any PUBACK, and how many such sessions in a row.
        self._stuck: tuple[int, int] = (0, 0)
        self._acked_in_session = False

    def tick(self, client: mqtt.Client) -> None:
        """Acknowledge what the broker confirmed, then fill the in-flight window from the outbox."""
        self.settle()
        room = self.max_inflight - len(self.in_flight)
        if room <= 0:
            return
        v5 = client.protocol == mqtt.MQTTv5
        for msg in self.outbox.peek(self._cursor, room):
            try:
                info = client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain,
                                      properties=self._expiry.get(msg.kind) if v5 else None)
            except ValueError as exc:  # paho refuses it (a topic MQTT does not allow, a payload too large)
                self._refused(msg.seq, msg.topic, str(exc))
                continue
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break  # the connection is going down; the next session resends from the outbox
            self.in_flight[msg.seq] = info
            self._cursor = msg.seq

    def settle(self) -> None:
        """Remove the acknowledged messages from the outbox."""
        done = [seq for seq, info in self.in_flight.items() if info.is_published()]
        if done:
            self._acked_in_session = True
            self.outbox.ack(done)
            for seq in done:
                del self.in_flight[seq]

    def reset(self) -> None:
        """The session ended: what was in flight is resent, in order, by the next one, and what waited in memory
        long enough goes to disk now (no broker will acknowledge it soon; the flusher takes the rest).

        A message that was the oldest in flight when :data:`MAX_SEND_TRIES` sessions in a row ended without a
        single PUBACK is dropped (counted in ``dropped``): the broker refuses it."""
        if self.in_flight and not self._acked_in_session:
            head = next(iter(self.in_flight))
            tries = self._stuck[1] + 1 if self._stuck[0] == head else 1
            self._stuck = (head, tries)
            if tries >= MAX_SEND_TRIES:
                self._refused(head, "", f"the broker ended {tries} sessions in a row without acknowledging it")
        elif self._acked_in_session:
            self._stuck = (0, 0)
        self._acked_in_session = False
        self.in_flight.clear()
        self._cursor = 0
        self.outbox.spill_stale()

    def _refused(self, seq: int, topic: str, why: str) -> None:
        """Drop a message the broker (or paho) will not take, so it never blocks the ones after it."""
        log.error("dropping message seq %d%s: %s; counted in status.outbox.dropped", seq,
                  f" to {topic[:80]!r}" if topic else "", why)
        self.outbox.discard(seq)
        self._stuck = (0, 0)
