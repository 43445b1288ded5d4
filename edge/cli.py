"""``python -m edge`` / ``emotion-edge``: run the daemon, check a config, and the model and subscriber tools.

Expected failures (bad config, unusable model bundle, no TFLite runtime, a source that does not exist, no
face detector) print one line on stderr and exit with status 2 (1 for the model commands), without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for annotations only: each command imports its modules where it runs
    from edge.config import Config
    from edge.runtime.publish.base import BrokerSession

log = logging.getLogger("edge")

EXIT_USAGE = 2
#: Sources that may legitimately be absent at start (a camera not plugged in yet, a stream not up yet): these
#: are retried with backoff instead of failing the start.
DEVICE_SOURCES = ("picamera2",)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of all sub-commands."""
    from edge.protocol.broker import add_broker_flags

    parser = argparse.ArgumentParser(prog="python -m edge", description="Edge-device facial emotion monitor.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging (overrides device.log_level).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="Run the daemon: camera -> faces -> emotions -> MQTT (or stdout).",
                       description="Run the daemon. With no config: the demo source, the default model, MQTT to "
                       "localhost:1883 if a broker answers there, else JSON lines on stdout.")
    add_broker_flags(p)
    p.add_argument("--source", metavar="SRC", help="'demo', 'picamera2', a camera index, a video file/URL or an image folder.")
    p.add_argument("--model", type=Path, metavar="BUNDLE_DIR", help="Model bundle folder (overrides classifier.model).")
    p.add_argument("--device-id", metavar="ID", help="Device id (overrides device.id).")
    p.add_argument("--max-frames", type=int, metavar="N", help="Stop after N processed frames.")
    p.add_argument("--stdout", action="store_true", help="Print JSON lines on stdout instead of MQTT.")

    p = sub.add_parser("check-config", help="Validate a config file and print a summary.")
    p.add_argument("file", type=Path, help="Config file (TOML).")

    from edge.tools import modelctl

    modelctl.add_subcommands(sub)
    try:
        from edge.tools.subscribe import cli as subscribe_cli
    except ImportError as exc:  # the subscriber tools need extra packages (e.g. matplotlib for plot)
        log.debug("subscriber commands unavailable: %s", exc)
    else:
        subscribe_cli.register(sub)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line flags as a nested config dict (only the flags given)."""
    from edge.protocol.broker import config_overrides

    o: dict[str, dict[str, Any]] = {}
    if getattr(args, "source", None):
        o.setdefault("source", {})["uri"] = args.source
    if getattr(args, "model", None):
        o.setdefault("classifier", {})["model"] = str(args.model)
    if getattr(args, "device_id", None):
        o.setdefault("device", {})["id"] = args.device_id
    mqtt = config_overrides(args)
    if getattr(args, "stdout", False):
        mqtt["enabled"] = False
    if mqtt:
        o["mqtt"] = mqtt
    return o


def load_run_config(args: argparse.Namespace) -> Config:
    """The config file (or defaults) with the command-line flags applied; raises ConfigError."""
    from edge.config import load_config, parse_config

    cfg = load_config(args.config)
    overrides = _overrides(args)
    if not overrides:
        return cfg
    data = cfg.model_dump(exclude_unset=True, mode="json")
    for section, values in overrides.items():
        merged = data.setdefault(section, {})
        for key, value in values.items():
            merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_config(data, args.config)


def _setup_logging(level: str, verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _attach_extensions(daemon: Any, session: BrokerSession | None, cfg: Any) -> None:
    """Register Home Assistant discovery and model push when enabled and there is a broker (``session``)."""
    if session is None:
        return
    from edge.runtime import homeassistant

    homeassistant.attach(daemon, session, cfg)
    if cfg.model_push.enabled:
        from edge.runtime.models.push import ModelPushReceiver

        daemon.add_extension(ModelPushReceiver(cfg, session, daemon))


def cmd_run(args: argparse.Namespace) -> int:
    """``run``: build everything, run until a signal or ``--max-frames``, close the sink (flush + offline)."""
    from edge.config import ConfigError
    from edge.runtime.preflight import check_state_dir

    cfg = load_run_config(args)
    _setup_logging(cfg.device.log_level, args.verbose)
    problem = check_state_dir(cfg)  # said once here, instead of a failed write on every frame
    if problem:
        raise ConfigError(problem)
    log.info("state folder %s (outbox, seq counter, pause, pushed models)", cfg.state_dir_path())
    from edge.runtime.capture.base import SourceError, SourceFatal
    from edge.runtime.daemon import Daemon
    from edge.runtime.publish import open_publisher
    from edge.runtime.publish.base import SinkError

    daemon = Daemon(cfg)  # load model, detector before touching the network
    from edge.runtime import metrics

    try:
        metrics.attach(daemon, cfg)  # before the camera opens: a missing package fails the start cleanly
    except metrics.MetricsUnavailable as exc:
        daemon.close()
        raise ConfigError(str(exc)) from None
    uri = cfg.source.uri
    try:
        daemon.source.open_now()
    except SourceFatal:
        daemon.close()
        raise
    except SourceError as exc:
        if uri not in DEVICE_SOURCES and not uri.isdigit() and "://" not in uri:
            daemon.close()
            raise
        # A camera or stream may come up later: retry with backoff, visible in status.
        log.warning("source %s not available yet (%s); retrying with backoff", uri, exc)
        daemon.source.schedule_retry(str(exc))

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        daemon.stop()

    # Before the broker hears of this run: a stop asked as soon as it says "online" is a clean stop.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        sink, session = open_publisher(cfg)
    except SinkError as exc:
        daemon.close()
        raise ConfigError(str(exc)) from None
    except BaseException:
        daemon.close()
        raise
    daemon.attach_sink(sink)
    commands = None
    if session is not None:  # imported here: paho is for MQTT runs only
        from edge.runtime.publish.command_channel import CommandChannel

        commands = CommandChannel(session, cfg, daemon.handle_command)
    _attach_extensions(daemon, session, cfg)
    try:
        frames = daemon.run(max_frames=args.max_frames)
    finally:
        if commands is not None:  # before the sink: no answer is sent on a closed sink
            commands.close()
        sink.close()
    log.info("processed %d frames", frames)
    if daemon.source.state == "failed":  # e.g. the camera stack went away: systemd should show the unit failed
        print(f"error: source {uri}: {daemon.source.error}", file=sys.stderr)
        return 1
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """``check-config FILE``: validate the file, then check what ``run`` will need (source, model with a smoke
    inference, detector, state folder, TLS files, trusted keys) without starting the pipeline. Prints OK and a
    summary (exit 0), or every problem, one line each (exit 2)."""
    from edge.config import ConfigError, load_config
    from edge.runtime import preflight

    cfg = load_config(args.file)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    report = preflight.check(cfg)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if report.errors:
        raise ConfigError("\n".join(f"{args.file}: {e}" for e in report.errors))
    m = cfg.mqtt
    broker = f"{m.host}:{m.port}" if m.host else f"localhost:{m.port} if it answers, else stdout"
    checked = dict(report.ok)
    print(f"OK {args.file}")
    print(f"  device:     {cfg.device.id}; state {checked.get('state dir', '?')}")
    print(f"  source:     {cfg.source.uri} (max {cfg.source.max_fps:g} fps)")
    print(f"  detector:   {checked.get('detector', cfg.detector.backend)}")
    print(f"  model:      {checked.get('model', '?')}")
    print(f"  mqtt:       {'off (stdout)' if not m.enabled else broker}{' TLS' if m.tls.enabled else ''}"
          f"{' user ' + m.username if m.username else ''}, prefix '{m.topic_prefix}'")
    print(f"  model push: {'on' if cfg.model_push.enabled else 'off'}; HA discovery: "
          f"{'on' if cfg.homeassistant.enabled else 'off'}")
    print(f"  preview:    {cfg.privacy.debug_preview_dir or 'off'}")
    print(f"  metrics:    {f'http://{cfg.metrics.host}:{cfg.metrics.port}/metrics' if cfg.metrics.enabled else 'off'}")
    return 0


def _expected_errors() -> tuple[type[BaseException], ...]:
    from edge.bundle import BundleError
    from edge.config import ConfigError
    from edge.protocol.broker import BrokerError
    from edge.runtime.capture.base import SourceError
    from edge.runtime.classify.interpreter import RuntimeMissing
    from edge.runtime.detect.base import DetectorError

    return (ConfigError, BundleError, RuntimeMissing, DetectorError, SourceError, BrokerError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m edge`` and ``emotion-edge``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "check-config":
            return cmd_check_config(args)
        # The tools print their results; their log shows warnings only, unless -v asks for progress.
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        from edge.tools import modelctl

        if args.command in modelctl.COMMANDS:
            return modelctl.run_command(args)
        if hasattr(args, "func"):
            return args.func(args)
        parser.error(f"unknown command {args.command}")
    except ModuleNotFoundError as exc:  # first: the next clause imports modules that may need the missing one
        from edge.version import install_hint

        print(f"error: the Python module {exc.name or exc} is missing from this interpreter ({sys.executable}); "
              f"install the device's dependencies {install_hint('edge')}, or run deploy/install.sh", file=sys.stderr)
        return EXIT_USAGE
    except _expected_errors() as exc:
        for line in str(exc).splitlines() or [""]:  # a config with several problems lists each on its own line
            print(f"error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return 0
