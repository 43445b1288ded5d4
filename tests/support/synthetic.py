"""Learnable synthetic faces for the training tests: each class is a bright band at its own height over noise."""

from __future__ import annotations

import numpy as np

from edge.bundle import FER_LABELS

LABELS = ["angry", "happy", "sad", "neutral"]  # a subset: exercises the id remapping as well


def synthetic_faces(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Faces with a bright band in a class-specific quarter of the height (flip-invariant, like emotions);
    ``y`` in FER ids of :data:`LABELS`."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k, name in enumerate(LABELS):
        for _ in range(n_per_class):
            face = rng.integers(40, 120, (48, 48)).astype(np.uint8)
            y0, x0 = 2 + 12 * k + rng.integers(0, 3), rng.integers(0, 12)
            face[y0 : y0 + 8, x0 : x0 + 24 + rng.integers(0, 12)] = rng.integers(200, 256)
            xs.append(face)
            ys.append(FER_LABELS.index(name))
    return np.stack(xs), np.array(ys)
