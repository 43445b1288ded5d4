"""Per-stage latency, fps and peak RSS of the on-device pipeline on 640x480 frames with 1 and 3 faces.

Rows (each configuration runs in its own fresh process, so peak RSS is that configuration's alone):

* **daemon**: the real :class:`edge.runtime.daemon.Daemon` frame loop (capture → detect → classify → track → publish)
  with a :class:`edge.runtime.publish.stdout.StdoutSink` writing its JSON lines to ``/dev/null`` (``--sink stdout``), or the
  MQTT sink's SQLite outbox with no broker (``--sink outbox``: every message is written to disk, the realistic
  cost while a broker is away);
* **floor**: detector + classifier alone on the same frames (no tracking, no payloads);
* **fer**: the ``fer`` package's own pipeline, ``FER().detect_emotions(frame)`` (Haar + its mini-Xception TFLite),
  run with the interpreter given by ``--fer-python`` (a venv with fer; see benchmarks/README.md).

Frames are the demo's public-domain faces (``edge.runtime.capture.demo.DemoSource(faces=N, vanish=False)``), rendered on the
fly (not kept in memory, so peak RSS is the pipeline's): "capture" is the demo's render, about one 640x480 frame
copy, comparable to taking a frame from a camera buffer. Run::

    nice -n 10 python3 benchmarks/edge_pipeline.py --model BUNDLE_DIR [--frames 300] [--fer-python /tmp/fervenv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("capture", "detect", "classify", "track", "publish")


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Frames:
    """640x480 BGR demo frames with ``faces`` moving faces, rendered when asked (frame ``i`` is deterministic)."""

    def __init__(self, faces: int) -> None:
        from edge.runtime.capture.demo import DemoSource

        self.demo = DemoSource(faces=faces, vanish=False)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.demo.render(i)


def _summary(samples: dict[str, list[float]], wall_s: float, frames: int) -> dict:
    out = {k: {"mean": float(np.mean(v)), "p50": float(np.median(v)), "p90": float(np.percentile(v, 90))}
           for k, v in samples.items()}
    out["fps"] = frames / wall_s
    out["ms_per_frame"] = 1000.0 * wall_s / frames
    out["rss_mb"] = peak_rss_mb()
    return out


def worker_daemon(args: argparse.Namespace) -> dict:
    """The full frame loop, frame by frame, recording each stage."""
    from edge.config import Config
    from edge.runtime.capture.demo import DemoSource
    from edge.runtime.capture.managed import ManagedSource
    from edge.runtime.daemon import Daemon

    state = tempfile.mkdtemp(prefix="edge-bench-")
    cfg = Config.model_validate({
        "device": {"id": "bench", "state_dir": state},
        "source": {"max_fps": 0},
        "detector": {"backend": args.detector, "max_faces": 5},
        "classifier": {"model": args.model, "threads": 1},
        "mqtt": {"host": "127.0.0.1", "port": 9, "status_interval_s": 10, "summary_interval_s": 10},
    })
    if args.sink == "outbox":
        from edge.runtime.publish.mqtt import MqttSink

        sink = MqttSink(cfg)  # nothing listens on port 9: every message stays in the SQLite outbox
    else:
        from edge.runtime.publish.stdout import StdoutSink

        sink = StdoutSink("bench", stream=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
    daemon = Daemon(cfg, sink)
    daemon.source = ManagedSource(lambda: DemoSource(faces=args.faces, vanish=False), "demo")
    samples: dict[str, list[float]] = {k: [] for k in STAGES}
    found = []
    for _ in range(args.warmup):
        daemon.process_frame(daemon.source.poll())
    t0 = time.perf_counter()
    for _ in range(args.frames):
        frame = daemon.source.poll()
        found.append(len(daemon.process_frame(frame)))
        for k in STAGES:
            samples[k].append(daemon.last_ms[k])
    wall = time.perf_counter() - t0
    out = _summary(samples, wall, args.frames)
    out["faces_seen"] = float(np.mean(found))
    out["runtime"] = daemon.classifier.runtime
    daemon.close()
    return out


def worker_floor(args: argparse.Namespace) -> dict:
    """Detector + classifier only."""
    from edge.runtime.classify.classifier import Classifier
    from edge.runtime.detect import make_detector

    frames = Frames(args.faces)
    det = make_detector(args.detector, max_faces=5)
    clf = Classifier(args.model, threads=1)
    samples: dict[str, list[float]] = {"detect": [], "classify": []}
    found = []
    wall = 0.0
    for i in range(args.warmup):
        clf.classify(frames[i], [d.box for d in det.detect(frames[i])])
    for i in range(args.frames):
        frame = frames[i]  # rendering is not part of the floor
        a = time.perf_counter()
        dets = det.detect(frame)
        b = time.perf_counter()
        clf.classify(frame, [d.box for d in dets])
        c = time.perf_counter()
        wall += c - a
        samples["detect"].append((b - a) * 1000)
        samples["classify"].append((c - b) * 1000)
        found.append(len(dets))
    out = _summary(samples, wall, args.frames)
    out["faces_seen"] = float(np.mean(found))
    det.close()
    return out


def worker_fer(args: argparse.Namespace) -> dict:
    """The fer package's own pipeline: FER().detect_emotions(frame) (Haar cascade + its TFLite model)."""
    import cv2
    from fer.fer import FER

    frames = Frames(args.faces)
    try:
        fer = FER()
    except Exception:
        # OpenCV builds without Haar data: hand fer the cascade it bundles.
        import fer as fer_pkg

        cascade = Path(fer_pkg.__file__).parent / "data" / "haarcascade_frontalface_default.xml"
        fer = FER(cascade_file=str(cascade))
    found = []
    for i in range(min(args.warmup, 10)):
        fer.detect_emotions(frames[i])
    n = min(args.frames, args.fer_frames)
    samples: dict[str, list[float]] = {"frame": []}
    wall = 0.0
    for i in range(n):
        frame = frames[i]
        a = time.perf_counter()
        found.append(len(fer.detect_emotions(frame)))
        wall += time.perf_counter() - a
        samples["frame"].append((time.perf_counter() - a) * 1000)
    out = _summary(samples, wall, n)
    out["faces_seen"] = float(np.mean(found))
    out["runtime"] = f"fer (OpenCV {cv2.__version__} Haar)"
    return out


WORKERS = {"daemon": worker_daemon, "floor": worker_floor, "fer": worker_fer}


def run_worker(python: str, kind: str, faces: int, args: argparse.Namespace, **extra) -> dict | None:
    """Run one configuration in a fresh process; return its JSON result (None if it failed)."""
    cmd = [python, __file__, "--worker", kind, "--faces", str(faces), "--frames", str(args.frames),
           "--warmup", str(args.warmup), "--model", str(args.model), "--fer-frames", str(args.fer_frames)]
    for key, value in extra.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode != 0 or not lines:
        tail = (r.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  {kind} ({faces} faces) failed: {tail}", file=sys.stderr)
        return None
    return json.loads(lines[-1])


def fmt(res: dict | None, key: str) -> str:
    """One table cell: ``res[key]`` formatted, or a dash when it was not measured."""
    if res is None or key not in res:
        return "–"
    return f"{res[key]['p50']:.2f}"


def main(argv: list[str] | None = None) -> int:
    """Run every configuration and print the markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "edge" / "models" / "default"), help="Model bundle folder.")
    ap.add_argument("--frames", type=int, default=300, help="Timed frames per configuration.")
    ap.add_argument("--warmup", type=int, default=30, help="Untimed frames first.")
    ap.add_argument("--fer-python", default="/tmp/fervenv/bin/python", help="Python with the fer package ('' to skip).")
    ap.add_argument("--fer-frames", type=int, default=100, help="Timed frames for fer (it is slow).")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--faces", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--detector", default="mediapipe", help=argparse.SUPPRESS)
    ap.add_argument("--sink", default="stdout", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return 0

    from edge.bundle import BundleError, load_bundle

    try:
        manifest, _ = load_bundle(args.model)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"model {manifest.model_id} ({args.model}); {args.frames} timed frames after {args.warmup} warm-up; "
          f"640x480 demo frames; 1 classifier thread; p50 ms per frame\n")
    print("| faces | pipeline | capture | detect | classify | track | publish | ms/frame (wall) | fps | peak RSS MB | faces found |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [
        ("daemon, MediaPipe, stdout sink", "daemon", {"detector": "mediapipe", "sink": "stdout"}),
        ("daemon, MediaPipe, MQTT outbox (no broker)", "daemon", {"detector": "mediapipe", "sink": "outbox"}),
        ("floor: MediaPipe + classifier", "floor", {"detector": "mediapipe"}),
        ("daemon, Haar, stdout sink", "daemon", {"detector": "opencv", "sink": "stdout"}),
        ("floor: Haar + classifier", "floor", {"detector": "opencv"}),
    ]
    for faces in (1, 3):
        for label, kind, extra in rows:
            res = run_worker(sys.executable, kind, faces, args, **extra)
            if res is None:
                continue
            print(f"| {faces} | {label} | {fmt(res, 'capture')} | {fmt(res, 'detect')} | {fmt(res, 'classify')} | "
                  f"{fmt(res, 'track')} | {fmt(res, 'publish')} | {res['ms_per_frame']:.2f} | {res['fps']:.0f} | "
                  f"{res['rss_mb']:.0f} | {res['faces_seen']:.2f} |", flush=True)
        if args.fer_python and Path(args.fer_python).exists():
            res = run_worker(args.fer_python, "fer", faces, args)
            if res is not None:
                print(f"| {faces} | fer package: FER().detect_emotions (Haar + TFLite) | – | – | – | – | – | "
                      f"{res['ms_per_frame']:.2f} | {res['fps']:.0f} | {res['rss_mb']:.0f} | {res['faces_seen']:.2f} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
