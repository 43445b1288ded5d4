"""A bounded, ordered disk outbox (SQLite, WAL) for MQTT messages awaiting their PUBACK.

paho-mqtt keeps unacknowledged QoS 1 messages only in memory, so a crash or a long broker outage would lose
them. Every payload is written here first, with its ``seq`` taken in the same transaction (see
:func:`edge.runtime.publish.seq.next_seq`), and removed only when the broker acknowledged it. A restarted process sends
what is left, oldest first.

Durability: WAL with ``synchronous=NORMAL`` survives a killed process (committed transactions are in the WAL
file); only a power cut can lose the last few commits, which is the usual trade-off for an SD card.

Bound: at most ``max_messages`` rows. Adding beyond that drops the oldest ``faces`` message (per-frame updates
are the cheapest to lose: summaries keep the aggregate), or, when no ``faces`` message is left, the oldest
message of any kind. Every drop increments a persisted counter reported as ``status.outbox.dropped``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.runtime.publish.seq import ensure_meta, last_seq, next_seq

log = logging.getLogger(__name__)

#: Message kind dropped first when the outbox is full.
DROP_FIRST_KIND = "faces"


@dataclass(frozen=True)
class OutboxMessage:
    """One stored message, ready to publish."""

    seq: int
    kind: str
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    """The SQLite outbox. Thread-safe: the frame loop adds while the MQTT pump reads and acknowledges.

    Args:
        path: Database file (created with its folder if missing), usually ``<state dir>/outbox.db``.
        max_messages: Upper bound on stored messages (see the module docstring for the drop policy).
    """

    def __init__(self, path: Path, max_messages: int = 100_000):
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_messages = max_messages
        self._lock = threading.Lock()
        try:
            # isolation_level=None: explicit BEGIN/COMMIT, so seq + insert + drop are one transaction.
            self._conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=10)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            ensure_meta(self._conn)
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, "
                "topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL)"
            )
            self._conn.execute("CREATE INDEX IF NOT EXISTS outbox_kind_seq ON outbox(kind, seq)")
            self._count = int(self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise OSError(
                f"cannot open the outbox database {self.path}: {exc}; move the file away to start with an empty outbox"
            ) from None

    def add(self, kind: str, topic: str, build: Callable[[int], bytes], qos: int = 1, retain: bool = False) -> int:
        """Take the next seq, store the message ``build(seq)`` and enforce the bound, in one transaction.

        Args:
            kind: Payload kind (``faces`` messages are dropped first when full).
            topic: MQTT topic.
            build: Makes the payload bytes for a given seq (the seq is part of the payload).
            qos: MQTT QoS.
            retain: MQTT retain flag.

        Returns:
            The seq of the stored message.
        """
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                seq = next_seq(self._conn)
                self._conn.execute(
                    "INSERT INTO outbox(seq, kind, topic, payload, qos, retain) VALUES (?, ?, ?, ?, ?, ?)",
                    (seq, kind, topic, build(seq), qos, int(retain)),
                )
                dropped = 0
                while self._count + 1 - dropped > self.max_messages:
                    self._drop_one()
                    dropped += 1
                if dropped:
                    self._conn.execute(
                        "INSERT INTO meta(key, value) VALUES('dropped', ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                        (dropped,),
                    )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            self._count += 1 - dropped
            if dropped:
                log.debug("outbox full (%d messages): dropped %d old message(s)", self.max_messages, dropped)
            return seq

    def _drop_one(self) -> None:
        # Oldest 'faces' first (the index on (kind, seq) makes this cheap), else the oldest of any kind.
        row = self._conn.execute("SELECT MIN(seq) FROM outbox WHERE kind = ?", (DROP_FIRST_KIND,)).fetchone()
        if row[0] is None:
            row = self._conn.execute("SELECT MIN(seq) FROM outbox").fetchone()
        self._conn.execute("DELETE FROM outbox WHERE seq = ?", (row[0],))

    def peek(self, after_seq: int = 0, limit: int = 20) -> list[OutboxMessage]:
        """Up to ``limit`` stored messages with seq greater than ``after_seq``, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, kind, topic, payload, qos, retain FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [OutboxMessage(r[0], r[1], r[2], bytes(r[3]), int(r[4]), bool(r[5])) for r in rows]

    def ack(self, seqs: list[int]) -> None:
        """Remove acknowledged messages (unknown seqs, e.g. already dropped, are ignored)."""
        if not seqs:
            return
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                cur = self._conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
                removed = cur.rowcount
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            self._count -= max(removed, 0)

    def pending(self) -> int:
        """Messages stored and not yet acknowledged."""
        with self._lock:
            return self._count

    def dropped(self) -> int:
        """Messages dropped by the bound since the database was created."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
        return int(row[0]) if row else 0

    def last_seq(self) -> int:
        """The last seq handed out (0 if none yet)."""
        with self._lock:
            return last_seq(self._conn)

    def close(self) -> None:
        """Close the database (pending messages stay for the next run)."""
        with self._lock:
            self._conn.close()
