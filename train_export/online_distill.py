"""Online ("consistent") distillation: the teachers score each training batch as the student sees it.

:mod:`train_export.distill` labels the *clean* training faces once, so a student whose face is flipped, shifted,
blurred, erased or mixed with another still learns the clean face's target. Here the frozen teachers run on the
same augmented and mixed batch as the student, inside the training step, so every view gets its own target
(Beyer et al., "Knowledge distillation: A good teacher is patient and consistent", CVPR 2022, found this
consistency, with long schedules, to be what lets a student reach its teacher). Each step costs the teachers'
forward passes on top: cheap on a GPU, about twice the step on a CPU with teachers of the student's size.

The training model is the student and the teachers side by side on one input (after the augmenter where that
runs in the model). Its output is ``[student probabilities | teachers' mean probabilities]``, 2 x classes wide:
:class:`OnlineDistillLoss` splits it, blends ``(1 - alpha) * label + alpha * teachers`` and takes the
cross-entropy of the student part, and :func:`student_accuracy` is the ``accuracy`` the logs, the best
checkpoint and early stopping read. Only the student (the core model) is saved as ``best.keras``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
from keras import ops

log = logging.getLogger(__name__)


def load_teachers(paths: list[str], input_size: int, labels: list[str]) -> list[keras.Model]:
    """Load frozen teacher models, checked against the student's input size and labels.

    Raises:
        ValueError: a teacher is missing or unloadable, or has another input size, output size or label order.
    """
    from train_export.evaluate import keras_labels

    teachers = []
    for i, path in enumerate(paths):
        if not Path(path).is_file():
            raise ValueError(f"teacher model {path} does not exist; give trained .keras models (e.g. runs/X/best.keras)")
        try:
            model = keras.saving.load_model(path, compile=False)
        except Exception as exc:  # Keras raises many types for a wrong or damaged file
            raise ValueError(f"teacher model {path} is not a loadable .keras model ({exc})") from None
        side = tuple(model.input_shape[1:3])
        if side != (input_size, input_size) or int(model.output_shape[-1]) != len(labels):
            raise ValueError(f"teacher model {path} takes {side} faces and gives {model.output_shape[-1]} classes; "
                             f"the student needs {input_size}x{input_size} and {len(labels)}")
        keras_labels(path, labels)  # raises when the teacher's run (hparams.json) has another label order
        model.trainable = False
        model.name = f"teacher_{i}"  # two teachers of one architecture must not share a layer name here
        teachers.append(model)
    return teachers


def soften(probs, temperature: float):
    """``softmax(log(probs) / T)`` as Keras ops (the in-graph twin of :func:`train_export.distill.soften`)."""
    return ops.softmax(ops.log(ops.clip(probs, 1e-7, 1.0)) / temperature, axis=-1)


def with_teachers(inp: keras.KerasTensor, student_in: keras.KerasTensor, core: keras.Model,
                  teachers: list[keras.Model], temperature: float) -> keras.Model:
    """The training model: ``[core(x) | mean softened teacher(x)]`` on the same (augmented) ``student_in``."""
    student = core(student_in)
    taught = [soften(t(student_in, training=False), temperature) for t in teachers]
    mean = taught[0] if len(taught) == 1 else keras.layers.Average()(taught)
    mean = ops.stop_gradient(mean)
    return keras.Model(inp, keras.layers.Concatenate(axis=-1)([student, mean]), name="online_distiller")


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
