"""Cost of publishing through the MQTT sink: what the frame loop pays per message, and delivery throughput.

Starts a private Mosquitto on a free loopback port (apt ``mosquitto``) and a state folder in a temp dir, then:

1. ``publish()`` latency as the frame loop sees it (envelope + JSON + SQLite outbox commit), p50/p90/p99, with
   the broker connected;
2. end-to-end throughput: N ``faces`` messages (1 face, 7 labels) until all are PUBACKed and gone from the
   outbox, and until a QoS 1 subscriber received them all;
3. catch-up after an outage: N messages published while the broker is down, then the time from broker start
   until the outbox is empty;
4. the outbox file size per stored message.

Usage::

    PYTHONPATH=. nice -n 10 python3 benchmarks/mqtt_publish.py [--n 5000] [--max-inflight 20]
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from edge.config import parse_config
from edge.protocol.envelope import encode, make_envelope
from edge.runtime.publish.mqtt import MqttSink
from tests.support.broker import Broker, mosquitto_available
from tests.support.mqtt import faces_body


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def _sink(state: Path, broker: Broker, max_inflight: int) -> MqttSink:
    cfg = parse_config({
        "device": {"id": "bench", "state_dir": str(state)},
        "mqtt": {"host": broker.host, "port": broker.port, "max_inflight": max_inflight,
                 "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "outbox": {"max_messages": 1_000_000}},
    })
    return MqttSink(cfg)


class _Counter:
    def __init__(self, broker: Broker):
        self.n = 0
        self.done = threading.Event()
        self.target = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sub")
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe("emotion/bench/faces", qos=1)
        self.client.loop_start()
        time.sleep(0.3)

    def _on_message(self, *args) -> None:
        self.n += 1
        if self.target and self.n >= self.target:
            self.done.set()


def main() -> int:
    """Command line entry point; prints the measurements."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="Messages per measurement.")
    ap.add_argument("--max-inflight", type=int, default=20, help="mqtt.max_inflight.")
    args = ap.parse_args()
    if not mosquitto_available():
        print("error: mosquitto is not installed (apt-get install -y mosquitto)", file=sys.stderr)
        return 2
    print(f"command: {' '.join(sys.argv)}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        broker = Broker(tmp / "broker").start()
        try:
            counter = _Counter(broker)
            sink = _sink(tmp / "state", broker, args.max_inflight)
            if not sink.wait_connected(5):
                print("error: the sink did not connect", file=sys.stderr)
                return 1
            bodies = [faces_body(i) for i in range(args.n)]

            # 1 + 2: frame-loop cost and throughput.
            counter.target = args.n
            lat = []
            t0 = time.perf_counter()
            for body in bodies:
                t = time.perf_counter()
                sink.publish("faces", body)
                lat.append((time.perf_counter() - t) * 1e6)
            t_enqueued = time.perf_counter() - t0
            sink.flush(120)
            t_acked = time.perf_counter() - t0
            counter.done.wait(120)
            t_received = time.perf_counter() - t0
            size = len(encode(make_envelope("faces", "bench", 1, bodies[0])))
            print(f"publish() latency (frame loop, {args.n} faces messages): p50 {_pct(lat, 50):.0f} us, "
                  f"p90 {_pct(lat, 90):.0f} us, p99 {_pct(lat, 99):.0f} us, max {max(lat):.0f} us")
            print(f"throughput: enqueued {args.n / t_enqueued:,.0f} msg/s; all PUBACKed after {t_acked:.2f} s "
                  f"({args.n / t_acked:,.0f} msg/s); all received by a QoS 1 subscriber after {t_received:.2f} s "
                  f"(max_inflight {args.max_inflight})")
            print(f"payload size: ≈ {size} bytes per faces message with one face")

            # 3 + 4: outage, then catch-up.
            broker.stop()
            deadline = time.monotonic() + 5
            while sink.connected and time.monotonic() < deadline:
                time.sleep(0.02)
            for body in bodies:
                sink.publish("faces", body)
            with contextlib.closing(sqlite3.connect(tmp / "state" / "outbox.db")) as conn:
                pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute(
                    "PRAGMA freelist_count").fetchone()[0]
                used = pages * conn.execute("PRAGMA page_size").fetchone()[0]
            pending = sink.stats()["pending"]
            print(f"outbox while the broker is down: {pending} messages pending, ≈ {used / pending:.0f} bytes of "
                  "database per stored message (used pages / messages)")
            t0 = time.perf_counter()
            broker.start()
            sink.flush(300)
            print(f"catch-up: broker started -> outbox empty in {time.perf_counter() - t0:.2f} s "
                  f"(includes the reconnect backoff of up to 0.5 s)")
            sink.close()
            counter.client.loop_stop()
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
