"""Seconds per batch of the teachers' forward passes in online distillation, in float32 and in a mixed policy.

Online distillation (``train --teacher-models``) runs every teacher on every training batch; on a CPU that is most
of the step. This loads the teachers the way ``train`` does (:func:`train_export.training.online_distill.load_teachers`,
which rebuilds a teacher to compute in the run's mixed policy when its run folder has its ``hparams.json``) and
times their summed forward passes on random faces, compiled (``tf.function`` / ``jax.jit``), after a warm-up. It
also reports how far the mixed policy's probabilities are from float32's.

    PYTHONPATH=. nice -n 10 python3 benchmarks/teacher_speed.py --teacher runs/T1/best.keras --teacher runs/T2/best.keras
    PYTHONPATH=. python3 benchmarks/teacher_speed.py --teacher runs/T1/best.keras --policy mixed_bfloat16 --batch-size 256
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time

import keras
import numpy as np

from train_export.cli import positive_int


def _compiled(models: list[keras.Model]):
    """One compiled function returning every teacher's probabilities on a batch."""
    def forward(x):
        return [m(x, training=False) for m in models]

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(forward)
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(forward)
    return forward


def time_teachers(paths: list[str], policy: str, batch_size: int, steps: int, warmup: int = 3
                  ) -> tuple[float, np.ndarray]:
    """Median seconds per batch of all the teachers together under ``policy``, and their probabilities on one batch."""
    from train_export.analysis.evaluate import keras_labels, run_hparams
    from train_export.model.spec import dtype_policy
    from train_export.training.online_distill import load_teachers

    side = int(run_hparams(paths[0]).get("input_size", 48))
    labels = keras_labels(paths[0], None)
    with dtype_policy(policy):  # as train() loads them
        teachers = load_teachers(paths, side, labels, policy)
    x = np.random.default_rng(0).random((batch_size, side, side, 1), dtype=np.float32)
    run = _compiled(teachers)
    for _ in range(warmup):
        out = run(x)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        out = run(x)
        _ = [np.asarray(keras.ops.convert_to_numpy(o)) for o in out]  # wait for the result
        times.append(time.perf_counter() - t)
    probs = np.stack([keras.ops.convert_to_numpy(o).astype(np.float32) for o in out])
    return float(np.median(times)), probs


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", action="append", required=True, help="a teacher's .keras in its run folder (repeat)")
    p.add_argument("--policy", default="mixed_bfloat16", choices=("mixed_bfloat16", "mixed_float16"),
                   help="the mixed policy to compare with float32")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--steps", type=positive_int, default=10, help="timed batches per policy")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        f32, p32 = time_teachers(args.teacher, "float32", args.batch_size, args.steps)
        mixed, pmx = time_teachers(args.teacher, args.policy, args.batch_size, args.steps)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"# Teachers' forward passes, batch {args.batch_size}, median of {args.steps} after 3 warm-up")
    print(f"backend {keras.backend.backend()} {keras.__version__}; {platform.machine()}; teachers: "
          + ", ".join(args.teacher))
    print("| policy | s per batch | largest probability difference from float32 |")
    print("|---|---:|---:|")
    print(f"| float32 | {f32:.3f} | 0 |")
    print(f"| {args.policy} | {mixed:.3f} | {float(np.abs(pmx - p32).max()):.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
