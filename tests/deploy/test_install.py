"""deploy/install.sh and deploy/uninstall.sh: syntax, shellcheck, the dry run, and a real re-run.

The real run installs into a temporary prefix and config folder, skipping the parts that need a Raspberry Pi
or a booted systemd (apt, the system user, the unit): it creates the venv without system site packages, installs
the wheel built from this checkout (offline: --no-deps --no-index), writes the config once and keeps it on the
second run. Its dependencies come from the interpreter running the tests (on PYTHONPATH), never from whatever
the machine's base interpreter happens to have (:func:`_hermetic_env`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.support.paths import REPO

INSTALL = REPO / "deploy" / "install.sh"
UNINSTALL = REPO / "deploy" / "uninstall.sh"


def _run(script: Path, *args: str, etc: Path | None = None, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if etc is not None:
        env["EMOTION_EDGE_ETC"] = str(etc)
    env.update(extra_env or {})
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("script", [INSTALL, UNINSTALL, REPO / "deploy" / "check_unit.sh", REPO / "deploy" / "pi_check.sh"])
def test_scripts_parse_and_pass_shellcheck(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install -y shellcheck)")
    r = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_install_dry_run_shows_every_step_and_changes_nothing(tmp_path):
    etc = tmp_path / "etc"
    units = tmp_path / "units"
    r = _run(INSTALL, "--dry-run", "--device-id", "kitchen-pi", "--mqtt-host", "broker.lan", etc=etc,
             extra_env={"EMOTION_EDGE_UNIT_DIR": str(units)})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "python3 -m venv --system-site-packages --without-pip /opt/emotion-edge" in out or "venv /opt/emotion-edge exists" in out
    assert "python3 -m pip --disable-pip-version-check --python /opt/emotion-edge/bin/python install" in out
    assert "[edge\\]" in out and "mediapipe" not in out  # the default detector runs in LiteRT: no MediaPipe
    assert f"+ write {etc}/config.toml" in out and 'id = "kitchen-pi"' in out and 'host = "broker.lan"' in out
    assert f"+ write {etc}/mqtt_password (mode 0600)" in out
    assert f"+ write {units}/emotion-edge.service" in out
    assert "+ systemctl enable emotion-edge.service" in out and "+ systemctl restart emotion-edge.service" in out
    assert "journalctl -u emotion-edge -f" in out and "systemctl status emotion-edge" in out
    assert not etc.exists() and not units.exists()


def test_install_dry_run_keeps_an_existing_config(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "config.toml").write_text('[device]\nid = "mine"\n')
    (etc / "mqtt_password").write_text("secret\n")
    r = _run(INSTALL, "--dry-run", "--skip-apt", "--no-start", etc=etc)
    assert r.returncode == 0, r.stderr
    assert f"keeping existing {etc}/config.toml" in r.stdout and f"write {etc}/config.toml" not in r.stdout
    assert f"keeping existing {etc}/mqtt_password" in r.stdout
    assert "+ systemctl restart" not in r.stdout and "+ apt-get" not in r.stdout


def test_install_puts_the_extras_in_any_kind_of_source(tmp_path):
    """A pip requirement or a URL as --source gets the extras after the project name; a missing path fails
    before anything is done."""
    base = ["--dry-run", "--skip-apt", "--skip-user", "--skip-systemd"]
    for source, expect in (("emotion-edge==0.1.0", "emotion-edge\\[edge\\]==0.1.0"),
                           ("git+https://example.org/e.git", "emotion-edge\\[edge\\]\\ @\\ git+https")):
        r = _run(INSTALL, *base, "--source", source, etc=tmp_path / "etc")
        assert r.returncode == 0 and expect in r.stdout, r.stdout + r.stderr
    r = _run(INSTALL, *base, "--source", str(tmp_path / "dist" / "missing.whl"), etc=tmp_path / "etc")
    assert r.returncode == 1 and "does not exist" in r.stderr and "+ " not in r.stdout


def test_install_adds_opencv_only_where_the_config_or_a_flag_needs_it_and_says_so_in_one_line(tmp_path):
    """A new config's source is the Pi camera (no OpenCV); an existing config with a USB camera, a file, a stream,
    a folder, the Haar detector or the debug preview gets the [opencv] extra, as does --with-opencv."""
    base = ["--dry-run", "--skip-apt", "--skip-user", "--skip-systemd"]

    def opencv_lines(config: str | None, *args: str) -> tuple[list[str], str]:
        etc = tmp_path / f"etc{len(list(tmp_path.iterdir()))}"
        etc.mkdir()
        if config is not None:
            (etc / "config.toml").write_text(config)
        r = _run(INSTALL, *base, *args, etc=etc)
        assert r.returncode == 0, r.stderr
        pip = next(line for line in r.stdout.splitlines() if " -m pip " in line)
        return [line for line in r.stdout.splitlines() if line.startswith("==> OpenCV")], pip

    lines, pip = opencv_lines(None)
    assert len(lines) == 1 and lines[0].startswith("==> OpenCV: not needed") and pip.endswith("[edge\\]")
    for config in ('[source]\nuri = "picamera2"\n', '[source]\nuri = "demo:2"\n', '[device]\nid = "x"\n'):
        lines, pip = opencv_lines(config)
        assert lines[0].startswith("==> OpenCV: not needed") and pip.endswith("[edge\\]"), config
    for config, named in (('[source]\nuri = "0"\n', "source.uri = '0'"),
                          ('[source]\nuri = "rtsp://cam/1"\n', "source.uri = 'rtsp://cam/1'"),
                          ('[detector]\nbackend = "opencv"\n', "detector.backend = 'opencv'"),
                          ('[privacy]\ndebug_preview_dir = "/tmp/p"\n', "privacy.debug_preview_dir"),
                          ("[source\n", "could not be read")):
        lines, pip = opencv_lines(config)
        assert len(lines) == 1 and lines[0].startswith("==> OpenCV: installing it, needed by: "), lines
        assert named in lines[0] and pip.endswith("[edge\\,opencv\\]"), (config, lines, pip)
    lines, pip = opencv_lines(None, "--with-opencv")
    assert lines == ["==> OpenCV: installing it, needed by: --with-opencv"] and pip.endswith("[edge\\,opencv\\]")


def test_install_with_mediapipe_adds_the_optional_backend_and_its_egl_library(tmp_path):
    r = _run(INSTALL, "--dry-run", "--skip-user", "--skip-systemd", "--with-mediapipe", etc=tmp_path / "etc")
    assert r.returncode == 0, r.stderr
    assert "[edge\\,mediapipe-deps\\]" in r.stdout and "--no-deps mediapipe==" in r.stdout
    installed = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "libegl1"], capture_output=True, text=True)
    assert "libegl1" in r.stdout or "install ok installed" in installed.stdout  # asked for unless already there


def test_install_refuses_a_32_bit_system_in_one_line(tmp_path):
    for machine in ("armv7l", "armv6l"):
        r = _run(INSTALL, "--dry-run", etc=tmp_path / "etc", extra_env={"EMOTION_EDGE_MACHINE": machine})
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert "64-bit Raspberry Pi OS" in r.stderr and machine in r.stderr and "+ " not in r.stdout
    ok = _run(INSTALL, "--dry-run", "--skip-apt", etc=tmp_path / "etc", extra_env={"EMOTION_EDGE_MACHINE": "aarch64"})
    assert ok.returncode == 0, ok.stderr


def test_install_keeps_numpy_1_where_the_system_numpy_is_1(tmp_path):
    """Bookworm: apt's picamera2 is built against numpy 1.x, so the venv must not get numpy 2."""
    def dry_run_with_system_numpy(version: str, *args: str) -> str:
        fake = tmp_path / version
        fake.mkdir(exist_ok=True)
        (fake / "python3").write_text(f"#!/bin/sh\necho {version}\n")
        (fake / "python3").chmod(0o755)
        r = _run(INSTALL, "--dry-run", "--skip-apt", "--skip-user", "--skip-systemd", *args, etc=tmp_path / "etc",
                 extra_env={"PATH": f"{fake}:{os.environ['PATH']}"})
        assert r.returncode == 0, r.stderr
        return r.stdout

    out = dry_run_with_system_numpy("1.24.2")  # the Pi camera: no OpenCV, so no OpenCV pin either
    assert "numpy\\<2" in out and "opencv-python-headless" not in out and "system numpy is 1.24.2" in out
    out = dry_run_with_system_numpy("1.24.2", "--with-opencv")
    assert "numpy\\<2 opencv-python-headless\\<4.12" in out and "system numpy is 1.24.2" in out
    assert "numpy\\<2" not in dry_run_with_system_numpy("2.2.4")  # Trixie: no pins


def test_install_rejects_bad_arguments_in_one_line(tmp_path):
    for args in (["--dry-run", "--device-id", "bad id!"], ["--dry-run", "--frobnicate"]):
        r = _run(INSTALL, *args, etc=tmp_path / "etc")
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("install.sh: "), r.stderr


def _hermetic_env() -> dict[str, str]:
    """The environment of a real install: this interpreter first on PATH (its python3 makes the venv, its pip
    installs), its site-packages as the venv's dependencies, and no other PYTHON* variable (a PYTHONPATH to a
    checkout would shadow the installed package). An editable install of the project is a .pth hook, which
    PYTHONPATH folders do not run, so the venv still imports its own copy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    paths = sysconfig.get_paths()
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.slow
def test_real_install_is_idempotent_and_never_overwrites_the_config(tmp_path, built_wheel):
    """Installs the wheel a user would build (no build step in the venv, so no build tools are assumed in it)."""
    if os.geteuid() != 0:
        pytest.skip("install.sh needs root outside --dry-run")
    prefix, etc = tmp_path / "venv", tmp_path / "etc"
    args = ["--source", str(built_wheel), "--prefix", str(prefix), "--skip-apt", "--skip-user", "--skip-systemd",
            "--no-system-site-packages", "--pip-args", "--no-deps --no-index --ignore-installed -q", "--device-id", "t1"]
    env = _hermetic_env()

    first = _run(INSTALL, *args, etc=etc, extra_env=env)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert (prefix / "bin" / "python").exists()
    cfg = etc / "config.toml"
    assert 'id = "t1"' in cfg.read_text() and f"OK {cfg}" in first.stdout  # check-config ran on it
    assert (etc / "mqtt_password").stat().st_mode & 0o777 == 0o600
    r = subprocess.run([str(prefix / "bin" / "python"), "-c", "import edge, sys; print(edge.__file__)"],
                       capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0 and str(prefix) in r.stdout, r.stdout + r.stderr  # installed, not the editable checkout

    cfg.write_text(cfg.read_text().replace('id = "t1"', 'id = "edited-by-user"'))
    (etc / "mqtt_password").write_text("s3cret\n")
    second = _run(INSTALL, *args, etc=etc, extra_env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "venv" in second.stdout and "exists; updating" in second.stdout
    assert 'id = "edited-by-user"' in cfg.read_text()
    assert (etc / "mqtt_password").read_text() == "s3cret\n"

    gone = _run(UNINSTALL, "--prefix", str(prefix), etc=etc, extra_env={"EMOTION_EDGE_STATE": str(tmp_path / "state")})
    assert gone.returncode == 0, gone.stderr
    assert not prefix.exists() and cfg.exists()  # config kept without --purge
    again = _run(UNINSTALL, "--prefix", str(prefix), "--purge", etc=etc,
                 extra_env={"EMOTION_EDGE_STATE": str(tmp_path / "state")})
    assert again.returncode == 0, again.stderr
    assert "already gone" in again.stdout and not etc.exists()


def test_uninstall_refuses_a_dangerous_prefix(tmp_path):
    for prefix in ("/usr", "/etc/", "/opt/../usr/lib", "/opt"):
        r = _run(UNINSTALL, "--dry-run", "--prefix", prefix)
        assert r.returncode == 1 and "refusing" in r.stderr, (prefix, r.stdout, r.stderr)
    not_a_venv = tmp_path / "data"
    (not_a_venv / "bin").mkdir(parents=True)
    r = _run(UNINSTALL, "--dry-run", "--prefix", str(not_a_venv))
    assert r.returncode == 1 and "not a Python venv" in r.stderr and not_a_venv.is_dir()


def test_empty_credential_file_made_by_install_lets_the_environment_provide_the_password(tmp_path, monkeypatch):
    from edge.config import resolve_secret

    (tmp_path / "mqtt_password").write_text("")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("EMOTION_EDGE_MQTT_PASSWORD", "from-env")
    assert resolve_secret("EMOTION_EDGE_MQTT_PASSWORD", "mqtt_password") == "from-env"
    (tmp_path / "mqtt_password").write_text("from-credential\n")
    assert resolve_secret("EMOTION_EDGE_MQTT_PASSWORD", "mqtt_password") == "from-credential"


def test_a_missing_dependency_is_one_line_not_a_traceback():
    """What check-config says in a venv that lacks a dependency (cryptography, which verifies pushed models, here):
    the module, the interpreter, the fix; exit 2. OpenCV is no such dependency: the example config (the demo
    source) checks clean without it."""
    def check_config_without(module: str) -> subprocess.CompletedProcess:
        code = (f"import sys; sys.modules[{module!r}] = None; from edge.cli import main; "
                f"sys.exit(main(['check-config', {str(REPO / 'deploy' / 'config.example.toml')!r}]))")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)

    r = check_config_without("cryptography")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: the Python module cryptography") and "pip install" in lines[0]
    r = check_config_without("cv2")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
