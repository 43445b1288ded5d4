"""The subscriber side of the MQTT contract: topic filters, payload checks, and a reconnecting subscriber.

Broker settings, flags and the paho client come from :mod:`edge.protocol.broker`, as for the daemon.
"""

from __future__ import annotations

import json
import logging
import math
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.protocol.broker import BrokerError, BrokerSettings, make_client
from edge.protocol.envelope import KINDS
from edge.protocol.topics import AVAILABILITY
from edge.tools.subscribe.store import is_number

log = logging.getLogger(__name__)



class SubscribeError(Exception):
    """An expected failure of a subscriber tool (broker unreachable, bad file...); one line, no traceback."""


class BrokerUnreachable(SubscribeError):
    """Nothing accepts connections at the broker's address.

    Attributes:
        reason: The socket error, e.g. "Connection refused".
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def subscription_filters(prefix: str, devices: Sequence[str] = ("+",), kinds: Sequence[str] = KINDS) -> list[str]:
    """Topic filters for the given devices (each a device id or the ``+`` wildcard) and kinds.

    ``availability`` is always included: the tools show online/offline from it.
    """
    wanted = [*kinds, AVAILABILITY] if AVAILABILITY not in kinds else list(kinds)
    filters: list[str] = []
    for dev in devices or ("+",):
        if "#" in dev or "/" in dev:
            raise SubscribeError(f"device filter {dev!r}: use a device id or '+' (one topic level), not '#' or '/'")
        filters.extend(f"{prefix}/{dev}/{k}" for k in wanted)
    return filters


def decode_json(payload: bytes) -> dict[str, Any] | None:
    """The JSON object in ``payload``, or ``None`` if it is empty or not a JSON object."""
    if not payload:
        return None
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def envelope_ok(msg: dict[str, Any]) -> bool:
    """Whether ``msg`` carries a usable envelope: an integer ``seq`` (1 to 2**63 - 1) and a finite number ``ts``.

    Anything else on the contract topics (another publisher's JSON, a hand-typed test message) is not stored
    or shown: it would break the per-device dedupe, or the recording's columns.
    """
    seq, ts = msg.get("seq"), msg.get("ts")
    return (isinstance(seq, int) and not isinstance(seq, bool) and 0 < seq < 2**63
            and is_number(ts) and math.isfinite(ts))


MessageHandler = Callable[[mqtt.Client, mqtt.MQTTMessage], None]

#: CONNACK reason codes that retrying cannot fix: unsupported protocol, client id not valid, bad user name or
#: password, not authorised, banned, bad authentication method.
FATAL_REFUSALS = frozenset({0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C})


class Subscriber:
    """A paho client that connects, subscribes to ``filters`` on every (re)connect, and reconnects by itself.

    Args:
        settings: Broker settings.
        filters: Topic filters to subscribe (QoS 1).
        on_message: Called on paho's network thread for each message.
        client_id: Fixed id (needed for a persistent session); random when ``None``.
        persistent: Keep the session on the broker (MQTT 5 clean_start false + session expiry), so QoS 1
            messages published while this client is away are queued for it.
        session_expiry_s: How long the broker keeps the session of a persistent client that is away.
        manual_ack: Acknowledge QoS 1 messages only when :meth:`ack` is called (after they are stored).
    """

    def __init__(
        self,
        settings: BrokerSettings,
        filters: Sequence[str],
        on_message: MessageHandler,
        client_id: str | None = None,
        persistent: bool = False,
        session_expiry_s: int = 7 * 24 * 3600,
        manual_ack: bool = False,
    ) -> None:
        self.settings = settings
        self.filters = list(filters)
        self.persistent = persistent
        self.session_expiry_s = session_expiry_s
        self._on_message = on_message
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._pending_subs: set[int] = set()
        self._fatal: str | None = None
        self._running = False
        #: Set when the broker refuses a reconnect for good (credentials revoked): the owner should end.
        self.failed = threading.Event()
        try:
            self.client = make_client(settings, client_id or "", manual_ack=manual_ack)
        except BrokerError as exc:
            raise SubscribeError(str(exc)) from None
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.on_connect = self._handle_connect
        self.client.on_disconnect = self._handle_disconnect
        self.client.on_subscribe = self._handle_subscribe
        self.client.on_message = self._dispatch

    # -- paho callbacks (network thread) ---------------------------------------------------------------
    def _handle_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            refusal = f"broker {self.settings.describe()} refused the connection: {reason_code}"
            if self._running and reason_code.value not in FATAL_REFUSALS:
                # Busy, unavailable, rate-limited: a broker restarting or under load; paho retries.
                log.warning("%s; retrying", refusal)
                return
            # Refused for who we are (credentials, authorisation, client id): retrying would hide the problem.
            self._fatal = refusal
            if self._running:  # during start() the caller reports it; later the owner's wait ends with it
                log.error("%s; not retrying (check the user name and password)", self._fatal)
                self.failed.set()
            client.disconnect()
            self._connected.set()
            return
        log.info("connected to %s (session present: %s)", self.settings.describe(), flags.session_present)
        self._subscribed.clear()
        result, mid = client.subscribe([(f, 1) for f in self.filters])
        if result == mqtt.MQTT_ERR_SUCCESS and mid is not None:  # paho gives a message id with success
            self._pending_subs = {mid}
        self._connected.set()

    def _handle_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        bad = [str(rc) for rc in reason_codes if rc.is_failure]
        if bad:
            log.warning("subscription refused: %s", ", ".join(bad))
        self._pending_subs.discard(mid)
        if not self._pending_subs:
            self._subscribed.set()

    def _handle_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._subscribed.clear()
        if reason_code.is_failure:
            log.warning("disconnected from %s: %s; reconnecting", self.settings.describe(), reason_code)

    def _dispatch(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._on_message(client, msg)
        except Exception:  # a bad message must not kill the network thread; it stays unacked
            log.exception("failed to handle a message on %s", msg.topic)

    # -- public API --------------------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        """Connect, start the network thread and wait until the subscriptions are acknowledged.

        Raises:
            SubscribeError: the broker cannot be reached or refuses the connection.
        """
        props = None
        if self.persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry_s
        try:
            self.client.connect(
                self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s,
                clean_start=not self.persistent, properties=props,
            )
        except ssl.SSLError as exc:
            raise SubscribeError(f"TLS handshake with {self.settings.describe()} failed: {exc}") from None
        except OSError as exc:
            reason = str(exc.strerror or exc)
            raise BrokerUnreachable(
                f"cannot reach the MQTT broker at {self.settings.describe()} ({reason}); "
                "is it running? set --mqtt-host/--mqtt-port or [mqtt] in --config", reason
            ) from None
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.stop()
            raise SubscribeError(f"no answer from the MQTT broker at {self.settings.describe()} within {timeout:.0f}s")
        if self._fatal:
            self.stop()
            raise SubscribeError(self._fatal + "; check --mqtt-username and the password variable")
        if not self._subscribed.wait(timeout):
            self.stop()
            raise SubscribeError(f"the broker at {self.settings.describe()} did not acknowledge the subscriptions")
        self._running = True

    @property
    def failure(self) -> str | None:
        """Why the broker refused the connection for good, if it did."""
        return self._fatal

    @property
    def subscribed(self) -> bool:
        """Whether the client is connected with its subscriptions in place."""
        return self._subscribed.is_set()

    def ack(self, msg: mqtt.MQTTMessage) -> None:
        """Acknowledge a QoS 1 message (only with ``manual_ack``)."""
        self.client.ack(msg.mid, msg.qos)

    def stop(self) -> None:
        """Disconnect and stop the network thread (a persistent session stays on the broker)."""
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
