"""Run a ``.tflite`` emotion model on uint8 faces exactly as the device does.

The interpreter comes from :func:`edge.interpreter.make_interpreter` (LiteRT first) and integer inputs are
made by :func:`edge.preprocess.quantize_input`, so an accuracy measured here is the accuracy of the device's
code path, not of a re-implementation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge.bundle import Manifest, load_bundle
from edge.interpreter import make_interpreter
from edge.preprocess import Preprocessing, normalize, quantize_input

log = logging.getLogger(__name__)


class LiteRTModel:
    """A TFLite classifier (int8 or float32 input/output) fed with square uint8 grayscale faces.

    Args:
        model_path: A ``.tflite`` file (or give ``model_content``).
        model_content: The flatbuffer bytes.
        prep: The preprocessing the model was trained with (its normalisation is applied to the faces).
        num_threads: Interpreter threads.
    """

    def __init__(
        self,
        model_path: Path | str | None = None,
        model_content: bytes | None = None,
        prep: Preprocessing | None = None,
        num_threads: int = 1,
    ):
        self.prep = prep or Preprocessing()
        self.interp, self.runtime = make_interpreter(
            model_path=str(model_path) if model_path else None, model_content=model_content, num_threads=num_threads
        )
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        self.input_dtype = np.dtype(self.inp["dtype"])
        self.n_classes = int(self.out["shape"][-1])
        size = int(self.inp["shape"][1])
        if size != self.prep.input_size:
            raise ValueError(f"model input is {size}x{size} but the preprocessing says {self.prep.input_size}")

    @classmethod
    def from_bundle(cls, bundle_dir: Path | str, num_threads: int = 1) -> tuple[LiteRTModel, Manifest]:
        """Load a validated bundle (manifest, sha256) and return the model and its manifest."""
        manifest, model_path = load_bundle(bundle_dir)
        return cls(model_path, prep=manifest.prep(), num_threads=num_threads), manifest

    @property
    def kind(self) -> str:
        """``int8``, ``uint8`` or ``float32``: the model's input type."""
        return self.input_dtype.name

    def _input(self, face: np.ndarray) -> np.ndarray:
        if self.input_dtype == np.float32:
            return normalize(face[None], self.prep)[..., None]
        scale, zero_point = self.inp["quantization"]
        return quantize_input(face[None], scale, zero_point, self.input_dtype, self.prep)[..., None]

    def predict(self, faces: np.ndarray) -> np.ndarray:
        """Class probabilities (N x classes float32) for N x S x S uint8 faces, one invoke per face as on the device."""
        faces = np.asarray(faces)
        if faces.ndim != 3 or faces.shape[1:] != (self.prep.input_size, self.prep.input_size):
            raise ValueError(f"expected N x {self.prep.input_size} x {self.prep.input_size} faces, got {faces.shape}")
        probs = np.empty((len(faces), self.n_classes), np.float32)
        scale, zero_point = self.out["quantization"]
        for i, face in enumerate(faces):
            self.interp.set_tensor(self.inp["index"], self._input(face))
            self.interp.invoke()
            raw = self.interp.get_tensor(self.out["index"])[0]
            probs[i] = raw if raw.dtype == np.float32 else (raw.astype(np.float32) - zero_point) * scale
        return probs
