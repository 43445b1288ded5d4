"""The run folder's callbacks: best checkpoint, curves, epoch timing."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import keras
import numpy as np

from train_export.hparams import HParams
from train_export.training.precision import float32_twin

log = logging.getLogger(__name__)


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
