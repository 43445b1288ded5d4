"""The class-prior correction (``[classifier] prior_correction``): per-class recall of a bundle for each strength.

FER2013's training set is 25 % happy and 1.5 % disgust, and a model learns that prior: a face it is unsure of
goes to the frequent classes. The device can divide each face's probabilities by the training set's class
frequencies to the power ``tau`` (logit adjustment, ``log p(y|x) - tau * log prior(y)``; the frequencies come
from the bundle's manifest). This script runs the device classifier
(:class:`edge.runtime.classify.classifier.Classifier`, int8 LiteRT, 1 thread) on the FER2013 validation faces
for each ``tau`` of a grid and prints accuracy, macro-F1 and every class's recall, marks the ``tau`` with the
best macro-F1, and checks that choice on held-out faces (chosen on a random half of the faces, scored on the
other half, for 20 halvings), since a ``tau`` picked and scored on the same faces flatters itself. Labels are
the FER+ crowd majority where ``ferplus.npz`` lies beside the data, FER2013's own with ``--truth fer2013``
(``peer_fer.load_data``). Run::

    PYTHONPATH=. nice -n 10 python3 benchmarks/prior_correction.py [--model BUNDLE] [--data FILE.npz] \
        [--taus 0,0.25,0.5,0.75,1] [--limit N] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from pathlib import Path

import numpy as np
from model_latency import DEFAULT_FACES
from peer_fer import PeerError, add_truth_flag, load_data, macro_f1

from edge.bundle import FER_LABELS, BundleError, default_bundle_dir
from edge.runtime.classify.classifier import Classifier
from edge.runtime.classify.interpreter import RuntimeMissing

DEFAULT_TAUS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0)


def scores(y: np.ndarray, pred: np.ndarray, n_classes: int = len(FER_LABELS)) -> dict:
    """Accuracy, macro-F1 and per-class recall (a list in label order; NaN for a class without faces)."""
    support = np.bincount(y, minlength=n_classes)
    hits = np.bincount(y[pred == y], minlength=n_classes)
    recall = np.divide(hits, support, out=np.full(n_classes, np.nan), where=support > 0)
    return {"accuracy": float(np.mean(pred == y)) if len(y) else float("nan"),
            "macro_f1": macro_f1(y, pred, n_classes), "recall": [float(r) for r in recall]}


def predict(clf: Classifier, faces: np.ndarray) -> np.ndarray:
    """The classifier's probabilities for N x 48 x 48 uint8 faces, in batches of 256."""
    if not len(faces):
        return np.zeros((0, len(clf.labels)))
    return np.concatenate([clf.classify_faces(faces[i : i + 256]) for i in range(0, len(faces), 256)])


def tau_predictions(bundle: Path, faces: np.ndarray, taus: list[float]) -> dict[float, np.ndarray]:
    """Predicted labels of ``faces`` for every ``tau``, each from the device classifier with that correction."""
    return {tau: np.argmax(predict(Classifier(bundle, threads=1, prior_correction=tau), faces), axis=1) for tau in taus}


def best_tau(y: np.ndarray, preds: dict[float, np.ndarray], mask: np.ndarray | None = None) -> float:
    """The ``tau`` with the highest macro-F1 on the faces in ``mask`` (all by default); the smaller one on a tie."""
    mask = np.ones(len(y), bool) if mask is None else mask
    return max(sorted(preds), key=lambda t: (round(macro_f1(y[mask], preds[t][mask], len(FER_LABELS)), 12), -t))


def cross_check(y: np.ndarray, preds: dict[float, np.ndarray], splits: int = 20, seed: int = 0) -> dict:
    """``splits`` random halvings of the faces: ``tau`` chosen on one half by macro-F1, its macro-F1 gain (over tau 0)
    measured on the other half. Returns the taus chosen, the gains, their mean and how many were positive."""
    rng = np.random.default_rng(seed)
    taus, gains = [], []
    for _ in range(splits):
        pick = np.zeros(len(y), bool)
        pick[rng.permutation(len(y))[: len(y) // 2]] = True
        tau = best_tau(y, preds, pick)
        held = ~pick
        taus.append(tau)
        gains.append(macro_f1(y[held], preds[tau][held], len(FER_LABELS)) - macro_f1(y[held], preds[0.0][held], len(FER_LABELS)))
    return {"splits": splits, "taus": taus, "gains": gains, "mean_gain": float(np.mean(gains)),
            "positive": int(np.sum(np.array(gains) > 0)), "zero": int(np.sum(np.array(gains) == 0))}


def markdown(table: dict[float, dict], chosen: float) -> str:
    """Rows: tau; columns: accuracy, macro-F1 and each class's recall (the chosen tau in bold)."""
    lines = ["| tau | accuracy | macro-F1 | " + " | ".join(f"{c} recall" for c in FER_LABELS) + " |",
             "|---:|---:|---:|" + "---:|" * len(FER_LABELS)]
    for tau, s in table.items():
        name = f"**{tau:g}** (best)" if tau == chosen else f"{tau:g}"
        cells = [f"{100 * s['accuracy']:.2f} %", f"{s['macro_f1']:.3f}", *(f"{100 * r:.1f} %" for r in s["recall"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_taus(text: str) -> list[float]:
    """``"0,0.5,1"`` → ``[0.0, 0.5, 1.0]`` (0 always included, as the reference); ValueError on a bad value."""
    taus = sorted({0.0, *(float(t) for t in text.split(",") if t.strip())})
    if taus[0] < 0 or taus[-1] > 2:
        raise ValueError(f"--taus must lie in [0, 2] (the config's range), got {text}")
    return taus


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=None, help="a bundle folder (default: edge/models/default)")
    p.add_argument("--data", type=Path, default=DEFAULT_FACES, help="an .npz with x (N x 48 x 48 uint8) and y (FER order)")
    p.add_argument("--taus", default=",".join(f"{t:g}" for t in DEFAULT_TAUS), help="comma-separated strengths to try")
    p.add_argument("--limit", type=int, default=None, help="use only the first N faces (val.npz is sorted by class)")
    p.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    add_truth_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Print the per-class recall table for every tau; return the exit status."""
    args = build_parser().parse_args(argv)
    bundle = args.model or default_bundle_dir()
    try:
        taus = parse_taus(args.taus)
        x, y = load_data(args.data, args.limit, args.truth)
        preds = tau_predictions(bundle, x, taus)
    except (PeerError, BundleError, RuntimeMissing, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = {tau: scores(y, p) for tau, p in preds.items()}
    chosen = best_tau(y, preds)
    folds = cross_check(y, preds)
    print(f"\nModel: {bundle}. Data: {args.data} ({len(x)} faces). Device classifier, int8 LiteRT, 1 thread. "
          f"Machine: {platform.machine()}, Python {platform.python_version()}.\n")
    print(markdown(table, chosen))
    print("\nWithout and with the best tau, per class (recall):\n")
    print("| class | tau 0 | tau " + f"{chosen:g}" + " | change |\n|---|---:|---:|---:|")
    for i, c in enumerate(FER_LABELS):
        r0, r1 = table[0.0]["recall"][i], table[chosen]["recall"][i]
        print(f"| {c} | {100 * r0:.1f} % | {100 * r1:.1f} % | {100 * (r1 - r0):+.1f} pp |")
    print(f"\nHeld-out check ({folds['splits']} random halvings: tau chosen on one half by macro-F1, scored on the other): "
          f"taus chosen {sorted(folds['taus'])}; macro-F1 gain over tau 0 on the held-out half: mean "
          f"{folds['mean_gain']:+.4f}, positive in {folds['positive']} of {folds['splits']} (zero in {folds['zero']}).")
    print(f"\nCommand: {shlex.join([Path(sys.executable).as_posix(), *sys.argv])}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": str(bundle), "data": str(args.data), "n": len(x), "best_tau": chosen,
                                         "table": {f"{t:g}": s for t, s in table.items()}, "cross_check": folds},
                                        indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
