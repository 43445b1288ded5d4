"""kill -9 of a publishing process: what it queued is delivered by its next run, in order; the Last Will fires."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.mqtt_support import Collector, assert_in_order_without_gaps, validator

ROOT = Path(__file__).resolve().parent.parent

# A tiny publisher: N events through MqttSink, then either "hang" (to be killed) or close cleanly.
PUBLISHER = r"""
import sys, time
from edge.config import parse_config
from edge.runtime.publish.mqtt import MqttSink
state_dir, host, port, n, then = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
cfg = parse_config({"device": {"id": "crashy", "state_dir": state_dir},
                    "mqtt": {"host": host, "port": port, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0,
                             "keepalive_s": 5}})
sink = MqttSink(cfg)
for i in range(n):
    sink.publish("events", {"event": "track_start", "track_id": i})
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
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "state"), broker.host, str(broker.port), str(n), then],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
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


def test_kill_9_while_sending_loses_nothing_and_fires_the_last_will(broker, tmp_path):
    col = Collector(broker, topic="emotion/crashy/#").start()
    proc = _start(tmp_path, broker, 3000, "slow")
    try:
        assert col.wait_for(lambda c: len(c.unique_seqs()) >= 200)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
    # The broker notices the dead socket and publishes the Will: availability goes offline (retained).
    assert col.wait_for(lambda c: c.raw("emotion/crashy/availability")[-1:] == [b"offline"], timeout=10)
    produced = _last_seq(tmp_path / "state")
    assert produced < 3000, "the publisher should have been killed mid-stream"
    seen_before_restart = len(col.unique_seqs())
    second = _start(tmp_path, broker, 0, "close")
    _wait_line(second, "closed")
    assert second.wait(10) == 0
    assert col.wait_for(lambda c: len(c.unique_seqs()) >= produced)
    col.stop()
    assert seen_before_restart > 0, "the subscriber must have seen messages before the kill"
    assert_in_order_without_gaps(col.unique_seqs(), range(1, produced + 1))
    assert col.raw("emotion/crashy/availability")[-1] == b"offline"
