"""Per-frame cost of the device's numpy image path (``edge/imaging.py``) against the OpenCV calls it replaced.

Times, as the median of ``--repeat`` runs after a warm-up, each step a frame or a face costs on the device:

* the face crop: ``preprocess.crop_face`` of a 150 px face box in a 640x480 BGR frame (grey of the crop, area
  resize to 48), without and with eye alignment (a 12 degree turn), against ``cvtColor`` + ``resize(INTER_AREA)``
  and ``cvtColor`` + ``warpAffine`` + ``resize``;
* BlazeFace's 128x128 letterbox: on the Pi camera's 320x240 lores Y plane (bilinear sampling) and on a 640x480 BGR
  frame (every 5th pixel), against ``warpAffine`` / ``resize(INTER_NEAREST)``, each followed by the float input.

Needs OpenCV (the [opencv] extra) for the comparison. A Pi Zero 2 W is roughly 10x slower than this machine. Run::

    nice -n 5 python3 benchmarks/imaging_speed.py [--repeat 300]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np

from edge.preprocess import Preprocessing, crop_face, square_box
from edge.runtime.capture.demo import DemoSource
from edge.runtime.detect.blazeface import BlazeFaceDetector


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``fn()`` in milliseconds, after 10 untimed calls."""
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def opencv_crop(frame: np.ndarray, box: tuple[float, float, float, float], roll: float) -> np.ndarray:
    """The OpenCV version of the crop (inside the frame, so no border handling is needed)."""
    x0, y0, side = square_box(box, Preprocessing().crop_scale)
    if roll:
        centre = (x0 + (side - 1) / 2.0, y0 + (side - 1) / 2.0)
        m = cv2.getRotationMatrix2D(centre, roll, 1.0)
        m[:, 2] -= (x0, y0)
        crop = cv2.warpAffine(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), m, (side, side), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
    else:
        crop = cv2.cvtColor(frame[y0 : y0 + side, x0 : x0 + side], cv2.COLOR_BGR2GRAY)
    return cv2.resize(crop, (48, 48), interpolation=cv2.INTER_AREA)


def opencv_letterbox(image: np.ndarray, out: np.ndarray) -> None:
    """BlazeFace's letterbox and float input as the OpenCV version did it."""
    h, w = image.shape[:2]
    side = max(w, h)
    if w == 640 and h == 480:
        warped = np.zeros((128, 128, 3), np.uint8)
        cv2.resize(image, (128, 96), dst=warped[16:112], interpolation=cv2.INTER_NEAREST)
    else:
        m = np.array([[side / 128, 0, (w - side) / 2], [0, side / 128, (h - side) / 2]])
        warped = cv2.warpAffine(image, m, (128, 128), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    rgb = cv2.cvtColor(warped, cv2.COLOR_GRAY2RGB if warped.ndim == 2 else cv2.COLOR_BGR2RGB)
    rows = rgb.reshape(128, 384)
    cv2.addWeighted(rows, 2.0 / 255.0, rows, 0.0, -1.0, dst=out.reshape(128, 384), dtype=cv2.CV_32F)


def main(argv: list[str] | None = None) -> int:
    """Time each step both ways and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=300, help="timed runs per step (default 300)")
    args = ap.parse_args(argv)
    frame = DemoSource(faces=1).render(0)
    box = (250.0, 170.0, 150.0, 150.0)
    eyes = ((290.0, 220.0), (352.0, 233.18))  # a 12 degree roll
    lores = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (320, 240), interpolation=cv2.INTER_AREA)
    det = BlazeFaceDetector()
    out = np.empty((128, 128, 3), np.float32)
    rows = [
        ("face crop, 150 px box -> 48x48", lambda: crop_face(frame, box), lambda: opencv_crop(frame, box, 0.0)),
        ("face crop with eye alignment (12 deg)", lambda: crop_face(frame, box, eyes=eyes),
         lambda: opencv_crop(frame, box, 12.0)),
        ("BlazeFace letterbox, 320x240 grey (Pi lores)", lambda: det._to_tensor(lores),
         lambda: opencv_letterbox(lores, out)),
        ("BlazeFace letterbox, 640x480 BGR", lambda: det._to_tensor(frame), lambda: opencv_letterbox(frame, out)),
    ]
    print("| step | numpy ms | OpenCV ms |\n|---|---|---|")
    for name, ours, theirs in rows:
        print(f"| {name} | {median_ms(ours, args.repeat):.3f} | {median_ms(theirs, args.repeat):.3f} |")
    det.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
