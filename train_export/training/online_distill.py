"""Online ("consistent") distillation: the teachers score each augmented training batch inside the step.

:mod:`train_export.training.distill` labels the *clean* training faces once, so a student whose face is flipped, shifted,
blurred, erased or mixed with another still learns the clean face's target. Here the frozen teachers run on the
same augmented and mixed batch as the student, inside the training step, so every view gets its own target
(Beyer et al., "Knowledge distillation: A good teacher is patient and consistent", CVPR 2022, found this
consistency, with long schedules, to be what lets a student reach its teacher). Each step costs the teachers'
forward passes on top: cheap on a GPU, about twice the step on a CPU with teachers of the student's size.

The training model is the student and the teachers side by side on one input (after the augmenter where that
runs in the model). With ``teachers_see_clean`` (the default) the camera degradation
(:class:`~train_export.data.augment.CameraDegrade`: blur, small faces, sensor noise) moves out of the augmenter into the
student's branch, after the teachers' view: the teachers score the augmented face before it is degraded, and the
student learns that target from the degraded face. Teachers shown the degraded face pass on their own fragility: a
student distilled that way from teachers trained without the degradation fell 3.9 pp below its starting model under
sensor noise (``benchmarks/robustness.py``, the 2026-11-27 GPU lease).

The output is ``[student probabilities | teachers' mean probabilities]``, 2 x classes wide:
:class:`OnlineDistillLoss` splits it, blends ``(1 - alpha) * label + alpha * teachers`` and takes the
cross-entropy of the student part, and :func:`student_accuracy` is the ``accuracy`` the logs, the best
checkpoint and early stopping read. Only the student (the core model) is saved as ``best.keras``.
"""

from __future__ import annotations

import logging

import keras
from keras import ops

from train_export.model.spec import load_trained

log = logging.getLogger(__name__)


def load_teachers(paths: list[str], input_size: int, labels: list[str], policy: str = "float32"
                  ) -> list[keras.Model]:
    """Load frozen teacher models, checked against the student's input size and labels.

    Under a mixed ``policy`` (the run's :func:`~train_export.training.loop.training_policy`) each teacher whose run folder
    has its ``hparams.json`` is rebuilt to compute in that policy, like the student: a saved model computes in
    float32 whatever it trained in, and on a CPU with bfloat16 the teachers' forward passes, most of an online
    step there, take 0.44 s instead of 0.69 s a batch of 64 (the 2026-11-27 GPU teachers, ``vgg`` w1 d3 plus
    ``sepse`` w3 d3; probabilities within 0.016; ``benchmarks/teacher_speed.py``).

    Raises:
        ValueError: a teacher is missing or unloadable, or has another input size, output size or label order.
    """
    from train_export.analysis.evaluate import keras_labels

    teachers = []
    for i, path in enumerate(paths):
        model = load_trained(path, "teacher model")
        side = tuple(model.input_shape[1:3])
        if side != (input_size, input_size) or int(model.output_shape[-1]) != len(labels):
            raise ValueError(f"teacher model {path} takes {side} faces and gives {model.output_shape[-1]} classes; "
                             f"the student needs {input_size}x{input_size} and {len(labels)}")
        keras_labels(path, labels)  # raises when the teacher's run (hparams.json) has another label order
        model = _in_policy(model, path, policy)
        model.trainable = False
        model.name = f"teacher_{i}"  # two teachers of one architecture must not share a layer name here
        teachers.append(model)
    return teachers


def _in_policy(model: keras.Model, path: str, policy: str) -> keras.Model:
    """``model`` rebuilt from its run's hparams.json to compute in ``policy``; itself when that is not possible."""
    # Always rebuilt under a mixed policy: a model loaded while one is global reports it, yet its layers keep the
    # float32 of the saved file.
    if policy == "float32":
        return model
    from train_export.analysis.evaluate import run_hparams
    from train_export.hparams import HParams
    from train_export.model.spec import rebuilt_in_policy

    saved = run_hparams(path)
    if not saved:
        log.info("teacher %s computes in float32: without its run's hparams.json it cannot be rebuilt in %s",
                 path, policy)
        return model
    try:
        return rebuilt_in_policy(model, HParams.from_dict(saved), policy)
    except (ValueError, TypeError) as exc:  # a hand-edited or foreign hparams.json: train on, slower
        log.warning("teacher %s computes in float32: its run's hparams.json does not rebuild it in %s (%s)",
                    path, policy, exc)
        return model


def soften(probs, temperature: float):
    """``softmax(log(probs) / T)`` as Keras ops (the in-graph twin of :func:`train_export.training.distill.soften`)."""
    return ops.softmax(ops.log(ops.clip(probs, 1e-7, 1.0)) / temperature, axis=-1)


def with_teachers(inp: keras.KerasTensor, teacher_in: keras.KerasTensor, student_in: keras.KerasTensor,
                  core: keras.Model, teachers: list[keras.Model], temperature: float) -> keras.Model:
    """The training model: ``[core(student_in) | mean softened teacher(teacher_in)]``.

    ``teacher_in`` is the augmented face and ``student_in`` the same face as the student sees it: the same tensor,
    or ``teacher_in`` after a training-only degradation (inference, e.g. validation, leaves them equal).
    """
    student = core(student_in)
    taught = [ops.cast(soften(t(teacher_in, training=False), temperature), "float32") for t in teachers]
    # float32 merges: under a mixed policy a layer casts its inputs to float16/bfloat16, the loss's precision.
    mean = taught[0] if len(taught) == 1 else keras.layers.Average(dtype="float32")(taught)
    mean = ops.stop_gradient(mean)
    return keras.Model(inp, keras.layers.Concatenate(axis=-1, dtype="float32")([student, mean]),
                       name="online_distiller")


class OnlineDistillLoss(keras.losses.Loss):
    """Cross-entropy of the student part against ``(1 - alpha) * y_true + alpha * teachers``."""

    def __init__(self, n_classes: int, alpha: float, label_smoothing: float = 0.0, name: str = "online_distill",
                 **kwargs: object):
        super().__init__(name=name, **kwargs)
        self.n_classes, self.alpha, self.label_smoothing = n_classes, alpha, label_smoothing
        self.ce = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing, reduction=None)

    def call(self, y_true, y_pred):
        """Per-face loss (the reduction and sample weights are Keras')."""
        student, teachers = y_pred[:, : self.n_classes], y_pred[:, self.n_classes :]
        target = (1.0 - self.alpha) * ops.cast(y_true, student.dtype) + self.alpha * ops.cast(teachers, student.dtype)
        return self.ce(target, student)

    def get_config(self) -> dict:
        """Keras serialisation (the backup of a resumable run stores the compiled loss)."""
        return {**super().get_config(), "n_classes": self.n_classes, "alpha": self.alpha,
                "label_smoothing": self.label_smoothing}


def student_accuracy(n_classes: int) -> keras.metrics.Metric:
    """Accuracy of the student part of the output against the (one-hot or blended) label, named ``accuracy``."""

    def accuracy(y_true, y_pred):
        student = y_pred[:, :n_classes]
        return ops.cast(ops.equal(ops.argmax(y_true, axis=-1), ops.argmax(student, axis=-1)), "float32")

    return keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")
