"""kill -9 of a publishing process: what it queued is delivered by its next run, in order; the Last Will fires.

The durability window (edge.runtime.publish.outbox): with the broker away, every published message is on disk
before publish() returns; with a session up, a message waits in memory until the broker acknowledges it, and
reaches the disk if that takes longer than mqtt.outbox.memory_s. So a kill -9 loses at most what the broker had
not acknowledged in the last memory_s seconds, and never leaves a hole in the middle of the sequence.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.support.mqtt import Collector, assert_in_order_without_gaps, validator
from tests.support.paths import REPO as ROOT

# A tiny publisher: N events through MqttSink, then either "hang" (to be killed) or close cleanly.
PUBLISHER = r"""
import sys, time
from edge.config import parse_config
from edge.runtime.publish.mqtt import MqttSink
state_dir, host, port, n, then = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
cfg = parse_config({"device": {"id": "crashy", "state_dir": state_dir},
                    "mqtt": {"host": host, "port": port, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0,
                             "keepalive_s": 5, "outbox": {"memory_s": 0.3}}})
sink = MqttSink(cfg)
if then == "on-cue":  # publish once connected and told to (the test freezes the broker in between)
    assert sink.wait_connected(10)
    print("connected", flush=True)
    sys.stdin.readline()
progress = open(state_dir + "/published", "w")
for i in range(n):
    sink.publish("events", {"event": "track_start", "track_id": i})
    progress.seek(0)
    progress.write(f"{i + 1}      ")
    progress.flush()
    if then == "slow":
        time.sleep(0.002)
print("published", n, flush=True)
if then == "close":
    sink.close(timeout=10)
    print("closed", flush=True)
else:
    time.sleep(600)
"""


def _start(tmp_path: Path, broker, n: int, then: str) -> subprocess.Popen:
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    (tmp_path / "state").mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "state"), broker.host, str(broker.port), str(n), then],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _wait_line(proc: subprocess.Popen, prefix: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"publisher exited: {proc.stderr.read()}")
    raise AssertionError(f"publisher did not print {prefix!r}")


def _last_seq(state_dir: Path) -> int:
    with sqlite3.connect(state_dir / "outbox.db") as conn:
        return int(conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0])


def _on_disk(state_dir: Path) -> int:
    with sqlite3.connect(state_dir / "outbox.db") as conn:
        return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def test_messages_queued_before_kill_9_are_delivered_by_the_next_run(broker, tmp_path):
    col = Collector(broker, topic="emotion/crashy/#").start()
    col.stop()
    broker.stop()  # the broker is away: everything the first run publishes stays queued
    first = _start(tmp_path, broker, 40, "hang")
    try:
        _wait_line(first, "published")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(5)
    assert _last_seq(tmp_path / "state") == 40
    broker.start()
    col.start()
    second = _start(tmp_path, broker, 20, "close")
    _wait_line(second, "closed")
    assert second.wait(10) == 0
    assert col.wait_for(lambda c: len(c.unique_seqs()) >= 60)
    col.stop()
    assert_in_order_without_gaps(col.unique_seqs(), range(1, 61))
    for env in col.envelopes():
        validator().validate(env)


def test_kill_9_while_sending_to_a_live_broker_leaves_no_hole_and_fires_the_last_will(broker, tmp_path):
    """What the broker acknowledged is delivered; what it had not, at the kill, is at most the tail of the stream
    (the in-flight window and what the pump had not sent yet), never a message in the middle."""
    col = Collector(broker, topic="emotion/crashy/#").start()
    proc = _start(tmp_path, broker, 3000, "slow")
    try:
        assert col.wait_for(lambda c: len(c.unique_seqs()) >= 200)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
    # The broker notices the dead socket and publishes the Will: availability goes offline (retained).
    assert col.wait_for(lambda c: c.raw("emotion/crashy/availability")[-1:] == [b"offline"], timeout=10)
    produced = int((tmp_path / "state" / "published").read_text())
    assert produced < 3000, "the publisher should have been killed mid-stream"
    seen_before_restart = len(col.unique_seqs())
    second = _start(tmp_path, broker, 0, "close")  # sends what the first run had written to disk
    _wait_line(second, "closed")
    assert second.wait(10) == 0
    time.sleep(0.5)
    col.stop()
    seqs = col.unique_seqs()
    assert seen_before_restart > 0, "the subscriber must have seen messages before the kill"
    assert_in_order_without_gaps(seqs, range(1, max(seqs) + 1))
    # Lost: only messages published in the last moments before the kill (at about 2 ms a message, 300 is
    # 0.6 s of stream, against the 3000 of the run).
    assert produced - max(seqs) <= 300, (produced, max(seqs))
    assert col.raw("emotion/crashy/availability")[-1] == b"offline"


def test_what_a_hung_broker_does_not_acknowledge_in_time_goes_to_disk_and_survives_kill_9(broker, tmp_path):
    col = Collector(broker, topic="emotion/crashy/#").start()
    proc = _start(tmp_path, broker, 50, "on-cue")
    try:
        _wait_line(proc, "connected")
        broker.proc.send_signal(signal.SIGSTOP)  # the session looks up, but nothing is acknowledged any more
        proc.stdin.write("go\n")
        proc.stdin.flush()
        _wait_line(proc, "published")
        deadline = time.monotonic() + 10
        while _on_disk(tmp_path / "state") < 50 and time.monotonic() < deadline:
            time.sleep(0.05)  # memory_s = 0.3: the unacknowledged messages are written to disk soon after
        assert _on_disk(tmp_path / "state") == 50
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        broker.proc.send_signal(signal.SIGCONT)
    second = _start(tmp_path, broker, 0, "close")
    _wait_line(second, "closed")
    assert second.wait(10) == 0
    assert col.wait_for(lambda c: len(c.unique_seqs()) >= 50)
    col.stop()
    assert_in_order_without_gaps(col.unique_seqs(), range(1, 51))
