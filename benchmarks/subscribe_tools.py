"""Throughput of the subscriber tools: how fast ``record`` stores a burst, how long ``plot`` takes for a day.

    PYTHONPATH=. python3 benchmarks/subscribe_tools.py [--messages 5000] [--hours 24]

Starts its own Mosquitto on a free loopback port (apt ``mosquitto``). Prints:
- record: messages/s from the first to the last stored message of a burst of contract-shaped ``faces``
  messages published at QoS 1 (each stored row is committed with ``synchronous=FULL`` before its PUBACK);
- plot: seconds to render timeline + hourly chart from a synthetic recording of ``--hours`` hours of
  10 s summaries (one device), and the recording's size.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from edge.protocol.broker import BrokerSettings
from edge.tools.subscribe.plot import plot_recording
from edge.tools.subscribe.record import Recorder
from edge.tools.subscribe.store import Recording
from tests.support.broker import Broker
from tests.support.mqtt import LABELS, faces_body


def bench_record(workdir: Path, n: int) -> float:
    """Messages per second stored by the recorder for a burst of ``n`` faces messages."""
    broker = Broker(workdir / "mosquitto").start()
    try:
        rec = Recorder(BrokerSettings(host=broker.host, port=broker.port), workdir / "rec.sqlite")
        rec.start()
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub")
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        payloads = [json.dumps({"schema_version": 1, "device_id": "bench", "kind": "faces", "ts": time.time(),
                                "seq": i + 1, **faces_body(i, 2)}) for i in range(n)]
        t0 = time.perf_counter()
        infos = [pub.publish("emotion/bench/faces", p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(60)
        while rec.stored < n:
            time.sleep(0.01)
        dt = time.perf_counter() - t0
        pub.disconnect()
        pub.loop_stop()
        rec.stop()
        return n / dt
    finally:
        broker.stop()


def bench_plot(workdir: Path, hours: float) -> tuple[float, int, int]:
    """Seconds to plot ``hours`` of 10 s summaries; returns (seconds, rows, file bytes)."""
    db = workdir / "day.sqlite"
    rec = Recording(db)
    t0 = 1_763_900_000.0
    rows = int(hours * 360)
    # One transaction for the synthetic data (the recorder itself commits per message).
    rec._db.execute("BEGIN")
    for i in range(rows):
        top = LABELS[(i // 360) % len(LABELS)]
        probs = {lab: (0.7 if lab == top else 0.05) for lab in LABELS}
        msg = {"schema_version": 1, "device_id": "day", "kind": "summary", "ts": t0 + 10 * i, "seq": i + 1,
               "window_s": 10.0, "start_ts": t0 + 10 * i - 10, "end_ts": t0 + 10 * i, "frames": 100,
               "faces_mean": 1.0 + (i % 7) / 7, "faces_max": 2, "dominant_emotion": top, "mean_probs": probs,
               "tracks": []}
        rec._db.execute("INSERT INTO messages (device, seq, kind, ts, received_ts, topic, payload) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)", ("day", i + 1, "summary", msg["ts"], msg["ts"],
                                                         "emotion/day/summary", json.dumps(msg)))
    rec._db.commit()
    rec.close()
    t = time.perf_counter()
    plot_recording(db, workdir / "plots")
    return time.perf_counter() - t, rows, db.stat().st_size


def main() -> None:
    """Run both measurements and print them."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=5000, help="Burst size for the recorder (default 5000).")
    ap.add_argument("--hours", type=float, default=24.0, help="Hours of summaries to plot (default 24).")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rate = bench_record(work, args.messages)
        print(f"record: {args.messages} faces messages (2 faces each) stored at {rate:,.0f} msg/s")
        secs, rows, size = bench_plot(work, args.hours)
        print(f"plot:   {args.hours:g} h of 10 s summaries ({rows} rows, {size / 1e6:.1f} MB recording) "
              f"-> timeline + hourly PNG in {secs:.2f} s")


if __name__ == "__main__":
    main()
