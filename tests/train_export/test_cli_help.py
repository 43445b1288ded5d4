"""``train --help`` documents every hyper-parameter with its default (from the dataclass), shows no checkout
path where the checkout's data is absent, and the progress bars show on a terminal only."""

from __future__ import annotations

import argparse
import dataclasses
import io
import subprocess
import sys

import numpy as np
import pytest

from tests.support.paths import REPO
from train_export import cli, progress
from train_export.hparam_flags import field_docs, show_default
from train_export.hparams import HParams


def _sub(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def test_every_hyper_parameter_flag_has_its_doc_and_default():
    docs = field_docs()
    train = _sub(cli.build_parser(), "train")
    by_dest = {a.dest: a for a in train._actions if a.option_strings and a.option_strings[0].startswith("--")
               and a.option_strings[0] != "--no-" + a.dest.replace("_", "-")}
    for f in dataclasses.fields(HParams):
        action = by_dest[f.name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        assert action.help, f.name
        assert action.help.replace("%%", "%").endswith(f"(default: {show_default(default)})"), (f.name, action.help)
        assert docs[f.name].split()[0] in action.help, f.name
    assert show_default(True) == "true" and show_default([]) == "none" and show_default("") == "none"
    assert "``" not in " ".join(docs.values()) and ":data:" not in " ".join(docs.values())


def test_train_help_lists_every_flag_with_a_default():
    r = subprocess.run([sys.executable, "-m", "train_export", "train", "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())  # argparse wraps lines
    for f in dataclasses.fields(HParams):
        assert "--" + f.name.replace("_", "-") in text, f.name
    assert text.count("(default: ") >= len(dataclasses.fields(HParams))
    assert "(default: 60)" in text and "15–22 % less time per face" in text  # a literal % survives argparse


def test_an_undocumented_hyper_parameter_is_refused():
    @dataclasses.dataclass
    class Partial:
        """Two fields.

        Attributes:
            documented: Says what it is,
                over two lines.
        """

        documented: int = 1
        forgotten: int = 2

    with pytest.raises(ValueError, match="forgotten"):
        field_docs(Partial)


def test_data_defaults_only_where_the_checkout_data_exists(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "DEFAULT_DATA_DIR", tmp_path / "absent")  # e.g. after a pip install
    parser = cli.build_parser()
    for command, flag in (("train", "--train"), ("train", "--val"), ("evaluate", "--data"), ("export", "--val"),
                          ("explain", "--data"), ("soft-labels", "--train")):
        action = next(a for a in _sub(parser, command)._actions if flag in a.option_strings)
        assert action.required and action.default is None and "absent" not in action.help, (command, flag)
    assert "absent" not in _sub(parser, "train").format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--run-dir", "r"])  # argparse names the missing --train and --val

    present = tmp_path / "present"
    present.mkdir()
    (present / "train.npz").write_bytes(b"")
    monkeypatch.setattr(cli, "DEFAULT_DATA_DIR", present)
    args = cli.build_parser().parse_args(["train", "--run-dir", "r", "--val", "v.npz"])
    assert args.train == str(present / "train.npz")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_on_a_terminal_only_and_not_with_no_progress(monkeypatch):
    from train_export.analysis.evaluate import predict_in_chunks

    faces = np.zeros((1100, 4, 4), np.uint8)

    def predict(x: np.ndarray) -> np.ndarray:
        return np.ones((len(x), 2)) / 2

    for stream, enabled, shown in ((_Terminal(), True, True), (io.StringIO(), True, False), (_Terminal(), False, False)):
        monkeypatch.setattr(sys, "stderr", stream)
        progress.set_enabled(enabled)
        try:
            assert predict_in_chunks(predict, faces, "scoring m", chunk=500).shape == (1100, 2)
        finally:
            progress.set_enabled(True)
        assert ("scoring m:" in stream.getvalue() and "/1100" in stream.getvalue()) == shown, stream.getvalue()
    for command in ("export", "evaluate", "predict", "explain"):
        action = next(a for a in _sub(cli.build_parser(), command)._actions if "--no-progress" in a.option_strings)
        assert action.dest == "progress" and action.default is True
