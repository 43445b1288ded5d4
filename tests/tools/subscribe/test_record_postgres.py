"""``record`` into a real PostgreSQL server (started by the ``pg_server`` fixture) from a real Mosquitto: the same
schema, dedupe and exports as SQLite, acknowledgement only after commit, and several recorders splitting one
feed through an MQTT 5 shared subscription without losing or duplicating a row, one of them killed mid-stream."""

from __future__ import annotations

import filecmp
import importlib.util
import os
import signal
import subprocess
import sys

import pytest

from edge.protocol.broker import BrokerSettings
from edge.runtime.publish.mqtt import MqttSink
from edge.tools.subscribe.record import Recorder
from edge.tools.subscribe.store import EXPORT_TABLES, Recording, StoreError
from tests.support.broker import free_port
from tests.support.mqtt import faces_body, publish_mixed, sink_config, status_body, summary_body, wait_until
from tests.support.paths import REPO


def _fill(rec: Recording) -> None:
    """The same messages, with fixed receive times, for two devices; one redelivery."""
    for dev in ("kitchen", "hall"):
        rec.add_message(dev, f"emotion/{dev}/status", {"schema_version": 1, "device_id": dev, "kind": "status",
                                                        "ts": 999.0, "seq": 1, **status_body()}, 999.5)
        for i in range(3):
            rec.add_message(dev, f"emotion/{dev}/faces", {"schema_version": 1, "device_id": dev, "kind": "faces",
                                                           "ts": 1000.0 + i, "seq": 2 + i, **faces_body(i, 2)}, 1000.5 + i)
        msg = {"schema_version": 1, "device_id": dev, "kind": "summary", "ts": 1010.0, "seq": 5, **summary_body()}
        assert rec.add_message(dev, f"emotion/{dev}/summary", msg, 1010.5)
        assert not rec.add_message(dev, f"emotion/{dev}/summary", msg, 1011.0), "a redelivery is not stored twice"
    assert rec.add_availability("hall", "online", 998.0) and not rec.add_availability("hall", "online", 998.1)


def test_postgres_recording_has_the_sqlite_schema_dedupe_and_exports(pg_url, tmp_path):
    pg, lite = Recording(pg_url), Recording(tmp_path / "r.sqlite")
    assert type(pg).__name__ == "PostgresRecording" and type(lite).__name__ == "SqliteRecording"
    for rec in (pg, lite):
        _fill(rec)
    assert pg.count() == lite.count() == 10
    assert pg.devices() == lite.devices() == ["hall", "kitchen"]
    assert pg.seqs("hall") == lite.seqs("hall") == [1, 2, 3, 4, 5]
    assert pg.labels() == lite.labels()
    for table in EXPORT_TABLES:
        pg.export(tmp_path / f"pg-{table}.csv", table)
        lite.export(tmp_path / f"lite-{table}.csv", table)
        assert filecmp.cmp(tmp_path / f"pg-{table}.csv", tmp_path / f"lite-{table}.csv", shallow=False), table
    if importlib.util.find_spec("pyarrow") is not None:
        import pyarrow.parquet as pq

        assert pg.export(tmp_path / "pg.parquet", "faces") == lite.export(tmp_path / "lite.parquet", "faces") == 12
        assert pq.read_table(tmp_path / "pg.parquet").equals(pq.read_table(tmp_path / "lite.parquet"))
    pg.close()
    lite.close()
    again = Recording(pg_url, readonly=True)  # resumed, read-only: what plot and --export open
    assert again.count() == 10
    with pytest.raises(StoreError, match="read-only transaction"):
        again.add_availability("hall", "offline")
    again.close()


def test_postgres_errors_are_one_line(pg_server, tmp_path):
    with pytest.raises(StoreError, match="cannot open the recording database postgresql://u:\\*\\*\\*@127.0.0.1"):
        Recording(f"postgresql://u:secret@127.0.0.1:{free_port()}/x")
    empty = pg_server.create_database("empty")
    with pytest.raises(StoreError, match="no recording in this database"):
        Recording(empty, readonly=True)
    r = subprocess.run([sys.executable, "-m", "edge", "record", "--db", empty, "--export", str(tmp_path / "o.csv")],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [f"error: {empty}: no recording in this database; record one with "
                                             f"`emotion-edge record --db {empty}`"]
    r = subprocess.run([sys.executable, "-m", "edge", "record", "--db", empty, "--share", "a/b"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "one plain topic level" in r.stderr


def test_recorder_into_postgres_acknowledges_only_what_it_committed(broker, pg_url, pg_server, tmp_path):
    """The database connection dies mid-recording: the recorder ends with the reason and acknowledges nothing
    more; the next run gets every unstored message again from the broker, and each is stored once."""
    import psycopg

    settings = BrokerSettings(host=broker.host, port=broker.port)
    recorder = Recorder(settings, pg_url)
    recorder.start()
    sink = MqttSink(sink_config(tmp_path / "state", broker))
    try:
        publish_mixed(sink, 0, 30)
        assert wait_until(lambda: recorder.stored == 30, 20), recorder.stored
        with psycopg.connect(pg_server.url(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'emotion-edge-record'")
        publish_mixed(sink, 30, 30)
        assert sink.flush(20)
        with pytest.raises(StoreError, match="recording stopped"):
            recorder.run(duration=20)
        recorder.stop()

        again = Recorder(settings, pg_url)
        assert again.client_id == recorder.client_id
        again.start()
        assert wait_until(lambda: again.recording.count() >= 60, 20), again.recording.count()
        assert again.recording.seqs("dev1") == list(range(1, 61))
        again.stop()
    finally:
        sink.close(2)


def _member(broker, url: str, name: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edge", "record", "--db", url, "--share", "fleet", "--client-id", f"rec-{name}",
         "--mqtt-host", broker.host, "--mqtt-port", str(broker.port)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _subscribed(proc: subprocess.Popen) -> None:
    line = proc.stderr.readline()  # printed once the broker acknowledged the shared subscriptions
    assert line.startswith("recording ") and "shared group fleet" in line, line + (
        proc.stderr.read() if proc.poll() is not None else "")


@pytest.mark.slow
def test_three_recorders_share_one_feed_into_postgres_one_killed_mid_stream(broker, pg_url, tmp_path):
    """Deadlines are generous (the conditions are polled): with the cores busy, a recorder's start and its clean
    stop take several seconds."""
    devices, per_device = ("a", "b", "c"), 100
    members = {name: _member(broker, pg_url, name) for name in ("1", "2", "3")}
    sinks = [MqttSink(sink_config(tmp_path / f"state-{d}", broker, device_id=d)) for d in devices]
    rec = None
    try:
        for proc in members.values():
            _subscribed(proc)
        for s in sinks:
            publish_mixed(s, 0, 40)
        rec = Recording(pg_url, readonly=True)
        assert wait_until(lambda: rec.count() >= 60, 120), rec.count()
        members["2"].kill()  # kill -9 mid-stream: its in-flight and queued share waits in its session
        members["2"].wait(60)
        for s in sinks:
            publish_mixed(s, 40, per_device - 40)
            assert s.flush(120)
        members["2"] = _member(broker, pg_url, "2")  # as systemd's Restart= would, with the same client id
        _subscribed(members["2"])
        total = len(devices) * per_device
        assert wait_until(lambda: rec.count() >= total, 180), rec.count()
        for name, proc in members.items():
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            stored = int(err.split("stored ", 1)[1].split(" ", 1)[0])
            assert stored > 0, f"member {name} got no share of the feed: {err}"
        assert rec.count() == total
        for d in devices:
            assert rec.seqs(d) == list(range(1, per_device + 1)), d
    finally:
        for proc in members.values():
            if proc.poll() is None:
                proc.kill()
        for s in sinks:
            s.close(2)
        if rec is not None:
            rec.close()


def _column_types(url: str) -> dict[str, str]:
    import psycopg

    with psycopg.connect(url) as db:
        return {f"{t}.{c}": d for t, c, d in db.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = "
            "'public' AND table_name IN ('messages', 'availability')")}


def test_postgres_types_and_views_need_no_casts(broker, pg_url, tmp_path):
    """Recorded from a real broker: ``ts`` is timestamptz, ``payload`` jsonb, and the views give one row per face
    per message (and per label) and per summary window, in SQL types a Grafana panel uses as they are."""
    import psycopg

    recorder = Recorder(BrokerSettings(host=broker.host, port=broker.port), pg_url)
    recorder.start()
    sink = MqttSink(sink_config(tmp_path / "state", broker))
    try:
        sink.publish("status", status_body())
        for i in range(3):
            sink.publish("faces", faces_body(i, 2))
        sink.publish("summary", summary_body())
        assert sink.flush(20) and wait_until(lambda: recorder.stored == 5, 20), recorder.stored
    finally:
        sink.close(2)
        recorder.stop()
    types = _column_types(pg_url)
    assert types["messages.ts"] == types["messages.received_ts"] == "timestamp with time zone"
    assert types["messages.payload"] == "jsonb" and types["availability.received_ts"] == "timestamp with time zone"
    labels = list(status_body()["model"]["labels"])
    with psycopg.connect(pg_url) as db:
        faces = db.execute("SELECT time, frame, track_id, emotion, confidence, x, h, probs FROM faces "
                           "ORDER BY time, track_id").fetchall()
        assert len(faces) == 6, "one row per face per message"
        time_, frame, track_id, emotion, confidence, x, h, probs = faces[0]
        assert time_.tzinfo is not None and isinstance(frame, int) and isinstance(track_id, int)
        assert emotion in labels and isinstance(confidence, float) and isinstance(x, float) and h > 0
        assert set(probs) == set(labels)
        per_label = db.execute("SELECT label, count(*), min(probability) FROM face_probs GROUP BY label").fetchall()
        assert {lab: n for lab, n, _ in per_label} == dict.fromkeys(labels, 6)
        assert all(isinstance(p, float) for _, _, p in per_label)
        [summary] = db.execute("SELECT time, window_s, frames, faces_max, dominant_emotion FROM summaries").fetchall()
        assert summary[0].tzinfo is not None and summary[1] == 10.0 and summary[4] == "happy"
        probs = dict(db.execute("SELECT label, probability FROM summary_probs").fetchall())
        assert set(probs) == set(labels) and abs(sum(probs.values()) - 1) < 0.01
        # What a Grafana time-series panel sends: a time filter on a timestamptz and a number, no casts.
        rows = db.execute("SELECT time, label, probability FROM face_probs WHERE time > now() - interval '1 hour' "
                          "ORDER BY time").fetchall()
        assert len(rows) == 6 * len(labels)


def test_an_earlier_postgres_recording_is_converted_in_place(pg_url, tmp_path):
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as db:  # what the version before wrote
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '2')")
        db.execute("""CREATE TABLE messages (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            device TEXT COLLATE "C" NOT NULL, seq BIGINT NOT NULL, kind TEXT COLLATE "C" NOT NULL,
            ts DOUBLE PRECISION NOT NULL, received_ts DOUBLE PRECISION NOT NULL, topic TEXT NOT NULL,
            payload TEXT NOT NULL, UNIQUE (device, seq, ts))""")
        db.execute("""CREATE TABLE availability (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            device TEXT COLLATE "C" NOT NULL, received_ts DOUBLE PRECISION NOT NULL, state TEXT NOT NULL)""")
    old = Recording(tmp_path / "old.sqlite")  # the same messages in SQLite, to compare the exports with
    _fill(old)
    with psycopg.connect(pg_url, autocommit=True) as db:
        for row in old._rows("SELECT device, seq, kind, ts, received_ts, topic, payload FROM messages"):
            db.execute("INSERT INTO messages (device, seq, kind, ts, received_ts, topic, payload) "
                       "VALUES (%s, %s, %s, %s, %s, %s, %s)", row)
    assert _column_types(pg_url)["messages.payload"] == "text"
    pg = Recording(pg_url)
    types = _column_types(pg_url)
    assert types["messages.ts"] == "timestamp with time zone" and types["messages.payload"] == "jsonb"
    assert pg.count() == old.count() == 10 and pg.seqs("hall") == old.seqs("hall")
    assert not pg.add_message("hall", "emotion/hall/summary", next(old.iter_messages("hall", "summary"))), \
        "the dedupe key survived the conversion"
    for table in EXPORT_TABLES:
        pg.export(tmp_path / f"pg-{table}.csv", table)
        old.export(tmp_path / f"old-{table}.csv", table)
        assert filecmp.cmp(tmp_path / f"pg-{table}.csv", tmp_path / f"old-{table}.csv", shallow=False), table
    assert len(pg._rows("SELECT * FROM faces")) == 12  # two devices, three messages of two faces
    pg.close()
    old.close()
