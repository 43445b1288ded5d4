"""Build a small real int8 TFLite bundle for tests (untrained weights: behaviour, not accuracy)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.bundle import FER_LABELS
from edge.preprocess import Preprocessing, normalize


def make_tiny_bundle(out_dir: Path, labels: list[str] | None = None, seed: int = 0) -> Path:
    """Write an int8 bundle of a width-0.5 mini-Xception with random weights into ``out_dir``."""
    pytest.importorskip("tensorflow")
    import keras

    from train_export.export.bundle_writer import write_bundle
    from train_export.export.quantize import convert_int8
    from train_export.model.spec import build_model, describe

    labels = list(labels or FER_LABELS)
    keras.utils.set_random_seed(seed)
    model = build_model("mini_xception", 48, len(labels), width=0.5)
    rng = np.random.default_rng(seed)
    rep = normalize(rng.integers(0, 256, (32, 48, 48), dtype=np.uint8))[..., None]
    write_bundle(
        out_dir,
        convert_int8(model, rep),
        labels,
        Preprocessing(),
        model_id=f"tiny-test-{seed}",
        metrics={"note": "untrained test model"},
        architecture=describe(model),
    )
    return Path(out_dir)


def with_manifest(bundle: Path, dst: Path, **fields: object) -> Path:
    """A copy of ``bundle`` in ``dst`` whose manifest has ``fields`` set at its top level (how a runtime reads a
    block, or refuses it)."""
    shutil.copytree(bundle, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest.update(fields)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst
