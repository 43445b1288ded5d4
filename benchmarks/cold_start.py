"""Cold start: seconds from starting ``python -m edge run`` to its first published frame.

Each run is a fresh process (``python -m edge run --source demo``, the shipped model, a fresh state folder, the
default config otherwise), timed from just before the process is spawned until

* ``stdout``: its first ``faces`` line on stdout (``mqtt.enabled = false``); also the CPU seconds (user + system)
  of a run that stops after that frame (``--max-frames 1``), which a busy host inflates far less than the wall clock;
* ``mqtt``: a subscriber, connected to a private Mosquitto on loopback before the spawn, receives the device's
  first ``faces`` message (the daemon publishing over MQTT as a service does, Home Assistant discovery on).

Also timed, as the floor nobody can go under: ``python -c pass`` (the interpreter alone) and ``python -c "import
numpy"``. The byte-code caches are warm (one untimed run first), as on a device after its first start. Run::

    PYTHONPATH=. nice -n 10 python3 benchmarks/cold_start.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _spawn(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env(), cwd=ROOT)


def _env() -> dict[str, str]:
    """This checkout first on the path, and byte-code caches written: with PYTHONDONTWRITEBYTECODE set (as some
    shells and CI set it) every run would compile the project's modules again, which a device never does."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def plain(code: str) -> float:
    """Seconds for ``python -c code``."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=_env())
    return time.perf_counter() - t


def _config(tmp: Path, port: int | None) -> Path:
    path = tmp / "edge.toml"
    mqtt = f'host = "127.0.0.1"\nport = {port}\n' if port else "enabled = false\n"
    path.write_text(f'[device]\nid = "cold"\nstate_dir = "{tmp / "state"}"\n\n[source]\nuri = "demo"\n\n[mqtt]\n{mqtt}',
                    encoding="utf-8")
    return path


def to_first_faces_stdout(tmp: Path) -> tuple[float, float]:
    """Seconds from spawn to the first ``faces`` line on stdout, and the CPU seconds (user + system) of the whole
    process, which stops after that one frame (less sensitive to a busy host than the wall clock)."""
    cmd = [sys.executable, "-m", "edge", "run", "--config", str(_config(tmp, None)), "--max-frames", "1"]
    t = time.perf_counter()
    p = _spawn(cmd)
    seen = None
    assert p.stdout is not None
    for line in p.stdout:
        if seen is None and '"kind":"faces"' in line.replace(" ", ""):
            seen = time.perf_counter() - t
    _, _, usage = os.wait4(p.pid, 0)
    p.returncode = 0
    if seen is None:
        raise SystemExit("no faces line on stdout")
    return seen, usage.ru_utime + usage.ru_stime


def to_first_faces_mqtt(tmp: Path, broker) -> float:
    """Seconds from spawn to a subscriber's receipt of the first ``faces`` message."""
    import paho.mqtt.client as mqtt

    got = threading.Event()
    sub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"cold-{time.time_ns()}")
    sub.on_message = lambda c, u, m: got.set()
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("emotion/cold/faces", qos=1)
    sub.loop_start()
    time.sleep(0.3)  # the subscription is in place before the clock starts
    cmd = [sys.executable, "-m", "edge", "run", "--config", str(_config(tmp, broker.port)), "--max-frames", "1000"]
    t = time.perf_counter()
    p = _spawn(cmd)
    ok = got.wait(30)
    seconds = time.perf_counter() - t
    p.terminate()
    p.wait()
    sub.loop_stop()
    sub.disconnect()
    if not ok:
        raise SystemExit("no faces message at the subscriber")
    return seconds


def main(argv: list[str] | None = None) -> int:
    """Time every row ``--runs`` times and print medians."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="Timed runs per row (after one untimed run).")
    args = ap.parse_args(argv)
    from tests.support.broker import Broker, mosquitto_available

    rows: dict[str, list[float]] = {"python -c pass": [], "python -c 'import numpy'": [], "edge run, stdout": [],
                                    "edge run --max-frames 1, stdout: CPU s of the whole process": []}
    tmp = Path(tempfile.mkdtemp(prefix="cold-start-"))
    broker = Broker(tmp / "mosquitto").start() if mosquitto_available() else None
    if broker is not None:
        rows["edge run, MQTT to Mosquitto on loopback"] = []
    try:
        for i in range(args.runs + 1):
            run_dir = Path(tempfile.mkdtemp(dir=tmp))
            res = [plain("pass"), plain("import numpy"), *to_first_faces_stdout(run_dir)]
            if broker is not None:
                res.append(to_first_faces_mqtt(Path(tempfile.mkdtemp(dir=tmp)), broker))
            if i:  # the first run fills the byte-code caches
                for key, value in zip(rows, res, strict=True):
                    rows[key].append(value)
    finally:
        if broker is not None:
            broker.stop()
    print(f"cold start, {args.runs} runs each, {time.strftime('%Y-%m-%d')}, Python {sys.version.split()[0]}\n")
    print("| row | median s | min s | max s |\n|---|---:|---:|---:|")
    for key, values in rows.items():
        print(f"| {key} | {np.median(values):.3f} | {min(values):.3f} | {max(values):.3f} |")
    print(f"\ncommand: PYTHONPATH=. python3 benchmarks/cold_start.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
