"""Image resampling in plain numpy, so that the device's image path (a Pi camera or the demo, BlazeFace, the
classifier) needs no OpenCV: grey conversion, area/linear resize and bilinear affine sampling.

The conventions are OpenCV's (pixel centres at integer coordinates; a resize maps output pixel ``i`` to the input
interval ``[i * s, (i + 1) * s)``, ``s`` = input / output size), so the results agree with ``cv2.cvtColor``,
``cv2.resize(INTER_AREA / INTER_LINEAR)`` and ``cv2.warpAffine(INTER_LINEAR)`` (tests/test_imaging.py). The warps use OpenCV's own fixed point (positions rounded to 1/32
pixel, integer weights) and so does an area shrink (OpenCV's float32 sums): both give its pixels exactly. The
linear enlargement computes in floating point where OpenCV uses 11-bit weights, so it may differ by one grey
level (a face crop is enlarged only when it is smaller than the model's input). Everything is vectorised: a Pi
runs these on every frame.

Where OpenCV is installed (the ``[opencv]`` extra, which USB cameras, files and streams need anyway), each function
runs the same operation through it instead (``opencv=True``, the default): the same pixels (tests/test_imaging.py
holds the numpy path to OpenCV's; a linear enlargement within one grey level), about four times faster per face (benchmarks/imaging_speed.py). A Pi camera
install without OpenCV runs the numpy path. :func:`match_template` is numpy everywhere (its docstring says why). A part that cannot run without OpenCV (other sources, the Haar and
MediaPipe detectors, the debug preview) asks for it through :func:`require_opencv`, which refuses it in one line.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np
from numpy.lib.stride_tricks import as_strided

from edge.version import opencv_missing

#: ITU-R BT.601 luma weights of B, G and R in 15-bit fixed point, as OpenCV 4's vectorised cvtColor uses them
#: (its grey of every one of the 2^24 colours, checked): the grey levels are its grey levels.
_GRAY_BGR_15BIT = (3735, 19235, 9798)

Border = Literal["replicate", "zero"]
#: Ten float32 epsilons: OpenCV's template matcher calls a window flat below this share of its sum of squares.
_FLT_EPSILON_10 = 10 * float(np.finfo(np.float32).eps)


@functools.cache
def _cv2() -> Any | None:
    """OpenCV if this interpreter has it (imported on first use: a start-up that does not need it does not pay)."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def require_opencv(what: str, error: type[Exception]) -> ModuleType:
    """OpenCV, for a part that cannot run without it: called where that part is set up, so that a missing OpenCV
    is refused there (before a camera opens or a frame is read) rather than on the first frame.

    Raises:
        error: OpenCV is not installed; its one line (:func:`edge.version.opencv_missing`) says that ``what``
            needs it and how to install it.
    """
    cv2 = _cv2()
    if cv2 is None:
        raise error(opencv_missing(what))
    return cv2


def _opencv_shape(image: np.ndarray) -> bool:
    """Whether OpenCV returns what the numpy path does for ``image``: uint8, grey (HxW) or 3-channel (OpenCV drops
    a lone channel axis, which the numpy path keeps)."""
    return image.dtype == np.uint8 and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3))


def bgr_to_gray(image: np.ndarray, opencv: bool = True) -> np.ndarray:
    """Grey (HxW uint8) of an HxWx3 or HxWx4 BGR(A) uint8 image: ``0.114 B + 0.587 G + 0.299 R``, rounded
    (through OpenCV when ``opencv`` and it is installed)."""
    cv2 = _cv2() if opencv else None
    if cv2 is not None and image.dtype == np.uint8:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
    b, g, r = _GRAY_BGR_15BIT
    acc = image[..., 0].astype(np.uint32) * b
    acc += image[..., 1].astype(np.uint32) * g
    acc += image[..., 2].astype(np.uint32) * r
    acc += 1 << 14
    acc >>= 15
    return acc.astype(np.uint8)


def _axis_weights(n_in: int, n_out: int) -> np.ndarray:
    """The ``n_out`` x ``n_in`` matrix that resamples one axis: pixel-area averaging when shrinking, linear
    interpolation (half-pixel centres, edge pixels repeated) when enlarging, the identity otherwise."""
    if n_in == n_out:
        return np.eye(n_out)
    s = n_in / n_out
    out = np.zeros((n_out, n_in))
    if n_in > n_out:
        # Output pixel i covers [i * s, (i + 1) * s) of the input: each input pixel counts by its overlap.
        starts = np.arange(n_out) * s
        edges = np.arange(n_in + 1)
        lo = np.maximum(starts[:, None], edges[None, :-1])
        hi = np.minimum(starts[:, None] + s, edges[None, 1:])
        out = np.clip(hi - lo, 0.0, None) / s
    else:
        x = np.maximum((np.arange(n_out) + 0.5) * s - 0.5, 0.0)
        i0 = np.floor(x).astype(np.int64)
        f = x - i0
        i1 = np.minimum(i0 + 1, n_in - 1)
        rows = np.arange(n_out)
        np.add.at(out, (rows, i0), 1.0 - f)
        np.add.at(out, (rows, i1), f)
    return out


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Round and saturate floats to uint8 (OpenCV's saturate_cast: round half to even, clip to [0, 255])."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=256)
def _axis_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_axis_weights` as a band: for each output pixel the indices of the few input pixels it reads and
    their weights in float32, as :func:`resize` sums them (``n_out`` x K each, K = the most any output reads;
    unused taps have weight 0)."""
    weights = _axis_weights(n_in, n_out)
    used = weights > 0
    first = used.argmax(axis=1)
    k = int((n_in - used[:, ::-1].argmax(axis=1) - first).max())
    idx = np.minimum(first[:, None] + np.arange(k), n_in - 1)
    band = np.take_along_axis(weights, idx, axis=1)
    band[first[:, None] + np.arange(k) >= n_in] = 0.0
    band = band.astype(np.float32)
    idx.flags.writeable = band.flags.writeable = False  # cached: shared by every later call with these sizes
    return idx, band


def resize(image: np.ndarray, width: int, height: int, opencv: bool = True) -> np.ndarray:
    """Resize an HxW or HxWxC uint8 image to ``width`` x ``height``: each axis by pixel area when it shrinks
    (``cv2.INTER_AREA``) and linearly when it grows (``cv2.INTER_LINEAR``); through OpenCV when ``opencv`` and
    it is installed and both axes shrink or both grow (OpenCV takes one interpolation for both).

    A shrink is OpenCV's to the pixel: by whole factors, block sums (a 2x2 block rounded half up, others scaled in
    float32); otherwise columns first, then rows, in float32 as OpenCV sums them. Each output pixel is a
    weighted sum of its few input pixels, gathered rather than a dense matrix product: no BLAS call, whose threads
    cost more to wake on a busy Pi than these few thousand multiplications.
    """
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return np.ascontiguousarray(image, dtype=np.uint8)
    cv2 = _cv2() if opencv and _opencv_shape(image) else None
    if cv2 is not None and (h >= height) == (w >= width):
        mode = cv2.INTER_AREA if h >= height else cv2.INTER_LINEAR
        return cv2.resize(image, (width, height), interpolation=mode)
    if h % height == 0 and w % width == 0:
        ky, kx = h // height, w // width
        sums = image.reshape(height, ky, width, kx, *image.shape[2:]).sum(axis=(1, 3), dtype=np.int32)
        if ky == kx == 2:
            return ((sums + 2) >> 2).astype(np.uint8)
        return _to_uint8(sums.astype(np.float32) * np.float32(1.0 / (kx * ky)))
    extra = (None,) * (image.ndim - 2)  # the weights broadcast over the channels
    iy, wy = _axis_taps(h, height)
    ix, wx = _axis_taps(w, width)
    cols = (image[:, ix] * wx[(...,) + extra]).sum(axis=2)  # h x width [x C]
    out = (cols[iy] * wy[(..., None) + extra]).sum(axis=1)
    return _to_uint8(out)


def _window_sums(a: np.ndarray, th: int, tw: int) -> np.ndarray:
    """Sums of every ``th`` x ``tw`` window (valid positions) of each image of the stack ``a`` (K x H x W), from
    their integral images (in float64: a float32 running sum loses the small differences the correlation's
    variance is made of)."""
    ii = np.zeros((a.shape[0], a.shape[1] + 1, a.shape[2] + 1), np.float64)
    ii[:, 1:, 1:] = a.cumsum(1, dtype=np.float64).cumsum(2)
    return ii[:, th:, tw:] - ii[:, :-th, tw:] - ii[:, th:, :-tw] + ii[:, :-th, :-tw]


@dataclass(frozen=True)
class Template:
    """A patch prepared once for :func:`match_template`: its samples (float32) with their mean taken out, as OpenCV
    takes it out, and their root sum of squares. A tracker matches one patch on many frames; this is the part that
    does not change from frame to frame."""

    values: np.ndarray
    norm: float

    @classmethod
    def of(cls, patch: np.ndarray) -> Template:
        """The template of ``patch`` (th x tw)."""
        t = patch.astype(np.float32) - np.float32(patch.mean())
        return cls(t, float(np.sqrt(np.dot(t.ravel(), t.ravel()))))

    @property
    def flat(self) -> bool:
        """Whether the patch is (within rounding) one grey level: it locates nothing, correlating 0 everywhere."""
        return self.norm < 1e-3


def match_template(image: np.ndarray, template: Template) -> np.ndarray:
    """The normalised cross-correlation of ``template`` with every window of its size in ``image`` (float32), in
    [-1, 1], (H - th + 1) x (W - tw + 1): what ``cv2.matchTemplate(..., TM_CCOEFF_NORMED)`` gives, to float32
    rounding (tests/test_imaging.py). As there, a window whose variance is within float rounding of none (flat)
    correlates 0 with anything, and so does a flat template.

    Numpy even where OpenCV is installed: on a carried frame's small search region OpenCV's call saves little
    but its first use maps about 2.6 MB more of the library into the daemon's memory.
    """
    th, tw = template.values.shape
    oh, ow = image.shape[0] - th + 1, image.shape[1] - tw + 1
    if template.flat:  # never a NaN to argmax
        return np.zeros((oh, ow), np.float32)
    # np.tensordot(sliding_window_view(image, (th, tw)), template, axes=([2, 3], [0, 1])), call for call: every
    # window copied out as a row, times the template as a column, in one dot. Spelt out, it skips both functions'
    # Python work, a good part of a carried frame's matching.
    windows = as_strided(image, (oh, ow, th, tw), image.strides * 2, writeable=False).reshape(oh * ow, th * tw)
    num = np.dot(windows, template.values.reshape(th * tw, 1)).reshape(oh, ow)
    # Window sums and sums of squares, for the variance term of the correlation's denominator.
    planes = np.empty((2, *image.shape))
    planes[0] = image
    np.multiply(planes[0], planes[0], out=planes[1])
    total, squares = _window_sums(planes, th, tw)
    var = squares - total * total / (th * tw)
    flat = var <= np.minimum(0.5, _FLT_EPSILON_10 * squares)  # OpenCV's bound
    var[flat] = 1.0
    ncc = num / (np.sqrt(var) * template.norm)
    ncc[flat] = 0.0
    # Rounding can push a ratio a hair past 1 (OpenCV snaps those within 1.125 to 1; none get further here).
    return ncc.clip(-1.0, 1.0, out=ncc).astype(np.float32, copy=False)


#: OpenCV's fixed point for warps, kept so that the tensors are its tensors bit for bit: map coordinates in 1/1024
#: pixel, sample positions rounded to 1/32 pixel, so each axis's two bilinear weights are integers summing to 32.
_MAP_SCALE = 1024
_SUBPIXELS = 32


def _positions(step: float, starts: np.ndarray, n_out: int) -> np.ndarray:
    """Sample positions in 1/32 pixel of the outputs ``0 .. n_out - 1`` along a row, ``starts`` (one per row) being
    each row's map value at output 0 and ``step`` its change per output pixel: OpenCV's warpAffine rounding."""
    along = np.rint(step * np.arange(n_out) * _MAP_SCALE).astype(np.int32)
    at_start = np.rint(np.asarray(starts, np.float64) * _MAP_SCALE).astype(np.int32)
    return (along[None, :] + at_start[:, None] + _MAP_SCALE // _SUBPIXELS // 2) >> 5


def _taps(pos: np.ndarray, n: int, border: Border) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The two bilinear taps of each position (in 1/32 pixel) along an axis of ``n`` pixels: indices into the image
    (always valid) and their integer weights (summing to 32). ``replicate``: a tap outside reads the edge pixel;
    ``zero``: it reads black (its weight is 0)."""
    i0 = pos >> 5
    w1 = pos & (_SUBPIXELS - 1)
    w0 = _SUBPIXELS - w1
    i1 = i0 + 1
    if i0.min() >= 0 and i1.max() < n:
        return i0, i1, w0, w1  # every tap inside: the usual case, spared the clipping
    if border == "zero":
        w0 = np.where((i0 >= 0) & (i0 < n), w0, 0)
        w1 = np.where((i1 >= 0) & (i1 < n), w1, 0)
    return np.minimum(np.maximum(i0, 0), n - 1), np.minimum(np.maximum(i1, 0), n - 1), w0, w1


def _weighted_to_uint8(acc: np.ndarray) -> np.ndarray:
    """Sums of pixel * (32 * 32 weight units) back to rounded uint8 pixels."""
    return ((acc + (_SUBPIXELS * _SUBPIXELS // 2)) >> 10).astype(np.uint8)


def invert_affine(m: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """The inverse of the 2x3 affine map ``m`` (an array, or its two rows of floats), computed as
    ``cv2.invertAffineTransform`` (and cv2.warpAffine without WARP_INVERSE_MAP) computes it, operation for
    operation, so that sampling through it is OpenCV's."""
    # Plain floats: the same double arithmetic as numpy scalars', at a fraction of the cost (a crop per face).
    (m00, m01, m02), (m10, m11, m12) = m.tolist() if isinstance(m, np.ndarray) else m
    d = m00 * m11 - m01 * m10
    d = 1.0 / d if d != 0 else 0.0
    a11, a22, a12, a21 = m11 * d, m00 * d, -m01 * d, -m10 * d
    return np.array([[a11, a12, -a11 * m02 - a12 * m12], [a21, a22, -a21 * m02 - a22 * m12]])


def warp_affine(image: np.ndarray, m: np.ndarray, width: int, height: int, border: Border,
                opencv: bool = True) -> np.ndarray:
    """Bilinear sampling of ``image`` (HxW or HxWxC uint8) through the 2x3 map ``m`` from output pixels to image
    pixels (``cv2.warpAffine(..., flags=INTER_LINEAR | WARP_INVERSE_MAP)``, which runs it when ``opencv`` and it
    is installed), ``width`` x ``height`` out."""
    cv2 = _cv2() if opencv and _opencv_shape(image) else None
    if cv2 is not None:
        mode = cv2.BORDER_REPLICATE if border == "replicate" else cv2.BORDER_CONSTANT
        return cv2.warpAffine(image, m, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=mode)
    h, w = image.shape[:2]
    v = np.arange(height, dtype=np.float64)
    x0, x1, wx0, wx1 = _taps(_positions(m[0, 0], m[0, 1] * v + m[0, 2], width), w, border)
    y0, y1, wy0, wy1 = _taps(_positions(m[1, 0], m[1, 1] * v + m[1, 2], width), h, border)
    if image.ndim == 3:  # the weights broadcast over the channels
        wx0, wx1, wy0, wy1 = (a[..., None] for a in (wx0, wx1, wy0, wy1))
    # Gathers from the flat image (one index per tap instead of a row and a column index).
    flat = image.reshape(h * w, -1) if image.ndim == 3 else image.reshape(-1)
    y0 *= w
    y1 *= w
    top = flat[y0 + x0] * wx0 + flat[y0 + x1] * wx1
    bottom = flat[y1 + x0] * wx0 + flat[y1 + x1] * wx1
    return _weighted_to_uint8(top * wy0 + bottom * wy1)


class AxisAlignedSampler:
    """Bilinear sampling through a map without rotation, ``x = kx * u + ox``, ``y = ky * v + oy`` (a letterbox),
    black outside the image: ``warp_affine(..., border="zero")`` for that map, done separably (rows, then
    columns) with the taps computed once per image size, for a detector that runs it on every frame.

    Args:
        size: The input image's (width, height).
        out_size: The output's (width, height).
        kx, ox, ky, oy: The map from output pixels to image pixels.
        opencv: Sample through OpenCV's warpAffine when it is installed.
    """

    def __init__(self, size: tuple[int, int], out_size: tuple[int, int], kx: float, ox: float, ky: float,
                 oy: float, opencv: bool = True) -> None:
        (w, h), (tw, th) = size, out_size
        self._m = np.array([[kx, 0.0, ox], [0.0, ky, oy]])
        self._opencv = opencv
        self._x = _taps(_positions(kx, np.array([ox]), tw)[0], w, "zero")
        y0, y1, wy0, wy1 = _taps(_positions(ky, np.array([oy]), th)[0], h, "zero")
        self._y = (y0, y1, wy0[:, None], wy1[:, None])

    def __call__(self, image: np.ndarray, out: np.ndarray) -> None:
        """Sample ``image`` (HxW or HxWxC uint8 of the size given at construction) into ``out`` (uint8)."""
        cv2 = _cv2() if self._opencv and _opencv_shape(image) and out.dtype == np.uint8 and out.flags.c_contiguous else None
        if cv2 is not None:
            th, tw = out.shape[:2]
            cv2.warpAffine(image, self._m, (tw, th), dst=out, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_CONSTANT)
            return
        y0, y1, wy0, wy1 = self._y
        x0, x1, wx0, wx1 = self._x
        if image.ndim == 3:
            wy0, wy1 = wy0[..., None], wy1[..., None]
            wx0, wx1 = wx0[:, None], wx1[:, None]
        rows = image[y0] * wy0 + image[y1] * wy1  # int32, (out height) x (image width) [x C]
        np.copyto(out, _weighted_to_uint8(rows[:, x0] * wx0 + rows[:, x1] * wx1))
