"""The device's persisted ``seq`` counter (table ``meta`` of the outbox database), written rarely.

``seq`` is one counter per device across all payload kinds, strictly increasing across restarts, and never
reused: subscribers order and deduplicate by it. Writing the counter to the SD card for every message would cost
a commit per message, so seqs are reserved in blocks: the file holds ``seq_reserved``, an upper bound of what was
handed out, written once per :data:`BLOCK` seqs, and ``seq``, the exact last one, written with every message that
goes to disk and on a clean close. A restart continues after the larger of the two, so after a crash (kill -9, a
power cut) the sequence jumps ahead by less than :data:`BLOCK`; after a clean stop it continues without a gap.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

#: Seqs reserved per write of ``seq_reserved``.
BLOCK = 1000

_META_DDL = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)"
_SET = "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"


def ensure_meta(conn: sqlite3.Connection) -> None:
    """Create the ``meta`` key/value table that holds the seq counter (and the outbox drop counter)."""
    conn.execute(_META_DDL)


def meta_value(conn: sqlite3.Connection, key: str) -> int:
    """An integer of the ``meta`` table (0 when the key is not there yet)."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


class SeqBlock:
    """Hands out seqs from memory, reserving them on disk a block at a time.

    Not thread-safe on its own: the caller holds its lock (the outbox's, or :class:`SeqCounter`'s).

    Args:
        conn: The open outbox database (autocommit mode; the caller issues BEGIN/COMMIT).
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        # Whichever sink creates the file first, it gets incremental auto-vacuum (it must be set before the first
        # table exists), so the outbox can give its pages back after a backlog.
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        ensure_meta(conn)
        self.last = max(meta_value(conn, "seq"), meta_value(conn, "seq_reserved"))
        self._reserved = self.last

    def take(self, reserve: bool = True) -> int:
        """The next seq. With ``reserve``, another block is reserved on disk when the reservation is used up
        (inside the caller's transaction if one is open, else in one of its own); without, the caller stores the
        seq exactly (:meth:`mark_stored`) in its own transaction. When the reservation cannot be written
        (sqlite3.Error: a full or failing disk), the seq is taken anyway and is :attr:`last`."""
        self.last += 1
        if reserve and self.last > self._reserved:
            reserved, self._reserved = self._reserved, self.last + BLOCK - 1
            try:
                self._write_reservation()
            except sqlite3.Error:
                # The seq is taken all the same (:attr:`last`); the next take tries the reservation again.
                self._reserved = reserved
                raise
        return self.last

    def _write_reservation(self) -> None:
        # Seqs of this block may be acknowledged by the broker before the next commit: the reservation must reach
        # the disk even through a power cut, or a reboot would hand them out again. Once per BLOCK seqs, so a full
        # sync costs nothing; outside a transaction only (PRAGMA synchronous cannot change inside one).
        if self._conn.in_transaction:
            self._conn.execute(_SET, ("seq_reserved", self._reserved))
            return
        previous = self._conn.execute("PRAGMA synchronous").fetchone()[0]
        self._conn.execute("PRAGMA synchronous=FULL")
        try:
            self._conn.execute(_SET, ("seq_reserved", self._reserved))
        finally:
            self._conn.execute(f"PRAGMA synchronous={int(previous)}")

    def give_back(self, seq: int) -> None:
        """Undo the last :meth:`take` (the message that was to carry ``seq`` could not be built)."""
        if seq == self.last:
            self.last -= 1

    def mark_stored(self, seq: int) -> None:
        """Record ``seq`` as the exact last one (call inside the transaction that stores its message)."""
        self._conn.execute(_SET, ("seq", seq))

    def close(self) -> None:
        """Write the exact last seq and shrink the reservation to it, so the next run continues without a gap."""
        self._conn.execute(_SET, ("seq", self.last))
        self._conn.execute(_SET, ("seq_reserved", self.last))
        self._reserved = self.last


class SeqCounter:
    """A stand-alone persisted seq counter for sinks without an outbox (stdout).

    It uses the same ``meta`` table as :class:`edge.runtime.publish.outbox.Outbox`, so pointing both at the same
    database file keeps one sequence whichever sink a run uses.

    Args:
        db_path: SQLite file, created if missing; ``None`` keeps the counter in memory only.
    """

    def __init__(self, db_path: Path | None):
        self._lock = threading.Lock()
        target = ":memory:" if db_path is None else str(db_path)
        if db_path is not None:
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=10)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._block = SeqBlock(self._conn)
        except sqlite3.DatabaseError as exc:  # e.g. a file damaged by a power cut on an SD card
            raise OSError(
                f"cannot open the sequence database {db_path}: {exc}; move the file away to start the seq at 1 again"
            ) from None

    def next(self) -> int:
        """The next seq (a disk write only once per :data:`BLOCK`)."""
        with self._lock:
            return self._block.take()

    def close(self) -> None:
        """Persist the exact last seq and close the database."""
        with self._lock:
            self._block.close()
            self._conn.close()
