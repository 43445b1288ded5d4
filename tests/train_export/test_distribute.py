"""Data-parallel training on two logical CPU devices (tf.distribute.MirroredStrategy): one epoch on two devices
trains the same model family as on one, with a comparable loss; the choice and its scaling are recorded.

Each run is a process of its own: splitting the CPU into logical devices is process-wide and irreversible."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from tests.support.paths import REPO as ROOT
from tests.support.synthetic import LABELS, synthetic_faces  # noqa: E402
from train_export.hparams import HParams  # noqa: E402
from train_export.training.distribute import Placement, placement  # noqa: E402

pytestmark = pytest.mark.slow


def train_on_two_logical_cpus(train: Path, val: Path, run: Path, data_parallel: str) -> subprocess.CompletedProcess:
    """``python -m train_export train`` in a process whose CPU is split into two logical TensorFlow devices."""
    args = ["train", "--train", str(train), "--val", str(val), "--run-dir", str(run), "--log-lines",
            "--model", "mini_xception", "--width", "0.5", "--epochs", "1", "--batch-size", "8", "--input-size", "24",
            "--labels", ",".join(LABELS), "--learning-rate", "0.005", "--warmup-epochs", "0", "--mix-prob", "0",
            "--mixed-precision", "false", "--data-parallel", data_parallel]
    code = ("import sys; from train_export.training.distribute import logical_cpus; logical_cpus(2); "
            "from train_export.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)


def test_one_epoch_on_two_devices_trains_the_same_model_with_a_comparable_loss(tmp_path):
    x, y = synthetic_faces(48, seed=1)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    xv, yv = synthetic_faces(12, seed=2)
    np.savez(tmp_path / "val.npz", x=xv, y=yv)
    runs = {}
    for mode in ("true", "false"):
        run = tmp_path / f"run-{mode}"
        r = train_on_two_logical_cpus(tmp_path / "train.npz", tmp_path / "val.npz", run, mode)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[mode] = run
    two, one = runs["true"], runs["false"]
    d2 = json.loads((two / "distribute.json").read_text())
    d1 = json.loads((one / "distribute.json").read_text())
    assert d2["replicas"] == 2 and len(d2["devices"]) == 2 and all("CPU" in d for d in d2["devices"])
    assert d2["global_batch_size"] == 16 and d2["peak_learning_rate"] == pytest.approx(0.01)
    assert d1 == {"replicas": 1, "devices": [], "global_batch_size": 8, "peak_learning_rate": 0.005}
    # hparams.json keeps the per-device values both runs were started with.
    assert json.loads((two / "hparams.json").read_text())["batch_size"] == 8
    m2, m1 = (json.loads((r / "model.json").read_text()) for r in (two, one))
    assert (m2["name"], m2["params"], m2["macs"]) == (m1["name"], m1["params"], m1["macs"])
    loss2, loss1 = (float(next(csv.DictReader((r / "log.csv").read_text().splitlines()))["loss"]) for r in (two, one))
    assert math.isfinite(loss2) and math.isfinite(loss1)
    assert abs(loss2 - loss1) <= 0.25 * loss1, (loss2, loss1)
    assert (two / "best.keras").is_file()


def test_a_run_resumes_only_on_as_many_devices_as_it_started_on(tmp_path):
    from train_export.training.distribute import prepare

    (tmp_path / "distribute.json").write_text(json.dumps({"replicas": 2}))
    with pytest.raises(ValueError, match="started on 2 device"):
        prepare(HParams(data_parallel=False), tmp_path)


def test_modes_and_scaling():
    assert placement(False) == Placement()
    with pytest.raises(ValueError, match="auto, true or false"):
        placement("yes")
    # This process has one CPU device and no GPU: auto stays on one device, true cannot be honoured.
    assert placement("auto").replicas == 1
    with pytest.raises(ValueError, match="at least two devices"):
        placement(True)
    hp = HParams(batch_size=32, learning_rate=0.001)
    scaled = Placement(("/device:GPU:0", "/device:GPU:1", "/device:GPU:2")).scaled(hp)
    assert (scaled.batch_size, scaled.learning_rate) == (96, pytest.approx(0.003))
    assert Placement().scaled(hp) is hp
