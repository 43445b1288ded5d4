"""A group model push to a fleet: how long ``push-mqtt --group G --expect N`` takes until all N devices answered.

The devices are simulated on one private Mosquitto (loopback): each is a real ``MqttSink`` + real
``ModelPushReceiver`` (signature check, sha256, staging, ``check_bundle`` with two smoke inferences, store
install + activation, replay guard) with its own state folder, and a real model manager whose swap loads
the pushed bundle into a real ``Classifier`` (no camera loop). All N run in this one process on this machine's
cores, so they verify and load in parallel as far as 2 cores allow; real devices each have their own CPU, so
on a fleet the time is closer to one device's own verify+swap plus the transfer. The publisher is the same
``publish_push`` that ``python -m edge push-mqtt`` runs (its process start-up is not counted).

Usage::

    PYTHONPATH=. nice -n 10 python3 benchmarks/push_fleet.py [--devices 20] [--pushes 3] [--bundle DIR]

Without ``--bundle`` it pushes the shipped default model (edge/models/default).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path


def main() -> int:
    """Command line entry point; prints one line per push and a summary."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=20, help="Simulated devices in the group.")
    ap.add_argument("--pushes", type=int, default=3, help="Pushes (each a newer re-export, so every one swaps).")
    ap.add_argument("--bundle", type=Path, help="Bundle folder (default: the shipped model).")
    args = ap.parse_args()

    import paho.mqtt.client as mqtt

    from edge.bundle import default_bundle_dir
    from edge.protocol.broker import BrokerSettings
    from edge.tools.push_mqtt import PushTarget, publish_push
    from tests.support.broker import Broker, mosquitto_available
    from tests.support.push import SimulatedFleet, make_keys, restamped_signed_copy

    if not mosquitto_available():
        print("error: mosquitto is not installed (apt-get install -y mosquitto)", file=sys.stderr)
        return 2
    src = args.bundle or default_bundle_dir()
    print(f"command: {' '.join(sys.argv)}")
    with tempfile.TemporaryDirectory(prefix="bench-push-fleet-") as tmp:
        work = Path(tmp)
        broker = Broker(work / "mosquitto").start()
        fleet = None
        try:
            private, public = make_keys(work)
            t = time.perf_counter()
            fleet = SimulatedFleet(work / "fleet", broker.host, broker.port, args.devices, public)
            if not fleet.wait_ready(60):
                print("error: not every simulated device subscribed", file=sys.stderr)
                return 1
            print(f"{args.devices} simulated devices connected and subscribed in {time.perf_counter() - t:.1f} s")
            arrivals: dict[str, float] = {}
            lock = threading.Lock()

            def on_message(client, userdata, msg) -> None:
                body = json.loads(msg.payload)
                if body.get("event") == "model_push":
                    with lock:
                        arrivals.setdefault(body["device_id"], time.perf_counter())

            watch = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="push-fleet-watch")
            watch.on_message = on_message
            watch.connect(broker.host, broker.port)
            watch.subscribe("emotion/+/events", qos=1)
            watch.loop_start()
            time.sleep(0.5)
            totals, firsts, device_s = [], [], []
            for i in range(args.pushes):
                bundle = restamped_signed_copy(src, work / f"push-{i}", private, f"2100-01-01T{i:02d}:00:00+00:00")
                with lock:
                    arrivals.clear()
                t0 = time.perf_counter()
                out = publish_push(bundle, PushTarget(group="lab"), BrokerSettings(broker.host, broker.port),
                                   wait_s=300, expect=args.devices, settle_s=0)
                total = time.perf_counter() - t0
                ok = sum(1 for r in out.results.values() if r.get("ok") and r.get("code") == "ok")
                with lock:
                    first = min(arrivals.values()) - t0 if arrivals else float("nan")
                durations = [r["duration_s"] for r in out.results.values() if "duration_s" in r]
                totals.append(total)
                firsts.append(first)
                device_s.extend(durations)
                print(f"push {i}: {out.payload_bytes:,} bytes, {ok}/{args.devices} ok; first answer {first:.2f} s, "
                      f"all {len(out.results)} answers {total:.2f} s after publish; on-device verify+install+swap "
                      f"median {statistics.median(durations):.2f} s, max {max(durations):.2f} s")
            watch.disconnect()
            watch.loop_stop()
            print(f"\n{args.devices}-device group push, {args.pushes} pushes: publish -> all answers median "
                  f"{statistics.median(totals):.2f} s (first answer median {statistics.median(firsts):.2f} s; "
                  f"per-device verify+install+swap median {statistics.median(device_s):.2f} s with all "
                  f"{args.devices} sharing this machine's cores)")
        finally:
            if fleet is not None:
                fleet.close()
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
