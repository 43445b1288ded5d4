"""The SQLite outbox: order, acknowledgement, atomic seq, bound and drop policy, persistence."""

from __future__ import annotations

import json
import time

import pytest

from edge.runtime.publish.mqtt import MqttSink
from edge.runtime.publish.outbox import Outbox
from tests.support.broker import free_port
from tests.support.mqtt import event_body, faces_body, sink_config, status_body, validator


def _add(box: Outbox, kind: str, text: str = "x") -> int:
    return box.add(kind, f"emotion/dev1/{kind}", lambda seq: f"{text}{seq}".encode())


def test_messages_come_back_in_seq_order_until_acknowledged(tmp_path):
    box = Outbox(tmp_path / "o.db", max_messages=1000)
    seqs = [_add(box, kind) for kind in ["status", "faces", "events", "summary", "faces"]]
    assert seqs == [1, 2, 3, 4, 5]
    assert [m.seq for m in box.peek(0, 3)] == [1, 2, 3]
    assert [m.seq for m in box.peek(3, 10)] == [4, 5]
    first = box.peek(0, 1)[0]
    assert first.payload == b"x1" and first.topic == "emotion/dev1/status" and first.qos == 1
    box.ack([2, 4, 99])  # 99 is unknown (e.g. already dropped): ignored
    assert [m.seq for m in box.peek(0, 10)] == [1, 3, 5]
    assert box.pending() == 3


def test_pending_messages_and_seq_survive_reopening(tmp_path):
    box = Outbox(tmp_path / "o.db")
    for _ in range(4):
        _add(box, "events")
    box.ack([1])
    box.close()
    box = Outbox(tmp_path / "o.db")
    assert box.pending() == 3
    assert [m.seq for m in box.peek(0, 10)] == [2, 3, 4]
    assert _add(box, "events") == 5


def test_a_failing_payload_builder_takes_no_seq(tmp_path):
    box = Outbox(tmp_path / "o.db")
    _add(box, "events")

    def boom(seq: int) -> bytes:
        raise ValueError("cannot encode")

    with pytest.raises(ValueError):
        box.add("events", "t", boom)
    assert _add(box, "events") == 2, "a failed add must not leave a gap in seq"
    assert box.pending() == 2


def test_bound_drops_oldest_faces_first_then_oldest_of_any_kind(tmp_path):
    box = Outbox(tmp_path / "o.db", max_messages=4)
    s1 = _add(box, "status")
    f2 = _add(box, "faces")
    e3 = _add(box, "events")
    f4 = _add(box, "faces")
    s5 = _add(box, "summary")  # full: drops the oldest faces (2)
    assert [m.seq for m in box.peek()] == [s1, e3, f4, s5]
    e6 = _add(box, "events")  # drops faces 4
    assert [m.seq for m in box.peek()] == [s1, e3, s5, e6]
    e7 = _add(box, "events")  # no faces left: drops the oldest of any kind (status 1)
    assert [m.seq for m in box.peek()] == [e3, s5, e6, e7]
    assert box.dropped() == 3 and box.pending() == 4
    assert f2 not in {m.seq for m in box.peek()}
    box.close()
    assert Outbox(tmp_path / "o.db", max_messages=4).dropped() == 3, "the drop counter is persisted"


def test_sink_reports_drops_in_status_while_the_broker_is_away(tmp_path):
    # Nothing listens on this port: everything stays in the outbox, bounded at 100.
    cfg = sink_config(tmp_path / "state", None, host="127.0.0.1", port=free_port(), outbox={"max_messages": 100})
    sink = MqttSink(cfg)
    try:
        for i in range(10):
            sink.publish("events", event_body(i))
        for i in range(120):
            sink.publish("faces", faces_body(i))
        deadline = time.monotonic() + 5
        while sink.connection_state()["error"] is None and time.monotonic() < deadline:
            time.sleep(0.02)
        sink.publish("status", status_body(stats=sink.stats()))  # as the daemon builds it
        stats = sink.stats()
        assert (stats["pending"], stats["dropped"]) == (100, 31)
        kept = sink.outbox.peek(0, 200)
        assert sum(m.kind == "events" for m in kept) == 10, "events must outlive faces updates"
        assert kept[-1].kind == "status"
        status = json.loads(kept[-1].payload)
        validator().validate(status)
        assert status["outbox"]["dropped"] == 30, "the status was made before its own insert dropped one more"
        assert status["mqtt"]["connected"] is False and "unreachable" in status["mqtt"]["error"]
    finally:
        sink.close(timeout=0.5)


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_healthy_session_keeps_messages_in_memory_and_writes_nothing_per_message(tmp_path):
    clock = _Clock()
    box = Outbox(tmp_path / "o.db", memory_s=2.0, clock=clock)
    box.memory_ok = lambda: True
    db, wal = tmp_path / "o.db", tmp_path / "o.db-wal"
    before = db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    for _ in range(500):
        seq = _add(box, "faces")
        box.ack([seq])  # the broker acknowledges within the window
    after = db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    assert box.pending() == 0 and box.on_disk() == 0
    assert after - before <= 16 * 1024, "at most a seq reservation, not a commit per message"
    box.close()
    assert _add(Outbox(tmp_path / "o.db"), "events") == 501, "a clean close continues the sequence without a gap"


def test_messages_not_acknowledged_within_the_window_go_to_disk_in_order(tmp_path):
    clock = _Clock()
    box = Outbox(tmp_path / "o.db", memory_s=2.0, clock=clock)
    box.memory_ok = lambda: True
    first = [_add(box, "events") for _ in range(3)]
    clock.t += 1.0
    later = [_add(box, "events") for _ in range(2)]
    assert box.spill_stale() == 0 and box.on_disk() == 0
    clock.t += 1.5  # the first three waited 2.5 s, the others 1.5 s
    assert box.spill_stale() == 3 and box.on_disk() == 3
    assert [m.seq for m in box.peek(0, 10)] == first + later, "disk first, then memory: seq order"
    box.memory_ok = lambda: False  # the session went down: everything goes to disk, new ones directly
    assert box.spill_stale() == 2
    new = _add(box, "events")
    assert box.on_disk() == 6 and [m.seq for m in box.peek(0, 10)] == first + later + [new]
    box.ack(first + later + [new])
    assert box.pending() == 0


def test_a_kill_loses_only_what_waited_in_memory(tmp_path):
    box = Outbox(tmp_path / "o.db", memory_s=2.0)
    box.memory_ok = lambda: False
    on_disk = [_add(box, "events") for _ in range(3)]
    box.memory_ok = lambda: True
    in_memory = [_add(box, "events") for _ in range(2)]
    box._conn.close()  # no close(): the process died
    again = Outbox(tmp_path / "o.db")
    assert [m.seq for m in again.peek(0, 10)] == on_disk
    assert _add(again, "events") > max(in_memory), "a seq is never reused after a crash"


def test_the_file_shrinks_back_once_a_backlog_is_delivered(tmp_path):
    box = Outbox(tmp_path / "o.db")
    seqs = [box.add("events", "t", lambda s: b"x" * 4000) for _ in range(500)]
    box._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    big = (tmp_path / "o.db").stat().st_size
    box.ack(seqs)
    box._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    small = (tmp_path / "o.db").stat().st_size
    assert big > 1_500_000 and small < big / 10, (big, small)


def test_without_a_session_faces_updates_are_group_committed_and_the_rest_written_at_once(tmp_path):
    clock = _Clock()
    box = Outbox(tmp_path / "o.db", memory_s=2.0, clock=clock)  # memory_ok: no session
    faces = [_add(box, "faces") for _ in range(5)]
    assert box.on_disk() == 0 and box.pending() == 5, "per-frame updates wait for a group commit"
    clock.t += 0.5
    assert box.spill_stale() == 0
    clock.t += 0.6  # older than OFFLINE_BATCH_S (1 s): one transaction for all five
    assert box.spill_stale() == 5 and box.on_disk() == 5
    more = [_add(box, "faces") for _ in range(2)]
    event = _add(box, "events")  # an event is on disk before add() returns, with the faces before it
    assert box.on_disk() == 8 and [m.seq for m in box.peek(0, 20)] == faces + more + [event]


def test_the_file_gets_incremental_auto_vacuum_whichever_sink_made_it(tmp_path):
    import sqlite3

    from edge.runtime.publish.seq import SeqCounter

    counter = SeqCounter(tmp_path / "a.db")  # the stdout sink makes the file first
    counter.next()
    counter.close()
    with sqlite3.connect(tmp_path / "old.db") as conn:  # a file made without it
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    for name in ("a.db", "old.db"):
        Outbox(tmp_path / name).close()
        with sqlite3.connect(tmp_path / name) as conn:
            assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2, name


def test_a_full_outbox_drops_in_batches_not_a_commit_per_message(tmp_path):
    box = Outbox(tmp_path / "o.db", max_messages=2000)
    for _ in range(2000):
        _add(box, "faces")
    assert box.pending() == 2000 and box.dropped() == 0
    _add(box, "faces")  # one over: the oldest faces go, 2 more (0.1 % of the bound) to make room for the next ones
    assert box.pending() == 1998 and box.dropped() == 3
    _add(box, "faces")
    _add(box, "faces")
    assert box.pending() == 2000 and box.dropped() == 3, "room was made in advance: no drop for these two"
