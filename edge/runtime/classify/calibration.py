"""Temperature scaling of class probabilities: the calibration a model bundle carries and the device applies.

A model's softmax probabilities are often over- or under-confident: of the faces it calls "happy, 0.6", far more
or fewer than 60 % are happy. Dividing the logits by one temperature ``T`` fitted on held-out faces fixes most of
that (Guo et al. 2017) without changing which class wins. The device only has the (dequantized) probabilities,
and ``softmax(log(p) / T)`` is ``p ** (1 / T)`` renormalised, so it needs no logits: a class at probability 0
stays at 0.
"""

from __future__ import annotations

import math

import numpy as np


def temperature_scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / temperature)`` row by row (N x C, float64); T > 1 flattens, T < 1 sharpens, 1 keeps.

    Raises:
        ValueError: ``temperature`` is not a positive finite number.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    p = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0:
        return p
    # Log space with the row maximum subtracted, so a sharpening T cannot underflow every class of a row to 0.
    # In place after the log (a frame loop runs this on every face; the values are those of the plain formula).
    with np.errstate(divide="ignore"):
        logp = np.log(np.maximum(p, 0.0))  # NaN stays NaN, as with np.clip, and either zero logs to -inf
    logp /= temperature
    logp -= logp.max(axis=1, keepdims=True)
    np.exp(logp, out=logp)
    logp /= logp.sum(axis=1, keepdims=True)
    return logp
