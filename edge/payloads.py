"""The envelope every JSON payload carries, the topic names, and the persisted ``seq`` counter.

Every message on ``status``, ``faces``, ``summary`` and ``events`` starts with the same five fields
(``schema_version``, ``device_id``, ``kind``, ``ts``, ``seq``) followed by the kind's body. ``seq`` is one counter
per device across all four kinds, strictly increasing and persisted in the outbox database (table ``meta``), so a
subscriber can put messages in order and recognise duplicates after a reconnect or a restart. The JSON Schema of
all kinds ships as ``edge/schema/payloads.schema.json``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
#: The payload kinds; each is also the last topic level.
KINDS = ("status", "faces", "summary", "events")
#: The envelope fields, in the order they appear in every payload.
ENVELOPE_FIELDS = ("schema_version", "device_id", "kind", "ts", "seq")
SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "payloads.schema.json"

_META_DDL = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)"


class PayloadError(ValueError):
    """A payload body cannot be wrapped (unknown kind, envelope field in the body, not JSON-serialisable)."""


def topic(prefix: str, device_id: str, leaf: str) -> str:
    """The topic ``<prefix>/<device_id>/<leaf>``, e.g. ``emotion/pi1/status``."""
    return f"{prefix}/{device_id}/{leaf}"


def make_envelope(kind: str, device_id: str, seq: int, body: dict[str, Any], ts: float | None = None) -> dict[str, Any]:
    """Return ``body`` wrapped in the envelope (envelope fields first, then the body fields in their order).

    Raises:
        PayloadError: ``kind`` is not one of :data:`KINDS`, or the body already uses an envelope field name.
    """
    if kind not in KINDS:
        raise PayloadError(f"unknown payload kind {kind!r}; expected one of {', '.join(KINDS)}")
    clash = [k for k in ENVELOPE_FIELDS if k in body]
    if clash:
        raise PayloadError(f"{kind} body must not contain envelope field(s) {', '.join(clash)}")
    msg: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "device_id": device_id,
        "kind": kind,
        "ts": time.time() if ts is None else float(ts),
        "seq": int(seq),
    }
    msg.update(body)
    return msg


def command_event(command: str | None, ok: bool, detail: str | None, request: Any = None) -> dict[str, Any]:
    """The body of the ``events`` message that answers a command.

    A ``request_id`` in ``request`` (the command object; a string of 1-64 characters) is echoed, so the
    sender can tell its own answer from others' and from re-delivered old ones.
    """
    body: dict[str, Any] = {"event": "command", "track_id": None, "command": command, "ok": ok, "detail": detail}
    rid = request.get("request_id") if isinstance(request, dict) else None
    if isinstance(rid, str) and 0 < len(rid) <= 64:
        body["request_id"] = rid
    return body


def encode(message: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON of a message. NaN/Infinity are refused because they are not JSON.

    Raises:
        PayloadError: The message holds something JSON cannot represent.
    """
    try:
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"{message.get('kind', '?')} payload is not JSON-serialisable: {exc}") from None


def load_schema() -> dict[str, Any]:
    """The JSON Schema (Draft 2020-12) describing every payload kind."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


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

    It uses the same ``meta`` table as :class:`edge.outbox.Outbox`, so pointing both at the same database file
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
