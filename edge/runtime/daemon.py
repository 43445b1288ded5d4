"""The frame loop: source → detection → classification → tracking → payloads through a Sink.

One thread runs :meth:`Daemon.run`. Other threads (MQTT command worker, model push worker, signal handlers)
only call :meth:`Daemon.stop`, :meth:`Daemon.swap_model`, :meth:`Daemon.handle_command` and
:meth:`Daemon.publish_status`, which are safe to call from any thread: a model swap replaces the classifier
reference between frames. No image or face crop is ever handed to the sink; only numbers and labels are.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import Config
from edge.protocol.envelope import command_event
from edge.runtime.capture import open_source
from edge.runtime.capture.base import Frame
from edge.runtime.capture.managed import ManagedSource
from edge.runtime.classify.classifier import Classifier
from edge.runtime.detect import make_detector
from edge.runtime.sdnotify import Notifier
from edge.runtime.track import Track, Tracker

log = logging.getLogger(__name__)

STAGES = ("capture", "detect", "classify", "track", "publish")
#: Weight of the newest sample in the per-stage latency and fps moving averages.
EMA_ALPHA = 0.1
CPU_TEMP_FILE = Path("/sys/class/thermal/thermal_zone0/temp")


def package_version() -> str:
    """The installed emotion-edge version (``0+unknown`` when running from a bare checkout)."""
    try:
        from importlib.metadata import version

        return version("emotion-edge")
    except Exception:  # PackageNotFoundError, or broken metadata
        return "0+unknown"


def read_cpu_temp(path: Path = CPU_TEMP_FILE) -> float | None:
    """CPU temperature in °C from the Linux thermal zone (millidegrees), None where there is none."""
    try:
        return round(int(path.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


def resolve_bundle_dir(config: Config) -> Path | None:
    """The model to load: ``classifier.model`` if set, else the model store's ``current`` (a pushed model),
    else None for the bundle shipped with the package."""
    if config.classifier.model is not None:
        return Path(config.classifier.model)
    try:
        from edge.runtime.models.store import ModelStore

        current = ModelStore.for_state_dir(config.state_dir()).current()
    except Exception as exc:  # a broken store must not stop the daemon from using its default model
        log.warning("cannot read the model store (%s); using the default model", exc)
        return None
    if current is not None:
        log.info("using the pushed model in %s", current)
    return current


def _probs_dict(labels: list[str], probs: np.ndarray) -> dict[str, float]:
    return {label: round(float(p), 4) for label, p in zip(labels, probs, strict=True)}


def _fraction_box(box: tuple[float, float, float, float], width: int, height: int) -> list[float]:
    """``[x, y, w, h]`` as fractions of the frame, clipped to it (a box may reach past the edge)."""
    x, y, w, h = box
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    return [round(x0 / width, 4), round(y0 / height, 4), round((x1 - x0) / width, 4), round((y1 - y0) / height, 4)]


@dataclass
class _Window:
    """Accumulators of one summary window."""

    start_ts: float
    frames: int = 0
    faces_total: int = 0
    faces_max: int = 0
    prob_sum: np.ndarray | None = None
    observations: int = 0
    tracks: dict[int, list] = field(default_factory=dict)  # track_id -> [observations, prob_sum]

    def add(self, tracks: list[Track]) -> None:
        self.frames += 1
        self.faces_total += len(tracks)
        self.faces_max = max(self.faces_max, len(tracks))
        for t in tracks:
            p = t.raw_probs
            self.prob_sum = p.copy() if self.prob_sum is None else self.prob_sum + p
            self.observations += 1
            entry = self.tracks.setdefault(t.track_id, [0, np.zeros_like(p)])
            entry[0] += 1
            entry[1] = entry[1] + p


class Daemon:
    """The on-device runtime.

    Args:
        config: Validated configuration.
        sink: Where payloads go (``publish(kind, body) -> seq``); the caller closes it after :meth:`run`.
        source: A ready :class:`ManagedSource` (default: built from ``config.source``).
        detector: A face detector (default: :func:`edge.runtime.detect.make_detector` from ``config.detector``).
        classifier: A classifier (default: loads :func:`resolve_bundle_dir` with ``config.classifier``).
        notifier: systemd notifier (default: from the environment; a no-op outside systemd).

    Raises:
        BundleError, RuntimeMissing, DetectorError: the model, runtime or detector cannot be set up.
    """

    def __init__(
        self,
        config: Config,
        sink: Any,
        *,
        source: ManagedSource | None = None,
        detector: Any = None,
        classifier: Classifier | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.sink = sink
        if classifier is None:
            # Like resolve_bundle_dir, but a pushed model that no longer loads is rolled back (edge.runtime.models.boot).
            from edge.runtime.models.boot import startup_classifier

            classifier = startup_classifier(config)
        self._classifier = classifier
        self._previous_classifier: Classifier | None = None
        self._swap_lock = threading.Lock()
        self.current_bundle_dir: Path = self._classifier.bundle_dir
        self.model_id: str = self._classifier.model_id
        d = config.detector
        self.detector = detector or make_detector(d.backend, d.min_confidence, d.min_face_size, d.max_faces)
        s = config.source
        self.source = source or ManagedSource(
            lambda: open_source(s.uri, s), s.uri, s.max_fps, s.loop, s.retry_initial_s, s.retry_max_s
        )
        self.notifier = notifier or Notifier()
        self._tracker = self._new_tracker(self._classifier)
        self._tracker_model = self._classifier
        self._extensions: list[Any] = []
        self._stop = threading.Event()
        self._status_due = threading.Event()
        self.state = "starting"
        self.frames = 0
        self.faces_published = 0
        self.latency_ms: dict[str, float | None] = dict.fromkeys(STAGES)
        #: The latest frame's per-stage milliseconds (benchmarks read these; status uses the averages).
        self.last_ms: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.fps = 0.0
        self._frame_dt: float | None = None
        self._last_frame_t: float | None = None
        self._started = time.monotonic()
        self._last_status = float("-inf")
        self._last_faces = float("-inf")
        self._window = _Window(time.time())
        self._window_t0 = time.monotonic()
        self._preview_dir = config.privacy.debug_preview_dir
        self._preview_error: str | None = None
        if self._preview_dir is not None:
            log.warning("privacy.debug_preview_dir is set: annotated frames are written to %s (local only)", self._preview_dir)
        if hasattr(sink, "on_command") and getattr(sink, "on_command", None) is None:
            sink.on_command = self.handle_command

    # ------------------------------------------------------------------------------------------------ public

    @property
    def classifier(self) -> Classifier:
        """The classifier in use right now."""
        return self._classifier

    def add_extension(self, obj: Any) -> None:
        """Register a feature (Home Assistant discovery, model push) whose ``start()``/``stop()`` follow the daemon."""
        self._extensions.append(obj)

    def stop(self) -> None:
        """Ask :meth:`run` to finish after the current frame (safe from signal handlers and other threads)."""
        self._stop.set()
        self.source.stop()

    def publish_status(self) -> None:
        """Ask for a status message at the next loop iteration (any thread)."""
        self._status_due.set()

    def swap_model(self, bundle_dir: Path | str) -> None:
        """Load and smoke-test the bundle in ``bundle_dir``, then use it from the next frame on.

        Raises:
            BundleError, RuntimeMissing: the new model cannot be loaded or run; the old one stays in use.
        """
        c = self.config.classifier
        new = Classifier(bundle_dir, c.threads, c.runtime, c.flip_tta)  # raises before anything changes
        with self._swap_lock:
            self._previous_classifier = self._classifier
            self._classifier = new
            self.current_bundle_dir = new.bundle_dir
            self.model_id = new.model_id
        log.info("model swapped: now running %s from %s", new.model_id, new.bundle_dir)
        self.publish_status()

    def handle_command(self, cmd: dict) -> None:
        """Execute a command dict (``publish_status`` or ``reload_model`` [``bundle_dir``]) and publish the result
        as an ``events`` message with event ``command``. Runs on the caller's thread."""
        name = cmd.get("command")
        ok, detail = True, None
        try:
            if name == "publish_status":
                self.publish_status()
                detail = "status will be published"
            elif name == "reload_model":
                target = self._reload_target(cmd.get("bundle_dir"))
                if target is None:
                    ok = False
                    detail = (f"bundle_dir must be the model store's current link {self._store_root() / 'current'} "
                              "or the running bundle (an unsigned command may not pick an older model); make a "
                              "model current with a push or 'python -m edge.modelctl rollback' first")
                else:
                    self.swap_model(target)
                    detail = f"running {self.model_id}"
            else:
                ok, detail = False, f"unknown command {name!r}; use 'publish_status' or 'reload_model'"
        except Exception as exc:  # BundleError, RuntimeMissing, OSError: reported, never raised to the sink
            ok, detail = False, f"{name} failed: {exc}"
        if not ok:
            log.warning("command %s: %s", name, detail)
        self._publish("events", command_event(name, ok, detail, cmd))

    def _store_root(self) -> Path:
        return (self.config.state_dir() / "models").resolve()

    def _reload_target(self, bundle_dir: Any) -> Path | None:
        """The folder a ``reload_model`` command may load: the running bundle, or the model store's ``current``.

        The command topic carries no signature, so it must not be able to point the daemon at arbitrary files,
        nor at an older model kept in the store (which would get around the push's downgrade check).
        """
        if not bundle_dir:
            return Path(self.current_bundle_dir)
        target = Path(str(bundle_dir)).resolve()
        allowed = (Path(self.current_bundle_dir).resolve(), (self._store_root() / "current").resolve())
        return target if target in allowed else None

    def status_body(self) -> dict[str, Any]:
        """The ``status`` payload body (see the MQTT contract)."""
        clf = self._classifier
        stats = self.sink.stats() if hasattr(self.sink, "stats") else {"pending": 0, "dropped": 0}
        push = None
        for ext in self._extensions:
            if getattr(ext, "last_result", None) is not None:
                push = ext.last_result
        return {
            "state": self.state,
            "model_id": clf.model_id,
            "model": {"id": clf.model_id, "runtime": clf.runtime, "labels": clf.labels},
            "detector": getattr(self.detector, "name", None),
            "source": self.source.status(),
            "fps": round(self.fps, 2),
            "frames": self.frames,
            "dropped_frames": self.source.dropped,
            "latency_ms": {k: (None if v is None else round(v, 3)) for k, v in self.latency_ms.items()},
            "outbox": {"pending": int(stats.get("pending", 0)), "dropped": int(stats.get("dropped", 0))},
            "cpu_temp_c": read_cpu_temp(),
            "uptime_s": round(time.monotonic() - self._started, 1),
            "version": package_version(),
            "model_push": push,
        }

    def close(self) -> None:
        """Release the source and the detector without running (when start-up fails after construction)."""
        self.source.close()
        with contextlib.suppress(Exception):
            self.detector.close()

    def run(self, max_frames: int | None = None) -> int:
        """Process frames until :meth:`stop`, the source ends (``source.loop = false``) or ``max_frames``.

        Returns the number of frames processed. Does not close the sink (the caller owns it).
        """
        for ext in self._extensions:
            if hasattr(ext, "start"):
                ext.start()
        self._set_state("running")
        self.notifier.ready(f"running model {self.model_id}")
        try:
            while not self._stop.is_set():
                self.notifier.watchdog()
                self._periodic()
                if max_frames is not None and self.frames >= max_frames:
                    break
                frame = self.source.poll(max_wait=0.5)
                if frame is None:
                    if self.source.finished:
                        break
                    self._set_state("degraded" if self.source.state == "retrying" else "running")
                    continue
                self._set_state("running")
                self.process_frame(frame)
        finally:
            self._shutdown()
        return self.frames

    # ---------------------------------------------------------------------------------------------- internals

    def _new_tracker(self, clf: Classifier, first_id: int = 1) -> Tracker:
        t = self.config.tracking
        return Tracker(clf.labels, t.iou_threshold, t.max_missed_frames, t.smoothing, t.uncertain_below, first_id)

    def _publish(self, kind: str, body: dict[str, Any]) -> None:
        try:
            self.sink.publish(kind, body)
        except Exception as exc:  # a closed or broken sink must not kill the frame loop
            log.error("cannot publish %s: %s", kind, exc)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            log.info("state %s -> %s", self.state, state)
            self.state = state
            self._send_status()

    def _send_status(self) -> None:
        self._status_due.clear()
        self._last_status = time.monotonic()
        self._publish("status", self.status_body())

    def _periodic(self) -> None:
        now = time.monotonic()
        if self._status_due.is_set() or now - self._last_status >= self.config.mqtt.status_interval_s:
            self._send_status()
        if now - self._window_t0 >= self.config.mqtt.summary_interval_s:
            self._send_summary(now)

    def _send_summary(self, now: float) -> None:
        w = self._window
        end = time.time()
        labels = self._tracker.labels
        mean = w.prob_sum / w.observations if w.prob_sum is not None and w.observations else None
        tracks = []
        for tid, (n, psum) in sorted(w.tracks.items()):
            tp = psum / n
            tracks.append({"track_id": tid, "observations": n, "dominant_emotion": labels[int(np.argmax(tp))],
                           "mean_probs": _probs_dict(labels, tp)})
        self._publish("summary", {
            "window_s": round(max(now - self._window_t0, 1e-3), 3),
            "start_ts": w.start_ts,
            "end_ts": end,
            "frames": w.frames,
            "faces_mean": round(w.faces_total / w.frames, 3) if w.frames else 0.0,
            "faces_max": w.faces_max,
            "dominant_emotion": labels[int(np.argmax(mean))] if mean is not None else None,
            "mean_probs": _probs_dict(labels, mean) if mean is not None else {},
            "tracks": tracks,
        })
        self._window = _Window(end)
        self._window_t0 = now

    def _end_tracks(self, tracks: list[Track], labels: list[str]) -> None:
        for t in tracks:
            self._publish("events", {
                "event": "track_end", "track_id": t.track_id, "duration_s": round(max(0.0, t.last_ts - t.start_ts), 3),
                "dominant_emotion": labels[int(np.argmax(t.mean_probs()))],
            })

    def _ema(self, stage: str, seconds: float) -> None:
        ms = seconds * 1000.0
        self.last_ms[stage] = ms
        old = self.latency_ms[stage]
        self.latency_ms[stage] = ms if old is None else old + EMA_ALPHA * (ms - old)

    def _classify(self, frame: Frame, boxes: list) -> tuple[Classifier, np.ndarray]:
        clf = self._classifier
        try:
            return clf, clf.classify(frame.image, boxes)
        except Exception as exc:
            # A freshly swapped model that loads but fails on real faces: go back to the one that worked.
            with self._swap_lock:
                prev = self._previous_classifier
                if prev is None or clf is not self._classifier:
                    raise
                log.error("model %s failed on a frame (%s); rolling back to %s", clf.model_id, exc, prev.model_id)
                self._classifier, self._previous_classifier = prev, None
                self.current_bundle_dir, self.model_id = prev.bundle_dir, prev.model_id
            # Let the model-push extension roll its store back too, so a restart does not load the bad model.
            for ext in self._extensions:
                if hasattr(ext, "model_rolled_back"):
                    ext.model_rolled_back(clf.bundle_dir, clf.model_id, prev.bundle_dir, str(exc))
            self.publish_status()
            return prev, prev.classify(frame.image, boxes)

    def process_frame(self, frame: Frame) -> list[Track]:
        """Detect, classify, track and publish one frame; return the tracks observed in it."""
        p = time.perf_counter
        self._ema("capture", self.source.last_read_s)
        t0 = p()
        det_img = frame.detect_image if frame.detect_image is not None else frame.image
        dets = self.detector.detect(det_img, scale=frame.detect_scale)
        t1 = p()
        clf, probs = self._classify(frame, [d.box for d in dets])
        t2 = p()
        if clf is not self._tracker_model:
            # New labels or new calibration: old smoothed probabilities mean nothing to the new model, and the
            # summary window so far belongs to the old one (its labels may differ in number and order).
            self._end_tracks(self._tracker.close_all(), self._tracker.labels)
            self._send_summary(time.monotonic())
            # Ids keep counting up so a subscriber never sees one id for two different tracks.
            self._tracker, self._tracker_model = self._new_tracker(clf, self._tracker.next_id), clf
        update = self._tracker.update([d.raw_box for d in dets], probs, frame.ts)
        self._window.add(update.observed)
        t3 = p()
        labels = self._tracker.labels
        for t in update.started:
            self._publish("events", {"event": "track_start", "track_id": t.track_id})
        self._end_tracks(update.ended, labels)
        now = time.monotonic()
        if update.observed and now - self._last_faces >= self.config.mqtt.faces_interval_s:
            self._last_faces = now
            faces = []
            for t in update.observed:
                emotion, conf = self._tracker.emotion(t.probs)
                faces.append({
                    "track_id": t.track_id,
                    "box": _fraction_box(t.box, frame.width, frame.height),
                    "emotion": emotion,
                    "confidence": round(conf, 4),
                    "probs": _probs_dict(labels, t.probs),
                    "raw_probs": _probs_dict(labels, t.raw_probs),
                })
            self._publish("faces", {"frame": self.frames, "width": frame.width, "height": frame.height, "faces": faces})
            self.faces_published += 1
        t4 = p()
        for stage, dt in zip(STAGES[1:], (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            self._ema(stage, dt)
        if self._last_frame_t is not None:
            dt = now - self._last_frame_t
            self._frame_dt = dt if self._frame_dt is None else self._frame_dt + EMA_ALPHA * (dt - self._frame_dt)
            self.fps = 1.0 / self._frame_dt if self._frame_dt > 0 else 0.0
        self._last_frame_t = now
        self.frames += 1
        if self._preview_dir is not None:
            self._write_preview(frame, update.observed)
        return update.observed

    def _write_preview(self, frame: Frame, tracks: list[Track]) -> None:
        """Annotated frame to the local debug folder (privacy: only when configured; never published)."""
        import cv2

        try:
            img = frame.image.copy() if frame.image.ndim == 3 else cv2.cvtColor(frame.image, cv2.COLOR_GRAY2BGR)
            for t in tracks:
                x, y, w, h = (int(round(v)) for v in t.box)
                emotion, conf = self._tracker.emotion(t.probs)
                cv2.rectangle(img, (x, y), (x + w, y + h), (0, 255, 0), 2)
                cv2.putText(img, f"#{t.track_id} {emotion} {conf:.2f}", (x, max(12, y - 4)),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1)
            self._preview_dir.mkdir(parents=True, exist_ok=True)
            # One rolling file: a preview is for looking at now, not an archive of faces.
            tmp = self._preview_dir / "preview.tmp.jpg"
            cv2.imwrite(str(tmp), img)
            tmp.replace(self._preview_dir / "preview.jpg")
        except Exception as exc:
            # Once per distinct failure: a read-only folder would otherwise log on every frame.
            if str(exc) != self._preview_error:
                log.warning("debug preview to %s failed: %s (logged once until it changes)", self._preview_dir, exc)
                self._preview_error = str(exc)
        else:
            if self._preview_error is not None:
                log.info("debug preview to %s works again", self._preview_dir)
                self._preview_error = None

    def _shutdown(self) -> None:
        log.info("stopping after %d frames", self.frames)
        self.notifier.stopping()
        self._end_tracks(self._tracker.close_all(), self._tracker.labels)
        if self._window.frames:
            self._send_summary(time.monotonic())
        self.state = "stopping"
        self._send_status()
        for ext in reversed(self._extensions):
            if hasattr(ext, "stop"):
                try:
                    ext.stop()
                except Exception:
                    log.exception("stopping extension %r failed", ext)
        self.source.close()
        with contextlib.suppress(Exception):
            self.detector.close()
