"""Image resampling in plain numpy, so that the device's image path (a Pi camera or the demo, BlazeFace, the
classifier) needs no OpenCV: grey conversion, area/linear resize and bilinear affine sampling.

The conventions are OpenCV's (pixel centres at integer coordinates; a resize maps output pixel ``i`` to the input
interval ``[i * s, (i + 1) * s)``, ``s`` = input / output size), so the results agree with ``cv2.cvtColor``,
``cv2.resize(INTER_AREA / INTER_LINEAR)`` and ``cv2.warpAffine(INTER_LINEAR)`` to within a grey level or two
(tests/test_imaging.py states the bounds). OpenCV computes in fixed point with positions rounded to 1/32 pixel;
this module computes in floating point and rounds once at the end, which is why they are not bit-identical.
Everything is vectorised: a Pi runs these on every frame.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

#: ITU-R BT.601 luma weights of B, G and R in 14-bit fixed point: OpenCV's, so the grey levels are its grey levels.
_GRAY_BGR_14BIT = (1868, 9617, 4899)

Border = Literal["replicate", "zero"]


def bgr_to_gray(image: np.ndarray) -> np.ndarray:
    """Grey (HxW uint8) of an HxWx3 or HxWx4 BGR(A) uint8 image: ``0.114 B + 0.587 G + 0.299 R``, rounded."""
    b, g, r = _GRAY_BGR_14BIT
    acc = image[..., 0].astype(np.uint32) * b
    acc += image[..., 1].astype(np.uint32) * g
    acc += image[..., 2].astype(np.uint32) * r
    acc += 1 << 13
    acc >>= 14
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


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize an HxW or HxWxC uint8 image to ``width`` x ``height``: each axis by pixel area when it shrinks
    (``cv2.INTER_AREA``) and linearly when it grows (``cv2.INTER_LINEAR``), as two small matrix products."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return np.ascontiguousarray(image, dtype=np.uint8)
    wy, wx = _axis_weights(h, height), _axis_weights(w, width)
    # Rows first, then columns: (height x h) @ image @ (w x width), per channel.
    out = np.tensordot(wy, image.astype(np.float64), axes=(1, 0))
    out = np.moveaxis(np.tensordot(wx, out, axes=(1, 1)), 0, 1)
    return _to_uint8(out)


def _taps(coords: np.ndarray, n: int, border: Border) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The two bilinear taps of each (float) source coordinate along an axis of ``n`` pixels: indices into the
    image (always valid) and their weights. ``replicate``: a tap outside reads the edge pixel; ``zero``: it reads
    black (its weight is 0)."""
    i0 = np.floor(coords)
    f = coords - i0
    i0 = i0.astype(np.int64)
    i1 = i0 + 1
    w0, w1 = 1.0 - f, f
    if border == "zero":
        w0 = np.where((i0 >= 0) & (i0 < n), w0, 0.0)
        w1 = np.where((i1 >= 0) & (i1 < n), w1, 0.0)
    return np.clip(i0, 0, n - 1), np.clip(i1, 0, n - 1), w0, w1


def warp_affine(image: np.ndarray, m: np.ndarray, width: int, height: int, border: Border) -> np.ndarray:
    """Bilinear sampling of ``image`` (HxW or HxWxC uint8) through the 2x3 map ``m`` from output pixels to image
    pixels (``cv2.warpAffine(..., flags=INTER_LINEAR | WARP_INVERSE_MAP)``), ``width`` x ``height`` out."""
    h, w = image.shape[:2]
    u = np.arange(width, dtype=np.float64)[None, :]
    v = np.arange(height, dtype=np.float64)[:, None]
    xs = m[0, 0] * u + m[0, 1] * v + m[0, 2]
    ys = m[1, 0] * u + m[1, 1] * v + m[1, 2]
    x0, x1, wx0, wx1 = _taps(xs, w, border)
    y0, y1, wy0, wy1 = _taps(ys, h, border)
    if image.ndim == 3:  # the weights broadcast over the channels
        wx0, wx1, wy0, wy1 = (a[..., None] for a in (wx0, wx1, wy0, wy1))
    img = image.astype(np.float32)
    out = (img[y0, x0] * wx0 + img[y0, x1] * wx1) * wy0 + (img[y1, x0] * wx0 + img[y1, x1] * wx1) * wy1
    return _to_uint8(out)


class AxisAlignedSampler:
    """Bilinear sampling through a map without rotation, ``x = kx * u + ox``, ``y = ky * v + oy`` (a letterbox),
    black outside the image: ``warp_affine(..., border="zero")`` for that map, done separably (rows, then
    columns) with the taps computed once per image size, for a detector that runs it on every frame.

    Args:
        size: The input image's (width, height).
        out_size: The output's (width, height).
        kx, ox, ky, oy: The map from output pixels to image pixels.
    """

    def __init__(self, size: tuple[int, int], out_size: tuple[int, int], kx: float, ox: float, ky: float,
                 oy: float) -> None:
        (w, h), (tw, th) = size, out_size
        self.size = (w, h)
        x0, x1, wx0, wx1 = _taps(kx * np.arange(tw, dtype=np.float64) + ox, w, "zero")
        self._x = (x0, x1, wx0.astype(np.float32), wx1.astype(np.float32))
        y0, y1, wy0, wy1 = _taps(ky * np.arange(th, dtype=np.float64) + oy, h, "zero")
        self._y = (y0, y1, wy0.astype(np.float32)[:, None], wy1.astype(np.float32)[:, None])

    def __call__(self, image: np.ndarray, out: np.ndarray) -> None:
        """Sample ``image`` (HxW or HxWxC uint8 of the size given at construction) into ``out`` (uint8)."""
        y0, y1, wy0, wy1 = self._y
        x0, x1, wx0, wx1 = self._x
        if image.ndim == 3:
            wy0, wy1 = wy0[..., None], wy1[..., None]
            wx0, wx1 = wx0[:, None], wx1[:, None]
        rows = image[y0] * wy0 + image[y1] * wy1  # float32, (out height) x (image width) [x C]
        np.copyto(out, _to_uint8(rows[:, x0] * wx0 + rows[:, x1] * wx1))
