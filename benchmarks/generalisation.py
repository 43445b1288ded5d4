"""Eye alignment, framing and the class-prior option against the current default, in one run.

For every FER2013 validation face and every variant of ``robustness.py`` (clean, blur, small faces, noise,
JPEG, exposure, contrast, roll, shift, tight and loose crops) each bundle is scored in these configurations:

* ``direct``: the 48x48 variant face straight into the device classifier, as ``robustness.py`` does (the
  current default's numbers);
* ``FER box``: the variant face upsampled ``--upscale`` times onto a 640x480 canvas (as
  ``crop_calibration.py`` does) and cut out again by the shared ``crop_face`` from the box that frames it as
  FER2013 does: what the resampling alone costs;
* ``device``: the same canvas, the face found by BlazeFace and cropped from the detector's box, the way the
  daemon crops (against ``FER box``: what the detector's framing costs);
* ``device + align``: the same crop turned so the detector's two eye keypoints are level;
* ``+ prior``: with the class-prior correction at the strength that gives the best macro-F1 on the clean faces
  (``prior_correction.py``'s grid, chosen per bundle).

A face the detector misses is fed as it is (the 48x48 variant) in both device configurations, so they stay
paired; the detection rate is printed. Also printed: the eye-line roll BlazeFace measures on the clean FER2013
faces (how far from level the training faces are). Labels are the FER+ crowd majority where ``ferplus.npz``
lies beside the data, FER2013's own with ``--truth fer2013`` (``peer_fer.load_data``). Every model runs through
:class:`edge.runtime.classify.classifier.Classifier` (int8 LiteRT, 1 thread); no TensorFlow. Run::

    PYTHONPATH=. nice -n 10 python3 benchmarks/generalisation.py [--model BUNDLE ...] [--data FILE.npz] \
        [--limit N] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from crop_calibration import place
from model_latency import DEFAULT_FACES
from peer_fer import PeerError, add_truth_flag, load_data
from prior_correction import DEFAULT_TAUS, best_tau, predict, scores, tau_predictions
from robustness import CORRUPTIONS, corrupt

from edge.bundle import FER_LABELS, BundleError, default_bundle_dir
from edge.preprocess import eye_roll
from edge.runtime.classify.classifier import Classifier
from edge.runtime.classify.interpreter import RuntimeMissing
from edge.runtime.detect.base import DetectorError
from edge.runtime.detect.blazeface import BlazeFaceDetector

log = logging.getLogger(__name__)

#: Variants whose accuracies are also averaged on their own: the framings a detector gives, and head roll.
FRAMING = ("shift 8 %", "tight crop ×1.15", "loose crop ×0.85", "tight crop ×1.3", "loose crop ×0.7")
ROLL = ("roll 15°", "roll 30°")
RARE = ("angry", "disgust", "fear")


@dataclass
class DeviceFaces:
    """The device path's crops of one variant: from the FER-framed box, from the detector's box plain and
    eye-aligned, and which faces BlazeFace found."""

    fer_box: np.ndarray
    plain: np.ndarray
    aligned: np.ndarray
    found: np.ndarray
    rolls: list[float] = field(default_factory=list)


def device_faces(faces: np.ndarray, detector: BlazeFaceDetector, cropper: Classifier, upscale: int) -> DeviceFaces:
    """Paste each face on a canvas; crop it by its FER framing, and from the largest detection with and without
    its eyes."""
    fer_box, plain, aligned, found, rolls = [], [], [], [], []
    scale = cropper.prep.crop_scale
    for face in faces:
        canvas, (x0, y0, side) = place(face, upscale)
        # The box whose shared square crop is exactly the pasted face (centred, side / crop_scale).
        inner = side / scale
        fer_box.append(cropper.crops(canvas, [(x0 + (side - inner) / 2, y0 + (side - inner) / 2, inner, inner)])[0])
        dets = detector.detect(canvas)
        if not dets:
            plain.append(face)
            aligned.append(face)
            found.append(False)
            continue
        d = dets[0]
        plain.append(cropper.crops(canvas, [d.box])[0])
        aligned.append(cropper.crops(canvas, [d.box], [d.eyes])[0])
        found.append(True)
        if d.eyes is not None:
            rolls.append(eye_roll(d.eyes))
    return DeviceFaces(np.stack(fer_box), np.stack(plain), np.stack(aligned), np.array(found), rolls)


@dataclass
class Bundle:
    """A bundle under test: its classifiers without and with the chosen prior correction."""

    path: Path
    name: str
    tau: float
    plain: Classifier
    corrected: Classifier


def load_bundle_under_test(path: Path, x: np.ndarray, y: np.ndarray, taus: list[float]) -> Bundle:
    """Load ``path`` and choose its prior-correction strength on the clean faces by macro-F1."""
    plain = Classifier(path, threads=1)
    if tuple(plain.labels) != FER_LABELS:
        raise PeerError(f"bundle {path} labels {plain.labels} are not the 7 FER classes in order")
    tau = best_tau(y, tau_predictions(path, x, taus)) if plain.manifest.class_prior() is not None else 0.0
    return Bundle(path, plain.model_id, tau, plain, Classifier(path, threads=1, prior_correction=tau))


def configurations(b: Bundle, direct: np.ndarray, dev: DeviceFaces) -> dict[str, np.ndarray]:
    """Predicted labels of every configuration of bundle ``b`` on one variant."""
    out = {
        f"{b.name} direct": predict(b.plain, direct),
        f"{b.name} direct + prior {b.tau:g}": predict(b.corrected, direct),
        f"{b.name} FER box": predict(b.plain, dev.fer_box),
        f"{b.name} device": predict(b.plain, dev.plain),
        f"{b.name} device + align": predict(b.plain, dev.aligned),
        f"{b.name} device + align + prior {b.tau:g}": predict(b.corrected, dev.aligned),
    }
    return {k: np.argmax(v, axis=1) for k, v in out.items()}


def run(bundles: list[Bundle], x: np.ndarray, y: np.ndarray, names: list[str], seed: int, upscale: int) -> dict:
    """``{"table": {variant: {config: scores}}, "found": {variant: rate}, "rolls": [clean eye rolls]}``."""
    from tqdm import tqdm

    detector = BlazeFaceDetector(min_confidence=0.5, min_face_size=20, max_faces=3)
    cropper = Classifier(bundles[0].path, threads=1, align_eyes=True)
    table: dict[str, dict[str, dict]] = {}
    found: dict[str, float] = {}
    rolls: list[float] = []
    try:
        for name in tqdm(names, desc="variants", unit="variant"):
            faces = corrupt(x, name, seed)
            dev = device_faces(faces, detector, cropper, upscale)
            found[name] = float(dev.found.mean())
            if name == "clean":
                rolls = dev.rolls
            table[name] = {}
            for b in bundles:
                for config, pred in configurations(b, faces, dev).items():
                    table[name][config] = scores(y, pred)
    finally:
        detector.close()
    return {"table": table, "found": found, "rolls": rolls}


def _mean(table: dict, config: str, variants) -> float:
    accs = [table[v][config]["accuracy"] for v in variants if v in table]
    return float(np.mean(accs)) if accs else float("nan")


def summary(table: dict) -> str:
    """One row per configuration: clean accuracy, macro-F1, rare-class recall and the variant means."""
    corrupted = [v for v in table if v != "clean"]
    head = ("| configuration | clean acc | macro-F1 | " + " | ".join(f"{c} recall" for c in RARE)
            + " | mean of corrupted | framing mean | roll mean |")
    lines = [head, "|---|" + "---:|" * (5 + len(RARE))]
    for config, s in table["clean"].items():
        rare = [f"{100 * s['recall'][FER_LABELS.index(c)]:.1f} %" for c in RARE]
        lines.append(f"| {config} | {100 * s['accuracy']:.2f} % | {s['macro_f1']:.3f} | " + " | ".join(rare)
                     + f" | {100 * _mean(table, config, corrupted):.2f} % | {100 * _mean(table, config, FRAMING):.2f} %"
                     f" | {100 * _mean(table, config, ROLL):.2f} % |")
    return "\n".join(lines)


def per_variant(table: dict, found: dict) -> str:
    """Rows: variants (with the detection rate); columns: configurations; cells: accuracy / macro-F1."""
    configs = list(table["clean"])
    lines = ["| variant | found | " + " | ".join(configs) + " |", "|---|---:|" + "---:|" * len(configs)]
    for v, row in table.items():
        cells = [f"{100 * row[c]['accuracy']:.2f} / {row[c]['macro_f1']:.3f}" for c in configs]
        lines.append(f"| {v} | {100 * found[v]:.0f} % | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def recall_table(table: dict) -> str:
    """Clean faces: every class's recall per configuration."""
    lines = ["| configuration | " + " | ".join(FER_LABELS) + " |", "|---|" + "---:|" * len(FER_LABELS)]
    for config, s in table["clean"].items():
        lines.append(f"| {config} | " + " | ".join(f"{100 * r:.1f} %" for r in s["recall"]) + " |")
    return "\n".join(lines)


def roll_line(rolls: list[float]) -> str:
    """The distribution of the eye-line roll on the clean faces."""
    if not rolls:
        return "no eye keypoints on the clean faces"
    r = np.array(rolls)
    p5, p25, p50, p75, p95 = np.percentile(r, [5, 25, 50, 75, 95])
    return (f"eye-line roll on {len(r)} clean faces (BlazeFace keypoints, degrees): mean {r.mean():+.2f}, std {r.std():.2f}, "
            f"p5/p25/p50/p75/p95 {p5:+.1f}/{p25:+.1f}/{p50:+.1f}/{p75:+.1f}/{p95:+.1f}; |roll| > 5°: "
            f"{100 * np.mean(np.abs(r) > 5):.0f} %, > 10°: {100 * np.mean(np.abs(r) > 10):.0f} %, > 20°: "
            f"{100 * np.mean(np.abs(r) > 20):.0f} %")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, action="append", default=None,
                   help="a bundle folder; repeat to compare (default: edge/models/default)")
    p.add_argument("--data", type=Path, default=DEFAULT_FACES, help="an .npz with x (N x 48 x 48 uint8) and y (FER order)")
    p.add_argument("--limit", type=int, default=None,
                   help="use a seeded random N of the faces (val.npz is sorted by class, so not the first N)")
    p.add_argument("--only", action="append", choices=list(CORRUPTIONS), default=None,
                   help="run only these variants (repeat); 'clean' is always included")
    p.add_argument("--seed", type=int, default=0, help="seed of the variants' random parts and of --limit")
    p.add_argument("--upscale", type=int, default=4, help="device path: face upsampling onto the canvas (48 -> 192 px)")
    p.add_argument("--json", type=Path, default=None, help="also write every number as JSON here")
    add_truth_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Score every bundle in every configuration on every variant; print the tables; return the exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        print("error: --limit must be at least 1", file=sys.stderr)
        return 2
    names = ["clean", *[n for n in CORRUPTIONS if n != "clean" and (args.only is None or n in args.only)]]
    try:
        x, y = load_data(args.data, None, args.truth)
        if args.limit is not None and args.limit < len(x):
            keep = np.sort(np.random.default_rng(args.seed).permutation(len(x))[: args.limit])
            x, y = x[keep], y[keep]
        bundles = [load_bundle_under_test(b, x, y, list(DEFAULT_TAUS)) for b in (args.model or [default_bundle_dir()])]
        if len({b.plain.prep for b in bundles}) != 1:
            raise PeerError("the bundles use different preprocessing parameters; compare bundles that crop alike")
        result = run(bundles, x, y, names, args.seed, args.upscale)
    except (PeerError, BundleError, RuntimeMissing, DetectorError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = result["table"]
    print(f"\nData: {args.data} ({len(x)} faces), seed {args.seed}, device path at x{args.upscale} on 640x480. "
          f"Machine: {platform.machine()}, Python {platform.python_version()}. Prior strengths (best clean macro-F1): "
          + ", ".join(f"{b.name} {b.tau:g}" for b in bundles) + ".\n")
    print(summary(table))
    print(f"\n(framing mean: {', '.join(FRAMING)}; roll mean: {', '.join(ROLL)}; mean of corrupted: all "
          f"{len(table) - 1} variants but clean.)\n\nPer variant, accuracy / macro-F1 (found: faces BlazeFace detected):\n")
    print(per_variant(table, result["found"]))
    print("\nPer-class recall on the clean faces:\n")
    print(recall_table(table))
    print(f"\n{roll_line(result['rolls'])}")
    print(f"\nCommand: {shlex.join([Path(sys.executable).as_posix(), *sys.argv])}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"data": str(args.data), "n": len(x), "seed": args.seed,
                                         "taus": {b.name: b.tau for b in bundles}, **result},
                                        indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
