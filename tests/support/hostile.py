"""Hostile input for the daemon: `python -m edge run` as a real subprocess against a test broker, its memory as
the kernel counts it, and the seeded payload generator of the fuzz test (shared with benchmarks/hostile_input.py)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.broker import Broker
from tests.support.mqtt import Collector
from tests.support.paths import REPO as ROOT


def proc_mb(pid: int, field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident since start) of a process, in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


class DaemonProcess:
    """The daemon on the demo source with the shipped model, publishing to ``broker`` as device ``dev1``.

    Args:
        workdir: Folder for its config, state and log.
        broker: The broker it publishes to.
        extra_toml: TOML appended to the config (sections not used by the base config).
        mqtt_toml: Lines added to its ``[mqtt]`` section.
        root: The checkout whose ``edge`` runs (a benchmark compares two).
    """

    def __init__(self, workdir: Path, broker: Broker, extra_toml: str = "", mqtt_toml: str = "",
                 root: Path = ROOT) -> None:
        self.root = Path(root)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state = self.workdir / "state"
        self.log_path = self.workdir / "daemon.log"
        self.config = self.workdir / "config.toml"
        self.config.write_text(
            f'[device]\nid = "dev1"\nstate_dir = "{self.state}"\n'
            '[source]\nuri = "demo"\nmax_fps = 5.0\n'
            f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nstatus_interval_s = 1.0\n'
            f"reconnect_min_s = 0.2\nreconnect_max_s = 1.0\n{mqtt_toml}\n"
            f"[homeassistant]\nenabled = false\n{extra_toml}\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> DaemonProcess:
        """Start it (logging to :attr:`log_path`)."""
        env = {**os.environ, "GLOG_minloglevel": "2", "PYTHONPATH": str(self.root)}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(self.config)],
                                         cwd=self.root, env=env, stdout=subprocess.DEVNULL, stderr=log)
        return self

    def wait_publishing(self, col: Collector, faces: int = 5, timeout: float = 60) -> None:
        """Until ``faces`` more ``faces`` messages have arrived at ``col`` (the frame loop runs)."""
        start = len(col.envelopes("faces"))
        if not col.wait_for(lambda c: len(c.envelopes("faces")) >= start + faces or not self.alive, timeout):
            raise AssertionError(f"the daemon published no faces; log:\n{self.log_text()[-3000:]}")
        assert self.alive, f"the daemon ended; log:\n{self.log_text()[-3000:]}"

    @property
    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc is not None and self.proc.poll() is None

    def mb(self, field: str) -> float:
        """See :func:`proc_mb`."""
        assert self.proc is not None
        return proc_mb(self.proc.pid, field)

    def log_text(self) -> str:
        """Everything it logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def _random_json(rng: random.Random, depth: int = 0):
    pick = rng.randrange(8 if depth < 4 else 5)
    if pick == 0:
        return rng.choice([None, True, False])
    if pick == 1:
        return rng.choice([0, -1, 2**63, 1e308, 3.5])
    if pick in (2, 3, 4):
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(0, 40)))
    if pick == 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["command", "request_id", "bundle_dir", "format", "signature", "x"]): _random_json(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def fuzz_payload(rng: random.Random) -> bytes:
    """One payload of the fuzz: random JSON, deep nesting, huge strings, wrong types, binary garbage, or a command."""
    kind = rng.randrange(7)
    if kind == 0:  # random JSON, often shaped like a command or a push
        return json.dumps(_random_json(rng)).encode()
    if kind == 1:  # deep nesting
        n = rng.choice([100, 1000, 5000, 30_000])
        return rng.choice([b"[" * n, b'{"a":' * n, b'{"command": "publish_status", "x": ' + b"[" * n + b"]" * n + b"}"])
    if kind == 2:  # huge strings, below and above the caps
        n = rng.choice([10_000, 60_000, 200_000, 2_000_000])
        return json.dumps({"command": rng.choice(["publish_status", "x" * n]), "request_id": "y" * (n // 10)}).encode()
    if kind == 3:  # wrong types
        return json.dumps(rng.choice([
            {"command": 5}, {"command": ["publish_status"]}, {"command": None}, {"command": "reload_model", "bundle_dir": [1]},
            {"command": "reload_model", "bundle_dir": {"a": 1}}, {"command": "reload_model", "bundle_dir": "/etc"},
            {"command": "publish_status", "request_id": {"a": [1]}}, {"format": "emotion-edge-model-push/1", "manifest": 7},
            {"format": "emotion-edge-model-push/1", "manifest": "!!", "signature": "x"}, [], "", 0,
        ])).encode()
    if kind == 4:  # binary garbage
        return rng.randbytes(rng.choice([1, 100, 10_000, 300_000]))
    if kind == 5:  # valid commands
        return json.dumps({"command": "publish_status", "request_id": f"ok-{rng.randrange(10**6)}"}).encode()
    return json.dumps({"command": rng.choice(["dance", "reload_model", "publish_status\x00", "\u202e"])}).encode()
