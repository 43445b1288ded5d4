"""What hostile input costs the daemon: a huge command, deeply nested JSON, and a seeded fuzz of the command topic.

Starts a private Mosquitto (apt ``mosquitto``) and ``python -m edge run`` (demo source, shipped model) of the
checkout given by ``--edge-root`` (default: this one), so a before/after comparison runs the same script against
two checkouts. For each case it prints the daemon's peak resident memory before and after (``VmHWM`` from
/proc), the answer it published, its log (bytes, longest line, tracebacks) and its outbox file::

    PYTHONPATH=. nice -n 10 python3 benchmarks/hostile_input.py [--edge-root ../main] [--mb 40] [--fuzz 300]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from tests.support.broker import Broker, mosquitto_available
from tests.support.hostile import DaemonProcess, fuzz_payload
from tests.support.mqtt import Collector

ROOT = Path(__file__).resolve().parent.parent



COMMAND = "emotion/dev1/command"


def _answers(col: Collector) -> list[bytes]:
    return [p for p in col.raw("emotion/dev1/events") if b'"event":"command"' in p]


def _case(name: str, root: Path, work: Path, payloads: list[bytes], rate_key: bool) -> None:
    broker = Broker(work / f"mosquitto-{name}").start()
    col = Collector(broker, topic="emotion/dev1/+", client_id=f"bench-{name}").start()
    d = DaemonProcess(work / name, broker, root=root,
                      mqtt_toml="command_rate = 1000.0" if rate_key else "").start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{name}")
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    try:
        deadline = time.monotonic() + 60
        while len(col.raw("emotion/dev1/faces")) < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        idle = d.mb("VmHWM")
        t0 = time.monotonic()
        for p in payloads:
            pub.publish(COMMAND, p, qos=1).wait_for_publish(120)
        deadline = time.monotonic() + 30
        while len(_answers(col)) < len(payloads) and time.monotonic() < deadline and d.alive:
            time.sleep(0.1)
        took = time.monotonic() - t0
        time.sleep(3)  # the outbox settles, the log is flushed
        peak = d.mb("VmHWM") if d.alive else float("nan")
        answers = _answers(col)
        outbox = sum(p.stat().st_size for p in d.state.glob("outbox.db*"))
        alive = d.alive
    finally:
        pub.loop_stop()
        d.stop()
        col.stop()
        broker.stop()
    log = d.log_text()
    lines = log.splitlines()
    print(f"{name:<14} idle peak {idle:7.1f} MB  peak {peak:7.1f} MB (+{peak - idle:6.1f})  "
          f"answers {len(answers)}/{len(payloads)}, largest {max(map(len, answers), default=0):,} B  "
          f"log {len(log):,} B, longest line {max(map(len, lines), default=0):,}, tracebacks "
          f"{log.count('Traceback')}  outbox files {outbox:,} B  alive {alive}  {took:.1f} s")


def main(argv: list[str] | None = None) -> int:
    """Run the three cases and print one line each."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edge-root", type=Path, default=ROOT, help="Checkout whose daemon runs (default: this one).")
    ap.add_argument("--mb", type=int, default=40, help="Size of the huge command in MB.")
    ap.add_argument("--fuzz", type=int, default=300, help="Seeded fuzz payloads on the command topic.")
    args = ap.parse_args(argv)
    if not mosquitto_available():
        print("error: mosquitto is not installed (apt-get install -y mosquitto)", file=sys.stderr)
        return 2
    root = args.edge_root.resolve()
    # Older checkouts have no mqtt.command_rate key (and no rate limit to lift for the fuzz).
    rate_key = "command_rate" in (root / "edge" / "config.py").read_text()
    print(f"edge from {root}; command: PYTHONPATH=. nice -n 10 python3 benchmarks/hostile_input.py --edge-root {args.edge_root} "
          f"--mb {args.mb} --fuzz {args.fuzz}")
    rng = random.Random(25)
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        work = Path(tmp)
        huge = b'{"command": "' + b"x" * (args.mb * 1024 * 1024) + b'"}'
        _case(f"{args.mb} MB command", root, work, [huge], rate_key)
        del huge
        _case("depth 1000", root, work, [b"[" * 1000, b'{"command": "publish_status"}'], rate_key)
        _case(f"fuzz {args.fuzz}", root, work, [fuzz_payload(rng) for _ in range(args.fuzz)], rate_key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
