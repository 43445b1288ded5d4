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
it sizes its cosine schedule to the budget after timing its first epochs (:class:`train_export.training.budget.TimeBudget`) and records
the epochs it ran as ``epochs`` in ``hparams.json`` (and the budget in ``budget.json``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import keras

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
)
from train_export.training.budget import TimeBudget
from train_export.training.callbacks import BestCheckpoint, Curves, EpochTimer
from train_export.training.distribute import prepare as prepare_devices
from train_export.training.optim import make_loss, make_optimizer
from train_export.training.precision import check_resume_policy, float32_twin, has_gpu, training_policy

log = logging.getLogger(__name__)

# A time-budgeted run (a lent GPU: epochs of seconds) writes best.keras and curves.png at most this often.
SAVE_INTERVAL_S = 20.0


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
        # resizes were timed under JAX on CPU only (train_export/checkpoints/gpu_lease/README.md at commit 5f98811),
        # not yet on a GPU.
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
    ``time_budget_s`` fits the schedule (at most ``hp.epochs``) into that many seconds (:class:`train_export.training.budget.TimeBudget`);
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
    own = "FER+ vote shares" if train_data.targets is not None else "one-hot"  # what the data's own targets are
    soft = None
    if hp.soft_labels:  # checked before hparams.json is written, so a wrong file leaves no half-started run
        from train_export.training.distill import load_soft_labels

        soft = load_soft_labels(hp.soft_labels, train_data)
        log.info("distilling: targets are %.2f x teacher soft labels (%s) + %.2f x %s",
                 hp.distill_alpha, hp.soft_labels, 1 - hp.distill_alpha, own)
    teachers = None
    if hp.teacher_models:  # loaded (and checked) before hparams.json is written, like the soft labels
        from train_export.training.online_distill import load_teachers

        teachers = load_teachers(hp.teacher_models, hp.input_size, hp.labels, policy)
        log.info("distilling online: targets are %.2f x the mean of %d teachers on each batch (T=%g; they see it %s) "
                 "+ %.2f x %s", hp.distill_alpha, len(hp.teacher_models), hp.distill_temperature,
                 "before the camera degradation" if hp.teachers_see_clean else "as the student does",
                 1 - hp.distill_alpha, own)
    devices = prepare_devices(hp, run_dir)  # checked (and recorded) before hparams.json, like the teachers
    hp.save(hp_path)
    run_hp = devices.scaled(hp)  # the global batch size and learning rate (hp keeps the per-device values)

    # The dtype policy is restored afterwards: later models in this process are not mixed.
    with dtype_policy(policy), devices.scope():
        prep = Preprocessing(input_size=hp.input_size)
        model, core, augmenter = build_training_model(hp, teachers)
        train_seq = FaceSequence(train_data, run_hp, prep, training=True, soft=soft, augmenter=augmenter)
        val_seq = FaceSequence(val_data, run_hp, prep, training=False)
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
        compile_for_training(model, run_hp, len(train_seq), per_epoch=budget is not None)
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
