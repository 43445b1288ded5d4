"""The frame loop: source -> detection -> classification -> tracking -> payloads through a Sink.

One thread runs :meth:`Daemon.run`. Other threads (MQTT command worker, model push worker, signal handlers)
only call :meth:`Daemon.stop`, :meth:`Daemon.swap_model`, :meth:`Daemon.handle_command`,
:meth:`Daemon.set_paused` and :meth:`Daemon.publish_status`, which are safe to call from any thread: a model
swap replaces the classifier reference between frames (:mod:`edge.runtime.models.active`), and a pause waits
for the frame in progress, then closes the source (:mod:`edge.runtime.pause`). The payload bodies are built by
:mod:`edge.runtime.report`; no image or face crop is ever handed to the sink, only numbers and labels.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

from edge.config import Config
from edge.runtime.capture import open_source
from edge.runtime.capture.base import Frame
from edge.runtime.capture.managed import ManagedSource
from edge.runtime.classify.classifier import Classifier
from edge.runtime.commands import DeviceCommands
from edge.runtime.detect import make_detector
from edge.runtime.detect.base import FaceDetector
from edge.runtime.detect.carry import CarryingDetector
from edge.runtime.emotions import EmotionWatch
from edge.runtime.models.active import ActiveModel
from edge.runtime.pause import PauseFile
from edge.runtime.preview import PreviewWriter
from edge.runtime.publish.base import Sink, SinkStats
from edge.runtime.report import (
    SummaryWindow,
    faces_body,
    read_cpu_temp,
    track_end_event,
    track_start_event,
)
from edge.runtime.sdnotify import Notifier
from edge.runtime.state_topics import PlainState
from edge.runtime.track import Track, Tracker
from edge.version import package_version

log = logging.getLogger(__name__)

STAGES = ("capture", "detect", "classify", "track", "publish")
#: Weight of the newest sample in the per-stage latency and fps moving averages.
EMA_ALPHA = 0.1


class Daemon:
    """The on-device runtime.

    Args:
        config: Validated configuration.
        sink: Where payloads go (``publish(kind, body) -> seq``); the caller closes it after :meth:`run`.
        source: A ready :class:`ManagedSource` (default: built from ``config.source``).
        detector: A face detector (default: :func:`edge.runtime.detect.make_detector` from ``config.detector``).
        classifier: A classifier (default: :func:`edge.runtime.models.boot.startup_classifier`).
        notifier: systemd notifier (default: from the environment; a no-op outside systemd).

    Raises:
        BundleError, RuntimeMissing, DetectorError: the model, runtime or detector cannot be set up.
    """

    def __init__(
        self,
        config: Config,
        sink: Sink | None = None,
        *,
        source: ManagedSource | None = None,
        detector: FaceDetector | None = None,
        classifier: Classifier | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.sink: Sink | None = None
        from edge.runtime.models.boot import configured_classifier, startup_classifier

        if classifier is None:
            # The configured model, else a pushed one (rolled back if it no longer loads), else the shipped one.
            classifier = startup_classifier(config)
        c = config.classifier
        self.models = ActiveModel(classifier, lambda b: configured_classifier(b, c),
                                  (config.state_dir() / "models").resolve(), self._rolled_back)
        d = config.detector
        detector = detector or make_detector(d.backend, d.min_confidence, d.min_face_size, d.max_faces, d.threads)
        # Detect on one frame in d.every_n_frames and carry the faces in between (edge.runtime.detect.carry).
        self.detector = CarryingDetector(detector, d.every_n_frames, d.min_match) if d.every_n_frames > 1 else detector
        s = config.source
        self.source = source or ManagedSource(
            lambda: open_source(s.uri, s), s.uri, s.max_fps, s.loop, s.retry_initial_s, s.retry_max_s
        )
        self.notifier = notifier or Notifier()
        # Held by the frame loop around each iteration, so a pause from another thread never closes the source
        # in the middle of a read.
        self._loop_lock = threading.RLock()
        self.pause = PauseFile(config.state_dir())
        if self.pause.paused:
            self.source.pause()  # before anyone (the CLI's open_now) can open the camera
        self._plain = PlainState(self._publish_state)
        self.commands = DeviceCommands(self.models, self.swap_model, self.publish_status,
                                       lambda body: self._publish("events", body), self.set_paused)
        self._tracker = self._new_tracker(classifier)
        self._tracker_model = classifier
        #: Per-track emotion changes (events) and the per-label figures /metrics serves.
        self.emotions = EmotionWatch(classifier.labels)
        self._extensions: list[Any] = []
        self._stop = threading.Event()
        self._status_due = threading.Event()
        self.state = "starting"
        self.frames = 0
        self.latency_ms: dict[str, float | None] = dict.fromkeys(STAGES)
        #: The latest frame's per-stage milliseconds (benchmarks read these; status uses the averages).
        self.last_ms: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.fps = 0.0
        self._frame_dt: float | None = None
        self._last_frame_t: float | None = None
        self._started = time.monotonic()
        self._last_status = float("-inf")
        self._last_faces = float("-inf")
        self._window = SummaryWindow(time.time(), time.monotonic())
        preview = config.privacy.debug_preview_dir
        self._preview = PreviewWriter(preview) if preview is not None else None
        if sink is not None:
            self.attach_sink(sink)

    # ------------------------------------------------------------------------------------------------ public

    @property
    def classifier(self) -> Classifier:
        """The classifier in use right now."""
        return self.models.classifier

    @property
    def model_id(self) -> str:
        """The id of the model in use right now."""
        return self.models.classifier.model_id

    @property
    def current_bundle_dir(self) -> Path:
        """The bundle folder of the model in use right now."""
        return Path(self.models.classifier.bundle_dir)

    def attach_sink(self, sink: Sink) -> None:
        """Publish through ``sink`` from now on (its owner routes commands to :meth:`handle_command`)."""
        self.sink = sink

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
        self.models.swap(bundle_dir)
        self.publish_status()

    def handle_command(self, cmd: dict) -> dict[str, Any]:
        """Execute a command dict (:mod:`edge.runtime.commands`), publish its ``command`` event, return its body."""
        return self.commands.handle(cmd)

    @property
    def face_count(self) -> int:
        """Faces tracked right now (tracks that have not ended)."""
        return len(self._tracker.tracks)

    def set_paused(self, paused: bool) -> tuple[bool, str]:
        """The privacy pause (any thread): pausing waits for the frame in progress, ends the tracks and the
        summary window, closes the source (the camera is released) and persists the pause; only resuming
        (``paused`` False) opens it again. Returns ``(ok, detail)`` for the command's answer."""
        with self._loop_lock:
            if paused == self.pause.paused:
                return True, "already paused" if paused else "not paused"
            problem = self.pause.set(paused)
            if paused:
                self.source.pause()
                self._end_tracks(self._tracker.close_all(), self._tracker.labels)
                self._send_summary(time.monotonic())  # also says emotion none, 0 faces, presence OFF
                self._reset_fps()  # no frame is processed now: status and metrics must not show the old rate
                self.emotions.clear()
                self._set_state("paused")
            else:
                self.source.resume()
                self._set_state("running")
            self._plain.paused(paused)
        if paused:
            detail = "capture paused, camera released"
            if problem:
                return False, f"{detail}, but the pause would not survive a restart: {problem}"
            return True, detail
        return True, "capture resumed" + (f" (but {problem}: a restart comes back paused)" if problem else "")

    def status_body(self) -> dict[str, Any]:
        """The ``status`` body (see the MQTT contract) with the sink's figures: the one place one is made."""
        clf = self.models.classifier
        stats: SinkStats = self.sink.stats() if self.sink is not None else {"pending": 0, "dropped": 0}
        push = None
        for ext in self._extensions:
            if getattr(ext, "last_result", None) is not None:
                push = ext.last_result
        return {
            "state": self.state,
            "paused": self.pause.paused,
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
            **({"mqtt": stats["mqtt"]} if "mqtt" in stats else {}),  # the broker connection, last as always
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
        self._set_state("paused" if self.pause.paused else "running")
        self._plain.refresh(None, 0, self.pause.paused)
        self.notifier.ready(f"{'paused' if self.pause.paused else 'running'}, model {self.model_id}")
        try:
            while not self._stop.is_set():
                self.notifier.watchdog_while(self.sink is None or self.sink.alive())
                if not self._iterate(max_frames):
                    break
        finally:
            self._shutdown()
        return self.frames

    def _iterate(self, max_frames: int | None) -> bool:
        """One loop iteration; False ends the loop. While paused it only keeps status and summaries going."""
        with self._loop_lock:
            self._periodic()
            if max_frames is not None and self.frames >= max_frames:
                return False
            paused = self.pause.paused
            if not paused:
                frame = self.source.poll(max_wait=0.5)
                if frame is None:
                    if self.source.finished:
                        return False
                    self._set_state("degraded" if self.source.state == "retrying" else "running")
                else:
                    self._set_state("running")
                    self.process_frame(frame)
        if paused:
            self._stop.wait(0.5)  # outside the lock, so a resume does not wait for it
        return True

    # ---------------------------------------------------------------------------------------------- internals

    def _new_tracker(self, clf: Classifier, first_id: int = 1) -> Tracker:
        t = self.config.tracking
        return Tracker(clf.labels, t.iou_threshold, t.max_missed_frames, t.smoothing, t.uncertain_below, first_id)

    def _publish(self, kind: str, body: dict[str, Any]) -> None:
        if self.sink is None:
            log.error("cannot publish %s: no sink attached yet", kind)
            return
        try:
            self.sink.publish(kind, body)
        except Exception as exc:  # a closed or broken sink must not kill the frame loop
            log.error("cannot publish %s: %s", kind, exc)

    def _publish_state(self, leaf: str, value: str) -> None:
        if self.sink is not None:
            try:
                self.sink.publish_state(leaf, value)
            except Exception as exc:  # like _publish: a broken sink must not kill the frame loop
                log.error("cannot publish %s: %s", leaf, exc)

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
        if now - self._window.start_mono >= self.config.mqtt.summary_interval_s:
            self._send_summary(now)

    def _send_summary(self, now: float) -> None:
        end = time.time()
        body = self._window.body(self._tracker.labels, end, now)
        self._publish("summary", body)
        self._window = SummaryWindow(end, now)
        # While paused nobody is seen, whatever the window (closed by the pause) had.
        paused = self.pause.paused
        self._plain.refresh(None if paused else body["dominant_emotion"], self.face_count, paused)

    def _reset_fps(self) -> None:
        self.fps, self._frame_dt, self._last_frame_t = 0.0, None, None

    def _end_tracks(self, tracks: list[Track], labels: list[str]) -> None:
        for t in tracks:
            self.emotions.forget(t.track_id)
            self._publish("events", track_end_event(t, labels))

    def _ema(self, stage: str, seconds: float) -> None:
        ms = seconds * 1000.0
        self.last_ms[stage] = ms
        old = self.latency_ms[stage]
        self.latency_ms[stage] = ms if old is None else old + EMA_ALPHA * (ms - old)

    def _rolled_back(self, failed_dir: Path, failed_id: str, restored_dir: Path, reason: str) -> None:
        """A swapped-in model failed on a frame: let the model-push extension roll its store back too (so a
        restart does not load the bad model), and say so in status."""
        for ext in self._extensions:
            if hasattr(ext, "model_rolled_back"):
                ext.model_rolled_back(failed_dir, failed_id, restored_dir, reason)
        self.publish_status()

    def process_frame(self, frame: Frame) -> list[Track]:
        """Detect, classify, track and publish one frame; return the tracks observed in it."""
        p = time.perf_counter
        self._ema("capture", self.source.last_read_s)
        t0 = p()
        det_img = frame.detect_image if frame.detect_image is not None else frame.image
        dets = self.detector.detect(det_img, scale=frame.detect_scale)
        t1 = p()
        clf, probs = self.models.classify(frame.image, [d.box for d in dets], [d.eyes for d in dets])
        t2 = p()
        if clf is not self._tracker_model:
            # New labels or new calibration: old smoothed probabilities mean nothing to the new model, and the
            # summary window so far belongs to the old one (its labels may differ in number and order).
            self._end_tracks(self._tracker.close_all(), self._tracker.labels)
            self._send_summary(time.monotonic())
            # Ids keep counting up so a subscriber never sees one id for two different tracks.
            self._tracker, self._tracker_model = self._new_tracker(clf, self._tracker.next_id), clf
            self.emotions.set_labels(clf.labels)
        update = self._tracker.update([d.raw_box for d in dets], probs, frame.ts)
        self._window.add(update.observed)
        t3 = p()
        labels = self._tracker.labels
        for t in update.started:
            self._publish("events", track_start_event(t))
        self._end_tracks(update.ended, labels)
        for body in self.emotions.observe(update.observed, self._tracker.emotion):
            self._publish("events", body)
        self._plain.faces(self.face_count)
        now = time.monotonic()
        if update.observed and now - self._last_faces >= self.config.mqtt.faces_interval_s:
            self._last_faces = now
            self._publish("faces", faces_body(update.observed, labels, self._tracker.emotion, self.frames,
                                              frame.width, frame.height))
        t4 = p()
        for stage, dt in zip(STAGES[1:], (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            self._ema(stage, dt)
        if self._last_frame_t is not None:
            dt = now - self._last_frame_t
            self._frame_dt = dt if self._frame_dt is None else self._frame_dt + EMA_ALPHA * (dt - self._frame_dt)
            self.fps = 1.0 / self._frame_dt if self._frame_dt > 0 else 0.0
        self._last_frame_t = now
        self.frames += 1
        if self._preview is not None:
            self._preview.write(frame, update.observed, self._tracker.emotion)
        return update.observed

    def _shutdown(self) -> None:
        log.info("stopping after %d frames", self.frames)
        self.notifier.stopping()
        self._end_tracks(self._tracker.close_all(), self._tracker.labels)
        if self._window.frames:
            self._send_summary(time.monotonic())
        # Retained: a stopped device must not keep saying someone is there, or what they felt.
        self._plain.refresh(None, 0, self.pause.paused)
        self.emotions.clear()
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
        # The last status: a stopped device processes nothing (the caller closes the sink after this).
        self.state, self.fps = "offline", 0.0
        self._send_status()
