"""The frame loop: source -> detection -> classification -> tracking -> payloads through a Sink.

The daemon receives its parts ready-made (:func:`edge.runtime.assemble.assemble` builds them from the config and
closes them) and only runs the loop. One thread runs :meth:`Daemon.run`. Other threads (MQTT command worker,
model push worker, signal handlers) only call :meth:`Daemon.stop`, :meth:`Daemon.handle_command`,
:meth:`Daemon.set_paused` and :meth:`Daemon.publish_status`, which are safe to call from any thread: a model
swap replaces the classifier reference between frames (:mod:`edge.runtime.models.manager`), and a pause waits
for the frame in progress, then closes the source (:mod:`edge.runtime.pause`). The payload bodies are built by
:mod:`edge.runtime.report`; no image or face crop is ever handed to the sink, only numbers and labels.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from edge.config import Config
from edge.runtime.capture.base import Frame
from edge.runtime.capture.managed import ManagedSource
from edge.runtime.commands import DeviceCommands
from edge.runtime.detect.base import FaceDetector
from edge.runtime.emotions import EmotionWatch
from edge.runtime.extension import Extension
from edge.runtime.loopstats import STAGES, LoopStats
from edge.runtime.models.manager import ModelManager
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
from edge.runtime.state import DaemonState
from edge.runtime.state_topics import PlainState
from edge.runtime.track import Track, Tracker
from edge.version import package_version

log = logging.getLogger(__name__)


class Daemon:
    """The on-device runtime's frame loop.

    Args:
        config: Validated configuration (intervals, tracking, preview).
        sink: Where payloads go (``publish(kind, body) -> seq``); its owner closes it after :meth:`run`.
        source: The frame source (a paused device has it paused already).
        detector: The face detector (frame skipping included).
        models: The model manager (the classifier in use, swaps and rollbacks).
        pause: The privacy pause's persisted state.
        notifier: systemd notifier (default: from the environment; a no-op outside systemd).
        preview: The local debug preview's writer (``privacy.debug_preview_dir``), or None.
    """

    def __init__(
        self,
        config: Config,
        sink: Sink,
        *,
        source: ManagedSource,
        detector: FaceDetector,
        models: ModelManager,
        pause: PauseFile,
        notifier: Notifier | None = None,
        preview: PreviewWriter | None = None,
    ) -> None:
        self.config = config
        self.sink = sink
        self.models = models
        self.detector = detector
        self.source = source
        self.pause = pause
        self.notifier = notifier or Notifier()
        # Held by the frame loop around each iteration, so a pause from another thread never closes the source
        # in the middle of a read.
        self._loop_lock = threading.RLock()
        self._plain = PlainState(self._publish_state)
        self.commands = DeviceCommands(models, self)
        classifier = models.classifier
        self._tracker = Tracker.from_config(classifier.labels, config.tracking)
        self._tracker_model = classifier
        #: Per-track emotion changes (events) and the per-label figures /metrics serves.
        self.emotions = EmotionWatch(classifier.labels)
        self._extensions: list[Extension] = []
        self._started_extensions: list[Extension] = []
        self._stop = threading.Event()
        self._status_due = threading.Event()
        self.state = DaemonState.STARTING
        #: Frames, fps and per-stage latency.
        self.stats = LoopStats()
        self._started = time.monotonic()
        self._last_status = float("-inf")
        self._last_faces = float("-inf")
        self._window = SummaryWindow(time.time(), time.monotonic())
        self._preview = preview

    # ------------------------------------------------------------------------------------------------ public

    @property
    def model_id(self) -> str:
        """The id of the model in use right now."""
        return self.models.model_id

    @property
    def extensions(self) -> tuple[Extension, ...]:
        """The registered extensions, in start order."""
        return tuple(self._extensions)

    def add_extension(self, ext: Extension) -> None:
        """Register a feature (Home Assistant discovery, model push, metrics) started with :meth:`run` and
        stopped, in reverse order, when it ends."""
        self._extensions.append(ext)

    def stop(self) -> None:
        """Ask :meth:`run` to finish after the current frame (safe from signal handlers and other threads)."""
        self._stop.set()
        self.source.stop()

    def publish_status(self) -> None:
        """Ask for a status message at the next loop iteration (any thread)."""
        self._status_due.set()

    def handle_command(self, cmd: dict) -> dict[str, Any]:
        """Execute a command dict (:mod:`edge.runtime.commands`), publish its ``command`` event, return its body."""
        event = self.commands.handle(cmd)
        self._publish("events", event)
        return event

    @property
    def face_count(self) -> int:
        """Faces tracked right now (tracks that have not ended)."""
        return len(self._tracker.tracks)

    def set_paused(self, paused: bool) -> tuple[bool, str]:
        """The privacy pause (any thread): pausing waits for the frame in progress, ends the tracks and the
        summary window, closes the source (the camera is released) and persists the pause; only resuming
        (``paused`` False) opens it again. Returns ``(ok, detail)`` for the command's answer."""
        with self._loop_lock:
            if self.state in (DaemonState.STOPPING, DaemonState.OFFLINE):
                # A command the worker still ran after the loop ended: the last status must stay "offline".
                return False, "the device is stopping"
            if paused == self.pause.paused:
                return True, "already paused" if paused else "not paused"
            problem = self.pause.set(paused)
            if paused:
                self.source.pause()
                self._end_tracks(self._tracker.close_all(), self._tracker.labels)
                self._send_summary(time.monotonic())  # also says emotion none, 0 faces, presence OFF
                self.stats.reset_fps()  # no frame is processed now: status and metrics must not show the old rate
                self.emotions.clear()
                self._set_state(DaemonState.PAUSED)
            else:
                self.source.resume()
                self._set_state(DaemonState.RUNNING)
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
        stats: SinkStats = self.sink.stats()
        return {
            "state": self.state.value,
            "paused": self.pause.paused,
            "model_id": clf.model_id,
            "model": {"id": clf.model_id, "runtime": clf.runtime, "labels": clf.labels},
            "detector": self.detector.name,
            "source": self.source.status(),
            "fps": round(self.stats.fps, 2),
            "frames": self.stats.frames,
            "dropped_frames": self.source.dropped,
            "latency_ms": self.stats.latency_body(),
            "outbox": {"pending": int(stats.get("pending", 0)), "dropped": int(stats.get("dropped", 0))},
            "cpu_temp_c": read_cpu_temp(),
            "uptime_s": round(time.monotonic() - self._started, 1),
            "version": package_version(),
            "model_push": self.models.last_report,
            **({"mqtt": stats["mqtt"]} if "mqtt" in stats else {}),  # the broker connection, last as always
        }

    def run(self, max_frames: int | None = None) -> int:
        """Process frames until :meth:`stop`, the source ends (``source.loop = false``) or ``max_frames``.

        Returns the number of frames processed. Releases the source and the detector at the end; does not close
        the sink (its owner does, after this returns).
        """
        try:
            for ext in self._extensions:
                ext.start()
                self._started_extensions.append(ext)
            paused = self.pause.paused
            self._set_state(DaemonState.PAUSED if paused else DaemonState.RUNNING)
            self._plain.refresh(None, 0, paused)
            self.notifier.ready(f"{'paused' if paused else 'running'}, model {self.model_id}")
            while not self._stop.is_set():
                self.notifier.watchdog_while(self.sink.alive())
                if not self._iterate(max_frames):
                    break
        finally:
            self._shutdown()
        return self.stats.frames

    def _iterate(self, max_frames: int | None) -> bool:
        """One loop iteration; False ends the loop. While paused it only keeps status and summaries going."""
        with self._loop_lock:
            self._periodic()
            if max_frames is not None and self.stats.frames >= max_frames:
                return False
            paused = self.pause.paused
            if not paused:
                frame = self.source.poll(max_wait=0.5)
                if frame is None:
                    if self.source.finished:
                        return False
                    retrying = self.source.state == "retrying"
                    self._set_state(DaemonState.DEGRADED if retrying else DaemonState.RUNNING)
                else:
                    self._set_state(DaemonState.RUNNING)
                    self.process_frame(frame)
        if paused:
            self._stop.wait(0.5)  # outside the lock, so a resume does not wait for it
        return True

    # ---------------------------------------------------------------------------------------------- internals

    def _publish(self, kind: str, body: dict[str, Any]) -> None:
        try:
            self.sink.publish(kind, body)
        except Exception as exc:  # a closed or broken sink must not kill the frame loop
            log.error("cannot publish %s: %s", kind, exc)

    def _publish_state(self, leaf: str, value: str) -> None:
        try:
            self.sink.publish_state(leaf, value)
        except Exception as exc:  # like _publish: a broken sink must not kill the frame loop
            log.error("cannot publish %s: %s", leaf, exc)

    def _set_state(self, state: DaemonState) -> None:
        if state != self.state:
            log.info("state %s -> %s", self.state.value, state.value)
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

    def _end_tracks(self, tracks: list[Track], labels: list[str]) -> None:
        for t in tracks:
            self.emotions.forget(t.track_id)
            self._publish("events", track_end_event(t, labels))

    def process_frame(self, frame: Frame) -> list[Track]:
        """Detect, classify, track and publish one frame; return the tracks observed in it."""
        p = time.perf_counter
        self.stats.stage("capture", self.source.last_read_s)
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
            self._tracker = Tracker.from_config(clf.labels, self.config.tracking, self._tracker.next_id)
            self._tracker_model = clf
            self.emotions.set_labels(clf.labels)
            self.publish_status()  # a swap or a rollback: status names the model in use
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
            self._publish("faces", faces_body(update.observed, labels, self._tracker.emotion, self.stats.frames,
                                              frame.width, frame.height))
        t4 = p()
        for stage, dt in zip(STAGES[1:], (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            self.stats.stage(stage, dt)
        self.stats.frame_done(now)
        if self._preview is not None:
            self._preview.write(frame, update.observed, self._tracker.emotion)
        return update.observed

    def _shutdown(self) -> None:
        log.info("stopping after %d frames", self.stats.frames)
        self.notifier.stopping()
        with self._loop_lock:  # a pause from the command worker waits, then sees "stopping" and refuses
            self._end_tracks(self._tracker.close_all(), self._tracker.labels)
            if self._window.frames:
                self._send_summary(time.monotonic())
            # Retained: a stopped device must not keep saying someone is there, or what they felt.
            self._plain.refresh(None, 0, self.pause.paused)
            self.emotions.clear()
            self.state = DaemonState.STOPPING
            self._send_status()
        # Extensions (the command topics among them) stop before the last status, so nothing they still run
        # can publish after it; only those that started.
        for ext in reversed(self._started_extensions):
            try:
                ext.stop()
            except Exception:
                log.exception("stopping extension %r failed", ext)
        self.source.close()
        with contextlib.suppress(Exception):
            self.detector.close()
        # The last status: a stopped device processes nothing (the caller closes the sink after this).
        self.state = DaemonState.OFFLINE
        self.stats.reset_fps()
        self._send_status()
