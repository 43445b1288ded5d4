"""How a model bundle holds up on camera-like faces: FER2013 validation faces under seeded corruptions.

FER2013 faces are clean, well-lit, roughly centred crops. A Pi camera in a room gives faces that are
smaller (far from the lens), blurred (focus, motion), noisy and dark (low light), JPEG- or H.264-compressed,
rolled (head tilt) and cropped a little off by the detector. This script applies one such change at a time to
every validation face, with a fixed seed so every model sees the very same corrupted faces, and reports the
accuracy and macro-F1 of each model on each variant, its drop against the clean faces, and the mean over all
corruptions (a small FER2013 analogue of ImageNet-C). Labels are the FER+ crowd majority where ``ferplus.npz``
lies beside the data, FER2013's own with ``--truth fer2013`` (``peer_fer.load_data``).

Models run the way the device runs them: our bundles through :class:`edge.runtime.classify.classifier.Classifier` (the shared
``quantize_input`` + LiteRT, batched, 1 thread); with ``--fer`` the ``fer`` package's TFLite mini-Xception
(its own 64x64 [-1, 1] preprocessing, see ``peer_fer.py``) sees the same corrupted 48x48 faces. No TensorFlow
is imported. Run::

    PYTHONPATH=. nice -n 10 python3 benchmarks/robustness.py [--model BUNDLE ...] [--data FILE.npz] [--limit N] [--fer] \
        [--json OUT.json] [--png OUT.png]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from peer_fer import (
    PeerError,
    add_bundles_data_flags,
    add_truth_flag,
    fer_files,
    fer_input,
    load_data,
    macro_f1,
)

from edge.bundle import FER_LABELS, BundleError, default_bundle_dir
from edge.preprocess import resize_face
from edge.runtime.classify.classifier import Classifier
from edge.runtime.classify.interpreter import RuntimeMissing, make_interpreter

log = logging.getLogger(__name__)

Corruption = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _warp(face: np.ndarray, angle: float = 0.0, scale: float = 1.0, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    # Border replication, like the device's crop of a box near the frame edge.
    s = face.shape[0]
    m = cv2.getRotationMatrix2D(((s - 1) / 2, (s - 1) / 2), angle, scale)
    m[:, 2] += (dx, dy)
    return cv2.warpAffine(face, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def blur(sigma: float) -> Corruption:
    """Gaussian blur (defocus, slight motion)."""
    return lambda f, rng: cv2.GaussianBlur(f, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)


def low_res(side: int) -> Corruption:
    """A face only ``side`` pixels wide in the frame, enlarged by the device's own resize."""
    return lambda f, rng: resize_face(cv2.resize(f, (side, side), interpolation=cv2.INTER_AREA), f.shape[0])


def noise(sigma: float) -> Corruption:
    """Additive Gaussian sensor noise (grey levels)."""
    return lambda f, rng: _u8(f + rng.normal(0.0, sigma, f.shape))


def jpeg(quality: int) -> Corruption:
    """JPEG round trip at ``quality`` (a compressed stream or snapshot)."""

    def apply(f: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        ok, buf = cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError("OpenCV could not JPEG-encode a face")
        return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)

    return apply


def exposure(gain: float) -> Corruption:
    """Under- (gain < 1) or over-exposure (gain > 1, clipped)."""
    return lambda f, rng: _u8(f.astype(np.float32) * gain)


def contrast(factor: float) -> Corruption:
    """Contrast squeezed around the face's mean (haze, backlight)."""
    return lambda f, rng: _u8((f.astype(np.float32) - f.mean()) * factor + f.mean())


def roll(degrees: float) -> Corruption:
    """Head roll of ``degrees`` to a random side."""
    return lambda f, rng: _warp(f, angle=degrees * rng.choice((-1.0, 1.0)))


def shift(fraction: float) -> Corruption:
    """The crop off-centre by ``fraction`` of its side in a random direction (detector box jitter)."""

    def apply(f: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        a = rng.uniform(0, 2 * np.pi)
        d = fraction * f.shape[0]
        return _warp(f, dx=d * np.cos(a), dy=d * np.sin(a))

    return apply


def zoom(scale: float) -> Corruption:
    """A tighter (scale > 1) or looser (scale < 1) crop than FER2013's framing."""
    return lambda f, rng: _warp(f, scale=scale)


#: The variants, mild to moderate, each named for what a camera does. "clean" is the reference.
CORRUPTIONS: dict[str, Corruption] = {
    "clean": lambda f, rng: f,
    "blur σ1": blur(1.0),
    "blur σ2": blur(2.0),
    "24 px face": low_res(24),
    "16 px face": low_res(16),
    "noise σ10": noise(10.0),
    "JPEG q20": jpeg(20),
    "dark ×0.35": exposure(0.35),
    "bright ×1.6": exposure(1.6),
    "contrast ×0.5": contrast(0.5),
    "roll 15°": roll(15.0),
    "roll 30°": roll(30.0),
    "shift 8 %": shift(0.08),
    "tight crop ×1.15": zoom(1.15),
    "loose crop ×0.85": zoom(0.85),
    "tight crop ×1.3": zoom(1.3),
    "loose crop ×0.7": zoom(0.7),
}

#: Each variant's random draws are seeded by its place in this list: the first 14 in the sorted order of the
#: original table (so adding a variant redraws none of the earlier ones), later additions appended.
SEED_ORDER = (*sorted(set(CORRUPTIONS) - {"roll 30°", "tight crop ×1.3", "loose crop ×0.7"}),
              "roll 30°", "tight crop ×1.3", "loose crop ×0.7")


def corrupt(faces: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """``faces`` (N x S x S uint8) under corruption ``name``; the same seed gives the same faces."""
    fn = CORRUPTIONS[name]
    rng = np.random.default_rng([seed, SEED_ORDER.index(name)])
    return np.stack([fn(f, rng) for f in faces]) if len(faces) else faces.copy()


@dataclass
class Model:
    """A named classifier of N x 48 x 48 uint8 faces to N x 7 probabilities (FER order)."""

    name: str
    predict: Callable[[np.ndarray], np.ndarray]


def bundle_model(bundle: Path) -> Model:
    """Our bundle on the device path, batched."""
    clf = Classifier(bundle, threads=1)
    if tuple(clf.labels) != FER_LABELS:
        raise PeerError(f"bundle {bundle} labels {clf.labels} are not the 7 FER classes in order")
    return Model(clf.model_id, lambda faces: np.concatenate(
        [clf.classify_faces(faces[i : i + 256]) for i in range(0, len(faces), 256)]))


def fer_tflite_model() -> Model:
    """The ``fer`` package's default TFLite mini-Xception, one face per call as ``FER`` runs it."""
    _, tflite = fer_files()
    interp, _ = make_interpreter(str(tflite), num_threads=1)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]

    def predict(faces: np.ndarray) -> np.ndarray:
        rows = []
        for face in faces:
            interp.set_tensor(inp["index"], fer_input(face))
            interp.invoke()
            rows.append(interp.get_tensor(out["index"])[0].copy())
        return np.array(rows).reshape(len(faces), len(FER_LABELS))

    return Model("fer mini-Xception (TFLite)", predict)


def run(models: list[Model], x: np.ndarray, y: np.ndarray, names: list[str], seed: int = 0) -> dict[str, dict[str, dict]]:
    """``{corruption: {model: {"accuracy", "macro_f1"}}}`` for every corruption in ``names``."""
    from tqdm import tqdm

    table: dict[str, dict[str, dict]] = {}
    for name in tqdm(names, desc="corruptions", unit="variant"):
        faces = corrupt(x, name, seed)
        table[name] = {}
        for m in models:
            pred = np.argmax(m.predict(faces), axis=1)
            table[name][m.name] = {"accuracy": float(np.mean(pred == y)), "macro_f1": macro_f1(y, pred, len(FER_LABELS))}
    return table


def mean_corrupted(table: dict[str, dict[str, dict]], model: str) -> float:
    """Mean accuracy of ``model`` over every variant but "clean"."""
    accs = [row[model]["accuracy"] for name, row in table.items() if name != "clean"]
    return float(np.mean(accs)) if accs else float("nan")


def markdown(table: dict[str, dict[str, dict]], models: list[str]) -> str:
    """Rows: variants; per model: accuracy (change against clean, in pp) and macro-F1."""
    head = "| variant | " + " | ".join(f"{m}: acc (Δ pp) | macro-F1" for m in models) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(models)]
    clean = table.get("clean")
    for name, row in table.items():
        cells = []
        for m in models:
            acc, f1 = row[m]["accuracy"], row[m]["macro_f1"]
            delta = f" ({100 * (acc - clean[m]['accuracy']):+.1f})" if clean and name != "clean" else ""
            cells.append(f"{100 * acc:.2f} %{delta} | {f1:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if clean and len(table) > 1:
        cells = []
        for m in models:
            mc = mean_corrupted(table, m)
            cells.append(f"{100 * mc:.2f} % ({100 * (mc - clean[m]['accuracy']):+.1f}) | –")
        lines.append("| **mean of corrupted** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(table: dict[str, dict[str, dict]], models: list[str], png: Path) -> None:
    """Grouped horizontal bars of accuracy per variant and model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) * max(1, len(models)) + 1.2))
    h = 0.8 / len(models)
    for i, m in enumerate(models):
        ys = np.arange(len(names)) + i * h
        ax.barh(ys, [100 * table[n][m]["accuracy"] for n in names], height=h, label=m)
    ax.set_yticks(np.arange(len(names)) + h * (len(models) - 1) / 2, names)
    ax.invert_yaxis()
    ax.set_xlabel("validation accuracy (%)")
    ax.set_title("Accuracy on camera-like corruptions of FER2013 val faces")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_bundles_data_flags(p)
    p.add_argument("--only", action="append", choices=list(CORRUPTIONS), default=None,
                   help="run only these variants (repeat); 'clean' is always included")
    p.add_argument("--fer", action="store_true", help="also run the fer package's TFLite mini-Xception")
    p.add_argument("--seed", type=int, default=0, help="seed of the random parts (noise, roll side, shift direction)")
    p.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    p.add_argument("--png", type=Path, default=None, help="also draw the accuracies as a bar chart (needs matplotlib)")
    add_truth_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run every model on every variant, print the table; return the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        print("error: --limit must be at least 1", file=sys.stderr)
        return 2
    names = ["clean", *[n for n in CORRUPTIONS if n != "clean" and (args.only is None or n in args.only)]]
    try:
        x, y = load_data(args.data, args.limit, args.truth)
        models = [bundle_model(b) for b in (args.model or [default_bundle_dir()])]
        if args.fer:
            models.append(fer_tflite_model())
    except (PeerError, BundleError, RuntimeMissing, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len({m.name for m in models}) != len(models):
        print("error: two models have the same model id; compare different bundles", file=sys.stderr)
        return 2
    table = run(models, x, y, names, args.seed)
    model_names = [m.name for m in models]
    print(f"\nData: {args.data} ({len(x)} faces), seed {args.seed}. Machine: {platform.machine()}, "
          f"Python {platform.python_version()}.\n")
    print(markdown(table, model_names))
    print(f"\nCommand: {shlex.join([Path(sys.executable).as_posix(), *sys.argv])}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"data": str(args.data), "n": len(x), "seed": args.seed, "table": table},
                                        indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.png:
        plot(table, model_names, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
