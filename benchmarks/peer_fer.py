"""Our model bundle against the ``fer`` package's mini-Xception, side by side on the same FER2013 faces.

Every model sees the same 48x48 uint8 faces (FER2013 validation by default), one face per call, and each
call is timed from the uint8 face to class probabilities:

* **ours**: the bundle through the device path (:class:`model_latency.DeviceModel`: ``quantize_input`` +
  LiteRT interpreter, batch 1, no detector: the 48x48 faces are the crops).
* **fer (Keras)**: ``fer/data/emotion_model.hdf5`` (Keras 2 HDF5, which Keras 3 loads), called eagerly as
  ``FER`` does with ``use_tflite=False``.
* **fer (TFLite)**: ``fer/data/emotion_model_quantized.tflite`` (weight-only int8, float32 input/output; the
  ``FER`` default), run in the same LiteRT interpreter as ours.

fer's preprocessing, copied from ``fer/fer.py``: ``cv2.resize`` of the grayscale face to 64x64 (its default,
bilinear), ``/255``, ``(x - 0.5) * 2`` (i.e. [-1, 1]); labels 0..6 = angry, disgust, fear, happy, sad,
surprise, neutral (``FER._get_labels``; checked at run time against the data's label order).

Labels are the FER+ crowd majority where ``ferplus.npz`` lies beside the data (faces without a unique
majority left out), FER2013's own with ``--truth fer2013`` (:func:`load_data`, which the other accuracy
benchmarks share).

Prints a markdown table (accuracy, macro-F1, p50/p90 ms per face) and the command. Needs TensorFlow (for
fer's Keras model) and ``fer`` (see benchmarks/README.md for the venv it lives in). Run::

    PYTHONPATH=. nice -n 10 /tmp/fervenv/bin/python benchmarks/peer_fer.py [--model BUNDLE] [--data FILE.npz] [--limit N]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from model_latency import DEFAULT_FACES, DeviceModel

from edge.bundle import FER_LABELS, MODEL_FILE, BundleError, default_bundle_dir
from edge.runtime.classify.interpreter import RuntimeMissing, make_interpreter

log = logging.getLogger(__name__)

FER_INPUT = 64
FER_INSTALL = (
    "python3 -m venv --system-site-packages /tmp/fervenv && "
    "/tmp/fervenv/bin/pip install --no-deps fer==25.10.3 'setuptools<81'; then run with /tmp/fervenv/bin/python"
)
#: Single-face calls timed per model at least (cycling through the faces if there are fewer).
MIN_LATENCY_CALLS = 500


class PeerError(Exception):
    """A model or data set needed for the comparison is missing or unusable."""


@dataclass
class Result:
    """One row of the comparison table."""

    name: str
    runtime: str
    model_bytes: int
    params: int | None
    macs: int | None
    input: str
    n: int
    accuracy: float
    macro_f1: float
    p50_ms: float
    p90_ms: float
    latency_calls: int


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Unweighted mean of per-class F1 over all ``n_classes`` labels, as ``train_export.analysis.evaluate.scores`` reports
    it (a class neither present nor predicted counts 0, so a subset without it scores lower, never higher)."""
    cm = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())


#: What ``load_data``'s labels are: ``auto`` is the FER+ majority where ``ferplus.npz`` lies beside the data
#: (its ``val.npz`` or ``train.npz``), else the archive's own ``y``.
TRUTHS = ("auto", "ferplus", "fer2013")


def load_data(path: Path, limit: int | None, truth: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Faces ``x`` (N x 48 x 48 uint8) and labels ``y`` (FER order) from an ``.npz``.

    With FER+ votes (``truth`` "ferplus", or "auto" where they lie beside the archive) only the faces with a
    FER+ majority are kept and ``y`` is that majority (:func:`train_export.data.ferplus.majority_labels`).
    """
    if not path.is_file():
        raise PeerError(f"data file {path} not found; pass --data FILE.npz with arrays x (N x 48 x 48 uint8) and y")
    with np.load(path) as data:
        if "x" not in data.files or "y" not in data.files:
            raise PeerError(f"{path} must hold arrays 'x' (faces) and 'y' (labels); it has {data.files}")
        x, y = data["x"], data["y"].astype(np.int64)
    if x.ndim != 3 or x.shape[1:] != (48, 48) or x.dtype != np.uint8 or len(x) != len(y):
        raise PeerError(f"{path}: expected x N x 48 x 48 uint8 and y of the same length, got {x.dtype} {x.shape}, {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= len(FER_LABELS)):
        raise PeerError(f"{path}: labels must be 0..{len(FER_LABELS) - 1} in FER order {FER_LABELS}")
    if truth != "fer2013":
        from train_export.data.ferplus import SPLIT_ARRAYS, ferplus_beside, load_votes, majority_labels
        from train_export.data.load import DataError

        votes_file, split = ferplus_beside(path), path.stem
        if votes_file is not None and split in SPLIT_ARRAYS:
            try:
                majority, keep = majority_labels(load_votes(votes_file, split), list(FER_LABELS))
            except DataError as exc:
                raise PeerError(str(exc)) from None
            if len(majority) != len(y):
                raise PeerError(f"{votes_file} has votes for {len(majority)} faces, {path} has {len(y)}")
            x, y = x[keep], majority[keep]
            log.info("labels: the FER+ majority of %s (%d faces)", votes_file, len(y))
        elif truth == "ferplus":
            raise PeerError(f"--truth ferplus needs ferplus.npz beside {path} (and the archive named train.npz or val.npz)")
    if limit:
        x, y = x[:limit], y[:limit]
    return x, y


def add_bundles_data_flags(parser: argparse.ArgumentParser) -> None:
    """``--model`` (repeatable bundle folders), ``--data`` and ``--limit``: the faces several bundles are compared on."""
    parser.add_argument("--model", type=Path, action="append", default=None,
                        help="a bundle folder; repeat to compare (default: edge/models/default)")
    parser.add_argument("--data", type=Path, default=DEFAULT_FACES,
                        help="an .npz with x (N x 48 x 48 uint8) and y (FER order)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N faces")


def add_truth_flag(parser: argparse.ArgumentParser) -> None:
    """``--truth``: which labels score the faces (see :data:`TRUTHS`)."""
    parser.add_argument("--truth", choices=TRUTHS, default="auto",
                        help="labels to score against: the FER+ majority where ferplus.npz is beside --data "
                             "(auto, the default), or FER2013's own (fer2013)")


def evaluate(
    predict: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    latency_calls: int = MIN_LATENCY_CALLS,
    predict_batch: Callable[[np.ndarray], np.ndarray] | None = None,
    warmup: int = 50,
) -> tuple[float, float, np.ndarray]:
    """Accuracy, macro-F1 and per-call latencies (ms) of one model.

    Each face is classified by a timed single-face ``predict`` call (the device's way); timing goes on,
    cycling through the faces, until ``latency_calls`` calls. A model too slow for that on every face (fer's
    eager Keras) passes ``predict_batch`` for the accuracy and is timed on ``latency_calls`` faces only.
    """
    for i in range(min(warmup, len(x))):
        predict(x[i])
    single_pass = predict_batch is None
    calls = max(len(x), latency_calls) if single_pass else latency_calls
    clock = time.perf_counter_ns
    ms = np.empty(calls)
    pred = np.empty(len(x), dtype=np.int64)
    for i in range(calls):
        face = x[i % len(x)]
        t0 = clock()
        probs = predict(face)
        ms[i] = (clock() - t0) / 1e6
        if single_pass and i < len(x):
            pred[i] = int(np.argmax(probs))
    if not single_pass:
        pred = np.argmax(predict_batch(x), axis=1)
    return float(np.mean(pred == y)), macro_f1(y, pred, len(FER_LABELS)), ms


def fer_input(face: np.ndarray) -> np.ndarray:
    """fer's preprocessing of one 48x48 uint8 face: 1 x 64 x 64 x 1 float32 in [-1, 1]."""
    big = cv2.resize(face, (FER_INPUT, FER_INPUT)).astype(np.float32)
    return ((big / 255.0 - 0.5) * 2.0)[None, :, :, None]


def fer_files() -> tuple[Path, Path]:
    """Paths of fer's Keras and TFLite models; checks fer's label order matches the data's."""
    try:
        import fer.fer as fer_module
    except ImportError as exc:
        raise PeerError(f"cannot import fer.fer ({exc}); install it: {FER_INSTALL}") from None
    labels = tuple(fer_module.FER._get_labels()[i] for i in range(len(FER_LABELS)))
    if labels != FER_LABELS:
        raise PeerError(f"fer's label order {labels} differs from FER2013's {FER_LABELS}; update this script")
    data = Path(fer_module.__file__).resolve().parent / "data"
    return data / "emotion_model.hdf5", data / "emotion_model_quantized.tflite"


def run_ours(bundle: Path, x: np.ndarray, y: np.ndarray, threads: int, latency_calls: int) -> Result:
    """Evaluate and time our bundle through the device path."""
    model = DeviceModel(bundle, num_threads=threads)
    if tuple(model.manifest.labels) != FER_LABELS:
        raise PeerError(f"bundle labels {model.manifest.labels} are not the 7 FER classes in order; compare a 7-class bundle")
    acc, f1, ms = evaluate(model.predict, x, y, latency_calls)
    arch = model.manifest.architecture
    return Result(
        name=f"ours: {model.manifest.model_id}", runtime=f"{model.runtime}, {model.manifest.input.dtype}",
        model_bytes=model.model_path.stat().st_size, params=arch.get("params"), macs=arch.get("macs"),
        input=f"{model.size}x{model.size}", n=len(x), accuracy=acc, macro_f1=f1,
        p50_ms=float(np.percentile(ms, 50)), p90_ms=float(np.percentile(ms, 90)), latency_calls=len(ms),
    )


@functools.lru_cache(maxsize=1)
def _fer_arch(hdf5: Path) -> tuple[object, int, int]:
    """fer's Keras model, with params and MACs counted by the same code as ours."""
    import keras

    from train_export.model.spec import count_macs

    model = keras.models.load_model(hdf5, compile=False)
    return model, int(model.count_params()), count_macs(model)


def run_fer_keras(hdf5: Path, x: np.ndarray, y: np.ndarray, latency_calls: int) -> Result:
    """Evaluate fer's Keras model in batches; time it with one eager call per face, as ``FER`` calls it."""
    import tensorflow as tf

    model, params, macs = _fer_arch(hdf5)

    def predict(face: np.ndarray) -> np.ndarray:
        return model(tf.constant(fer_input(face)), training=False).numpy()[0]

    def predict_batch(faces: np.ndarray) -> np.ndarray:
        batch = np.concatenate([fer_input(f) for f in faces])
        return model.predict(batch, batch_size=256, verbose=0)

    acc, f1, ms = evaluate(predict, x, y, latency_calls, predict_batch)
    return Result(
        name="fer 25.10.3: emotion_model.hdf5", runtime=f"TF {tf.__version__} eager, float32",
        model_bytes=hdf5.stat().st_size, params=params, macs=macs, input="64x64", n=len(x), accuracy=acc,
        macro_f1=f1, p50_ms=float(np.percentile(ms, 50)), p90_ms=float(np.percentile(ms, 90)), latency_calls=len(ms),
    )


def run_fer_tflite(tflite: Path, hdf5: Path, x: np.ndarray, y: np.ndarray, threads: int, latency_calls: int) -> Result:
    """Evaluate and time fer's weight-only-int8 TFLite model in our interpreter."""
    interp, runtime = make_interpreter(str(tflite), num_threads=threads)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]

    def predict(face: np.ndarray) -> np.ndarray:
        interp.set_tensor(inp["index"], fer_input(face))
        interp.invoke()
        return interp.get_tensor(out["index"])[0]

    acc, f1, ms = evaluate(predict, x, y, latency_calls)
    _, params, macs = _fer_arch(hdf5)
    return Result(
        name="fer 25.10.3: emotion_model_quantized.tflite", runtime=f"{runtime}, float32 in / int8 weights",
        model_bytes=tflite.stat().st_size, params=params, macs=macs, input="64x64", n=len(x), accuracy=acc,
        macro_f1=f1, p50_ms=float(np.percentile(ms, 50)), p90_ms=float(np.percentile(ms, 90)), latency_calls=len(ms),
    )


def markdown(results: list[Result]) -> str:
    """The comparison as a markdown table."""

    def num(v: int | None) -> str:
        return f"{v:,}" if isinstance(v, int) else "?"

    rows = [
        "| model | runtime | input | file bytes | params | MACs | faces | accuracy | macro-F1 | p50 ms/face | p90 ms/face | timed calls |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r.name} | {r.runtime} | {r.input} | {r.model_bytes:,} | {num(r.params)} | {num(r.macs)} | {r.n} "
            f"| {r.accuracy:.4f} | {r.macro_f1:.4f} | {r.p50_ms:.3f} | {r.p90_ms:.3f} | {r.latency_calls} |"
        )
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=None, help="our bundle folder (default: edge/models/default)")
    p.add_argument("--data", type=Path, default=DEFAULT_FACES, help="an .npz with x (N x 48 x 48 uint8) and y (FER order)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N faces")
    p.add_argument("--threads", type=int, default=1, help="threads for every model (TF intra-op too; default 1)")
    p.add_argument("--latency-n", type=int, default=MIN_LATENCY_CALLS, help=f"timed single-face calls per model, at least {MIN_LATENCY_CALLS}")
    p.add_argument("--fer", choices=("both", "keras", "tflite", "none"), default="both", help="which fer model(s) to run")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    add_truth_flag(p)
    return p


def _bundle_or_none(arg: Path | None) -> Path | None:
    """The bundle to compare, or None when the default one is not there yet (it is made by training)."""
    if arg is not None:
        return arg
    default = default_bundle_dir()
    if (default / MODEL_FILE).is_file():
        return default
    log.warning("no %s in %s yet (the default model is made by training): reporting fer alone", MODEL_FILE, default)
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, print the table; return the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    if args.threads < 1 or (args.limit is not None and args.limit < 1):
        print("error: --threads and --limit must be at least 1", file=sys.stderr)
        return 2
    if args.latency_n < MIN_LATENCY_CALLS:
        print(f"error: --latency-n must be at least {MIN_LATENCY_CALLS} for a stable p50", file=sys.stderr)
        return 2
    results: list[Result] = []
    try:
        x, y = load_data(args.data, args.limit, args.truth)
        bundle = _bundle_or_none(args.model)
        if args.fer != "none":
            hdf5, tflite = fer_files()
            import tensorflow as tf

            # Same thread budget as the interpreters, so the Keras row is not a 2-core vs 1-core contest.
            tf.config.threading.set_intra_op_parallelism_threads(args.threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        if bundle is not None:
            results.append(run_ours(bundle, x, y, args.threads, args.latency_n))
        if args.fer in ("both", "keras"):
            results.append(run_fer_keras(hdf5, x, y, args.latency_n))
        if args.fer in ("both", "tflite"):
            results.append(run_fer_tflite(tflite, hdf5, x, y, args.threads, args.latency_n))
    except (PeerError, BundleError, RuntimeMissing, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not results:
        print("error: nothing to compare (no bundle and --fer none)", file=sys.stderr)
        return 2
    print(f"\nData: {args.data} ({len(x)} faces). Machine: {platform.machine()}, Python {platform.python_version()}, "
          f"{args.threads} thread(s) per model, one face per call (latency over >= {args.latency_n} calls).\n")
    print(markdown(results))
    print(f"\nCommand: {shlex.join([Path(sys.executable).as_posix(), *sys.argv])}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
