"""Seeded image augmentation as Keras layers, so it runs on the accelerator with the model.

The augmenter works on the float input that :func:`edge.preprocess.normalize` produces (values in [0, 1]
with the default preprocessing) and is only used while training: the exported model never contains it.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from train_export.hparams import HParams
from train_export.model.spec import dtype_policy

#: Blur strengths (Gaussian sigma, pixels at 48 px) and face sizes (pixels) that ``camera_prob`` draws from.
BLUR_SIGMAS = (0.6, 1.0, 1.5)
LOW_RES_SIDES = (16, 20, 24, 32)
#: The range of face scales (content magnification against FER2013's framing: > 1 tighter, < 1 looser) and the
#: largest centre offset (fraction of the side, each axis) that ``framing_prob`` draws from uniformly. BlazeFace's
#: framing of the first 600 FER2013 val faces (``benchmarks/crop_calibration.py``'s canvas, after its calibrated
#: box correction) spans about x0.73 to x1.32 (5th to 95th percentile) in scale and +-0.1 of the side vertically.
FRAMING_SCALES = (0.7, 1.3)
FRAMING_SHIFT = 0.1


def _gauss_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(round(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float32)
    k1 = np.exp(-(t**2) / (2 * sigma**2))
    k2 = np.outer(k1, k1)
    return (k2 / k2.sum())[:, :, None, None].astype(np.float32)


@keras.saving.register_keras_serializable(package="train_export")
class CameraDegrade(layers.Layer):
    """What a room camera does to a face that FER2013's clean crops lack, applied while training only.

    With probability ``prob`` per face, one of: a Gaussian blur (a sigma from :data:`BLUR_SIGMAS`: focus,
    motion) or a small face (downscaled to a side from :data:`LOW_RES_SIDES` and enlarged back: a person far
    from the lens). Then every face gets additive Gaussian sensor noise with a standard deviation drawn
    uniformly from ``[0, noise]`` (in the [0, 1] input range) and is clipped to that range. Without it the
    model learns pixel-level texture: a model trained without it lost 28 pp of accuracy at noise sigma 10 grey levels
    (``benchmarks/robustness.py``).

    Args:
        prob: Per-face probability of a blur or a downscale (chosen half and half).
        noise: Largest noise standard deviation, as a fraction of the value range; 0 turns noise off.
        seed: Seed of the random choices.
    """

    def __init__(self, prob: float = 0.0, noise: float = 0.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.prob, self.noise, self.seed = float(prob), float(noise), seed
        self._rng = keras.random.SeedGenerator(seed)
        # Blur by mirror padding + valid conv, so the border does not darken (every backend pads "reflect").
        self._kernels = [_gauss_kernel(s) for s in BLUR_SIGMAS]

    def _pick(self, x, variants):
        # One of ``variants`` per face, uniformly, as a one-hot weighted sum (static shapes for every backend).
        n = ops.shape(x)[0]
        stack = ops.stack(variants, axis=1)
        idx = keras.random.randint((n,), 0, len(variants), seed=self._rng)
        onehot = ops.reshape(ops.one_hot(idx, len(variants), dtype=x.dtype), (n, len(variants), 1, 1, 1))
        return ops.sum(stack * onehot, axis=1)

    def _blurred(self, x):
        out = []
        for k in self._kernels:
            r = k.shape[0] // 2
            padded = ops.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
            out.append(ops.conv(padded, ops.convert_to_tensor(k, dtype=x.dtype), padding="valid"))
        return out

    def _small(self, x):
        side = ops.shape(x)[1]
        return [
            ops.image.resize(ops.image.resize(x, (s, s), antialias=True), (side, side), interpolation="bilinear")
            for s in LOW_RES_SIDES
        ]

    def call(self, x, training=None):
        if not training:
            return x
        n = ops.shape(x)[0]
        if self.prob > 0:
            degraded = self._pick(x, [self._pick(x, self._blurred(x)), self._pick(x, self._small(x))])
            use = keras.random.uniform((n, 1, 1, 1), seed=self._rng) < self.prob
            x = ops.where(use, degraded, x)
        if self.noise > 0:
            # In x's dtype (float32 as built by build_augmenter; the layer itself works in any float dtype).
            sigma = keras.random.uniform((n, 1, 1, 1), 0.0, self.noise, seed=self._rng, dtype=x.dtype)
            x = x + sigma * keras.random.normal(ops.shape(x), seed=self._rng, dtype=x.dtype)
        return ops.clip(x, 0.0, 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "prob": self.prob, "noise": self.noise, "seed": self.seed}


@keras.saving.register_keras_serializable(package="train_export")
class Reframe(layers.Layer):
    """The framing a face detector gives, applied while training only: with probability ``prob`` per face, the
    face is magnified by a factor drawn uniformly from :data:`FRAMING_SCALES` (a tighter or a looser crop) and
    moved off-centre by up to :data:`FRAMING_SHIFT` of its side on each axis, the border replicated (as the
    device's crop of a box near the frame edge). Wider than the everyday ``zoom`` and ``translation`` jitter:
    their +-10 % and +-8 % cover half of a detector's framings, this the rest.

    Args:
        prob: Per-face probability of a re-framing.
        seed: Seed of the random choices.
    """

    def __init__(self, prob: float = 0.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.prob, self.seed = float(prob), seed
        self._rng = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.prob <= 0:
            return x
        n = ops.shape(x)[0]
        side = ops.cast(ops.shape(x)[1], x.dtype)
        lo, hi = FRAMING_SCALES
        s = keras.random.uniform((n, 1), lo, hi, seed=self._rng, dtype=x.dtype)
        d = keras.random.uniform((n, 2), -FRAMING_SHIFT, FRAMING_SHIFT, seed=self._rng, dtype=x.dtype) * side
        # Output pixel p samples input pixel (p - c - d) / s + c: magnified by s about the centre c, moved by d.
        c = (side - 1.0) / 2.0
        zero = ops.zeros((n, 1), x.dtype)
        inv = 1.0 / s
        tx = c - (c + d[:, :1]) * inv
        ty = c - (c + d[:, 1:]) * inv
        transform = ops.concatenate([inv, zero, tx, zero, inv, ty, zero, zero], axis=1)
        moved = ops.image.affine_transform(x, transform, interpolation="bilinear", fill_mode="nearest")
        use = keras.random.uniform((n, 1, 1, 1), seed=self._rng) < self.prob
        return ops.where(use, moved, x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "prob": self.prob, "seed": self.seed}


class BatchAugmenter:
    """Apply an augmenter (in training mode) to numpy batches, outside the model's training step.

    Under JAX the augmenter is compiled on its own, as a stateless function of its random-seed state: run
    eagerly it cost about 1.7 s per batch of 64 on CPU (each op dispatched and compiled separately), compiled
    0.1 s. Other backends call it eagerly.
    """

    def __init__(self, augmenter: keras.Model, input_shape: tuple[int, ...]):
        self.augmenter = augmenter
        augmenter.build((None, *input_shape))
        self._jitted = None
        if keras.backend.backend() == "jax":
            import jax

            self._trainable = [v.value for v in augmenter.trainable_variables]
            self._state = [v.value for v in augmenter.non_trainable_variables]
            self._jitted = jax.jit(lambda tv, ntv, x: augmenter.stateless_call(tv, ntv, x, training=True))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The augmented batch, as float32 numpy."""
        if self._jitted is None:
            return keras.ops.convert_to_numpy(self.augmenter(x, training=True)).astype(np.float32, copy=False)
        y, self._state = self._jitted(self._trainable, self._state, x)
        return np.asarray(y, dtype=np.float32)


def build_augmenter(hp: HParams, camera: bool = True) -> keras.Sequential:
    """Random flip, rotation, zoom, translation, a detector's framing (:class:`Reframe`), brightness/contrast
    jitter, erasing and camera degradation (blur, small faces, sensor noise: :class:`CameraDegrade`), as configured.

    ``camera=False`` leaves the camera degradation out, for a caller that applies :func:`camera_degrader` later
    (online distillation's teachers see the face before it, :mod:`train_export.training.online_distill`).

    Geometric transforms fill with the nearest edge pixel, like the device's crop of a box near the frame
    edge (see :func:`edge.preprocess.crop_face`). The layers compute in float32 whatever the global dtype
    policy: under ``mixed_float16`` (a GPU) Keras' own ``RandomErasing`` cannot run in TensorFlow, and the
    augmenter's cost is small beside the model's.
    """
    with dtype_policy("float32"):  # the layers and their container, which would cast its input to the policy's
        return keras.Sequential(_augment_layers(hp, camera), name="augment")


def camera_degrader(hp: HParams) -> CameraDegrade | None:
    """The augmenter's last step on its own, computing in float32; None when ``hp`` turns it off."""
    if hp.camera_prob <= 0 and hp.noise <= 0:
        return None
    with dtype_policy("float32"):
        return CameraDegrade(hp.camera_prob, hp.noise, seed=hp.seed + 7)


def _augment_layers(hp: HParams, camera: bool = True) -> list[layers.Layer]:
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
    if hp.framing_prob > 0:
        aug.append(Reframe(hp.framing_prob, seed=seed + 8))
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
    degrade = camera_degrader(hp) if camera else None
    if degrade is not None:
        aug.append(degrade)
    return aug
