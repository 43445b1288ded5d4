"""Per-face latency of a model bundle in the device's TFLite runtime (LiteRT), batch 1.

Times what the daemon does for each detected face once it has the 48x48 uint8 crop, with the daemon's own
:class:`edge.runtime.classify.classifier.Classifier`: the integer input (its table built from :func:`edge.preprocess.quantize_input`),
``invoke()`` in its interpreter, and the dequantized output. After a warm-up, ``--n`` timed calls
on real-looking faces (FER2013 validation faces when the file is there, else synthetic faces) give p50/p90/p99
in milliseconds, for the whole call and for ``invoke()`` alone. ``--flip-tta`` also times flip test-time
augmentation (the face and its mirror image: two invocations per face, probabilities averaged).

Run (no TensorFlow needed; works on the Pi)::

    PYTHONPATH=. nice -n 10 python3 benchmarks/model_latency.py --model edge/models/default [--threads 1] [--n 1000] [--flip-tta]
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.bundle import MODEL_FILE, BundleError, Manifest, default_bundle_dir
from edge.runtime.classify.classifier import Classifier
from edge.runtime.classify.interpreter import RuntimeMissing
from train_export.cli import positive_int

log = logging.getLogger(__name__)

#: FER2013 validation faces beside the repository (never copied into it).
DEFAULT_FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013" / "val.npz"


class DeviceModel:
    """A bundle run the way the device runs it: uint8 face -> integer input -> LiteRT -> probabilities.

    Args:
        bundle_dir: A bundle folder (``model.tflite`` + ``manifest.json``), validated on load.
        num_threads: Interpreter threads (the Pi daemon uses 1 by default).
    """

    def __init__(self, bundle_dir: Path | str, num_threads: int = 1):
        # The device's own classifier: its bundle and tensor checks, smoke run, interpreter, and its quantization
        # and dequantization, so what is timed is what the device computes; only the batch-1 call is unrolled
        # here, to time invoke() apart from the rest.
        self.clf = Classifier(bundle_dir, threads=num_threads)
        self.manifest: Manifest = self.clf.manifest
        self.model_path = self.clf.bundle_dir / MODEL_FILE
        self.prep = self.clf.prep
        self.runtime = self.clf.runtime
        self.interp, self._inp, self._out = self.clf._interp, self.clf._in, self.clf._out
        if int(self._inp["shape"][0]) != 1:
            raise BundleError(f"model input batch is {self._inp['shape'][0]}; this benchmark times batch-1 models")
        self.size = self.prep.input_size

    def input_tensor(self, face: np.ndarray) -> np.ndarray:
        """The input tensor (1 x S x S x 1) for one S x S uint8 face."""
        return self.clf._quantize(face[None])

    def invoke(self, tensor: np.ndarray) -> np.ndarray:
        """Run one prepared input tensor; return the raw output row."""
        self.interp.set_tensor(self._inp["index"], tensor)
        self.interp.invoke()
        return self.interp.get_tensor(self._out["index"])[0]

    def predict(self, face: np.ndarray) -> np.ndarray:
        """Class probabilities (labels in manifest order) for one S x S uint8 face."""
        return self.clf._dequantize(self.invoke(self.input_tensor(face))[None])[0]

    def predict_flip(self, face: np.ndarray) -> np.ndarray:
        """Flip test-time augmentation: mean probabilities of the face and its mirror image."""
        return 0.5 * (self.predict(face) + self.predict(np.ascontiguousarray(face[:, ::-1])))


def load_faces(path: Path | None, size: int, n: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """Up to ``n`` real faces from an ``.npz`` (``x``: N x S x S uint8), or synthetic ones if there is none.

    Returns the faces and a description of where they came from.
    """
    if path is not None and path.is_file():
        with np.load(path) as data:
            if "x" not in data.files:
                raise ValueError(f"{path} has no 'x' array; expected an .npz of N x {size} x {size} uint8 faces")
            x = data["x"][:n]
        if x.ndim != 3 or x.shape[1:] != (size, size) or x.dtype != np.uint8:
            raise ValueError(f"{path}: 'x' is {x.dtype} {x.shape}, expected N x {size} x {size} uint8")
        return x, f"{len(x)} faces from {path}"
    # No data here (e.g. on the Pi): smooth random blobs with a face-like oval, so the input is not constant.
    import cv2

    rng = np.random.default_rng(seed)
    faces = []
    for _ in range(min(n, 256)):
        img = cv2.GaussianBlur(rng.integers(40, 215, (size, size), dtype=np.uint8), (0, 0), 2.0)
        cv2.ellipse(img, (size // 2, size // 2), (size // 3, size * 2 // 5), 0, 0, 360, int(rng.integers(90, 200)), 2)
        faces.append(img)
    return np.stack(faces), f"{len(faces)} synthetic faces ({path} not found)"


@dataclass
class Timing:
    """Per-call latencies in milliseconds."""

    ms: np.ndarray

    def summary(self) -> str:
        """``p50 / p90 / p99`` as text."""
        p50, p90, p99 = np.percentile(self.ms, [50, 90, 99])
        return f"p50 {p50:.3f} ms  p90 {p90:.3f} ms  p99 {p99:.3f} ms  (n={len(self.ms)})"


def time_calls(fn, faces: np.ndarray, n: int, warmup: int) -> Timing:
    """Call ``fn(face)`` ``warmup`` times untimed, then ``n`` times timed, cycling through ``faces``."""
    for i in range(warmup):
        fn(faces[i % len(faces)])
    ms = np.empty(n)
    clock = time.perf_counter_ns
    for i in range(n):
        face = faces[i % len(faces)]
        t0 = clock()
        fn(face)
        ms[i] = (clock() - t0) / 1e6
    return Timing(ms)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=default_bundle_dir(), help="bundle folder (default: the shipped one)")
    p.add_argument("--threads", type=positive_int, default=1, help="interpreter threads (default 1)")
    p.add_argument("--n", type=positive_int, default=1000, help="timed calls (default 1000)")
    p.add_argument("--warmup", type=int, default=100, help="untimed calls first (default 100)")
    p.add_argument("--data", type=Path, default=DEFAULT_FACES, help="an .npz of uint8 faces to feed (default: FER2013 val)")
    p.add_argument("--flip-tta", action="store_true", help="also time flip test-time augmentation (2 invocations per face)")
    return p


def describe_arch(arch: dict) -> str:
    """Name, params and MACs from a manifest's ``architecture`` block, as one line."""
    if not arch:
        return "not recorded in the manifest"
    params, macs = arch.get("params"), arch.get("macs")
    params_txt = f"{params:,}" if isinstance(params, int) else "?"
    macs_txt = f"{macs:,}" if isinstance(macs, int) else "?"
    return f"{arch.get('name', '?')}  params {params_txt}  MACs {macs_txt}"


def _runtime_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version({"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}.get(name, name))
    except Exception:  # the version is decoration; never fail the benchmark on it
        return "?"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the numbers; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        model = DeviceModel(args.model, num_threads=args.threads)
        faces, source = load_faces(args.data, model.size, max(args.n, 1000))
    except (BundleError, RuntimeMissing, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    arch = model.manifest.architecture
    print(f"model      {model.manifest.model_id}  ({args.model})")
    print(f"size       {model.model_path.stat().st_size:,} bytes  input {model.manifest.input.dtype} "
          f"{model.manifest.input.shape}  output {model.manifest.output.dtype}")
    print(f"arch       {describe_arch(arch)}")
    print(f"runtime    {model.runtime} {_runtime_version(model.runtime)}, {args.threads} thread(s), batch 1")
    print(f"machine    {platform.machine()} {platform.processor() or ''} python {platform.python_version()}".rstrip())
    print(f"input      {source}")
    tensors = [model.input_tensor(f) for f in faces[: min(len(faces), 256)]]
    invoke = time_calls(model.invoke, np.stack(tensors), args.n, args.warmup)
    full = time_calls(model.predict, faces, args.n, args.warmup)
    print(f"invoke()   {invoke.summary()}")
    print(f"per face   {full.summary()}   [quantize + invoke + dequantize]")
    if args.flip_tta:
        flip = time_calls(model.predict_flip, faces, args.n, args.warmup)
        print(f"flip TTA   {flip.summary()}   [2 invocations per face]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
