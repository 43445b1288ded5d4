"""Publishing over MQTT through the disk outbox (:class:`MqttSink`).

``MqttSink.publish`` only writes to the SQLite outbox and returns; one background thread owns the paho client and
does all network work: connect with exponential backoff, send from the outbox in seq order with at most
``max_inflight`` messages awaiting their PUBACK, remove a message from the outbox only when its PUBACK arrived, and
on a lost connection start a fresh session that resends from the oldest unacknowledged message. Owning the retries
(instead of paho's in-memory resend) is what keeps the order intact: paho would resend its held messages after
``on_connect`` returns, racing newer ones. A duplicate after a reconnect or restart carries the same ``seq``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import ssl
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge.config import Config, resolve_secret
from edge.protocol.envelope import command_event, encode, make_envelope
from edge.protocol.topics import topic
from edge.runtime.publish.base import OUTBOX_FILE, SinkError, _offline_copy
from edge.runtime.publish.outbox import Outbox

log = logging.getLogger(__name__)


#: How long one network-loop iteration waits for socket activity; bounds the delay of a new message when idle.
_LOOP_TIMEOUT_S = 0.05


#: A broker that accepted TCP but sends no CONNACK within this time is treated as unreachable.
_CONNACK_TIMEOUT_S = 10.0


#: Raw (non-outbox) publishes kept while disconnected; older ones are discarded first.
_MAX_RAW_QUEUED = 1000


#: A session that lasted this long was healthy: the next reconnect starts again from reconnect_min_s, so one
#: broker restart after days of uptime is not waited out with the backoff of earlier failures.
_HEALTHY_SESSION_S = 30.0


class MqttSink:
    """Publishes payloads over MQTT (paho-mqtt 2.x, MQTT 3.1.1) through the disk outbox.

    Topics: ``<prefix>/<device>/<kind>`` for the four payload kinds (``status`` retained), the retained
    ``<prefix>/<device>/availability`` ("online" on every connect, "offline" by the Last Will or on close), and
    ``<prefix>/<device>/command`` (subscribed; JSON commands go to :attr:`on_command`).

    Args:
        config: The device configuration (``device`` and ``mqtt`` sections are used).
        host: Broker host overriding ``mqtt.host`` (used by :func:`choose_sink` for the localhost probe).
        on_command: Called with each command dict, on a worker thread (so a slow handler never stalls the
            network); can be set later through the attribute.
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
        on_command: Callable[[dict[str, Any]], None] | None = None,
        backoff_wait: Callable[[float], Any] | None = None,
    ):
        m = config.mqtt
        self.device_id = config.device.id
        self.host = host or m.host or "localhost"
        self.port = m.port
        self._cfg = m
        self.client_id = m.client_id or f"emotion-edge-{self.device_id}"
        self.availability_topic = topic(m.topic_prefix, self.device_id, "availability")
        self.command_topic = topic(m.topic_prefix, self.device_id, "command")
        self.on_command = on_command
        self._password = resolve_secret(m.password_env, m.password_credential) if m.username else None
        if m.username and self._password is None:
            log.warning(
                "mqtt.username is set but no password was found in $%s or credential %s; connecting without one",
                m.password_env, m.password_credential,
            )
        self._tls_context = self._build_tls_context() if m.tls.enabled else None
        try:
            self.outbox = Outbox(config.state_dir() / OUTBOX_FILE, m.outbox.max_messages)
        except OSError as exc:
            raise SinkError(str(exc)) from None

        self._stop = threading.Event()
        self._backoff_wait = backoff_wait or self._stop.wait
        self._closed = False
        self._connected = False
        self._refused: str | None = None
        self._refused_now = False
        self._error: str | None = None
        self._last_logged: str | None = None
        self._connected_evt = threading.Event()
        self._last_status: dict[str, Any] | None = None
        self._status_lock = threading.Lock()
        # Everything below is touched only by the network thread, except the thread-safe queues.
        self._inflight: OrderedDict[int, mqtt.MQTTMessageInfo] = OrderedDict()
        self._cursor = 0
        self._raw: deque[tuple[str, bytes | str, bool, int]] = deque(maxlen=_MAX_RAW_QUEUED)
        self._new_subs: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._subs: dict[str, Callable[[str, bytes], None]] = {self.command_topic: self._on_command_message}
        self._hooks: list[Callable[[], None]] = []
        self._new_hooks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        # A Condition, so wait_subscribed() sleeps until a SUBACK arrives instead of polling.
        self._subs_lock = threading.Condition()
        # Topics the broker acknowledged (SUBACK) in this session, and the SUBSCRIBEs still waiting for one.
        self._acked_subs: set[str] = set()
        self._sub_mids: dict[int, list[str]] = {}
        self._session_up = False
        self._commands: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=100)
        self._close_deadline = 0.0

        self._net = threading.Thread(target=self._run, name="mqtt-sink", daemon=True)
        self._worker = threading.Thread(target=self._run_commands, name="mqtt-commands", daemon=True)
        self._net.start()
        self._worker.start()

    # ----------------------------------------------------------------------------------------- public API

    @property
    def connected(self) -> bool:
        """Whether a broker session is up right now."""
        return self._connected

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
            body.setdefault("mqtt", self.connection())
            with self._status_lock:
                self._last_status = body
        seq = self.outbox.add(
            kind,
            topic(self._cfg.topic_prefix, self.device_id, kind),
            lambda s: encode(make_envelope(kind, self.device_id, s, body)),
            qos=self._cfg.qos,
            retain=kind == "status",
        )
        return seq

    def publish_raw(self, topic: str, payload: bytes | str, retain: bool = False, qos: int = 1) -> None:
        """Publish without envelope or outbox (discovery configs); held in memory while disconnected."""
        self._raw.append((topic, payload, retain, qos))

    def subscribe(self, topic: str, callback: Callable[[str, bytes], None]) -> None:
        """Subscribe (QoS 1) now and after every reconnect; ``callback(topic, payload)`` runs on the network thread."""
        with self._subs_lock:
            self._subs[topic] = callback
        self._new_subs.put(topic)

    def add_connect_hook(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` on the network thread after every successful (re)connect, and right away (on that
        thread) if the sink is connected already, so a late-registered extension never misses a connect."""
        self._new_hooks.put(fn)

    def stats(self) -> dict[str, int]:
        """``{"pending": messages not yet acknowledged, "dropped": messages dropped by the outbox bound}``."""
        return {"pending": self.outbox.pending(), "dropped": self.outbox.dropped()}

    def connection(self) -> dict[str, Any]:
        """``{"connected": bool, "refused": bool, "error": last problem or None}`` (also put into status)."""
        return {"connected": self._connected, "refused": self._refused is not None, "error": self._error}

    def wait_connected(self, timeout: float) -> bool:
        """Block until a broker session is up (True) or ``timeout`` seconds passed (False)."""
        return self._connected_evt.wait(timeout)

    def wait_subscribed(self, timeout: float) -> bool:
        """Block until the broker has acknowledged every subscription of this sink in the current session
        (True) or ``timeout`` seconds passed (False). Messages sent to a topic before its SUBACK may be lost,
        so callers that publish to the device right after it connects wait for this first."""
        with self._subs_lock:
            return self._subs_lock.wait_for(lambda: self._connected and set(self._subs) <= self._acked_subs, timeout)

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
            self.publish("status", _offline_copy(last))
        self._closed = True
        # Wait while a session is up or the first attempt is still under way; when the broker is unreachable or
        # refuses us, waiting only delays the shutdown: the messages stay in the outbox for the next run.
        while self.outbox.pending() > 0 and time.monotonic() < deadline and (self._connected or self._error is None):
            time.sleep(0.02)
        self._close_deadline = deadline
        self._stop.set()
        self._net.join(max(0.5, deadline - time.monotonic() + 1.0))
        self._commands.put(None)
        self._worker.join(1.0)
        left = self.outbox.pending()
        self.outbox.close()
        if left:
            log.warning("MQTT sink closed with %d message(s) left in the outbox; they are sent on the next run", left)
        else:
            log.info("MQTT sink closed; outbox empty")

    # ----------------------------------------------------------------------------------------- internals

    def _build_tls_context(self) -> ssl.SSLContext:
        tls = self._cfg.tls
        try:
            ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
            if tls.cert_file:
                ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise SinkError(
                f"mqtt.tls: cannot load the CA/client certificate files ({exc}); check mqtt.tls.ca_file, "
                "cert_file and key_file"
            ) from None
        if tls.insecure:
            ctx.check_hostname = False
        return ctx

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        # paho queues nothing beyond what we hand it: the outbox is the queue.
        client.max_inflight_messages_set(self._cfg.max_inflight + _MAX_RAW_QUEUED)
        client.will_set(self.availability_topic, "offline", qos=1, retain=True)
        if self._cfg.username:
            client.username_pw_set(self._cfg.username, self._password)
        if self._tls_context is not None:
            client.tls_set_context(self._tls_context)
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
        delay = self._cfg.reconnect_min_s
        while not self._stop.is_set():
            client = self._make_client()
            started = time.monotonic()
            try:
                client.connect(self.host, self.port, keepalive=self._cfg.keepalive_s)
            except ssl.SSLError as exc:  # a subclass of OSError, so it comes first
                self._note(logging.ERROR, f"TLS handshake with MQTT broker {self.host}:{self.port} failed ({exc}); "
                           "check mqtt.tls.ca_file (the CA that signed the broker) and the host name; retrying")
            except OSError as exc:
                self._note(logging.WARNING, f"MQTT broker {self.host}:{self.port} unreachable ({exc}); "
                           f"retrying with backoff, messages wait in the outbox")
            else:
                try:
                    self._session(client)
                except Exception:  # a bug here must not end publishing for the daemon's lifetime
                    log.exception("MQTT network loop failed; reconnecting")
                finally:
                    self._end_session(client)
            if self._stop.is_set():
                break
            if self._refused is None and time.monotonic() - started > _HEALTHY_SESSION_S:
                delay = self._cfg.reconnect_min_s  # the last session was healthy: retry quickly
            self._backoff_wait(delay)
            delay = min(delay * 2, self._cfg.reconnect_max_s)

    def _session(self, client: mqtt.Client) -> None:
        """Run one broker connection until it fails or the sink stops."""
        connect_deadline = time.monotonic() + _CONNACK_TIMEOUT_S
        self._refused_now = False
        self._session_up = False
        while True:
            rc = client.loop(timeout=_LOOP_TIMEOUT_S)
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
                               f"{_CONNACK_TIMEOUT_S:.0f} s; retrying")
                    return
                continue
            self._pump(client)
            if self._stop.is_set():
                self._say_goodbye(client)
                return

    def _pump(self, client: mqtt.Client) -> None:
        """Acknowledge what the broker confirmed, then keep up to max_inflight outbox messages in flight."""
        while self._raw:
            t, payload, retain, qos = self._raw.popleft()
            client.publish(t, payload, qos=qos, retain=retain)
        while not self._new_subs.empty():
            self._subscribe(client, [self._new_subs.get()])
        while not self._new_hooks.empty():
            hook = self._new_hooks.get()
            self._hooks.append(hook)
            self._call_hook(hook)
        done = [seq for seq, info in self._inflight.items() if info.is_published()]
        if done:
            self.outbox.ack(done)
            for seq in done:
                del self._inflight[seq]
        room = self._cfg.max_inflight - len(self._inflight)
        if room <= 0:
            return
        for msg in self.outbox.peek(self._cursor, room):
            info = client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break  # the connection is going down; the next session resends from the outbox
            self._inflight[msg.seq] = info
            self._cursor = msg.seq

    def _say_goodbye(self, client: mqtt.Client) -> None:
        """On close: retained availability "offline", wait for its PUBACK (bounded), then a clean DISCONNECT."""
        info = client.publish(self.availability_topic, "offline", qos=1, retain=True)
        deadline = max(self._close_deadline, time.monotonic() + 0.5)
        while not info.is_published() and time.monotonic() < deadline:
            if client.loop(timeout=_LOOP_TIMEOUT_S) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
        # Record acks that arrived while waiting, so they are not resent next run.
        done = [seq for seq, i in self._inflight.items() if i.is_published()]
        self.outbox.ack(done)
        client.disconnect()

    def _end_session(self, client: mqtt.Client) -> None:
        was = self._connected
        self._connected = False
        self._connected_evt.clear()
        self._forget_subs()
        # Unacknowledged messages die with this session; the next one resends them from the outbox, in order.
        self._inflight.clear()
        self._cursor = 0
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
                f"and the password (${self._cfg.password_env} or credential {self._cfg.password_credential}) and the "
                f"broker's ACL; retrying with backoff up to {self._cfg.reconnect_max_s:.0f} s",
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
                           f"{sub} ({code}); allow it in the broker's ACL for user {self._cfg.username or '(none)'}")
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

    def _on_command_message(self, topic_: str, payload: bytes) -> None:
        try:
            cmd = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            self._command_result(None, False, "command payload is not JSON; send e.g. {\"command\": \"publish_status\"}")
            return
        if not isinstance(cmd, dict) or not isinstance(cmd.get("command"), str):
            self._command_result(None, False, "command must be a JSON object with a string field 'command'")
            return
        try:
            self._commands.put_nowait(cmd)
        except queue.Full:
            self._command_result(cmd["command"], False, "too many queued commands; try again later", cmd)

    def _command_result(self, command: str | None, ok: bool, detail: str, request: Any = None) -> None:
        if not ok:
            log.warning("MQTT command %s not done: %s", command, detail)
        if not self._closed:
            self.publish("events", command_event(command, ok, detail, request))

    def _run_commands(self) -> None:
        while True:
            cmd = self._commands.get()
            if cmd is None:
                return
            handler = self.on_command
            if handler is None:
                self._command_result(cmd["command"], False, "this device has no command handler", cmd)
                continue
            try:
                handler(cmd)
            except Exception as exc:
                log.exception("command %s failed", cmd.get("command"))
                self._command_result(cmd["command"], False, f"command failed: {exc}", cmd)
