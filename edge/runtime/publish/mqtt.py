"""Publishing over MQTT through the disk outbox (:class:`MqttSink`).

``MqttSink.publish`` only writes to the SQLite outbox (:mod:`edge.runtime.publish.outbox`) and returns. The
network work happens on one background thread (:mod:`edge.runtime.publish.connection`): connect with
exponential backoff, send from the outbox in seq order with at most ``max_inflight`` messages awaiting their
PUBACK (:mod:`edge.runtime.publish.pump`), remove a message from the outbox only when its PUBACK arrived, and on
a lost connection start a fresh session that resends from the oldest unacknowledged message. Owning the retries
(instead of paho's in-memory resend) is what keeps the order intact: paho would resend its held messages after
``on_connect`` returns, racing newer ones. A duplicate after a reconnect or restart carries the same ``seq``.
Commands arriving on the device's command topic go through :mod:`edge.runtime.publish.command_channel`. The
retained plain-value topics (``<prefix>/<device>/state/...``) bypass the outbox: only their newest value matters
(:mod:`edge.runtime.publish.latest`).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config import Config
from edge.protocol.broker import BrokerError, settings_from_config, tls_context
from edge.protocol.envelope import encode, make_envelope
from edge.protocol.topics import AVAILABILITY, COMMAND, NOBODY_STATE, PAUSED_SET, topic
from edge.runtime.loglimit import LogLimiter
from edge.runtime.publish.base import (
    OUTBOX_FILE,
    CommandHandler,
    MessageCallback,
    OversizedCallback,
    SinkError,
    offline_copy,
)
from edge.runtime.publish.command_channel import CommandChannel
from edge.runtime.publish.connection import MqttConnection
from edge.runtime.publish.outbox import Outbox
from edge.runtime.publish.pump import OutboxPump

log = logging.getLogger(__name__)


class MqttSink:
    """Publishes payloads over MQTT (paho-mqtt 2.x, MQTT 5 with a fallback to 3.1.1) through the disk outbox.

    Topics: ``<prefix>/<device>/<kind>`` for the four payload kinds (``status`` retained), the retained
    ``<prefix>/<device>/availability`` ("online" on every connect, "offline" by the Last Will or on close), and
    ``<prefix>/<device>/command`` (subscribed; JSON commands go to the handler of :meth:`set_command_handler`).

    Args:
        config: The device configuration (``device`` and ``mqtt`` sections are used).
        host: Broker host overriding ``mqtt.host`` (used by :func:`edge.runtime.publish.choose_sink` for the
            localhost probe).
        on_command: Called with each command dict, on a worker thread (so a slow handler never stalls the
            network); can be set later with :meth:`set_command_handler`.
        backoff_wait: How the reconnect loop waits its backoff delay (default: until the delay passes or the sink
            closes); the seam a test uses to check the delays without waiting them.

    Raises:
        SinkError: The TLS files cannot be loaded, or the outbox database cannot be opened.
    """

    has_broker = True

    def __init__(
        self,
        config: Config,
        *,
        host: str | None = None,
        on_command: CommandHandler | None = None,
        backoff_wait: Callable[[float], Any] | None = None,
    ):
        m = config.mqtt
        self.device_id = config.device.id
        self._cfg = m
        settings = settings_from_config(m, host)
        self.host, self.port = settings.host, settings.port
        self.client_id = m.client_id or f"emotion-edge-{self.device_id}"
        self.command_topic = topic(m.topic_prefix, self.device_id, COMMAND)
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
        self._last_status: dict[str, Any] | None = None
        self._status_lock = threading.Lock()
        self.pump = OutboxPump(self.outbox, m.max_inflight, {"faces": m.faces_expiry_s})
        self.connection = MqttConnection(
            settings, self.client_id, topic(m.topic_prefix, self.device_id, AVAILABILITY), self.pump,
            max_inflight=m.max_inflight, reconnect_min_s=m.reconnect_min_s, reconnect_max_s=m.reconnect_max_s,
            credentials_hint=f"${m.password_env} or credential {m.password_credential}", tls_context=context,
            backoff_wait=backoff_wait, max_message_bytes=m.max_command_bytes,
        )
        self.commands = CommandChannel(self._publish_event, m.max_command_bytes, m.command_rate, self._publish_reply,
                                       (f"{m.topic_prefix}/", f"{config.homeassistant.discovery_prefix}/"))
        self.commands.handler = on_command
        self.connection.subscribe(self.command_topic, self.commands.on_message, with_properties=True,
                                  max_bytes=m.max_command_bytes, on_oversized=self.commands.on_oversized,
                                  gate=self.commands.gate)
        # The plain switch shares the command channel's rate (gated before parsing too) and size bound.
        self.connection.subscribe(topic(m.topic_prefix, self.device_id, PAUSED_SET), self.commands.on_switch,
                                  with_properties=True, max_bytes=m.max_command_bytes,
                                  on_oversized=self.commands.on_oversized, gate=self.commands.gate)
        # Messages wait in memory only while a session is up; what it does not acknowledge in time goes to disk.
        self.outbox.memory_ok = lambda: self.connection.connected
        self._flusher_stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_stale, name="outbox-flusher", daemon=True)
        for leaf, value in NOBODY_STATE.items():  # a crashed run may have left "someone is there" retained
            self.publish_state(leaf, value)
        self.connection.start()
        self.commands.start()
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

    def _publish_event(self, body: dict[str, Any]) -> None:
        # A command answered while the sink closes is dropped: there is no session left to send it on.
        if not self._closed:
            self.publish("events", body)

    def _publish_reply(self, topic: str, body: dict[str, Any], correlation: bytes | None) -> None:
        """The MQTT 5 response to a command: its event body, to the requester's topic, not through the outbox
        (it takes no seq: subscribers of the device's topics never see a gap for it)."""
        props = Properties(PacketTypes.PUBLISH)
        if correlation is not None:
            props.CorrelationData = correlation
        payload = json.dumps({"device_id": self.device_id, **body}, separators=(",", ":"))
        self.connection.publish_raw(topic, payload, retain=False, qos=1, properties=props)

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
        """Store ``body`` with its envelope in the outbox and return its seq (no network I/O here).

        Status bodies are published retained; the sink fills in ``outbox`` (its stats) and ``mqtt`` (its
        connection state) when the body does not have them.
        """
        if self._closed:
            raise SinkError("publish() after close(): the sink is closed")
        if kind == "status":
            body = dict(body)
            body.setdefault("outbox", self.stats())
            body.setdefault("mqtt", self.connection.state())
            with self._status_lock:
                self._last_status = body
        return self.outbox.add(
            kind,
            topic(self._cfg.topic_prefix, self.device_id, kind),
            lambda s: encode(make_envelope(kind, self.device_id, s, body)),
            qos=self._cfg.qos,
            retain=kind == "status",
        )

    def publish_raw(self, topic: str, payload: bytes | str, retain: bool = False, qos: int = 1) -> None:
        """Publish without envelope or outbox (discovery configs); held in memory while disconnected."""
        self.connection.publish_raw(topic, payload, retain, qos)

    def publish_state(self, leaf: str, value: str) -> None:
        """Set the retained plain-value topic ``<prefix>/<device>/<leaf>`` (QoS 1); only the newest value is kept."""
        if not self._closed:
            self.connection.publish_state(topic(self._cfg.topic_prefix, self.device_id, leaf), value)

    def subscribe(self, topic: str, callback: MessageCallback, max_bytes: int | None = None,
                  on_oversized: OversizedCallback | None = None) -> None:
        """Subscribe (QoS 1) now and after every reconnect; ``callback(topic, payload)`` runs on the network
        thread. A payload above ``max_bytes`` (default ``mqtt.max_command_bytes``) is never read into memory:
        ``on_oversized(topic, size)`` hears of it instead."""
        self.connection.subscribe(topic, callback, max_bytes=max_bytes, on_oversized=on_oversized)

    def add_connect_hook(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` on the network thread after every (re)connect, and at once if connected already."""
        self.connection.add_connect_hook(fn)

    def set_command_handler(self, handler: CommandHandler) -> None:
        """Run ``handler(command dict)`` for each command on the device's command topic (worker thread)."""
        self.commands.handler = handler

    def stats(self) -> dict[str, int]:
        """``{"pending": messages not yet acknowledged, "dropped": messages dropped by the outbox bound}``."""
        return {"pending": self.outbox.pending(), "dropped": self.outbox.dropped()}

    def connection_state(self) -> dict[str, Any]:
        """``{"connected": bool, "refused": bool, "error": last problem or None}`` (also put into status)."""
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
        """Publish a last status with state "offline" (if a status was published), flush the outbox within
        ``timeout``, publish availability "offline", and disconnect cleanly. What is not acknowledged by then stays
        in the outbox for the next run."""
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        with self._status_lock:
            last = self._last_status
        if last is not None:
            self.publish("status", offline_copy(last))
        self._closed = True
        # Wait while a session is up or the first attempt is still under way; when the broker is unreachable or
        # refuses us, waiting only delays the shutdown: the messages stay in the outbox for the next run.
        while self.outbox.pending() > 0 and time.monotonic() < deadline and not self.connection.gave_up_waiting:
            time.sleep(0.02)
        self.connection.stop(deadline)
        self.commands.close()
        self._flusher_stop.set()
        self._flusher.join(1.0)
        left = self.outbox.pending()
        self.outbox.close()
        if left:
            log.warning("MQTT sink closed with %d message(s) left in the outbox; they are sent on the next run", left)
        else:
            log.info("MQTT sink closed; outbox empty")
