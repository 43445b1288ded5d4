"""A real Mosquitto broker for tests, started on a free loopback port with its own config.

Tests that count messages need ``max_queued_messages 0``: Mosquitto's default of 1000 drops bursts to slow
subscribers.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_available() -> bool:
    """Whether the mosquitto binary is installed (apt-get install -y mosquitto)."""
    return Path(MOSQUITTO).exists()


class Broker:
    """One mosquitto process; ``stop()`` and ``start()`` again keep the port (a broker restart).

    Args:
        workdir: Folder for config, log and persistence files.
        extra_conf: Lines appended to the listener config (e.g. TLS or password settings).
        allow_anonymous: Whether clients without credentials may connect.
        persistence: Keep retained messages and sessions across restarts.
    """

    def __init__(self, workdir: Path, extra_conf: str = "", allow_anonymous: bool = True, persistence: bool = True):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.conf = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if allow_anonymous else 'false'}",
            "max_queued_messages 0",
            "max_inflight_messages 0",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            f"log_dest file {self.log}",
            "log_type all",
            extra_conf,
        ]
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to user 'mosquitto', which cannot write the log and the
            # persistence file into this (root-owned) folder: sessions would then not survive a restart.
            lines.insert(0, "user root")
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> Broker:
        """Start mosquitto and wait until its port accepts connections."""
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited: {err} {self.log.read_text() if self.log.exists() else ''}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        """Stop mosquitto (SIGTERM, which saves persistence) and wait for it."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        """Stop and start on the same port."""
        self.stop()
        self.start()
