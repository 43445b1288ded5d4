"""Write a model bundle (``model.tflite`` + ``manifest.json``) in the format that :mod:`edge.bundle` owns."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from edge.bundle import (
    FORMAT_VERSION,
    MODEL_FILE,
    SIGNATURE_FILE,
    Manifest,
    validate_manifest,
    write_manifest,
)
from edge.preprocess import Preprocessing


def _tensor_spec(detail: dict[str, Any]) -> dict[str, Any]:
    dtype = np.dtype(detail["dtype"]).name
    scale, zero_point = detail.get("quantization", (0.0, 0))
    spec: dict[str, Any] = {"shape": [int(v) for v in detail["shape"]], "dtype": dtype}
    spec["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)} if dtype != "float32" else None
    return spec


def tflite_io(model_bytes: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Input and output tensor specs read from a TFLite flatbuffer with the LiteRT interpreter."""
    from edge.runtime.classify.interpreter import make_interpreter

    interp, _ = make_interpreter(model_content=model_bytes, num_threads=1)
    return _tensor_spec(interp.get_input_details()[0]), _tensor_spec(interp.get_output_details()[0])


def write_bundle(
    out_dir: Path | str,
    model_bytes: bytes,
    labels: list[str],
    prep: Preprocessing,
    model_id: str,
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    architecture: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
) -> Manifest:
    """Write ``model.tflite`` and a validated ``manifest.json`` into ``out_dir``; return the manifest.

    The manifest is validated by :func:`edge.bundle.validate_manifest` before anything is written, so a
    bundle that ``edge`` would refuse is never produced. ``calibration`` is the manifest's block of that name
    (:class:`edge.bundle.Calibration`), which the device applies to every face.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inp, out = tflite_io(model_bytes)
    inp["normalization"] = {"scale": prep.scale, "offset": prep.offset}
    out["activation"] = "softmax"
    manifest = {
        "format_version": FORMAT_VERSION,
        "model_id": model_id,
        "labels": list(labels),
        "input": inp,
        "output": out,
        "preprocessing": prep.to_dict(),
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "model_bytes": len(model_bytes),
        "metrics": metrics or {},
        "training": training or {},
        "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "architecture": architecture or {},
    }
    if calibration is not None:
        manifest["calibration"] = calibration
    validate_manifest(manifest)
    # A signature from an earlier export into this folder covers another manifest: it would never verify.
    (out_dir / SIGNATURE_FILE).unlink(missing_ok=True)
    tmp = out_dir / (MODEL_FILE + ".tmp")
    tmp.write_bytes(model_bytes)
    os.replace(tmp, out_dir / MODEL_FILE)
    return write_manifest(out_dir, manifest)
