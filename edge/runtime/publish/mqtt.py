"""Publishing over MQTT through the disk outbox (:class:`MqttSink`).

``MqttSink.publish`` only writes to the SQLite outbox (:mod:`edge.runtime.publish.outbox`) and returns. The
network work happens on one background thread (:mod:`edge.runtime.publish.connection`): connect with
exponential backoff, send from the outbox in seq order with at most ``max_inflight`` messages awaiting their
PUBACK (:mod:`edge.runtime.publish.pump`), remove a message from the outbox only when its PUBACK arrived, and on
a lost connection start a fresh session that resends from the oldest unacknowledged message. Owning the retries
(instead of paho's in-memory resend) is what keeps the order intact: paho would resend its held messages after
``on_connect`` returns, racing newer ones. A duplicate after a reconnect or restart carries the same ``seq``.
The broker itself (raw publishes, subscriptions, connect hooks) is reached through :attr:`MqttSink.session`, an
:class:`MqttSession`: Home Assistant discovery, the command channel and model pushes take that, not the sink. The
retained plain-value topics (``<prefix>/<device>/state/...``) bypass the outbox: only their newest value matters
(:mod:`edge.runtime.publish.latest`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from paho.mqtt.properties import Properties

from edge.config import Config
from edge.protocol.broker import BrokerError, settings_from_config, tls_context
from edge.protocol.envelope import encode, make_envelope
from edge.protocol.topics import AVAILABILITY, NOBODY_STATE, topic
from edge.runtime.loglimit import LogLimiter
from edge.runtime.publish.base import (
    OUTBOX_FILE,
    MessageCallback,
    OversizedCallback,
    PropertiesCallback,
    SinkError,
    SinkStats,
)
from edge.runtime.publish.connection import MqttConnection
from edge.runtime.publish.outbox import Outbox
from edge.runtime.publish.pump import OutboxPump

log = logging.getLogger(__name__)


class MqttSink:
    """Publishes payloads over MQTT (paho-mqtt 2.x, MQTT 5 with a fallback to 3.1.1) through the disk outbox.

    Topics: ``<prefix>/<device>/<kind>`` for the four payload kinds (``status`` retained), the retained
    ``<prefix>/<device>/availability`` ("online" on every connect, "offline" by the Last Will or on close). Bodies
    go out as given: the daemon builds status whole, with :meth:`stats` (outbox and connection) in it.

    Args:
        config: The device configuration (``device`` and ``mqtt`` sections are used).
        host: Broker host overriding ``mqtt.host`` (used by :func:`edge.runtime.publish.open_publisher` for the
            localhost probe).
        backoff_wait: How the reconnect loop waits its backoff delay (default: until the delay passes or the sink
            closes); the seam a test uses to check the delays without waiting them.

    Raises:
        SinkError: The TLS files cannot be loaded, or the outbox database cannot be opened.
    """

    def __init__(
        self,
        config: Config,
        *,
        host: str | None = None,
        backoff_wait: Callable[[float], Any] | None = None,
    ):
        m = config.mqtt
        self.device_id = config.device.id
        self._cfg = m
        settings = settings_from_config(m, host)
        self.host, self.port = settings.host, settings.port
        self.client_id = m.client_id or f"emotion-edge-{self.device_id}"
        if m.username and settings.password is None:
            log.warning(
                "mqtt.username is set but no password was found in $%s or credential %s; connecting without one",
                m.password_env, m.password_credential,
            )
        try:
            context = tls_context(m.tls) if m.tls.enabled else None
        except BrokerError as exc:
            raise SinkError(str(exc)) from None
        try:
            self.outbox = Outbox(config.state_dir() / OUTBOX_FILE, m.outbox.max_messages, m.outbox.memory_s)
        except OSError as exc:
            raise SinkError(str(exc)) from None
        self._readdress(m.topic_prefix)
        self._closed = False
        self.pump = OutboxPump(self.outbox, m.max_inflight, {"faces": m.faces_expiry_s})
        self.connection = MqttConnection(
            settings, self.client_id, topic(m.topic_prefix, self.device_id, AVAILABILITY), self.pump,
            max_inflight=m.max_inflight, reconnect_min_s=m.reconnect_min_s, reconnect_max_s=m.reconnect_max_s,
            credentials_hint=f"${m.password_env} or credential {m.password_credential}", tls_context=context,
            backoff_wait=backoff_wait, max_message_bytes=m.max_command_bytes,
        )
        #: The broker behind this sink, for whoever talks to it (discovery, commands, model pushes).
        self.session = MqttSession(self.connection, self.publish)
        # Messages wait in memory only while a session is up; what it does not acknowledge in time goes to disk.
        self.outbox.memory_ok = lambda: self.connection.connected
        self._flusher_stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_stale, name="outbox-flusher", daemon=True)
        for leaf, value in NOBODY_STATE.items():  # a crashed run may have left "someone is there" retained
            self.publish_state(leaf, value)
        self.connection.start()
        self._flusher.start()

    def _readdress(self, prefix: str) -> None:
        """Messages queued by a run with another topic prefix go out under this one (what the operator chose)."""
        try:
            n = self.outbox.readdress(lambda kind: topic(prefix, self.device_id, kind),
                                      lambda kind: f"/{self.device_id}/{kind}")
        except sqlite3.Error as exc:  # a failing disk: the flusher's episode logging takes over from here
            log.warning("cannot re-address the queued messages to the topic prefix %r: %s", prefix, exc)
            return
        if n:
            log.info("%d queued message(s) were for another topic prefix; sending them under %r", n, prefix)

    def _flush_stale(self) -> None:
        interval = max(0.05, self._cfg.outbox.memory_s / 4)
        failures = LogLimiter(log)
        while not self._flusher_stop.wait(interval):
            try:
                self.outbox.spill_stale()  # a full or failing disk is its own business: it logs once per episode
            except Exception as exc:  # anything else: the messages stay in memory, and this retries
                failures.log(logging.ERROR, f"{type(exc).__name__}: {exc}", "outbox flusher failed: %s; retrying",
                             str(exc), exc_info=True)

    # ----------------------------------------------------------------------------------------- the Sink

    @property
    def connected(self) -> bool:
        """Whether a broker session is up right now."""
        return self.connection.connected

    def alive(self) -> bool:
        """Whether the network and flusher threads run and make progress (connecting, publishing or waiting out
        a backoff); the daemon feeds the systemd watchdog only while this holds."""
        return self._closed or (self.connection.alive() and self._flusher.is_alive())

    def publish(self, kind: str, body: dict[str, Any]) -> int:
        """Store ``body`` with its envelope in the outbox and return its seq (no network I/O here); status bodies
        are published retained."""
        if self._closed:
            raise SinkError("publish() after close(): the sink is closed")
        return self.outbox.add(
            kind,
            topic(self._cfg.topic_prefix, self.device_id, kind),
            lambda s: encode(make_envelope(kind, self.device_id, s, body)),
            qos=self._cfg.qos,
            retain=kind == "status",
        )

    def publish_state(self, leaf: str, value: str) -> None:
        """Set the retained plain-value topic ``<prefix>/<device>/<leaf>`` (QoS 1); only the newest value is kept."""
        if not self._closed:
            self.connection.publish_state(topic(self._cfg.topic_prefix, self.device_id, leaf), value)

    def stats(self) -> SinkStats:
        """Messages not yet acknowledged (``pending``), dropped by the outbox bound (``dropped``), and the
        connection (``mqtt``: :meth:`connection_state`)."""
        return {"pending": self.outbox.pending(), "dropped": self.outbox.dropped(), "mqtt": self.connection.state()}

    def connection_state(self) -> dict[str, Any]:
        """``{"connected": bool, "refused": bool, "error": last problem or None, "protocol": "5" or "3.1.1"}``."""
        return self.connection.state()

    def wait_connected(self, timeout: float) -> bool:
        """Block until a broker session is up (True) or ``timeout`` seconds passed (False)."""
        return self.connection.wait_connected(timeout)

    def wait_subscribed(self, timeout: float) -> bool:
        """Block until the broker acknowledged every subscription of this sink (True) or ``timeout`` passed."""
        return self.connection.wait_subscribed(timeout)

    def flush(self, timeout: float) -> bool:
        """Block until the outbox is empty (True) or ``timeout`` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        while self.outbox.pending() > 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Flush the outbox within ``timeout``, publish availability "offline", and disconnect cleanly. What is not
        acknowledged by then stays in the outbox for the next run. (The daemon's last status, state "offline", is
        its own last publish before this.)"""
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        self._closed = True
        # Wait while a session is up or the first attempt is still under way; when the broker is unreachable or
        # refuses us, waiting only delays the shutdown: the messages stay in the outbox for the next run.
        while self.outbox.pending() > 0 and time.monotonic() < deadline and not self.connection.gave_up_waiting:
            time.sleep(0.02)
        self.connection.stop(deadline)
        self._flusher_stop.set()
        self._flusher.join(1.0)
        left = self.outbox.pending()
        self.outbox.close()
        if left:
            log.warning("MQTT sink closed with %d message(s) left in the outbox; they are sent on the next run", left)
        else:
            log.info("MQTT sink closed; outbox empty")


class MqttSession:
    """The broker behind an :class:`MqttSink` (a :class:`edge.runtime.publish.base.BrokerSession`).

    Args:
        connection: The sink's network thread.
        publish: The sink's :meth:`MqttSink.publish` (events through the outbox, in the device's sequence).
    """

    def __init__(self, connection: MqttConnection, publish: Callable[[str, dict[str, Any]], int]) -> None:
        self._connection = connection
        self._publish = publish

    @property
    def connected(self) -> bool:
        """Whether a broker session is up right now."""
        return self._connection.connected

    def publish(self, kind: str, body: dict[str, Any]) -> int:
        """Store ``body`` with its envelope in the sink's outbox and return its seq."""
        return self._publish(kind, body)

    def publish_raw(self, topic: str, payload: bytes | str, retain: bool = False, qos: int = 1,
                    properties: Properties | None = None) -> None:
        """Publish without envelope or outbox (discovery configs, command responses); held in memory while
        disconnected."""
        self._connection.publish_raw(topic, payload, retain, qos, properties)

    def subscribe(self, topic: str, callback: MessageCallback | PropertiesCallback, *, with_properties: bool = False,
                  max_bytes: int | None = None, on_oversized: OversizedCallback | None = None,
                  gate: Callable[[str], bool] | None = None) -> None:
        """Subscribe (QoS 1) now and after every reconnect (see
        :meth:`edge.runtime.publish.connection.MqttConnection.subscribe`)."""
        self._connection.subscribe(topic, callback, with_properties=with_properties, max_bytes=max_bytes,
                                   on_oversized=on_oversized, gate=gate)

    def add_connect_hook(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` on the network thread after every (re)connect, and at once if connected already."""
        self._connection.add_connect_hook(fn)
