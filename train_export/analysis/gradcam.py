"""Grad-CAM overlays: where in the face a model looks when it predicts a class.

For a sample of validation faces per true class, the gradient of the predicted class score with respect to
the last spatial feature map (the last layer with a 2-D map larger than 1x1) weights that map's channels
(Selvaraju et al., 2017); the ReLU'd, upsampled result is drawn over the face. Uses TensorFlow's
GradientTape, so it needs the TensorFlow Keras backend (train_export already needs TensorFlow to export).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge.preprocess import Preprocessing, normalize
from train_export import progress
from train_export.data.load import FaceData

log = logging.getLogger(__name__)


def target_layer(model) -> str:
    """Name of the last layer whose output is a spatial map (H, W > 1): the Grad-CAM feature map."""
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None)
        shape = getattr(shape, "shape", None)
        if shape is not None and len(shape) == 4 and shape[1] and shape[1] > 1 and shape[2] > 1:
            return layer.name
    raise ValueError(f"model {model.name} has no spatial feature map for Grad-CAM")


def gradcam(model, faces: np.ndarray, prep: Preprocessing | None = None, layer: str | None = None,
            class_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Heat maps (N x S x S in [0, 1]) and probabilities (N x classes) for uint8 faces N x S x S.

    ``class_ids`` picks the class explained per face (default: the predicted class).
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("Grad-CAM needs the TensorFlow Keras backend (KERAS_BACKEND=tensorflow)")
    import tensorflow as tf

    prep = prep or Preprocessing(input_size=faces.shape[1])
    layer = layer or target_layer(model)
    # Grad-CAM differentiates the class score before the softmax (Selvaraju et al.): the softmax output's gradient
    # vanishes for confident faces and mixes in the other classes.
    logits = model.get_layer("probs").input if "probs" in [lay.name for lay in model.layers] else model.output
    grad_model = keras.Model(model.inputs, [model.get_layer(layer).output, logits, model.output])
    x = tf.convert_to_tensor(normalize(faces, prep)[..., None])
    with tf.GradientTape() as tape:
        fmap, scores, probs = grad_model(x, training=False)
        ids = scores.numpy().argmax(axis=1) if class_ids is None else np.asarray(class_ids)
        score = tf.reduce_sum(tf.gather(scores, ids, axis=1, batch_dims=1))
    grads = tape.gradient(score, fmap)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1)).numpy()
    import cv2

    size = faces.shape[1]
    maps = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC) for c in cam])
    maps = np.clip(maps, 0, None)
    peak = maps.reshape(len(maps), -1).max(axis=1)[:, None, None]
    maps = np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)
    return maps.astype(np.float32), probs.numpy()


def gradcam_in_chunks(model, faces: np.ndarray, chunk: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """:func:`gradcam` a chunk of faces at a time (each face's map depends on that face alone), with a progress
    bar on a terminal."""
    maps, probs = [], []
    with progress.bar(total=len(faces), desc="Grad-CAM", unit="face") as bar:
        for start in range(0, len(faces), chunk):
            m, p = gradcam(model, faces[start:start + chunk])
            maps.append(m)
            probs.append(p)
            bar.update(len(m))
    return np.concatenate(maps), np.concatenate(probs)


def overlay(face: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB image of a grayscale face with a JET-coloured heat map blended over it."""
    import cv2

    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    base = cv2.cvtColor(face, cv2.COLOR_GRAY2BGR)
    mixed = cv2.addWeighted(colour, alpha, base, 1 - alpha, 0)
    return cv2.cvtColor(mixed, cv2.COLOR_BGR2RGB)


def sample_per_class(data: FaceData, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of up to ``per_class`` faces of each class, seeded, class by class."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(len(data.labels)):
        ix = np.flatnonzero(data.y == c)
        picks.append(np.sort(rng.choice(ix, size=min(per_class, len(ix)), replace=False)))
    return np.concatenate(picks) if picks else np.zeros(0, np.int64)


def explain_grid(model, data: FaceData, png_path: Path | str, per_class: int = 6, seed: int = 0) -> int:
    """Save one PNG grid (a row per true class) of Grad-CAM overlays; returns the number of faces drawn.

    Each cell is titled ``predicted probability``, in green when right and red when wrong.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = sample_per_class(data, per_class, seed)
    if len(idx) == 0:
        raise ValueError("no faces to explain")
    maps, probs = gradcam_in_chunks(model, data.x[idx])
    n_rows, n_cols = len(data.labels), per_class
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.6 * n_cols + 1.2, 1.75 * n_rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    col = dict.fromkeys(range(n_rows), 0)
    for k, i in enumerate(idx):
        true = int(data.y[i])
        pred = int(probs[k].argmax())
        ax = axes[true, col[true]]
        col[true] += 1
        ax.imshow(overlay(data.x[i], maps[k]))
        ax.set_title(f"{data.labels[pred]} {probs[k, pred]:.2f}", fontsize=8,
                     color="green" if pred == true else "red")
    for r, name in enumerate(data.labels):
        axes[r, 0].text(-0.15, 0.5, name, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=10)
    fig.suptitle("Grad-CAM (rows: true class; title: predicted class and probability)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    log.info("wrote %d Grad-CAM overlays to %s", len(idx), png_path)
    return len(idx)
