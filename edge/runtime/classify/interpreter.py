"""Create a TFLite interpreter from whichever runtime is installed, preferring the fastest.

Order: ``ai_edge_litert`` (LiteRT, XNNPACK for int8), then ``tflite_runtime`` (no XNNPACK for int8, about
17x slower, needs numpy<2). ``tensorflow.lite`` is deliberately not a candidate: edge never imports TensorFlow
(it is not installed on a Pi, and a workstation that has it has LiteRT too).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from edge.runtime.native import quiet_native_stderr

log = logging.getLogger(__name__)

RUNTIMES = (
    ("ai_edge_litert", "ai_edge_litert.interpreter"),
    ("tflite_runtime", "tflite_runtime.interpreter"),
)


class RuntimeMissing(Exception):
    """No TFLite runtime could be imported."""


def make_interpreter(
    model_path: str | None = None, model_content: bytes | None = None, num_threads: int = 1, prefer: str | None = None
) -> tuple[Any, str]:
    """Return ``(allocated interpreter, runtime name)`` for a model file or flatbuffer bytes.

    Args:
        model_path: Path of a ``.tflite`` file.
        model_content: The flatbuffer itself (instead of a path).
        num_threads: Interpreter threads.
        prefer: Name of one runtime in :data:`RUNTIMES` to use, or None for the first that imports.
    """
    errors = []
    for name, module in RUNTIMES:
        if prefer and name != prefer:
            continue
        try:
            mod = importlib.import_module(module)
        except Exception as exc:  # ImportError, or a runtime broken by its numpy (tflite_runtime)
            errors.append(f"{name}: {exc.__class__.__name__}")
            continue
        try:
            # allocate_tensors() prints LiteRT's "Created TensorFlow Lite XNNPACK delegate" line on fd 2.
            with quiet_native_stderr():
                interp = mod.Interpreter(model_path=model_path, model_content=model_content, num_threads=num_threads)
                interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ValueError(f"{name} cannot load the model ({exc}); the file is corrupt or not a TFLite model") from None
        return interp, name
    raise RuntimeMissing(
        "no TFLite runtime found (" + ", ".join(errors) + "); install one with: pip install ai-edge-litert "
        "(wheels exist for 64-bit Linux only: on a Raspberry Pi that means the 64-bit Raspberry Pi OS, aarch64)"
    )
