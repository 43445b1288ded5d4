"""Seeded image augmentation as Keras layers, so it runs on the accelerator with the model.

The augmenter works on the float input that :func:`edge.preprocess.normalize` produces (values in [0, 1]
with the default preprocessing) and is only used while training: the exported model never contains it.
"""

from __future__ import annotations

import keras
from keras import layers

from train_export.hparams import HParams


def build_augmenter(hp: HParams) -> keras.Sequential:
    """Random flip, rotation, translation, zoom, brightness/contrast jitter and erasing, as configured.

    Geometric transforms fill with the nearest edge pixel, like the device's crop of a box near the frame
    edge (see :func:`edge.preprocess.crop_face`).
    """
    seed = hp.seed
    aug: list[layers.Layer] = []
    if hp.flip:
        aug.append(layers.RandomFlip("horizontal", seed=seed))
    if hp.rotation > 0:
        aug.append(layers.RandomRotation(hp.rotation, fill_mode="nearest", seed=seed + 1))
    if hp.zoom > 0:
        aug.append(layers.RandomZoom((-hp.zoom, hp.zoom), fill_mode="nearest", seed=seed + 2))
    if hp.translation > 0:
        aug.append(layers.RandomTranslation(hp.translation, hp.translation, fill_mode="nearest", seed=seed + 3))
    if hp.brightness > 0:
        aug.append(layers.RandomBrightness(hp.brightness, value_range=(0.0, 1.0), seed=seed + 4))
    if hp.contrast > 0:
        aug.append(layers.RandomContrast(hp.contrast, value_range=(0.0, 1.0), seed=seed + 5))
    if hp.erasing_prob > 0:
        aug.append(
            layers.RandomErasing(
                factor=hp.erasing_prob, scale=(0.02, 0.15), fill_value=0.5, value_range=(0.0, 1.0), seed=seed + 6
            )
        )
    return keras.Sequential(aug, name="augment")
