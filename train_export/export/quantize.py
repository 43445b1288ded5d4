"""Quantize a trained Keras model to full-integer int8 TFLite (and float32 for comparison).

``TFLiteConverter.from_keras_model`` is fragile on Keras 3, so the model is first exported as a SavedModel
with ``model.export`` and converted ``from_saved_model``. This module needs TensorFlow.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _saved_model(model, tmp: Path) -> str:
    path = str(tmp / "saved_model")
    model.export(path, format="tf_saved_model", verbose=False)
    return path


def convert_float(model) -> bytes:
    """float32 TFLite flatbuffer of a Keras model."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        converter = tf.lite.TFLiteConverter.from_saved_model(_saved_model(model, Path(tmp)))
        return converter.convert()


def convert_int8(model, representative: np.ndarray) -> bytes:
    """Full-integer int8 TFLite (int8 input and output) of a Keras model.

    Args:
        model: Keras model taking float faces N x S x S x 1.
        representative: Float model inputs (already normalised), a few hundred drawn from the training data.
    """
    import tensorflow as tf

    def gen() -> Iterator[list[np.ndarray]]:
        for face in representative:
            yield [face[None].astype(np.float32)]

    with tempfile.TemporaryDirectory() as tmp:
        converter = tf.lite.TFLiteConverter.from_saved_model(_saved_model(model, Path(tmp)))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = gen
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        return converter.convert()
