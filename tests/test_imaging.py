"""edge/imaging.py (numpy only) against OpenCV, which the device's image path used before and which the
[opencv] extra still installs: the warps give OpenCV's pixels exactly; grey and the resize are within one grey
level (OpenCV's SIMD grey and its 11-bit linear resize weights round a few pixels the other way)."""

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


def test_grey_is_opencvs_within_one_level_and_exactly_on_a_photograph(face, noise):
    assert np.array_equal(imaging.bgr_to_gray(face), cv2.cvtColor(face, cv2.COLOR_BGR2GRAY))
    assert _max_diff(imaging.bgr_to_gray(noise), cv2.cvtColor(noise, cv2.COLOR_BGR2GRAY)) <= 1
    bgra = np.dstack([noise, np.full(noise.shape[:2], 7, np.uint8)])
    assert np.array_equal(imaging.bgr_to_gray(bgra), imaging.bgr_to_gray(noise))  # alpha is ignored


@pytest.mark.parametrize("side_in, side_out", [(160, 48), (200, 48), (96, 48), (144, 48), (61, 48), (30, 48),
                                               (47, 48), (160, 184)])
def test_resize_is_opencvs_area_shrink_and_linear_enlargement_within_one_level(face, side_in, side_out):
    gray = cv2.resize(cv2.cvtColor(face, cv2.COLOR_BGR2GRAY), (side_in, side_in), interpolation=cv2.INTER_AREA)
    interp = cv2.INTER_AREA if side_in > side_out else cv2.INTER_LINEAR
    ref = cv2.resize(gray, (side_out, side_out), interpolation=interp)
    assert _max_diff(imaging.resize(gray, side_out, side_out), ref) <= 1


def test_resize_handles_colour_and_unequal_sides(noise):
    out = imaging.resize(noise, 50, 40)
    assert out.shape == (40, 50, 3)
    ref = cv2.resize(noise, (50, 40), interpolation=cv2.INTER_AREA)
    assert _max_diff(out, ref) <= 1
    assert np.array_equal(imaging.resize(noise, 131, 97), noise)  # same size: unchanged


@pytest.mark.parametrize("roll", [0.5, 3.0, -12.5, 30.0, 89.0])
def test_a_turn_with_replicated_border_is_opencvs_exactly(face, roll):
    gray = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY)
    m = cv2.getRotationMatrix2D((70.3, 90.8), roll, 1.0)
    ref = cv2.warpAffine(gray, m, (150, 140), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    got = imaging.warp_affine(gray, cv2.invertAffineTransform(m), 150, 140, "replicate")
    assert np.array_equal(got, ref)


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
    imaging.AxisAlignedSampler((w, h), (128, 128), k, ox, k, oy)(img, out)
    assert np.array_equal(out, ref)
    assert np.array_equal(imaging.warp_affine(img, m, 128, 128, "zero"), ref)
