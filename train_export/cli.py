"""Command line: ``python -m train_export train | evaluate | export | predict``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from train_export.hparams import HParams

log = logging.getLogger("train_export")

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "fer2013"


def _add_hparam_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--name`` flag per :class:`HParams` field (default None = keep the config/default value)."""
    group = parser.add_argument_group("hyper-parameters (see train_export/hparams.py for meanings)")
    for f in dataclasses.fields(HParams):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "labels":
            group.add_argument(flag, type=lambda s: [p.strip() for p in s.split(",") if p.strip()], default=None,
                               help="comma-separated label names in output order")
        elif f.type in ("bool", bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif f.type in ("int", int):
            group.add_argument(flag, type=int, default=None)
        elif f.type in ("float", float):
            group.add_argument(flag, type=float, default=None)
        elif f.name == "jit_compile":
            group.add_argument(flag, type=lambda s: {"true": True, "false": False}.get(s.lower(), s), default=None)
        else:
            group.add_argument(flag, type=str, default=None)


def _hparams_from_args(args: argparse.Namespace) -> HParams:
    base = HParams.load(args.hparams) if args.hparams else HParams()
    return base.override(**{f.name: getattr(args, f.name) for f in dataclasses.fields(HParams)})


def cmd_train(args: argparse.Namespace) -> int:
    """Train or resume a run."""
    from train_export.data import load_dataset
    from train_export.train import train

    hp = _hparams_from_args(args)
    run_dir = Path(args.run_dir)
    train_data = load_dataset(args.train, labels=hp.labels, split="train", strict=args.strict, input_size=hp.input_size)
    val_data = load_dataset(args.val, labels=hp.labels, split="val", strict=args.strict, input_size=hp.input_size)
    best = train(hp, train_data, val_data, run_dir, verbose=2 if args.log_lines else 1)
    print(f"best model: {best}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of all sub-commands."""
    parser = argparse.ArgumentParser(prog="python -m train_export", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train (or resume) a model", description="Train or resume a run; "
                       "re-running the same command after an interruption resumes from the last epoch.")
    p.add_argument("--train", default=str(DEFAULT_DATA_DIR / "train.npz"),
                   help="training data: .npz, FER2013 CSV, or image folder (default: %(default)s)")
    p.add_argument("--val", default=str(DEFAULT_DATA_DIR / "val.npz"),
                   help="validation data: .npz, FER2013 CSV (PublicTest rows), or image folder")
    p.add_argument("--run-dir", required=True, help="folder for checkpoints, logs and curves")
    p.add_argument("--hparams", help="JSON file of hyper-parameters (flags override it)")
    p.add_argument("--strict", action="store_true", help="fail on the first malformed row or image")
    p.add_argument("--log-lines", action="store_true", help="one line per epoch instead of a progress bar")
    _add_hparam_flags(p)
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``emotion-train`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        from train_export.data import DataError

        if isinstance(exc, (DataError, ValueError, FileNotFoundError)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
