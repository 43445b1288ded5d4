"""A bounded, ordered outbox for MQTT messages awaiting their PUBACK: in memory while the broker acknowledges,
on disk (SQLite, WAL) for what it does not.

paho-mqtt keeps unacknowledged QoS 1 messages only in memory, so a crash or a long broker outage would lose
them; writing every message to the SD card first would wear it out (a commit per message at 10 frames a second
is about 18 GB a day). So:

* While the broker session is up (:attr:`Outbox.memory_ok` says so), a message stays in memory. It reaches the
  disk only if the broker has not acknowledged it within ``memory_s`` seconds (a broker that hangs, a dead link
  not yet noticed), or when more than ``memory_max`` messages wait: then the waiting ones are written in one
  transaction (a group commit), oldest first. A healthy session writes nothing but a seq reservation once per
  1000 messages (:mod:`edge.runtime.publish.seq`).
* While there is no session (broker restarting, unreachable, not yet connected), every message is written to
  disk before :meth:`Outbox.add` returns, as are those still in memory; except per-frame ``faces`` updates,
  which are written in groups at most :data:`OFFLINE_BATCH_S` old (ten a second would otherwise be ten commits
  a second for as long as the broker is away).

The durability window is therefore: a kill -9 or power cut while connected loses at most the messages of the
last ``memory_s`` seconds that the broker had not yet acknowledged; while disconnected, at most the ``faces``
updates of the last :data:`OFFLINE_BATCH_S` seconds (events, summaries and status: nothing). Messages keep their seq and
their order wherever they are: every message on disk is older than every message in memory.

Durability on disk: WAL with ``synchronous=NORMAL`` survives a killed process (committed transactions are in the
WAL file); only a power cut can lose the last few commits, the usual trade-off for an SD card. The file uses
incremental auto-vacuum, so it shrinks back once a backlog is delivered.

Storage faults: while the state folder refuses writes (disk full, I/O errors, read-only), every new message
waits in memory instead (at most :data:`edge.runtime.publish.outbox_faults.FAULT_MEMORY_MAX`; beyond, the oldest ``faces`` message is dropped first,
then the oldest of any kind; counted in ``dropped``), acknowledged messages on disk are remembered and skipped
until they can be deleted, and the log says so once per episode with the cause (at most once a minute, for a
disk that keeps taking one write and refusing the next). The flusher's periodic :meth:`Outbox.spill_stale` tries
the disk again (a small write first); when it works, what waited goes to disk and the episode ends.
While the fault lasts a kill -9 loses what waits in memory.

Bound: at most ``max_messages`` messages in all. Adding beyond that drops the oldest ``faces`` message (per-frame
updates are the cheapest to lose: summaries keep the aggregate), or, when no ``faces`` message is left, the
oldest message of any kind. Every drop increments a persisted counter reported as ``status.outbox.dropped``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge.runtime.loglimit import LogLimiter
from edge.runtime.publish.outbox_faults import DROP_FIRST_KIND, StorageFaults, fault_cause
from edge.runtime.publish.seq import SeqBlock, meta_value

__all__ = ["DROP_FIRST_KIND", "OFFLINE_BATCH_S", "Outbox", "OutboxMessage"]

log = logging.getLogger(__name__)

#: While there is no session, ``faces`` updates wait at most this long in memory before a group commit.
OFFLINE_BATCH_S = 1.0

@dataclass(frozen=True)
class OutboxMessage:
    """One stored message, ready to publish."""

    seq: int
    kind: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    added: float = field(default=0.0, compare=False)


class Outbox(StorageFaults):
    """The outbox. Thread-safe: the frame loop adds while the MQTT pump reads and acknowledges.

    Args:
        path: Database file (created with its folder if missing), usually ``<state dir>/outbox.db``.
        max_messages: Upper bound on kept messages (see the module docstring for the drop policy).
        memory_s: How long a message may wait in memory for its PUBACK before it is written to disk.
        memory_max: Most messages kept in memory; beyond, they are written to disk.
        clock: Monotonic clock (a test seam).

    Attributes:
        memory_ok: Returns whether a broker session is up, i.e. whether new messages may wait in memory; until
            the MQTT sink sets it, every message goes to disk.
    """

    def __init__(self, path: Path, max_messages: int = 100_000, memory_s: float = 2.0, memory_max: int = 1000,
                 clock: Callable[[], float] = time.monotonic):
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_messages = max_messages
        self.memory_s = memory_s
        self.memory_max = memory_max
        self.memory_ok: Callable[[], bool] = lambda: False
        self._clock = clock
        self._lock = threading.Lock()
        self._memory: deque[OutboxMessage] = deque()
        #: The cause of the storage fault under way (None: writes work), when it began, and what it cost so far.
        self._fault: str | None = None
        self._fault_since = 0.0
        self._fault_dropped: Counter[str] = Counter()
        #: Drops counted but not yet added to the persisted counter (made while the disk refused writes).
        self._unsaved_drops = 0
        #: Messages on disk the broker acknowledged that could not be deleted yet: skipped, deleted later.
        self._acked: set[int] = set()
        self._fault_log = LogLimiter(log)
        try:
            # isolation_level=None: explicit BEGIN/COMMIT, so seq + insert + drop are one transaction.
            self._conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=10)
            # Set before the first table exists (it cannot be switched on later without a full VACUUM).
            self._conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._seq = SeqBlock(self._conn)
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, "
                "topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL)"
            )
            self._conn.execute("CREATE INDEX IF NOT EXISTS outbox_kind_seq ON outbox(kind, seq)")
            self._disk = int(self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise OSError(
                f"cannot open the outbox database {self.path}: {exc}; move the file away to start with an empty outbox"
            ) from None
        self._dropped = meta_value(self._conn, "dropped")
        if self._disk == 0 and int(self._conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 0:
            # A file made before incremental auto-vacuum (or by a tool that did not set it): convert it once, while
            # it is empty and the rewrite costs nothing.
            self._conn.executescript("PRAGMA auto_vacuum=INCREMENTAL; VACUUM;")

    # ------------------------------------------------------------------------------------------- adding

    def add(self, kind: str, topic: str, build: Callable[[int], bytes], qos: int = 1, retain: bool = False) -> int:
        """Take the next seq, keep the message ``build(seq)`` and enforce the bound.

        In memory while a session is up (:attr:`memory_ok`), else on disk before returning.

        Args:
            kind: Payload kind (``faces`` messages are dropped first when full).
            topic: MQTT topic.
            build: Makes the payload bytes for a given seq (the seq is part of the payload).
            qos: MQTT QoS.
            retain: MQTT retain flag.

        Returns:
            The seq of the stored message.
        """
        in_memory = self.memory_ok() or kind == DROP_FIRST_KIND
        with self._lock:
            if not in_memory and self._fault is None:
                try:
                    return self._add_to_disk(kind, topic, build, qos, retain)
                except sqlite3.Error as exc:  # the disk refuses: this message waits in memory like the others
                    self._disk_fault(exc)
            try:
                seq = self._seq.take()
            except sqlite3.Error as exc:  # the block reservation was not written; the seq is taken all the same
                seq = self._seq.last
                self._disk_fault(exc)
            try:
                payload = build(seq)
            except BaseException:
                self._seq.give_back(seq)
                raise
            self._memory.append(OutboxMessage(seq, kind, topic, payload, qos, retain, self._clock()))
            if self._fault is not None:
                self._shed_memory()
            elif len(self._memory) > self.memory_max or self._disk + len(self._memory) > self.max_messages:
                try:
                    self._spill(len(self._memory))
                except sqlite3.Error as exc:  # a full or failing disk: the message is kept, the flusher retries
                    self._disk_fault(exc)
            return seq

    def _add_to_disk(self, kind: str, topic: str, build: Callable[[int], bytes], qos: int, retain: bool) -> int:
        self._conn.execute("BEGIN IMMEDIATE")
        seq = None
        try:
            # What waits in memory goes first, so every message on disk stays older than every one in memory.
            spilled = self._write(list(self._memory))
            seq = self._seq.take(reserve=False)  # stored exactly below, in this transaction
            payload = build(seq)
            self._conn.execute(
                "INSERT INTO outbox(seq, kind, topic, payload, qos, retain) VALUES (?, ?, ?, ?, ?, ?)",
                (seq, kind, topic, payload, qos, int(retain)),
            )
            self._seq.mark_stored(seq)
            dropped = self._enforce_bound(self._disk + spilled + 1, 0)
            self._commit()
        except BaseException:
            self._rollback()
            if seq is not None:
                self._seq.give_back(seq)  # nothing carries it: the next message takes it, so no gap
            raise
        self._memory.clear()
        self._disk += spilled + 1 - dropped
        self._dropped += dropped
        return seq

    def _write(self, messages: list[OutboxMessage]) -> int:
        """INSERT messages (inside the caller's transaction); return how many."""
        if messages:
            self._conn.executemany(
                "INSERT INTO outbox(seq, kind, topic, payload, qos, retain) VALUES (?, ?, ?, ?, ?, ?)",
                [(m.seq, m.kind, m.topic, m.payload, m.qos, int(m.retain)) for m in messages],
            )
            self._seq.mark_stored(messages[-1].seq)
        return len(messages)

    def _enforce_bound(self, on_disk: int, in_memory: int) -> int:
        """Drop disk messages until ``on_disk`` + ``in_memory`` fit the bound, and 0.1 % of the bound more (100 at the
        default bound), so a full outbox does not pay a commit for every message it takes; return how many went."""
        over = on_disk + in_memory - self.max_messages
        target = min(on_disk, over + self.max_messages // 1000) if over > 0 else 0
        dropped = 0
        while dropped < target:
            self._drop_one()
            dropped += 1
        if dropped:
            log.debug("outbox full (%d messages): dropped %d old message(s)", self.max_messages, dropped)
            self._save_drops(dropped)
        return dropped

    def _drop_one(self) -> None:
        # Oldest 'faces' first (the index on (kind, seq) makes this cheap), else the oldest of any kind.
        row = self._conn.execute("SELECT MIN(seq) FROM outbox WHERE kind = ?", (DROP_FIRST_KIND,)).fetchone()
        if row[0] is None:
            row = self._conn.execute("SELECT MIN(seq) FROM outbox").fetchone()
        self._conn.execute("DELETE FROM outbox WHERE seq = ?", (row[0],))

    def _spill(self, n: int) -> None:
        """Write the ``n`` oldest messages in memory to disk in one transaction (lock held)."""
        batch = [self._memory[i] for i in range(n)]
        rest = len(self._memory) - n
        with self._transaction():
            written = self._write(batch)
            dropped = self._enforce_bound(self._disk + written, rest)
        for _ in range(n):
            self._memory.popleft()
        self._disk += written - dropped
        self._dropped += dropped

    def spill_stale(self) -> int:
        """Write to disk the messages that waited in memory longer than ``memory_s`` (:data:`OFFLINE_BATCH_S` when
        no session is up); return how many. Called periodically (the sink's flusher thread). During a storage
        fault it tries the disk (deleting what was acknowledged meanwhile, or a probe when nothing waits), and
        ends the episode when that works. A write that fails is not raised: it starts or continues the episode."""
        with self._lock:
            try:
                if self._fault is not None:
                    self._probe()  # a small write first: a full disk would fail the big one after all its work
                if self._acked:
                    self._delete_acked()
                if not self._memory:
                    self._disk_ok()  # nothing waits: the probe's write was the test
                    return 0
                cutoff = self._clock() - (self.memory_s if self.memory_ok() else min(self.memory_s, OFFLINE_BATCH_S))
                n = 0
                for m in self._memory:
                    if m.added > cutoff:
                        break
                    n += 1
                if n:
                    self._spill(n)
                else:
                    self._disk_ok()
                return n
            except sqlite3.Error as exc:
                self._disk_fault(exc)
                return 0


    # ------------------------------------------------------------------------------------------- reading

    def peek(self, after_seq: int = 0, limit: int = 20) -> list[OutboxMessage]:
        """Up to ``limit`` kept messages with seq greater than ``after_seq``, oldest first."""
        with self._lock:
            out: list[OutboxMessage] = []
            if self._disk > len(self._acked):
                try:
                    out = self._peek_disk(after_seq, limit)
                except sqlite3.Error as exc:  # unreadable: nothing is sent (out of order) until it reads again
                    self._disk_fault(exc)
                    return []
            for m in self._memory:
                if len(out) >= limit:
                    break
                if m.seq > after_seq:
                    out.append(m)
            return out

    def _peek_disk(self, after_seq: int, limit: int) -> list[OutboxMessage]:
        """Up to ``limit`` messages on disk after ``after_seq``, skipping the acknowledged ones not deleted yet."""
        out: list[OutboxMessage] = []
        while len(out) < limit:
            rows = self._conn.execute(
                "SELECT seq, kind, topic, payload, qos, retain FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit + len(self._acked)),
            ).fetchall()
            out += [OutboxMessage(r[0], r[1], r[2], bytes(r[3]), int(r[4]), bool(r[5]))
                    for r in rows if r[0] not in self._acked][:limit - len(out)]
            if len(rows) < limit + len(self._acked):
                break
            after_seq = rows[-1][0]
        return out

    def ack(self, seqs: list[int]) -> None:
        """Remove acknowledged messages (unknown seqs, e.g. already dropped, are ignored)."""
        if not seqs:
            return
        with self._lock:
            done = set(seqs)
            if self._memory:
                kept = [m for m in self._memory if m.seq not in done]
                if len(kept) != len(self._memory):
                    done -= {m.seq for m in self._memory}
                    self._memory = deque(kept)
            if not done or not self._disk:
                return
            # With what an earlier storage fault kept acknowledged on disk: one delete for all of them.
            self._acked |= done
            try:
                self._delete_acked()
            except sqlite3.Error as exc:  # remembered and skipped, so never sent again; deleted once writes work
                self._disk_fault(exc)
                return
            if self._disk == 0:
                # The backlog is delivered: give the pages back, so a burst does not leave a big file behind.
                # executescript steps the pragma to its end (execute() would free a single page).
                self._conn.executescript("PRAGMA incremental_vacuum;")

    def pending(self) -> int:
        """Messages kept and not yet acknowledged (memory and disk)."""
        with self._lock:
            return self._disk - len(self._acked) + len(self._memory)

    def on_disk(self) -> int:
        """Messages kept on disk."""
        with self._lock:
            return self._disk - len(self._acked)

    def dropped(self) -> int:
        """Messages dropped by the bound since the database was created."""
        with self._lock:
            return self._dropped

    def close(self) -> None:
        """Write what is still in memory to disk, persist the exact seq, and close (pending messages stay for
        the next run)."""
        with self._lock:
            try:
                if self._acked:
                    self._delete_acked()
                if self._memory:
                    self._spill(len(self._memory))
                self._seq.close()
            except sqlite3.Error as exc:
                log.error("cannot write to the outbox %s on close: %s; the %d message(s) waiting in memory are lost",
                          self.path, fault_cause(exc), len(self._memory))
            self._conn.close()
