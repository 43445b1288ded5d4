"""Which of the project's modules one frame passes through, from the camera to the broker.

Runs ``emotion-edge run`` in this process on the demo source, publishing to a real Mosquitto started here on a
free loopback port, with a profiler hook on every thread. It records each ``edge`` module whose code runs

* in the frame loop's iterations (``Daemon._iterate``: the source poll, detection, classification, tracking and the
  payloads handed to the sink), and
* on the other threads while frames run (the outbox pump and the MQTT network thread: the way to the broker),

counting only iterations after ``--warmup`` frames, so start-up and shutdown are left out. Frames with and
without a detection (``detector.every_n_frames``) both occur in the window, so the union covers both paths.

The script imports only ``edge.cli.main``, so it also walks an older checkout's daemon: put that checkout first on
the path (``git worktree add /tmp/old COMMIT``, then ``PYTHONPATH=/tmp/old python3 benchmarks/frame_walk.py``).
Needs ``mosquitto`` (``apt-get install -y mosquitto``). Run::

    PYTHONPATH=. python3 benchmarks/frame_walk.py [--frames 40] [--warmup 10]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any


class Walk:
    """The profiler hook: modules seen inside the loop's iterations and on the other threads, after the warm-up."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.iterations = 0
        self.in_loop: set[str] = set()
        self.threads: set[str] = set()
        self._depth = 0  # > 0 while the main thread is inside Daemon._iterate

    def hook(self, frame: FrameType, event: str, _arg: Any) -> None:
        if event not in ("call", "return"):
            return
        module = frame.f_globals.get("__name__", "")
        if threading.current_thread() is threading.main_thread():
            if frame.f_code.co_name == "_iterate" and module.endswith(".daemon"):
                if event == "call":
                    self._depth += 1
                    self.iterations += 1
                else:
                    self._depth -= 1
            if event == "call" and self._depth and self.iterations > self.warmup and module.startswith("edge"):
                self.in_loop.add(module)
        elif event == "call" and self.iterations > self.warmup and module.startswith("edge"):
            self.threads.add(module)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=40, help="Frames the daemon processes (default 40).")
    parser.add_argument("--warmup", type=int, default=10, help="Iterations left out at the start (default 10).")
    args = parser.parse_args(argv)
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).exists():
        print("error: mosquitto is not installed (apt-get install -y mosquitto)", file=sys.stderr)
        return 2
    from edge.cli import main as edge_main

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = _free_port()
        (work / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        broker = subprocess.Popen([mosquitto, "-c", str(work / "mosquitto.conf")], stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            (work / "config.toml").write_text(
                f'[device]\nid = "walk"\nstate_dir = "{work / "state"}"\n'
                f'[source]\nuri = "demo"\n[mqtt]\nhost = "127.0.0.1"\nport = {port}\n'
                '[homeassistant]\nenabled = false\n')
            walk = Walk(args.warmup)
            threading.setprofile(walk.hook)
            sys.setprofile(walk.hook)
            try:
                rc = edge_main(["run", "--config", str(work / "config.toml"), "--max-frames", str(args.frames)])
            finally:
                sys.setprofile(None)
                threading.setprofile(None)  # type: ignore[arg-type]  # None removes the hook
        finally:
            broker.terminate()
            broker.wait(10)
    if rc != 0:
        print(f"error: the daemon exited with {rc}", file=sys.stderr)
        return 1
    both = walk.in_loop | walk.threads
    print(f"iterations counted: {walk.iterations - args.warmup} (after {args.warmup} left out)")
    print(f"frame loop ({len(walk.in_loop)} modules): {', '.join(sorted(walk.in_loop))}")
    print(f"publishing threads ({len(walk.threads)} modules): {', '.join(sorted(walk.threads))}")
    print(f"one frame, camera to broker: {len(both)} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
