"""Workstation side: train, evaluate, quantize and package emotion models (needs the [train] extra)."""

import os

# Keras picks its backend at import: prefer TensorFlow when present, as export needs it anyway; JAX or
# PyTorch train too (set KERAS_BACKEND), e.g. on a GPU machine without TensorFlow.
if "KERAS_BACKEND" not in os.environ:
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        for _name in ("jax", "torch"):
            if importlib.util.find_spec(_name) is not None:
                os.environ["KERAS_BACKEND"] = _name
                break
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
