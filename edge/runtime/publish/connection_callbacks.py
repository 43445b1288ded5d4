"""The paho callbacks of :class:`edge.runtime.publish.connection.MqttConnection` (a mixin; all on its network
thread): CONNACK (with the fallback to MQTT 3.1.1), the connection's end, SUBACKs and incoming messages."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion

from edge.protocol.broker import BrokerSettings
from edge.runtime.publish.latest import LatestValues
from edge.runtime.publish.subscriptions import Subscriptions

log = logging.getLogger("edge.runtime.publish.connection")

#: CONNACK reason code of a broker that does not speak the protocol version we asked for (MQTT 5 code 0x84; paho
#: maps an MQTT 3.1.1 broker's return code 1 to it too).
UNSUPPORTED_PROTOCOL_VERSION = 0x84
#: What :meth:`MqttConnection.state` reports as ``protocol``.
PROTOCOL_NAMES = {mqtt.MQTTv5: "5", mqtt.MQTTv311: "3.1.1"}


class PahoCallbacks:
    """What paho calls; the state lives in :class:`edge.runtime.publish.connection.MqttConnection`."""

    settings: BrokerSettings
    host: str
    port: int
    client_id: str
    availability_topic: str
    latest: LatestValues
    _protocol: MQTTProtocolVersion
    _refused: str | None
    _refused_now: bool
    _downgraded_now: bool
    _connected: bool
    _session_up: bool
    _error: str | None
    _last_logged: str | None
    _connected_evt: threading.Event
    _online: mqtt.MQTTMessageInfo | None
    _subs: Subscriptions
    _new_subs: queue.SimpleQueue[str]
    _hooks: list[Callable[[], None]]
    _new_hooks: queue.SimpleQueue[Callable[[], None]]
    _credentials_hint: str
    _reconnect: tuple[float, float]
    _note: Callable[[int, str], None]

    # paho callbacks (network thread). paho re-raises callback exceptions into the loop, so guard them.

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure and reason_code.value == UNSUPPORTED_PROTOCOL_VERSION and self._protocol == mqtt.MQTTv5:
            log.info("MQTT broker %s:%d does not speak MQTT 5; using MQTT 3.1.1 (no message expiry, no "
                     "request/response)", self.host, self.port)
            self._protocol = mqtt.MQTTv311
            self._refused_now = True
            self._downgraded_now = True
            return
        if reason_code.is_failure:
            self._refused = str(reason_code)
            self._refused_now = True
            self._note(
                logging.ERROR,
                f"MQTT broker {self.host}:{self.port} refused the connection: {reason_code}; check mqtt.username "
                f"and the password ({self._credentials_hint}) and the broker's ACL; retrying with backoff up to "
                f"{self._reconnect[1]:.0f} s",
            )
            return
        self._connected = True
        self._session_up = True
        self._refused = None
        self._error = None
        self._last_logged = None
        log.info("connected to MQTT broker %s:%d as %s (MQTT %s)", self.host, self.port, self.client_id,
                 PROTOCOL_NAMES[self._protocol])
        self._connected_evt.set()
        # This session's broker may not have (all) the newest retained values, or still have a crashed run's:
        # they go out first, before "online" and anything else.
        self.latest.all_due()
        self._send_latest(client)
        self._online = client.publish(self.availability_topic, "online", qos=1, retain=True)
        while not self._new_subs.empty():  # covered by the subscription to all topics below
            self._new_subs.get()
        self._subscribe(client, self._subs.topics())
        while not self._new_hooks.empty():
            self._hooks.append(self._new_hooks.get())
        for hook in self._hooks:
            self._call_hook(hook)

    def _send_latest(self, client: mqtt.Client) -> None:
        """Publish the retained state values that are due (retained, QoS 1)."""
        for t, payload in self.latest.take_due():
            client.publish(t, payload, qos=1, retain=True)

    @staticmethod
    def _call_hook(hook: Callable[[], None]) -> None:
        try:
            hook()
        except Exception:
            log.exception("MQTT connect hook %r failed", hook)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connected = False
        self._connected_evt.clear()
        self._subs.forget_session()

    def _subscribe(self, client: mqtt.Client, topics: list[str]) -> None:
        """SUBSCRIBE (QoS 1) and remember the message id, so :meth:`_on_subscribe` knows what was granted."""
        if not topics:
            return
        rc, mid = client.subscribe([(t, 1) for t in topics])
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._subs.sent(mid, topics)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        for sub, code in self._subs.acknowledged(mid, reason_codes):
            # An ACL that denies it: the device would silently never hear this topic.
            self._note(logging.ERROR, f"MQTT broker {self.host}:{self.port} refused the subscription to "
                       f"{sub} ({code}); allow it in the broker's ACL for user {self.settings.username or '(none)'}")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._subs.dispatch(msg)
