"""What every recording backend shares: the tables, the dedupe key, the queries and the exports.

A recording holds every received contract message once per ``(device, seq, ts)``: the ``UNIQUE`` constraint of
the ``messages`` table drops MQTT's at-least-once redeliveries (``INSERT ... ON CONFLICT DO NOTHING``, which
SQLite and PostgreSQL both speak). ``ts`` is part of the key because a device whose state folder was wiped
starts again at seq 1: its new messages have old seq numbers but newer timestamps, while a redelivery is the
very same message. The queries below are written once with ``?`` placeholders; a backend whose driver uses
another style translates them (:meth:`Recording._sql`). Exports go to CSV (stdlib) and Parquet (pyarrow,
optional) from either backend.
"""

from __future__ import annotations

import csv
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeGuard

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2

#: Tables that :meth:`Recording.export` can write.
EXPORT_TABLES = ("messages", "faces", "summary")
#: Export columns in UNIX seconds that get an ISO 8601 UTC twin, ``<name>_iso``, beside them.
TIME_COLUMNS = ("ts", "received_ts")


def with_iso_times(cols: list[str], rows: list[list[Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows with an ISO 8601 UTC text column after each :data:`TIME_COLUMNS` column, for
    spreadsheets and people; the UNIX seconds stay for programs."""
    at = {i for i, c in enumerate(cols) if c in TIME_COLUMNS}

    def widen(values: list[Any], extra: Callable[[Any], Any]) -> list[Any]:
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

#: URL schemes of a PostgreSQL (or TimescaleDB, same wire protocol) recording.
DATABASE_URL_SCHEMES = ("postgresql://", "postgres://")


def is_number(value: Any) -> TypeGuard[int | float]:
    """Whether a JSON value is a number (``True``/``False`` are not, although Python counts them as ints)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_database_url(target: str | Path) -> bool:
    """Whether a ``--db`` value names a PostgreSQL database (``postgresql://...``) rather than a SQLite file."""
    return isinstance(target, str) and target.startswith(DATABASE_URL_SCHEMES)


def _dicts(value: Any) -> list[dict]:
    """The JSON objects of a list field (a body from another publisher may hold anything there)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


class StoreError(Exception):
    """The recording cannot be used; one line saying what to do."""


class Recording:
    """An open recording (created on first use, resumed afterwards). Thread-safe.

    ``Recording(target)`` opens the backend that ``target`` names, as :class:`pathlib.Path` picks its flavour:
    a ``postgresql://user@host:port/dbname`` URL opens :class:`~.postgres.PostgresRecording`, anything else is
    a SQLite file (:class:`~.sqlite.SqliteRecording`).

    Args:
        target: The SQLite file, or the PostgreSQL URL (password from ``$PGPASSWORD`` or ``~/.pgpass``).
        readonly: Open an existing recording without writing (plot, export).
    """

    #: Where the recording is, for messages (a path, or the URL without its password).
    where: str
    _db: Any
    _lock: threading.Lock

    #: The backends, in the order they are asked whether they handle a target (each subclass adds itself).
    _backends: list[type[Recording]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Recording._backends.append(cls)

    @classmethod
    def handles(cls, target: Path | str) -> bool:
        """Whether this backend opens ``target``."""
        raise NotImplementedError

    def __new__(cls, target: Path | str, readonly: bool = False) -> Recording:
        if cls is Recording:
            # The backends register when edge.tools.subscribe.store (the package) imports them.
            cls = next(b for b in Recording._backends if b.handles(target))
        return super().__new__(cls)

    # -- what a backend provides ---------------------------------------------------------------------
    def _sql(self, query: str) -> str:
        """``query`` in the driver's placeholder style (written with ``?``)."""
        return query

    def _exec(self, query: str, args: tuple | list = ()) -> Any:
        """Run one statement on the connection (the caller holds the lock); return the driver's cursor.

        Raises:
            StoreError: the database failed (disk full, server gone), with the backend's one-line reason.
        """
        try:
            return self._db.execute(self._sql(query), args)
        except self._driver_errors() as exc:
            self._rollback()
            raise StoreError(f"{self.where}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}") from None

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        raise NotImplementedError

    def _rollback(self) -> None:
        try:
            self._db.rollback()
        except self._driver_errors():
            pass  # the connection is gone; the error that got us here is what gets reported

    def _commit(self) -> None:
        try:
            self._db.commit()
        except self._driver_errors() as exc:
            self._rollback()
            raise StoreError(f"{self.where}: cannot commit ({exc})") from None

    # -- meta ----------------------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        """A value from the meta table."""
        with self._lock:
            row = self._exec("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta_default(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless one is there; return the stored value."""
        with self._lock:
            self._exec("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", (key, value))
            self._commit()
        return self.meta(key) or value

    # -- writing -------------------------------------------------------------------------------------
    def add_message(self, device: str, topic: str, msg: dict[str, Any], received_ts: float | None = None) -> bool:
        """Store one contract message (needs ``seq``, ``kind``, ``ts``) and commit; ``False`` if ``(device, seq,
        ts)`` is already stored.

        Raises:
            StoreError: the database failed; nothing was stored.
        """
        with self._lock:
            cur = self._exec(
                "INSERT INTO messages (device, seq, kind, ts, received_ts, topic, payload) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device, seq, ts) DO NOTHING",
                (device, int(msg["seq"]), str(msg["kind"]), float(msg["ts"]),
                 received_ts if received_ts is not None else time.time(), topic, json.dumps(msg, separators=(",", ":"))),
            )
            self._commit()
            return cur.rowcount == 1

    def add_availability(self, device: str, state: str, received_ts: float | None = None) -> bool:
        """Store an online/offline change; repeats of the current state (retained re-deliveries) are skipped."""
        with self._lock:
            row = self._exec(
                "SELECT state FROM availability WHERE device = ? ORDER BY id DESC LIMIT 1", (device,)
            ).fetchone()
            if row and row[0] == state:
                return False
            self._exec(
                "INSERT INTO availability (device, received_ts, state) VALUES (?, ?, ?)",
                (device, received_ts if received_ts is not None else time.time(), state),
            )
            self._commit()
            return True

    # -- reading -------------------------------------------------------------------------------------
    def _rows(self, query: str, args: tuple | list = ()) -> list[tuple]:
        with self._lock:
            return self._exec(query, args).fetchall()

    def count(self, device: str | None = None, kind: str | None = None) -> int:
        """Number of stored messages, optionally for one device and/or kind."""
        args: list[str] = []
        sql = "SELECT COUNT(*) FROM messages WHERE 1=1"
        if device is not None:
            sql, args = sql + " AND device = ?", [*args, device]
        if kind is not None:
            sql, args = sql + " AND kind = ?", [*args, kind]
        return int(self._rows(sql, args)[0][0])

    def devices(self) -> list[str]:
        """Devices that have messages, sorted."""
        return [r[0] for r in self._rows("SELECT DISTINCT device FROM messages ORDER BY device")]

    def seqs(self, device: str) -> list[int]:
        """Stored seq numbers of one device in message time order (ascending, unless its seq restarted)."""
        return [r[0] for r in self._rows("SELECT seq FROM messages WHERE device = ? ORDER BY ts, seq", (device,))]

    def iter_messages(
        self, device: str | None = None, kind: str | None = None, since: float | None = None, until: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """Stored payloads (dicts) ordered by device and ``ts``, filtered by device, kind and time range."""
        sql, args = "SELECT payload FROM messages WHERE 1=1", []
        for col, op, val in (("device", "=", device), ("kind", "=", kind), ("ts", ">=", since), ("ts", "<", until)):
            if val is not None:
                sql += f" AND {col} {op} ?"
                args.append(val)
        for (payload,) in self._rows(sql + " ORDER BY device, ts, seq", args):
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
            # The payload as compact JSON with sorted keys: the same text from every backend (PostgreSQL's jsonb
            # keeps no key order or spacing).
            rows = [[*r[:6], json.dumps(json.loads(r[6]), sort_keys=True, separators=(",", ":"))]
                    for r in self._rows(sql + " ORDER BY device, ts, seq", args)]
            return ["device", "seq", "kind", "ts", "received_ts", "topic", "payload"], rows
        labels = self.labels(device)
        p_cols = [f"p_{lab}" for lab in labels]
        rows = []
        if table == "faces":
            cols = ["device", "seq", "ts", "frame", "track_id", "emotion", "confidence", "x", "y", "w", "h", *p_cols]
            for m in self.iter_messages(device, "faces"):
                for f in _dicts(m.get("faces")):
                    box = given if isinstance(given := f.get("box"), list) else []
                    box = (box + [None] * 4)[:4]
                    probs = found if isinstance(found := f.get("probs"), dict) else {}
                    rows.append([m["device_id"], m["seq"], m["ts"], m.get("frame"), f.get("track_id"), f.get("emotion"),
                                 f.get("confidence"), *box, *(probs.get(lab) for lab in labels)])
        else:
            cols = ["device", "seq", "ts", "window_s", "frames", "faces_mean", "faces_max", "dominant_emotion", *p_cols]
            for m in self.iter_messages(device, "summary"):
                probs = found if isinstance(found := m.get("mean_probs"), dict) else {}
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
