"""The outbox on a state folder that refuses writes: a real 2 MB tmpfs filled up (ENOSPC). Messages wait in
memory (bounded, faces dropped first), nothing raises, the log says so once per episode with the cause, and the
disk takes over again by itself. Mounting needs root (CAP_SYS_ADMIN): skipped elsewhere."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest

import edge.runtime.publish.outbox_faults as outbox_faults
from edge.runtime.publish.outbox import Outbox
from edge.runtime.publish.outbox_faults import fault_cause


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs of its own."""
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")

    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder: Path) -> Path:
    """Take every free byte of the file system with one file; return it (delete it to free the space)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 4096, 512):  # unbuffered: every byte that fits is written
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def _add(box: Outbox, kind: str) -> int:
    return box.add(kind, f"emotion/dev1/{kind}", lambda seq: f'{{"seq":{seq},"pad":"{"x" * 200}"}}'.encode())


def _fault_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "edge.runtime.publish.outbox"
            and r.levelno >= logging.WARNING]


def test_a_full_disk_keeps_messages_in_memory_and_the_disk_takes_over_again(small_disk, caplog, monkeypatch):
    monkeypatch.setattr(outbox_faults, "FAULT_MEMORY_MAX", 300)
    mnt = small_disk
    box = Outbox(mnt / "outbox.db", memory_s=0.0)  # no session: every non-faces message goes to disk at once
    first = [_add(box, "events") for _ in range(5)]
    filler = _fill(mnt)
    with caplog.at_level(logging.INFO, logger="edge.runtime.publish.outbox"):
        seqs = [_add(box, kind) for _ in range(200) for kind in ("status", "faces")]  # none raises
        box.spill_stale()  # the flusher's retry: fails again, says nothing new
        assert seqs == list(range(first[-1] + 1, first[-1] + 401)), "no seq lost or repeated"
        # 400 waited in memory, the bound is 300: about 100 faces went (a few more at once), the oldest ones.
        dropped = box.dropped()
        assert 100 <= dropped <= 105 and box.pending() == 5 + 400 - dropped
        kept = box.peek(0, 10_000)
        assert [m.kind for m in kept].count("status") == 200, "status is never dropped while faces can be"
        faces = [m.seq for m in kept if m.kind == "faces"]
        assert len(faces) == 200 - dropped and faces == seqs[1::2][dropped:], "the oldest faces went first"
        assert [m.seq for m in kept] == sorted(m.seq for m in kept)
        lines = _fault_lines(caplog)
        assert len(lines) == 1 and "the disk is full" in lines[0] and str(mnt) in lines[0], lines
        os.unlink(filler)
        box.spill_stale()
        assert box.on_disk() == box.pending()
        lines = _fault_lines(caplog)
        assert len(lines) == 2 and "takes writes again" in lines[1], lines
        assert lines[1].endswith(f"; {dropped} message(s) were dropped meanwhile ({dropped} faces)"), lines
    box.close()
    reopened = Outbox(mnt / "outbox.db")
    assert reopened.pending() == 405 - dropped and reopened.dropped() == dropped  # the drops were saved too
    assert _add(reopened, "events") == seqs[-1] + 1
    reopened.close()


def test_when_only_other_kinds_are_left_they_go_too_and_the_recovery_line_counts_each_kind(small_disk, caplog,
                                                                                           monkeypatch):
    monkeypatch.setattr(outbox_faults, "FAULT_MEMORY_MAX", 100)
    mnt = small_disk
    box = Outbox(mnt / "outbox.db", memory_s=0.0)
    filler = _fill(mnt)
    with caplog.at_level(logging.INFO, logger="edge.runtime.publish.outbox"):
        for _ in range(10):
            _add(box, "faces")
        for _ in range(120):
            _add(box, "status")
        # 130 waited, the bound is 100: the 10 faces went first, then the 20 oldest status messages.
        assert box.dropped() == 30 and [m.kind for m in box.peek(0, 1000)] == ["status"] * 100
        os.unlink(filler)
        box.spill_stale()
        lines = _fault_lines(caplog)
        assert len(lines) == 2 and "takes writes again" in lines[1], lines
        assert lines[1].endswith("; 30 message(s) were dropped meanwhile (20 status, 10 faces)"), lines
    box.close()


def test_the_recovery_line_names_only_the_kinds_that_lost_messages(small_disk, caplog, monkeypatch):
    monkeypatch.setattr(outbox_faults, "FAULT_MEMORY_MAX", 100)
    mnt = small_disk
    box = Outbox(mnt / "outbox.db", memory_s=0.0)
    filler = _fill(mnt)
    with caplog.at_level(logging.INFO, logger="edge.runtime.publish.outbox"):
        for _ in range(105):  # an empty room: no faces messages to drop first
            _add(box, "status")
        assert box.dropped() == 5
        os.unlink(filler)
        box.spill_stale()
        lines = _fault_lines(caplog)
        assert lines[1].endswith("; 5 message(s) were dropped meanwhile (5 status)"), lines
    box.close()


def test_acknowledged_messages_are_not_sent_again_while_the_disk_refuses_to_delete_them(small_disk, caplog):
    mnt = small_disk
    box = Outbox(mnt / "outbox.db")
    seqs = [_add(box, "events") for _ in range(10)]
    filler = _fill(mnt)
    with caplog.at_level(logging.INFO, logger="edge.runtime.publish.outbox"):
        box.ack(seqs[:4])  # DELETE fails: no room for the WAL
        assert [m.seq for m in box.peek(0, 3)] == seqs[4:7] and box.pending() == 6
        more = _add(box, "status")  # waits in memory, after what is on disk
        assert [m.seq for m in box.peek(0, 100)] == seqs[4:] + [more]
        assert [m.seq for m in box.peek(seqs[5], 2)] == seqs[6:8]
        lines = _fault_lines(caplog)
        assert len(lines) == 1 and "the disk is full" in lines[0], lines
        os.unlink(filler)
        box.spill_stale()
        assert box.pending() == 7 and box.on_disk() == 6 and [m.seq for m in box.peek(0, 100)] == seqs[4:] + [more]
        assert "takes writes again" in _fault_lines(caplog)[-1]
    box.close()
    reopened = Outbox(mnt / "outbox.db")
    assert [m.seq for m in reopened.peek(0, 100)] == seqs[4:] + [more]
    reopened.close()


def test_the_cause_of_a_refused_write_is_named(tmp_path):
    """A read-only database names itself read-only (not an ownership problem); the message keeps SQLite's text."""
    sqlite3.connect(tmp_path / "x.db").execute("CREATE TABLE t (a)")
    ro = sqlite3.connect(f"file:{tmp_path / 'x.db'}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as exc:
        ro.execute("INSERT INTO t VALUES (1)")
    assert fault_cause(exc.value).startswith("the file system or the database file is read-only (attempt to write")


def test_the_state_folder_check_names_a_full_disk_and_does_not_suggest_chown(small_disk):
    from edge.runtime.preflight import writable_dir_problem

    mnt = small_disk
    assert writable_dir_problem(mnt, "device.state_dir") is None
    _fill(mnt)
    problem = writable_dir_problem(mnt, "device.state_dir")
    assert problem and "the disk is full" in problem and "chown" not in problem, problem
