"""The recording file: one SQLite database holding every received message once per ``(device, seq, ts)``.

Why SQLite: a single file that survives a crash (WAL, one transaction per message, committed before the
broker gets its PUBACK), readable by any tool, and a ``UNIQUE(device, seq, ts)`` constraint does the dedupe of
MQTT's at-least-once redeliveries for free. ``ts`` is part of the key because a device whose state folder was
wiped starts again at seq 1: its new messages have old seq numbers but newer timestamps, while a redelivery is
the very same message. Exports to CSV (stdlib) and Parquet (pyarrow, optional).
"""

from __future__ import annotations

import csv
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2

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

#: Tables that :meth:`Recording.export` can write.
EXPORT_TABLES = ("messages", "faces", "summary")
#: Export columns in UNIX seconds that get an ISO 8601 UTC twin, ``<name>_iso``, beside them.
TIME_COLUMNS = ("ts", "received_ts")


def with_iso_times(cols: list[str], rows: list[list[Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows with an ISO 8601 UTC text column after each :data:`TIME_COLUMNS` column, for
    spreadsheets and people; the UNIX seconds stay for programs."""
    at = {i for i, c in enumerate(cols) if c in TIME_COLUMNS}

    def widen(values: list[Any], extra) -> list[Any]:
        out: list[Any] = []
        for i, v in enumerate(values):
            out.append(v)
            if i in at:
                out.append(extra(v))
        return out

    def iso(v: Any) -> str | None:
        if not is_number(v):
            return None
        return datetime.fromtimestamp(float(v), timezone.utc).isoformat(timespec="milliseconds")

    return widen(cols, lambda c: f"{c}_iso"), [widen(r, iso) for r in rows]


def is_number(value: Any) -> bool:
    """Whether a JSON value is a number (``True``/``False`` are not, although Python counts them as ints)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _dicts(value: Any) -> list[dict]:
    """The JSON objects of a list field (a body from another publisher may hold anything there)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


class StoreError(Exception):
    """The recording file cannot be used; one line saying what to do."""


class Recording:
    """An open recording database (created on first use, resumed afterwards). Thread-safe.

    Args:
        path: The SQLite file.
        readonly: Open an existing file without writing (plot, export).
    """

    def __init__(self, path: Path | str, readonly: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        if readonly and not self.path.is_file():
            raise StoreError(f"{self.path}: no such recording; record one with `python -m edge record --db {self.path}`")
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
                if self.meta("schema_version") == "1":
                    log.info("%s: upgrading the recording from schema 1 to 2", self.path)
                    try:
                        self._db.executescript(_MIGRATE_1_TO_2)
                    except sqlite3.OperationalError as exc:  # e.g. locked by a recorder of the old version
                        self._db.rollback()
                        self._db.close()
                        raise StoreError(f"{self.path}: cannot upgrade the recording ({exc}); is another recorder "
                                         "using it? stop it and run this again") from None
            version = self.meta("schema_version")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable recording database ({exc})") from None
        # Read-only use (plot, export) reads both versions: only the dedupe key differs.
        if version is None or int(version) not in ((1, SCHEMA_VERSION) if readonly else (SCHEMA_VERSION,)):
            raise StoreError(f"{self.path}: recording schema {version}, this tool reads {SCHEMA_VERSION}; use a new --db file")

    # -- meta ----------------------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        """A value from the meta table."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta_default(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless one is there; return the stored value."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, value))
            self._db.commit()
        return self.meta(key) or value

    # -- writing -------------------------------------------------------------------------------------
    def add_message(self, device: str, topic: str, msg: dict[str, Any], received_ts: float | None = None) -> bool:
        """Store one contract message (needs ``seq``, ``kind``, ``ts``); ``False`` if ``(device, seq, ts)`` exists."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO messages (device, seq, kind, ts, received_ts, topic, payload) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (device, int(msg["seq"]), str(msg["kind"]), float(msg["ts"]),
                 received_ts if received_ts is not None else time.time(), topic, json.dumps(msg, separators=(",", ":"))),
            )
            self._db.commit()
            return cur.rowcount == 1

    def add_availability(self, device: str, state: str, received_ts: float | None = None) -> bool:
        """Store an online/offline change; repeats of the current state (retained re-deliveries) are skipped."""
        with self._lock:
            row = self._db.execute(
                "SELECT state FROM availability WHERE device = ? ORDER BY id DESC LIMIT 1", (device,)
            ).fetchone()
            if row and row[0] == state:
                return False
            self._db.execute(
                "INSERT INTO availability (device, received_ts, state) VALUES (?, ?, ?)",
                (device, received_ts if received_ts is not None else time.time(), state),
            )
            self._db.commit()
            return True

    # -- reading -------------------------------------------------------------------------------------
    def count(self, device: str | None = None, kind: str | None = None) -> int:
        """Number of stored messages, optionally for one device and/or kind."""
        sql, args = "SELECT COUNT(*) FROM messages WHERE 1=1", []
        if device is not None:
            sql, args = sql + " AND device = ?", [*args, device]
        if kind is not None:
            sql, args = sql + " AND kind = ?", [*args, kind]
        with self._lock:
            return int(self._db.execute(sql, args).fetchone()[0])

    def devices(self) -> list[str]:
        """Devices that have messages, sorted."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT device FROM messages ORDER BY device")]

    def seqs(self, device: str) -> list[int]:
        """Stored seq numbers of one device in message time order (ascending, unless its seq restarted)."""
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT seq FROM messages WHERE device = ? ORDER BY ts, seq", (device,))]

    def iter_messages(
        self, device: str | None = None, kind: str | None = None, since: float | None = None, until: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """Stored payloads (dicts) ordered by device and ``ts``, filtered by device, kind and time range."""
        sql, args = "SELECT payload FROM messages WHERE 1=1", []
        for col, op, val in (("device", "=", device), ("kind", "=", kind), ("ts", ">=", since), ("ts", "<", until)):
            if val is not None:
                sql += f" AND {col} {op} ?"
                args.append(val)
        sql += " ORDER BY device, ts, seq"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        for (payload,) in rows:
            yield json.loads(payload)

    def labels(self, device: str | None = None) -> list[str]:
        """Class labels in model order: those of the newest status message (of each device, when ``device`` is
        None, in device order), then any other label seen in the probabilities (an older model's, another
        device's), so an export has a column for every label it holds."""
        seen: dict[str, None] = {}
        for dev in [device] if device is not None else self.devices():
            for msg in reversed(list(self.iter_messages(dev, "status"))):
                labels = (msg.get("model") or {}).get("labels")
                if labels:
                    seen.update(dict.fromkeys(str(x) for x in labels))
                    break
        # A summary's mean_probs has every label of the model of its window; faces only matter without them.
        for kind in ("summary", "faces"):
            found = False
            for msg in self.iter_messages(device, kind):
                for p in [msg.get("mean_probs")] + [f.get("probs") for f in _dicts(msg.get("faces"))]:
                    if isinstance(p, dict) and p:
                        seen.update(dict.fromkeys(str(k) for k in p))
                        found = True
            if found:
                break
        return list(seen)

    # -- export --------------------------------------------------------------------------------------
    def table_rows(self, table: str, device: str | None = None) -> tuple[list[str], list[list[Any]]]:
        """Column names and rows of an export table.

        ``messages``: one row per message with its JSON payload; ``faces``: one row per face observation
        with one ``p_<label>`` column per class; ``summary``: one row per summary window.
        """
        if table not in EXPORT_TABLES:
            raise StoreError(f"unknown export table {table!r}; choose one of {', '.join(EXPORT_TABLES)}")
        if table == "messages":
            sql, args = "SELECT device, seq, kind, ts, received_ts, topic, payload FROM messages", []
            if device:
                sql, args = sql + " WHERE device = ?", [device]
            with self._lock:
                rows = [list(r) for r in self._db.execute(sql + " ORDER BY device, ts, seq", args)]
            return ["device", "seq", "kind", "ts", "received_ts", "topic", "payload"], rows
        labels = self.labels(device)
        p_cols = [f"p_{lab}" for lab in labels]
        rows = []
        if table == "faces":
            cols = ["device", "seq", "ts", "frame", "track_id", "emotion", "confidence", "x", "y", "w", "h", *p_cols]
            for m in self.iter_messages(device, "faces"):
                for f in _dicts(m.get("faces")):
                    box = f.get("box") if isinstance(f.get("box"), list) else []
                    box = (box + [None] * 4)[:4]
                    probs = f.get("probs") if isinstance(f.get("probs"), dict) else {}
                    rows.append([m["device_id"], m["seq"], m["ts"], m.get("frame"), f.get("track_id"), f.get("emotion"),
                                 f.get("confidence"), *box, *(probs.get(lab) for lab in labels)])
        else:
            cols = ["device", "seq", "ts", "window_s", "frames", "faces_mean", "faces_max", "dominant_emotion", *p_cols]
            for m in self.iter_messages(device, "summary"):
                probs = m.get("mean_probs") if isinstance(m.get("mean_probs"), dict) else {}
                rows.append([m["device_id"], m["seq"], m["ts"], m.get("window_s"), m.get("frames"), m.get("faces_mean"),
                             m.get("faces_max"), m.get("dominant_emotion"), *(probs.get(lab) for lab in labels)])
        return cols, rows

    def export(self, out: Path | str, table: str = "messages", device: str | None = None) -> int:
        """Write an export table to ``out`` (``.csv`` or ``.parquet`` by extension); return the row count.

        Raises:
            StoreError: unknown extension or table, or Parquet asked for without pyarrow installed.
        """
        out = Path(out)
        fmt = out.suffix.lower()
        if fmt not in (".csv", ".parquet"):
            raise StoreError(f"{out}: export format is chosen by the extension; use .csv or .parquet")
        if fmt == ".parquet":
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                raise StoreError("Parquet export needs pyarrow: pip install pyarrow (or export to .csv)") from None
        cols, rows = with_iso_times(*self.table_rows(table, device))
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == ".csv":
            with out.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(cols)
                writer.writerows(rows)
        else:
            pq.write_table(pa.Table.from_pylist([dict(zip(cols, r, strict=True)) for r in rows]), out)
        log.info("exported %d %s rows to %s", len(rows), table, out)
        return len(rows)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
