"""Seconds per training epoch of the real loop (FaceSequence + augmenter + Keras fit) for each model variant.

Runs ``--steps`` timed steps (after ``--warmup`` untimed ones that include tracing) of exactly what
``python -m train_export train`` runs (same model builder, augmenter, optimizer, loss, jit_compile) and
extrapolates to an epoch of 28,709 faces (FER2013 train), or times one real epoch with ``--full``.
Uses ../shared/data/fer2013/train.npz when present, random faces of the same shape otherwise.

    PYTHONPATH=. nice -n 10 python3 benchmarks/train_speed.py            # 4 variants, about 3-5 minutes on 2 busy cores
    PYTHONPATH=. python3 benchmarks/train_speed.py --full --variants sepse:1
    PYTHONPATH=. python3 benchmarks/train_speed.py --variants sepse:3:depth=3 vgg:1:depth=3 --steps 8   # teachers
    PYTHONPATH=. python3 benchmarks/train_speed.py --variants vgg:1:depth=3 --steps 8 --mixed-precision bfloat16
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from train_export.cli import positive_int

ROOT = Path(__file__).resolve().parent.parent
FER_TRAIN = ROOT.parent / "shared" / "data" / "fer2013" / "train.npz"
EPOCH_FACES = 28709
VARIANTS = ["mini_xception:1", "sepse:1", "sepse:1.5", "mini_xception:4"]


def other_training_jobs() -> int:
    """How many other ``train_export train`` processes are running (their load slows these numbers)."""
    try:
        out = subprocess.run(["pgrep", "-f", "train_export train"], capture_output=True, text=True).stdout
    except OSError:
        return 0
    return len([p for p in out.split() if p.strip() and int(p) != os.getpid()])


def load_faces(n_random: int) -> tuple[np.ndarray, np.ndarray, str]:
    """FER2013 training faces, or random ones of the same shape when the shared data is absent."""
    if FER_TRAIN.is_file():
        with np.load(FER_TRAIN) as npz:
            return npz["x"], npz["y"].astype(np.int64), str(FER_TRAIN)
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (n_random, 48, 48), dtype=np.uint8), rng.integers(0, 7, n_random),
            f"{n_random} random faces")


def time_variant(model: str, width: float, extra: dict[str, object], x: np.ndarray, y: np.ndarray, batch: int,
                 warmup: int, steps: int | None, precision: str = "float32") -> tuple[int, int, float, int]:
    """Return (params, MACs, seconds per step, steps timed) of the real training loop for one variant.

    ``precision`` is the Keras dtype policy it trains under, as ``train --mixed-precision`` sets it.
    """
    import keras

    from edge.preprocess import Preprocessing
    from train_export.data.batches import FaceSequence
    from train_export.data.load import FaceData
    from train_export.hparams import HParams
    from train_export.model.spec import describe, dtype_policy
    from train_export.training.loop import build_training_model, compile_for_training

    keras.backend.clear_session()
    with dtype_policy(precision):  # after clear_session, which resets the policy
        hp = HParams.from_dict({**extra, "model": model, "width": width, "batch_size": batch, "epochs": 1})
        trainer, core, augmenter = build_training_model(hp)
        seq = FaceSequence(FaceData(x, y, list(hp.labels)), hp, Preprocessing(), training=True, augmenter=augmenter)
        info = describe(core)
        compile_for_training(trainer, hp, len(seq))
        total = len(seq) if steps is None else min(len(seq), warmup + steps)
        stamps: list[float] = []

        class Stamp(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                stamps.append(time.perf_counter())

        trainer.fit(seq, epochs=1, steps_per_epoch=total, verbose=0, callbacks=[Stamp()])
        if steps is None:
            per_step = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
            return info["params"], info["macs"], per_step, len(stamps)
        # The median step, which one compile inside the window (a batch of another shape: about 30 s on an H100)
        # cannot move. The mean of 6 steps read JAX at 4.8 s a step on an H100 whose step parts take 16 ms
        # (the GPU lease notes of 2026-11-27: train_export/checkpoints/gpu_lease/README.md at commit 5f98811), and a
        # GPU lease trained on the slower backend.
        durations = np.diff(stamps[warmup - 1 :])
        return info["params"], info["macs"], float(np.median(durations)), len(durations)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; prints seconds per epoch per model variant."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=VARIANTS,
                        help="model[:width[:name=value...]], e.g. vgg:1:depth=3 or sepse:1.5:stem_stride=2; space- or "
                             "comma-separated (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=positive_int, default=3,
                        help="untimed first steps, at least 1: tracing, caches, and the clock's start (default 3)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--full", action="store_true", help="time one whole epoch per variant instead")
    parser.add_argument("--mixed-precision", choices=["false", "bfloat16", "float16"], default="false",
                        help="as train --mixed-precision: false = float32 (default; what a CPU run uses unless told), "
                             "else mixed bfloat16 or float16")
    args = parser.parse_args(argv)
    args.variants = [v for arg in args.variants for v in arg.split(",") if v]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from train_export.model.spec import parse_variant

    try:
        variants = [(v, *parse_variant(v)) for v in args.variants]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import keras

    x, y, source = load_faces(EPOCH_FACES)
    steps_per_epoch = EPOCH_FACES // args.batch_size  # training drops the incomplete batch
    busy = other_training_jobs()
    from train_export.training.precision import training_policy

    # gpu=False: "false" and the named choices do not depend on the machine
    precision = training_policy(False if args.mixed_precision == "false" else args.mixed_precision, gpu=False)
    print(f"# Training speed, real loop (FaceSequence + augmenter + fit), batch {args.batch_size}, {precision}")
    print(f"backend {keras.backend.backend()} {keras.__version__}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; data: {source}; load average {os.getloadavg()[0]:.1f}")
    if busy:
        print(f"NOTE: taken while {busy} other training job(s) ran on this machine: expect slower numbers than idle.")
    mode = "one full epoch" if args.full else f"median of {args.steps} steps after {args.warmup} warm-up, extrapolated"
    print(f"timing: {mode} to {EPOCH_FACES} faces ({steps_per_epoch} steps)\n")
    rows = ["| model | width | variant | params | MACs (M) | ms/step | s/epoch |", "|---|---|---|---|---|---|---|"]
    for text, name, width, extra in variants:
        params, macs, per_step, n = time_variant(name, width, extra, x, y, args.batch_size, args.warmup,
                                                 None if args.full else args.steps, precision)
        rows.append(f"| {name} | {width:g} | `{text}` | {params:,} | {macs / 1e6:.1f} | {1000 * per_step:.0f} | "
                    f"{per_step * steps_per_epoch:.0f} |")
        print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
