"""edge/imaging.py (numpy only) against OpenCV, which the device's image path used before and which the
[opencv] extra still installs: grey, the area shrink and the warps give OpenCV's pixels exactly; the linear
enlargement is within one grey level (OpenCV's 11-bit weights round a few pixels the other way)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge import imaging
from edge.runtime.capture.demo import DEMO_FACES


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.fixture(scope="module")
def face():
    """A real photograph (the demo's astronaut, BGR): smooth areas and sharp edges, unlike noise."""
    return np.load(DEMO_FACES / "astronaut.npy")


@pytest.fixture(scope="module")
def noise():
    return np.random.default_rng(3).integers(0, 256, (97, 131, 3), dtype=np.uint8)


def test_grey_is_opencvs_exactly_for_every_colour(face, noise):
    assert np.array_equal(imaging.bgr_to_gray(face, opencv=False), cv2.cvtColor(face, cv2.COLOR_BGR2GRAY))
    levels = np.arange(256, dtype=np.uint8)
    every = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(4096, 4096, 3)
    assert np.array_equal(imaging.bgr_to_gray(every, opencv=False), cv2.cvtColor(every, cv2.COLOR_BGR2GRAY))
    bgra = np.dstack([noise, np.full(noise.shape[:2], 7, np.uint8)])
    assert np.array_equal(imaging.bgr_to_gray(bgra, opencv=False), imaging.bgr_to_gray(noise, opencv=False))  # the alpha channel is ignored


@pytest.mark.parametrize("side_in", [49, 61, 96, 100, 144, 160, 187, 200, 240, 333])
def test_an_area_shrink_is_opencvs_exactly(face, noise, side_in):
    """By whole factors (96, 144, 240 -> 48: OpenCV's block sums) and by any other (its float32 area sums)."""
    gray = cv2.resize(cv2.cvtColor(face, cv2.COLOR_BGR2GRAY), (side_in, side_in), interpolation=cv2.INTER_LINEAR)
    ref = cv2.resize(gray, (48, 48), interpolation=cv2.INTER_AREA)
    assert np.array_equal(imaging.resize(gray, 48, 48, opencv=False), ref)
    big = np.random.default_rng(side_in).integers(0, 256, (side_in, side_in + 48, 3), dtype=np.uint8)
    assert np.array_equal(imaging.resize(big, 48, 48, opencv=False), cv2.resize(big, (48, 48), interpolation=cv2.INTER_AREA))


@pytest.mark.parametrize("side_in, side_out", [(30, 48), (47, 48), (160, 184)])
def test_a_linear_enlargement_is_opencvs_within_one_level(face, side_in, side_out):
    gray = cv2.resize(cv2.cvtColor(face, cv2.COLOR_BGR2GRAY), (side_in, side_in), interpolation=cv2.INTER_AREA)
    ref = cv2.resize(gray, (side_out, side_out), interpolation=cv2.INTER_LINEAR)
    assert _max_diff(imaging.resize(gray, side_out, side_out, opencv=False), ref) <= 1


def test_resize_keeps_an_image_of_the_asked_size(noise):
    assert np.array_equal(imaging.resize(noise, 131, 97, opencv=False), noise)


@pytest.mark.parametrize("roll", [0.5, 3.0, -12.5, 30.0, 89.0])
def test_a_turn_with_replicated_border_is_opencvs_exactly(face, roll):
    gray = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY)
    m = cv2.getRotationMatrix2D((70.3, 90.8), roll, 1.0)
    ref = cv2.warpAffine(gray, m, (150, 140), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inverse = imaging.invert_affine(m)
    assert np.array_equal(inverse, cv2.invertAffineTransform(m))
    assert np.array_equal(imaging.invert_affine(m.tolist()), inverse)  # the map's rows as plain floats: the same
    assert np.array_equal(imaging.warp_affine(gray, inverse, 150, 140, "replicate", opencv=False), ref)


@pytest.mark.parametrize("shape", [(240, 320), (240, 320, 3), (480, 640, 3), (300, 411), (500, 377, 3)])
def test_the_letterbox_sampler_is_opencvs_warp_with_black_border_exactly(shape):
    img = np.random.default_rng(5).integers(0, 256, shape, dtype=np.uint8)
    h, w = shape[:2]
    side = max(w, h)
    k, ox, oy = side / 128, (w - side) / 2, (h - side) / 2
    m = np.array([[k, 0.0, ox], [0.0, k, oy]])
    ref = cv2.warpAffine(img, m, (128, 128), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT)
    out = np.empty_like(ref)
    imaging.AxisAlignedSampler((w, h), (128, 128), k, ox, k, oy, opencv=False)(img, out)
    assert np.array_equal(out, ref)
    assert np.array_equal(imaging.warp_affine(img, m, 128, 128, "zero", opencv=False), ref)


def test_with_opencv_installed_each_operation_runs_through_it_and_gives_the_numpy_paths_pixels():
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    gray = imaging.bgr_to_gray(frame)
    assert np.array_equal(gray, imaging.bgr_to_gray(frame, opencv=False))
    assert np.array_equal(imaging.resize(gray, 48, 48), imaging.resize(gray, 48, 48, opencv=False))
    m = imaging.invert_affine(cv2.getRotationMatrix2D((150.2, 110.7), 12.0, 1.0))
    assert np.array_equal(imaging.warp_affine(gray, m, 140, 140, "replicate"),
                          imaging.warp_affine(gray, m, 140, 140, "replicate", opencv=False))
    fast, slow = np.empty((128, 128, 3), np.uint8), np.empty((128, 128, 3), np.uint8)
    imaging.AxisAlignedSampler((320, 240), (128, 128), 2.5, 0.0, 2.5, -40.0)(frame, fast)
    imaging.AxisAlignedSampler((320, 240), (128, 128), 2.5, 0.0, 2.5, -40.0, opencv=False)(frame, slow)
    assert np.array_equal(fast, slow)


def test_template_matching_is_opencvs_normalised_correlation(face):
    gray = imaging.bgr_to_gray(face)[::4, ::4].astype(np.float32)  # 40 x 40 samples
    region = gray[4:32, 6:36].copy()
    template = gray[10:26, 12:28].copy()
    template -= template.mean()
    ncc = imaging.match_template(region, imaging.Template.of(template))
    ref = cv2.matchTemplate(region, template, cv2.TM_CCOEFF_NORMED)
    assert ncc.shape == ref.shape == (13, 15)
    np.testing.assert_allclose(ncc, ref, atol=1e-4)
    assert np.unravel_index(int(np.argmax(ncc)), ncc.shape) == (6, 6)  # where the template was cut
    assert ncc.max() == pytest.approx(1.0, abs=1e-5)
    # OpenCV takes the template's mean out itself, and so does the numpy path
    np.testing.assert_allclose(imaging.match_template(region, imaging.Template.of(template + 40)), ref, atol=1e-4)


def test_the_correlation_numerator_is_tensordots_over_the_sliding_windows_exactly(face):
    """match_template spells np.tensordot out; a carried face's place hangs on the last bit of the scores, so its
    numerator must be tensordot's, bit for bit (checked through the score: the same denominators divide both)."""
    from numpy.lib.stride_tricks import sliding_window_view

    gray = imaging.bgr_to_gray(face)[::4, ::4].astype(np.float32)
    for region, cut in ((gray[4:32, 6:36], gray[10:26, 12:28]), (gray[::-1, :30][:25], gray[3:15, 5:22])):
        tpl = imaging.Template.of(cut)
        num = np.tensordot(sliding_window_view(region, cut.shape), tpl.values, axes=([2, 3], [0, 1]))
        total, squares = imaging._window_sums(np.stack([region.astype(np.float64), region.astype(np.float64) ** 2]),
                                              *cut.shape)
        var = squares - total * total / cut.size
        flat = var <= np.minimum(0.5, 10 * float(np.finfo(np.float32).eps) * squares)
        var[flat] = 1.0
        want = np.clip(num / (np.sqrt(var) * tpl.norm), -1.0, 1.0)
        want[flat] = 0.0
        np.testing.assert_array_equal(imaging.match_template(region, tpl), want.astype(np.float32))


def test_a_flat_window_correlates_zero_with_anything():
    region = np.full((20, 20), 90, np.float32)
    region[:, 12:] = np.arange(8, dtype=np.float32) * 10  # a ramp on the right, flat on the left
    template = np.tile(np.arange(6, dtype=np.float32) - 2.5, (6, 1))
    for ncc in (imaging.match_template(region, imaging.Template.of(template)),
                cv2.matchTemplate(region, template, cv2.TM_CCOEFF_NORMED)):
        assert np.all(ncc[:, :6] == 0)  # windows wholly in the flat part
        assert ncc[:, -1].max() == pytest.approx(1.0, abs=1e-5)  # the ramp matches the ramp
    # a flat template has nothing to find: 0 everywhere, not NaN
    flat = imaging.Template.of(np.full((6, 6), 7, np.float32))
    assert flat.flat and np.array_equal(imaging.match_template(region, flat), np.zeros((15, 15), np.float32))
