"""What detecting on one frame in N costs: accuracy of the carried faces and the time to find a face that enters.

FER2013 validation faces (optionally under a ``robustness.py`` corruption) become short clips on a 640x480
camera-like scene: each face, upsampled ``--upscale`` times (its border replicated around it), enters after a gap of 2 to 6 empty frames, then
moves in a straight line at a random speed (up to ``--max-speed`` pixels a frame, bouncing off the edges) for
``--clip`` frames, with fresh sensor noise on every frame. One continuous stream per setting, so the detector's
schedule meets each face at a random phase, as a camera's would; every setting replays the same seeded stream. For each ``--every`` N the daemon's own parts run
frame by frame: :class:`edge.runtime.detect.carry.CarryingDetector` (BlazeFace in LiteRT every N frames, template
carrying in between, ``--min-match``) and the device classifier (eye alignment, int8 LiteRT, 1 thread) on the boxes
of every frame. Per setting it prints:

* ``acc seen``: accuracy of the frames where a box covers the face (IoU >= 0.3 with its true square), the frame's
  own probabilities' top class against the face's label (``--truth``: the FER+ crowd majority where
  ``ferplus.npz`` lies beside the data, else FER2013's own; what carrying costs the classifier);
* ``acc all``: the same over every face frame, a frame without such a box counting as wrong (adds the cost of the
  entering delay);
* ``acc common``: each setting's accuracy on the face frames that every setting covered (after the table; a setting
  that covers more frames keeps harder ones, which ``acc seen`` mixes in);
* frames from a face's first frame to its first box: mean, p90, max;
* detector runs per frame, and the detect + classify milliseconds per frame (mean; a busy host inflates both).

Run::

    PYTHONPATH=. nice -n 10 python3 benchmarks/detect_interval.py [--every 1 2 3 5 8] [--limit 1000] \
        [--variant clean "blur σ1"] [--clip 12] [--max-speed 6] [--companion] [--seed S] [--truth auto|fer2013] \
        [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from model_latency import DEFAULT_FACES
from peer_fer import PeerError, add_truth_flag, load_data
from robustness import CORRUPTIONS, corrupt

from edge.bundle import default_bundle_dir
from edge.runtime.classify.classifier import Classifier
from edge.runtime.detect.blazeface import BlazeFaceDetector
from edge.runtime.detect.carry import CarryingDetector
from edge.runtime.track import iou

W, H = 640, 480


def scene(seed: int) -> np.ndarray:
    """A static gray background: a vertical gradient with a little texture (like the demo source's)."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((H, W)).astype(np.float32) * 6 + np.linspace(70, 150, H, dtype=np.float32)[:, None]
    return np.clip(g, 0, 255).astype(np.uint8)


def with_companion(bg: np.ndarray, companion: np.ndarray | None) -> tuple[np.ndarray, int]:
    """``bg`` with ``companion`` (upsampled 3x, border replicated) in its top-left corner, and the x where the
    free part of the scene starts (0 without a companion)."""
    if companion is None:
        return bg, 0
    side = 48 * 3
    still = cv2.copyMakeBorder(cv2.resize(companion, (side, side), interpolation=cv2.INTER_CUBIC),
                               side // 3, side // 3, side // 3, side // 3, cv2.BORDER_REPLICATE)
    bg = bg.copy()
    bg[: still.shape[0], : still.shape[1]] = still
    return bg, still.shape[1]


def pick_companion(faces: np.ndarray, seed: int) -> int:
    """Index of the last face that BlazeFace finds in its corner on every one of 5 noisy frames."""
    det = BlazeFaceDetector(threads=1)
    rng = np.random.default_rng(seed)
    try:
        for k in range(len(faces) - 1, -1, -1):
            bg, _ = with_companion(scene(seed), faces[k])
            frames = [np.clip(bg + rng.normal(0, 2.0, bg.shape), 0, 255).astype(np.uint8) for _ in range(5)]
            if all(det.detect(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR)) for f in frames):
                return k
    finally:
        det.close()
    raise PeerError("no face of the data is found reliably enough to be the companion")


def stream(faces: np.ndarray, upscale: int, clip: int, max_speed: float, seed: int,
           companion: np.ndarray | None = None):
    """Yield ``(bgr_frame, face_index or -1, true_box or None, first_frame_of_face)`` for the whole stream; with a
    ``companion`` face, that face sits still in the top-left corner of every frame and the others move beside it."""
    rng = np.random.default_rng(seed)
    bg, left = with_companion(scene(seed), companion)
    noise = [rng.normal(0, 2.0, (H, W)).astype(np.float32) for _ in range(8)]
    side = 48 * upscale
    pad = side // 3
    k = 0

    def frame(gray: np.ndarray) -> np.ndarray:
        nonlocal k
        k += 1
        g = np.clip(gray.astype(np.float32) + noise[k % len(noise)], 0, 255).astype(np.uint8)
        return cv2.cvtColor(g, cv2.COLOR_GRAY2BGR)

    for i, face in enumerate(faces):
        for _ in range(int(rng.integers(2, 7))):
            yield frame(bg), -1, None, False
        # The face with its border replicated a third of its side around it, as crop_calibration.py's canvas has:
        # the device's crop reaches beyond the face square, and FER2013's own framing continues there.
        big = cv2.copyMakeBorder(cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC), pad, pad, pad, pad,
                                 cv2.BORDER_REPLICATE)
        x, y = rng.uniform(left + pad, W - side - pad), rng.uniform(pad, H - side - pad)
        angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0, max_speed)
        vx, vy = speed * np.cos(angle), speed * np.sin(angle)
        for j in range(clip):
            g = bg.copy()
            xi, yi = int(round(x)), int(round(y))
            g[yi - pad : yi + side + pad, xi - pad : xi + side + pad] = big
            yield frame(g), i, (float(xi), float(yi), float(side), float(side)), j == 0
            x, y = x + vx, y + vy
            if not left + pad <= x <= W - side - pad:
                vx, x = -vx, min(max(x, left + pad), W - side - pad)
            if not pad <= y <= H - side - pad:
                vy, y = -vy, min(max(y, pad), H - side - pad)


def run(every: int, faces: np.ndarray, labels: np.ndarray, clf: Classifier, args: argparse.Namespace) -> dict:
    """One setting over the whole stream."""
    det = CarryingDetector(BlazeFaceDetector(threads=1), every, args.min_match)
    seen = correct_seen = correct_all = total = runs = frames = 0
    delays: list[int] = []
    marks: list[bool | None] = []  # per face frame: right, wrong, or None (no box covered the face)
    waiting = -1  # frames since the current face appeared, until its first box
    ms = 0.0
    scored, labels, companion = faces, labels, None
    if args.companion:  # the companion is not scored
        k = pick_companion(faces, args.seed)
        scored, labels, companion = np.delete(faces, k, axis=0), np.delete(labels, k), faces[k]
    for img, fi, box, first in stream(scored, args.upscale, args.clip, args.max_speed, args.seed, companion):
        t0 = time.perf_counter()
        dets = det.detect(img)
        probs = clf.classify(img, [d.box for d in dets], [d.eyes for d in dets]) if dets else None
        ms += time.perf_counter() - t0
        frames += 1
        runs += det.detected
        if fi < 0:
            continue
        if first:
            waiting = 0
        total += 1
        hit = [k for k, d in enumerate(dets) if iou(d.raw_box, box) >= 0.3]
        if hit:
            if waiting >= 0:
                delays.append(waiting)
                waiting = -1
            seen += 1
            ok = int(np.argmax(probs[hit[0]])) == int(labels[fi])
            correct_seen += ok
            correct_all += ok
            marks.append(ok)
        else:
            marks.append(None)
            if waiting >= 0:
                waiting += 1
    det.close()
    d = np.array(delays) if delays else np.array([args.clip])
    return {
        "every": every, "acc_seen": correct_seen / max(1, seen), "acc_all": correct_all / max(1, total),
        "coverage": seen / max(1, total), "found": len(delays) / max(1, len(scored)),
        "delay_mean": float(d.mean()), "delay_p90": float(np.percentile(d, 90)), "delay_max": int(d.max()),
        "detector_runs_per_frame": runs / frames, "ms_per_frame": 1000 * ms / frames, "marks": marks,
    }


def common_accuracy(results: list[dict]) -> list[float]:
    """Each setting's accuracy on the face frames that every setting covered (the stream is the same for all):
    ``acc seen`` without the bias of coverage, since a setting that keeps more frames keeps harder ones too."""
    both = [all(r["marks"][i] is not None for r in results) for i in range(len(results[0]["marks"]))]
    n = max(1, sum(both))
    return [sum(bool(m) for m, b in zip(r["marks"], both, strict=True) if b) / n for r in results]


def build_parser() -> argparse.ArgumentParser:
    """The command line: settings, faces, stream and labels."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="Bundle (default: the shipped one).")
    ap.add_argument("--data", type=Path, default=DEFAULT_FACES, help="FER2013 .npz (x, y); ferplus.npz beside it gives the labels (--truth).")
    ap.add_argument("--limit", type=int, default=1000, help="Faces (clips) per setting.")
    ap.add_argument("--every", type=int, nargs="+", default=[1, 2, 3, 5, 8], help="Detector intervals to compare.")
    ap.add_argument("--variant", nargs="+", default=["clean"], choices=sorted(CORRUPTIONS), help="Face corruptions.")
    ap.add_argument("--clip", type=int, default=12, help="Frames each face stays.")
    ap.add_argument("--max-speed", type=float, default=6.0, help="Largest face speed, pixels a frame.")
    ap.add_argument("--upscale", type=int, default=4, help="Face size on the canvas: 48 x this.")
    ap.add_argument("--min-match", type=float, default=0.6, help="CarryingDetector's min_match.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--companion", action="store_true",
                    help="Keep one face (the last that BlazeFace finds reliably; not scored) still in a corner of every "
                         "frame: the others then enter beside a carried face and wait for the detector's schedule "
                         "(use --upscale 3 to leave them room to move).")
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    add_truth_flag(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run every setting on every variant and print a markdown table."""
    args = build_parser().parse_args(argv)
    try:
        x, y = load_data(args.data, args.limit, args.truth)
    except PeerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    clf = Classifier(args.model or default_bundle_dir(), threads=1)
    print(f"model {clf.model_id}; {len(x)} faces x {args.clip} frames, 48x{args.upscale} px, up to "
          f"{args.max_speed:g} px/frame, min_match {args.min_match}"
          f"{', beside a still companion face' if args.companion else ''}; {time.strftime('%Y-%m-%d')}\n")
    print("| variant | every N | acc seen | acc all | coverage | frames to first box: mean / p90 / max | "
          "detector runs per frame | detect + classify ms/frame |")
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    results = []
    for variant in args.variant:
        faces = corrupt(x, variant, args.seed)
        rows = []
        for every in args.every:
            r = {"variant": variant, **run(every, faces, y, clf, args)}
            rows.append(r)
            print(f"| {variant} | {every} | {100 * r['acc_seen']:.2f} % | {100 * r['acc_all']:.2f} % | "
                  f"{100 * r['coverage']:.1f} % | {r['delay_mean']:.2f} / {r['delay_p90']:.0f} / {r['delay_max']} | "
                  f"{r['detector_runs_per_frame']:.2f} | {r['ms_per_frame']:.2f} |", flush=True)
        for r, acc in zip(rows, common_accuracy(rows), strict=True):
            r["acc_common"] = acc
            del r["marks"]
        results += rows
    print()  # after the table, so that it stays one table
    for variant in args.variant:
        rows = [r for r in results if r["variant"] == variant]
        print(f"{variant}: accuracy on the face frames every setting covered (acc common): "
              + ", ".join(f"N = {r['every']} {100 * r['acc_common']:.2f} %" for r in rows))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"\ncommand: PYTHONPATH=. python3 benchmarks/detect_interval.py {shlex.join(argv if argv is not None else sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
