"""The compact depthwise-separable CNN family, and a plain CNN that teaches it.

Three architectures, all parameterised by width and input size:

* ``mini_xception`` — the baseline of Arriaga et al. (2017), ≈ 58k parameters at width 1: two plain 3x3
  convolutions, then four residual blocks of two separable convolutions with a strided 1x1 shortcut, and a
  global-average-pooled 1x1 conv head.
* ``sepse`` — our stronger variant: a separable stem that keeps the full 48x48 resolution, four residual
  stages (``depth`` separable convs each) with squeeze-excitation, BN+ReLU6 (which quantizes well to int8),
  and a dropout + dense head.
* ``vgg`` — a teacher, not a device model: four stages of ``depth`` plain 3x3 convs (64-128-256-512 at
  width 1, ≈ 4.7 M params, 0.47 G MACs at depth 2). Too large for a Pi, but fast on a GPU; its soft labels
  are what distillation (:mod:`train_export.training.distill`) passes to a compact student.

All layers are int8-friendly TFLite builtins (CONV_2D, DEPTHWISE_CONV_2D, ADD, MUL, MAX_POOL_2D, MEAN,
FULLY_CONNECTED, SOFTMAX). The softmax runs in float32 under mixed precision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
from keras import layers

from train_export.hparams import HParams, parse_assignments


def _bn_act(x, act: str = "relu6"):
    x = layers.BatchNormalization()(x)
    return layers.Activation(act)(x)


def _sep(x, filters: int, stride: int = 1):
    return layers.SeparableConv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)


def _se(x, ratio: int = 8):
    """Squeeze-excitation: global pool → bottleneck → sigmoid channel gates."""
    c = x.shape[-1]
    s = layers.GlobalAveragePooling2D(keepdims=True)(x)
    s = layers.Conv2D(max(8, c // ratio), 1, activation="relu")(s)
    s = layers.Conv2D(c, 1, activation="hard_sigmoid")(s)
    return layers.Multiply()([x, s])


def _head(x, n_classes: int, dropout: float):
    x = layers.GlobalAveragePooling2D()(x)
    if dropout > 0:
        x = layers.Dropout(dropout)(x)
    x = layers.Dense(n_classes)(x)
    return layers.Activation("softmax", dtype="float32", name="probs")(x)


def mini_xception(input_size: int, n_classes: int, width: float = 1.0, dropout: float = 0.0, **_: object) -> keras.Model:
    """Mini-Xception (Arriaga et al. 2017) with a width multiplier; ≈ 58k params at width 1."""
    w = lambda c: max(4, int(round(c * width)))  # noqa: E731
    inp = keras.Input((input_size, input_size, 1), name="face")
    x = layers.Conv2D(w(8), 3, use_bias=False)(inp)
    x = _bn_act(x, "relu")
    x = layers.Conv2D(w(8), 3, use_bias=False)(x)
    x = _bn_act(x, "relu")
    for c in (16, 32, 64, 128):
        res = layers.Conv2D(w(c), 1, strides=2, padding="same", use_bias=False)(x)
        res = layers.BatchNormalization()(res)
        x = _sep(x, w(c))
        x = _bn_act(x, "relu")
        x = _sep(x, w(c))
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        x = layers.Add()([x, res])
    x = layers.Conv2D(n_classes, 3, padding="same")(x)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Activation("softmax", dtype="float32", name="probs")(x)
    return keras.Model(inp, out, name="mini_xception")


def sepse(
    input_size: int,
    n_classes: int,
    width: float = 1.0,
    depth: int = 2,
    dropout: float = 0.3,
    se: bool = True,
    stem_stride: int = 1,
    **_: object,
) -> keras.Model:
    """Separable residual network with squeeze-excitation (our stronger variant).

    A plain 3x3 conv and a separable conv at full resolution, then four stages that each halve the
    resolution with a max-pool first and run ``depth`` separable convs at the lower resolution (cheap
    MACs, wide channels): widths 64-128-256-256 at width 1 over 24-12-6-3 pixels.

    ``stem_stride=2`` strides the first conv instead, so the stem's separable conv runs at half resolution and
    the first stage needs no max-pool: the same layers with the same weight shapes, at 15–22 % less time
    per face in LiteRT (w1.5: 43.3 M → 37.8 M MACs; the full-resolution tensors are what cost most).
    """
    if stem_stride not in (1, 2):
        raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
    w = lambda c: max(8, int(round(c * width / 8)) * 8)  # noqa: E731  (multiples of 8 suit XNNPACK)
    inp = keras.Input((input_size, input_size, 1), name="face")
    x = layers.Conv2D(w(32), 3, strides=stem_stride, padding="same", use_bias=False)(inp)
    x = _bn_act(x)
    x = _sep(x, w(32))
    x = _bn_act(x)
    for stage, c in enumerate((64, 128, 256, 256)):
        if stage > 0 or stem_stride == 1:
            x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        res = x
        if x.shape[-1] != w(c):
            res = layers.Conv2D(w(c), 1, use_bias=False)(res)
            res = layers.BatchNormalization()(res)
        for _i in range(depth):
            x = _sep(x, w(c))
            x = _bn_act(x)
        if se:
            x = _se(x)
        x = layers.Add()([x, res])
    return keras.Model(inp, _head(x, n_classes, dropout), name="sepse")


def vgg(
    input_size: int, n_classes: int, width: float = 1.0, depth: int = 2, dropout: float = 0.3, **_: object
) -> keras.Model:
    """A VGG-style teacher: ``depth`` 3x3 conv + BN + ReLU per stage, a 2x2 max-pool after each of 4 stages."""
    w = lambda c: max(8, int(round(c * width / 8)) * 8)  # noqa: E731
    inp = keras.Input((input_size, input_size, 1), name="face")
    x = inp
    for c in (64, 128, 256, 512):
        for _i in range(depth):
            x = layers.Conv2D(w(c), 3, padding="same", use_bias=False)(x)
            x = _bn_act(x, "relu")
        x = layers.MaxPooling2D(2)(x)
    return keras.Model(inp, _head(x, n_classes, dropout), name="vgg")


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Build and run models under the Keras dtype policy ``name`` inside the block, then restore the old one."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


MODELS: dict[str, Callable[..., keras.Model]] = {"mini_xception": mini_xception, "sepse": sepse, "vgg": vgg}


def build_model(name: str, input_size: int, n_classes: int, **kwargs: object) -> keras.Model:
    """Build an architecture from :data:`MODELS` by name."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](input_size, n_classes, **kwargs)


def parse_variant(text: str) -> tuple[str, float, dict[str, object]]:
    """``model[:width[:name=value...]]``, e.g. ``vgg:1:depth=3``, as (model, width, other hyper-parameters).

    The benchmarks name the models they time this way. Width is 1 when left out; the other names are
    :class:`HParams` fields, checked there.

    Raises:
        ValueError: An unknown model, a width that is not a positive number, or a malformed, unknown or
            out-of-range hyper-parameter.
    """
    name, _, rest = text.partition(":")
    width, _, pairs = rest.partition(":")
    if name not in MODELS:
        raise ValueError(f"variant {text!r}: unknown model {name!r} (one of {', '.join(MODELS)})")
    try:
        w = float(width or 1)
    except ValueError:
        w = 0.0
    if not w > 0:
        raise ValueError(f"variant {text!r}: width {width!r} is not a positive number")
    try:
        return name, w, parse_assignments(pairs, sep=":")
    except ValueError as exc:
        raise ValueError(f"variant {text!r}: {exc}") from None


def build_from_hparams(hp: HParams) -> keras.Model:
    """The untrained model a run's hyper-parameters describe (architecture, width, depth, input, labels)."""
    return build_model(hp.model, hp.input_size, len(hp.labels), width=hp.width, depth=hp.depth, dropout=hp.dropout,
                       se=hp.se, stem_stride=hp.stem_stride)


def load_trained(path: Path | str, role: str) -> keras.Model:
    """A trained ``.keras`` model, uncompiled; ``role`` names it in the one-line error (e.g. "teacher model").

    Raises:
        ValueError: ``path`` is not a file, or not a loadable Keras model.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{role} {path} does not exist; give a trained .keras model (e.g. runs/X/best.keras)")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a wrong or damaged file
        raise ValueError(f"{role} {path} is not a loadable .keras model ({exc})") from None


def rebuilt_in_policy(model: keras.Model, hp: HParams, policy: str) -> keras.Model:
    """A copy of ``model`` (the architecture ``hp`` describes) with its weights, computing in dtype ``policy``."""
    with dtype_policy(policy):
        twin = build_from_hparams(hp)
    twin.set_weights(model.get_weights())
    return twin


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one forward pass (convolutions, depthwise convolutions and dense layers)."""
    macs = 0
    for layer in model.layers:
        if isinstance(layer, layers.SeparableConv2D):
            _, h, w, c_out = layer.output.shape
            c_in = layer.input.shape[-1]
            kh, kw = layer.kernel_size
            macs += h * w * c_in * (kh * kw) + h * w * c_in * c_out
        elif isinstance(layer, layers.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            macs += h * w * c * kh * kw
        elif isinstance(layer, layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            c_in = layer.input.shape[-1]
            kh, kw = layer.kernel_size
            macs += h * w * c_in * c_out * kh * kw
        elif isinstance(layer, layers.Dense):
            macs += layer.input.shape[-1] * layer.units
    return int(macs)


def describe(model: keras.Model) -> dict:
    """Parameter count and MACs, for logs and the manifest."""
    return {"name": model.name, "params": int(model.count_params()), "macs": count_macs(model)}
