"""The device's broker connection: one paho session at a time, on its own thread, reconnecting with backoff.

:class:`MqttConnection` owns the paho client and every network call: connect (TLS, credentials and the retained
Last Will ``offline`` on the availability topic, from :func:`edge.protocol.broker.make_client`), publish
``online`` on every connect, keep the subscriptions (re-subscribed on every session, their SUBACKs tracked),
run the connect hooks, send raw (non-outbox) messages, and on a lost or refused connection start a fresh
session after an exponential backoff (:func:`edge.runtime.backoff.backoff_delay`). What the session publishes
from the outbox is the :class:`SessionWorker`'s job (:class:`edge.runtime.publish.pump.OutboxPump`), called on
this thread every loop iteration.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from edge.protocol.broker import BrokerSettings, make_client
from edge.runtime.backoff import backoff_delay
from edge.runtime.publish.base import OversizedCallback
from edge.runtime.publish.bounded_client import BoundedClient, SizeCaps

log = logging.getLogger(__name__)

#: How long one network-loop iteration waits for socket activity; bounds the delay of a new message when idle.
LOOP_TIMEOUT_S = 0.05
#: A broker that accepted TCP but sends no CONNACK within this time is treated as unreachable.
CONNACK_TIMEOUT_S = 10.0
#: Raw (non-outbox) publishes kept while disconnected; older ones are discarded first.
MAX_RAW_QUEUED = 1000
#: A session that lasted this long was healthy: the next reconnect starts again from the shortest backoff, so
#: one broker restart after days of uptime is not waited out with the backoff of earlier failures.
HEALTHY_SESSION_S = 30.0

MessageCallback = Callable[[str, bytes], None]


class SessionWorker(Protocol):
    """What a session does besides connecting and subscribing (all calls on the network thread)."""

    def tick(self, client: mqtt.Client) -> None:
        """Called every loop iteration while connected."""
        ...

    def reset(self) -> None:
        """The session ended: forget what was in flight in it."""
        ...

    def settle(self) -> None:
        """The sink is closing: record what the broker acknowledged meanwhile."""
        ...


class MqttConnection:
    """The network thread of the MQTT sink.

    Args:
        settings: Broker, credentials and TLS.
        client_id: MQTT client id.
        availability_topic: Retained ``online``/``offline`` topic (``offline`` is the Last Will).
        worker: Publishes from the outbox during a session.
        max_inflight: The worker's in-flight window (paho is allowed that plus the raw messages).
        reconnect_min_s: First backoff wait.
        reconnect_max_s: Longest backoff wait.
        credentials_hint: Where the password comes from, for the message when the broker refuses us.
        tls_context: A TLS context built once (checked at construction, so bad files fail the start).
        backoff_wait: ``wait(seconds)`` for the backoff (default: until it passes or :meth:`stop`); a test seam.
        max_message_bytes: Largest incoming payload on a subscription that sets no ``max_bytes`` of its own.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        client_id: str,
        availability_topic: str,
        worker: SessionWorker,
        *,
        max_inflight: int,
        reconnect_min_s: float,
        reconnect_max_s: float,
        credentials_hint: str = "",
        tls_context: ssl.SSLContext | None = None,
        backoff_wait: Callable[[float], Any] | None = None,
        max_message_bytes: int = 64 * 1024,
    ) -> None:
        self.settings = settings
        self.host, self.port = settings.host, settings.port
        self.client_id = client_id
        self.availability_topic = availability_topic
        self._worker = worker
        self._max_inflight = max_inflight
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        self._credentials_hint = credentials_hint
        self._tls_context = tls_context
        self._stop = threading.Event()
        self._backoff_wait = backoff_wait or self._stop.wait
        self._connected = False
        self._connected_evt = threading.Event()
        self._refused: str | None = None
        self._refused_now = False
        self._error: str | None = None
        self._last_logged: str | None = None
        self._session_up = False
        self._close_deadline = 0.0
        # Touched only by the network thread, except the thread-safe queues.
        self._raw: deque[tuple[str, bytes | str, bool, int]] = deque(maxlen=MAX_RAW_QUEUED)
        self._new_subs: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._subs: dict[str, MessageCallback] = {}
        self._caps = SizeCaps(max_message_bytes)
        self._hooks: list[Callable[[], None]] = []
        self._new_hooks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        # A Condition, so wait_subscribed() sleeps until a SUBACK arrives instead of polling.
        self._subs_lock = threading.Condition()
        # Topics the broker acknowledged (SUBACK) in this session, and the SUBSCRIBEs still waiting for one.
        self._acked_subs: set[str] = set()
        self._sub_mids: dict[int, list[str]] = {}
        self._thread = threading.Thread(target=self._run, name="mqtt-sink", daemon=True)

    # ----------------------------------------------------------------------------------------- public API

    def start(self) -> None:
        """Start the network thread (subscriptions made before are part of the first session)."""
        self._thread.start()

    @property
    def connected(self) -> bool:
        """Whether a broker session is up right now."""
        return self._connected

    @property
    def gave_up_waiting(self) -> bool:
        """Whether the last attempt failed (unreachable, refused): closing need not wait for a flush then."""
        return self._error is not None and not self._connected

    def state(self) -> dict[str, Any]:
        """``{"connected": bool, "refused": bool, "error": last problem or None}``."""
        return {"connected": self._connected, "refused": self._refused is not None, "error": self._error}

    def publish_raw(self, topic: str, payload: bytes | str, retain: bool = False, qos: int = 1) -> None:
        """Publish without envelope or outbox (discovery configs); held in memory while disconnected."""
        self._raw.append((topic, payload, retain, qos))

    def subscribe(self, topic: str, callback: MessageCallback, max_bytes: int | None = None,
                  on_oversized: OversizedCallback | None = None) -> None:
        """Subscribe (QoS 1) now and after every reconnect; ``callback(topic, payload)`` runs on the network thread.

        A message with a payload above ``max_bytes`` (default: ``max_message_bytes``) is never read into memory:
        ``on_oversized(topic, size)`` is called instead (default: a rate-limited warning).
        """
        with self._subs_lock:
            self._subs[topic] = callback
        self._caps.add(topic, max_bytes, on_oversized)
        self._new_subs.put(topic)

    def add_connect_hook(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` on the network thread after every successful (re)connect, and right away (on that
        thread) if the connection is up already, so a late-registered extension never misses a connect."""
        self._new_hooks.put(fn)

    def wait_connected(self, timeout: float) -> bool:
        """Block until a broker session is up (True) or ``timeout`` seconds passed (False)."""
        return self._connected_evt.wait(timeout)

    def wait_subscribed(self, timeout: float) -> bool:
        """Block until the broker acknowledged every subscription in the current session (True) or ``timeout``
        seconds passed (False). Messages sent to a topic before its SUBACK may be lost, so callers that publish
        to the device right after it connects wait for this first."""
        with self._subs_lock:
            return self._subs_lock.wait_for(lambda: self._connected and set(self._subs) <= self._acked_subs, timeout)

    def stop(self, deadline: float) -> None:
        """End the session by ``deadline`` (monotonic): availability ``offline``, then a clean DISCONNECT."""
        self._close_deadline = deadline
        self._stop.set()
        self._thread.join(max(0.5, deadline - time.monotonic() + 1.0))

    # ----------------------------------------------------------------------------------------- internals

    def _make_client(self) -> mqtt.Client:
        client = make_client(self.settings, self.client_id, protocol=mqtt.MQTTv311, reconnect_on_failure=False,
                             will=(self.availability_topic, "offline"), context=self._tls_context,
                             client_class=BoundedClient)
        self._caps.attach(client)
        # paho queues nothing beyond what we hand it: the outbox is the queue.
        client.max_inflight_messages_set(self._max_inflight + MAX_RAW_QUEUED)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _note(self, level: int, message: str) -> None:
        """Log a connection problem once (repeats go to debug), and remember it for status."""
        self._error = message
        if message != self._last_logged:
            log.log(level, message)
            self._last_logged = message
        else:
            log.debug(message)

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            client = self._make_client()
            started = time.monotonic()
            try:
                client.connect(self.host, self.port, keepalive=self.settings.keepalive_s)
            except ssl.SSLError as exc:  # a subclass of OSError, so it comes first
                self._note(logging.ERROR, f"TLS handshake with MQTT broker {self.host}:{self.port} failed ({exc}); "
                           f"{self._tls_hint(exc)}check mqtt.tls.ca_file (the CA that signed the broker) and the host "
                           "name; retrying")
            except OSError as exc:
                self._note(logging.WARNING, f"MQTT broker {self.host}:{self.port} unreachable ({exc}); "
                           f"{self._tls_hint(exc)}retrying with backoff, messages wait in the outbox")
            else:
                try:
                    self._session(client)
                except Exception:  # a bug here must not end publishing for the daemon's lifetime
                    log.exception("MQTT network loop failed; reconnecting")
                finally:
                    self._end_session(client)
            if self._stop.is_set():
                break
            if self._refused is None and time.monotonic() - started > HEALTHY_SESSION_S:
                attempt = 0  # the last session was healthy: retry quickly
            attempt += 1
            self._backoff_wait(backoff_delay(attempt, *self._reconnect))

    def _tls_hint(self, exc: OSError) -> str:
        # A TLS client at a plain MQTT listener sends a ClientHello the broker takes for a broken CONNECT: it drops
        # the connection, which reads as a reset (or an EOF inside the handshake), not as a TLS error.
        if self._tls_context is None or not isinstance(exc, (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            return ""
        return (f"mqtt.tls.enabled is true: is port {self.port} a TLS listener? (1883 is usually plain MQTT, 8883 "
                "TLS); ")

    def _session(self, client: mqtt.Client) -> None:
        """Run one broker connection until it fails or the sink stops."""
        connect_deadline = time.monotonic() + CONNACK_TIMEOUT_S
        self._refused_now = False
        self._session_up = False
        while True:
            rc = client.loop(timeout=LOOP_TIMEOUT_S)
            if self._refused_now:
                return
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                if self._session_up:
                    self._note(logging.WARNING, f"lost the connection to MQTT broker {self.host}:{self.port} "
                               f"({mqtt.error_string(rc)}); reconnecting, messages wait in the outbox")
                else:
                    self._note(logging.WARNING, f"MQTT broker {self.host}:{self.port} closed the connection before "
                               f"accepting it ({mqtt.error_string(rc)}); check the TLS client certificate settings "
                               "(mqtt.tls) and the broker log; retrying with backoff")
                return
            if not self._connected:
                if time.monotonic() > connect_deadline:
                    self._note(logging.WARNING, f"MQTT broker {self.host}:{self.port} sent no CONNACK within "
                               f"{CONNACK_TIMEOUT_S:.0f} s; retrying")
                    return
                continue
            self._housekeeping(client)
            self._worker.tick(client)
            if self._stop.is_set():
                self._say_goodbye(client)
                return

    def _housekeeping(self, client: mqtt.Client) -> None:
        """Raw messages, new subscriptions and new connect hooks queued by other threads."""
        while self._raw:
            t, payload, retain, qos = self._raw.popleft()
            client.publish(t, payload, qos=qos, retain=retain)
        while not self._new_subs.empty():
            self._subscribe(client, [self._new_subs.get()])
        while not self._new_hooks.empty():
            hook = self._new_hooks.get()
            self._hooks.append(hook)
            self._call_hook(hook)

    def _say_goodbye(self, client: mqtt.Client) -> None:
        """On close: retained availability "offline", wait for its PUBACK (bounded), then a clean DISCONNECT."""
        info = client.publish(self.availability_topic, "offline", qos=1, retain=True)
        deadline = max(self._close_deadline, time.monotonic() + 0.5)
        while not info.is_published() and time.monotonic() < deadline:
            if client.loop(timeout=LOOP_TIMEOUT_S) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
        self._worker.settle()  # acks that arrived while waiting are not resent next run
        client.disconnect()

    def _end_session(self, client: mqtt.Client) -> None:
        was = self._connected
        self._connected = False
        self._connected_evt.clear()
        self._forget_subs()
        # Unacknowledged messages die with this session; the next one resends them from the outbox, in order.
        self._worker.reset()
        if was and not self._stop.is_set():
            log.debug("MQTT session ended")
        with contextlib.suppress(Exception):  # the socket may already be gone
            client.disconnect()
        sock = client.socket()
        if sock is not None:
            sock.close()

    # paho callbacks (network thread). paho re-raises callback exceptions into the loop, so guard them.

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
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
        log.info("connected to MQTT broker %s:%d as %s", self.host, self.port, self.client_id)
        self._connected_evt.set()
        client.publish(self.availability_topic, "online", qos=1, retain=True)
        while not self._new_subs.empty():  # covered by the subscription to all topics below
            self._new_subs.get()
        with self._subs_lock:
            topics = list(self._subs)
        self._subscribe(client, topics)
        while not self._new_hooks.empty():
            self._hooks.append(self._new_hooks.get())
        for hook in self._hooks:
            self._call_hook(hook)

    @staticmethod
    def _call_hook(hook: Callable[[], None]) -> None:
        try:
            hook()
        except Exception:
            log.exception("MQTT connect hook %r failed", hook)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connected = False
        self._connected_evt.clear()
        self._forget_subs()

    def _subscribe(self, client: mqtt.Client, topics: list[str]) -> None:
        """SUBSCRIBE (QoS 1) and remember the message id, so :meth:`_on_subscribe` knows what was granted."""
        if not topics:
            return
        rc, mid = client.subscribe([(t, 1) for t in topics])
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            with self._subs_lock:
                self._sub_mids[mid] = topics

    def _forget_subs(self) -> None:
        with self._subs_lock:
            self._acked_subs.clear()
            self._sub_mids.clear()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        with self._subs_lock:
            topics = self._sub_mids.pop(mid, [])
        for sub, code in zip(topics, reason_codes, strict=False):
            if code.is_failure:  # an ACL that denies it: the device would silently never hear this topic
                self._note(logging.ERROR, f"MQTT broker {self.host}:{self.port} refused the subscription to "
                           f"{sub} ({code}); allow it in the broker's ACL for user {self.settings.username or '(none)'}")
            else:
                with self._subs_lock:
                    self._acked_subs.add(sub)
                    self._subs_lock.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._subs_lock:
            subs = list(self._subs.items())
        for sub, callback in subs:
            if mqtt.topic_matches_sub(sub, msg.topic):
                try:
                    callback(msg.topic, msg.payload)
                except Exception:
                    log.exception("handler for MQTT topic %s failed", msg.topic)
