"""The device's broker connection: one paho session at a time, on its own thread, reconnecting with backoff.

:class:`MqttConnection` owns the paho client and every network call: connect (TLS, credentials and the retained
Last Will ``offline`` on the availability topic, from :func:`edge.protocol.broker.make_client`), publish
``online`` on every connect, keep the subscriptions (re-subscribed on every session, their SUBACKs tracked),
run the connect hooks, send raw (non-outbox) messages and the retained plain-value topics
(:mod:`edge.runtime.publish.latest`), and on a lost or refused connection start a fresh session after an
exponential backoff (:func:`edge.runtime.backoff.backoff_delay`). What the session publishes from the outbox is
the :class:`SessionWorker`'s job (:class:`edge.runtime.publish.pump.OutboxPump`), called on this thread every loop
iteration.

It speaks MQTT 5 (message expiry, request/response), and falls back to MQTT 3.1.1 for the rest of the process's
life when a broker answers the MQTT 5 CONNECT with "unsupported protocol version" (what an MQTT 3.1.1 broker
must answer, MQTT 3.1.1 section 3.1.2.2); the next start tries MQTT 5 again.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties

from edge.protocol.broker import BrokerSettings, make_client
from edge.runtime.backoff import backoff_delay
from edge.runtime.loglimit import LogLimiter
from edge.runtime.publish.base import MessageCallback, OversizedCallback, PropertiesCallback
from edge.runtime.publish.bounded_client import BoundedClient, SizeCaps
from edge.runtime.publish.connection_callbacks import PROTOCOL_NAMES, PahoCallbacks
from edge.runtime.publish.latest import LatestValues
from edge.runtime.publish.subscriptions import Subscriptions

log = logging.getLogger(__name__)

#: How long one network-loop iteration waits for socket activity; bounds the delay of a new message when idle.
LOOP_TIMEOUT_S = 0.05
#: A broker that accepted TCP but sends no CONNACK within this time is treated as unreachable.
CONNACK_TIMEOUT_S = 10.0
#: Raw (non-outbox) publishes kept while disconnected; older ones are discarded first.
MAX_RAW_QUEUED = 1000
#: After a session the broker accepted and acknowledged (the PUBACK of its "online") is lost, reconnect attempts
#: come every ``reconnect_min_s`` for this long, and only then back off exponentially: a broker restart or a short
#: outage is over within a second of the broker's return, a long one is not hammered.
QUICK_RECONNECT_S = 30.0
#: The network thread is alive while it passes its loop at least this often (beyond a backoff wait it announced);
#: the daemon feeds the systemd watchdog only while it does.
LIVENESS_S = 30.0


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


class MqttConnection(PahoCallbacks):
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
        self._raw: deque[tuple[str, bytes | str, bool, int, Properties | None]] = deque(maxlen=MAX_RAW_QUEUED)
        #: The retained plain-value topics: newest value only, sent again on every session.
        self.latest = LatestValues()
        self._protocol = mqtt.MQTTv5
        self._downgraded_now = False
        self._new_subs: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._subs = Subscriptions()
        self._caps = SizeCaps(max_message_bytes)
        #: Exact topic -> whether to take a message on it (see :meth:`subscribe`).
        self._gates: dict[str, Callable[[str], bool]] = {}
        self._hooks: list[Callable[[], None]] = []
        self._new_hooks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        #: The network thread promises to pass its loop again before this (monotonic): see :meth:`alive`.
        self._beat_by = time.monotonic() + LIVENESS_S
        #: When the quick reconnect window began: the start, or the loss of the last acknowledged session.
        self._quick_since = time.monotonic()
        self._acknowledged = False
        self._failures = LogLimiter(log)
        self._thread = threading.Thread(target=self._run, name="mqtt-sink", daemon=True)

    # ----------------------------------------------------------------------------------------- public API

    def start(self) -> None:
        """Start the network thread (subscriptions made before are part of the first session)."""
        self._thread.start()

    @property
    def connected(self) -> bool:
        """Whether a broker session is up right now."""
        return self._connected

    def alive(self) -> bool:
        """Whether the network thread runs and passes its loop (connecting, publishing or waiting its backoff) as
        often as it announced: False when it died or hangs, so the daemon stops feeding the systemd watchdog."""
        return self._thread.is_alive() and time.monotonic() < self._beat_by

    def _beat(self, busy_s: float = 0.0) -> None:
        """The thread is alive; it may be busy (a connect, a backoff wait) for ``busy_s`` before the next beat."""
        self._beat_by = time.monotonic() + busy_s + LIVENESS_S

    @property
    def gave_up_waiting(self) -> bool:
        """Whether the last attempt failed (unreachable, refused): closing need not wait for a flush then."""
        return self._error is not None and not self._connected

    @property
    def protocol(self) -> int:
        """The MQTT protocol version of the next (or current) session: ``mqtt.MQTTv5`` unless the broker refused it."""
        return self._protocol

    def state(self) -> dict[str, Any]:
        """``{"connected": bool, "refused": bool, "error": last problem or None, "protocol": "5" or "3.1.1"}``."""
        return {"connected": self._connected, "refused": self._refused is not None, "error": self._error,
                "protocol": PROTOCOL_NAMES[self._protocol]}

    def publish_raw(self, topic: str, payload: bytes | str, retain: bool = False, qos: int = 1,
                    properties: Properties | None = None) -> None:
        """Publish without envelope or outbox (discovery configs, command responses); held in memory while
        disconnected. ``properties`` (MQTT 5) are dropped on an MQTT 3.1.1 session."""
        self._raw.append((topic, payload, retain, qos, properties))

    def publish_state(self, topic: str, payload: bytes | str) -> None:
        """Set a retained plain-value topic (QoS 1): only its newest value is kept and sent, again on every session."""
        self.latest.set(topic, payload)

    def subscribe(self, topic: str, callback: MessageCallback | PropertiesCallback, *,
                  with_properties: bool = False, max_bytes: int | None = None,
                  on_oversized: OversizedCallback | None = None, gate: Callable[[str], bool] | None = None) -> None:
        """Subscribe (QoS 1) now and after every reconnect; ``callback(topic, payload)`` runs on the network thread
        (``callback(topic, payload, properties)`` with ``with_properties``: the MQTT 5 properties, or None).

        A message with a payload above ``max_bytes`` (default: ``max_message_bytes``) is never read into memory:
        ``on_oversized(topic, size)`` is called instead (default: a rate-limited warning). ``gate(topic)``, for a
        topic without wildcards, is asked before a message on it is parsed; False skips it unread (a flood).
        """
        if gate is not None:
            self._gates[topic] = gate
        self._caps.add(topic, max_bytes, on_oversized)
        self._subs.add(topic, callback, with_properties)
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
        return self._subs.wait_all_acked(lambda: self._connected, timeout)

    def stop(self, deadline: float) -> None:
        """End the session by ``deadline`` (monotonic): availability ``offline``, then a clean DISCONNECT."""
        self._close_deadline = deadline
        self._stop.set()
        self._thread.join(max(0.5, deadline - time.monotonic() + 1.0))

    # ----------------------------------------------------------------------------------------- internals

    def _make_client(self) -> BoundedClient:
        client = make_client(self.settings, self.client_id, protocol=self._protocol, reconnect_on_failure=False,
                             will=(self.availability_topic, "offline"), context=self._tls_context,
                             client_class=BoundedClient)
        bounded = cast(BoundedClient, client)  # made with client_class=BoundedClient
        self._caps.attach(bounded)
        bounded.admit = self._admit_inbound
        # paho queues nothing beyond what we hand it: the outbox is the queue.
        client.max_inflight_messages_set(self._max_inflight + MAX_RAW_QUEUED)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return bounded

    def _admit_inbound(self, topic: str) -> bool:
        gate = self._gates.get(topic)
        return gate is None or gate(topic)

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
            try:
                self._attempt()
            except Exception as exc:  # a bug or an unforeseen fault: log it once, and keep the thread publishing
                self._failed(exc)
            if self._stop.is_set():
                break
            if self._downgraded_now:
                self._downgraded_now = False
                continue  # the broker answered at once: ask again in MQTT 3.1.1 without waiting
            if self._acknowledged:
                self._acknowledged = False
                self._quick_since = time.monotonic()
                attempt = 0
            quick = time.monotonic() - self._quick_since < QUICK_RECONNECT_S and self._refused is None
            attempt = 0 if quick else attempt + 1
            delay = self._reconnect[0] if quick else backoff_delay(attempt, *self._reconnect)
            self._beat(delay)
            self._backoff_wait(delay)

    def _attempt(self) -> None:
        """One connection attempt and, when it succeeds, its session until it ends."""
        self._beat(CONNACK_TIMEOUT_S)
        client = self._make_client()
        try:
            client.connect(self.host, self.port, keepalive=self.settings.keepalive_s)
        except ssl.SSLError as exc:  # a subclass of OSError, so it comes first
            self._note(logging.ERROR, f"TLS handshake with MQTT broker {self.host}:{self.port} failed ({exc}); "
                       f"{self._tls_hint(exc)}check mqtt.tls.ca_file (the CA that signed the broker) and the host "
                       "name; retrying")
        except OSError as exc:
            self._note(logging.WARNING, f"MQTT broker {self.host}:{self.port} unreachable ({exc}); "
                       f"{self._tls_hint(exc)}retrying with backoff, messages wait in the outbox")
        except (ValueError, struct.error) as exc:  # paho cannot encode the CONNECT: a setting out of MQTT's range
            self._note(logging.ERROR, f"cannot connect to MQTT broker {self.host}:{self.port}: paho refused the "
                       f"connection settings ({exc}); check mqtt.client_id, mqtt.keepalive_s and mqtt.username; "
                       "retrying with backoff")
        else:
            try:
                self._session(client)
            finally:
                self._end_session(client)

    def _failed(self, exc: Exception) -> None:
        """An unexpected error on the network thread (called in its ``except``): the traceback once per cause,
        then only counted (:class:`LogLimiter`); the status shows it as the connection's error."""
        cause = f"{type(exc).__name__}: {exc}"
        self._error = f"MQTT network thread failed ({cause}); reconnecting"
        self._failures.log(logging.ERROR, cause, "%s", self._error, exc_info=True)

    def _tls_hint(self, exc: OSError) -> str:
        # A TLS client at a plain MQTT listener sends a ClientHello the broker takes for a broken CONNECT: it drops
        # the connection, which reads as a reset (or an EOF inside the handshake), not as a TLS error.
        if self._tls_context is None or not isinstance(exc, (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            return ""
        return (f"mqtt.tls.enabled is true: is port {self.port} a TLS listener? (1883 is usually plain MQTT, 8883 "
                "TLS); ")

    def _session(self, client: BoundedClient) -> None:
        """Run one broker connection until it fails or the sink stops."""
        connect_deadline = time.monotonic() + CONNACK_TIMEOUT_S
        self._refused_now = False
        self._session_up = False
        self._online: mqtt.MQTTMessageInfo | None = None
        while True:
            self._beat()
            # Bytes already read and not yet parsed (a burst of inbound messages): no waiting in select for more.
            rc = client.loop(timeout=0.0 if client.buffered() else LOOP_TIMEOUT_S)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and client.buffered():
                rc = client.loop_read()
            if self._refused_now:
                return
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                if self._session_up:
                    self._note(logging.WARNING, f"lost the connection to MQTT broker {self.host}:{self.port} "
                               f"({mqtt.error_string(rc)}); reconnecting, messages wait in the outbox")
                else:
                    tls = "the TLS client certificate settings (mqtt.tls) and " if self._tls_context is not None else ""
                    self._note(logging.WARNING, f"MQTT broker {self.host}:{self.port} closed the connection before "
                               f"accepting it ({mqtt.error_string(rc)}); check {tls}the broker log (a client id or "
                               "user name it refuses?); retrying with backoff")
                return
            if not self._connected:
                if time.monotonic() > connect_deadline:
                    self._note(logging.WARNING, f"MQTT broker {self.host}:{self.port} sent no CONNACK within "
                               f"{CONNACK_TIMEOUT_S:.0f} s; retrying")
                    return
                continue
            if not self._acknowledged and self._online is not None and self._online.is_published():
                self._acknowledged = True  # the broker acknowledged this session's "online": it works
            self._housekeeping(client)
            self._worker.tick(client)
            if self._stop.is_set():
                self._say_goodbye(client)
                return

    def _housekeeping(self, client: mqtt.Client) -> None:
        """Raw messages, new subscriptions and new connect hooks queued by other threads."""
        while self._raw:
            t, payload, retain, qos, props = self._raw.popleft()
            try:
                client.publish(t, payload, qos=qos, retain=retain,
                               properties=props if self._protocol == mqtt.MQTTv5 else None)
            except ValueError as exc:  # paho refuses the topic (a wildcard, a bad length): drop this one only
                log.warning("not publishing to %r: %s", t[:64], exc)
        self._send_latest(client)
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
        self._subs.forget_session()
        # Unacknowledged messages die with this session; the next one resends them from the outbox, in order.
        try:
            self._worker.reset()
        except Exception as exc:  # must not skip the socket's close below; the next attempt starts clean anyway
            self._failed(exc)
        if was and not self._stop.is_set():
            log.debug("MQTT session ended")
        with contextlib.suppress(Exception):  # the socket may already be gone
            client.disconnect()
        sock = client.socket()
        if sock is not None:
            sock.close()
