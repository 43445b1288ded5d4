"""What a model push costs on the device, step by step, and end to end over a real Mosquitto.

Steps (median of ``--repeat`` runs each): sign a bundle (workstation), build the push message, ``parse_push``
(size cap, Ed25519 signature, manifest schema, sha256), ``check_bundle`` (interpreter load, tensors vs manifest,
two smoke inferences), store install + atomic activation, and the daemon's own load (``Classifier``). Then, with
a private Mosquitto on a free loopback port, a real ``MqttSink`` + ``ModelPushReceiver`` + assembled daemon in-process:
the time from ``publish_push`` to the device's result event (alternating two models, so every push swaps).

Usage::

    PYTHONPATH=. nice -n 10 python3 benchmarks/model_push.py [--bundle DIR] [--repeat 20]

Without ``--bundle`` it uses the shipped default model if present, else builds the tiny test bundle (needs
TensorFlow). A second model for the end-to-end swaps is the same bundle with another model id.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _bundle(arg: str | None, work: Path) -> Path:
    from edge.bundle import MODEL_FILE, default_bundle_dir

    if arg:
        return Path(arg)
    if (default_bundle_dir() / MODEL_FILE).exists():
        return default_bundle_dir()
    from tests.support.bundles import make_tiny_bundle

    return make_tiny_bundle(work / "tiny")


def _variant(src: Path, dst: Path, model_id: str) -> Path:
    from edge.bundle import MANIFEST_FILE

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("manifest.sig"))
    data = json.loads((dst / MANIFEST_FILE).read_text())
    data["model_id"] = model_id
    (dst / MANIFEST_FILE).write_text(json.dumps(data, indent=2) + "\n")
    return dst


def main() -> int:
    """Command line entry point; prints the measurements."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", help="Bundle folder (default: shipped model, else the tiny test bundle).")
    ap.add_argument("--repeat", type=int, default=20, help="Runs per step.")
    ap.add_argument("--pushes", type=int, default=10, help="End-to-end pushes over MQTT.")
    args = ap.parse_args()

    from edge.protocol.push import build_push, parse_push
    from edge.protocol.signing import generate_keypair, load_public_key, sign_bundle
    from edge.runtime.classify.classifier import Classifier
    from edge.runtime.models.check import check_bundle
    from edge.runtime.models.store import ModelStore

    work = Path(tempfile.mkdtemp(prefix="bench-push-"))
    try:
        src = _bundle(args.bundle, work)
        a = _variant(src, work / "a", "bench-a")
        b = _variant(src, work / "b", "bench-b")
        key = work / "k"
        generate_keypair(key)
        pub = load_public_key(work / "k.pub")
        sign_bundle(a, key)
        sign_bundle(b, key)
        payload = build_push(a)
        store = ModelStore(work / "store")
        pre = ModelStore(work / "store2")
        folders = [pre.install(a), pre.install(b)]
        size = (a / "model.tflite").stat().st_size

        print(f"bundle: {src} (model {size} bytes, push message {len(payload)} bytes)")
        print(f"{'step':<44} {'median ms':>10}")
        rows = [
            ("sign (workstation)", lambda: sign_bundle(a, key)),
            ("build push message (workstation)", lambda: build_push(a)),
            ("parse_push: size, signature, schema, sha256", lambda: parse_push(payload, [pub], 64 << 20)),
            ("check_bundle: load, tensors, 2 smoke inferences", lambda: check_bundle(a)),
            ("store install (copy + fsync + verify)", lambda: (shutil.rmtree(store.root, ignore_errors=True),
                                                              store.install(a))),
            ("store activate (atomic link swap)", lambda: pre.activate(
                folders[1] if pre.current() == folders[0] else folders[0])),
            ("daemon load (Classifier: load + smoke)", lambda: Classifier(a)),
        ]
        for name, fn in rows:
            print(f"{name:<44} {_median_ms(fn, args.repeat):>10.2f}")
        end_to_end(work, a, b, work / "k.pub", args.pushes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def end_to_end(work: Path, a: Path, b: Path, pub: Path, pushes: int) -> None:
    """Publish alternating models to an in-process device; print the median publish-to-result time."""
    from edge.config import parse_config
    from edge.protocol.broker import BrokerSettings
    from edge.runtime.assemble import assemble
    from edge.runtime.models.push import ModelPushReceiver
    from edge.runtime.publish.mqtt import MqttSink
    from edge.tools.push_mqtt import PushTarget, publish_push
    from tests.support.broker import Broker, mosquitto_available

    if not mosquitto_available():
        print("end to end: skipped (apt-get install -y mosquitto)")
        return
    broker = Broker(work / "mosquitto").start()
    try:
        cfg = parse_config({
            "device": {"id": "bench", "state_dir": str(work / "state")},
            "classifier": {"model": str(a)},
            "mqtt": {"host": broker.host, "port": broker.port},
            "homeassistant": {"enabled": False},
            "model_push": {"enabled": True, "trusted_keys": [str(pub)]},
        })
        sink = MqttSink(cfg)
        parts = contextlib.ExitStack()
        daemon = parts.enter_context(assemble(cfg, sink=sink, session=sink.session))
        receiver = next(e for e in daemon.extensions if isinstance(e, ModelPushReceiver))
        receiver.start()
        sink.wait_connected(10)
        time.sleep(0.3)
        times, durations = [], []
        for i in range(pushes):
            bundle = b if i % 2 == 0 else a
            t = time.perf_counter()
            out = publish_push(bundle, PushTarget(device="bench"), BrokerSettings(broker.host, broker.port), wait_s=60)
            times.append((time.perf_counter() - t) * 1000)
            r = out.results.get("bench") or {}
            if not r.get("ok"):
                print(f"push {i} failed: {r}")
                break
            durations.append(r["duration_s"] * 1000)
            print(f"  push {i}: {r['code']} -> {r['running_model_id']} in {r['duration_s'] * 1000:.1f} ms on the device")
        receiver.stop()
        parts.close()
        sink.close(2)
        if times:
            print(f"end to end over Mosquitto, {len(times)} swapping pushes: publish->result median {statistics.median(times):.1f} ms "
                  f"(device side verify+swap median {statistics.median(durations):.1f} ms)")
    finally:
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
