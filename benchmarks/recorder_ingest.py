"""Ingest rate of ``record``: messages/s committed into SQLite and into PostgreSQL, by one or several recorders.

Each configuration runs the real CLI recorders (``python -m edge record``, one process each; several as one
MQTT 5 shared subscription, ``--share``) against a private Mosquitto (``max_queued_messages 0``, so the broker
queues everything) and measures how fast they drain a backlog: the recorders subscribe once and stop (their
persistent sessions stay on the broker), ``--messages`` ``faces`` messages (1 face, 7 labels, ≈ 600 bytes, from
10 device ids) are published at QoS 1, then the recorders start again and the rate is the number of rows over
the time between the first and the last row's receive time (so process start-up is not counted). Every row is
committed before its PUBACK (one transaction per message): SQLite with WAL and ``synchronous=FULL``, PostgreSQL
15 (apt ``postgresql``, started here in a temporary folder) with its durable defaults (``fsync`` and
``synchronous_commit`` on). Both write to the same disk (the system temporary folder).

Usage::

    PYTHONPATH=. nice -n 10 python3 benchmarks/recorder_ingest.py [--messages 3000] [--members 1 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from tests.support.broker import Broker, mosquitto_available
from tests.support.mqtt import faces_body
from tests.support.postgres import PgServer, postgres_available

ROOT = Path(__file__).resolve().parent.parent




def _members(broker: Broker, db: str, n: int, tag: str) -> list[subprocess.Popen]:
    """Start ``n`` CLI recorders (a shared group when ``n`` > 1) and wait until each has subscribed."""
    procs = []
    for i in range(n):
        argv = [sys.executable, "-m", "edge", "record", "--db", db, "--mqtt-host", broker.host,
                "--mqtt-port", str(broker.port), "--client-id", f"ingest-{tag}-{i}"]
        if n > 1:
            argv += ["--share", f"ingest-{tag}"]
        procs.append(subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"}))
    for p in procs:
        line = p.stderr.readline()
        if not line.startswith("recording "):
            raise RuntimeError(f"recorder did not start: {line}{p.stderr.read()}")
    return procs


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.send_signal(signal.SIGINT)
    for p in procs:
        p.communicate(timeout=30)


def _publish(broker: Broker, n: int) -> None:
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ingest-pub")
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    now = time.time()
    infos = []
    for i in range(n):
        dev = f"dev-{i % 10}"
        msg = {"schema_version": 1, "device_id": dev, "kind": "faces", "ts": now + i * 1e-3, "seq": i // 10 + 1,
               **faces_body(i, 1)}
        infos.append(pub.publish(f"emotion/{dev}/faces", json.dumps(msg, separators=(",", ":")), qos=1))
    for info in infos:
        info.wait_for_publish(120)
    pub.disconnect()
    pub.loop_stop()


def measure(broker: Broker, db: str, members: int, n: int, tag: str) -> float:
    """Messages/s committed by ``members`` recorders draining a backlog of ``n`` messages into ``db``."""
    from edge.tools.subscribe.store import Recording

    _stop(_members(broker, db, members, tag))  # sessions (and the schema) exist; the broker queues from now on
    _publish(broker, n)
    procs = _members(broker, db, members, tag)
    rec = Recording(db, readonly=True)
    try:
        deadline = time.monotonic() + 600
        while rec.count() < n and time.monotonic() < deadline:
            time.sleep(0.2)
        _stop(procs)
        count = rec.count()
        if count != n:
            raise RuntimeError(f"{count} rows of {n}")
        cols, rows = rec.table_rows("messages")
        received = [r[cols.index("received_ts")] for r in rows]
    finally:
        rec.close()
    return (n - 1) / (max(received) - min(received))


def main() -> int:
    """Command line entry point; prints the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=3000, help="Backlog per configuration.")
    ap.add_argument("--members", type=int, nargs="+", default=[1, 3], help="PostgreSQL recorder counts to measure.")
    args = ap.parse_args()
    if not mosquitto_available():
        print("error: mosquitto is not installed (apt-get install -y mosquitto)", file=sys.stderr)
        return 2
    print(f"command: {' '.join(sys.argv)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        broker = Broker(Path(tmp) / "mosquitto")
        lines = [f"listener {broker.port} {broker.host}", "allow_anonymous true", "persistence false",
                 "max_queued_messages 0", "log_type error"]
        broker.conf.write_text("\n".join((["user root"] if os.geteuid() == 0 else []) + lines) + "\n")
        broker.start()
        try:
            rate = measure(broker, str(Path(tmp) / "rec.sqlite"), 1, args.messages, "sqlite")
            rows.append(("SQLite file (WAL, synchronous=FULL)", 1, rate))
            if not postgres_available():
                print("PostgreSQL rows skipped: apt-get install -y postgresql")
            else:
                pg = PgServer(durable=True).start()
                try:
                    for m in args.members:
                        url = pg.create_database(f"ingest_{m}")
                        rows.append(("PostgreSQL 15 (fsync, synchronous_commit on)", m,
                                     measure(broker, url, m, args.messages, f"pg{m}")))
                finally:
                    pg.stop()
        finally:
            broker.stop()
    print(f"\n{args.messages} faces messages (≈ 600 bytes) per configuration, one commit per message before its PUBACK\n")
    print("| recording | recorders | messages/s committed |")
    print("|---|---:|---:|")
    for what, m, rate in rows:
        print(f"| {what} | {m}{' (--share)' if m > 1 else ''} | {rate:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
