"""Fleet simulation: N devices publishing the demo at default settings to one Mosquitto on loopback.

What is real and what is simulated:

* The message stream is real: a real :class:`edge.runtime.daemon.Daemon` (demo source, shipped model, BlazeFace,
  every default: 10 fps cap, ``faces`` every frame, ``summary`` and ``status`` every 10 s, track events) runs for
  ``--record-s`` seconds into a capturing sink, once per benchmark run.
* The devices are simulated: 50 daemons (camera loop, detector, classifier) do not fit in 2 cores. Each simulated
  device is a real :class:`edge.runtime.publish.mqtt.MqttSink` (its own outbox, seq counter, paho client, TCP
  connection, MQTT 3.1.1 session, QoS 1, retained status, Last Will), fed the recorded bodies at their recorded
  times, looped, each device at its own phase. Only the frame loop is replaced by the replay. ``--procs``
  processes host the simulated devices between them (the per-process CPU they took is printed: that is the
  simulation's cost, not the broker's).
* One QoS 1 subscriber of ``<prefix>/+/+`` (in this process) measures end-to-end latency (receive time minus
  the envelope ``ts``, which the sink stamps at ``publish()``: outbox, pump, TCP, broker, subscriber) and loss
  and duplicates by ``seq`` per device.
* The broker is a private Mosquitto on a free loopback port with its defaults (persistence and logging off);
  its CPU time comes from ``/proc/<pid>/stat`` (utime + stime) and its socket bytes from ``/proc/<pid>/io``
  (rchar: bytes read, wchar: bytes written, both including MQTT framing and acknowledgements), measured over
  the replay window only (connects, Home Assistant discovery and shutdown are outside it).

Usage::

    PYTHONPATH=. nice -n 10 python3 benchmarks/fleet.py [--devices 1 10 50] [--seconds 60] [--procs 2] [--record-s 20]
"""

from __future__ import annotations

import argparse
import heapq
import io
import json
import logging
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

DAY_S = 86_400
#: Spreads device phases over the recording period without two devices in step (golden-ratio sequence).
_PHASE_STEP = 0.6180339887498949


def record_demo(seconds: float, work: Path) -> list[tuple[float, str, dict[str, Any]]]:
    """``(offset s, kind, body)`` of what a default-settings daemon on the demo publishes in ``seconds``."""
    from edge.config import parse_config
    from edge.runtime.assemble import assemble
    from edge.runtime.publish.stdout import StdoutSink

    class CaptureSink(StdoutSink):
        def __init__(self) -> None:
            super().__init__("demo", stream=io.StringIO())
            self.events: list[tuple[float, str, dict[str, Any]]] = []

        def publish(self, kind: str, body: dict[str, Any]) -> int:
            self.events.append((time.monotonic(), kind, json.loads(json.dumps(body))))
            return super().publish(kind, body)

    sink = CaptureSink()
    with assemble(parse_config({"device": {"id": "demo", "state_dir": str(work / "demo-state")}}), sink=sink) as daemon:
        timer = threading.Timer(seconds, daemon.stop)
        timer.start()
        daemon.run()
        timer.cancel()
    t0 = sink.events[0][0]
    return [(t - t0, kind, body) for t, kind, body in sink.events if t - t0 < seconds]


def _worker(host: str, port: int, first_index: int, count: int, events: list, period: float, seconds: float,
            state_root: str, conn: Any) -> None:
    """One process of simulated devices: connect their sinks, replay the stream from the agreed start, report."""
    logging.basicConfig(level=logging.WARNING)
    from edge.config import parse_config
    from edge.runtime.publish.mqtt import MqttSink

    ids = [f"sim-{i:03d}" for i in range(first_index, first_index + count)]
    sinks = [MqttSink(parse_config({"device": {"id": d, "state_dir": f"{state_root}/{d}"},
                                    "mqtt": {"host": host, "port": port}})) for d in ids]
    conn.send(all(s.wait_connected(30) for s in sinks))
    start = conn.recv()
    end = start + seconds
    # Each device plays the recording from its own phase: event j at (offset_j + phase) mod period, repeating.
    orders = []
    heap: list[tuple[float, int, int]] = []
    for d in range(count):
        phase = ((first_index + d) * _PHASE_STEP % 1.0) * period
        order = sorted(((off + phase) % period, j) for j, (off, _, _) in enumerate(events))
        orders.append(order)
        heap.append((start + order[0][0], d, 0))
    heapq.heapify(heap)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    while heap:
        due, d, k = heapq.heappop(heap)
        if due >= end:
            continue
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        _, j = orders[d][k % len(events)]
        _, kind, body = events[j]
        seq = sinks[d].publish(kind, body)
        first.setdefault(ids[d], seq)
        last[ids[d]] = seq
        k += 1
        heapq.heappush(heap, (start + (k // len(events)) * period + orders[d][k % len(events)][0], d, k))
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    flushed = all(s.flush(30) for s in sinks)
    conn.send({"range": {d: (first[d], last[d]) for d in first}, "cpu_s": cpu, "flushed": flushed})
    for s in sinks:
        s.close(5)


class _Subscriber:
    """QoS 1 subscriber of every device's contract topics; keeps (device, seq, latency s, bytes) per message."""

    def __init__(self, host: str, port: int, prefix: str = "emotion"):
        import paho.mqtt.client as mqtt

        self.rows: list[tuple[str, int, float, int]] = []
        self._ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet-bench-sub")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.connect(host, port)
        self.client.subscribe(f"{prefix}/+/+", qos=1)
        self.client.loop_start()
        if not self._ready.wait(10):
            raise RuntimeError("the benchmark's subscriber got no SUBACK")

    def _on_message(self, client, userdata, msg) -> None:
        now = time.time()
        if msg.topic.endswith(("/availability", "/command")):
            return
        env = json.loads(msg.payload)
        self.rows.append((env["device_id"], env["seq"], now - env["ts"], len(msg.payload) + len(msg.topic)))

    def stop(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def _broker_counters(pid: int) -> tuple[float, int, int]:
    """(CPU seconds, bytes read, bytes written) of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)
    io_ = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return cpu, int(io_["rchar"]), int(io_["wchar"])


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def run_fleet(n: int, procs: int, events: list, period: float, seconds: float, work: Path) -> dict[str, Any]:
    """One measurement with ``n`` simulated devices; returns the row of the table."""
    from tests.support.broker import Broker

    broker = Broker(work / f"broker-{n}")
    # Mosquitto's defaults, as a user runs it, instead of the tests' debug-logging, persisting config.
    lines = [f"listener {broker.port} {broker.host}", "allow_anonymous true", "persistence false", "log_type error"]
    if os.geteuid() == 0:
        lines.insert(0, "user root")
    broker.conf.write_text("\n".join(lines) + "\n")
    broker.start()
    ctx = mp.get_context("spawn")
    workers, pipes = [], []
    try:
        sub = _Subscriber(broker.host, broker.port)
        share = [n // procs + (1 if i < n % procs else 0) for i in range(min(procs, n))]
        first = 0
        for count in share:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(broker.host, broker.port, first, count, events, period, seconds,
                                                  str(work / f"state-{n}"), child), daemon=True)
            p.start()
            workers.append(p)
            pipes.append(parent)
            first += count
        if not all(pipe.recv() for pipe in pipes):
            raise RuntimeError("not every simulated device connected")
        start = time.time() + 1.0
        for pipe in pipes:
            pipe.send(start)
        time.sleep(max(0.0, start - time.time()))
        c0 = _broker_counters(broker.proc.pid)
        time.sleep(max(0.0, start + seconds - time.time()))
        c1 = _broker_counters(broker.proc.pid)
        reports = [pipe.recv() for pipe in pipes]
        ranges = {d: r for rep in reports for d, r in rep["range"].items()}
        published = sum(b - a + 1 for a, b in ranges.values())

        def in_range() -> list[tuple[str, int, float, int]]:
            return [r for r in list(sub.rows) if r[0] in ranges and ranges[r[0]][0] <= r[1] <= ranges[r[0]][1]]

        deadline = time.monotonic() + 15
        while len({(r[0], r[1]) for r in in_range()}) < published and time.monotonic() < deadline:
            time.sleep(0.1)
        rows = in_range()
        unique = {(r[0], r[1]) for r in rows}
        for p in workers:
            p.join(30)
        sub.stop()
    finally:
        for p in workers:
            if p.is_alive():
                p.kill()
        broker.stop()
    lat_ms = [r[2] * 1000 for r in rows]
    cpu_s, rchar, wchar = (b - a for a, b in zip(c0, c1, strict=True))
    return {
        "n": n, "procs": len(share), "seconds": seconds, "published": published,
        "msg_s": published / seconds, "payload_b_s": sum(r[3] for r in rows) / seconds,
        "broker_cpu": cpu_s / seconds, "broker_in_b_s": rchar / seconds, "broker_out_b_s": wchar / seconds,
        "p50_ms": _pct(lat_ms, 50), "p99_ms": _pct(lat_ms, 99), "max_ms": max(lat_ms),
        "lost": published - len(unique), "duplicates": len(rows) - len(unique),
        "sim_cpu": sum(rep["cpu_s"] for rep in reports) / seconds, "flushed": all(rep["flushed"] for rep in reports),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; prints the tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 10, 50], help="Fleet sizes to measure.")
    ap.add_argument("--seconds", type=float, default=60.0, help="Replay window per fleet size.")
    ap.add_argument("--procs", type=int, default=2, help="Processes hosting the simulated devices.")
    ap.add_argument("--record-s", type=float, default=20.0, help="Seconds of the real daemon's demo stream to replay.")
    args = ap.parse_args(argv)
    from tests.support.broker import mosquitto_available

    if not mosquitto_available():
        print("error: mosquitto is not installed (apt-get install -y mosquitto)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    print(f"command: {' '.join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}")
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        work = Path(tmp)
        events = record_demo(args.record_s, work)
        kinds = {k: sum(1 for _, kind, _ in events if kind == k) for k in ("faces", "summary", "status", "events")}
        print(f"recorded stream: {len(events)} messages in {args.record_s:g} s from a default-settings daemon on the "
              f"demo ({', '.join(f'{v} {k}' for k, v in kinds.items())}), replayed in a loop per device")
        rows = [run_fleet(n, args.procs, events, args.record_s, args.seconds, work) for n in args.devices]
    print()
    print("| devices | msg/s total | msg/s per device | payload B/s per device | broker in / out B/s per device "
          "| broker CPU (% of a core) | broker CPU ms/s per device | latency p50 / p99 / max ms | lost | duplicates "
          "| simulation CPU (% of a core, procs) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        n = r["n"]
        print(f"| {n} | {r['msg_s']:.1f} | {r['msg_s'] / n:.2f} | {r['payload_b_s'] / n:,.0f} | "
              f"{r['broker_in_b_s'] / n:,.0f} / {r['broker_out_b_s'] / n:,.0f} | {100 * r['broker_cpu']:.1f} | "
              f"{1000 * r['broker_cpu'] / n:.3f} | {r['p50_ms']:.1f} / {r['p99_ms']:.1f} / {r['max_ms']:.0f} | "
              f"{r['lost']} of {r['published']} | {r['duplicates']} | {100 * r['sim_cpu']:.0f} ({r['procs']}) |")
    print()
    print("One device a day at the broker (one subscriber of everything; each further subscriber adds the out bytes again):")
    print("| measured with | messages/day | bytes in/day | bytes out/day | broker CPU-s/day |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        n = r["n"]
        print(f"| {n} devices | {r['msg_s'] / n * DAY_S:,.0f} | {r['broker_in_b_s'] / n * DAY_S / 1e6:,.1f} MB | "
              f"{r['broker_out_b_s'] / n * DAY_S / 1e6:,.1f} MB | {r['broker_cpu'] / n * DAY_S:,.0f} |")
    if not all(r["flushed"] for r in rows):
        print("warning: some simulated devices still had unacknowledged messages 30 s after the window")
    return 0


if __name__ == "__main__":
    sys.exit(main())
