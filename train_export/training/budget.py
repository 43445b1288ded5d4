"""A time budget (a GPU lent for minutes): size the cosine schedule to the time the first epochs take."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import keras
import numpy as np

from train_export.hparams import HParams
from train_export.training.optim import cosine_lr

log = logging.getLogger(__name__)


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
