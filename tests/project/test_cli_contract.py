"""The command-line contract: every sub-command of ``python -m edge``, ``python -m edge.modelctl`` (run by name on
devices by ``push-ssh``) and ``python -m train_export`` exists, documents itself, and takes the one set of
broker flags (with the older spellings as hidden aliases)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from edge.cli import build_parser
from tests.support.paths import REPO as ROOT

EDGE_COMMANDS = {"run", "check-config", "keygen", "sign", "verify-bundle", "install-bundle", "rollback", "models",
                 "push-mqtt", "push-ssh", "watch", "record", "plot", "dashboard", "ha-remove"}
BROKER_COMMANDS = {"run", "push-mqtt", "watch", "record", "dashboard", "ha-remove"}
BROKER_FLAGS = {"--config", "--mqtt-host", "--mqtt-port", "--mqtt-username", "--mqtt-ca", "--topic-prefix"}
TRAIN_COMMANDS = {"train", "soft-labels", "soup", "evaluate", "export", "predict", "explain"}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _visible_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings}


def test_edge_has_every_subcommand_each_with_help():
    subs = _subparsers(build_parser())
    assert set(subs) == EDGE_COMMANDS
    for name, p in subs.items():
        assert p.description or p.format_help().count("\n") > 3, name
        for action in p._actions:
            if action.option_strings and action.help != argparse.SUPPRESS and action.dest != "help":
                assert action.help, (name, action.option_strings)


@pytest.mark.parametrize("command", sorted(BROKER_COMMANDS))
def test_commands_that_reach_a_broker_take_the_same_flags(command):
    p = _subparsers(build_parser())[command]
    assert _visible_flags(p) >= BROKER_FLAGS, (command, BROKER_FLAGS - _visible_flags(p))
    # the model push's flags before they were shared, accepted but not shown
    assert {"--username", "--ca-file", "--prefix"}.isdisjoint(_visible_flags(p))


def test_old_flag_spellings_are_hidden_aliases_of_the_shared_ones():
    args = build_parser().parse_args(["push-mqtt", "b", "--device", "d", "--username", "u", "--ca-file", "ca.pem",
                                      "--prefix", "p"])
    assert (args.mqtt_username, str(args.mqtt_ca), args.topic_prefix) == ("u", "ca.pem", "p")


def test_broker_flags_override_the_config_file(tmp_path):
    from edge.protocol.broker import settings_from_args

    cfg = tmp_path / "c.toml"
    cfg.write_text('[mqtt]\nhost = "from-file"\nport = 1884\ntopic_prefix = "house"\n')
    p = _subparsers(build_parser())["watch"]
    s = settings_from_args(p.parse_args(["--config", str(cfg)]))
    assert (s.host, s.port, s.topic_prefix, s.tls.enabled) == ("from-file", 1884, "house", False)
    s = settings_from_args(p.parse_args(["--config", str(cfg), "--mqtt-host", "h", "--mqtt-ca", str(cfg)]))
    assert (s.host, s.port, s.tls.enabled, s.tls.ca_file) == ("h", 1884, True, cfg)


def test_train_export_has_every_subcommand():
    from train_export.cli import build_parser as train_parser

    subs = _subparsers(train_parser())
    assert set(subs) == TRAIN_COMMANDS


@pytest.mark.parametrize("argv", [
    ["-m", "edge", "--help"],
    ["-m", "edge.modelctl", "--help"],
    ["-m", "edge.modelctl", "install-bundle", "--help"],
    ["-m", "train_export", "--help"],
])
def test_entry_points_answer_help(argv):
    r = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr


def test_modelctl_has_the_commands_push_ssh_runs_on_devices():
    r = subprocess.run([sys.executable, "-m", "edge.modelctl", "--help"], capture_output=True, text=True, cwd=ROOT,
                       timeout=60)
    for command in ("verify-bundle", "install-bundle", "rollback", "models"):
        assert command in r.stdout
