"""Measure how a detector's box relates to FER2013's framing, to calibrate the face crop.

Each FER2013 validation face (48x48) is upsampled ``--upscale`` times, pasted in the middle of a 640x480 canvas
(border replicated outward so the detector sees no hard frame edge), and detected. For every detected face
this records ``ratio`` = FER image side / box longer side and ``offset`` = (FER image centre y - box centre y)
/ box height. With the shared crop (square of ``crop_scale`` x longer side, centre shifted by ``crop_shift`` x
height) the FER-matching values are crop_scale = ratio and crop_shift = offset. The script prints the medians
and the BoxAdjust that makes the detector's boxes FER-framed under the shared defaults.

Run: ``PYTHONPATH=. python3 benchmarks/crop_calibration.py --data ../shared/data/fer2013/val.npz [--limit 600]``
(reads the faces; writes nothing).
"""

from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np

from edge.preprocess import DEFAULT_CROP_SCALE, DEFAULT_CROP_SHIFT
from edge.runtime.detect.base import BoxAdjust
from edge.runtime.detect.haar import HaarDetector
from edge.runtime.detect.mediapipe_tasks import MediaPipeDetector


def place(face: np.ndarray, upscale: int, canvas_wh=(640, 480)) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Upsample ``face`` and centre it on a canvas; return the canvas and (x0, y0, side) of the face."""
    side = face.shape[0] * upscale
    big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
    cw, ch = canvas_wh
    x0, y0 = (cw - side) // 2, (ch - side) // 2
    canvas = cv2.copyMakeBorder(big, y0, ch - side - y0, x0, cw - side - x0, cv2.BORDER_REPLICATE)
    return canvas, (x0, y0, side)


def measure(detector, faces: np.ndarray, upscale: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Ratios and offsets over the faces where exactly one face was found; also the number found."""
    ratios, offsets = [], []
    for face in faces:
        canvas, (x0, y0, side) = place(face, upscale)
        dets = detector.detect(canvas)
        if len(dets) != 1:
            continue
        x, y, w, h = dets[0].raw_box
        ratios.append(side / max(w, h))
        offsets.append(((y0 + side / 2) - (y + h / 2)) / h)
    return np.array(ratios), np.array(offsets), len(ratios)


def main(argv: list[str] | None = None) -> int:
    """Print the calibration table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/fer2013/val.npz", help="FER2013 .npz with x (N x 48 x 48)")
    ap.add_argument("--limit", type=int, default=600, help="Faces to use (the first N)")
    ap.add_argument("--upscale", type=int, default=4, help="Upsampling factor (48 -> 192 px at 4)")
    args = ap.parse_args(argv)
    faces = np.load(args.data)["x"][: args.limit]
    print(f"{len(faces)} FER faces, upscaled x{args.upscale} onto 640x480; shared defaults crop_scale="
          f"{DEFAULT_CROP_SCALE} crop_shift={DEFAULT_CROP_SHIFT}\n")
    print("| detector | detected | ratio median (p25-p75) | offset median (p25-p75) | BoxAdjust for defaults |")
    print("|---|---|---|---|---|")
    for name, det in (
        ("mediapipe", MediaPipeDetector(min_confidence=0.5, min_face_size=20, max_faces=3)),
        ("opencv", HaarDetector(min_face_size=20, max_faces=3, max_side=640)),
    ):
        # Raw boxes are what we calibrate, so neutralise any correction already configured.
        det.adjust = BoxAdjust()
        r, o, n = measure(det, faces, args.upscale)
        det.close()
        if n == 0:
            print(f"| {name} | 0 | - | - | - |")
            continue
        rm, om = float(np.median(r)), float(np.median(o))
        # square_box(BoxAdjust(k, s).apply(box), DEFAULT_CROP_SCALE, DEFAULT_CROP_SHIFT) equals the FER square when
        # side: DEFAULT_CROP_SCALE * k * side_box = ratio * side_box, and centre: s*h + DEFAULT_CROP_SHIFT*k*h =
        # offset*h (both measured downwards, image y grows down).
        k = rm / DEFAULT_CROP_SCALE
        s = om - DEFAULT_CROP_SHIFT * k
        print(f"| {name} | {n}/{len(faces)} | {rm:.3f} ({np.percentile(r, 25):.3f}-{np.percentile(r, 75):.3f}) | "
              f"{om:+.3f} ({np.percentile(o, 25):+.3f}-{np.percentile(o, 75):+.3f}) | "
              f"BoxAdjust(scale={k:.3f}, shift={s:+.3f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
