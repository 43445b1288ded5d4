"""Run ``.tflite`` emotion models on faces through the device's own classifier.

Every TFLite number that train_export reports comes from :class:`edge.runtime.classify.classifier.Classifier` (LiteRT
interpreter, :func:`edge.preprocess.quantize_input`, the same dequantisation), so an accuracy measured here is
the accuracy of the code that runs on the Pi, not of a re-implementation. Flatbuffers that are not yet a
bundle (the candidate int8 and float models during export) are wrapped in a temporary bundle first.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from edge.preprocess import Preprocessing
from edge.runtime.classify.classifier import Classifier
from train_export.export.bundle_writer import write_bundle


def load_classifier(bundle_dir: Path | str, threads: int = 1) -> Classifier:
    """The device classifier of a bundle folder (manifest, sha256 and tensors validated)."""
    return Classifier(bundle_dir, threads=threads)


def classifier_from_bytes(
    model_bytes: bytes, labels: list[str], prep: Preprocessing, model_id: str = "unpackaged", threads: int = 1
) -> Classifier:
    """The device classifier of a TFLite flatbuffer that is not a bundle yet (int8 or float32)."""
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        write_bundle(tmp, model_bytes, labels, prep, model_id)
        # The interpreter has read/mapped the file by now; removing the folder does not affect it.
        return Classifier(tmp, threads=threads)


def classifier_from_file(model_path: Path | str, labels: list[str], prep: Preprocessing | None = None,
                         threads: int = 1) -> Classifier:
    """The device classifier of a bare ``.tflite`` file, with labels and preprocessing from the caller (default:
    the standard preprocessing at the model's own input size)."""
    model_bytes = Path(model_path).read_bytes()
    if prep is None:
        from train_export.export.bundle_writer import tflite_io

        prep = Preprocessing(input_size=int(tflite_io(model_bytes)[0]["shape"][1]))
    return classifier_from_bytes(model_bytes, labels, prep, model_id=Path(model_path).stem, threads=threads)
