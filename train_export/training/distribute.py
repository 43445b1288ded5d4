"""Data-parallel training over every accelerator the process sees, through the framework's own distribution API.

On the TensorFlow backend the run is built, compiled and fitted inside a ``tf.distribute.MirroredStrategy`` over
the chosen devices: each device holds a copy of the model, takes its share of every batch, and the gradients are
summed across devices (all-reduce) before one optimizer step, so the copies stay identical.

Choice (``HParams.data_parallel``, the ``--data-parallel`` flag of ``train``):

* ``"auto"`` (default): every GPU when more than one is visible, else one device as before;
* ``true``: every GPU, or without GPUs every logical CPU device when there are several (how the tests and
  ``benchmarks/data_parallel.py`` run it on a CPU); an error if there is only one device;
* ``false``: one device.

Scaling: each device takes ``batch_size`` faces a step, so the global batch is ``batch_size x devices`` and the
peak learning rate is ``learning_rate x devices`` (the linear scaling rule, which keeps the per-face step size
of the one-device run; the schedule's warm-up epochs ease the larger rate in). An epoch has ``devices`` times
fewer steps. ``hparams.json`` keeps the per-device values the run was started with; ``distribute.json`` in the run
folder records the devices and the global values, and a run resumes only on as many devices as it started on
(the global batch would change otherwise). Online distillation (``teacher_models``) loads its teachers outside
the strategy and is refused with data parallelism. Other backends train on one device (``true`` is refused).
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from train_export.hparams import HParams

log = logging.getLogger(__name__)

#: The values ``HParams.data_parallel`` accepts.
MODES = ("auto", True, False)


@dataclass(frozen=True)
class Placement:
    """Where a run computes.

    Attributes:
        devices: Names of the devices the model is copied to (empty: the backend's default, one device).
        strategy: The ``tf.distribute.Strategy`` over them, or None for one device.
    """

    devices: tuple[str, ...] = ()
    strategy: Any = None

    @property
    def replicas(self) -> int:
        """Copies of the model trained in step (1 without data parallelism)."""
        return max(1, len(self.devices))

    def scope(self) -> contextlib.AbstractContextManager:
        """Context in which the model, its optimizer and its metrics must be created and compiled."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def scaled(self, hp: HParams) -> HParams:
        """``hp`` with the global batch size and the scaled peak learning rate (see the module docstring)."""
        if self.replicas == 1:
            return hp
        return hp.override(batch_size=hp.batch_size * self.replicas, learning_rate=hp.learning_rate * self.replicas)


def _tf_devices(mode: str | bool) -> tuple[str, ...]:
    import tensorflow as tf

    gpus = tuple(d.name for d in tf.config.list_logical_devices("GPU"))
    if mode == "auto":
        return gpus if len(gpus) > 1 else ()
    if len(gpus) > 1:
        return gpus
    cpus = tuple(d.name for d in tf.config.list_logical_devices("CPU"))
    if not gpus and len(cpus) > 1:
        return cpus
    raise ValueError(f"data_parallel=true needs at least two devices; this process sees {len(gpus)} GPU(s) and "
                     f"{len(cpus)} logical CPU device(s)")


def placement(mode: str | bool) -> Placement:
    """The devices and strategy for ``HParams.data_parallel`` = ``mode`` on the installed Keras backend.

    Raises:
        ValueError: ``mode`` is not one of :data:`MODES`, or ``true`` where it cannot be honoured.
    """
    if not (mode == "auto" or isinstance(mode, bool)):
        raise ValueError(f"data_parallel must be auto, true or false, not {mode!r}")
    if mode is False:
        return Placement()
    if keras.backend.backend() != "tensorflow":
        if mode is True:
            raise ValueError(f"data_parallel=true is implemented for the TensorFlow backend, not "
                             f"{keras.backend.backend()}")
        return Placement()
    devices = _tf_devices(mode)
    if not devices:
        return Placement()
    import tensorflow as tf

    return Placement(devices, tf.distribute.MirroredStrategy(list(devices)))


def prepare(hp: HParams, run_dir: Path) -> Placement:
    """Choose the placement of the run in ``run_dir``, record it in ``distribute.json`` and log it.

    Raises:
        ValueError: a bad ``data_parallel``; teachers with data parallelism; a resumed run on another number of
            devices than it started on.
    """
    where = placement(hp.data_parallel)
    record = Path(run_dir) / "distribute.json"
    if record.exists():
        before = json.loads(record.read_text(encoding="utf-8")).get("replicas", 1)
        if before != where.replicas:
            raise ValueError(f"{run_dir} started on {before} device(s) and would resume on {where.replicas}: its "
                             "global batch and learning rate would change; resume where it started, or set "
                             "data_parallel to match")
    if where.replicas > 1 and hp.teacher_models:
        raise ValueError("online distillation (teacher_models) does not run data-parallel; set data_parallel=false")
    run = where.scaled(hp)
    record.write_text(json.dumps({"replicas": where.replicas, "devices": list(where.devices),
                                  "global_batch_size": run.batch_size, "peak_learning_rate": run.learning_rate},
                                 indent=1) + "\n", encoding="utf-8")
    if where.replicas > 1:
        log.info("data-parallel on %d devices (%s): global batch %d, peak learning rate %g",
                 where.replicas, ", ".join(where.devices), run.batch_size, run.learning_rate)
    return where


def logical_cpus(n: int) -> None:
    """Split the CPU into ``n`` logical TensorFlow devices, for tests and benchmarks that try data parallelism
    without accelerators. Call it before TensorFlow initialises its devices; it is process-wide and irreversible,
    so run it in a process of its own."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
