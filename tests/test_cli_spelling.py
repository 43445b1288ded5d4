"""One command, one spelling: ``emotion-edge`` and ``emotion-train`` name themselves in their usage lines, print
their version, take ``-v``/``-q`` before or after the sub-command, call the device ``--device-id`` everywhere (the
older ``--device`` still parses, unlisted), and ``run`` takes ``--state-dir`` like the model commands."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import build_parser, load_run_config
from edge.version import package_version
from tests.support.paths import REPO as ROOT

#: Every sub-command that names devices, with the arguments it needs besides the device.
DEVICE_COMMANDS = {"run": [], "watch": [], "record": [], "plot": [], "dashboard": [], "ha-remove": [],
                   "push-mqtt": ["bundle"]}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _visible_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings}


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("module", "command"), [("edge", "emotion-edge"), ("train_export", "emotion-train")])
def test_each_command_names_itself_and_prints_its_version(module, command):
    r = _cli(module, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: {command} ")
    r = _cli(module, "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{command} {package_version()}\n"


def test_a_sub_command_usage_line_names_the_installed_command():
    r = _cli("edge", "run", "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: emotion-edge run ")


@pytest.mark.parametrize("command", ["run", "check-config", "models", "watch", "plot", "push-ssh"])
def test_verbose_and_quiet_go_before_or_after_the_sub_command(command):
    extra = {"check-config": ["c.toml"], "push-ssh": ["b", "--inventory", "i.toml"]}.get(command, [])
    parser = build_parser()
    for argv in (["-v", command, *extra], [command, "-v", *extra], [command, *extra, "--verbose"]):
        args = parser.parse_args(argv)
        assert (args.verbose, args.quiet) == (True, False), argv
    for argv in (["-q", command, *extra], [command, *extra, "-q"]):
        args = parser.parse_args(argv)
        assert (args.verbose, args.quiet) == (False, True), argv
    args = parser.parse_args([command, *extra])
    assert (args.verbose, args.quiet) == (False, False)


def test_verbose_and_quiet_together_are_refused():
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["run", "-v", "-q"])
    assert exc.value.code == 2


def test_train_takes_verbose_after_its_sub_command():
    from train_export.cli import build_parser as train_parser

    args = train_parser().parse_args(["soup", "--model", "a.keras", "--out", "o", "-v"])
    assert (args.verbose, args.quiet, args.progress) == (True, False, True)


@pytest.mark.parametrize(("flag", "level"), [("-v", "DEBUG"), ("-q", "ERROR")])
def test_run_verbose_and_quiet_set_the_log_level_over_the_config(tmp_path, flag, level):
    cfg = tmp_path / "edge.toml"
    cfg.write_text('[device]\nlog_level = "WARNING"\n', encoding="utf-8")
    assert load_run_config(build_parser().parse_args(["run", "--config", str(cfg)])).device.log_level == "WARNING"
    for argv in ([flag, "run", "--config", str(cfg)], ["run", "--config", str(cfg), flag]):
        assert load_run_config(build_parser().parse_args(argv)).device.log_level == level


@pytest.mark.parametrize("command", sorted(DEVICE_COMMANDS))
def test_the_device_is_device_id_everywhere_with_device_as_a_hidden_alias(command):
    p = _subparsers(build_parser())[command]
    assert "--device-id" in _visible_flags(p)
    assert "--device" not in _visible_flags(p)
    if command in ("run", "ha-remove"):
        return
    args = p.parse_args([*DEVICE_COMMANDS[command], "--device-id", "kitchen"])
    old = p.parse_args([*DEVICE_COMMANDS[command], "--device", "kitchen"])
    assert args.device_id == old.device_id
    assert args.device_id in ("kitchen", ["kitchen"])


def test_no_command_shows_a_second_spelling_of_a_shared_flag():
    for name, p in _subparsers(build_parser()).items():
        flags = _visible_flags(p)
        assert not flags & {"--device", "--username", "--ca-file", "--prefix"}, name
        if "--state-dir" in flags:
            action = next(a for a in p._actions if "--state-dir" in a.option_strings)
            assert (action.type, action.metavar) == (Path, "DIR"), name


def test_repeated_device_ids_mix_both_spellings():
    args = build_parser().parse_args(["watch", "--device-id", "a", "--device", "b"])
    assert args.device_id == ["a", "b"]


def test_push_mqtt_takes_device_id_or_group():
    parser = build_parser()
    assert parser.parse_args(["push-mqtt", "b", "--device-id", "d"]).device_id == "d"
    assert parser.parse_args(["push-mqtt", "b", "--group", "g"]).device_id is None
    with pytest.raises(SystemExit):
        parser.parse_args(["push-mqtt", "b", "--device-id", "d", "--group", "g"])


def test_run_state_dir_overrides_the_config(tmp_path):
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'[device]\nstate_dir = "{tmp_path / "from-file"}"\n', encoding="utf-8")
    args = build_parser().parse_args(["run", "--config", str(cfg)])
    assert load_run_config(args).state_dir_path() == tmp_path / "from-file"
    args = build_parser().parse_args(["run", "--config", str(cfg), "--state-dir", str(tmp_path / "flag")])
    assert load_run_config(args).state_dir_path() == tmp_path / "flag"


def test_run_keeps_its_state_in_the_state_dir_it_was_given(tmp_path):
    state = tmp_path / "state"
    r = _cli("edge", "run", "--source", "demo", "--max-frames", "1", "--stdout", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    assert f"state folder {state}" in r.stderr
    assert any(state.iterdir())


def test_a_stdout_run_loads_neither_mqtt_nor_the_metrics_server(tmp_path):
    code = ("import sys\nfrom edge.cli import main\n"
            f"assert main(['run', '--source', 'demo', '--max-frames', '1', '--stdout', '--state-dir', {str(tmp_path)!r}]) == 0\n"
            "print(sorted(m for m in ('paho', 'edge.runtime.publish.mqtt', 'edge.runtime.publish.outbox', "
            "'wsgiref.simple_server', 'prometheus_client', 'edge.runtime.homeassistant') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "[]"
