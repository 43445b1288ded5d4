"""The one place that builds the daemon from a validated config, and closes what it built.

:func:`assemble` builds, in this order, each part registered for cleanup on an :class:`contextlib.ExitStack`
the moment it exists, so a failure at any step closes what was built before it:

1. the model (:class:`edge.runtime.models.manager.ModelManager`: configured, pushed or shipped) and the face
   detector: a broken model or a missing runtime fails before anything touches the camera or the network;
2. the frame source (not opened yet) and the privacy pause (a paused device never opens its camera);
3. the debug preview and the metrics endpoint's package check: a missing package fails the start before the
   camera opens;
4. the source is opened (a camera or stream that is not there yet is retried with backoff, see
   :meth:`edge.runtime.capture.managed.ManagedSource.start`);
5. the sink and its broker session (:func:`edge.runtime.publish.open_publisher`: the network), the daemon, and
   the guarded command topics on the session (:class:`edge.runtime.publish.command_channel.CommandChannel`, an
   extension: the run subscribes them when it starts and stops them before its last status);
6. the extensions the config asks for (metrics; with a broker, Home Assistant discovery and model push),
   started by :meth:`edge.runtime.daemon.Daemon.run`.

Leaving the ``with`` block closes the sink (flush, availability offline; the daemon's run ends with its offline
status, after stopping the extensions it started), then the source and the detector.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from edge.config import Config, ConfigError
from edge.runtime.capture.managed import ManagedSource
from edge.runtime.daemon import Daemon
from edge.runtime.detect import make_detector
from edge.runtime.detect.base import FaceDetector
from edge.runtime.detect.carry import CarryingDetector
from edge.runtime.models.manager import ModelManager
from edge.runtime.pause import PauseFile
from edge.runtime.publish.base import BrokerSession, Sink, SinkError
from edge.runtime.sdnotify import Notifier

log = logging.getLogger(__name__)


def build_detector(config: Config) -> FaceDetector:
    """The ``[detector]`` section's detector, detecting on one frame in ``every_n_frames`` and carrying the
    faces in between (:mod:`edge.runtime.detect.carry`) when that is above 1.

    Raises:
        DetectorError: the backend cannot be created.
    """
    d = config.detector
    detector = make_detector(d)
    return CarryingDetector(detector, d.every_n_frames, d.min_match) if d.every_n_frames > 1 else detector


@contextlib.contextmanager
def assemble(config: Config, *, sink: Sink | None = None, session: BrokerSession | None = None,
             source: ManagedSource | None = None, notifier: Notifier | None = None) -> Iterator[Daemon]:
    """The daemon of ``config``, ready to :meth:`~edge.runtime.daemon.Daemon.run`; what was built is closed on
    leaving the block (also when a step fails).

    Args:
        config: Validated configuration.
        sink: A sink to publish through instead of :func:`edge.runtime.publish.open_publisher`'s (tests,
            benchmarks); its caller closes it.
        session: The broker session behind ``sink`` (``MqttSink.session``) when one is given: commands, Home
            Assistant discovery and model push need it; ignored without ``sink``.
        source: A frame source instead of the ``[source]`` section's; its caller closes it.
        notifier: systemd notifier (default: from the environment).

    Raises:
        ConfigError: the sink cannot be set up, or metrics are enabled without their package.
        BundleError, RuntimeMissing, DetectorError, SourceError: the model, runtime, detector or source cannot
            be set up.
    """
    with contextlib.ExitStack() as stack:
        state_dir = config.state_dir()
        models = ModelManager(config.classifier, state_dir)  # the model and the detector before the network
        detector = build_detector(config)
        stack.callback(detector.close)
        if source is None:
            source = ManagedSource.from_config(config.source)
            stack.callback(source.close)
        pause = PauseFile(state_dir)
        if pause.paused:
            source.pause()  # before anything can open the camera
        preview = None
        if config.privacy.debug_preview_dir is not None:  # it needs OpenCV: refused before the camera opens
            from edge.runtime.preview import PreviewWriter

            preview = PreviewWriter(config.privacy.debug_preview_dir)
        if config.metrics.enabled:
            from edge.runtime import metrics

            try:
                metrics.require()  # before the camera opens: a missing package fails the start cleanly
            except metrics.MetricsUnavailable as exc:
                raise ConfigError(str(exc)) from None
        source.start()
        if sink is None:
            sink, session = _open_publisher(config)
            stack.callback(sink.close)
        daemon = Daemon(config, sink, source=source, detector=detector, models=models, pause=pause,
                        notifier=notifier, preview=preview)
        if session is not None:  # imported here: paho is for MQTT runs only
            from edge.runtime.publish.command_channel import CommandChannel

            # An extension, so the run starts it (subscribes) and stops it before its last status: nothing it still
            # runs comes after that.
            daemon.add_extension(CommandChannel(session, config, daemon.handle_command))
        elif config.homeassistant.enabled or config.model_push.enabled:
            log.info("no MQTT broker behind this sink: no commands, Home Assistant discovery or model push")
        _add_extensions(daemon, session, models, config)
        yield daemon


def _open_publisher(config: Config) -> tuple[Sink, BrokerSession | None]:
    from edge.runtime.publish import open_publisher

    try:
        return open_publisher(config)
    except SinkError as exc:
        raise ConfigError(str(exc)) from None


def _add_extensions(daemon: Daemon, session: BrokerSession | None, models: ModelManager, config: Config) -> None:
    """Metrics when enabled; Home Assistant discovery and model push when enabled and there is a broker."""
    if config.metrics.enabled:
        from edge.runtime.metrics import MetricsServer

        daemon.add_extension(MetricsServer(config, daemon))
    if session is None:
        return
    from edge.runtime.homeassistant import discovery

    ha = discovery(config, session, lambda: (models.model_id, list(models.classifier.labels)))
    if ha is not None:
        daemon.add_extension(ha)
    if config.model_push.enabled:
        from edge.runtime.models.push import ModelPushReceiver

        daemon.add_extension(ModelPushReceiver(config, session, models, daemon.publish_status))
