"""Per-face latency of architecture variants before any is trained: random weights, int8, the device's runtime.

A model's speed in LiteRT does not depend on what its weights have learnt, so the cost of an architecture
choice (a strided stem, no squeeze-excitation, another width) can be measured before hours of training are
spent on it. Each ``--variant`` is a set of hyper-parameters (``train_export.hparams.HParams`` names, checked
the same way as a run's); its model is built with random weights, quantized to full-integer int8 with the
export code on random calibration inputs, packaged as a bundle and timed through the device's own
classifier (``model_latency.DeviceModel``: integer input, ``invoke()``, dequantized output, batch 1).

The variants are timed in turns (``--rounds`` of ``--n`` calls each), so a busy or throttling host slows
them all alike and the comparison between them stays fair even when the absolute numbers move.

Run (needs TensorFlow, for the int8 conversion)::

    PYTHONPATH=. nice -n 10 python3 benchmarks/arch_latency.py --variant width=1.5 --variant width=1.5,stem_stride=2 \\
        --variant width=1.5,se=false --variant width=1.25 [--rounds 10] [--n 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from model_latency import DEFAULT_FACES, DeviceModel, load_faces, time_calls

from edge.preprocess import Preprocessing
from train_export.cli import positive_int
from train_export.hparams import HParams, parse_assignments


def build_variant(hp: HParams, out_dir: Path, seed: int = 0) -> dict:
    """Build, quantize and package one variant in ``out_dir``; return its params, MACs and file size."""
    import keras

    from train_export.export.bundle_writer import write_bundle
    from train_export.export.quantize import convert_int8
    from train_export.model.spec import build_from_hparams, describe

    keras.utils.set_random_seed(seed)
    model = build_from_hparams(hp)
    # Calibration only sets the quantization ranges; inputs in the normalised range are all it needs here.
    rep = np.random.default_rng(seed).uniform(-1.0, 1.0, (32, hp.input_size, hp.input_size, 1)).astype(np.float32)
    model_bytes = convert_int8(model, rep)
    write_bundle(out_dir, model_bytes, list(hp.labels), Preprocessing(input_size=hp.input_size), "arch-probe")
    info = describe(model)
    return {"params": info["params"], "macs": info["macs"], "bytes": len(model_bytes)}


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", action="append", required=True,
                   help="hyper-parameters of one variant, name=value[,name=value...] (repeat for each variant)")
    p.add_argument("--rounds", type=positive_int, default=10, help="turns through all variants (default 10)")
    p.add_argument("--n", type=positive_int, default=200, help="timed calls per variant per round (default 200)")
    p.add_argument("--warmup", type=int, default=50, help="untimed calls before each round's timed ones (default 50)")
    p.add_argument("--threads", type=positive_int, default=1, help="interpreter threads (default 1)")
    p.add_argument("--data", type=Path, default=DEFAULT_FACES, help="an .npz of uint8 faces to feed (default: FER2013 val)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Build every variant, time them in turns and print one markdown table; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        variants = [(text, HParams.from_dict(parse_assignments(text))) for text in args.variant]
        faces: dict[int, np.ndarray] = {}
        for size in {hp.input_size for _text, hp in variants}:
            # The given faces where they fit the variant's input size, else synthetic ones of that size.
            faces[size] = load_faces(args.data if size == 48 else None, size, 1000)[0]
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for i, (text, hp) in enumerate(variants):
            info = build_variant(hp, Path(tmp) / str(i))
            rows.append((text, info, DeviceModel(Path(tmp) / str(i), num_threads=args.threads), []))
        for _text, _info, model, times in rows * args.rounds:
            times.append(time_calls(model.predict, faces[model.size], args.n, args.warmup).ms)
    print(f"{args.rounds} rounds x {args.n} calls per variant, {args.threads} thread(s), batch 1, random weights, int8")
    print()
    print("| variant | params | MACs | model.tflite bytes | per-face p50 ms | p90 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for text, info, _model, times in rows:
        p50, p90 = np.percentile(np.concatenate(times), [50, 90])
        print(f"| `{text}` | {info['params']:,} | {info['macs']:,} | {info['bytes']:,} | {p50:.3f} | {p90:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
