"""The device's subscriptions: callbacks per topic filter, and which ones the broker acknowledged this session.

Kept by :class:`edge.runtime.publish.connection.MqttConnection`: every session subscribes to all of them again, and
:meth:`Subscriptions.wait_all_acked` lets a caller wait until the broker confirmed them (messages sent to a topic
before its SUBACK may be lost).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import cast

import paho.mqtt.client as mqtt

from edge.runtime.publish.base import MessageCallback, PropertiesCallback

log = logging.getLogger(__name__)


class Subscriptions:
    """Thread-safe topic filter -> callback map with this session's SUBACK bookkeeping."""

    def __init__(self) -> None:
        # A Condition, so wait_all_acked() sleeps until a SUBACK arrives instead of polling.
        self._cond = threading.Condition()
        self._callbacks: dict[str, MessageCallback | PropertiesCallback] = {}
        self._with_props: set[str] = set()
        # Topics the broker acknowledged (SUBACK) in this session, and the SUBSCRIBEs still waiting for one.
        self._acked: set[str] = set()
        self._mids: dict[int, list[str]] = {}

    def add(self, topic: str, callback: MessageCallback | PropertiesCallback, with_properties: bool) -> None:
        """Register (or replace) the callback of ``topic``."""
        with self._cond:
            self._callbacks[topic] = callback
            if with_properties:
                self._with_props.add(topic)
            else:
                self._with_props.discard(topic)

    def topics(self) -> list[str]:
        """Every topic filter subscribed to."""
        with self._cond:
            return list(self._callbacks)

    def sent(self, mid: int, topics: list[str]) -> None:
        """A SUBSCRIBE for ``topics`` went out with message id ``mid``."""
        with self._cond:
            self._mids[mid] = topics

    def acknowledged(self, mid: int, reason_codes: list) -> list[tuple[str, object]]:
        """The SUBACK of ``mid`` arrived: record the granted topics, return the refused ``(topic, code)`` pairs."""
        refused = []
        with self._cond:
            for sub, code in zip(self._mids.pop(mid, []), reason_codes, strict=False):
                if code.is_failure:
                    refused.append((sub, code))
                else:
                    self._acked.add(sub)
            self._cond.notify_all()
        return refused

    def forget_session(self) -> None:
        """The session ended: nothing is acknowledged any more."""
        with self._cond:
            self._acked.clear()
            self._mids.clear()

    def wait_all_acked(self, connected: Callable[[], bool], timeout: float) -> bool:
        """Block until ``connected()`` and every topic is acknowledged (True), or ``timeout`` passed (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: connected() and set(self._callbacks) <= self._acked, timeout)

    def dispatch(self, msg: mqtt.MQTTMessage) -> None:
        """Run the callback of every filter that matches ``msg`` (a failing callback is logged, never raised)."""
        with self._cond:
            subs = [(sub, cb, sub in self._with_props) for sub, cb in self._callbacks.items()]
        for sub, callback, with_props in subs:
            if mqtt.topic_matches_sub(sub, msg.topic):
                try:
                    if with_props:
                        cast(PropertiesCallback, callback)(msg.topic, bytes(msg.payload), getattr(msg, "properties", None))
                    else:
                        cast(MessageCallback, callback)(msg.topic, bytes(msg.payload))
                except Exception:
                    log.exception("handler for MQTT topic %s failed", msg.topic)
