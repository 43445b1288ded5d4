"""The benchmark scripts run end to end on a real int8 bundle and compute their metrics correctly.

They are timed only by themselves; these tests check behaviour (outputs, errors, metric maths), not speed.
"""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

from edge.bundle import FER_LABELS, read_manifest
from tests.support.bundles import with_manifest
from tests.support.paths import REPO

BENCHMARKS = REPO / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    """Import the benchmark scripts as modules (they import each other by file name, as when run as scripts)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import model_latency
    import peer_fer

    return model_latency, peer_fer


@pytest.fixture
def robustness(monkeypatch):
    """benchmarks/robustness.py as a module."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import robustness

    return robustness


def test_device_model_returns_probabilities_and_flip_tta_is_symmetric(bench, tiny_bundle):
    model_latency, _ = bench
    model = model_latency.DeviceModel(tiny_bundle)
    rng = np.random.default_rng(1)
    face = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    probs = model.predict(face)
    assert probs.shape == (len(FER_LABELS),)
    assert np.all(probs >= 0) and abs(float(probs.sum()) - 1.0) < 0.05
    # A left-right symmetric face is its own mirror image, so flip TTA must not change the answer.
    sym = np.concatenate([face[:, :24], face[:, :24][:, ::-1]], axis=1)
    np.testing.assert_allclose(model.predict_flip(sym), model.predict(sym), atol=1e-6)
    # What it times is what the device computes: the same probabilities as edge.runtime.classify.classifier for the same face.
    from edge.runtime.classify.classifier import Classifier

    np.testing.assert_allclose(model.predict(face), Classifier(tiny_bundle).classify_faces(face[None])[0], atol=1e-6)


def test_model_latency_prints_percentiles_on_synthetic_faces(bench, tiny_bundle, tmp_path, capsys):
    model_latency, _ = bench
    rc = model_latency.main(
        ["--model", str(tiny_bundle), "--n", "20", "--warmup", "2", "--data", str(tmp_path / "absent.npz"), "--flip-tta"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "synthetic faces" in out
    for label in ("invoke()", "per face", "flip TTA"):
        line = next(ln for ln in out.splitlines() if ln.startswith(label))
        assert "p50" in line and "p99" in line and "(n=20)" in line
    arch = read_manifest(tiny_bundle).architecture  # the arch line comes from the manifest
    assert f"params {arch['params']:,}" in out and f"MACs {arch['macs']:,}" in out
    assert "tiny-test-0" in out


def test_model_latency_bad_bundle_is_one_line_error(bench, tmp_path, capsys):
    model_latency, _ = bench
    rc = model_latency.main(["--model", str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error:") and "does not exist" in err and "\n" not in err


def test_macro_f1_matches_hand_computation(bench):
    _, peer_fer = bench
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 1, 1, 1])
    # class 0: P=1, R=1/2 -> F1 2/3; class 1: P=2/3, R=1 -> F1 4/5; classes 2..6 neither true nor predicted: 0,
    # averaged over all 7 labels as train_export.analysis.evaluate.scores does, so both report the same number.
    assert peer_fer.macro_f1(y_true, y_pred, 7) == pytest.approx((2 / 3 + 4 / 5) / 7)
    assert peer_fer.macro_f1(np.array([0, 1]), np.array([0, 0]), 2) == pytest.approx((2 / 3 + 0) / 2)
    from train_export.analysis.evaluate import scores

    labels = [str(i) for i in range(7)]
    assert peer_fer.macro_f1(y_true, y_pred, 7) == pytest.approx(scores(y_true, y_pred, labels)["macro_f1"])


def test_fer_input_is_64px_in_minus_one_to_one(bench):
    _, peer_fer = bench
    white = peer_fer.fer_input(np.full((48, 48), 255, np.uint8))
    black = peer_fer.fer_input(np.zeros((48, 48), np.uint8))
    assert white.shape == (1, 64, 64, 1) and white.dtype == np.float32
    np.testing.assert_allclose(white, 1.0)
    np.testing.assert_allclose(black, -1.0)


def test_evaluate_batch_and_single_paths_agree(bench):
    _, peer_fer = bench
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 48, 48), dtype=np.uint8)
    y = rng.integers(0, 7, 30)

    def predict(face: np.ndarray) -> np.ndarray:  # a deterministic "model": class from mean brightness
        return np.eye(7)[int(face.mean()) % 7]

    single = peer_fer.evaluate(predict, x, y, latency_calls=500)
    batch = peer_fer.evaluate(predict, x, y, latency_calls=500, predict_batch=lambda xs: np.stack([predict(f) for f in xs]))
    assert single[:2] == batch[:2]
    expected = np.mean([int(f.mean()) % 7 == t for f, t in zip(x, y, strict=True)])
    assert single[0] == pytest.approx(expected)
    assert len(single[2]) == 500 and len(batch[2]) == 500


def test_peer_fer_runs_our_bundle_and_prints_a_table(bench, tiny_bundle, tmp_path, capsys):
    _, peer_fer = bench
    rng = np.random.default_rng(2)
    data = tmp_path / "faces.npz"
    np.savez(data, x=rng.integers(0, 256, (40, 48, 48), dtype=np.uint8), y=rng.integers(0, 7, 40).astype(np.uint8))
    rc = peer_fer.main(["--model", str(tiny_bundle), "--data", str(data), "--fer", "none", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0
    row = next(ln for ln in out.splitlines() if ln.startswith("| ours: tiny-test-0"))
    assert "| 40 |" in row and "| 500 |" in row  # 40 faces scored, latency over the 500-call minimum
    rows = json.loads((tmp_path / "r.json").read_text())
    assert rows[0]["n"] == 40 and 0.0 <= rows[0]["accuracy"] <= 1.0


def test_peer_fer_rejects_data_without_labels(bench, tmp_path, capsys):
    _, peer_fer = bench
    data = tmp_path / "nolabels.npz"
    np.savez(data, x=np.zeros((3, 48, 48), np.uint8))
    rc = peer_fer.main(["--data", str(data), "--fer", "none"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "'y'" in err


def test_corruptions_are_seeded_keep_the_face_format_and_change_it(robustness):
    faces = np.random.default_rng(3).integers(0, 256, (6, 48, 48), dtype=np.uint8)
    for name in robustness.CORRUPTIONS:
        a = robustness.corrupt(faces, name, seed=5)
        assert a.shape == faces.shape and a.dtype == np.uint8, name
        np.testing.assert_array_equal(a, robustness.corrupt(faces, name, seed=5))  # same seed, same faces
        assert np.array_equal(a, faces) == (name == "clean"), name
    # Geometric variants replicate the border: a flat face stays flat, so no black band reaches the model.
    flat = np.full((1, 48, 48), 120, np.uint8)
    for name in ("roll 15°", "roll 30°", "shift 8 %", "loose crop ×0.85", "loose crop ×0.7", "blur σ2", "16 px face"):
        np.testing.assert_array_equal(robustness.corrupt(flat, name), flat, err_msg=name)
    # Every variant has its own seed, and the 14 of the first table keep theirs (their faces are not redrawn).
    assert sorted(robustness.SEED_ORDER) == sorted(robustness.CORRUPTIONS)
    assert list(robustness.SEED_ORDER[:14]) == sorted(set(robustness.CORRUPTIONS) - set(robustness.SEED_ORDER[14:]))
    noisy = robustness.corrupt(flat, "noise σ10", seed=1).astype(float)
    assert 8 < noisy.std() < 12 and abs(noisy.mean() - 120) < 1


def test_robustness_table_matches_the_device_classifier(robustness, tiny_bundle, tmp_path, capsys):
    from edge.runtime.classify.classifier import Classifier

    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 256, (30, 48, 48), dtype=np.uint8), rng.integers(0, 7, 30).astype(np.uint8)
    data = tmp_path / "faces.npz"
    np.savez(data, x=x, y=y)
    rc = robustness.main(["--model", str(tiny_bundle), "--data", str(data), "--only", "blur σ1", "--only", "JPEG q20",
                          "--json", str(tmp_path / "r.json"), "--png", str(tmp_path / "r.png")])
    out = capsys.readouterr().out
    assert rc == 0
    table = json.loads((tmp_path / "r.json").read_text())["table"]
    assert list(table) == ["clean", "blur σ1", "JPEG q20"]  # the reference first, then what --only asked for
    clf = Classifier(tiny_bundle)
    for name, row in table.items():
        expected = np.mean(clf.classify_faces(robustness.corrupt(x, name)).argmax(axis=1) == y)
        assert row["tiny-test-0"]["accuracy"] == pytest.approx(expected), name
        assert f"| {name} |" in out
    assert "| **mean of corrupted** |" in out and (tmp_path / "r.png").stat().st_size > 0


def test_robustness_bad_data_is_one_line_error(robustness, tmp_path, capsys):
    rc = robustness.main(["--data", str(tmp_path / "absent.npz")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "absent.npz" in err and "\n" not in err


def test_arch_latency_times_each_variant_through_the_device_path(monkeypatch, tmp_path, capsys):
    pytest.importorskip("tensorflow")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import arch_latency

    variants = ["width=0.25,input_size=24", "width=0.25,input_size=24,stem_stride=2"]
    rc = arch_latency.main([a for v in variants for a in ("--variant", v)] + ["--rounds", "2", "--n", "3", "--warmup", "1"])
    assert rc == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == variants
    macs = [int(r.split("|")[3].replace(",", "")) for r in rows]
    assert macs[1] < macs[0]  # the strided stem is the cheaper one
    assert all(float(r.split("|")[5]) > 0 for r in rows)


def test_arch_latency_bad_variant_is_one_line_error(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import arch_latency

    assert arch_latency.main(["--variant", "widht=1.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "widht" in err and len(err.strip().splitlines()) == 1


def test_train_step_profile_times_each_part_of_a_step(monkeypatch, capsys):
    pytest.importorskip("tensorflow")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import train_step_profile

    assert train_step_profile.main(["--variants", "sepse:0.25:stem_stride=2", "--batch-size", "8", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "sepse:0.25:stem_stride=2 (sepse w0.25 stem_stride=2)" in out
    rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in out.splitlines() if line.startswith("| ")}
    parts = [p for p in rows if p != "part"]
    assert parts[0].startswith("batch") and parts[1].startswith("augmenter") and parts[2].startswith("train step")
    assert parts[3] == "forward only"
    for part in (parts[2], parts[3]):  # the model's own work always costs something
        first, per_batch = (float(v) for v in rows[part])
        assert first > 0 and per_batch > 0


@pytest.mark.parametrize("script", ["train_speed", "train_step_profile"])
def test_training_benchmarks_refuse_a_bad_variant_in_one_line(monkeypatch, capsys, script):
    """Both name variants as ``model[:width[:name=value...]]`` (``model_spec.parse_variant``)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    main = importlib.import_module(script).main
    # refused before any data is loaded or model built
    assert main(["--variants", "sepse:1", "vgg:1:depht=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "depht" in err and len(err.strip().splitlines()) == 1


def test_teacher_speed_times_float32_and_the_mixed_policy_on_teachers_loaded_as_train_does(monkeypatch, tmp_path,
                                                                                           capsys):
    pytest.importorskip("tensorflow")
    import keras

    from train_export.hparams import HParams
    from train_export.model.spec import build_from_hparams

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import teacher_speed

    hp = HParams(model="sepse", width=0.25, depth=1, input_size=24)
    (tmp_path / "t").mkdir()
    keras.utils.set_random_seed(0)
    build_from_hparams(hp).save(tmp_path / "t" / "best.keras")
    hp.save(tmp_path / "t" / "hparams.json")
    teacher = str(tmp_path / "t" / "best.keras")
    assert teacher_speed.main(["--teacher", teacher, "--batch-size", "4", "--steps", "2"]) == 0
    rows = [line.split("|")[1:4] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    (_, f32_s, f32_diff), (policy, mixed_s, diff) = rows[1:]
    assert policy.strip() == "mixed_bfloat16" and float(f32_s) > 0 and float(mixed_s) > 0
    assert float(f32_diff) == 0 and 0 < float(diff) < 0.1  # bfloat16 really ran (not float32 twice), and close
    assert keras.mixed_precision.global_policy().name == "float32"
    assert teacher_speed.main(["--teacher", str(tmp_path / "missing.keras")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1


def _with_counts(tiny_bundle, dst):
    """A copy of the tiny bundle whose manifest records training class counts (FER2013's), as train_export writes."""
    counts = [3995, 436, 4097, 7215, 4830, 3171, 4965]
    return with_manifest(tiny_bundle, dst, training={"train_data": {"class_counts": dict(zip(FER_LABELS, counts,
                                                                                             strict=True))}})


def test_prior_correction_scores_and_chooses_tau_by_macro_f1(monkeypatch, tiny_bundle, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import prior_correction as pc

    y = np.array([0, 0, 1, 1, 2])
    s = pc.scores(y, np.array([0, 1, 1, 1, 0]), 4)
    assert s["accuracy"] == pytest.approx(0.6) and s["recall"][:3] == [0.5, 1.0, 0.0] and np.isnan(s["recall"][3])
    preds = {0.0: np.array([0, 0, 0, 0, 2]), 0.5: np.array([0, 0, 1, 1, 2]), 1.0: np.array([0, 0, 1, 1, 2])}
    assert pc.best_tau(y, preds) == 0.5  # the better macro-F1; of two equal ones, the weaker correction
    rng = np.random.default_rng(2)
    x, labels = rng.integers(0, 256, (24, 48, 48), dtype=np.uint8), rng.integers(0, 7, 24)
    np.savez(tmp_path / "faces.npz", x=x, y=labels)
    bundle = _with_counts(tiny_bundle, tmp_path / "b")
    assert pc.main(["--model", str(bundle), "--data", str(tmp_path / "faces.npz"), "--taus", "0.5,1",
                    "--json", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "p.json").read_text())
    assert list(result["table"]) == ["0", "0.5", "1"] and result["cross_check"]["splits"] == 20
    from edge.runtime.classify.classifier import Classifier

    for tau in ("0", "1"):  # the device classifier with that correction, nothing recomputed on the side
        pred = Classifier(bundle, prior_correction=float(tau)).classify_faces(x).argmax(axis=1)
        assert result["table"][tau]["accuracy"] == pytest.approx(np.mean(pred == labels))
    assert "| disgust |" in out and "Held-out check" in out
    assert pc.main(["--model", str(tiny_bundle), "--data", str(tmp_path / "faces.npz")]) == 2  # no class counts
    err = capsys.readouterr().err
    assert err.startswith("error:") and "class counts" in err and len(err.strip().splitlines()) == 1


def test_generalisation_scores_every_configuration_through_the_device_path(monkeypatch, tiny_bundle, tmp_path,
                                                                          capsys):
    """Real faces (the demo's, cropped by BlazeFace), the tiny bundle: every configuration, paired device crops."""
    import cv2

    from edge.preprocess import crop_face
    from edge.runtime.capture.demo import DemoSource
    from edge.runtime.classify.classifier import Classifier
    from edge.runtime.detect.blazeface import BlazeFaceDetector

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import generalisation as gen
    import robustness

    frame = cv2.cvtColor(DemoSource(faces=2).render(0), cv2.COLOR_BGR2GRAY)
    det = BlazeFaceDetector(min_face_size=20)
    faces = [crop_face(frame, d.box) for d in det.detect(frame)]
    x = np.stack(faces + [f[:, ::-1].copy() for f in faces])
    y = np.arange(len(x)) % 7
    np.savez(tmp_path / "faces.npz", x=x, y=y)
    bundle = _with_counts(tiny_bundle, tmp_path / "b")
    rc = gen.main(["--model", str(bundle), "--data", str(tmp_path / "faces.npz"), "--only", "roll 30°",
                   "--json", str(tmp_path / "g.json")])
    out = capsys.readouterr().out
    assert rc == 0, out
    result = json.loads((tmp_path / "g.json").read_text())
    table, tau = result["table"], result["taus"]["tiny-test-0"]
    assert list(table) == ["clean", "roll 30°"] and result["found"]["clean"] == 1.0 and len(result["rolls"]) == len(x)
    assert [c.split(" ", 1)[1] for c in table["clean"]] == [
        "direct", f"direct + prior {tau:g}", "FER box", "device", "device + align", f"device + align + prior {tau:g}"]
    clf, cropper = Classifier(bundle), Classifier(bundle, align_eyes=True)
    rolled = robustness.corrupt(x, "roll 30°")
    dev = gen.device_faces(rolled, det, cropper, 4)
    for config, faces_in in (("direct", rolled), ("FER box", dev.fer_box), ("device", dev.plain),
                             ("device + align", dev.aligned)):
        want = np.mean(clf.classify_faces(faces_in).argmax(axis=1) == y)
        assert table["roll 30°"][f"tiny-test-0 {config}"]["accuracy"] == pytest.approx(want), config
    assert not np.array_equal(dev.plain, dev.aligned)  # the rolled faces were turned back
    assert np.abs(dev.fer_box.astype(int) - rolled.astype(int)).mean() < 3  # up x4 and down again: the same face
    assert "eye-line roll on" in out and "| roll 30° |" in out
    assert gen.main(["--model", str(tmp_path / "absent"), "--data", str(tmp_path / "faces.npz")]) == 2
    assert capsys.readouterr().err.startswith("error:")


def test_calibration_benchmark_reports_the_device_temperature(monkeypatch, tiny_bundle, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import calibration

    from edge.runtime.classify.calibration import temperature_scale
    from edge.runtime.classify.classifier import Classifier

    bundle = with_manifest(tiny_bundle, tmp_path / "calibrated",
                           calibration={"method": "temperature", "temperature": 0.25, "fitted_on": "test"})
    rng = np.random.default_rng(4)
    x, labels = rng.integers(0, 256, (40, 48, 48), dtype=np.uint8), rng.integers(0, 7, 40)
    np.savez(tmp_path / "faces.npz", x=x, y=labels)
    assert calibration.main(["--model", str(bundle), "--data", str(tmp_path / "faces.npz"), "--json",
                             str(tmp_path / "c.json"), "--png", str(tmp_path / "c.png")]) == 0
    result = json.loads((tmp_path / "c.json").read_text())[0]
    raw = Classifier(tiny_bundle).classify_faces(x)
    from train_export.analysis.calibration import expected_calibration_error

    assert result["temperature"] == 0.25 and result["n"] == 40
    assert result["ece_raw"] == pytest.approx(expected_calibration_error(raw, labels))
    assert result["ece_calibrated"] == pytest.approx(expected_calibration_error(temperature_scale(raw, 0.25), labels))
    shares = [t["uncertain_share"] for t in result["thresholds"]]
    assert shares == sorted(shares)  # a higher threshold never names more faces
    assert "| uncertain_below |" in capsys.readouterr().out and (tmp_path / "c.png").stat().st_size > 1000
    assert calibration.main(["--data", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_detect_interval_scores_each_interval_on_the_same_stream(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import detect_interval
    from model_latency import DEFAULT_FACES

    if not DEFAULT_FACES.is_file():
        pytest.skip("needs the FER2013 validation faces beside the repository")
    out = tmp_path / "r.json"
    assert detect_interval.main(["--data", str(DEFAULT_FACES), "--limit", "4", "--clip", "6", "--every", "1", "3",
                                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["every"] for r in rows] == [1, 3]
    every1, every3 = rows
    assert every1["detector_runs_per_frame"] == 1.0
    # While a face is carried the detector runs on at most one frame in 3 (empty frames run it every time).
    assert every3["detector_runs_per_frame"] < 1.0
    for r in rows:
        assert 0 <= r["acc_seen"] <= 1 and 0 <= r["coverage"] <= 1 and r["found"] > 0
    assert "| clean | 3 |" in capsys.readouterr().out


def test_frame_walk_names_each_stage_of_a_frame_from_the_camera_to_the_broker(monkeypatch, capsys):
    from tests.support.broker import mosquitto_available

    if not mosquitto_available():
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import frame_walk

    assert frame_walk.main(["--frames", "16", "--warmup", "6"]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines() if ": " in line)
    loop = lines[next(k for k in lines if k.startswith("frame loop"))].split(", ")
    threads = lines[next(k for k in lines if k.startswith("publishing threads"))].split(", ")
    # Capture, detection, classification, tracking and the sink on the loop; the outbox pump on its own thread.
    for module in ("edge.runtime.capture.demo", "edge.runtime.daemon", "edge.runtime.detect.carry",
                   "edge.runtime.classify.classifier", "edge.runtime.track", "edge.runtime.publish.mqtt"):
        assert module in loop, module
    assert "edge.runtime.publish.pump" in threads
    assert int(lines["one frame, camera to broker"].split()[0]) == len(set(loop) | set(threads))
