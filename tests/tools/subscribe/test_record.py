"""``record`` against a real Mosquitto: persistent session, dedupe by (device, seq, ts), restarts, export."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge.protocol.broker import BrokerSettings
from edge.runtime.publish.mqtt import MqttSink
from edge.tools.subscribe.record import Recorder
from edge.tools.subscribe.store import Recording, StoreError
from tests.support.mqtt import faces_body, publish_mixed, sink_config, status_body, summary_body
from tests.support.paths import REPO


def _wait(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    rec = Recording(db, readonly=True)
    try:
        return rec.count()
    finally:
        rec.close()


def test_recorder_restart_in_the_middle_stores_each_message_exactly_once(broker, tmp_path):
    n = 150
    settings = BrokerSettings(host=broker.host, port=broker.port)
    db = tmp_path / "rec.sqlite"
    recorder = Recorder(settings, db)
    recorder.start()
    sink = MqttSink(sink_config(tmp_path / "state", broker))
    try:
        publish_mixed(sink, 0, 60)
        assert _wait(lambda: recorder.stored == 60), recorder.stored
        recorder.stop()  # the recorder goes away; the broker keeps its session and queues for it

        publish_mixed(sink, 60, n - 60)
        assert sink.flush(20), "the publisher did not get all PUBACKs"

        # Replay a few already-delivered messages as they were, as a reconnecting daemon would.
        stored = Recording(db, readonly=True)
        delivered = {m["seq"]: m for m in stored.iter_messages("dev1")}
        stored.close()
        replay = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="replayer")
        replay.connect(broker.host, broker.port)
        replay.loop_start()
        for seq in (1, 2, 30):
            msg = delivered[seq]
            replay.publish(f"emotion/dev1/{msg['kind']}", json.dumps(msg), qos=1).wait_for_publish(5)
        replay.disconnect()
        replay.loop_stop()

        again = Recorder(settings, db)
        assert again.client_id == recorder.client_id, "a resumed recording must reuse its persistent session"
        again.start()
        assert _wait(lambda: again.recording.count() >= n)
        time.sleep(0.3)  # let any late duplicate arrive before counting for the last time
        assert again.recording.count() == n
        assert again.recording.seqs("dev1") == list(range(1, n + 1))
        assert again.duplicates >= 3
        kinds = {k: again.recording.count(kind=k) for k in ("faces", "summary", "events", "status")}
        assert kinds == {"faces": 60, "summary": 30, "events": 30, "status": 30}
        again.stop()
    finally:
        sink.close(2)


def test_a_device_whose_seq_restarted_and_foreign_messages_lose_nothing(broker, tmp_path):
    """A device whose state folder was wiped starts again at seq 1 (newer ts): kept, not taken for redeliveries.
    Messages on the topics without a usable envelope (null or text ts, a bool seq) are acknowledged and skipped:
    more of them than the broker's in-flight window (20) must not stall the recording."""
    settings = BrokerSettings(host=broker.host, port=broker.port)
    recorder = Recorder(settings, tmp_path / "rec.sqlite")
    recorder.start()
    try:
        other = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="foreign")
        other.connect(broker.host, broker.port)
        other.loop_start()
        for i in range(25):
            bad = {"seq": True, "ts": 1.0} if i % 3 == 0 else {"seq": i + 1, "ts": [None, "2026-01-01T00:00:00Z"][i % 2]}
            other.publish("emotion/other/events", json.dumps(bad), qos=1).wait_for_publish(5)
        other.disconnect()
        other.loop_stop()
        first = MqttSink(sink_config(tmp_path / "state-a", broker))
        publish_mixed(first, 0, 10)
        assert first.flush(20)
        first.publish("status", {**status_body("offline", frames=9), "fps": 0.0})  # a daemon's last status
        first.close(2)
        time.sleep(0.05)
        again = MqttSink(sink_config(tmp_path / "state-b", broker))  # a wiped state folder: seq 1 again
        publish_mixed(again, 10, 5)
        assert again.flush(20)
        again.publish("status", {**status_body("offline", frames=14), "fps": 0.0})
        again.close(2)
        assert _wait(lambda: recorder.stored >= 15 + 2), recorder.stored  # + the two offline statuses at close
        assert recorder.ignored == 25
        seqs = recorder.recording.seqs("dev1")
        assert seqs[:11] == list(range(1, 12)) and seqs[11] == 1, seqs
    finally:
        recorder.stop()


def test_a_broker_that_refuses_the_recorder_for_good_ends_the_recording(broker_factory, tmp_path):
    """Credentials revoked while recording: record must end with the reason (exit 2 in the CLI), not sit idle
    forever looking alive to systemd."""
    from edge.tools.subscribe.client import SubscribeError

    b = broker_factory("revoke").start()
    recorder = Recorder(BrokerSettings(host=b.host, port=b.port), tmp_path / "rec.sqlite")
    recorder.start()
    try:
        b.stop()
        b.conf.write_text(b.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
        b.start()
        with pytest.raises(SubscribeError, match="refused the connection.*recording stopped"):
            recorder.run(duration=30)
    finally:
        recorder.stop()


def test_a_schema_1_recording_is_upgraded_in_place(tmp_path):
    import sqlite3

    db = tmp_path / "old.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE messages (id INTEGER PRIMARY KEY, device TEXT NOT NULL, seq INTEGER NOT NULL,
            kind TEXT NOT NULL, ts REAL NOT NULL, received_ts REAL NOT NULL, topic TEXT NOT NULL,
            payload TEXT NOT NULL, UNIQUE (device, seq));
        CREATE TABLE availability (id INTEGER PRIMARY KEY, device TEXT NOT NULL, received_ts REAL NOT NULL,
            state TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        INSERT INTO messages VALUES (1, 'dev1', 1, 'events', 5.0, 5.0, 'emotion/dev1/events', '{"seq": 1}');
    """)
    conn.close()
    assert Recording(db, readonly=True).count() == 1  # read-only tools read it as it is
    rec = Recording(db)
    assert rec.meta("schema_version") == "2" and rec.count() == 1
    msg = {"kind": "events", "seq": 1, "ts": 9.0}
    assert rec.add_message("dev1", "emotion/dev1/events", msg) and not rec.add_message("dev1", "t", msg)
    rec.close()


def _start_cli_recorder(broker, db: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edge", "record", "--db", str(db),
         "--mqtt-host", broker.host, "--mqtt-port", str(broker.port)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _wait_subscribed(proc: subprocess.Popen) -> None:
    # The CLI prints its "recording ..." line once the broker acknowledged the subscriptions.
    line = proc.stderr.readline()
    assert line.startswith("recording "), line + (proc.stderr.read() if proc.poll() is not None else "")
    # What it names are the MQTT filters it subscribed to: valid ones, that a user can paste into mosquitto_sub.
    filters = line.removeprefix("recording ").split(" from ")[0].split(", ")
    assert all(not any(c in f for c in "*|") and all(level in ("+", "#") or not set(level) & {"+", "#"}
                                                      for level in f.split("/")) for f in filters), filters
    assert any(mqtt.topic_matches_sub(f, "emotion/dev1/status") for f in filters), filters


@pytest.mark.slow
def test_cli_recorder_killed_with_sigkill_loses_nothing(broker, tmp_path):
    """Deadlines are generous (the conditions are polled): with the cores busy, a recorder's start and its clean
    stop take several seconds."""
    n = 120
    db = tmp_path / "rec.sqlite"
    proc = _start_cli_recorder(broker, db)
    sink = MqttSink(sink_config(tmp_path / "state", broker))
    try:
        _wait_subscribed(proc)
        publish_mixed(sink, 0, 50)
        assert _wait(lambda: _count(db) >= 20, 120)
        proc.kill()  # kill -9: no clean disconnect, maybe a message received but not acknowledged
        proc.wait(60)
        publish_mixed(sink, 50, n - 50)
        assert sink.flush(120)

        proc = _start_cli_recorder(broker, db)
        _wait_subscribed(proc)
        assert _wait(lambda: _count(db) >= n, 120)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        rec = Recording(db, readonly=True)
        assert rec.count() == n
        assert rec.seqs("dev1") == list(range(1, n + 1))
        rec.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        sink.close(2)


def test_cli_recorder_shows_a_running_count_on_stderr(broker, tmp_path):
    db = tmp_path / "rec.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "record", "--db", str(db), "--mqtt-host", broker.host, "--mqtt-port",
         str(broker.port), "--progress", "0.3", "--duration", "4"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    sink = MqttSink(sink_config(tmp_path / "state", broker))
    try:
        _wait_subscribed(proc)
        publish_mixed(sink, 0, 30)
        assert sink.flush(10)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        sink.close(2)
    assert proc.returncode == 0, err
    counts = [int(m) for m in re.findall(r"^recording: (\d+) new messages \([\d.]+/s\), \d+ duplicates, \d+ ignored$",
                                         err, re.M)]
    assert len(counts) >= 5 and counts == sorted(counts) and counts[-1] == 30, err  # a log: one line each time
    assert "\r" not in err and "stored 30 new messages" in err


def test_record_without_broker_is_one_clear_line(tmp_path):
    from tests.support.broker import free_port

    r = subprocess.run(
        [sys.executable, "-m", "edge", "record", "--db", str(tmp_path / "r.sqlite"),
         "--mqtt-host", "127.0.0.1", "--mqtt-port", str(free_port())],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the MQTT broker at 127.0.0.1:" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def _fixture_recording(db: Path) -> None:
    rec = Recording(db)
    seq = 0
    for i in range(4):
        seq += 1
        rec.add_message("dev1", "emotion/dev1/faces", {"schema_version": 1, "device_id": "dev1", "kind": "faces",
                                                      "ts": 1000.0 + i, "seq": seq, **faces_body(i, 2)})
    seq += 1
    rec.add_message("dev1", "emotion/dev1/summary", {"schema_version": 1, "device_id": "dev1", "kind": "summary",
                                                    "ts": 1010.0, "seq": seq, **summary_body()})
    assert not rec.add_message("dev1", "emotion/dev1/summary", {"schema_version": 1, "device_id": "dev1",
                                                               "kind": "summary", "ts": 1010.0, "seq": seq})
    rec.close()


def test_export_csv_tables(tmp_path):
    db = tmp_path / "rec.sqlite"
    _fixture_recording(db)
    rec = Recording(db, readonly=True)
    assert rec.export(tmp_path / "m.csv", "messages") == 5
    assert rec.export(tmp_path / "f.csv", "faces") == 8  # 4 frames x 2 faces
    assert rec.export(tmp_path / "s.csv", "summary") == 1
    rec.close()
    with (tmp_path / "f.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {"device", "seq", "track_id", "emotion", "p_happy", "p_neutral"} <= set(rows[0])
    assert rows[0]["emotion"] == "angry" and float(rows[0]["p_angry"]) == pytest.approx(0.6)
    with (tmp_path / "m.csv").open() as fh:
        msgs = list(csv.DictReader(fh))
    assert [int(r["seq"]) for r in msgs] == [1, 2, 3, 4, 5]
    assert json.loads(msgs[-1]["payload"])["dominant_emotion"] == "happy"
    # Every UNIX time has its ISO 8601 (UTC) twin right beside it.
    assert list(msgs[0])[3:7] == ["ts", "ts_iso", "received_ts", "received_ts_iso"]
    assert (msgs[0]["ts"], msgs[0]["ts_iso"]) == ("1000.0", "1970-01-01T00:16:40.000+00:00")
    assert datetime.fromisoformat(msgs[0]["received_ts_iso"]).timestamp() == pytest.approx(
        float(msgs[0]["received_ts"]), abs=1e-3)
    assert rows[0]["ts_iso"] == "1970-01-01T00:16:40.000+00:00"
    with (tmp_path / "s.csv").open() as fh:
        assert next(csv.DictReader(fh))["ts_iso"] == "1970-01-01T00:16:50.000+00:00"


def test_export_to_an_unwritable_path_is_one_line(tmp_path):
    db = tmp_path / "rec.sqlite"
    _fixture_recording(db)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = subprocess.run([sys.executable, "-m", "edge", "record", "--db", str(db),
                        "--export", str(blocker / "out.csv")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "a-file" in lines[0], r.stderr


def test_export_parquet_or_clear_message(tmp_path):
    db = tmp_path / "rec.sqlite"
    _fixture_recording(db)
    rec = Recording(db, readonly=True)
    try:
        if importlib.util.find_spec("pyarrow") is None:
            with pytest.raises(StoreError, match="Parquet export needs pyarrow: pip install pyarrow"):
                rec.export(tmp_path / "f.parquet", "faces")
        else:
            import pyarrow.parquet as pq

            assert rec.export(tmp_path / "f.parquet", "faces") == 8
            assert pq.read_table(tmp_path / "f.parquet").num_rows == 8
        with pytest.raises(StoreError, match="use .csv or .parquet"):
            rec.export(tmp_path / "f.xlsx")
    finally:
        rec.close()


def test_not_a_recording_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_text("not sqlite at all " * 100)
    with pytest.raises(StoreError, match="not a usable recording database"):
        Recording(bad, readonly=True)
    with pytest.raises(StoreError, match="no such recording"):
        Recording(tmp_path / "missing.sqlite", readonly=True)


def test_subscriber_commands_share_the_daemon_broker_flags(tmp_path):
    from edge.cli import build_parser

    parser = build_parser()
    for argv in (["watch", "--once", "--device", "a", "--device", "b"],
                 ["record", "--db", str(tmp_path / "x.sqlite"), "--duration", "1"],
                 ["plot", "--db", "x.sqlite", "--width", "640"],
                 ["ha-remove", "--device-id", "kitchen", "--purge"]):
        args = parser.parse_args([*argv, "--mqtt-host", "broker.lan", "--mqtt-port", "1884"]
                                 if argv[0] != "plot" else argv)
        assert callable(args.func)
        if argv[0] != "plot":
            assert (args.mqtt_host, args.mqtt_port) == ("broker.lan", 1884)
    # Through `python -m edge`, an expected failure is still one line without a traceback.
    r = subprocess.run([sys.executable, "-m", "edge", "record", "--db", str(tmp_path / "missing.sqlite"),
                        "--export", str(tmp_path / "out.csv")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no such recording" in r.stderr and "Traceback" not in r.stderr


def test_recorder_survives_a_broker_restart(broker, tmp_path):
    n = 80
    recorder = Recorder(BrokerSettings(host=broker.host, port=broker.port), tmp_path / "rec.sqlite")
    recorder.start()
    sink = MqttSink(sink_config(tmp_path / "state", broker))
    try:
        publish_mixed(sink, 0, 40)
        assert _wait(lambda: recorder.stored == 40)
        broker.restart()  # persistence keeps the recorder's session; both clients reconnect by themselves
        publish_mixed(sink, 40, n - 40)
        assert _wait(lambda: recorder.recording.count() >= n, timeout=30)
        assert recorder.recording.seqs("dev1") == list(range(1, n + 1))
    finally:
        sink.close(2)
        recorder.stop()
