"""The outbox's storage faults (a mixin of :class:`edge.runtime.publish.outbox.Outbox`): what a full, failing or
read-only disk changes, and the outbox's maintenance writes (re-addressing, discarding, the drop counter).

See the module doc of :mod:`edge.runtime.publish.outbox` ("Storage faults") for the behaviour. Every method here
runs with the outbox's lock held, except the public :meth:`StorageFaults.readdress` and
:meth:`StorageFaults.discard`, which take it.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edge.runtime.loglimit import LogLimiter
from edge.runtime.publish.seq import SeqBlock

log = logging.getLogger("edge.runtime.publish.outbox")

#: Message kind dropped first when the outbox is full, and batched while there is no session.
DROP_FIRST_KIND = "faces"
#: Messages kept in memory at most while the disk refuses writes (about 5 MB of typical messages).
FAULT_MEMORY_MAX = 10_000
#: What a disk fault means, by SQLite's primary result code, for the one log line of an episode.
_FAULT_CAUSES = {
    "SQLITE_FULL": "the disk is full",
    "SQLITE_IOERR": "I/O error: the storage is failing",
    "SQLITE_READONLY": "the file system or the database file is read-only",
    "SQLITE_CANTOPEN": "cannot open the database file (permissions?)",
    "SQLITE_PERM": "permission denied",
}


def fault_cause(exc: sqlite3.Error) -> str:
    """A plain cause for a failed write (``the disk is full``...), with SQLite's own message."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    cause = next((text for code, text in _FAULT_CAUSES.items() if name == code or name.startswith(code + "_")), None)
    return f"{cause} ({exc})" if cause else str(exc)


class StorageFaults:
    """Storage-fault handling and maintenance writes; the state lives in :class:`edge.runtime.publish.outbox.Outbox`."""

    path: Path
    _conn: sqlite3.Connection
    _lock: threading.Lock
    _seq: SeqBlock
    _memory: deque[Any]
    _clock: Callable[[], float]
    _disk: int
    _dropped: int
    _fault: str | None
    _fault_since: float
    _fault_dropped: Counter[str]
    _unsaved_drops: int
    _acked: set[int]
    _fault_log: LogLimiter

    def _save_drops(self, dropped: int) -> None:
        """Add ``dropped`` to the persisted drop counter (inside the caller's transaction)."""
        self._conn.execute(
            "INSERT INTO meta(key, value) VALUES('dropped', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
            (dropped,),
        )

    def _commit(self, works: bool = True) -> None:
        """COMMIT the caller's transaction with the drops counted while the disk refused writes; with ``works``,
        a storage-fault episode ends."""
        try:
            if self._unsaved_drops:
                self._save_drops(self._unsaved_drops)
            self._conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._unsaved_drops = 0
        if works:
            self._disk_ok()

    @contextlib.contextmanager
    def _transaction(self, works: bool = True) -> Iterator[None]:
        """One write transaction (lock held): ``BEGIN IMMEDIATE``, rolled back if the block raises, else committed
        (:meth:`_commit`; with ``works`` a storage-fault episode ends). Raises what the block or SQLite raised."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._rollback()
            raise
        self._commit(works)

    def _rollback(self) -> None:
        # SQLite may have rolled back already (a full disk, an I/O error): then ROLLBACK itself fails.
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.debug("ROLLBACK failed", exc_info=True)

    def _disk_fault(self, exc: sqlite3.Error) -> None:
        """A write failed: begin (or go on with) a storage-fault episode; its first failure is logged (lock held)."""
        if self._fault is None:
            self._fault = fault_cause(exc)
            self._fault_since = self._clock()
            self._fault_dropped.clear()
            # Limited: a disk that is only just full can take a write and refuse the next, again and again.
            self._fault_log.warning("fault", "cannot write to the outbox %s: %s; messages wait in memory (at most "
                                    "%d; the oldest faces are dropped first) and are delivered from there; retrying "
                                    "the disk every few seconds", str(self.path), self._fault, FAULT_MEMORY_MAX)
        else:
            log.debug("outbox write failed again: %s", exc)

    def _disk_ok(self) -> None:
        """A write succeeded: end the storage-fault episode, if one was under way (lock held)."""
        if self._fault is not None:
            # By kind: faces go first, but once only other kinds are left in memory those go too.
            kinds = ", ".join(f"{n} {kind}" for kind, n in self._fault_dropped.most_common())
            self._fault_log.warning("ok", "the outbox %s takes writes again after %.0f s (%s); %d message(s) were "
                                    "dropped meanwhile%s", str(self.path), self._clock() - self._fault_since,
                                    self._fault, self._fault_dropped.total(), f" ({kinds})" if kinds else "")
            self._fault = None

    def _shed_memory(self) -> None:
        """While the disk refuses writes, keep memory at :data:`FAULT_MEMORY_MAX`: the oldest ``faces`` go first,
        then the oldest of any kind (lock held)."""
        over = len(self._memory) - FAULT_MEMORY_MAX
        if over <= 0:
            return
        faces = [m for m in self._memory if m.kind == DROP_FIRST_KIND][:over + FAULT_MEMORY_MAX // 100]
        gone = {m.seq for m in faces}
        kept = deque(m for m in self._memory if m.seq not in gone)
        if faces:  # a kind that lost nothing is not named in the recovery line
            self._fault_dropped[DROP_FIRST_KIND] += len(faces)
        while len(kept) > FAULT_MEMORY_MAX:
            self._fault_dropped[kept.popleft().kind] += 1
        n = len(self._memory) - len(kept)
        self._memory = kept
        self._dropped += n
        self._unsaved_drops += n

    def _probe(self) -> None:
        """A small real write (the exact seq, and the drops not saved yet): does the disk take writes again?"""
        with self._transaction(works=False):  # the episode ends when what waits can be written too
            self._seq.mark_stored(self._seq.last)

    def _delete_acked(self) -> None:
        """Delete the acknowledged messages that a storage fault kept on disk (lock held; raises sqlite3.Error)."""
        with self._transaction():
            cur = self._conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in self._acked])
            removed = max(cur.rowcount, 0)
        self._acked.clear()
        self._disk -= removed

    def readdress(self, topic_of: Callable[[str], str], suffix_of: Callable[[str], str]) -> int:
        """Give the messages on disk whose topic ends with ``suffix_of(kind)`` (same device and kind) but differs
        from ``topic_of(kind)`` that topic: after the topic prefix changed, what was queued goes out under the new
        one instead of to a topic the broker may refuse. Returns how many were changed."""
        with self._lock:
            kinds = [r[0] for r in self._conn.execute("SELECT DISTINCT kind FROM outbox").fetchall()]
            changed = 0
            with self._transaction():
                for kind in kinds:
                    new, suffix = topic_of(kind), suffix_of(kind)
                    cur = self._conn.execute(
                        "UPDATE outbox SET topic = ? WHERE kind = ? AND topic <> ? AND substr(topic, -?) = ?",
                        (new, kind, new, len(suffix), suffix))
                    changed += max(cur.rowcount, 0)
            return changed

    def discard(self, seq: int) -> None:
        """Drop one message for good (one the broker keeps refusing), counted in ``dropped``."""
        with self._lock:
            before = len(self._memory)
            self._memory = deque(m for m in self._memory if m.seq != seq)
            if len(self._memory) < before:
                self._dropped += 1
                self._unsaved_drops += 1
                return
            try:
                with self._transaction():
                    removed = max(self._conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,)).rowcount, 0)
                    if removed:
                        self._save_drops(removed)
            except sqlite3.Error as exc:  # deleted later with the acknowledged ones; skipped meanwhile
                self._disk_fault(exc)
                self._acked.add(seq)
                self._dropped += 1
                self._unsaved_drops += 1
                return
            self._disk -= removed
            self._dropped += removed
