"""Where a training step's time goes, per part, on the current Keras backend.

``train_speed.py`` times the whole loop; this times its parts separately, each over ``--steps`` batches
after a warm-up (compilation) call: the batch itself (``FaceSequence`` without its augmenter: indexing,
normalising, mixing), the augmenter (``BatchAugmenter``, compiled on JAX), the compiled training step
(``train_on_batch`` on ready batches) and the forward pass alone (``predict_on_batch``). Written after
two GPU leases where a step took 0.5-5 s on an H100, to find which part is slow there.

    KERAS_BACKEND=jax PYTHONPATH=. python3 benchmarks/train_step_profile.py --variants sepse:1.5:stem_stride=2 vgg:1:depth=3
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import numpy as np

from train_export.cli import positive_int


def timed(fn: Callable[[int], object], steps: int) -> tuple[float, float]:
    """(seconds of the first call, mean seconds of the next ``steps`` calls) of ``fn(i)``."""
    t0 = time.perf_counter()
    fn(0)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        fn(i)
    return first, (time.perf_counter() - t0) / steps


def profile(model: str, width: float, extra: dict[str, object], batch: int, steps: int) -> list[tuple[str, float, float]]:
    """(part, first-call seconds, seconds per batch) for each part of one variant's training step.

    ``extra`` holds the variant's other hyper-parameters (:class:`HParams` names, e.g. ``{"stem_stride": 2}``).
    """
    import keras

    from edge.preprocess import Preprocessing
    from train_export.data.batches import FaceSequence
    from train_export.data.load import FaceData
    from train_export.hparams import HParams
    from train_export.training.loop import build_training_model, compile_for_training

    keras.backend.clear_session()
    hp = HParams.from_dict({"mixed_precision": False, **extra, "model": model, "width": width, "batch_size": batch,
                            "epochs": 1})
    trainer, core, augmenter = build_training_model(hp)
    rng = np.random.default_rng(0)
    n = batch * (steps + 2)
    data = FaceData(rng.integers(0, 256, (n, 48, 48), dtype=np.uint8), rng.integers(0, 7, n), list(hp.labels))
    seq = FaceSequence(data, hp, Preprocessing(), training=True, augmenter=augmenter)
    compile_for_training(trainer, hp, len(seq))
    aug, seq.augmenter = seq.augmenter, None
    rows = [("batch (index, normalise, mix)", *timed(lambda i: seq[i], steps))]
    batches = [seq[i] for i in range(steps + 1)]
    if aug is not None:
        rows.append(("augmenter", *timed(lambda i: aug(batches[i][0]), steps)))
    else:
        rows.append(("augmenter (inside the step on this backend)", 0.0, 0.0))
    rows.append((f"train step (jit_compile={trainer.jit_compile})", *timed(lambda i: trainer.train_on_batch(*batches[i]),
                                                                          steps)))
    rows.append(("forward only", *timed(lambda i: core.predict_on_batch(batches[i][0]), steps)))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; prints a table per variant."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["sepse:1.5:stem_stride=2"],
                        help="model[:width[:name=value...]] as in train_speed.py, e.g. vgg:1:depth=3 "
                             "(default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--steps", type=positive_int, default=5, help="timed batches per part (default 5)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from train_export.model.spec import parse_variant

    try:
        variants = [(v, *parse_variant(v)) for v in args.variants]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import keras

    print(f"# Training step by part: backend {keras.backend.backend()} {keras.__version__}, batch {args.batch_size}, "
          f"{args.steps} timed batches after one untimed (compiling) call")
    for text, name, width, extra in variants:
        print(f"\n{text} ({name} w{width:g}{''.join(f' {k}={v}' for k, v in extra.items())})\n\n"
              "| part | first call s | ms per batch |\n|---|---:|---:|")
        for part, first, per in profile(name, width, extra, args.batch_size, args.steps):
            print(f"| {part} | {first:.2f} | {1000 * per:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
