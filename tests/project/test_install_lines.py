"""What the user reads: every install line in the README and in the error messages works from a checkout or a
built wheel (checked with pip's resolver against what is installed, ``--dry-run --no-index``: nothing is
installed, nothing is downloaded), none points at a package index that does not have emotion-edge; ``run`` names
its state folder and says why it prints to stdout; ``check-config`` names the example file's path, explains a bad
device id in words and warns, without failing, about a broker host that does not resolve."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge.version import install_hint
from tests.support.paths import REPO as ROOT

#: Where install lines are written for users: the README and every message in the code.
SOURCES = [ROOT / "README.md", *sorted((ROOT / "edge").rglob("*.py"))]


def _pip_dry_run(*spec: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation",
                           "--disable-pip-version-check", *spec], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def _extras_in_checkout_lines() -> set[str]:
    found = set()
    for path in SOURCES:
        found.update(re.findall(r"pip install -e '\.\[([\w,-]+)\]'", path.read_text(encoding="utf-8")))
    found.update(re.findall(r"-e '\.\[([\w,-]+)\]'", install_hint("subscribe")))
    return found


def test_no_install_line_points_at_a_package_index():
    bad = [f"{p.relative_to(ROOT)}: {m}" for p in SOURCES
           for m in re.findall(r"pip install[^\n`]*'emotion-edge\[", p.read_text(encoding="utf-8"))]
    assert bad == [], "emotion-edge is not on a public index: install from a checkout or a built wheel"


@pytest.mark.slow
def test_every_checkout_install_line_resolves():
    extras = _extras_in_checkout_lines()
    assert {"edge", "subscribe", "postgres"} <= extras, extras
    for extra in sorted(extras):
        r = _pip_dry_run("-e", f".[{extra}]")
        assert r.returncode == 0 and "Would install emotion-edge" in r.stdout, (extra, r.stdout[-800:], r.stderr[-800:])


@pytest.mark.slow
def test_the_wheel_install_line_resolves(built_wheel):
    spec = re.search(r"pip install '(dist/emotion_edge-VERSION-py3-none-any\.whl)\[subscribe\]'", install_hint("subscribe"))
    assert spec, install_hint("subscribe")
    assert re.fullmatch(spec.group(1).replace("VERSION", r"[^-]+").replace(".", r"\."), f"dist/{built_wheel.name}")
    r = _pip_dry_run(f"{built_wheel}[subscribe,postgres]")
    # Where the checkout is installed (editable, as the README's test set-up does), pip takes the same version as
    # installed and still resolves the extras' requirements against it.
    took = "Would install emotion-edge" in r.stdout or "is already installed with the same version" in r.stdout
    assert r.returncode == 0 and took, r.stdout[-800:] + r.stderr[-800:]


def _edge(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge", *args], cwd=cwd, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_run_names_its_state_folder_and_why_it_prints_to_stdout(tmp_path):
    config = tmp_path / "edge.toml"
    config.write_text(f'[device]\nid = "logs"\nstate_dir = "{tmp_path / "state"}"\n')
    r = _edge("run", "--config", str(config), "--stdout", "--max-frames", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"state folder {tmp_path / 'state'}" in r.stderr
    assert "mqtt.enabled is false" not in r.stderr and "--stdout" in r.stderr


def test_check_config_explains_in_words_and_only_warns_about_an_unresolvable_host(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[device]\nid = "kitchen pi/1"\nstat_dir = "/tmp"\n')
    r = _edge("check-config", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == [
        f"error: {bad}: invalid config key 'device.id': 'kitchen pi/1' is not allowed: it must be 1 to 64 letters, "
        "digits, '_' or '-' (it is an MQTT topic level)",
        f"error: {bad}: invalid config key 'device.stat_dir': unknown key (check the spelling; every key is in "
        f"{ROOT / 'deploy' / 'config.example.toml'})",
    ], lines
    unresolvable = tmp_path / "far.toml"
    unresolvable.write_text(f'[device]\nid = "far"\nstate_dir = "{tmp_path / "s"}"\n[mqtt]\nhost = "broker.invalid"\n')
    r = _edge("check-config", str(unresolvable))
    assert r.returncode == 0, r.stderr
    assert "note: mqtt.host 'broker.invalid' does not resolve here" in r.stderr and r.stdout.startswith("OK ")
    local = tmp_path / "local.toml"
    local.write_text(f'[device]\nid = "near"\nstate_dir = "{tmp_path / "s"}"\n[mqtt]\nhost = "localhost"\n')
    r = _edge("check-config", str(local))
    assert r.returncode == 0 and "does not resolve" not in r.stderr, r.stderr
