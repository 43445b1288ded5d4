"""Precision policy of a run: mixed float16 on a GPU, float32 or bfloat16 on a CPU, and what a resume may change."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import keras

from train_export.hparams import HParams
from train_export.model.spec import rebuilt_in_policy

log = logging.getLogger(__name__)


def has_gpu() -> bool:
    """Whether the active Keras backend sees a GPU."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return bool(tf.config.list_physical_devices("GPU"))
        if backend == "jax":
            import jax

            return any(d.platform == "gpu" for d in jax.devices())
        if backend == "torch":
            import torch

            return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - a broken accelerator stack means CPU
        return False
    return False


def training_policy(mixed_precision: str | bool, gpu: bool) -> str:
    """The Keras dtype policy a run trains under (see :attr:`HParams.mixed_precision`)."""
    if mixed_precision in ("bfloat16", "float16"):
        return f"mixed_{mixed_precision}"
    return "mixed_float16" if mixed_precision and gpu else "float32"


def check_resume_policy(run_dir: Path, policy: str) -> None:
    """Refuse to resume a run across the mixed_float16 boundary, where its optimizer state would be lost.

    Under mixed_float16 Keras wraps the optimizer in a loss-scaling one with other variables; a backup written
    on one side of that boundary restores on the other without the optimizer's state (its step count, so the
    learning-rate schedule starts over, and Adam's moments), with a mere warning. float32 and mixed_bfloat16
    share one optimizer. Runs from before ``model.json`` recorded the policy are not checked.
    """
    try:
        before = json.loads((run_dir / "model.json").read_text(encoding="utf-8")).get("policy")
    except (OSError, ValueError, AttributeError):
        return
    if before and (before == "mixed_float16") != (policy == "mixed_float16"):
        raise ValueError(f"{run_dir} trained under {before} and would resume under {policy}, which loses its "
                         "optimizer state; resume it with the same --mixed-precision on the same kind of machine")


def float32_twin(core: keras.Model, hp: HParams) -> keras.Model:
    """``core`` itself when it computes in float32, else a float32 copy with its weights.

    A model saved under a mixed policy keeps it: loaded for export, evaluation or as a teacher, it would run
    in float16/bfloat16 on a CPU, slowly and less exactly. The weights of a mixed model are float32 already.
    """
    return core if core.dtype_policy.name == "float32" else rebuilt_in_policy(core, hp, "float32")
