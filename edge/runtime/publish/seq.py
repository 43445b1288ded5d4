"""The device's persisted ``seq`` counter (table ``meta`` of the outbox database)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

_META_DDL = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)"


def ensure_meta(conn: sqlite3.Connection) -> None:
    """Create the ``meta`` key/value table that holds the seq counter (and the outbox drop counter)."""
    conn.execute(_META_DDL)


def next_seq(conn: sqlite3.Connection) -> int:
    """Increment and return the device's seq counter.

    Call it inside the caller's transaction so that taking a seq and storing the message that carries it are one
    atomic step: a crash can then never leave a gap (a seq taken but never stored).
    """
    conn.execute(
        "INSERT INTO meta(key, value) VALUES('seq', 1) ON CONFLICT(key) DO UPDATE SET value = value + 1"
    )
    return int(conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0])


def last_seq(conn: sqlite3.Connection) -> int:
    """The last seq handed out (0 if none yet)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
    return int(row[0]) if row else 0


class SeqCounter:
    """A stand-alone persisted seq counter for sinks without an outbox (e.g. stdout).

    It uses the same ``meta`` table as :class:`edge.runtime.publish.outbox.Outbox`, so pointing both at the same database file
    keeps one sequence whichever sink a run uses.

    Args:
        db_path: SQLite file, created if missing; ``None`` keeps the counter in memory only.
    """

    def __init__(self, db_path: Path | None):
        self._lock = threading.Lock()
        target = ":memory:" if db_path is None else str(db_path)
        if db_path is not None:
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves so each increment is one durable transaction.
            self._conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=10)
            self._conn.execute("PRAGMA journal_mode=WAL")
            ensure_meta(self._conn)
        except sqlite3.DatabaseError as exc:  # e.g. a file damaged by a power cut on an SD card
            raise OSError(
                f"cannot open the sequence database {db_path}: {exc}; move the file away to start the seq at 1 again"
            ) from None

    def next(self) -> int:
        """Increment, persist and return the next seq."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                seq = next_seq(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return seq

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()
