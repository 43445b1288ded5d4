"""Training steps per second on one device and data-parallel on several (``train_export.training.distribute``).

Each configuration runs in a process of its own (a CPU split into logical devices stays split): the real training
model of ``--hparams`` (default: the shipped architecture, sepse width 1.5 with the strided stem), built and
compiled the way ``train`` does inside the chosen placement, fitted on synthetic 48x48 faces through the real
``FaceSequence`` (augmentation on). ``--steps`` steps are timed after ``--warmup`` untimed ones (the first compiles),
each device taking ``--batch-size`` faces a step, so faces/s is what to compare. Without GPUs the CPU is split into
``--devices`` logical devices: they share the same cores, so this measures what the mirrored step costs, not a
speed-up; on a multi-GPU machine the same command compares one GPU with all of them. Run::

    PYTHONPATH=. nice -n 10 python3 benchmarks/data_parallel.py [--devices 2] [--steps 30] [--hparams width=1.5,stem_stride=2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(args: argparse.Namespace) -> dict:
    """Time ``args.steps`` training steps with ``data_parallel = args.mode`` in this process."""
    import tensorflow as tf

    from train_export.training.distribute import logical_cpus

    if not tf.config.list_physical_devices("GPU") and args.devices > 1:
        logical_cpus(args.devices)
    import keras
    import numpy as np

    from edge.bundle import FER_LABELS
    from edge.preprocess import Preprocessing
    from train_export.data.batches import FaceSequence
    from train_export.data.load import FaceData
    from train_export.hparams import HParams, parse_assignments
    from train_export.training.distribute import placement
    from train_export.training.loop import build_training_model, compile_for_training

    hp = HParams(**{**parse_assignments(args.hparams), "batch_size": args.batch_size,
                    "data_parallel": {"true": True, "false": False}[args.mode]})
    where = placement(hp.data_parallel)
    run_hp = where.scaled(hp)
    rng = np.random.default_rng(0)
    n = run_hp.batch_size * (args.steps + args.warmup)
    data = FaceData(rng.integers(0, 256, (n, 48, 48), dtype=np.uint8), rng.integers(0, 7, n), list(FER_LABELS))
    times: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
            self.t = time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            times.append(time.perf_counter() - self.t)

    with where.scope():
        model, _, augmenter = build_training_model(hp)
        seq = FaceSequence(data, run_hp, Preprocessing(input_size=hp.input_size), training=True, augmenter=augmenter)
        compile_for_training(model, run_hp, len(seq))
        model.fit(seq, epochs=1, verbose=0, callbacks=[Clock()])
    timed = times[args.warmup:]
    step = float(np.median(timed))
    return {"replicas": where.replicas, "devices": list(where.devices), "global_batch": run_hp.batch_size,
            "step_s": step, "steps_per_s": 1 / step, "faces_per_s": run_hp.batch_size / step,
            "policy": keras.mixed_precision.global_policy().name}


def main(argv: list[str] | None = None) -> int:
    """Run one device, then data-parallel, each in a fresh process, and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=2, help="Logical CPU devices when there is no GPU.")
    ap.add_argument("--steps", type=int, default=30, help="Timed steps.")
    ap.add_argument("--warmup", type=int, default=5, help="Untimed steps first.")
    ap.add_argument("--batch-size", type=int, default=64, help="Faces per device per step.")
    ap.add_argument("--hparams", default="width=1.5,stem_stride=2", help="HParams assignments of the model.")
    ap.add_argument("--worker", choices=("true", "false"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.mode = args.worker
        print(json.dumps(worker(args)))
        return 0
    print(f"{args.steps} timed steps after {args.warmup}, {args.batch_size} faces per device per step, "
          f"hparams {args.hparams}; {time.strftime('%Y-%m-%d')}\n")
    print("| data_parallel | devices | global batch | steps/s | faces/s | median step s |\n|---|---|---:|---:|---:|---:|")
    for mode in ("false", "true"):
        cmd = [sys.executable, __file__, "--worker", mode, "--devices", str(args.devices), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--hparams", args.hparams]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"})
        lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
        if r.returncode or not lines:
            print(f"| {mode} | failed: {(r.stderr.strip().splitlines() or ['?'])[-1]} | | | | |")
            continue
        res = json.loads(lines[-1])
        where = ", ".join(res["devices"]) or "one (default)"
        print(f"| {mode} | {where} | {res['global_batch']} | {res['steps_per_s']:.2f} | {res['faces_per_s']:.0f} | "
              f"{res['step_s']:.3f} |", flush=True)
    print(f"\ncommand: PYTHONPATH=. python3 benchmarks/data_parallel.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
