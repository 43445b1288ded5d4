"""Weight averaging ("model soup") of models that share an architecture and a starting point.

Two fine-tunings of one model tend to lie in one basin of the loss, so the weighted mean of their weights is a
working model that often keeps what each learnt (Wortsman et al., "Model soups", ICML 2022; Wortsman et al.,
"Robust fine-tuning of zero-shot models" (WiSE-FT), CVPR 2022). Here it blends, for example, a student distilled
for clean accuracy with one trained for camera-like faces. Models of other architectures, or trained from other
initialisations, give a soup that is no model at all: score every soup before using it.

:func:`make_soup` writes a run-like folder (``best.keras``, the first model's ``hparams.json`` so the labels and
architecture travel on, and ``soup.json`` with the recipe), which ``evaluate``, ``export`` and
``train --init-weights`` take like any run's ``best.keras``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def check_coefficients(n_models: int, coefficients: list[float]) -> None:
    """Raise ValueError unless there are two or more models, one finite coefficient >= 0 each, summing to 1."""
    if n_models < 2 or len(coefficients) != n_models:
        raise ValueError(f"a soup needs two or more models and one coefficient each, got {n_models} models "
                         f"and {len(coefficients)} coefficients")
    if not all(math.isfinite(c) and c >= 0 for c in coefficients) or abs(sum(coefficients) - 1.0) > 1e-6:
        raise ValueError(f"soup coefficients must be >= 0 and sum to 1, got {coefficients}")


def soup_weights(weight_sets: list[list[np.ndarray]], coefficients: list[float]) -> list[np.ndarray]:
    """``sum(c_i * weights_i)`` tensor by tensor; the coefficients must be >= 0 and sum to 1.

    Raises:
        ValueError: the coefficients do not fit, or the models' weights differ in number or shape.
    """
    check_coefficients(len(weight_sets), coefficients)
    first = weight_sets[0]
    for i, weights in enumerate(weight_sets[1:], start=2):
        shapes = [w.shape for w in weights]
        if shapes != [w.shape for w in first]:
            raise ValueError(f"model {i} has other weights than model 1 ({len(shapes)} tensors against {len(first)}, "
                             "or other shapes): a soup needs one architecture")
    return [sum(c * ws[k].astype(np.float64) for c, ws in zip(coefficients, weight_sets, strict=True)).astype(first[k].dtype)
            for k in range(len(first))]


def make_soup(models: list[Path | str], coefficients: list[float] | None, out_dir: Path | str) -> Path:
    """Average ``models`` (``.keras`` files) with ``coefficients`` (default: equal) into ``out_dir/best.keras``.

    Returns the path of the written model.

    Raises:
        ValueError: a model is missing or unloadable, or the models cannot be averaged.
    """
    from train_export.model.spec import load_trained

    paths = [Path(m) for m in models]
    if coefficients is None:
        coefficients = [1.0 / len(paths)] * len(paths)
    check_coefficients(len(paths), coefficients)
    out_dir = Path(out_dir)
    out = out_dir / "best.keras"
    if any(out.resolve() == p.resolve() for p in paths):
        raise ValueError(f"--out {out_dir} would overwrite the input model {out}; write the soup to another folder")
    loaded = [load_trained(path, "model") for path in paths]
    base = loaded[0]
    base.set_weights(soup_weights([m.get_weights() for m in loaded], coefficients))
    out_dir.mkdir(parents=True, exist_ok=True)
    base.save(out)
    hparams = paths[0].parent / "hparams.json"
    if hparams.is_file():
        shutil.copyfile(hparams, out_dir / "hparams.json")
    recipe = {"models": [str(p) for p in paths], "coefficients": coefficients}
    (out_dir / "soup.json").write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
    log.info("soup of %d models (%s) written to %s", len(paths), ", ".join(f"{c:g}" for c in coefficients), out)
    return out
