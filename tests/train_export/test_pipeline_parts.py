"""Augmentation determinism, training batches (mixup, CutMix, class weights) and the shared preprocessing.

The last test is "one preprocessing, two users": a face pasted into a camera frame and cropped by the
device's path (:func:`edge.preprocess.crop_face`) is pixel for pixel what training sees for that face.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edge.bundle import FER_LABELS
from edge.preprocess import Preprocessing, crop_face, normalize, to_gray
from train_export.data.load import FaceData, load_dataset
from train_export.hparams import HParams, parse_assignments

keras = pytest.importorskip("keras")


def _faces(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 48), dtype=np.uint8)


def _augment(hp: HParams, x: np.ndarray) -> np.ndarray:
    from train_export.data.augment import build_augmenter

    return keras.ops.convert_to_numpy(build_augmenter(hp)(x, training=True))


def test_augmenter_is_seeded_and_keeps_shapes():
    x = normalize(_faces(8))[..., None]
    hp = HParams(seed=3)
    a, b = _augment(hp, x), _augment(HParams(seed=3), x)
    assert a.shape == x.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)  # same seed, same output
    assert not np.allclose(a, _augment(HParams(seed=4), x))  # another seed, another output
    assert not np.allclose(a, x)  # it does change the faces
    assert a.min() >= -1e-6 and a.max() <= 1 + 1e-6  # jitter stays in the [0, 1] input range


def test_augmenter_can_be_switched_off_and_is_identity_at_inference():
    from train_export.data.augment import build_augmenter

    hp = HParams(flip=False, rotation=0, translation=0, zoom=0, framing_prob=0, brightness=0, contrast=0,
                 erasing_prob=0, camera_prob=0, noise=0)
    assert build_augmenter(hp).layers == []
    x = normalize(_faces(4))[..., None]
    out = keras.ops.convert_to_numpy(build_augmenter(HParams())(x, training=False))
    np.testing.assert_allclose(out, x)


def test_camera_degradation_blurs_shrinks_and_adds_noise_within_range():
    from train_export.data.augment import CameraDegrade, build_augmenter

    x = normalize(_faces(32))[..., None]
    layer = CameraDegrade(prob=1.0, noise=0.0, seed=1)
    out = keras.ops.convert_to_numpy(layer(x, training=True))
    # Random faces are pure texture: every blur or downscale removes most of the pixel-to-pixel variation.
    assert np.all(np.abs(np.diff(out, axis=2)).mean(axis=(1, 2, 3)) < 0.6 * np.abs(np.diff(x, axis=2)).mean())
    flat = np.full((16, 48, 48, 1), 0.5, np.float32)  # no black border creeps in
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(flat, training=True)), flat, atol=1e-5)
    noisy = keras.ops.convert_to_numpy(CameraDegrade(prob=0.0, noise=0.04, seed=2)(flat, training=True))
    stds = (noisy - 0.5).std(axis=(1, 2, 3))
    assert stds.max() <= 0.04 * 1.1 and stds.max() > stds.min() + 0.005  # a sigma per face, up to the maximum
    again = keras.ops.convert_to_numpy(CameraDegrade(prob=1.0, noise=0.04, seed=1)(x, training=True))
    np.testing.assert_array_equal(again, keras.ops.convert_to_numpy(CameraDegrade(prob=1.0, noise=0.04, seed=1)(x, training=True)))
    assert again.min() >= 0.0 and again.max() <= 1.0
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    assert isinstance(build_augmenter(HParams()).layers[-1], CameraDegrade)  # on by default
    assert isinstance(build_augmenter(HParams(camera_prob=0, noise=0.02)).layers[-1], CameraDegrade)
    assert not any(isinstance(lay, CameraDegrade) for lay in build_augmenter(HParams(camera_prob=0, noise=0)).layers)


def test_reframe_magnifies_and_moves_faces_within_the_detector_range(monkeypatch):
    """A detector's framing: a centred square comes out x0.7 to x1.3 as wide and off-centre by <= 10 %."""
    from train_export.data import augment
    from train_export.data.augment import Reframe, build_augmenter

    x = np.zeros((64, 48, 48, 1), np.float32)
    x[:, 19:29, 19:29] = 1.0  # a 10 px square about the centre
    out = keras.ops.convert_to_numpy(Reframe(1.0, seed=1)(x, training=True))
    widths = np.sqrt((out > 0.5).sum(axis=(1, 2, 3)) / 100.0)
    assert widths.min() >= 0.65 and widths.max() <= 1.35 and widths.max() - widths.min() > 0.4  # both ways
    for face in out[:, :, :, 0]:
        ys, xs = np.nonzero(face > 0.5)
        assert abs(ys.mean() - 23.5) <= 0.1 * 48 * 1.3 + 1 and abs(xs.mean() - 23.5) <= 0.1 * 48 * 1.3 + 1
    flat = np.full((8, 48, 48, 1), 0.5, np.float32)  # the border is replicated: no black band creeps in
    np.testing.assert_allclose(keras.ops.convert_to_numpy(Reframe(1.0, seed=2)(flat, training=True)), flat)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(Reframe(1.0, seed=2)(x, training=False)), x)
    monkeypatch.setattr(augment, "FRAMING_SCALES", (1.0, 1.0))
    monkeypatch.setattr(augment, "FRAMING_SHIFT", 0.0)
    rand = normalize(_faces(4))[..., None]  # scale 1 and no shift is the identity, so the geometry is centred
    np.testing.assert_allclose(keras.ops.convert_to_numpy(Reframe(1.0, seed=2)(rand, training=True)), rand, atol=1e-5)
    assert any(isinstance(lay, Reframe) for lay in build_augmenter(HParams()).layers)  # on by default
    assert not any(isinstance(lay, Reframe) for lay in build_augmenter(HParams(framing_prob=0)).layers)


def test_hparams_records_without_framing_read_as_trained_without_it(tmp_path):
    old = HParams().to_dict()
    del old["framing_prob"]  # a run saved before the field existed
    (tmp_path / "hparams.json").write_text(json.dumps(old))
    assert HParams.load(tmp_path / "hparams.json").framing_prob == 0.0
    (tmp_path / "base.json").write_text(json.dumps({"width": 1.5}))  # a partial --hparams base: the default
    assert HParams.load(tmp_path / "base.json").framing_prob == 0.3
    with pytest.raises(ValueError, match="framing_prob"):
        HParams(framing_prob=1.5)


def test_hparams_refuse_out_of_range_camera_degradation():
    with pytest.raises(ValueError, match="camera_prob"):
        HParams(camera_prob=1.5)
    with pytest.raises(ValueError, match="noise"):
        HParams(noise=-0.1)


def test_parse_assignments_reads_typed_values_and_refuses_bad_pairs():
    """The benchmarks' model variants ("width=0.5,se=false") are HParams fields with typed values."""
    assert parse_assignments("width=0.5, se=false,stem_stride=2") == {"width": 0.5, "se": False, "stem_stride": 2}
    assert parse_assignments("depth=3:se=true", sep=":") == {"depth": 3, "se": True}
    for bad in ("width", "colour=2", "se=maybe", "stem_stride=3"):
        with pytest.raises(ValueError):
            parse_assignments(bad)


def test_parse_variant_names_a_model_its_width_and_other_hyper_parameters():
    """The benchmarks' ``model[:width[:name=value...]]`` variants; a bad one is a ValueError naming it."""
    from train_export.model.spec import parse_variant

    assert parse_variant("vgg:1:depth=3") == ("vgg", 1.0, {"depth": 3})
    assert parse_variant("sepse") == ("sepse", 1.0, {})
    assert parse_variant("sepse:1.5:stem_stride=2:se=false") == ("sepse", 1.5, {"stem_stride": 2, "se": False})
    bad = {"vggx:1": "unknown model 'vggx'", "sepse:wide": "width 'wide' is not a positive number",
           "sepse:0": "width '0' is not", "sepse:1:depth": "'depth' is not name=value",
           "sepse:1:stem_stride=3": "stem_stride=3 is not one of"}
    for text, message in bad.items():
        with pytest.raises(ValueError, match=f"^variant '{text}': .*{message}"):
            parse_variant(text)


def test_hparams_refuse_values_of_the_wrong_type_by_name():
    """A hand-edited hparams.json ("epochs": "55") is a one-line ValueError, not a TypeError deep in Keras."""
    with pytest.raises(ValueError, match=r"epochs='55' must be of type int"):
        HParams.from_dict({"epochs": "55"})
    with pytest.raises(ValueError, match="flip"):
        HParams(flip=1)
    with pytest.raises(ValueError, match="labels"):
        HParams(labels="angry,happy")
    assert HParams(width=2, jit_compile=False).width == 2  # an int is a valid float


def test_init_weights_copies_a_trained_model_and_refuses_another_architecture(tmp_path):
    from train_export.model.spec import build_model
    from train_export.training.loop import load_init_weights

    donor = build_model("mini_xception", 48, 7, width=0.5)
    donor.save(tmp_path / "donor.keras")
    target = build_model("mini_xception", 48, 7, width=0.5)
    load_init_weights(target, tmp_path / "donor.keras")
    for a, b in zip(donor.get_weights(), target.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="another architecture"):
        load_init_weights(build_model("mini_xception", 48, 7, width=1.0), tmp_path / "donor.keras")
    with pytest.raises(ValueError, match="does not exist"):
        load_init_weights(target, tmp_path / "absent.keras")
    (tmp_path / "junk.keras").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a loadable"):
        load_init_weights(target, tmp_path / "junk.keras")


def _data(counts: list[int]) -> FaceData:
    y = np.concatenate([np.full(c, k) for k, c in enumerate(counts)])
    return FaceData(_faces(len(y), seed=1), y, list(FER_LABELS))


def test_class_weights_favour_rare_classes_with_mean_one():
    from train_export.data.batches import class_weights

    counts = np.array([400, 40, 400, 800, 400, 300, 500])
    for mode in ("sqrt", "balanced"):
        w = class_weights(counts, mode)
        assert (w * counts).sum() / counts.sum() == pytest.approx(1.0)
        assert w[1] == w.max() and w[3] == w.min()
    assert class_weights(counts, "balanced")[1] / class_weights(counts, "balanced")[3] == pytest.approx(20)
    np.testing.assert_allclose(class_weights(counts, "none"), 1.0)


def test_training_batches_mix_labels_and_weights():
    from train_export.data.batches import FaceSequence

    data = _data([20, 5, 20, 30, 20, 15, 10])
    hp = HParams(batch_size=16, mixup_alpha=0.4, cutmix_alpha=0.4, mix_prob=1.0, class_weight="sqrt", seed=5)
    seq = FaceSequence(data, hp, Preprocessing(), training=True)
    assert len(seq) == 7  # 120 // 16: the incomplete last batch is dropped, so every step has one shape
    mixed = 0
    for i in range(len(seq)):
        x, y, w = seq[i]
        assert x.shape == (16, 48, 48, 1) and y.shape == (16, 7) and x.dtype == np.float32
        np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-6)  # soft labels stay distributions
        assert (y >= 0).all() and (w > 0).all()
        mixed += int((y.max(axis=1) < 1 - 1e-6).any())
    assert mixed >= 5  # mix_prob 1: (nearly) every batch mixes two faces
    tiny = FaceSequence(_data([1, 1, 1, 1, 1, 1, 1]), hp, Preprocessing(), training=True)
    assert len(tiny) == 1 and len(tiny[0][1]) == 7  # fewer faces than a batch: one smaller batch, not none
    x1, y1, w1 = FaceSequence(data, hp, Preprocessing(), training=True)[3]
    x2, y2, w2 = FaceSequence(data, hp, Preprocessing(), training=True)[3]
    np.testing.assert_array_equal(x1, x2)  # seeded: the same batch twice
    np.testing.assert_array_equal(y1, y2)


def test_validation_batches_are_plain_and_ordered():
    from train_export.data.batches import FaceSequence

    data = _data([3, 3, 3, 3, 3, 3, 3])
    seq = FaceSequence(data, HParams(batch_size=8, mix_prob=1.0), Preprocessing(), training=False)
    assert len(seq) == 3 and len(seq[2][1]) == 5  # validation keeps every face: 8 + 8 + 5
    x, y, w = seq[0]
    np.testing.assert_array_equal(x[..., 0], normalize(data.x[:8]))
    np.testing.assert_array_equal(y.argmax(axis=1), data.y[:8])
    np.testing.assert_allclose(w, 1.0)


@pytest.mark.parametrize("zoom", [1, 4])
def test_device_crop_equals_training_face(tmp_path, zoom):
    """One preprocessing, two users: device crop of a pasted face == the face as the training loaders give it."""
    face = _faces(1, seed=9)[0]
    big = np.kron(face, np.ones((zoom, zoom), np.uint8))  # pixel replication: area-downscaling undoes it exactly
    side = big.shape[0]
    frame = np.random.default_rng(1).integers(0, 256, (480, 640), dtype=np.uint8)
    x0, y0 = 200, 120
    frame[y0 : y0 + side, x0 : x0 + side] = big
    bgr = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)  # what a camera hands the device
    prep = Preprocessing()
    # the detector box whose shared square crop is exactly the pasted face
    box_side = side / prep.crop_scale
    box = (x0 + (side - box_side) / 2, y0 + (side - box_side) / 2, box_side, box_side)
    device = crop_face(to_gray(bgr), box, prep)

    fer_id = FER_LABELS.index("happy")
    np.savez(tmp_path / "faces.npz", x=face[None], y=np.array([fer_id]))
    (tmp_path / "faces.csv").write_text(f"emotion,pixels\n{fer_id},{' '.join(map(str, face.ravel()))}\n")
    (tmp_path / "tree" / "happy").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "tree" / "happy" / "f.png"), big)
    for source in ("faces.npz", "faces.csv", "tree"):
        trained = load_dataset(tmp_path / source).x[0]
        assert np.abs(device.astype(int) - trained.astype(int)).max() <= 1, source
    np.testing.assert_array_equal(device, face)
    # Eye-level alignment is part of the shared crop: with the eyes level it turns nothing, so the aligned device
    # path gives training's face too (tests/test_align_prior.py turns tilted faces).
    level = ((x0 + 0.3 * side, y0 + 0.4 * side), (x0 + 0.7 * side, y0 + 0.4 * side))
    np.testing.assert_array_equal(crop_face(to_gray(bgr), box, prep, level), face)
    from train_export.data.batches import FaceSequence

    x, _, _ = FaceSequence(load_dataset(tmp_path / "faces.npz"), HParams(), prep, training=False)[0]
    np.testing.assert_array_equal(x[0, ..., 0], normalize(device, prep))  # the model input itself


def test_soften_keeps_order_and_flattens_with_temperature():
    from train_export.training.distill import soften

    p = np.array([[0.7, 0.2, 0.1], [0.05, 0.9, 0.05]], dtype=np.float32)
    np.testing.assert_allclose(soften(p, 1.0), p, atol=1e-6)
    hot = soften(p, 4.0)
    np.testing.assert_allclose(hot.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(hot.argmax(axis=1), p.argmax(axis=1))
    assert (hot.max(axis=1) < p.max(axis=1)).all()  # flatter
    with pytest.raises(ValueError):
        soften(p, 0.0)


def test_training_targets_blend_teacher_soft_labels_and_validation_ignores_them():
    from train_export.data.batches import FaceSequence

    data = _data([4, 4, 4, 4, 4, 4, 4])
    soft = np.random.default_rng(0).dirichlet(np.ones(7), size=len(data)).astype(np.float32)
    hp = HParams(batch_size=7, mix_prob=0.0, class_weight="none", distill_alpha=0.25)
    seq = FaceSequence(data, hp, Preprocessing(), training=True, soft=soft)
    idx = seq.order[:7]
    _, y, _ = seq[0]
    np.testing.assert_allclose(y, 0.75 * np.eye(7)[data.y[idx]] + 0.25 * soft[idx], atol=1e-6)
    _, yv, _ = FaceSequence(data, hp, Preprocessing(), training=False, soft=soft)[0]
    np.testing.assert_array_equal(yv, np.eye(7)[data.y[:7]])
    with pytest.raises(ValueError, match="do not fit"):
        FaceSequence(data, hp, Preprocessing(), training=True, soft=soft[:5])
    with pytest.raises(ValueError, match="distill_alpha"):
        HParams(distill_alpha=1.5)


def test_soft_labels_file_belongs_to_its_dataset(tmp_path):
    from train_export.data.load import DataError
    from train_export.training.distill import load_soft_labels, save_soft_labels

    data = _data([3, 3, 3, 3, 3, 3, 3])
    soft = np.full((len(data), 7), 1 / 7, dtype=np.float32)
    path = tmp_path / "soft.npz"
    save_soft_labels(path, soft, data, {"teachers": ["t.keras"]})
    np.testing.assert_array_equal(load_soft_labels(path, data), soft)
    shuffled = FaceData(data.x, data.y[::-1].copy(), data.labels)
    with pytest.raises(DataError, match="other training faces"):
        load_soft_labels(path, shuffled)
    with pytest.raises(DataError, match="do not exist"):
        load_soft_labels(tmp_path / "missing.npz", data)
    (tmp_path / "bad.npz").write_bytes(b"not an archive")
    with pytest.raises(DataError, match="not a soft-labels file"):
        load_soft_labels(tmp_path / "bad.npz", data)
    np.save(tmp_path / "bare.npy", soft)  # an array, not an archive: refused the same way
    with pytest.raises(DataError, match="not a soft-labels file"):
        load_soft_labels(tmp_path / "bare.npy", data)


def test_merged_soft_labels_weigh_each_file_by_its_teachers(tmp_path):
    """Two teachers scored on one machine and three on another merge into the five-teacher mean."""
    from train_export.data.load import DataError
    from train_export.training.distill import (
        load_soft_labels_with_meta,
        merge_soft_labels,
        save_soft_labels,
        soften,
    )

    data = _data([2, 2, 2, 2, 2, 2, 2])
    rng = np.random.default_rng(1)
    probs = [rng.dirichlet(np.ones(7), size=len(data)) for _ in range(5)]
    soft = [soften(p, 2.0) for p in probs]
    save_soft_labels(tmp_path / "gpu.npz", np.mean(soft[:2], axis=0), data,
                     {"teachers": ["t1", "t2"], "temperature": 2.0, "flip": True})
    save_soft_labels(tmp_path / "cpu.npz", np.mean(soft[2:], axis=0), data,
                     {"teachers": ["t3", "t4", "t5"], "temperature": 2.0, "flip": True})
    parts = [load_soft_labels_with_meta(tmp_path / name, data) for name in ("gpu.npz", "cpu.npz")]
    merged, meta = merge_soft_labels(parts)
    np.testing.assert_allclose(merged, np.mean(soft, axis=0), atol=1e-6)  # not the mean of the two files' means
    assert meta == {"teachers": ["t1", "t2", "t3", "t4", "t5"], "temperature": 2.0, "flip": True}
    save_soft_labels(tmp_path / "t1.npz", soft[0], data, {"teachers": ["t1"], "temperature": 1.0, "flip": True})
    with pytest.raises(DataError, match="differ in temperature"):
        merge_soft_labels([parts[0], load_soft_labels_with_meta(tmp_path / "t1.npz", data)])


def test_cosine_lr_warms_up_peaks_and_decays_to_one_percent():
    from train_export.training.optim import cosine_lr

    hp = HParams(learning_rate=1e-3, warmup_epochs=2)
    lrs = [cosine_lr(e, 20, hp) for e in range(21)]
    assert lrs[0] == pytest.approx(5e-5) and lrs[2] == pytest.approx(1e-3, rel=5e-3)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:], strict=False))
    assert lrs[20] == pytest.approx(1e-5) and min(lrs) >= 1e-5 and lrs[19] < 3e-5
    # Each epoch runs at the rate of its middle: a one-epoch schedule (no warm-up) at half the peak, and the
    # last epoch of a 3-epoch schedule after 2 of warm-up decayed to about half, not still at the peak.
    assert cosine_lr(0, 1, hp) == pytest.approx(1e-3 * (0.01 + 0.495))
    assert cosine_lr(2, 3, hp) == pytest.approx(1e-3 * (0.01 + 0.495))


def test_vgg_teacher_builds_and_counts():
    pytest.importorskip("keras")
    from train_export.model.spec import build_model, describe

    info = describe(build_model("vgg", 48, 7, width=1.0, depth=2))
    assert 4.5e6 < info["params"] < 5e6 and 4.5e8 < info["macs"] < 5e8


def test_strided_stem_keeps_every_weight_shape_and_costs_fewer_macs(tmp_path):
    """A stride-1 sepse model can start a stride-2 run (``init_weights``): same weights, cheaper stem."""
    from train_export.model.spec import build_model, describe
    from train_export.training.loop import load_init_weights

    full = build_model("sepse", 48, 7, width=0.5, stem_stride=1)
    strided = build_model("sepse", 48, 7, width=0.5, stem_stride=2)
    assert [w.shape for w in full.get_weights()] == [w.shape for w in strided.get_weights()]
    assert describe(strided)["macs"] < describe(full)["macs"]
    # Both end at the same 3x3 grid: the strided stem replaces the first stage's max-pool, it does not add one.
    pooled = [m.get_layer(index=-4).input.shape for m in (full, strided)]  # the head's global pooling
    assert pooled[0] == pooled[1] == (None, 3, 3, 128)
    assert strided.predict(_faces(2)[..., None].astype("float32") / 255, verbose=0).shape == (2, 7)
    full.save(tmp_path / "full.keras")
    load_init_weights(strided, tmp_path / "full.keras")
    for a, b in zip(full.get_weights(), strided.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="stem_stride"):
        HParams(stem_stride=3)
    with pytest.raises(ValueError, match="stem_stride"):
        build_model("sepse", 48, 7, stem_stride=4)
    assert HParams.from_dict({"width": 1.5}).stem_stride == 1  # hparams.json of older runs still load


def test_training_batches_can_carry_the_augmenter_and_validation_batches_never_do():
    """The JAX/PyTorch path: FaceSequence applies the augmenter to training batches after mixing."""
    from train_export.data.augment import build_augmenter
    from train_export.data.batches import FaceSequence

    data = _data([10] * 7)
    hp = HParams(batch_size=16, mix_prob=0.0, seed=2)
    aug = build_augmenter(hp)
    plain = FaceSequence(data, hp, Preprocessing(), training=True)[1][0]
    x, y, w = FaceSequence(data, hp, Preprocessing(), training=True, augmenter=aug)[1]
    assert x.shape == plain.shape and x.dtype == np.float32 and not np.allclose(x, plain)
    assert x.min() >= -1e-6 and x.max() <= 1 + 1e-6
    val = FaceSequence(data, hp, Preprocessing(), training=False, augmenter=aug)[0][0]
    np.testing.assert_array_equal(val, FaceSequence(data, hp, Preprocessing(), training=False)[0][0])


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_a_training_step_runs_under_mixed_precision_with_every_augmentation(policy):
    """A GPU trains under mixed_float16 (``train``): the augmenter, camera noise and erasing included, must run.

    Keras' RandomErasing cannot run in float16 on TensorFlow, and the camera noise once mixed float32 with
    float16; the augmenter now computes in float32 under any policy and the model casts its input.
    """
    from train_export.model.spec import dtype_policy
    from train_export.training.loop import build_training_model, compile_for_training

    with dtype_policy(policy):
        hp = HParams(width=0.25, batch_size=8, erasing_prob=0.5, camera_prob=1.0, noise=0.04, mix_prob=0.0)
        trainer, core, augmenter = build_training_model(hp)
        compile_for_training(trainer, hp, 2)
        x = normalize(_faces(8))[..., None]
        y = np.eye(7, dtype=np.float32)[np.arange(8) % 7]
        aug = augmenter or trainer.get_layer("augment")
        out = keras.ops.convert_to_numpy(aug(x, training=True))
        assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
        assert aug.compute_dtype == "float32"  # the container too: it would cast its input to the policy's
        assert core.compute_dtype == policy.removeprefix("mixed_")
        loss = trainer.train_on_batch(x, y)[0] if augmenter is None else trainer.train_on_batch(out, y)[0]
        assert np.isfinite(loss)
    assert keras.mixed_precision.global_policy().name == "float32"


def test_precision_choices_map_to_keras_policies_and_bad_ones_are_refused():
    from train_export.training.precision import training_policy

    assert training_policy(True, gpu=True) == "mixed_float16"
    assert training_policy(True, gpu=False) == "float32"  # the default: a CPU trains in float32
    assert training_policy(False, gpu=True) == "float32"
    assert training_policy("bfloat16", gpu=False) == "mixed_bfloat16"
    assert training_policy("float16", gpu=False) == "mixed_float16"
    for bad in ("bf16", "mixed_bfloat16", 1):
        with pytest.raises(ValueError, match="mixed_precision"):
            HParams(mixed_precision=bad)
    hp = HParams(mixed_precision="bfloat16", jit_compile=True)
    assert hp.execution_only() == {"mixed_precision": "bfloat16", "jit_compile": True, "data_parallel": "auto"}
    from train_export.cli import build_parser
    from train_export.hparam_flags import hparams_from_args

    def parsed(*flags: str) -> tuple[object, object]:
        hp = hparams_from_args(build_parser().parse_args(["train", "--run-dir", "r", "--train", "t.npz",
                                                          "--val", "v.npz", *flags]))
        return hp.mixed_precision, hp.jit_compile

    assert parsed() == (True, "auto")
    assert parsed("--mixed-precision", "bfloat16", "--jit-compile", "true") == ("bfloat16", True)
    assert parsed("--no-mixed-precision", "--no-jit-compile") == (False, False)  # as the GPU lease job passes it
    assert parsed("--mixed-precision", "False") == (False, "auto")


def test_a_run_does_not_resume_across_the_float16_loss_scaling_boundary(tmp_path):
    """mixed_float16 wraps the optimizer, so its backup would restore without the optimizer state."""
    from train_export.training.precision import check_resume_policy

    check_resume_policy(tmp_path, "mixed_float16")  # no model.json: a new run, or one from before the policy
    (tmp_path / "model.json").write_text('{"params": 1}')
    check_resume_policy(tmp_path, "mixed_float16")  # a run from before model.json recorded the policy
    (tmp_path / "model.json").write_text('{"params": 1, "policy": "float32"}')
    check_resume_policy(tmp_path, "mixed_bfloat16")  # one optimizer for both
    with pytest.raises(ValueError, match="trained under float32 and would resume under mixed_float16"):
        check_resume_policy(tmp_path, "mixed_float16")
    (tmp_path / "model.json").write_text('{"params": 1, "policy": "mixed_float16"}')
    check_resume_policy(tmp_path, "mixed_float16")
    for other in ("float32", "mixed_bfloat16"):
        with pytest.raises(ValueError, match="loses its optimizer state"):
            check_resume_policy(tmp_path, other)


def test_a_model_trained_in_mixed_precision_is_saved_computing_in_float32(tmp_path):
    """Loaded later for export, evaluation or as a teacher, it must not run in bfloat16 on a CPU."""
    from train_export.model.spec import build_from_hparams, dtype_policy
    from train_export.training.callbacks import BestCheckpoint

    hp = HParams(width=0.25, mixed_precision="bfloat16")
    with dtype_policy("mixed_bfloat16"):
        core = build_from_hparams(hp)
        assert core.dtype_policy.name == "mixed_bfloat16"
        BestCheckpoint(core, tmp_path, hp=hp).on_epoch_end(0, {"val_accuracy": 0.5})
    assert keras.mixed_precision.global_policy().name == "float32"
    saved = keras.saving.load_model(tmp_path / "best.keras", compile=False)
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}
    for a, b in zip(saved.get_weights(), core.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    x = normalize(_faces(4))[..., None]
    np.testing.assert_allclose(saved.predict(x, verbose=0), core.predict(x, verbose=0), atol=0.02)


def test_the_augmenter_is_in_the_model_on_tensorflow_only():
    from train_export.training.loop import augment_in_model, build_training_model

    trainer, core, aug = build_training_model(HParams(width=0.25))
    if augment_in_model():
        assert aug is None and trainer is not core and any(layer.name == "augment" for layer in trainer.layers)
    else:
        assert trainer is core and aug is not None and aug.layers
    off = HParams(width=0.25, flip=False, rotation=0, translation=0, zoom=0, framing_prob=0, brightness=0,
                  contrast=0, erasing_prob=0, camera_prob=0, noise=0)
    trainer, core, aug = build_training_model(off)
    assert trainer is core and aug is None


def test_plan_epochs_fits_the_rest_of_the_budget_at_the_measured_speed():
    from train_export.training.budget import plan_epochs

    # 2 done (the first, 30 s, was compilation), 10 s per epoch, 100 s left: 9 more fit with the 0.92 margin
    assert plan_epochs(2, [30.0, 10.0], 100.0, total=80) == 11
    assert plan_epochs(2, [30.0, 10.0], 10_000.0, total=80) == 80  # never longer than the schedule
    assert plan_epochs(5, [30.0, 10.0, 10.0, 10.0, 10.0], -3.0, total=80) == 5  # over budget: stop now
    assert plan_epochs(1, [10.0], 50.0, total=80, safety=1.0) == 6  # one epoch: its own time is all there is
    assert plan_epochs(3, [5.0, 10.0, 30.0], 60.0, total=80, safety=1.0) == 6  # the median of later epochs


def test_best_checkpoint_holds_improvements_between_writes_and_writes_the_best_at_the_end(tmp_path):
    import json

    import keras

    from train_export.model.spec import build_model
    from train_export.training.callbacks import BestCheckpoint

    core = build_model("mini_xception", 48, 7, width=0.5)
    cb = BestCheckpoint(core, tmp_path, min_interval_s=3600)  # only the first write is due within the test
    cb.set_model(core)
    first = [w.copy() for w in core.get_weights()]
    cb.on_epoch_end(0, {"val_accuracy": 0.30})  # written at once
    assert json.loads((tmp_path / "best.json").read_text()) == {"val_accuracy": 0.30, "epoch": 1}
    best = [w + 1.0 for w in first]
    core.set_weights(best)
    cb.on_epoch_end(1, {"val_accuracy": 0.40})  # better, but held in memory: the interval has not passed
    assert json.loads((tmp_path / "best.json").read_text())["epoch"] == 1
    later = [w - 1.0 for w in first]
    core.set_weights(later)
    cb.on_epoch_end(2, {"val_accuracy": 0.35})  # worse: nothing changes
    cb.on_train_end()
    assert json.loads((tmp_path / "best.json").read_text()) == {"val_accuracy": 0.40, "epoch": 2}
    saved = keras.saving.load_model(tmp_path / "best.keras", compile=False).get_weights()
    for a, b in zip(saved, best, strict=True):
        np.testing.assert_allclose(a, b)
    for a, b in zip(core.get_weights(), later, strict=True):  # the model training goes on with is untouched
        np.testing.assert_allclose(a, b)


def test_online_distillation_targets_blend_the_label_with_the_teachers_on_the_same_input():
    import keras

    from train_export.model.spec import build_model
    from train_export.training.distill import soften
    from train_export.training.online_distill import OnlineDistillLoss, student_accuracy, with_teachers

    keras.utils.set_random_seed(0)
    core = build_model("mini_xception", 24, 4, width=0.25)
    teachers = [build_model("mini_xception", 24, 4, width=0.25) for _ in range(2)]
    for i, t in enumerate(teachers):
        t.name, t.trainable = f"teacher_{i}", False
    inp = keras.Input((24, 24, 1))
    model = with_teachers(inp, inp, inp, core, teachers, temperature=2.0)
    x = np.random.default_rng(0).normal(size=(5, 24, 24, 1)).astype(np.float32)
    out = np.asarray(model.predict(x, verbose=0))
    want = np.mean([soften(np.asarray(t.predict(x, verbose=0)), 2.0) for t in teachers], axis=0)
    np.testing.assert_allclose(out[:, :4], np.asarray(core.predict(x, verbose=0)), atol=1e-5)
    np.testing.assert_allclose(out[:, 4:], want, atol=1e-5)

    y = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]]
    loss = float(OnlineDistillLoss(4, alpha=0.7)(y, out))
    target = 0.3 * y + 0.7 * out[:, 4:]
    assert loss == pytest.approx(float(np.mean(-(target * np.log(out[:, :4])).sum(axis=1))), rel=1e-4)
    acc = student_accuracy(4)
    acc.update_state(y, out)
    assert float(acc.result()) == pytest.approx(float(np.mean(out[:, :4].argmax(1) == y.argmax(1))))


@pytest.mark.parametrize("clean", [True, False])
def test_online_distillation_teachers_see_the_face_before_the_camera_degradation(clean):
    """teachers_see_clean: the student's input is degraded (noise here), the teachers' is not; off, both are."""
    from train_export.model.spec import build_model
    from train_export.training.distill import soften
    from train_export.training.loop import build_training_model

    labels = ["a", "b", "c", "d"]
    hp = HParams(model="mini_xception", width=0.25, input_size=24, labels=labels, flip=False, rotation=0,
                 translation=0, zoom=0, brightness=0, contrast=0, erasing_prob=0, camera_prob=0, noise=0.5,
                 teacher_models=["t.keras"], teachers_see_clean=clean, distill_temperature=2.0)
    keras.utils.set_random_seed(0)
    teacher = build_model("mini_xception", 24, 4, width=0.25)
    teacher.name, teacher.trainable = "teacher_0", False
    trainer, core, aug = build_training_model(hp, [teacher])
    x = np.full((6, 24, 24, 1), 0.5, np.float32)
    out = keras.ops.convert_to_numpy(trainer(x if aug is None else aug(x, training=True), training=True))
    on_clean = soften(keras.ops.convert_to_numpy(teacher(x, training=False)), 2.0)
    assert not np.allclose(out[:, :4], keras.ops.convert_to_numpy(core(x, training=True)), atol=1e-4)
    assert np.allclose(out[:, 4:], on_clean, atol=1e-5) == clean
    inference = keras.ops.convert_to_numpy(trainer(x, training=False))  # validation: nothing is degraded
    np.testing.assert_allclose(inference[:, 4:], on_clean, atol=1e-5)
    np.testing.assert_allclose(inference[:, :4], keras.ops.convert_to_numpy(core(x, training=False)), atol=1e-5)


def test_an_online_run_recorded_before_teachers_see_clean_existed_loads_as_what_it_did(tmp_path):
    """Its teachers saw the degraded face; a run without teachers is unaffected, so it resumes as before."""
    import json

    def saved_before(**fields: object) -> HParams:
        old = HParams(**fields).to_dict()
        del old["teachers_see_clean"]
        (tmp_path / "old.json").write_text(json.dumps(old))
        return HParams.load(tmp_path / "old.json")

    assert saved_before(teacher_models=["t.keras"]).teachers_see_clean is False
    assert saved_before() == HParams()  # what a resumed run without teachers compares with the command line's
    (tmp_path / "partial.json").write_text(json.dumps({"width": 1.5}))  # a hand-written base for --hparams
    assert HParams.load(tmp_path / "partial.json").teachers_see_clean is True
    HParams(teachers_see_clean=False).save(tmp_path / "new.json")
    assert HParams.load(tmp_path / "new.json").teachers_see_clean is False


def test_teachers_compute_in_the_runs_mixed_policy_when_their_run_folder_says_how_to_rebuild_them(tmp_path):
    from train_export.model.spec import build_from_hparams
    from train_export.training.online_distill import load_teachers

    hp = HParams(model="mini_xception", width=0.25, input_size=24, labels=["a", "b", "c", "d"])
    keras.utils.set_random_seed(0)
    model = build_from_hparams(hp)
    (tmp_path / "run").mkdir()
    model.save(tmp_path / "run" / "best.keras")
    hp.save(tmp_path / "run" / "hparams.json")
    model.save(tmp_path / "bare.keras")
    (tmp_path / "odd").mkdir()
    model.save(tmp_path / "odd" / "best.keras")
    (tmp_path / "odd" / "hparams.json").write_text('{"width": "wide"}')  # hand-edited: it cannot rebuild the model

    def conv_dtype(m: keras.Model) -> str:  # a layer's, not the model's: a model loaded under a mixed policy reports it
        return next(layer for layer in m.layers if isinstance(layer, keras.layers.Conv2D)).compute_dtype

    from train_export.model.spec import dtype_policy

    with dtype_policy("mixed_bfloat16"):  # as train() and build_training_model() load them
        run, bare, odd = load_teachers([str(tmp_path / p) for p in ("run/best.keras", "bare.keras", "odd/best.keras")],
                                       24, hp.labels, "mixed_bfloat16")
    assert conv_dtype(run) == "bfloat16" and conv_dtype(bare) == "float32" and conv_dtype(odd) == "float32"
    assert run.name == "teacher_0" and not run.trainable
    x = np.random.default_rng(0).random((4, 24, 24, 1), dtype=np.float32)
    np.testing.assert_allclose(run.predict(x, verbose=0), model.predict(x, verbose=0), atol=0.03)
    (same,) = load_teachers([str(tmp_path / "run" / "best.keras")], 24, hp.labels)
    assert same.compute_dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
