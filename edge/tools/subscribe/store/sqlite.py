"""The embedded default: a recording in one SQLite file.

Why SQLite: a single file that survives a crash (WAL, one transaction per message, committed with
``synchronous=FULL`` before the broker gets its PUBACK), readable by any tool, nothing to install or run. One
writer at a time: for several recorders sharing a feed, or more messages a second than one file takes, record
into PostgreSQL (:mod:`edge.tools.subscribe.store.postgres`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

from edge.tools.subscribe.store.base import SCHEMA_VERSION, Recording, StoreError, is_database_url

log = logging.getLogger(__name__)

# The columns and the dedupe key of the messages table (version 2).
_MESSAGES_TABLE = """(
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    ts REAL NOT NULL,
    received_ts REAL NOT NULL,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    UNIQUE (device, seq, ts)
)"""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages {_MESSAGES_TABLE};
CREATE INDEX IF NOT EXISTS messages_device_kind_ts ON messages (device, kind, ts);
CREATE TABLE IF NOT EXISTS availability (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    received_ts REAL NOT NULL,
    state TEXT NOT NULL
);
"""

# Version 1 keyed messages on (device, seq) alone; SQLite cannot change a constraint in place.
_MIGRATE_1_TO_2 = f"""
BEGIN;
CREATE TABLE messages_v2 {_MESSAGES_TABLE};
INSERT INTO messages_v2 SELECT id, device, seq, kind, ts, received_ts, topic, payload FROM messages;
DROP TABLE messages;
ALTER TABLE messages_v2 RENAME TO messages;
CREATE INDEX IF NOT EXISTS messages_device_kind_ts ON messages (device, kind, ts);
UPDATE meta SET value = '2' WHERE key = 'schema_version';
COMMIT;
"""


class SqliteRecording(Recording):
    """A recording in a SQLite file.

    Args:
        target: The SQLite file.
        readonly: Open an existing file without writing (plot, export).
    """

    @classmethod
    def handles(cls, target: Path | str) -> bool:
        """Anything that is not a database URL is a SQLite file."""
        return not is_database_url(target)

    def __init__(self, target: Path | str, readonly: bool = False) -> None:
        self.path = Path(target)
        self.where = str(self.path)
        self._lock = threading.Lock()
        if readonly and not self.path.is_file():
            raise StoreError(f"{self.path}: no such recording; record one with `emotion-edge record --db {self.path}`")
        try:
            if readonly:
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                # FULL: a message is on disk before it is acknowledged to the broker.
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_SCHEMA)
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                self._db.commit()
                if self._stored_version() == "1":
                    log.info("%s: upgrading the recording from schema 1 to 2", self.path)
                    try:
                        self._db.executescript(_MIGRATE_1_TO_2)
                    except sqlite3.OperationalError as exc:  # e.g. locked by a recorder of the old version
                        self._db.rollback()
                        self._db.close()
                        raise StoreError(f"{self.path}: cannot upgrade the recording ({exc}); is another recorder "
                                         "using it? stop it and run this again") from None
            version = self._stored_version()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable recording database ({exc})") from None
        # Read-only use (plot, export) reads both versions: only the dedupe key differs.
        if version is None or int(version) not in ((1, SCHEMA_VERSION) if readonly else (SCHEMA_VERSION,)):
            raise StoreError(f"{self.path}: recording schema {version}, this tool reads {SCHEMA_VERSION}; use a new --db file")

    def _stored_version(self) -> str | None:
        # Straight on the connection: while opening, a driver error means "not a recording", not a failed write.
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return row[0] if row else None

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)
