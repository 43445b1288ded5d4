"""The device frame loop against the ``fer`` package's pipeline, on the same 640x480 frames, in one run.

Each configuration runs in its own fresh process (so its peak RSS is its own), on the same frames:

* **demo**: the demo source's public-domain faces (``DemoSource(faces=N, vanish=False)``), 1 and 3 faces;
* **folder**: 640x480 JPEG files in a folder, read by the daemon's folder source: ``--folder DIR``, else made
  here from the first 100 FER2013 validation faces (``--data``), each upsampled 4x onto a 640x480 canvas the way
  ``benchmarks/crop_calibration.py`` places them (the files are written to a temporary folder, not kept).

Rows:

* **daemon**: the real :class:`edge.runtime.daemon.Daemon` frame loop with the default BlazeFace detector (or
  Haar) and the config's default interpreter threads (2; ``--threads``), publishing through the real MQTT sink to a
  real Mosquitto on loopback (the deployed path, messages acknowledged in memory) or through the stdout sink into
  ``/dev/null``. "loop" is the loop's own stages per frame: detect + classify + track + publish, without the
  capture. It runs once on the frames decoded beforehand, served in order exactly as the ``fer`` row gets them
  (the ratio compares these two), and once from its own source (the demo's render, or the folder source's JPEG
  decode right before each frame, whose cache traffic slows the stages after it: what a real source costs);
* **floor**: detector + classifier alone (no tracking, no payloads);
* **fer**: ``FER().detect_emotions(frame)`` of the ``fer`` package (Haar + its mini-Xception TFLite), on the same
  decoded frames, run with ``--fer-python`` (a venv with fer: see benchmarks/README.md).

The last line gives fer's ms per frame over our loop's, per frame set. Run::

    PYTHONPATH=. nice -n 10 python3 benchmarks/edge_pipeline.py [--frames 300] [--fer-python /tmp/fervenv/bin/python]
"""

from __future__ import annotations

import argparse
import contextlib
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
LOOP = ("detect", "classify", "track", "publish")
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fer2013" / "val.npz"


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _Preloaded:
    """The configuration's frames decoded beforehand and served in order, as the fer row gets them."""

    def __init__(self, images: list[np.ndarray]) -> None:
        self._images, self._i = images, 0

    def read(self):
        from edge.runtime.capture.base import Frame

        image = self._images[self._i % len(self._images)]
        self._i += 1
        return Frame(image, self._i, time.time())

    def close(self) -> None:
        """Nothing to release."""


def _opener(args: argparse.Namespace):
    """A zero-argument function that opens this configuration's frame source."""
    from edge.runtime.capture.demo import DemoSource
    from edge.runtime.capture.folder import FolderSource

    if args.preload:
        images = _frames(argparse.Namespace(**{**vars(args), "preload": False}), args.frames + args.warmup)
        return lambda: _Preloaded(images)
    if args.frames_from == "demo":
        return lambda: DemoSource(faces=args.faces, vanish=False)
    return lambda: FolderSource(args.frames_from)


def _frames(args: argparse.Namespace, n: int) -> list[np.ndarray]:
    """The first ``n`` frames of the configuration, decoded (for the rows that do not time the capture)."""
    src = _opener(args)()
    out = []
    while len(out) < n:
        frame = src.read()
        if frame is None:
            src = _opener(args)()
            continue
        out.append(frame.image)
    return out


def _stats(values: list[float]) -> dict[str, float]:
    return {"p50": float(np.median(values)), "p90": float(np.percentile(values, 90)), "mean": float(np.mean(values))}


def worker_daemon(args: argparse.Namespace) -> dict:
    """The full frame loop, frame by frame, recording each stage."""
    from edge.config import parse_config
    from edge.runtime.assemble import assemble
    from edge.runtime.capture.managed import ManagedSource

    state = tempfile.mkdtemp(prefix="edge-bench-")
    cfg = parse_config({
        "device": {"id": "bench", "state_dir": state},
        "source": {"max_fps": 0},
        "detector": {"backend": args.detector, "threads": args.threads,
                     **({"every_n_frames": args.every} if args.every else {})},
        "classifier": {"model": args.model, "threads": args.threads},
        "mqtt": {"host": "127.0.0.1", "port": args.mqtt_port or 9},
        "homeassistant": {"enabled": False},
    })
    if args.sink == "mqtt":
        from edge.runtime.publish.mqtt import MqttSink

        sink = MqttSink(cfg)
        if not sink.wait_connected(10):
            raise SystemExit("no broker")
    else:
        from edge.runtime.publish.stdout import StdoutSink

        sink = StdoutSink("bench", stream=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
    # The assembly's own demo source is replaced by the benchmark's frames (uncapped, like source.max_fps 0).
    parts = contextlib.ExitStack()
    daemon = parts.enter_context(assemble(cfg, sink=sink))
    daemon.source = ManagedSource(_opener(args), "bench", max_fps=0)
    samples: dict[str, list[float]] = {k: [] for k in (*STAGES, "loop")}
    found = []
    for _ in range(args.warmup):
        daemon.process_frame(daemon.source.poll())
    t0 = time.perf_counter()
    for _ in range(args.frames):
        frame = daemon.source.poll()
        if frame is None:  # a folder restarting: its reopen is not a frame
            frame = daemon.source.poll()
        found.append(len(daemon.process_frame(frame)))
        for k in STAGES:
            samples[k].append(daemon.stats.last_ms[k])
        samples["loop"].append(sum(daemon.stats.last_ms[k] for k in LOOP))
    wall = time.perf_counter() - t0
    out = {k: _stats(v) for k, v in samples.items()}
    out.update(ms_per_frame=1000 * wall / args.frames, rss_mb=peak_rss_mb(), faces_seen=float(np.mean(found)),
               detector=daemon.detector.name)
    if args.sink == "mqtt":
        out["flushed"] = sink.flush(10)
        sink.close(2)
    daemon.source.close()
    parts.close()
    return out


def worker_floor(args: argparse.Namespace) -> dict:
    """Detector + classifier only, on decoded frames."""
    from edge.runtime.classify.classifier import Classifier
    from edge.runtime.detect import make_detector

    frames = _frames(args, args.frames + args.warmup)
    det = make_detector(backend=args.detector, threads=args.threads)
    clf = Classifier(args.model, threads=args.threads)
    loop, found = [], []
    for i, frame in enumerate(frames):
        a = time.perf_counter()
        dets = det.detect(frame)
        clf.classify(frame, [d.box for d in dets])
        if i >= args.warmup:
            loop.append((time.perf_counter() - a) * 1000)
            found.append(len(dets))
    det.close()
    return {"loop": _stats(loop), "rss_mb": peak_rss_mb(), "faces_seen": float(np.mean(found))}


def worker_fer(args: argparse.Namespace) -> dict:
    """The fer package's own pipeline on decoded frames: FER().detect_emotions(frame)."""
    import cv2
    from fer.fer import FER

    n = min(args.frames, args.fer_frames)
    frames = _frames(args, n + 5)
    try:
        fer = FER()
    except Exception:  # OpenCV builds without Haar data: hand fer the cascade it bundles
        import fer as fer_pkg

        fer = FER(cascade_file=str(Path(fer_pkg.__file__).parent / "data" / "haarcascade_frontalface_default.xml"))
    loop, found = [], []
    for i, frame in enumerate(frames):
        a = time.perf_counter()
        faces = fer.detect_emotions(frame)
        if i >= 5:
            loop.append((time.perf_counter() - a) * 1000)
            found.append(len(faces))
    return {"loop": _stats(loop), "rss_mb": peak_rss_mb(), "faces_seen": float(np.mean(found)),
            "detector": f"fer (OpenCV {cv2.__version__} Haar)"}


WORKERS = {"daemon": worker_daemon, "floor": worker_floor, "fer": worker_fer}


def run_worker(python: str, kind: str, args: argparse.Namespace, **extra: object) -> dict | None:
    """Run one configuration in a fresh process; return its JSON result (None if it failed)."""
    cmd = [python, __file__, "--worker", kind, "--frames", str(args.frames), "--warmup", str(args.warmup),
           "--model", str(args.model), "--fer-frames", str(args.fer_frames), "--threads", str(args.threads)]
    for key, value in extra.items():
        if value is True:
            cmd.append(f"--{key.replace('_', '-')}")
        else:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode != 0 or not lines:
        tail = (r.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  {kind} {extra} failed: {tail}", file=sys.stderr)
        return None
    return json.loads(lines[-1])


def fer_folder(data: Path, out: Path, n: int = 100) -> Path:
    """640x480 JPEGs of the first ``n`` faces of ``data``, each upsampled 4x onto a canvas (crop_calibration)."""
    import cv2
    from crop_calibration import place

    out.mkdir(parents=True, exist_ok=True)
    for i, face in enumerate(np.load(data)["x"][:n]):
        canvas, _ = place(face, 4)
        cv2.imwrite(str(out / f"f{i:03d}.jpg"), cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return out


def cell(res: dict | None, key: str) -> str:
    """A table cell: the p50 of ``key``, or a dash."""
    return "–" if res is None or key not in res else f"{res[key]['p50']:.2f}"


def main(argv: list[str] | None = None) -> int:
    """Run every configuration and print the markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "edge" / "models" / "default"), help="Model bundle folder.")
    ap.add_argument("--frames", type=int, default=300, help="Timed frames per configuration.")
    ap.add_argument("--warmup", type=int, default=30, help="Untimed frames first.")
    ap.add_argument("--folder", type=Path, help="A folder of 640x480 images to use as the 'folder' frames.")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="FER2013 .npz for the default folder frames.")
    ap.add_argument("--fer-python", default="/tmp/fervenv/bin/python", help="Python with the fer package ('' to skip).")
    ap.add_argument("--fer-frames", type=int, default=100, help="Timed frames for fer (it is slow).")
    ap.add_argument("--threads", type=int, default=2,
                    help="Interpreter threads of detector and classifier (default 2, the config's default).")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--faces", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--frames-from", default="demo", help=argparse.SUPPRESS)
    ap.add_argument("--detector", default="blazeface", help=argparse.SUPPRESS)
    ap.add_argument("--sink", default="stdout", help=argparse.SUPPRESS)
    ap.add_argument("--mqtt-port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--preload", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--every", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return 0

    from edge.bundle import BundleError, load_bundle
    from tests.support.broker import Broker, mosquitto_available

    try:
        manifest, _ = load_bundle(args.model)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="edge-pipeline-"))
    sets = [("demo, 1 face", "demo", 1), ("demo, 3 faces", "demo", 3)]
    if args.folder is not None:
        sets.append((f"folder {args.folder}", str(args.folder), 1))
    elif args.data.is_file():
        sets.append(("folder: 100 FER val faces x4 on 640x480 JPEG", str(fer_folder(args.data, tmp / "fer")), 1))
    broker = Broker(tmp / "mosquitto").start() if mosquitto_available() else None
    print(f"model {manifest.model_id}; {args.frames} timed frames after {args.warmup} warm-up (fer: "
          f"{min(args.frames, args.fer_frames)}); 640x480; {args.threads} interpreter threads each for detector and "
          f"classifier; p50 ms per frame; "
          f"{time.strftime('%Y-%m-%d')}\n")
    print("| frames | pipeline | detect | classify | track | publish | loop (no capture) | capture | peak RSS MB | faces |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ratios = []
    try:
        for label, frames_from, faces in sets:
            common = {"faces": faces, "frames_from": frames_from}
            mqtt = {"detector": "blazeface", "sink": "mqtt", "mqtt_port": broker.port} if broker else None
            rows = [("daemon, BlazeFace, MQTT to Mosquitto, frames decoded beforehand", "daemon",
                     {**mqtt, "preload": True} if mqtt else None),
                    ("the same, detecting on every frame (detector.every_n_frames = 1)", "daemon",
                     {**mqtt, "preload": True, "every": 1} if mqtt else None),
                    ("daemon, BlazeFace, MQTT to Mosquitto, from its source", "daemon", mqtt),
                    ("daemon, BlazeFace, stdout sink", "daemon", {"detector": "blazeface", "sink": "stdout"}),
                    ("floor: BlazeFace + classifier", "floor", {"detector": "blazeface"}),
                    ("daemon, Haar, stdout sink", "daemon", {"detector": "opencv", "sink": "stdout"})]
            ours = every_frame = None
            for name, kind, extra in rows:
                if extra is None:
                    continue
                res = run_worker(sys.executable, kind, args, **common, **extra)
                if res is None:
                    continue
                if name.startswith("daemon, BlazeFace, MQTT to Mosquitto, frames decoded"):
                    ours = res
                if name.startswith("the same, detecting on every frame"):
                    every_frame = res
                print(f"| {label} | {name} | {cell(res, 'detect')} | {cell(res, 'classify')} | {cell(res, 'track')} | "
                      f"{cell(res, 'publish')} | {cell(res, 'loop')} | {cell(res, 'capture')} | {res['rss_mb']:.0f} | "
                      f"{res['faces_seen']:.2f} |", flush=True)
            if args.fer_python and Path(args.fer_python).exists():
                res = run_worker(args.fer_python, "fer", args, **common)
                if res is not None:
                    print(f"| {label} | fer: FER().detect_emotions | – | – | – | – | {cell(res, 'loop')} | – | "
                          f"{res['rss_mb']:.0f} | {res['faces_seen']:.2f} |", flush=True)
                    if ours is not None:
                        ratios.append(f"{label}: {res['loop']['p50'] / ours['loop']['p50']:.1f}x"
                                      + (f" ({res['loop']['p50'] / every_frame['loop']['p50']:.1f}x detecting on "
                                         "every frame)" if every_frame is not None else ""))
    finally:
        if broker is not None:
            broker.stop()
    if ratios:
        print("\nfer's pipeline / our loop (p50, the same decoded frames for both): " + "; ".join(ratios))
    print(f"\ncommand: {' '.join(['PYTHONPATH=.', 'python3', 'benchmarks/edge_pipeline.py', *(argv or sys.argv[1:])])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
