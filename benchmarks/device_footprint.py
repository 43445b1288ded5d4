"""What ``python -m edge run`` costs a Pi at default settings: peak memory and disk writes per day.

Each row runs the real daemon (``python -m edge run``, default config: 10 fps cap, the BlazeFace detector, the
shipped model) in its own process for ``--seconds``:

* **demo, MQTT**: the demo source publishing to a real Mosquitto on loopback (the deployed path);
* **demo, stdout**: no broker (the embedded default of the README's first command), JSON lines to /dev/null;
* **folder, MQTT**: 640x480 JPEG files (``--folder DIR``, else 100 FER2013 validation faces upsampled onto a
  canvas, as benchmarks/edge_pipeline.py makes them);
* **demo, MQTT, broker away**: the broker stops after the warm-up, so every message goes to the disk outbox (the
  worst case the SD card sees while a broker is down).

Peak RSS is the process's VmHWM; disk writes are ``write_bytes`` of ``/proc/PID/io`` (what reaches the block
layer: the outbox database and its WAL; logs go to the journal through stderr and are not counted), measured
from the end of a warm-up to the end of the run and scaled to a day. Run::

    PYTHONPATH=. nice -n 10 python3 benchmarks/device_footprint.py [--seconds 60] [--warmup 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.hostile import proc_mb

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fer2013" / "val.npz"


def _write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def run_daemon(args: argparse.Namespace, source: str, port: int | None, stop_broker=None) -> dict:
    """Run ``python -m edge run`` for the configured time; return its peak RSS and disk writes."""
    state = Path(tempfile.mkdtemp(prefix="edge-footprint-"))
    cmd = [sys.executable, "-m", "edge", "run", "--source", source]
    cmd += ["--mqtt-host", "127.0.0.1", "--mqtt-port", str(port)] if port else ["--stdout"]
    env = {**os.environ, "STATE_DIRECTORY": str(state), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(args.warmup)
        if stop_broker is not None:
            stop_broker()
        w0, t0 = _write_bytes(proc.pid), time.monotonic()
        time.sleep(args.seconds)
        w1, t1 = _write_bytes(proc.pid), time.monotonic()
        peak = proc_mb(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(30)
    per_s = (w1 - w0) / (t1 - t0)
    return {"rss_mb": peak, "kb_per_s": per_s / 1024, "gb_per_day": per_s * 86400 / 1e9}


def main(argv: list[str] | None = None) -> int:
    """Run every row and print the markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="Measured seconds per row.")
    ap.add_argument("--warmup", type=float, default=10.0, help="Seconds before the measurement starts.")
    ap.add_argument("--folder", type=Path, help="Folder of 640x480 images for the folder row.")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="FER2013 .npz for the default folder.")
    args = ap.parse_args(argv)

    from edge_pipeline import fer_folder

    from tests.support.broker import Broker, mosquitto_available

    if not mosquitto_available():
        print("error: mosquitto is not installed (apt-get install -y mosquitto)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="edge-footprint-"))
    folder = args.folder or (fer_folder(args.data, tmp / "fer") if args.data.is_file() else None)
    print(f"python -m edge run at default settings (10 fps cap, BlazeFace, shipped model); {args.seconds:g} s "
          f"measured after {args.warmup:g} s; {time.strftime('%Y-%m-%d')}\n")
    print("| row | peak RSS MB | disk writes KB/s | GB/day |")
    print("|---|---|---|---|")
    rows = [("demo, MQTT (broker connected)", "demo", True, False), ("demo, stdout (no broker)", "demo", False, False)]
    if folder is not None:
        rows.append((f"folder of 640x480 JPEGs, MQTT ({folder.name})", str(folder), True, False))
    rows.append(("demo, MQTT, broker gone after the warm-up", "demo", True, True))
    for label, source, mqtt, kill in rows:
        broker = Broker(tmp / f"mosquitto-{len(label)}").start() if mqtt else None
        try:
            res = run_daemon(args, source, broker.port if broker else None, broker.stop if kill else None)
        finally:
            if broker is not None:
                broker.stop()
        print(f"| {label} | {res['rss_mb']:.1f} | {res['kb_per_s']:.2f} | {res['gb_per_day']:.3f} |", flush=True)
    print(f"\ncommand: PYTHONPATH=. python3 benchmarks/device_footprint.py {' '.join(argv or sys.argv[1:])}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
