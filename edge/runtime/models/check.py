"""Check that a model bundle really runs here: manifest vs interpreter tensors, plus a smoke inference.

:func:`edge.bundle.load_bundle` checks the files (manifest schema, size, sha256); this module loads the
model into a real TFLite interpreter and checks what the file says about itself against the manifest (input
shape, dtype and quantization, output size = number of labels), then classifies a synthetic face and checks
that the output is a probability distribution. The device runs it before swapping in a pushed model, and
``python -m edge verify-bundle DIR`` runs it for the SSH push.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.bundle import BundleError, Manifest, Quantization, load_bundle
from edge.preprocess import quantize_input
from edge.runtime.classify.interpreter import make_interpreter

#: Dequantized int8 softmax outputs sum to 1 only up to rounding (up to ~1/256 per class).
_SUM_TOLERANCE = 0.1


def _quant_matches(detail: dict, spec: Quantization | None) -> bool:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if spec is None:
        return True
    return abs(float(scale) - spec.scale) <= 1e-6 * max(1.0, spec.scale) and int(zero_point) == spec.zero_point


def _smoke_faces(size: int) -> np.ndarray:
    # A flat mid-grey face and a horizontal gradient: enough to exercise every op without shipping images.
    flat = np.full((size, size), 128, np.uint8)
    ramp = np.tile(np.linspace(0, 255, size, dtype=np.float32), (size, 1)).astype(np.uint8)
    return np.stack([flat, ramp])


def check_bundle(bundle_dir: Path | str, num_threads: int = 1, runtime: str | None = None) -> tuple[Manifest, str]:
    """Load a bundle into a real interpreter, compare it with its manifest and run a smoke inference.

    Returns the manifest and the name of the runtime used. Raises :class:`edge.bundle.BundleError` with a
    one-line reason on any mismatch or failure.
    """
    manifest, model_path = load_bundle(bundle_dir)
    try:
        interp, runtime_name = make_interpreter(str(model_path), num_threads=num_threads, prefer=runtime)
    except ValueError as exc:
        raise BundleError(f"model does not load: {exc}") from None
    inputs, outputs = interp.get_input_details(), interp.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise BundleError(f"model has {len(inputs)} inputs and {len(outputs)} outputs; expected one of each")
    inp, out = inputs[0], outputs[0]
    in_shape = [int(v) for v in inp["shape"]]
    if in_shape[1:] != manifest.input.shape[1:]:
        raise BundleError(f"model input shape {in_shape} differs from the manifest's {manifest.input.shape}")
    if np.dtype(inp["dtype"]).name != manifest.input.dtype:
        raise BundleError(f"model input dtype {np.dtype(inp['dtype']).name} differs from the manifest's {manifest.input.dtype}")
    if not _quant_matches(inp, manifest.input.quantization):
        raise BundleError(f"model input quantization {inp.get('quantization')} differs from the manifest's")
    n_out = int(out["shape"][-1])
    if n_out != len(manifest.labels):
        raise BundleError(f"model has {n_out} outputs but the manifest lists {len(manifest.labels)} labels")
    if np.dtype(out["dtype"]).name != manifest.output.dtype:
        raise BundleError(f"model output dtype {np.dtype(out['dtype']).name} differs from the manifest's {manifest.output.dtype}")
    if not _quant_matches(out, manifest.output.quantization):
        raise BundleError(f"model output quantization {out.get('quantization')} differs from the manifest's")

    prep = manifest.prep()
    for face in _smoke_faces(prep.input_size):
        if manifest.input.quantization is not None:
            q = manifest.input.quantization
            x = quantize_input(face[None], q.scale, q.zero_point, np.dtype(manifest.input.dtype), prep)
        else:
            x = face[None].astype(np.float32) * np.float32(prep.scale) + np.float32(prep.offset)
        try:
            interp.set_tensor(inp["index"], x[..., None])
            interp.invoke()
            y = interp.get_tensor(out["index"]).astype(np.float32).reshape(-1)
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"smoke inference failed: {exc}") from None
        if manifest.output.quantization is not None:
            q = manifest.output.quantization
            y = (y - q.zero_point) * q.scale
        if not np.all(np.isfinite(y)) or np.any(y < -1e-3) or abs(float(y.sum()) - 1.0) > _SUM_TOLERANCE:
            raise BundleError(f"smoke inference gave no probability distribution (sum {float(y.sum()):.3f})")
    return manifest, runtime_name
