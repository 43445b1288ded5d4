"""Batches for Keras ``fit``: normalised faces, soft labels, per-face class weights, mixup and CutMix.

Training targets are one-hot labels or the data's own target distributions (FER+ vote shares), or with teacher soft labels (:mod:`train_export.training.distill`) their blend
``(1 - distill_alpha) * target + distill_alpha * teacher``; the loss applies ``label_smoothing`` on top.

Built on :class:`keras.utils.PyDataset` so the same loop runs on the TensorFlow, JAX and PyTorch backends.
Mixing is done here in numpy (it needs the labels). The per-face augmentation (:mod:`train_export.data.augment`)
runs in the training model on TensorFlow, and here, on each mixed batch, on the JAX and PyTorch backends
(:func:`train_export.training.loop.augment_in_model` says why); online distillation with the teachers' clean view takes
the camera degradation out of it and into the training model.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from edge.preprocess import Preprocessing, normalize
from train_export.data.augment import BatchAugmenter
from train_export.data.load import FaceData
from train_export.hparams import HParams


def class_weights(counts: np.ndarray, mode: str) -> np.ndarray:
    """Per-class loss weights with mean 1 over the training faces.

    ``sqrt`` (inverse square-root frequency) helps rare classes such as disgust without costing as much
    overall accuracy as ``balanced`` (inverse frequency).
    """
    counts = np.maximum(counts.astype(np.float64), 1.0)
    if mode == "none":
        w = np.ones_like(counts)
    elif mode == "sqrt":
        w = 1.0 / np.sqrt(counts)
    elif mode == "balanced":
        w = 1.0 / counts
    else:
        raise ValueError(f"unknown class_weight mode {mode!r}")
    return (w / (w * counts).sum() * counts.sum()).astype(np.float32)


class FaceSequence(keras.utils.PyDataset):
    """Training or validation batches of ``(x, y_onehot, sample_weight)``.

    Args:
        data: Faces and labels.
        hp: Hyper-parameters (batch size, mixing, class weighting, seed).
        prep: The shared preprocessing (its normalisation is applied here).
        training: Shuffle each epoch, mix and weight; validation batches are plain and in order.
        soft: Teacher probabilities per face (N x classes), blended into the training targets.
        augmenter: Applied (in training mode) to each training batch after mixing; None = none here.
    """

    def __init__(self, data: FaceData, hp: HParams, prep: Preprocessing, training: bool,
                 soft: np.ndarray | None = None, augmenter: keras.Model | None = None, **kwargs: object):
        super().__init__(**kwargs)
        side = prep.input_size
        self.augmenter = BatchAugmenter(augmenter, (side, side, 1)) if training and augmenter is not None else None
        if soft is not None and soft.shape != (len(data.y), len(data.labels)):
            raise ValueError(f"soft labels of shape {soft.shape} do not fit {len(data.y)} faces x {len(data.labels)} labels")
        self.soft = soft if training else None
        self.x = data.x
        self.y = data.y
        # Crowd vote shares (FER+) replace the one-hot labels as training targets; validation scores the labels.
        self.targets = data.targets if training else None
        self.n_classes = len(data.labels)
        self.hp = hp
        self.prep = prep
        self.training = training
        self.weights = class_weights(data.class_counts(), hp.class_weight if training else "none")
        self.epoch = 0
        self.order = np.arange(len(self.y))
        self.on_epoch_end()

    def __len__(self) -> int:
        # Training drops the incomplete last batch: on JAX a batch of another shape compiles the training step
        # (and the augmenter) again, about 30 s on an H100, mid-epoch. Each epoch's reshuffle gives the faces
        # left out their turn in another epoch. Validation keeps every face.
        n, b = len(self.y), self.hp.batch_size
        return max(1, n // b) if self.training else math.ceil(n / b)

    def on_epoch_end(self) -> None:
        """Reshuffle (training only, seeded by epoch) and advance the epoch counter."""
        if self.training:
            self.order = np.random.default_rng(self.hp.seed + self.epoch).permutation(len(self.y))
        self.epoch += 1

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.hp.seed, self.epoch, index])

    def __getitem__(self, index: int):
        idx = self.order[index * self.hp.batch_size : (index + 1) * self.hp.batch_size]
        x = normalize(self.x[idx], self.prep)[..., None]
        y = self.targets[idx] if self.targets is not None else np.eye(self.n_classes, dtype=np.float32)[self.y[idx]]
        if self.soft is not None:
            y = (1.0 - self.hp.distill_alpha) * y + self.hp.distill_alpha * self.soft[idx]
        w = self.weights[self.y[idx]]
        if self.training and self.hp.mix_prob > 0 and len(idx) > 1:
            x, y, w = self._mix(x, y, w, self._rng(index))
        if self.augmenter is not None:
            x = self.augmenter(x)
        return x, y, w

    def _mix(self, x: np.ndarray, y: np.ndarray, w: np.ndarray, rng: np.random.Generator):
        modes = [m for m, a in (("mixup", self.hp.mixup_alpha), ("cutmix", self.hp.cutmix_alpha)) if a > 0]
        if not modes or rng.random() >= self.hp.mix_prob:
            return x, y, w
        mode = modes[rng.integers(len(modes))]
        perm = rng.permutation(len(x))
        if mode == "mixup":
            lam = float(rng.beta(self.hp.mixup_alpha, self.hp.mixup_alpha))
            x = lam * x + (1 - lam) * x[perm]
        else:
            lam = float(rng.beta(self.hp.cutmix_alpha, self.hp.cutmix_alpha))
            s = x.shape[1]
            cut = int(round(s * math.sqrt(1 - lam)))
            cy, cx = rng.integers(s), rng.integers(s)
            y0, y1 = max(0, cy - cut // 2), min(s, cy + cut // 2)
            x0, x1 = max(0, cx - cut // 2), min(s, cx + cut // 2)
            x = x.copy()
            x[:, y0:y1, x0:x1] = x[perm, y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (s * s)
        y = lam * y + (1 - lam) * y[perm]
        w = lam * w + (1 - lam) * w[perm]
        return x.astype(np.float32), y.astype(np.float32), w.astype(np.float32)
