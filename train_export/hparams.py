"""Hyper-parameters of a training run, as one documented dataclass.

A run's :class:`HParams` is saved as ``hparams.json`` in its run folder and copied into the model bundle's
manifest, so every shipped model says how it was made.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from edge.bundle import FER_LABELS

#: Python types a field of each annotation accepts (an int is a valid float; a bool is not a number here).
_ACCEPTED_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "str | bool": (str, bool),
}


#: Fields added after runs were recorded without them: the value that says what such a run did, where it differs
#: from the field's default (read with the new default, an old ``hparams.json`` would misdescribe its run), and
#: the field that must be set in the record for it to matter.
LEGACY_VALUES: dict[str, tuple[object, str]] = {
    "teachers_see_clean": (False, "teacher_models"),
    # Every saved record names its model: one without framing_prob was trained without the re-framing.
    "framing_prob": (0.0, "model"),
}

#: Fields a resumed run may change (see :meth:`HParams.execution_only`).
EXECUTION_FIELDS = ("mixed_precision", "jit_compile", "data_parallel")


@dataclass
class HParams:
    """Everything that decides what a training run does.

    Attributes:
        model: Architecture name from :data:`train_export.model.spec.MODELS` ("mini_xception", "sepse",
            or the GPU teacher "vgg").
        width: Channel multiplier applied to the architecture's base widths.
        depth: Conv layers per stage (sepse: separable convs per residual block; vgg: plain convs).
        input_size: Square input side in pixels (faces are resized by the shared preprocessing).
        dropout: Dropout rate before the classifier.
        se: Use squeeze-excitation in residual blocks (sepse only).
        stem_stride: Stride of the first conv (sepse only): 1 keeps the stem at full resolution; 2 runs it at
            half resolution and drops the first stage's max-pool, so every later layer and weight keeps its shape
            (a stride-1 model can start a stride-2 run with ``init_weights``), at 15–22 % less time per face
            (``benchmarks/arch_latency.py``).
        labels: Class labels, in model output order.
        label_source: What the training faces are labelled by: "fer2013" (the archive's single-tagger ``y``) or
            "ferplus" (the shares of the ten FER+ taggers' votes, ``ferplus.npz`` beside the data; the best epoch
            is then chosen on the FER+ majority of the val faces: :mod:`train_export.data.ferplus`).
        epochs: Total epochs of the schedule (resuming continues the same schedule).
        batch_size: Faces per step.
        optimizer: "adam" (AdamW with ``weight_decay``) or "sgd" (SGD with Nesterov momentum).
        learning_rate: Peak learning rate.
        weight_decay: Decoupled weight decay (AdamW) or L2-equivalent decay for SGD.
        momentum: SGD momentum.
        schedule: "cosine" (with ``warmup_epochs``) or "plateau" (halve on a 5-epoch validation plateau).
        warmup_epochs: Linear warm-up length for the cosine schedule.
        loss: "ce" (cross-entropy) or "focal".
        focal_gamma: Focusing parameter of the focal loss.
        label_smoothing: Label smoothing factor.
        class_weight: "none", "sqrt" (inverse square root frequency) or "balanced" (inverse frequency).
        mixup_alpha: Beta(alpha, alpha) mixup on a ``mix_prob`` share of batches; 0 turns it off.
        cutmix_alpha: Beta(alpha, alpha) CutMix on a ``mix_prob`` share of batches; 0 turns it off.
        mix_prob: Probability that a batch is mixed (mixup or CutMix, chosen at random when both are on).
        flip: Random horizontal flip.
        rotation: Max rotation as a fraction of a full turn (0.05 = 18 degrees).
        translation: Max translation as a fraction of the side (simulates detector jitter).
        zoom: Max zoom in/out as a fraction (simulates detector box-size jitter).
        framing_prob: Probability per face of a detector's framing (:class:`train_export.data.augment.Reframe`):
            magnified x0.7 (looser) to x1.3 (tighter) and off-centre by up to 10 % of the side, the range BlazeFace's
            boxes span on FER2013 faces. 0.3 by default (like ``camera_prob``), so a new run sees the framings a
            detector gives; runs recorded before this field had 0. Measured only in a 2-epoch fine-tuning of the
            shipped model so far, where it changed neither clean accuracy (int8 67.07 % against 67.01 % without it)
            nor the mean of ``benchmarks/robustness.py``'s five framing variants (63.08 % against 63.11 %).
        brightness: Max brightness jitter as a fraction of the value range.
        contrast: Max contrast jitter factor.
        erasing_prob: Random erasing (a grey rectangle): Keras' ``RandomErasing`` factor, so each face is erased
            with a probability drawn from U(0, erasing_prob), on average erasing_prob / 2 of the faces (0.1, the
            default model's setting, erases about 5 %).
        camera_prob: Probability per face of a camera degradation: a blur or a small (down- and up-scaled)
            face (:class:`train_export.data.augment.CameraDegrade`). On by default: without it a model trained on
            FER2013's clean crops fails on camera faces (``benchmarks/robustness.py``).
        noise: Largest standard deviation of additive Gaussian sensor noise per face, as a fraction of the
            input range (0.04 is about 10 grey levels); 0 = none.
        soft_labels: Teacher soft labels for the training faces (``emotion-train soft-labels``);
            empty = no distillation.
        distill_alpha: Weight of the teachers' soft labels in the target (the one-hot label gets the rest).
        teacher_models: Trained ``.keras`` teachers that score each augmented training batch inside the step
            (online distillation, :mod:`train_export.training.online_distill`), instead of ``soft_labels``; empty = none.
        teachers_see_clean: With ``teacher_models``: the teachers score each augmented face before the camera
            degradation (``camera_prob``, ``noise``) that the student sees, so the student learns the clean face's
            target from its degraded view; false: the teachers see the student's degraded view, and pass on their
            own fragility to it (:mod:`train_export.training.online_distill`). Runs recorded before this field had false.
        distill_temperature: Softening temperature of ``teacher_models``' probabilities (``soft-labels`` has
            its own ``--temperature``, 2 by default, like this).
        init_weights: A trained ``.keras`` model of the same architecture whose weights start the run
            (fine-tuning); empty = random initialisation. A resumed run continues from its own backup.
        early_stop_patience: Stop after this many epochs without a better validation accuracy; 0 = never.
        seed: Seed of shuffling, augmentation, mixing and weight init.
        mixed_precision: Compute precision while training (weights, batch norm and the softmax stay float32):
            true = mixed_float16 on a GPU and float32 on a CPU; "bfloat16" = mixed_bfloat16 anywhere, worth it
            on a CPU with native bfloat16 (AVX512_BF16, AMX: a ``vgg`` step 1.5x faster on this project's
            workstation, ``benchmarks/train_speed.py --mixed-precision``); "float16" = mixed_float16 anywhere;
            false = float32. Saved models compute in float32 whatever was used. Like ``jit_compile`` it
            may change when a run resumes, except into or out of mixed_float16 (refused: its loss-scaling
            optimizer would restore without the run's optimizer state).
        jit_compile: Keras ``jit_compile``; "auto" is right on CPU, where True was 9x slower in the
            first trial (2026-11-23, not re-measured since).
        data_parallel: Train on several devices at once (:mod:`train_export.training.distribute`): "auto" = every
            GPU when more than one is visible; true = every GPU, or the logical CPU devices; false = one device.
            Each device takes ``batch_size`` faces a step: the global batch and the peak learning rate are
            multiplied by the number of devices (recorded in the run's ``distribute.json``).
    """

    model: str = "sepse"
    width: float = 1.0
    depth: int = 2
    input_size: int = 48
    dropout: float = 0.3
    se: bool = True
    stem_stride: int = 1
    labels: list[str] = field(default_factory=lambda: list(FER_LABELS))
    label_source: str = "fer2013"
    epochs: int = 60
    batch_size: int = 64
    optimizer: str = "adam"
    learning_rate: float = 2e-3
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: int = 2
    loss: str = "ce"
    focal_gamma: float = 2.0
    label_smoothing: float = 0.1
    class_weight: str = "sqrt"
    mixup_alpha: float = 0.2
    cutmix_alpha: float = 0.0
    mix_prob: float = 0.5
    flip: bool = True
    rotation: float = 0.04
    translation: float = 0.08
    zoom: float = 0.1
    framing_prob: float = 0.3
    brightness: float = 0.2
    contrast: float = 0.3
    erasing_prob: float = 0.25
    camera_prob: float = 0.3
    noise: float = 0.04
    soft_labels: str = ""
    distill_alpha: float = 0.7
    teacher_models: list[str] = field(default_factory=list)
    teachers_see_clean: bool = True
    distill_temperature: float = 2.0
    init_weights: str = ""
    early_stop_patience: int = 0
    seed: int = 1
    mixed_precision: str | bool = True
    jit_compile: str | bool = "auto"
    data_parallel: str | bool = "auto"

    def __post_init__(self) -> None:
        self._check_types()
        choices = {
            "label_source": ("fer2013", "ferplus"),
            "optimizer": ("adam", "sgd"),
            "schedule": ("cosine", "plateau"),
            "loss": ("ce", "focal"),
            "class_weight": ("none", "sqrt", "balanced"),
            "stem_stride": (1, 2),
            "mixed_precision": (True, False, "bfloat16", "float16"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"hparam {name}={getattr(self, name)!r} is not one of {allowed}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not 0.0 <= self.framing_prob <= 1.0:
            raise ValueError(f"framing_prob must be in [0, 1], got {self.framing_prob}")
        if not 0.0 <= self.camera_prob <= 1.0 or not 0.0 <= self.noise <= 0.5:
            raise ValueError(f"camera_prob must be in [0, 1] and noise in [0, 0.5], got {self.camera_prob}, {self.noise}")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise ValueError(f"distill_alpha must be in [0, 1], got {self.distill_alpha}")
        if self.distill_temperature <= 0:
            raise ValueError(f"distill_temperature must be > 0, got {self.distill_temperature}")
        if self.soft_labels and self.teacher_models:
            raise ValueError("soft_labels and teacher_models are two ways to distil: give one of them")
        if len(set(self.labels)) != len(self.labels) or len(self.labels) < 2:
            raise ValueError(f"labels must be at least two distinct names, got {self.labels}")

    def _check_types(self) -> None:
        """Refuse a value of the wrong type (e.g. ``"epochs": "55"`` in a hand-edited hparams.json) by name."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "list[str]":
                ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            else:
                accepted = _ACCEPTED_TYPES[f.type]
                ok = isinstance(value, accepted) and not (isinstance(value, bool) and bool not in accepted)
            if not ok:
                raise ValueError(f"hparam {f.name}={value!r} must be of type {f.type}")

    def execution_only(self) -> dict[str, object]:
        """The fields that change how fast a run computes, not what it learns: a resumed run may change them."""
        return {name: getattr(self, name) for name in EXECUTION_FIELDS}

    def to_dict(self) -> dict:
        """JSON-ready dict of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> HParams:
        """Build from a dict, refusing unknown names so typos fail loudly."""
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown hyper-parameters: {sorted(unknown)}")
        return cls(**data)

    def save(self, path: Path) -> None:
        """Write as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> HParams:
        """Read a JSON file of hyper-parameters (all of them, as :meth:`save` writes, or some: defaults fill in).

        A field of :data:`LEGACY_VALUES` that the file lacks while it sets the field that field qualifies (e.g. an
        online run's ``teacher_models`` without ``teachers_see_clean``) was saved before it existed: it gets its
        legacy value, which says what that run did (resuming it, or using it as a ``--hparams`` base, keeps that).
        """
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if isinstance(data, dict):
            legacy = {k: v for k, (v, needs) in LEGACY_VALUES.items() if k not in data and data.get(needs)}
            data = {**legacy, **data}
        return cls.from_dict(data)

    def override(self, **changes: object) -> HParams:
        """Copy with some fields changed (None values are ignored, as CLI defaults are None)."""
        data = self.to_dict()
        data.update({k: v for k, v in changes.items() if v is not None})
        return HParams.from_dict(data)


def parse_assignments(text: str, sep: str = ",") -> dict[str, object]:
    """``"width=1.5,se=false"`` → ``{"width": 1.5, "se": False}``, checked as :class:`HParams` fields.

    Values are read as booleans (true/false), integers, floats or else strings, so the benchmarks' model variants
    name hyper-parameters the way ``hparams.json`` spells them.

    Raises:
        ValueError: A malformed pair, an unknown name, or a value of the wrong type or range.
    """
    changes: dict[str, object] = {}
    for pair in filter(None, (p.strip() for p in text.split(sep))):
        name, eq, raw = pair.partition("=")
        if not eq or not name.strip():
            raise ValueError(f"{text!r}: {pair!r} is not name=value")
        changes[name.strip()] = _read_value(raw.strip())
    HParams.from_dict(changes)  # unknown names and bad values fail here, by name
    return changes


def _read_value(raw: str) -> object:
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw
