"""End to end on tiny synthetic data: train, export int8 + float, evaluate, predict, explain, refuse.

The synthetic classes are learnable shapes (a bright square in a class-specific quadrant over noise), so a
one-minute training gives a confident model whose int8 and float predictions can be compared.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras  # noqa: E402

from edge.bundle import FER_LABELS, load_bundle  # noqa: E402
from tests.support.synthetic import LABELS, synthetic_faces  # noqa: E402
from train_export.cli import main  # noqa: E402
from train_export.hparams import HParams  # noqa: E402
from train_export.training.optim import cosine_lr  # noqa: E402

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train_e2e")


@pytest.fixture(scope="module")
def data(workdir):
    x, y = synthetic_faces(60, seed=1)
    np.savez(workdir / "train.npz", x=x, y=y)
    xv, yv = synthetic_faces(15, seed=2)
    np.savez(workdir / "val.npz", x=xv, y=yv)
    return workdir / "train.npz", workdir / "val.npz"


@pytest.fixture(scope="module")
def run_dir(workdir, data):
    """Train through the CLI (mini-Xception width 0.5, augmentation, camera degradation and mixup on).

    A 24x24 input keeps it quick; batches of 4 give enough steps (480) for BatchNorm's moving statistics to
    forget their initial values, which a few dozen steps do not.
    """
    train, val = data
    run = workdir / "run"
    rc = main(["train", "--train", str(train), "--val", str(val), "--run-dir", str(run), "--log-lines",
               "--model", "mini_xception", "--width", "0.5", "--epochs", "8", "--batch-size", "4", "--input-size", "24",
               "--labels", ",".join(LABELS), "--learning-rate", "0.01", "--warmup-epochs", "0",
               "--rotation", "0.01", "--zoom", "0.02", "--translation", "0.02", "--erasing-prob", "0",
               "--camera-prob", "0.2", "--noise", "0.02"])
    assert rc == 0
    return run


@pytest.fixture(scope="module")
def bundle(workdir, run_dir, data):
    train, val = data
    out = workdir / "bundle"
    rc = main(["export", "--model", str(run_dir / "best.keras"), "--out", str(out), "--train", str(train),
               "--val", str(val), "--rep-size", "64", "--margin-pp", "5", "--tta"])
    assert rc == 0
    return out


def test_training_writes_the_run_folder(run_dir):
    for name in ("hparams.json", "best.keras", "best.json", "log.csv", "curves.png", "model.json"):
        assert (run_dir / name).is_file(), name
    rows = list(csv.DictReader((run_dir / "log.csv").read_text().splitlines()))
    assert len(rows) == 8 and float(rows[-1]["val_accuracy"]) > 0.5  # chance is 0.25


def test_export_writes_a_bundle_that_edge_accepts(bundle):
    manifest, model_path = load_bundle(bundle)  # sha256, size, schema, preprocessing id
    assert sorted(p.name for p in bundle.iterdir()) == ["manifest.json", "model.tflite"]
    assert manifest.labels == LABELS
    assert manifest.input.dtype == "int8" and manifest.output.dtype == "int8"
    assert manifest.input.shape == [1, 24, 24, 1] and manifest.prep().input_size == 24
    m = manifest.metrics
    for key in ("accuracy", "macro_f1", "per_class", "n", "float_accuracy", "keras_accuracy", "tta_flip_accuracy"):
        assert key in m, key
    assert m["n"] == 60 and set(m["per_class"]) == set(LABELS)
    assert manifest.training["hparams"]["labels"] == LABELS
    assert manifest.training["train_data"]["n"] == 240
    assert manifest.architecture["params"] > 1000 and manifest.architecture["macs"] > manifest.architecture["params"]
    reports = bundle.parent / "bundle.reports"
    for name in ("evaluation.json", "confusion.png", "model_float.tflite"):
        assert (reports / name).is_file(), name
    report = json.loads((reports / "evaluation.json").read_text())
    assert set(report["models"]) == {"int8", "float", "keras"}
    assert report["accuracy"] == m["accuracy"]
    # Calibrated on the val faces: the device applies the temperature, the metrics say what it did.
    assert manifest.calibration is not None and manifest.calibration.temperature > 0
    assert m["truth"] == "labels" and m["temperature"] == manifest.calibration.temperature
    assert 0 <= m["ece"] <= m["ece_uncalibrated"] + 1e-9 and 0 <= m["ece_crossfit"] <= 1


def test_int8_and_float_agree_and_learned(bundle, data):
    from edge.preprocess import Preprocessing, prepare_batch
    from edge.runtime.classify.classifier import Classifier
    from train_export.export.litert import classifier_from_file

    val = np.load(data[1])
    lite = Classifier(bundle)  # the device's classifier
    prep = Preprocessing(input_size=24)
    flt = classifier_from_file(bundle.parent / "bundle.reports" / "model_float.tflite", LABELS, prep)
    assert flt.manifest.input.dtype == "float32"
    faces = prepare_batch(val["x"], prep)
    assert lite.runtime == "ai_edge_litert"
    p8, pf = lite.classify_faces(faces), flt.classify_faces(faces)
    assert p8.shape == pf.shape == (60, len(LABELS))
    np.testing.assert_allclose(p8.sum(axis=1), 1.0, atol=0.05)
    agree = (p8.argmax(1) == pf.argmax(1)).mean()
    assert agree >= 0.9, agree
    y = np.array([LABELS.index(FER_LABELS[i]) for i in val["y"]])
    assert (p8.argmax(1) == y).mean() > 0.5


def test_evaluate_cli_json_and_png(bundle, run_dir, data, workdir):
    out = workdir / "eval.json"
    png = workdir / "eval.png"
    rc = main(["evaluate", "--model", str(bundle), "--model", str(run_dir / "best.keras"), "--data", str(data[1]),
               "--json", str(out), "--png", str(png), "--tta"])
    assert rc == 0
    report = json.loads(out.read_text())
    for key in ("accuracy", "macro_f1", "n", "per_class", "confusion"):
        assert key in report
    assert report["kind"] == "int8 tflite" and report["n"] == 60
    cm = np.array(report["confusion"])
    assert cm.shape == (4, 4) and cm.sum() == 60
    assert report["accuracy"] == pytest.approx(np.trace(cm) / 60)
    assert set(report["per_class"]["happy"]) == {"precision", "recall", "f1", "support"}
    assert [r["kind"] for r in report["side_by_side"]] == ["int8 tflite", "keras"]
    assert "tta_flip" in report
    assert png.stat().st_size > 1000

    # A bare .tflite (no manifest) of this 24 px model: its input size comes from the model itself.
    bare = bundle.parent / "bundle.reports" / "model_float.tflite"
    rc = main(["evaluate", "--model", str(bare), "--labels", ",".join(LABELS), "--data", str(data[1]),
               "--json", str(workdir / "bare.json")])
    assert rc == 0 and json.loads((workdir / "bare.json").read_text())["n"] == 60


def test_predict_csv_on_face_crops(bundle, data, workdir):
    import cv2

    folder = workdir / "crops"
    folder.mkdir()
    val = np.load(data[1])
    for i in (0, 20, 40):
        cv2.imwrite(str(folder / f"face{i:02d}.png"), val["x"][i])
    out = workdir / "preds.csv"
    assert main(["predict", "--model", str(bundle), "--input", str(folder), "--out", str(out), "--no-detect"]) == 0
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert list(rows[0]) == ["source", "frame", "face", "x", "y", "w", "h", "label", "confidence"] + [
        f"score_{n}" for n in LABELS]
    assert [r["source"] for r in rows] == ["face00.png", "face20.png", "face40.png"]
    for r in rows:
        scores = [float(r[f"score_{n}"]) for n in LABELS]
        assert r["label"] == LABELS[int(np.argmax(scores))]
        assert float(r["confidence"]) == pytest.approx(max(scores), abs=1e-4)


def test_predict_detects_faces_in_a_photo(bundle, workdir):
    import cv2

    from edge.runtime.capture.demo import DemoSource

    folder = workdir / "photos"
    folder.mkdir()
    demo = DemoSource(faces=1)
    cv2.imwrite(str(folder / "astronaut.png"), demo.render(0))
    cv2.imwrite(str(folder / "blank.png"), np.full((200, 200, 3), 90, np.uint8))
    out = workdir / "photo_preds.csv"
    assert main(["predict", "--model", str(bundle), "--input", str(folder), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [r["source"] for r in rows] == ["astronaut.png"]  # one face; the blank image has none
    x, y, w = float(rows[0]["x"]), float(rows[0]["y"]), float(rows[0]["w"])
    px, py, side = demo.positions(0)[0]
    assert px < x + w / 2 < px + side and py < y < py + side  # the face where the demo pasted it


def test_explain_writes_a_gradcam_grid(run_dir, data, workdir):
    import keras

    from train_export.analysis.gradcam import gradcam, target_layer

    model = keras.saving.load_model(run_dir / "best.keras", compile=False)
    assert target_layer(model)
    faces = np.load(data[1])["x"][:4, ::2, ::2]
    maps, probs = gradcam(model, faces)
    assert maps.shape == (4, 24, 24) and maps.min() >= 0 and maps.max() <= 1
    assert probs.shape == (4, 4)
    png = workdir / "cam.png"
    assert main(["explain", "--model", str(run_dir / "best.keras"), "--data", str(data[1]), "--out", str(png),
                 "--per-class", "2"]) == 0
    assert png.stat().st_size > 1000


def test_export_refuses_when_int8_loses_accuracy(workdir, capsys):
    """A crafted model whose float decision hangs on a 1/255 change in mean brightness, which int8 cannot see."""
    import keras

    labels = ["happy", "sad"]
    inp = keras.Input((48, 48, 1))
    x = keras.layers.GlobalAveragePooling2D()(inp)
    dense = keras.layers.Dense(2)
    out = keras.layers.Activation("softmax")(dense(x))
    model = keras.Model(inp, out)
    # float: happy when the mean pixel is above 0.5, sad below; int8 rounds the tiny logits of 127 to a tie
    dense.set_weights([np.array([[1000.0, -1000.0]], np.float32), np.array([-500.0, 500.0], np.float32)])
    folder = workdir / "crafted"
    folder.mkdir()
    model.save(folder / "crafted.keras")
    levels = [127] * 10 + [128] * 10
    xv = np.stack([np.full((48, 48), v, np.uint8) for v in levels])
    yv = np.array([FER_LABELS.index("sad")] * 10 + [FER_LABELS.index("happy")] * 10)
    np.savez(folder / "val.npz", x=xv, y=yv)
    xt = np.concatenate([xv, np.full((5, 48, 48), 0, np.uint8), np.full((5, 48, 48), 255, np.uint8)])
    yt = np.concatenate([yv, [FER_LABELS.index("happy")] * 5, [FER_LABELS.index("sad")] * 5])
    np.savez(folder / "train.npz", x=xt, y=yt)
    out_dir = folder / "bundle"
    rc = main(["export", "--model", str(folder / "crafted.keras"), "--out", str(out_dir), "--labels", ",".join(labels),
               "--train", str(folder / "train.npz"), "--val", str(folder / "val.npz"), "--margin-pp", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: int8 accuracy 50.00%") and "below float 100.00%" in err[0]
    assert not out_dir.exists()


def test_export_and_evaluate_report_bad_input_in_one_line(workdir, data, bundle, capsys):
    rc = main(["export", "--model", str(workdir / "nope.keras"), "--out", str(workdir / "b2"), "--train", str(data[0]),
               "--val", str(data[1])])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "does not exist" in err[0]
    broken = workdir / "broken_bundle"
    shutil.copytree(bundle, broken)
    (broken / "model.tflite").write_bytes(b"tampered")
    rc = main(["evaluate", "--model", str(broken), "--data", str(data[1]), "--json", str(workdir / "x.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "bytes but the manifest says" in err[0]


def test_export_signs_when_asked(workdir, run_dir, data):
    signing = pytest.importorskip("edge.protocol.signing")
    key = workdir / "key.pem"
    signing.generate_keypair(key, workdir / "key.pub")
    out = workdir / "signed"
    rc = main(["export", "--model", str(run_dir / "best.keras"), "--out", str(out), "--train", str(data[0]),
               "--val", str(data[1]), "--rep-size", "32", "--margin-pp", "5", "--sign-key", str(key)])
    assert rc == 0
    assert signing.verify_bundle(out, [workdir / "key.pub"])

    # Exported again, unsigned, into the same folder that also holds other files (as edge/models/default does):
    # the old signature goes (it covers the old manifest), and the reported size is the bundle's alone.
    (out / "README.md").write_text("notes " * 5000)
    rc = main(["export", "--model", str(run_dir / "best.keras"), "--out", str(out), "--train", str(data[0]),
               "--val", str(data[1]), "--rep-size", "32", "--margin-pp", "5"])
    assert rc == 0 and not (out / "manifest.sig").exists()
    report = json.loads((out.parent / "signed.reports" / "evaluation.json").read_text())
    assert report["bundle_bytes"] == (out / "model.tflite").stat().st_size + (out / "manifest.json").stat().st_size


def test_distillation_from_a_teacher_ensemble(workdir, run_dir, bundle, data, capsys):
    """soft-labels scores the training faces with a Keras and an int8 teacher; a student trains on them."""
    train, val = data
    soft_path = workdir / "soft.npz"
    rc = main(["soft-labels", "--teacher", str(run_dir / "best.keras"), "--teacher", str(bundle),
               "--train", str(train), "--val", str(val), "--out", str(soft_path), "--temperature", "2"])
    out = capsys.readouterr().out
    assert rc == 0 and "val ensemble: accuracy" in out, out
    with np.load(soft_path) as npz:
        soft, meta = npz["soft"], json.loads(str(npz["meta"]))
    assert soft.shape == (240, len(LABELS)) and np.allclose(soft.sum(axis=1), 1.0, atol=1e-5)
    assert meta["temperature"] == 2.0 and len(meta["teachers"]) == 2 and meta["val"]["ensemble"]["accuracy"] > 0.5
    y = np.array([LABELS.index(FER_LABELS[i]) for i in np.load(train)["y"]])
    assert (soft.argmax(axis=1) == y).mean() > 0.5  # the trained teachers mostly agree with the labels

    # Labels scored elsewhere join without their models (the weighting is the unit test's; here the CLI path):
    # one file given twice merges to itself, counted as four teachers.
    merged_path = workdir / "merged.npz"
    assert main(["soft-labels", "--add", str(soft_path), "--add", str(soft_path), "--train", str(train),
                 "--out", str(merged_path)]) == 0
    with np.load(merged_path) as npz:
        np.testing.assert_allclose(npz["soft"], soft, atol=1e-6)
        assert len(json.loads(str(npz["meta"]))["teachers"]) == 4
    capsys.readouterr()
    assert main(["soft-labels", "--train", str(train), "--out", str(merged_path)]) == 2
    assert "needs a --teacher model or an --add file" in capsys.readouterr().err
    assert main(["soft-labels", "--add", str(soft_path), "--val", str(val), "--train", str(train),
                 "--out", str(merged_path)]) == 2
    assert "apply to --teacher models" in capsys.readouterr().err
    # Labels softened otherwise are refused before any scoring.
    assert main(["soft-labels", "--teacher", str(run_dir / "best.keras"), "--add", str(soft_path), "--train",
                 str(train), "--temperature", "1", "--out", str(merged_path)]) == 2
    assert "scored at temperature 2.0" in capsys.readouterr().err

    student = workdir / "student"
    rc = main(["train", "--train", str(train), "--val", str(val), "--run-dir", str(student), "--log-lines",
               "--model", "sepse", "--width", "0.25", "--epochs", "1", "--batch-size", "16", "--input-size", "24",
               "--labels", ",".join(LABELS), "--soft-labels", str(soft_path), "--distill-alpha", "0.5"])
    assert rc == 0 and (student / "best.keras").is_file()
    hp = json.loads((student / "hparams.json").read_text())
    assert hp["soft_labels"] == str(soft_path) and hp["distill_alpha"] == 0.5

    # Soft labels of other faces are refused in one line.
    np.savez(workdir / "other.npz", x=np.load(train)["x"][::-1], y=np.load(train)["y"][::-1])
    rc = main(["train", "--train", str(workdir / "other.npz"), "--val", str(val), "--run-dir", str(workdir / "s2"),
               "--model", "sepse", "--width", "0.25", "--epochs", "1", "--input-size", "24",
               "--labels", ",".join(LABELS), "--soft-labels", str(soft_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "other training faces" in err[-1], err


def test_online_distillation_learns_from_the_teacher_alone(workdir, run_dir, data, capsys):
    """With distill_alpha 1 the teacher, run on each augmented batch, is the student's only signal: the student
    still learns the classes, and best.keras holds the student alone."""
    import keras

    train, val = data
    student = workdir / "online_student"
    rc = main(["train", "--train", str(train), "--val", str(val), "--run-dir", str(student), "--log-lines",
               "--model", "mini_xception", "--width", "0.5", "--epochs", "8", "--batch-size", "4", "--input-size", "24",
               "--labels", ",".join(LABELS), "--learning-rate", "0.01", "--warmup-epochs", "0", "--erasing-prob", "0",
               "--teacher-models", str(run_dir / "best.keras"), "--distill-alpha", "1", "--label-smoothing", "0"])
    assert rc == 0
    hp = json.loads((student / "hparams.json").read_text())
    assert hp["teacher_models"] == [str(run_dir / "best.keras")] and hp["distill_temperature"] == 2.0
    model = keras.saving.load_model(student / "best.keras", compile=False)
    assert model.output_shape == (None, len(LABELS))  # the student, not the [student | teachers] trainer
    assert json.loads((student / "best.json").read_text())["val_accuracy"] > 0.6  # chance is 0.25

    # A teacher of another input size is refused in one line, before anything is written.
    other = workdir / "online_other"
    rc = main(["train", "--train", str(train), "--val", str(val), "--run-dir", str(other), "--input-size", "32",
               "--labels", ",".join(LABELS), "--teacher-models", str(run_dir / "best.keras"), "--epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "takes (24, 24) faces" in err[-1], err
    rc = main(["train", "--train", str(train), "--val", str(val), "--run-dir", str(other), "--input-size", "24",
               "--labels", ",".join(LABELS), "--teacher-models", str(workdir / "absent.keras"), "--epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "does not exist" in err[-1], err
    assert not other.exists() or not any(other.iterdir())  # neither refusal left a half-started run


def test_time_budget_cuts_the_schedule_and_records_it(workdir, data):
    """A budget that has run out after the first epoch ends the run there (another epoch would not fit, so it
    does not wait for the two probe epochs), and hparams.json says how many epochs the schedule really had."""
    train, val = data
    run = workdir / "budget_run"
    rc = main(["train", "--train", str(train), "--val", str(val), "--run-dir", str(run), "--log-lines",
               "--model", "vgg", "--width", "0.125", "--depth", "1", "--epochs", "50", "--batch-size", "16",
               "--input-size", "24", "--labels", ",".join(LABELS), "--warmup-epochs", "0",
               "--time-budget", "0.00001"])
    assert rc == 0
    rows = list(csv.DictReader((run / "log.csv").read_text().splitlines()))
    budget = json.loads((run / "budget.json").read_text())
    assert len(rows) == 1 and budget["epochs"] == 1 and budget["max_epochs"] == 50
    assert json.loads((run / "hparams.json").read_text())["epochs"] == 1
    lrs = [float(r["lr"]) for r in rows]
    expected = [cosine_lr(0, 50, HParams(warmup_epochs=0))]  # set before the cut
    assert lrs == pytest.approx(expected, rel=1e-5) and expected[0] == pytest.approx(2e-3, rel=1e-3)
    assert main(["train", "--train", str(train), "--val", str(val), "--run-dir", str(run), "--time-budget", "1",
                 "--labels", ",".join(LABELS), "--input-size", "24"]) != 0  # not resumable
    # nor reusable without a budget: its best.keras would pass for the new run's until beaten
    assert main(["train", "--train", str(train), "--val", str(val), "--run-dir", str(run), "--labels",
                 ",".join(LABELS), "--input-size", "24", "--epochs", "2"]) == 2


def test_an_interrupted_run_resumes_where_it_stopped(workdir, data, monkeypatch, caplog, capsys):
    """Ctrl-C after epoch 2 of 3 keeps the backup; the same command then trains only epoch 3 and says so,
    log.csv holds each epoch once, and another command on that folder is refused. The resumed command may
    change the precision (here to mixed bfloat16), which changes speed and not what the run learns; the
    saved model computes in float32 all the same, and the process's dtype policy is left as it was."""
    import train_export.training.callbacks as callbacks_mod
    import train_export.training.loop as train_mod

    train, val = data
    run = workdir / "resume_run"
    argv = ["train", "--train", str(train), "--val", str(val), "--run-dir", str(run), "--log-lines",
            "--model", "vgg", "--width", "0.125", "--depth", "1", "--epochs", "3", "--batch-size", "16",
            "--input-size", "24", "--labels", ",".join(LABELS), "--warmup-epochs", "0"]
    redraw = callbacks_mod.Curves.on_epoch_end

    def stop_after_two(self, epoch, logs=None):
        redraw(self, epoch, logs)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(callbacks_mod.Curves, "on_epoch_end", stop_after_two)
    assert main(argv) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert train_mod.epochs_done(run) == 2
    monkeypatch.undo()
    with caplog.at_level("INFO", logger="train_export.training.loop"):
        assert main([*argv, "--mixed-precision", "bfloat16"]) == 0
    assert f"resuming {run} after epoch 2 of 3" in caplog.text
    assert "resuming with mixed_precision='bfloat16' instead of True" in caplog.text
    assert "on CPU, mixed_bfloat16;" in caplog.text
    assert json.loads((run / "hparams.json").read_text())["mixed_precision"] == "bfloat16"
    assert json.loads((run / "model.json").read_text())["policy"] == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"
    saved = keras.saving.load_model(run / "best.keras", compile=False)
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}
    rows = list(csv.DictReader((run / "log.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert train_mod.epochs_done(run) == 3 and (run / "best.keras").is_file()
    assert main([*argv[:-2], "--warmup-epochs", "1"]) == 2
    assert "other hyper-parameters" in capsys.readouterr().err


def test_train_refuses_validation_faces_that_are_the_training_faces(workdir, data, capsys):
    """One .npz (or a CSV without Usage, a folder without train/ val/) as both sets would score trained faces."""
    train, _ = data
    rc = main(["train", "--train", str(train), "--val", str(train), "--run-dir", str(workdir / "leak"),
               "--labels", ",".join(LABELS), "--input-size", "24", "--epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "pass a separate --val" in err[-1] and len(err[-1]) < 400, err
    assert not (workdir / "leak" / "hparams.json").exists()


def test_predict_refuses_every_zero(bundle, workdir, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--model", str(bundle), "--input", str(workdir), "--out", str(workdir / "p.csv"),
              "--every", "0"])
    assert exc.value.code == 2 and "must be 1 or more" in capsys.readouterr().err


def test_soup_averages_two_models_of_one_architecture(workdir, run_dir, data, capsys):
    """soup writes the weighted mean of the weights as a run folder that evaluate takes; other shapes refused."""
    base = keras.saving.load_model(run_dir / "best.keras", compile=False)
    shifted_dir = workdir / "shifted"
    shifted_dir.mkdir()
    shifted = keras.saving.load_model(run_dir / "best.keras", compile=False)
    shifted.set_weights([w + 0.01 for w in base.get_weights()])
    shifted.save(shifted_dir / "best.keras")

    out = workdir / "soup"
    rc = main(["soup", "--model", str(run_dir / "best.keras"), "--model", str(shifted_dir / "best.keras"),
               "--coefficients", "0.25,0.75", "--out", str(out)])
    assert rc == 0 and (out / "hparams.json").is_file()
    assert json.loads((out / "soup.json").read_text())["coefficients"] == [0.25, 0.75]
    soup = keras.saving.load_model(out / "best.keras", compile=False)
    for got, want in zip(soup.get_weights(), base.get_weights(), strict=True):
        np.testing.assert_allclose(got, want + 0.0075, atol=1e-6)
    rc = main(["evaluate", "--model", str(out / "best.keras"), "--data", str(data[1]),
               "--json", str(workdir / "soup_eval.json")])
    assert rc == 0 and "accuracy" in capsys.readouterr().out  # the labels came with the copied hparams.json

    other = keras.Sequential([keras.Input((24, 24, 1)), keras.layers.Flatten(), keras.layers.Dense(len(LABELS))])
    other.save(workdir / "other.keras")
    rc = main(["soup", "--model", str(run_dir / "best.keras"), "--model", str(workdir / "other.keras"),
               "--out", str(workdir / "bad_soup")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "a soup needs one architecture" in err[-1], err
    rc = main(["soup", "--model", str(run_dir / "best.keras"), "--model", str(shifted_dir / "best.keras"),
               "--coefficients", "0.5,0.6", "--out", str(workdir / "bad_soup")])
    assert rc == 2 and "sum to 1" in capsys.readouterr().err
    rc = main(["soup", "--model", str(run_dir / "best.keras"), "--model", str(shifted_dir / "best.keras"),
               "--coefficients", "nan,nan", "--out", str(workdir / "bad_soup")])
    assert rc == 2 and "sum to 1" in capsys.readouterr().err
    before = (shifted_dir / "best.keras").read_bytes()
    rc = main(["soup", "--model", str(shifted_dir / "best.keras"), "--model", str(run_dir / "best.keras"),
               "--out", str(shifted_dir)])
    assert rc == 2 and "would overwrite the input model" in capsys.readouterr().err
    assert (shifted_dir / "best.keras").read_bytes() == before  # the input model is untouched


def test_training_on_crowd_votes_and_an_export_scored_against_their_majority(workdir):
    """--label-source ferplus: the vote shares are the targets, the majority picks the best epoch and scores the
    bundle, and the archive's own labels are reported beside it."""
    from train_export.data.ferplus import FERPLUS_COLUMNS

    rng = np.random.default_rng(5)
    folder = workdir / "ferplus_data"
    folder.mkdir()
    for split, n in (("train", 20), ("val", 6)):
        x, y, votes = [], [], []
        for k, name in enumerate(FER_LABELS):
            for _ in range(n):
                face = rng.integers(40, 120, (48, 48)).astype(np.uint8)
                face[4 + 6 * k : 10 + 6 * k, 8:40] = 230
                x.append(face)
                y.append(k)
                row = np.zeros(len(FERPLUS_COLUMNS), np.uint8)
                row[FERPLUS_COLUMNS.index(name)] = 7
                row[rng.integers(len(FERPLUS_COLUMNS))] += 3
                votes.append(row)
        np.savez(folder / f"{split}.npz", x=np.stack(x), y=np.array(y))
        np.save(folder / f"{split}_votes.npy", np.stack(votes))
    np.savez(folder / "ferplus.npz", train_votes=np.load(folder / "train_votes.npy"),
             val_votes=np.load(folder / "val_votes.npy"))
    run = workdir / "ferplus_run"
    rc = main(["train", "--train", str(folder / "train.npz"), "--val", str(folder / "val.npz"), "--run-dir", str(run),
               "--log-lines", "--label-source", "ferplus", "--model", "mini_xception", "--width", "0.5", "--epochs", "2",
               "--batch-size", "8", "--input-size", "24", "--label-smoothing", "0", "--camera-prob", "0"])
    assert rc == 0 and json.loads((run / "hparams.json").read_text())["label_source"] == "ferplus"
    out = workdir / "ferplus_bundle"
    rc = main(["export", "--model", str(run / "best.keras"), "--out", str(out), "--train", str(folder / "train.npz"),
               "--val", str(folder / "val.npz"), "--rep-size", "32", "--margin-pp", "100"])
    assert rc == 0
    manifest, _ = load_bundle(out)
    m = manifest.metrics
    assert m["truth"] == "ferplus_majority" and set(m["label_sets"]) == {"ferplus_majority", "fer2013"}
    assert m["label_sets"]["fer2013"]["n"] == 42 and m["n"] == m["label_sets"]["ferplus_majority"]["n"] <= 42
    assert manifest.calibration is not None and "ferplus_majority" in manifest.calibration.fitted_on
    # The class prior the device may correct for is the vote targets' (what the model learned), not FER2013's y.
    assert manifest.training["train_data"]["source"].endswith("+ FER+ votes")
    assert sum(manifest.training["train_data"]["class_counts"].values()) == 140
