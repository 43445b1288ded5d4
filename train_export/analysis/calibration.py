"""Calibration of a model's probabilities: expected calibration error, and the temperature that fixes it.

The bundle stores the fitted temperature and the device applies it (:mod:`edge.runtime.classify.calibration`):
these functions only measure and fit, on the workstation.
"""

from __future__ import annotations

import numpy as np

from edge.runtime.classify.calibration import temperature_scale

#: Equal-width bins of the top-1 confidence, as the project reports the ECE.
ECE_BINS = 15
#: The temperatures searched (log-spaced), then refined around the best by golden-section search.
_T_RANGE = (0.05, 20.0)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the face-weighted mean |accuracy - mean confidence| over ``bins`` equal-width bins of top-1 confidence."""
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) == 0:
        return 0.0
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(y)).astype(np.float64)
    # Bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 cannot occur for a softmax.
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    n = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, correct, bins) - np.bincount(which, conf, bins))
    return float(gap.sum() / n.sum())


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels (probabilities clipped at 1e-12)."""
    p = np.asarray(probs, dtype=np.float64)[np.arange(len(y)), np.asarray(y)]
    return float(-np.log(np.clip(p, 1e-12, 1.0)).mean())


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimises the NLL of ``y`` under ``temperature_scale(probs, T)`` (Guo et al. 2017).

    A coarse log-spaced search, then a golden-section search on log T around the best: the NLL is smooth and
    has one minimum in T, and this needs no optimiser library.
    """
    if len(probs) == 0:
        raise ValueError("no faces to fit a temperature on")
    lo, hi = np.log(_T_RANGE[0]), np.log(_T_RANGE[1])
    grid = np.linspace(lo, hi, 61)
    losses = [nll(temperature_scale(probs, float(np.exp(t))), y) for t in grid]
    i = int(np.argmin(losses))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if nll(temperature_scale(probs, float(np.exp(c))), y) < nll(temperature_scale(probs, float(np.exp(d))), y):
            b = d
        else:
            a = c
    return float(np.exp((a + b) / 2))


def crossfit_ece(probs: np.ndarray, y: np.ndarray, folds: int = 2, seed: int = 0) -> float:
    """ECE of temperatures fitted on other faces: each fold is scaled by a T fitted on the remaining folds.

    The honest counterpart of the ECE after calibration when the temperature is fitted on the same faces it is
    scored on (the shipped temperature is fitted on all of them).
    """
    order = np.random.default_rng(seed).permutation(len(y))
    parts = np.array_split(order, folds)
    scaled = np.empty_like(np.asarray(probs, dtype=np.float64))
    for k, part in enumerate(parts):
        rest = np.concatenate([p for j, p in enumerate(parts) if j != k])
        scaled[part] = temperature_scale(probs[part], fit_temperature(probs[rest], y[rest]))
    return expected_calibration_error(scaled, y)


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per non-empty confidence bin: its range, faces, mean confidence and accuracy (a reliability diagram's data)."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y)
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        m = which == b
        if m.any():
            rows.append({"lo": b / bins, "hi": (b + 1) / bins, "n": int(m.sum()),
                         "confidence": float(conf[m].mean()), "accuracy": float(correct[m].mean())})
    return rows
