"""JSON lines on stdout, with the same envelope and persisted seq as MQTT (no broker needed)."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

from edge.config import Config
from edge.protocol.envelope import encode, make_envelope
from edge.runtime.publish.base import OUTBOX_FILE, SinkError, SinkStats
from edge.runtime.publish.seq import SeqCounter

log = logging.getLogger(__name__)


class StdoutSink:
    """JSON lines on a text stream (stdout by default) with the same envelope and persisted seq as MQTT.

    There is no broker behind it, so it has no broker session: the features that need one are not started.

    Args:
        device_id: Device id written into every envelope.
        seq_counter: Persisted counter (share the outbox database to keep one sequence); in-memory if None.
        stream: Where lines go; default ``sys.stdout``.
    """

    def __init__(self, device_id: str, seq_counter: SeqCounter | None = None, stream: TextIO | None = None):
        self.device_id = device_id
        self._seq = seq_counter or SeqCounter(None)
        self._stream = stream
        self._lock = threading.Lock()
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

    def alive(self) -> bool:
        """Always True: the stdout sink has no thread of its own."""
        return True

    def publish(self, kind: str, body: dict[str, Any]) -> int:
        """Print one envelope as a JSON line and return its seq."""
        with self._lock:
            if self._closed:
                raise SinkError("publish() after close(): the sink is closed")
            seq = self._seq.next()
            line = encode(make_envelope(kind, self.device_id, seq, body)).decode("utf-8")
            stream = self._stream or sys.stdout
            stream.write(line + "\n")
            stream.flush()
            return seq

    def publish_state(self, leaf: str, value: str) -> None:
        """Ignored: the plain-value topics exist only on a broker (the JSON lines carry the same figures)."""

    def stats(self) -> SinkStats:
        """Nothing waits: every line is written at once."""
        return {"pending": 0, "dropped": 0}

    def close(self, timeout: float = 5.0) -> None:
        """Stop printing (the daemon's last status, state "offline", is its own last publish before this)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._seq.close()
