"""JSON lines on stdout, with the same envelope and persisted seq as MQTT (no broker needed)."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from edge.config import Config
from edge.protocol.envelope import encode, make_envelope
from edge.runtime.publish.base import OUTBOX_FILE, CommandHandler, SinkError, offline_copy
from edge.runtime.publish.seq import SeqCounter

log = logging.getLogger(__name__)


class StdoutSink:
    """JSON lines on a text stream (stdout by default) with the same envelope and persisted seq as MQTT.

    The MQTT-only hooks (:meth:`publish_raw`, :meth:`subscribe`, :meth:`add_connect_hook`) exist so extensions
    work unchanged, and do nothing: there is no broker to talk to.

    Args:
        device_id: Device id written into every envelope.
        seq_counter: Persisted counter (share the outbox database to keep one sequence); in-memory if None.
        stream: Where lines go; default ``sys.stdout``.
    """

    has_broker = False

    def __init__(self, device_id: str, seq_counter: SeqCounter | None = None, stream: TextIO | None = None):
        self.device_id = device_id
        self._seq = seq_counter or SeqCounter(None)
        self._stream = stream
        self._lock = threading.Lock()
        self._last_status: dict[str, Any] | None = None
        self._closed = False

    @classmethod
    def from_config(cls, config: Config, stream: TextIO | None = None) -> StdoutSink:
        """A stdout sink whose seq continues the device's sequence in ``<state dir>/outbox.db``.

        Raises:
            SinkError: The sequence database cannot be opened (the message says which file and what to do).
        """
        try:
            counter = SeqCounter(config.state_dir() / OUTBOX_FILE)
        except OSError as exc:
            raise SinkError(str(exc)) from None
        return cls(config.device.id, counter, stream)

    @property
    def connected(self) -> bool:
        """Always False: there is no broker."""
        return False

    def alive(self) -> bool:
        """Always True: the stdout sink has no thread of its own."""
        return True

    def publish(self, kind: str, body: dict[str, Any]) -> int:
        """Print one envelope as a JSON line and return its seq."""
        with self._lock:
            if self._closed:
                raise SinkError("publish() after close(): the sink is closed")
            if kind == "status":
                body = dict(body)
                body.setdefault("outbox", self.stats())
                self._last_status = body
            seq = self._seq.next()
            line = encode(make_envelope(kind, self.device_id, seq, body)).decode("utf-8")
            stream = self._stream or sys.stdout
            stream.write(line + "\n")
            stream.flush()
            return seq

    def publish_raw(self, topic: str, payload: bytes | str, retain: bool = False, qos: int = 1) -> None:
        """Ignored (no broker); logged at debug level."""
        log.debug("stdout sink: not publishing raw message to %s", topic)

    def publish_state(self, leaf: str, value: str) -> None:
        """Ignored: the plain-value topics exist only on a broker (the JSON lines carry the same figures)."""

    def subscribe(self, topic: str, callback: Callable[[str, bytes], None], max_bytes: int | None = None,
                  on_oversized: Callable[[str, int], None] | None = None) -> None:
        """Ignored: nothing ever arrives on stdout."""
        log.debug("stdout sink: subscription to %s has no effect", topic)

    def add_connect_hook(self, fn: Callable[[], None]) -> None:
        """Ignored: a stdout sink never connects."""

    def set_command_handler(self, handler: CommandHandler) -> None:
        """Ignored: no command can arrive on stdout."""

    def stats(self) -> dict[str, int]:
        """Outbox statistics: always empty for stdout."""
        return {"pending": 0, "dropped": 0}

    def close(self, timeout: float = 5.0) -> None:
        """Print a last status with state "offline" (if a status was printed before) and stop."""
        if self._closed:
            return
        if self._last_status is not None:
            self.publish("status", offline_copy(self._last_status))
        with self._lock:
            self._closed = True
            self._seq.close()
