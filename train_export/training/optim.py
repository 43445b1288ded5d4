"""The optimiser with its warm-up + cosine schedule, and the loss."""

from __future__ import annotations

import math

import keras

from train_export.hparams import HParams


def make_optimizer(hp: HParams, steps_per_epoch: int, per_epoch: bool = False) -> keras.optimizers.Optimizer:
    """Adam(W) or SGD+Nesterov with a cosine-with-warm-up or constant (plateau-driven) learning rate.

    ``per_epoch`` leaves the learning rate a plain value that a callback sets each epoch (:class:`train_export.training.budget.TimeBudget`).
    """
    if per_epoch:
        lr = cosine_lr(0, hp.epochs, hp)
    elif hp.schedule == "cosine":
        total = max(1, hp.epochs * steps_per_epoch)
        warmup = min(total - 1, hp.warmup_epochs * steps_per_epoch)
        lr = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=hp.learning_rate * 0.05,
            decay_steps=max(1, total - warmup),
            alpha=0.01,
            warmup_target=hp.learning_rate,
            warmup_steps=warmup,
        )
    else:
        lr = hp.learning_rate
    if hp.optimizer == "adam":
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=hp.weight_decay)
    return keras.optimizers.SGD(learning_rate=lr, momentum=hp.momentum, nesterov=True, weight_decay=hp.weight_decay)


def make_loss(hp: HParams) -> keras.losses.Loss:
    """Cross-entropy or focal loss on soft labels, both with label smoothing."""
    if hp.loss == "focal":
        return keras.losses.CategoricalFocalCrossentropy(gamma=hp.focal_gamma, label_smoothing=hp.label_smoothing)
    return keras.losses.CategoricalCrossentropy(label_smoothing=hp.label_smoothing)


def cosine_lr(epoch: int, total: int, hp: HParams) -> float:
    """Per-epoch warm-up + cosine learning rate, the shape of :func:`make_optimizer`'s per-step schedule.

    Each epoch gets the rate of its middle, so even a short schedule's last epoch runs decayed (3 epochs with
    2 of warm-up: about half the peak, not the peak itself).
    """
    warmup = min(hp.warmup_epochs, max(0, total - 1))
    if epoch < warmup:
        return hp.learning_rate * (0.05 + 0.95 * epoch / warmup)
    progress = min(1.0, (epoch + 0.5 - warmup) / max(1, total - warmup))
    return hp.learning_rate * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress)))
