"""The training loop: resumable, checkpointed, logged, on whatever Keras backend is installed.

A run folder holds::

    hparams.json      the hyper-parameters (a resumed run must be started with the same ones)
    backup/           Keras BackupAndRestore state: weights, optimizer and epoch, written every epoch
    best.keras        the model (without augmenter) with the best validation accuracy so far
    best.json         that accuracy and its epoch, so the best survives a resume
    log.csv           per-epoch loss/accuracy/learning rate (appended across resumes)
    curves.png        loss and accuracy curves, redrawn each epoch

Interrupting a run (Ctrl-C, a killed session) loses at most the epoch in progress: starting the same
command again resumes from ``backup/``.

A run with a time budget (``train(..., time_budget_s=...)``, for a GPU lent for minutes) is not resumable:
it sizes its cosine schedule to the budget after timing its first epochs (:class:`TimeBudget`) and records
the epochs it ran as ``epochs`` in ``hparams.json`` (and the budget in ``budget.json``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import keras
import numpy as np

from edge.preprocess import Preprocessing
from train_export.data.augment import build_augmenter, camera_degrader
from train_export.data.batches import FaceSequence
from train_export.data.load import FaceData
from train_export.hparams import HParams
from train_export.model.spec import (
    build_from_hparams,
    describe,
    dtype_policy,
    load_trained,
    rebuilt_in_policy,
)

log = logging.getLogger(__name__)

# A time-budgeted run (a lent GPU: epochs of seconds) writes best.keras and curves.png at most this often.
SAVE_INTERVAL_S = 20.0


def has_gpu() -> bool:
    """Whether the active Keras backend sees a GPU."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return bool(tf.config.list_physical_devices("GPU"))
        if backend == "jax":
            import jax

            return any(d.platform == "gpu" for d in jax.devices())
        if backend == "torch":
            import torch

            return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - a broken accelerator stack means CPU
        return False
    return False


def training_policy(mixed_precision: str | bool, gpu: bool) -> str:
    """The Keras dtype policy a run trains under (see :attr:`HParams.mixed_precision`)."""
    if mixed_precision in ("bfloat16", "float16"):
        return f"mixed_{mixed_precision}"
    return "mixed_float16" if mixed_precision and gpu else "float32"


def check_resume_policy(run_dir: Path, policy: str) -> None:
    """Refuse to resume a run across the mixed_float16 boundary, where its optimizer state would be lost.

    Under mixed_float16 Keras wraps the optimizer in a loss-scaling one with other variables; a backup written
    on one side of that boundary restores on the other without the optimizer's state (its step count, so the
    learning-rate schedule starts over, and Adam's moments), with a mere warning. float32 and mixed_bfloat16
    share one optimizer. Runs from before ``model.json`` recorded the policy are not checked.
    """
    try:
        before = json.loads((run_dir / "model.json").read_text(encoding="utf-8")).get("policy")
    except (OSError, ValueError, AttributeError):
        return
    if before and (before == "mixed_float16") != (policy == "mixed_float16"):
        raise ValueError(f"{run_dir} trained under {before} and would resume under {policy}, which loses its "
                         "optimizer state; resume it with the same --mixed-precision on the same kind of machine")


def float32_twin(core: keras.Model, hp: HParams) -> keras.Model:
    """``core`` itself when it computes in float32, else a float32 copy with its weights.

    A model saved under a mixed policy keeps it: loaded for export, evaluation or as a teacher, it would run
    in float16/bfloat16 on a CPU, slowly and less exactly. The weights of a mixed model are float32 already.
    """
    return core if core.dtype_policy.name == "float32" else rebuilt_in_policy(core, hp, "float32")


def make_optimizer(hp: HParams, steps_per_epoch: int, per_epoch: bool = False) -> keras.optimizers.Optimizer:
    """Adam(W) or SGD+Nesterov with a cosine-with-warm-up or constant (plateau-driven) learning rate.

    ``per_epoch`` leaves the learning rate a plain value that a callback sets each epoch (:class:`TimeBudget`).
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


class BestCheckpoint(keras.callbacks.Callback):
    """Keep the core model with the best validation accuracy; remembers the best across resumes.

    ``min_interval_s`` > 0 writes at most that often: an improvement in between is held in memory (its
    weights) and written when the interval has passed or training ends. A GPU epoch takes seconds, and
    saving a ``.keras`` file after nearly every one of the early epochs would cost a good share of a short
    time budget; a run killed in between loses at most the last ``min_interval_s`` of improvements. With
    ``hp``, a core trained in mixed precision is saved as its :func:`float32_twin`.
    """

    def __init__(self, core: keras.Model, run_dir: Path, min_interval_s: float = 0.0, hp: HParams | None = None):
        super().__init__()
        self.core = core
        self.hp = hp  # to save a float32 twin of a core trained in mixed precision
        self.path = run_dir / "best.keras"
        self.state_path = run_dir / "best.json"
        self.min_interval_s = min_interval_s
        self.best = -math.inf
        self.pending: tuple[list, int] | None = None  # (weights, epoch) of an improvement not written yet
        self.last_write = -math.inf
        if self.state_path.exists():
            self.best = json.loads(self.state_path.read_text())["val_accuracy"]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Save the core model (atomically) when validation accuracy improved, at most every ``min_interval_s``."""
        acc = float((logs or {}).get("val_accuracy", -math.inf))
        due = time.monotonic() - self.last_write >= self.min_interval_s
        if acc > self.best:
            self.best = acc
            if due:  # the core holds this epoch's weights: save them as they are
                self.pending = None
                self._save(epoch)
            else:
                self.pending = (self.core.get_weights(), epoch)
                log.info("epoch %d: new best val_accuracy %.4f (saved within %.0f s)", epoch + 1, acc,
                         self.min_interval_s)
        elif self.pending and due:
            self._write_pending()

    def on_train_end(self, logs: dict | None = None) -> None:
        """Write an improvement still held in memory."""
        if self.pending:
            self._write_pending()

    def _write_pending(self) -> None:
        weights, epoch = self.pending
        current = self.core.get_weights()
        self.core.set_weights(weights)
        try:
            self._save(epoch)
        finally:
            self.core.set_weights(current)
        self.pending = None

    def _save(self, epoch: int) -> None:
        tmp = self.path.with_suffix(".tmp.keras")
        (self.core if self.hp is None else float32_twin(self.core, self.hp)).save(tmp)
        os.replace(tmp, self.path)  # atomic: a kill mid-save never leaves a broken best model
        self.state_path.write_text(json.dumps({"val_accuracy": self.best, "epoch": epoch + 1}) + "\n")
        self.last_write = time.monotonic()
        log.info("epoch %d: new best val_accuracy %.4f saved to %s", epoch + 1, self.best, self.path)


class Curves(keras.callbacks.Callback):
    """Redraw ``curves.png`` from ``log.csv`` after each epoch (at most every ``min_interval_s``) and at the end."""

    def __init__(self, run_dir: Path, min_interval_s: float = 0.0):
        super().__init__()
        self.run_dir = run_dir
        self.min_interval_s = min_interval_s
        self.last = -math.inf

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Redraw the curves unless they were drawn less than ``min_interval_s`` ago."""
        if time.monotonic() - self.last >= self.min_interval_s:
            self._draw()

    def on_train_end(self, logs: dict | None = None) -> None:
        """Draw the final curves (the last epochs may have been skipped)."""
        if self.min_interval_s > 0:
            self._draw()

    def _draw(self) -> None:
        # A plot must never stop training: a failure is only a warning.
        try:
            plot_curves(self.run_dir / "log.csv", self.run_dir / "curves.png")
        except Exception as exc:
            log.warning("could not draw curves: %s", exc)
        self.last = time.monotonic()


class EpochTimer(keras.callbacks.Callback):
    """Add ``epoch_seconds`` to the logs, so log.csv records the real cost of the loop."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Start the epoch clock."""
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Add ``epoch_seconds`` and the learning rate ``lr`` to the epoch logs."""
        if logs is not None:
            logs["epoch_seconds"] = round(time.perf_counter() - self.t0, 2)
            lr = self.model.optimizer.learning_rate
            logs["lr"] = float(keras.ops.convert_to_numpy(lr))


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


def epoch_speed(epoch_seconds: list[float]) -> float:
    """Seconds per epoch: the median without the first epoch (compilation), unless it is the only one."""
    return float(np.median(epoch_seconds[1:] if len(epoch_seconds) > 1 else epoch_seconds))


def plan_epochs(done: int, epoch_seconds: list[float], remaining_s: float, total: int, safety: float = 0.92) -> int:
    """How many epochs a time-budgeted schedule should have, given the epochs done so far and their times.

    The first epoch (compilation) does not count towards the speed unless it is the only one; the plan is
    never longer than ``total`` nor shorter than ``done``.
    """
    per_epoch = epoch_speed(epoch_seconds)
    fits = done + int(safety * max(0.0, remaining_s) / max(per_epoch, 1e-9))
    return max(done, min(total, fits))


class TimeBudget(keras.callbacks.Callback):
    """Fit a whole cosine schedule into a wall-clock budget: the run ends on time with a decayed learning rate.

    The schedule starts ``hp.epochs`` long (the most it may run); after ``probe`` epochs (the first one,
    which includes compilation, is not counted in the speed) it is cut to the epochs that fit in what is
    left of the budget at the median epoch time, with a ``safety`` margin, and cut again if later epochs
    run slower (for example when other jobs share the GPU). It is never lengthened.
    """

    def __init__(self, hp: HParams, budget_s: float, run_dir: Path, probe: int = 2, safety: float = 0.92):
        super().__init__()
        self.hp, self.run_dir, self.probe, self.safety = hp, run_dir, probe, safety
        self.start = time.monotonic()
        self.deadline = self.start + budget_s
        self.budget_s = budget_s
        self.total = hp.epochs
        self.times: list[float] = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Start the clock of the first epoch."""
        self.last = time.monotonic()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Set this epoch's learning rate from the current schedule length."""
        self.model.optimizer.learning_rate = cosine_lr(epoch, self.total, self.hp)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Re-plan the schedule length from the epoch times so far; stop when it is done."""
        now = time.monotonic()
        # end to end, so an epoch's time includes the other callbacks' saving and plotting of the one before
        self.times.append(now - self.last)
        self.last = now
        done = epoch + 1
        if done < self.probe and self.deadline - now < self.safety * self.times[0]:
            # Too early to plan, but the first epoch (compilation included) left less than another would take.
            log.info("time budget: %.1f s left after epoch %d, less than it took; stopping", self.deadline - now, done)
            self.total = done
        elif done >= self.probe:
            total = plan_epochs(done, self.times, self.deadline - now, self.total, self.safety)
            if total < self.total:
                log.info("time budget: %.1f s per epoch, the schedule is now %d epochs",
                         epoch_speed(self.times), total)
                self.total = total
        if done >= self.total:
            self.model.stop_training = True
        (self.run_dir / "budget.json").write_text(json.dumps({
            "budget_s": self.budget_s, "max_epochs": self.hp.epochs, "epochs": self.total, "epochs_done": done,
            "elapsed_s": round(now - self.start, 1), "epoch_seconds": [round(t, 2) for t in self.times],
        }) + "\n")


def plot_curves(csv_path: Path, png_path: Path) -> None:
    """Loss and accuracy (train and validation) per epoch as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = np.genfromtxt(csv_path, delimiter=",", names=True)
    rows = np.atleast_1d(rows)
    epochs = rows["epoch"] + 1
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax in (("loss", ax1), ("accuracy", ax2)):
        ax.plot(epochs, rows[key], label=f"train {key}")
        if f"val_{key}" in rows.dtype.names:
            ax.plot(epochs, rows[f"val_{key}"], label=f"val {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def augment_in_model() -> bool:
    """Whether the augmenter runs inside the compiled train step (TensorFlow) or on each batch before it.

    JAX always compiles the train step with XLA, and XLA fused the augmenter's image warps into the model's
    step: a sepse w1 step took 6.9 s instead of 1.1 s on CPU, and an H100 stayed 99 % busy for 5 minutes
    without finishing one epoch. Compiled on its own and run on each batch before the step
    (:class:`~train_export.data.augment.BatchAugmenter`), it costs about 0.1 s a batch on CPU. PyTorch runs
    eagerly either way, so it gets the same treatment. (Online distillation with the teachers' clean view keeps
    the camera degradation in the model on every backend: :func:`build_training_model`.)
    """
    return keras.backend.backend() == "tensorflow"


def compile_for_training(model: keras.Model, hp: HParams, steps_per_epoch: int, per_epoch: bool = False) -> None:
    """Compile ``model`` the way :func:`train` does: ``hp``'s optimizer and schedule, loss, accuracy, jit_compile.

    The benchmarks that time training steps call it too, so they time exactly what a run compiles. With
    ``hp.teacher_models`` the model is :func:`~train_export.training.online_distill.with_teachers`' (2 x classes wide).
    """
    if hp.teacher_models:
        from train_export.training.online_distill import OnlineDistillLoss, student_accuracy

        n = len(hp.labels)
        loss, metrics = OnlineDistillLoss(n, hp.distill_alpha, hp.label_smoothing), [student_accuracy(n)]
    else:
        loss, metrics = make_loss(hp), ["accuracy"]
    model.compile(
        optimizer=make_optimizer(hp, steps_per_epoch, per_epoch=per_epoch),
        loss=loss,
        metrics=metrics,
        jit_compile=hp.jit_compile,
    )


def build_training_model(hp: HParams, teachers: list[keras.Model] | None = None
                         ) -> tuple[keras.Model, keras.Model, keras.Model | None]:
    """Return (training model, core model that gets exported, batch augmenter or None).

    Where :func:`augment_in_model`, the training model is augmenter + core and no augmenter is returned;
    otherwise the training model is the core itself and the augmenter is returned, for
    :class:`~train_export.data.batches.FaceSequence` to apply to each training batch. With ``hp.teacher_models``
    the teachers (``teachers``, or loaded here from those paths) run beside the core on the same augmented
    input; with ``hp.teachers_see_clean`` the camera degradation leaves the augmenter and runs in the training
    model (on every backend) between that input and the core only (:mod:`train_export.training.online_distill`).
    """
    keras.utils.set_random_seed(hp.seed)
    core = build_from_hparams(hp)
    degrade = camera_degrader(hp) if hp.teacher_models and hp.teachers_see_clean else None
    augmenter = build_augmenter(hp, camera=degrade is None)
    in_model = augment_in_model() and bool(augmenter.layers)
    if hp.teacher_models:
        from train_export.training.online_distill import load_teachers, with_teachers

        if teachers is None:
            teachers = load_teachers(hp.teacher_models, hp.input_size, hp.labels,
                                     keras.mixed_precision.global_policy().name)
        inp = keras.Input((hp.input_size, hp.input_size, 1), name="face")
        view = augmenter(inp) if in_model else inp
        # The degradation runs in the model even where the augmenter runs per batch: it has none of the image
        # warps (rotation, zoom, shift) that XLA made slow there (augment_in_model). Its blurs and antialiased
        # resizes were timed under JAX on CPU only (gpu_lease/README.md), not yet on a GPU.
        student_in = degrade(view) if degrade is not None else view
        model = with_teachers(inp, view, student_in, core, teachers, hp.distill_temperature)
        return model, core, (augmenter if augmenter.layers and not in_model else None)
    if not augmenter.layers:
        return core, core, None
    if not in_model:
        return core, core, augmenter
    inp = keras.Input((hp.input_size, hp.input_size, 1), name="face")
    return keras.Model(inp, core(augmenter(inp)), name="trainer"), core, None


def load_init_weights(core: keras.Model, path: Path | str) -> None:
    """Start ``core`` from the weights of the trained model at ``path`` (same architecture and width).

    Raises:
        ValueError: ``path`` is missing, not a Keras model, or its layers do not match ``core``'s.
    """
    donor = load_trained(path, "init_weights")
    theirs, ours = donor.get_weights(), core.get_weights()
    if len(theirs) != len(ours) or any(a.shape != b.shape for a, b in zip(theirs, ours, strict=True)):
        raise ValueError(f"init_weights {path} has another architecture than this run (model/width/depth/se/"
                         "input_size must match the run that made it)")
    core.set_weights(theirs)
    log.info("initialised the model from %s", path)


def epochs_done(run_dir: Path) -> int:
    """Epochs a resumable run has finished, from its ``backup/`` (0 for a new run or an unreadable backup)."""
    try:
        return int(json.loads((Path(run_dir) / "backup" / "training_metadata.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def train(hp: HParams, train_data: FaceData, val_data: FaceData, run_dir: Path, verbose: int = 1,
          time_budget_s: float | None = None) -> Path:
    """Train (or resume) a run in ``run_dir``; returns the path of the best model.

    ``verbose=1`` shows Keras' progress bar; use 2 (one line per epoch) when logging to a file.
    ``time_budget_s`` fits the schedule (at most ``hp.epochs``) into that many seconds (:class:`TimeBudget`);
    such a run cannot be resumed.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    hp_path = run_dir / "hparams.json"
    if time_budget_s is not None:
        if hp.schedule != "cosine":
            raise ValueError("a time budget needs the cosine schedule")
        if hp_path.exists():
            raise ValueError(f"{run_dir} holds a started run; a time-budgeted run cannot resume, use a new --run-dir")
    if (run_dir / "budget.json").exists():  # its hparams.json was rewritten to the epochs it really ran
        raise ValueError(f"{run_dir} holds a finished time-budgeted run, which cannot be resumed; use a new --run-dir")
    gpu = has_gpu()
    policy = training_policy(hp.mixed_precision, gpu)
    # best.json alone (no backup/ yet) counts too: its best.keras would otherwise pass for the new run's.
    if hp_path.exists() and ((run_dir / "backup").exists() or (run_dir / "best.json").exists()):
        check_resume_policy(run_dir, policy)
        saved = HParams.load(hp_path)
        same = saved.override(**hp.execution_only())
        if same != hp:
            diff = {k: (v, getattr(hp, k)) for k, v in same.to_dict().items() if getattr(hp, k) != v}
            raise ValueError(f"{run_dir} holds a run with other hyper-parameters {diff}; use a new --run-dir")
        for name, old in saved.execution_only().items():
            if getattr(hp, name) != old:
                log.info("resuming with %s=%r instead of %r (it changes speed, not what the run learns)", name,
                         getattr(hp, name), old)
    if train_data.labels != hp.labels or val_data.labels != hp.labels:
        raise ValueError("dataset labels differ from hparams.labels")
    soft = None
    if hp.soft_labels:  # checked before hparams.json is written, so a wrong file leaves no half-started run
        from train_export.training.distill import load_soft_labels

        soft = load_soft_labels(hp.soft_labels, train_data)
        log.info("distilling: targets are %.2f x teacher soft labels (%s) + %.2f x one-hot",
                 hp.distill_alpha, hp.soft_labels, 1 - hp.distill_alpha)
    teachers = None
    if hp.teacher_models:  # loaded (and checked) before hparams.json is written, like the soft labels
        from train_export.training.online_distill import load_teachers

        teachers = load_teachers(hp.teacher_models, hp.input_size, hp.labels, policy)
        log.info("distilling online: targets are %.2f x the mean of %d teachers on each batch (T=%g; they see it %s) "
                 "+ %.2f x one-hot", hp.distill_alpha, len(hp.teacher_models), hp.distill_temperature,
                 "before the camera degradation" if hp.teachers_see_clean else "as the student does",
                 1 - hp.distill_alpha)
    hp.save(hp_path)

    with dtype_policy(policy):  # restored afterwards: later models in this process are not mixed
        prep = Preprocessing(input_size=hp.input_size)
        model, core, augmenter = build_training_model(hp, teachers)
        train_seq = FaceSequence(train_data, hp, prep, training=True, soft=soft, augmenter=augmenter)
        val_seq = FaceSequence(val_data, hp, prep, training=False)
        if hp.init_weights:
            load_init_weights(core, hp.init_weights)
        info = describe(core)
        log.info(
            "model %s: %d params, %.1f M MACs; backend %s on %s, %s; %d train / %d val faces",
            info["name"], info["params"], info["macs"] / 1e6, keras.backend.backend(), "GPU" if gpu else "CPU",
            policy, len(train_data), len(val_data),
        )
        (run_dir / "model.json").write_text(json.dumps({**info, "policy": policy}) + "\n")
        done = epochs_done(run_dir)
        if done:
            log.info("resuming %s after epoch %d of %d (from backup/)", run_dir, done, hp.epochs)
        budget = TimeBudget(hp, time_budget_s, run_dir) if time_budget_s is not None else None
        compile_for_training(model, hp, len(train_seq), per_epoch=budget is not None)
        interval = SAVE_INTERVAL_S if budget else 0.0  # seconds between writes of best.keras and curves.png
        callbacks: list[keras.callbacks.Callback] = [
            *([budget] if budget else [keras.callbacks.BackupAndRestore(str(run_dir / "backup"), delete_checkpoint=False)]),
            EpochTimer(),
            keras.callbacks.CSVLogger(str(run_dir / "log.csv"), append=True),
            BestCheckpoint(core, run_dir, min_interval_s=interval, hp=hp),
            Curves(run_dir, min_interval_s=interval),
        ]
        if hp.schedule == "plateau":
            callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_accuracy", factor=0.5, patience=5, mode="max"))
        if hp.early_stop_patience > 0:
            callbacks.append(
                keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=hp.early_stop_patience)
            )
        model.fit(train_seq, validation_data=val_seq, epochs=hp.epochs, callbacks=callbacks, verbose=verbose)
        if budget:  # the manifest copies hparams.json: let it say how many epochs the schedule really had
            hp.override(epochs=budget.total).save(hp_path)
        best = run_dir / "best.keras"
        if not best.exists():  # e.g. no validation improvement recorded because of NaNs
            float32_twin(core, hp).save(best)
        return best
