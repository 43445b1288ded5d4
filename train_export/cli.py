"""Command line: ``emotion-train train | soft-labels | soup | evaluate | export | predict | explain``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from train_export.hparam_flags import add_hparam_flags, comma_list, hparams_from_args

log = logging.getLogger("train_export")

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "fer2013"
#: soft-labels' default softening temperature (without --teacher, only this value is accepted: nothing is scored)
SOFT_LABELS_TEMPERATURE = 2.0


def data_path_flag(parser: argparse.ArgumentParser, flag: str, name: str, help_text: str) -> None:
    """A data flag whose default is ``name`` in the checkout's shared data folder when that file exists (a
    development checkout); elsewhere, e.g. after a pip install, the flag is required and no path is shown."""
    path = DEFAULT_DATA_DIR / name
    if path.is_file():
        parser.add_argument(flag, default=str(path), help=f"{help_text} (default: %(default)s)")
    else:
        parser.add_argument(flag, required=True, help=help_text)


def _progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars on stderr (they show only on a terminal anyway)")


def cmd_train(args: argparse.Namespace) -> int:
    """Train or resume a run."""
    from train_export.data.load import DataError, load_dataset
    from train_export.training.loop import train

    hp = hparams_from_args(args)
    run_dir = Path(args.run_dir)
    train_data = load_dataset(args.train, labels=hp.labels, split="train", strict=args.strict, input_size=hp.input_size)
    val_data = load_dataset(args.val, labels=hp.labels, split="val", strict=args.strict, input_size=hp.input_size)
    if train_data.source == val_data.source:  # a CSV without Usage, a folder without train/ and val/, one .npz
        raise DataError(f"--train and --val both read every face of {train_data.source} (it has no Usage column "
                        "or train/val folders), so validation would score faces the model trained on; pass a "
                        "separate --val")
    if hp.label_source == "ferplus":
        from train_export.data.ferplus import with_majority_labels, with_vote_targets

        votes = args.ferplus or ferplus_path(args.train)
        train_data = with_vote_targets(train_data, votes, "train")
        val_data = with_majority_labels(val_data, votes, "val")
    budget = args.time_budget * 60 if args.time_budget is not None else None
    best = train(hp, train_data, val_data, run_dir, verbose=2 if args.log_lines else 1, time_budget_s=budget)
    print(f"best model: {best}")
    return 0


def ferplus_path(data: str) -> str:
    """``ferplus.npz`` beside a FER2013 archive; a one-line error when there is none."""
    from train_export.data.ferplus import FERPLUS_FILE, ferplus_beside
    from train_export.data.load import DataError

    found = ferplus_beside(data)
    if found is None:
        raise DataError(f"no {FERPLUS_FILE} beside {data}: pass --ferplus PATH (the FER+ votes of these faces)")
    return str(found)


def positive_int(s: str) -> int:
    """An argparse ``type`` for counts that must be 1 or more (also used by the benchmark scripts)."""
    value = int(s)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _floats_arg(s: str) -> list[float]:
    try:
        values = [float(p) for p in s.split(",") if p.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}")
    return values


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate one or more models on labelled faces; the first model's report is the JSON's top level."""
    from train_export.analysis.evaluate import (
        evaluate,
        load_any,
        markdown_table,
        plot_confusion,
        write_report,
    )
    from train_export.data.ferplus import truths_for
    from train_export.data.load import load_dataset

    reports = []
    cache: dict[tuple, tuple] = {}
    for path in args.model:
        model = load_any(path, args.labels, num_threads=args.threads)
        key = (tuple(model.labels), model.prep.input_size)
        if key not in cache:
            data = load_dataset(args.data, labels=model.labels, split=args.split, strict=args.strict,
                                input_size=model.prep.input_size)
            cache[key] = (data, truths_for(data, args.split, args.ferplus))
        data, truths = cache[key]
        report = evaluate(model, data.x, truths, tta=args.tta)
        report["data"] = data.describe()
        reports.append(report)
    out = dict(reports[0])
    if len(reports) > 1:
        out["side_by_side"] = reports
    write_report(out, args.json)
    if args.png:
        plot_confusion(out["confusion"], out["labels"], args.png,
                       title=f"{Path(out['model']).name} ({out['kind']}): acc {100 * out['accuracy']:.1f}%")
    print(markdown_table(reports))
    print(f"report: {args.json}" + (f", confusion matrix: {args.png}" if args.png else ""))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a .keras model as an int8 bundle, refusing it when int8 loses more than the margin."""
    from train_export.analysis.evaluate import markdown_table
    from train_export.export.gate import ExportRefused, export_model

    try:
        result = export_model(
            args.model, args.out, args.train, args.val, margin_pp=args.margin_pp, rep_size=args.rep_size,
            labels=args.labels, reports_dir=args.reports, model_id=args.model_id, sign_key=args.sign_key,
            tta=args.tta, strict=args.strict, seed=args.seed, ferplus=args.ferplus,
        )
    except ExportRefused as exc:
        if exc.reports:
            print(markdown_table(list(exc.reports.values())))
        raise
    print(markdown_table(list(result.report["models"].values())))
    m = result.manifest.metrics
    print(f"bundle {result.bundle_dir} ({result.report['bundle_bytes']} bytes): int8 accuracy "
          f"{100 * m['accuracy']:.2f}%, float {100 * m['float_accuracy']:.2f}%, macro-F1 {m['macro_f1']:.4f} "
          f"({m['truth']}); calibration: temperature {m['temperature']:.3f}, ECE {m['ece_uncalibrated']:.4f} -> "
          f"{m['ece']:.4f} (cross-fitted {m['ece_crossfit']:.4f}); reports in {result.reports_dir}")
    return 0


def cmd_soft_labels(args: argparse.Namespace) -> int:
    """Teacher-ensemble soft labels of the training faces, for ``train --soft-labels``."""
    import json

    from train_export.analysis.evaluate import load_any
    from train_export.data.load import DataError, load_dataset
    from train_export.training.distill import (
        check_scored_alike,
        ensemble_report,
        load_soft_labels_with_meta,
        merge_soft_labels,
        save_soft_labels,
        soft_labels_labels,
        teacher_soft_labels,
    )

    if not args.teacher and not args.add:
        raise DataError("soft-labels needs a --teacher model or an --add file of earlier soft labels")
    if not args.teacher and (args.val or args.temperature != SOFT_LABELS_TEMPERATURE or not args.flip):
        raise DataError("--val, --temperature and --no-flip apply to --teacher models; --add files keep how they "
                        "were scored (see their meta)")
    teachers = [load_any(path, args.labels, num_threads=args.threads) for path in args.teacher]
    labels = teachers[0].labels if teachers else soft_labels_labels(args.add[0])
    cache: dict[tuple[str, int], object] = {}

    def faces(source: str, split: str, size: int):
        if (split, size) not in cache:
            cache[(split, size)] = load_dataset(source, labels=labels, split=split, input_size=size)
        return cache[(split, size)]

    # Without teachers only the labels matter: the soft labels' fingerprint ignores the pixels.
    data = faces(args.train, "train", teachers[0].prep.input_size if teachers else 48)
    parts, added = [], {}
    scored_here = {"teachers": [str(p) for p in args.teacher], "temperature": args.temperature, "flip": args.flip}
    # The added files are read first, so a mismatch is reported before minutes of scoring, not after.
    for path in args.add:
        soft_i, meta_i = load_soft_labels_with_meta(path, data)
        if teachers:
            check_scored_alike(scored_here, meta_i, str(path))
        parts.append((soft_i, meta_i))
        added[str(path)] = {key: meta_i.get(key) for key in ("teachers", "temperature", "flip", "val")}
    if teachers:
        train_sets = [(t, faces(args.train, "train", t.prep.input_size)) for t in teachers]
        soft = teacher_soft_labels([(t, d.x) for t, d in train_sets], temperature=args.temperature, flip=args.flip)
        parts.insert(0, (soft, scored_here))
    soft, meta = merge_soft_labels(parts)
    meta["train"] = data.describe()
    if added:
        meta["added"] = added
    if args.val and teachers:
        val_sets = [(t, faces(args.val, "val", t.prep.input_size)) for t in teachers]
        meta["val"] = ensemble_report([(t, d.x) for t, d in val_sets], val_sets[0][1].y, flip=args.flip)
        for name, row in meta["val"].items():
            print(f"val {name}: accuracy {100 * row['accuracy']:.2f}%, macro-F1 {row['macro_f1']:.4f}")
        if added:
            print("(the val ensemble above is of the --teacher models only; the --add files' teachers are not rescored)")
    save_soft_labels(args.out, soft, data, meta)
    agree = float((soft.argmax(axis=1) == data.y).mean())
    print(f"soft labels of {len(data)} faces from {len(meta['teachers'])} teachers written to {args.out} (teachers "
          f"agree with the labels on {100 * agree:.1f}%); train with --soft-labels {args.out}")
    log.debug("soft-labels meta: %s", json.dumps(meta))
    return 0


def cmd_soup(args: argparse.Namespace) -> int:
    """Weighted mean of the weights of models with one architecture."""
    from train_export.model.soup import make_soup

    out = make_soup(args.model, args.coefficients, args.out)
    print(f"soup written to {out}; score it with 'emotion-train evaluate --model {out} --json REPORT'")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Classify faces in an image folder or video into a CSV."""
    from train_export.analysis.predict import predict_to_csv

    rows = predict_to_csv(args.model, args.input, args.out, detect=args.detect, every=args.every,
                          detector=args.detector, num_threads=args.threads)
    print(f"{rows} face row(s) written to {args.out}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Grad-CAM grid of validation faces per class."""
    import keras

    from train_export.analysis.evaluate import keras_labels
    from train_export.analysis.gradcam import explain_grid
    from train_export.data.load import load_dataset

    labels = keras_labels(args.model, args.labels)
    model = keras.saving.load_model(args.model, compile=False)
    data = load_dataset(args.data, labels=labels, split=args.split, input_size=int(model.input_shape[1]))
    n = explain_grid(model, data, args.out, per_class=args.per_class, seed=args.seed)
    print(f"{n} Grad-CAM overlays written to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of all sub-commands."""
    from edge.cli_common import top_parser

    parser, common = top_parser("emotion-train", __doc__)
    parser.set_defaults(progress=True)  # the commands without --no-progress
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", parents=[common], help="train (or resume) a model", description="Train or resume a run; "
                       "re-running the same command after an interruption resumes from the last epoch.")
    data_path_flag(p, "--train", "train.npz", "training data: .npz, FER2013 CSV, or image folder")
    data_path_flag(p, "--val", "val.npz", "validation data: .npz, FER2013 CSV (PublicTest rows), or image folder")
    p.add_argument("--run-dir", required=True, help="folder for checkpoints, logs and curves")
    p.add_argument("--ferplus", help="FER+ votes of the --train/--val rows for --label-source ferplus "
                                     "(default: ferplus.npz beside --train)")
    p.add_argument("--hparams", help="JSON file of hyper-parameters (flags override it)")
    p.add_argument("--strict", action="store_true", help="fail on the first malformed row or image")
    p.add_argument("--log-lines", action="store_true", help="one line per epoch instead of a progress bar")
    p.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="fit the cosine schedule (at most --epochs) into this many minutes, e.g. on a GPU lent "
                        "for a while; such a run cannot be resumed")
    add_hparam_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("soft-labels", parents=[common], help="teacher-ensemble soft labels of the training faces (distillation)",
                       description="Score the training faces with one or more trained teachers (flip-averaged, "
                       "softened by --temperature, averaged over teachers) and write them for "
                       "'train --soft-labels FILE --distill-alpha A'. With --val, also print each teacher's "
                       "and the ensemble's validation accuracy. --add averages in the soft labels of teachers scored "
                       "earlier or elsewhere, as if they were scored in this run.")
    p.add_argument("--teacher", action="append", default=[],
                   help="teacher model: .keras, bundle or .tflite (repeat)")
    p.add_argument("--add", action="append", default=[], metavar="FILE",
                   help="soft labels of more teachers from an earlier soft-labels run (e.g. a lent GPU's), averaged "
                   "in with a weight of its number of teachers; same temperature and flip (repeat)")
    data_path_flag(p, "--train", "train.npz", "the training data the student will use")
    p.add_argument("--val", help="validation data: report the teachers and their ensemble on it")
    p.add_argument("--out", required=True, help=".npz file to write")
    p.add_argument("--temperature", type=float, default=SOFT_LABELS_TEMPERATURE,
                   help="softening temperature applied to each teacher's probabilities (default: %(default)s)")
    p.add_argument("--no-flip", dest="flip", action="store_false", help="do not average each face with its mirror")
    p.add_argument("--labels", type=comma_list, metavar="A,B,...", help="labels of bare .tflite/.keras teachers without a run folder")
    p.add_argument("--threads", type=int, default=2, help="interpreter threads for .tflite teachers")
    p.set_defaults(func=cmd_soft_labels)

    p = sub.add_parser("soup", parents=[common], help="average the weights of models of one architecture (a model soup)",
                       description="Write the weighted mean of the weights of two or more .keras models that share "
                       "an architecture and a starting point (e.g. two fine-tunings of one model) as OUT/best.keras, "
                       "with the first model's hparams.json and the recipe in soup.json. Score it before use.")
    p.add_argument("--model", action="append", required=True, help=".keras model (repeat, two or more)")
    p.add_argument("--coefficients", type=_floats_arg,
                   help="comma-separated weights, one per --model, >= 0 and summing to 1 (default: equal)")
    p.add_argument("--out", required=True, help="folder to write best.keras, hparams.json and soup.json into")
    p.set_defaults(func=cmd_soup)

    p = sub.add_parser("evaluate", parents=[common], help="accuracy, macro-F1, per-class scores and confusion matrix of models",
                       description="Evaluate bundles (int8 in LiteRT, as on the device), .tflite files or .keras "
                       "models on labelled faces. Several --model values are reported side by side.")
    p.add_argument("--model", action="append", required=True,
                   help="bundle folder, .tflite or .keras (repeat to compare; the first is the report's top level)")
    data_path_flag(p, "--data", "val.npz", ".npz, FER2013 CSV or image folder")
    p.add_argument("--split", default="val", choices=["train", "val", "test"],
                   help="CSV Usage rows / sub-folder to use (default: %(default)s)")
    p.add_argument("--ferplus", help="FER+ votes of the --data rows (default: ferplus.npz beside --data, when "
                                     "there is one): the report's figures are then against the FER+ majority, "
                                     "with the data's own labels beside them")
    p.add_argument("--json", required=True, help="report JSON to write")
    p.add_argument("--png", help="confusion matrix PNG (counts and row-normalised) of the first model")
    p.add_argument("--labels", type=comma_list, metavar="A,B,...", help="labels of a bare .tflite/.keras without a run folder")
    p.add_argument("--tta", action="store_true", help="also report horizontal-flip test-time augmentation")
    p.add_argument("--threads", type=int, default=1, help="interpreter threads (default: %(default)s)")
    p.add_argument("--strict", action="store_true", help="fail on the first malformed row or image")
    _progress_flag(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", parents=[common], help="int8 + float32 TFLite, evaluated and packaged as a device bundle",
                       description="Convert a .keras model to full-integer int8 TFLite (calibrated on training "
                       "faces) and float32, evaluate both in LiteRT on validation faces, refuse (exit 2) when "
                       "int8 is more than --margin-pp below float, else write the bundle and reports.")
    p.add_argument("--model", required=True, help="trained model, e.g. runs/X/best.keras")
    p.add_argument("--out", required=True, help="bundle folder to write (model.tflite + manifest.json)")
    data_path_flag(p, "--train", "train.npz", "training data for the representative set")
    data_path_flag(p, "--val", "val.npz", "validation data for the metrics, the int8 check and the calibration")
    p.add_argument("--ferplus", help="FER+ votes of the --val rows (default: ferplus.npz beside --val, when there "
                                     "is one): metrics, int8 check and calibration are then against their majority")
    p.add_argument("--margin-pp", type=float, default=1.0,
                   help="largest allowed int8 accuracy loss against float, in points (default: %(default)s)")
    p.add_argument("--rep-size", type=int, default=300,
                   help="representative training faces for int8 calibration (default: %(default)s)")
    p.add_argument("--reports", help="folder for evaluation.json, confusion.png, model_float.tflite "
                   "(default: OUT.reports beside the bundle)")
    p.add_argument("--model-id", help="bundle model id (default: <model>-w<width>-<UTC time>)")
    p.add_argument("--labels", type=comma_list, metavar="A,B,...", help="labels when the model has no run folder hparams.json")
    p.add_argument("--sign-key", help="Ed25519 private key: sign the bundle with edge.protocol.signing")
    p.add_argument("--tta", action="store_true", help="also report horizontal-flip test-time augmentation")
    p.add_argument("--strict", action="store_true", help="fail on the first malformed row or image")
    p.add_argument("--seed", type=int, default=0, help="seed of the representative sample (default: %(default)s)")
    _progress_flag(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", parents=[common], help="classify faces in an image folder or video into a CSV",
                       description="Detect faces with the device's detector, crop them with the shared "
                       "preprocessing and classify them with a bundle in LiteRT: one CSV row per face.")
    p.add_argument("--model", required=True, help="bundle folder")
    p.add_argument("--input", required=True, help="image folder (recursive) or video file")
    p.add_argument("--out", required=True, help="CSV to write")
    p.add_argument("--no-detect", dest="detect", action="store_false",
                   help="images are already face crops (e.g. 48x48): classify each whole image")
    p.add_argument("--every", type=positive_int, default=1,
                   help="video: classify every N-th frame (default: %(default)s)")
    p.add_argument("--detector", default="auto", choices=["auto", "mediapipe", "opencv"],
                   help="face detector backend (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="interpreter threads (default: %(default)s)")
    _progress_flag(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", parents=[common], help="Grad-CAM overlays of validation faces per class as one PNG",
                       description="Draw Grad-CAM heat maps over a seeded sample of faces per true class.")
    p.add_argument("--model", required=True, help="trained .keras model")
    data_path_flag(p, "--data", "val.npz", "faces: .npz, FER2013 CSV or image folder")
    p.add_argument("--split", default="val", choices=["train", "val", "test"], help="CSV/folder split")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--per-class", type=int, default=6, help="faces per class (default: %(default)s)")
    p.add_argument("--labels", type=comma_list, metavar="A,B,...", help="labels when the model has no run folder hparams.json")
    p.add_argument("--seed", type=int, default=0, help="sample seed (default: %(default)s)")
    _progress_flag(p)
    p.set_defaults(func=cmd_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``emotion-train`` console script."""
    args = build_parser().parse_args(argv)
    if not args.progress:
        from train_export.progress import set_enabled

        set_enabled(False)
    from edge.cli_common import log_level

    logging.basicConfig(level=log_level(args, logging.INFO), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, _expected_errors()):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Failures that are the user's input, reported as one line (exit 2) instead of a traceback."""
    from edge.bundle import BundleError
    from edge.runtime.classify.interpreter import RuntimeMissing
    from train_export.data.load import DataError
    from train_export.export.gate import ExportError

    # OSError: a missing file or an unwritable --run-dir/--out/--json is the user's to fix, not a bug.
    errors: list[type[BaseException]] = [DataError, ValueError, OSError, BundleError, RuntimeMissing, ExportError]
    try:
        from edge.runtime.detect.base import DetectorError

        errors.append(DetectorError)
    except ImportError:  # edge without the detector module: nothing to catch
        pass
    return tuple(errors)
