"""``record``: store the feeds of one or many devices in a recording (SQLite file or PostgreSQL), losing nothing.

How nothing gets lost: the recorder holds a persistent MQTT session (fixed client id, MQTT 5 clean_start
false with a session expiry), so the broker queues QoS 1 messages while the recorder is down; and it
acknowledges each message only after it is committed, so a crash between receipt and commit means a
redelivery, not a gap. Redeliveries and retained re-sends are dropped by the ``UNIQUE(device, seq, ts)``
constraint (a redelivery is the same message, so it has the same ``ts``; a device whose state folder was wiped
starts again at seq 1 with newer ``ts``, and those messages are kept). Restarting with the same ``--db`` resumes
with the same client id (stored in the recording). If the database fails (disk full, server gone) the recorder
stops acknowledging and ends with the reason; what it had not committed stays with the broker for its next run.

Scaling out: with ``share`` several recorders subscribe as one MQTT 5 shared subscription
(``$share/<group>/<prefix>/+/<kind>``), so the broker hands each message to one of them; they write into one
PostgreSQL database. Each member keeps its own persistent session (its own client id: the default one is per
host, recording and group, so several members on one host need ``--client-id`` each), and the dedupe key makes a
message that reaches two members (redelivered to another after its first one went away for good) one row.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import paho.mqtt.client as mqtt

from edge.protocol.broker import BrokerSettings
from edge.protocol.topics import parse_topic
from edge.tools.subscribe.client import (
    SubscribeError,
    Subscriber,
    decode_json,
    envelope_ok,
    subscription_filters,
)
from edge.tools.subscribe.store import Recording, StoreError, is_database_url

log = logging.getLogger(__name__)


def default_client_id(db_path: Path | str, share: str | None = None) -> str:
    """A client id unique to this host, recording (file or database URL) and shared-subscription group, so two
    recordings never share a session."""
    where = str(db_path) if is_database_url(db_path) else str(Path(db_path).resolve())
    digest = hashlib.sha256(where.encode()).hexdigest()[:10]
    host = "".join(c for c in socket.gethostname().split(".")[0] if c.isalnum() or c in "-_")[:20] or "host"
    return f"emotion-record-{host}-{digest}" + (f"-{share}" if share else "")


def shared_filters(group: str, filters: Sequence[str]) -> list[str]:
    """``filters`` as members of the MQTT 5 shared subscription ``group`` (``$share/<group>/<filter>``).

    Raises:
        SubscribeError: ``group`` is not one plain topic level.
    """
    if not group or any(c in group for c in "/+#$"):
        raise SubscribeError(f"--share {group!r}: the group name must be one plain topic level (no '/', '+', '#', '$')")
    return [f"$share/{group}/{f}" for f in filters]


class Recorder:
    """Subscribe to the contract topics and store every message once.

    Args:
        settings: Broker settings.
        db_path: The recording (created or resumed): a SQLite file, or a ``postgresql://`` URL.
        devices: Device ids or ``+`` (all devices).
        client_id: Persistent-session client id; default: the one stored in the recording, else
            :func:`default_client_id` (with ``share``: always :func:`default_client_id`, as the members of a
            group share one recording but each needs its own session).
        session_expiry_s: How long the broker keeps queueing for this recorder while it is away.
        share: Join the MQTT 5 shared subscription of this group instead of receiving every message.

    Raises:
        StoreError: the recording cannot be opened.
        SubscribeError: bad device filter or group name.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        db_path: Path | str,
        devices: Sequence[str] = ("+",),
        client_id: str | None = None,
        session_expiry_s: int = 7 * 24 * 3600,
        share: str | None = None,
    ) -> None:
        self.settings = settings
        filters = subscription_filters(settings.topic_prefix, devices)
        if share is not None:
            filters = shared_filters(share, filters)
        self.recording = Recording(db_path)
        if share is not None:
            self.client_id = client_id or default_client_id(db_path, share)
        else:
            stored = self.recording.set_meta_default("client_id", client_id or default_client_id(db_path))
            if client_id and client_id != stored:
                log.warning("recording %s was made with client id %s; using %s as asked", self.recording.where,
                            stored, client_id)
            self.client_id = client_id or stored
        self.stored = 0
        self.duplicates = 0
        self.ignored = 0
        self._count_lock = threading.Lock()
        #: Why the recording stopped (the database failed), if it did.
        self.store_failure: str | None = None
        self._store_failed = threading.Event()
        self.subscriber = Subscriber(
            settings,
            filters,
            self._on_message,
            client_id=self.client_id,
            persistent=True,
            session_expiry_s=session_expiry_s,
            manual_ack=True,
        )

    def _on_message(self, client: mqtt.Client, msg: mqtt.MQTTMessage) -> None:
        if self._store_failed.is_set():
            return  # unacknowledged: the broker keeps it for the next run
        try:
            self._store(msg)
        except StoreError as exc:
            self.store_failure = str(exc)
            log.error("recording failed: %s; no longer acknowledging messages", exc)
            self._store_failed.set()
            return
        # Only now, with the row committed, may the broker forget the message.
        self.subscriber.ack(msg)

    def _store(self, msg: mqtt.MQTTMessage) -> None:
        parsed = parse_topic(msg.topic, self.settings.topic_prefix)
        if parsed is None:
            return
        device, kind = parsed
        now = time.time()
        if kind == "availability":
            state = msg.payload.decode("utf-8", "replace").strip()
            if state:  # an empty retained payload only clears the topic
                self.recording.add_availability(device, state, now)
        else:
            body = decode_json(bytes(msg.payload))
            if body is None or not envelope_ok(body):
                # Not a contract message: storing it would break the dedupe; acknowledge and skip it (an
                # unacknowledged message would hold one of the broker's in-flight slots for good).
                log.warning("skipping a message on %s without a JSON envelope (integer seq, numeric ts)", msg.topic)
                with self._count_lock:
                    self.ignored += 1
            else:
                body.setdefault("kind", kind)
                body.setdefault("device_id", device)
                new = self.recording.add_message(device, msg.topic, body, now)
                with self._count_lock:
                    if new:
                        self.stored += 1
                    else:
                        self.duplicates += 1

    def start(self, timeout: float = 10.0) -> None:
        """Connect and subscribe; queued messages of the persistent session start arriving."""
        self.subscriber.start(timeout)
        log.info("recording %s to %s as client %s", ", ".join(self.subscriber.filters), self.recording.where, self.client_id)

    def run(self, duration: float | None = None, stop: threading.Event | None = None) -> None:
        """Record until ``duration`` seconds have passed or ``stop`` is set (Ctrl-C is the caller's).

        Raises:
            SubscribeError: the broker refused a reconnect for good (e.g. the credentials were revoked), so
                nothing more would be recorded.
            StoreError: the database failed (disk full, server gone); unacknowledged messages stay queued.
        """
        stop = stop or threading.Event()
        deadline = None if duration is None else time.monotonic() + duration
        while not stop.is_set() and not self.subscriber.failed.is_set() and not self._store_failed.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            stop.wait(0.5 if left is None else min(0.5, left))
        if self._store_failed.is_set():
            raise StoreError(f"{self.store_failure}; recording stopped (the broker keeps what was not stored)")
        if self.subscriber.failed.is_set():
            raise SubscribeError(f"{self.subscriber.failure}; recording stopped, check the user name and password")

    def stop(self) -> None:
        """Disconnect (the broker keeps the session) and close the recording."""
        self.subscriber.stop()
        self.recording.close()
