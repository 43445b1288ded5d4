"""How far a bundle's probabilities can be trusted: reliability before and after its calibration, and the
``uncertain`` threshold that calibrated confidence supports.

Runs the device classifier (:class:`edge.runtime.classify.classifier.Classifier`, int8 LiteRT, 1 thread) on the
validation faces twice: as the model outputs them (temperature 1) and with the bundle's calibration (what the
device reports). Prints the expected calibration error (15 equal-width bins of top-1 confidence), the
reliability table (per bin: faces, mean confidence, accuracy), and for each candidate ``[tracking]
uncertain_below`` threshold the share of faces it reports as uncertain and the accuracy of those it names and of
those it does not. Labels are the FER+ majority where ``ferplus.npz`` lies beside the data (``--truth``). Run::

    PYTHONPATH=. nice -n 10 python3 benchmarks/calibration.py [--model BUNDLE] [--data FILE.npz] [--png OUT.png]
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from pathlib import Path

import numpy as np
from peer_fer import PeerError, add_bundles_data_flags, add_truth_flag, load_data
from prior_correction import predict

from edge.bundle import FER_LABELS, BundleError, default_bundle_dir
from edge.runtime.classify.calibration import temperature_scale
from edge.runtime.classify.classifier import Classifier
from edge.runtime.classify.interpreter import RuntimeMissing
from train_export.analysis.calibration import crossfit_ece, expected_calibration_error, reliability

THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)


def threshold_rows(probs: np.ndarray, y: np.ndarray, thresholds: tuple[float, ...] = THRESHOLDS) -> list[dict]:
    """Per threshold: the share of faces under it (reported uncertain) and the accuracy above and under it."""
    conf, right = probs.max(axis=1), probs.argmax(axis=1) == y
    rows = []
    for t in thresholds:
        named = conf >= t
        rows.append({"threshold": t, "uncertain_share": float(1 - named.mean()),
                     "accuracy_named": float(right[named].mean()) if named.any() else float("nan"),
                     "accuracy_uncertain": float(right[~named].mean()) if (~named).any() else float("nan")})
    return rows


def measure(bundle: Path, x: np.ndarray, y: np.ndarray) -> dict:
    """Raw and calibrated probabilities of ``bundle`` on ``x``: ECEs, reliability and threshold tables."""
    clf = Classifier(bundle, threads=1)
    if tuple(clf.labels) != FER_LABELS:
        raise PeerError(f"{bundle}: labels {clf.labels} are not the FER labels {list(FER_LABELS)} the data is in")
    temperature = clf.temperature
    clf.temperature = 1.0  # the model's own probabilities; the calibrated ones are scaled with the device's function
    raw = predict(clf, x)
    calibrated = temperature_scale(raw, temperature)
    return {
        "model_id": clf.model_id, "temperature": temperature, "n": len(y),
        "accuracy": float((raw.argmax(axis=1) == y).mean()),
        "ece_raw": expected_calibration_error(raw, y), "ece_calibrated": expected_calibration_error(calibrated, y),
        "ece_crossfit": crossfit_ece(raw, y),
        "mean_confidence_raw": float(raw.max(axis=1).mean()), "mean_confidence_calibrated": float(calibrated.max(axis=1).mean()),
        "reliability_raw": reliability(raw, y), "reliability_calibrated": reliability(calibrated, y),
        "thresholds": threshold_rows(calibrated, y),
    }


def markdown(r: dict) -> str:
    """The figures of one bundle as markdown tables."""
    lines = [f"### {r['model_id']} (temperature {r['temperature']:g}, {r['n']} faces, accuracy {100 * r['accuracy']:.2f} %)",
             "", "| | ECE | mean confidence |", "|---|---:|---:|",
             f"| model output | {r['ece_raw']:.4f} | {r['mean_confidence_raw']:.3f} |",
             f"| calibrated (as the device reports) | {r['ece_calibrated']:.4f} | {r['mean_confidence_calibrated']:.3f} |",
             f"| calibrated, cross-fitted on halves | {r['ece_crossfit']:.4f} | |", "",
             "| confidence bin | faces | mean confidence | accuracy |", "|---|---:|---:|---:|"]
    lines += [f"| {b['lo']:.2f}–{b['hi']:.2f} | {b['n']} | {b['confidence']:.3f} | {b['accuracy']:.3f} |"
              for b in r["reliability_calibrated"]]
    lines += ["", "| uncertain_below | faces reported uncertain | accuracy of the named | accuracy of the uncertain |",
              "|---:|---:|---:|---:|"]
    lines += [f"| {t['threshold']:.2f} | {100 * t['uncertain_share']:.1f} % | {100 * t['accuracy_named']:.1f} % | "
              f"{100 * t['accuracy_uncertain']:.1f} % |" for t in r["thresholds"]]
    return "\n".join(lines)


def plot(results: list[dict], png: Path) -> None:
    """Reliability diagrams (accuracy against confidence, raw and calibrated) side by side, one per bundle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 4.4), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="calibrated ideal")
        for key, style, name in (("reliability_raw", "o-", f"model output (ECE {r['ece_raw']:.3f})"),
                                 ("reliability_calibrated", "s-", f"T = {r['temperature']:g} (ECE {r['ece_calibrated']:.3f})")):
            ax.plot([b["confidence"] for b in r[key]], [b["accuracy"] for b in r[key]], style, ms=4, label=name)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="top-1 confidence", ylabel="accuracy", title=r["model_id"])
        ax.title.set_fontsize(8)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_bundles_data_flags(p)
    p.add_argument("--json", type=Path, default=None, help="also write every number as JSON here")
    p.add_argument("--png", type=Path, default=None, help="also draw the reliability diagrams here")
    add_truth_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Measure every bundle, print the tables; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        x, y = load_data(args.data, args.limit, args.truth)
        results = [measure(b, x, y) for b in (args.model or [default_bundle_dir()])]
    except (PeerError, BundleError, RuntimeMissing, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"\nData: {args.data} ({len(y)} faces). Machine: {platform.machine()}, Python {platform.python_version()}.\n")
    print("\n\n".join(markdown(r) for r in results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.png:
        plot(results, args.png)
    print(f"\nCommand: {shlex.join([Path(sys.executable).as_posix(), *sys.argv])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
