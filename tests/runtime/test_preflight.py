"""check-config checks what run will need, strict config types, every error listed, and run's state folder check
(issue 25, defect 5)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from edge.bundle import MODEL_FILE, default_bundle_dir
from edge.config import ConfigError, parse_config
from edge.runtime import preflight
from edge.runtime.models.store import ModelStore
from tests.support.cli import run_edge


@pytest.fixture
def unwritable_dir(tmp_path) -> Path:
    """A folder that exists and that the current user cannot write into (root writes anywhere except /sys)."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


@pytest.mark.parametrize(
    ("data", "key", "text"),
    [
        ({"mqtt": {"enabled": "yes"}}, "mqtt.enabled", "must be true or false, not the string 'yes'"),
        ({"mqtt": {"tls": {"enabled": "off"}}}, "mqtt.tls.enabled", "not the string 'off'"),
        ({"mqtt": {"port": "1883"}}, "mqtt.port", "must be a whole number, not the string '1883'"),
        ({"mqtt": {"qos": True}}, "mqtt.qos", "not a boolean"),
        ({"source": {"max_fps": "10"}}, "source.max_fps", "must be a number"),
        ({"source": {"uri": ""}}, "source.uri", "must not be empty"),
        ({"device": {"state_dir": ""}}, "device.state_dir", "must not be empty"),
        ({"mqtt": {"host": ""}}, "mqtt.host", "must not be empty"),
        ({"model_push": {"trusted_keys": ["k.pub", " "]}}, "model_push.trusted_keys.1", "must not be empty"),
        ({"mqtt": {"reconnect_min_s": 90}}, "mqtt", "reconnect_min_s (90) must not exceed reconnect_max_s (60)"),
        ({"source": {"retry_initial_s": 5, "retry_max_s": 2}}, "source", "retry_initial_s (5) must not exceed retry_max_s (2)"),
    ],
)
def test_strict_types_empty_strings_and_ranges_are_refused_naming_the_key(data, key, text):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert f"invalid config key '{key}': " in str(err.value) and text in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("home/#", "must not contain the MQTT wildcards '+' or '#'"),
        ("", "must not be empty"),
        ("$SYS/ha", "must not start with '$'"),
        ("h\u0000a", "must not contain control characters"),
        ("x" * 65001, "must be at most 65000 bytes"),
    ],
)
def test_a_discovery_prefix_is_checked_as_the_topic_prefix_is_in_one_line(value, text):
    """Both start topics the device publishes to, so both refuse what the broker would."""
    for section, key in (("homeassistant", "discovery_prefix"), ("mqtt", "topic_prefix")):
        with pytest.raises(ConfigError) as err:
            parse_config({section: {key: value}})
        message = str(err.value)
        assert message.startswith(f"invalid config key '{section}.{key}': ") and text in message, message
        assert "\n" not in message


def test_toml_ints_are_fine_for_floats_and_strings_for_paths():
    cfg = parse_config({"source": {"max_fps": 5}, "device": {"state_dir": "/tmp/x"}, "mqtt": {"reconnect_max_s": 2}})
    assert cfg.source.max_fps == 5.0 and cfg.device.state_dir == Path("/tmp/x")


def test_check_config_lists_every_schema_error_one_line_each(tmp_path):
    """Before: the first error and '(and N more)'."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[mqtt]\nport = "1883"\nenabled = "yes"\nhost = ""\n[source]\nuri = ""\n[detector]\nmax_faces = 0\n')
    r = run_edge("check-config", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert all(ln.startswith(f"error: {bad}: invalid config key '") for ln in lines), lines
    keys = [ln.split("'")[1] for ln in lines]
    assert sorted(keys) == ["detector.max_faces", "mqtt.enabled", "mqtt.host", "mqtt.port", "source.uri"], lines


def test_check_config_checks_files_model_state_tls_and_keys(tmp_path, unwritable_dir):
    """Before: 'OK' for all of these; run then failed (or, for the key, refused every push)."""
    garbage = shutil.copytree(default_bundle_dir(), tmp_path / "garbage-model")
    (garbage / MODEL_FILE).write_bytes(b"not a model" * 100)
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f'[device]\nstate_dir = "{unwritable_dir}"\n[source]\nuri = "{tmp_path / "missing.mp4"}"\n'
        f'[classifier]\nmodel = "{garbage}"\n[mqtt.tls]\nenabled = true\nca_file = "{tmp_path / "ca.crt"}"\n'
        f'[model_push]\nenabled = true\ntrusted_keys = ["{tmp_path / "fleet.pub"}"]\n'
    )
    r = run_edge("check-config", str(cfg))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 5, lines
    for line, expect in zip(lines, ["device.state_dir: /", "source.uri: ", "model (classifier.model): ", "ca_file",
                                    "model_push.trusted_keys.0: "], strict=True):
        assert line.startswith(f"error: {cfg}: ") and expect in line, (expect, line)
    assert "not writable by user" in lines[0] and "does not exist" in lines[1] and "corrupt" in lines[2], lines


def test_a_good_config_is_ok_and_says_what_it_checked(tmp_path):
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'[device]\nstate_dir = "{tmp_path / "new" / "state"}"\n[source]\nuri = "0"\n')
    r = run_edge("check-config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "smoke inference on" in r.stdout and "can be created by" in r.stdout
    assert "note: source 0: cameras and streams are not opened" in r.stderr
    assert not (tmp_path / "new").exists(), "check-config must not create the state folder"


def test_a_pushed_model_that_does_not_load_is_a_note_since_run_rolls_it_back(tmp_path):
    store = ModelStore.for_state_dir(tmp_path / "state")
    installed = store.install(shutil.copytree(default_bundle_dir(), tmp_path / "pushed"))
    store.activate(installed)
    (installed / MODEL_FILE).write_bytes(b"broken")
    report = preflight.check(parse_config({"device": {"state_dir": str(tmp_path / "state")}}))
    assert not report.errors, report.errors
    assert any("run rolls it back" in n for n in report.notes), report.notes


def test_a_folder_source_without_images_and_an_unwritable_preview_folder(tmp_path, unwritable_dir):
    (tmp_path / "empty").mkdir()
    report = preflight.check(parse_config({"device": {"state_dir": str(tmp_path / "state")},
                                           "source": {"uri": str(tmp_path / "empty")},
                                           "privacy": {"debug_preview_dir": str(unwritable_dir / "preview")}}))
    assert len(report.errors) == 2, report.errors
    assert report.errors[0].startswith("source.uri: ") and "has no images" in report.errors[0]
    assert report.errors[1].startswith("privacy.debug_preview_dir: ") and "cannot be created" in report.errors[1]


def test_run_refuses_an_unwritable_state_folder_in_one_line(tmp_path, unwritable_dir):
    """Before: an error line per frame (or an unclear sqlite error) instead of one clear error at start."""
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'[device]\nstate_dir = "{unwritable_dir}"\n')
    r = run_edge("run", "--config", str(cfg), "--stdout", "--max-frames", "3")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: device.state_dir: ") and "not writable" in lines[0], lines


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any file: the case needs an ordinary user")
def test_state_files_left_by_another_user_are_named(tmp_path):
    """The issue's case: a state folder used by an earlier run as root, whose outbox.db the daemon's user can
    read but not write (sqlite then opens it read-only and every write fails, once per frame)."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.db").write_bytes(b"")
    (state / "outbox.db").chmod(0o444)
    problem = preflight.check_state_dir(parse_config({"device": {"state_dir": str(state)}}))
    assert problem and problem.startswith("device.state_dir: outbox.db in ") and "chown" in problem, problem


def test_options_that_run_would_refuse_are_errors_here_too(tmp_path):
    """The class-prior correction needs the bundle's training class counts; metrics need prometheus-client."""
    import json

    bundle = tmp_path / "bundle"
    shutil.copytree(default_bundle_dir(), bundle, ignore=shutil.ignore_patterns("training", "*.png"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["training"].pop("train_data", None)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    cfg = parse_config({"device": {"state_dir": str(tmp_path / "state")},
                        "classifier": {"model": str(bundle), "prior_correction": 0.3}})
    report = preflight.check(cfg)
    assert any("prior_correction" in e and "class counts" in e for e in report.errors), report.errors
    cfg = parse_config({"device": {"state_dir": str(tmp_path / "state")}, "classifier": {"model": str(bundle)},
                        "metrics": {"enabled": True}})
    assert preflight.check(cfg).errors == []  # prometheus-client is installed here, and no prior asked
