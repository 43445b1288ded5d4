"""The command line: config example, one-line errors without tracebacks, `run` to stdout, graceful SIGTERM."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jsonschema
import pytest
import tomllib

from edge.config import Config, parse_config
from edge.protocol.envelope import SCHEMA_PATH
from edge.schema import Invalid, Validated, hints
from tests.support.broker import free_port
from tests.support.cli import run_edge
from tests.support.paths import REPO as ROOT

EXAMPLE = ROOT / "deploy" / "config.example.toml"


def _fields(model_cls, prefix=""):
    for field in dataclasses.fields(model_cls):
        ann = hints(model_cls)[field.name]
        if isinstance(ann, type) and issubclass(ann, Validated):
            yield from _fields(ann, f"{prefix}{field.name}.")
        else:
            yield f"{prefix}{field.name}"


def test_config_example_parses_to_the_defaults_and_documents_every_option():
    data = tomllib.loads(EXAMPLE.read_text())
    cfg = parse_config(data, EXAMPLE)
    defaults = Config()
    assert dataclasses.replace(cfg, device=dataclasses.replace(cfg.device, id=defaults.device.id)) == defaults
    text = EXAMPLE.read_text()
    missing = []
    for dotted in _fields(Config):
        section, key = dotted.rsplit(".", 1)
        block = text.split(f"[{section}]\n", 1)[-1].split("\n[", 1)[0]
        if f"\n{key} = " not in "\n" + block and f"# {key} = " not in block:
            missing.append(dotted)
    assert not missing, f"{missing} not in {EXAMPLE.name}: run python3 deploy/gen_config_example.py"


def test_config_example_is_what_the_generator_writes():
    """Descriptions and defaults come from the dataclasses of edge/config.py; a hand edit or a stale example fails here."""
    import runpy

    render = runpy.run_path(str(ROOT / "deploy" / "gen_config_example.py"), run_name="gen")["render"]
    assert EXAMPLE.read_text(encoding="utf-8") == render(), "run python3 deploy/gen_config_example.py"


def test_unusable_state_dir_is_a_config_error(tmp_path):
    from edge.config import ConfigError

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = parse_config({"device": {"state_dir": str(blocker / "state")}})
    with pytest.raises(ConfigError, match="device.state_dir"):
        cfg.state_dir()


@pytest.mark.parametrize(("hostname", "expected"), [("pi_kitchen+1.lan", "pi_kitchen-1"), ("x" * 80, "x" * 64), (".", "edge")])
def test_the_default_device_id_is_a_valid_id_whatever_the_host_is_called(monkeypatch, hostname, expected):
    import socket

    monkeypatch.setattr(socket, "gethostname", lambda: hostname)
    assert Config().device.id == expected
    assert parse_config({}).device.id == expected


@pytest.mark.parametrize("content", ["x = " + "[" * 5000 + "]" * 5000 + "\n", "[mqtt]\nport = " + "9" * 5000 + "\n"])
def test_a_config_python_cannot_read_is_a_config_error(tmp_path, content):
    from edge.config import ConfigError, load_config

    bad = tmp_path / "bad.toml"
    bad.write_text(content)
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_check_config_ok_prints_a_summary():
    r = run_edge("check-config", str(EXAMPLE))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("OK ") and "source:" in r.stdout


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        ("[detector]\nmax_faces = 0\n", "detector.max_faces"),
        ("[sourse]\nuri = 'demo'\n", "unknown key"),
        ("[mqtt\nport = 1\n", "not valid TOML"),
        ("[mqtt]\nport = 'eighteen'\n", "mqtt.port"),
        ("[model_push]\ngroups = ['lab', '#']\n", "model_push.groups.1"),
        ("[homeassistant]\ndiscovery_prefix = 'ha/+'\n", "homeassistant.discovery_prefix"),
        ("[source]\nuri = 'picamera2'\nwidth = 160\nheight = 120\n", "must not exceed width x height (160x120)"),
    ],
)
def test_malformed_config_is_one_line_exit_2_no_traceback(tmp_path, content, expect):
    bad = tmp_path / "bad.toml"
    bad.write_text(content)
    for args in (("check-config", str(bad)), ("run", "--config", str(bad))):
        r = run_edge(*args)
        assert r.returncode == 2
        assert "Traceback" not in r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], r.stderr


def test_missing_config_file_and_missing_model_are_one_line_errors(tmp_path):
    r = run_edge("check-config", str(tmp_path / "none.toml"))
    assert r.returncode == 2 and "config file not found" in r.stderr and "Traceback" not in r.stderr
    r = run_edge("run", "--model", str(tmp_path / "no-bundle"), "--max-frames", "1",
                 env_extra={"STATE_DIRECTORY": str(tmp_path / "state")})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: model bundle folder")


def test_missing_source_file_is_a_one_line_error(tmp_path, tiny_bundle):
    r = run_edge("run", "--model", str(tiny_bundle), "--source", str(tmp_path / "nope.mp4"), "--max-frames", "1",
                 env_extra={"STATE_DIRECTORY": str(tmp_path / "state")})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "does not exist" in r.stderr.strip().splitlines()[-1]


def test_a_damaged_sequence_database_is_a_one_line_error(tmp_path, tiny_bundle):
    """A power cut can leave outbox.db unreadable: say which file and what to do, keep the file."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.db").write_bytes(b"not a database" * 200)
    r = run_edge("run", "--model", str(tiny_bundle), "--max-frames", "1", "--stdout",
                 env_extra={"STATE_DIRECTORY": str(state)})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot open the sequence database") and "move the file away" in last
    assert (state / "outbox.db").read_bytes() == b"not a database" * 200


@pytest.mark.slow
def test_run_without_a_broker_prints_the_time_series_on_stdout(tmp_path, tiny_bundle):
    port = free_port()  # nothing listens here, so the localhost probe fails
    r = run_edge("run", "--model", str(tiny_bundle), "--max-frames", "20", "--mqtt-port", str(port),
                 "--device-id", "cli-test", env_extra={"STATE_DIRECTORY": str(tmp_path / "state")})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert "printing the JSON time series to stdout" in r.stderr
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    messages = [json.loads(line) for line in r.stdout.splitlines()]
    for m in messages:
        validator.validate(m)
    assert all(m["device_id"] == "cli-test" for m in messages)
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert len([m for m in messages if m["kind"] == "faces"]) == 20
    assert messages[-1]["kind"] == "status" and messages[-1]["state"] == "offline"
    assert messages[-1]["frames"] == 20


@pytest.mark.slow
def test_sigterm_stops_gracefully(tmp_path, tiny_bundle):
    env = {**os.environ, "GLOG_minloglevel": "2", "STATE_DIRECTORY": str(tmp_path / "state")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--model", str(tiny_bundle), "--stdout"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(json.loads(line))
            if sum(m["kind"] == "faces" for m in lines) >= 3:
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    rest = [json.loads(line) for line in out.splitlines()]
    assert "received SIGTERM" in err and "Traceback" not in err
    kinds = [m["kind"] for m in rest]
    assert "summary" in kinds and any(m.get("event") == "track_end" for m in rest)
    assert rest[-1]["kind"] == "status" and rest[-1]["state"] == "offline"


def test_the_edge_runtime_never_imports_tensorflow_or_matplotlib(tmp_path, tiny_bundle):
    """A real frame loop in a fresh process: TensorFlow (and MediaPipe's pyplot) must stay out of the daemon."""
    code = (
        "import sys\n"
        "from edge.config import parse_config\n"
        "from edge.runtime.assemble import assemble\n"
        "from edge.runtime.publish.stdout import StdoutSink\n"
        "import io\n"
        f"cfg = parse_config({{'device': {{'id': 'x', 'state_dir': {str(tmp_path)!r}}}, "
        f"'classifier': {{'model': {str(tiny_bundle)!r}}}, 'source': {{'max_fps': 0}}}})\n"
        "with assemble(cfg, sink=StdoutSink('x', stream=io.StringIO())) as d:\n"
        "    assert d.run(max_frames=3) == 3\n"
        "bad = sorted(m for m in ('tensorflow', 'keras', 'matplotlib', 'scipy') if m in sys.modules)\n"
        "print('IMPORTED', bad)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env={**os.environ, "GLOG_minloglevel": "2"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "IMPORTED []" in r.stdout


def test_a_config_changes_only_through_its_checks():
    """A section is frozen: a changed copy (dataclasses.replace) runs every check, its fields' and its own."""
    cfg = parse_config({"source": {"uri": "picamera2", "width": 640, "height": 480}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.source.width = 100  # type: ignore[misc]
    assert cfg.source.width == 640
    with pytest.raises(Invalid, match="must not exceed"):
        dataclasses.replace(cfg.source, width=100)
    with pytest.raises(Invalid, match="height: must be a whole number, not the string 'tall'"):
        dataclasses.replace(cfg.source, height="tall")
    assert dataclasses.replace(cfg.source, width=320).width == 320
