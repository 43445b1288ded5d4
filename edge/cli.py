"""``emotion-edge`` (``python -m edge`` in a checkout without an install): run the daemon, check a config, and
the model and subscriber tools.

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
    from edge.runtime.daemon import Daemon

log = logging.getLogger("edge")

EXIT_USAGE = 2
#: The commands that set up logging themselves (from the config, or for the check's findings).
DAEMON_COMMANDS = ("run", "check-config")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of all sub-commands; each sets ``func``, the function that runs it."""
    from edge.cli_common import top_parser
    from edge.protocol.broker import add_broker_flags

    parser, common = top_parser("emotion-edge", "Edge-device facial emotion monitor.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", parents=[common], help="Run the daemon: camera -> faces -> emotions -> MQTT (or stdout).",
                       description="Run the daemon. With no config: the demo source, the default model, MQTT to "
                       "localhost:1883 if a broker answers there, else JSON lines on stdout. -v and -q override "
                       "device.log_level.")
    add_broker_flags(p)
    p.add_argument("--source", metavar="SRC", help="'demo', 'picamera2', a camera index, a video file/URL or an image folder.")
    p.add_argument("--model", type=Path, metavar="BUNDLE_DIR", help="Model bundle folder (overrides classifier.model).")
    p.add_argument("--device-id", metavar="ID", help="Device id (overrides device.id).")
    p.add_argument("--state-dir", type=Path, metavar="DIR", help="State folder: outbox, seq counter, pause, pushed "
                   "models (overrides device.state_dir).")
    p.add_argument("--max-frames", type=int, metavar="N", help="Stop after N processed frames.")
    p.add_argument("--stdout", action="store_true", help="Print JSON lines on stdout instead of MQTT.")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", parents=[common], help="Validate a config file and print a summary.")
    p.add_argument("file", type=Path, help="Config file (TOML).")
    p.set_defaults(func=cmd_check_config)

    from edge.tools import modelctl

    modelctl.add_subcommands(sub, [common])
    try:
        from edge.tools.subscribe import cli as subscribe_cli
    except ImportError as exc:  # the subscriber tools need extra packages (e.g. matplotlib for plot)
        log.debug("subscriber commands unavailable: %s", exc)
    else:
        subscribe_cli.register(sub, [common])
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``run``'s command-line flags as a nested config dict (only the flags given)."""
    from edge.protocol.broker import config_overrides

    o: dict[str, dict[str, Any]] = {}
    if args.source:
        o.setdefault("source", {})["uri"] = args.source
    if args.model:
        o.setdefault("classifier", {})["model"] = str(args.model)
    if args.device_id:
        o.setdefault("device", {})["id"] = args.device_id
    if args.state_dir:
        o.setdefault("device", {})["state_dir"] = str(args.state_dir)
    if args.verbose or args.quiet:
        o.setdefault("device", {})["log_level"] = "DEBUG" if args.verbose else "ERROR"
    mqtt = config_overrides(args)
    if args.stdout:
        mqtt["enabled"] = False
    if mqtt:
        o["mqtt"] = mqtt
    return o


def load_run_config(args: argparse.Namespace) -> Config:
    """The config file (or defaults) with the command-line flags applied; raises ConfigError."""
    from edge.config import load_config, parse_config
    from edge.schema import dump

    cfg = load_config(args.config)
    overrides = _overrides(args)
    if not overrides:
        return cfg
    data = dump(cfg)
    for section, values in overrides.items():
        merged = data.setdefault(section, {})
        for key, value in values.items():
            merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_config(data, args.config)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,  # basicConfig takes the level's name (config: DEBUG..ERROR; -v and -q are folded in already)
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


class _StopOnSignal:
    """SIGTERM and SIGINT stop the daemon after the current frame; one that comes while the daemon is still being
    assembled stops it as soon as it exists (a second one interrupts the start)."""

    def __init__(self) -> None:
        self._daemon: Daemon | None = None
        self._asked = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def attach(self, daemon: Daemon) -> None:
        """Route signals to ``daemon`` from now on (and stop it at once if one came already)."""
        self._daemon = daemon
        if self._asked:
            daemon.stop()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        if self._daemon is None and self._asked:
            raise KeyboardInterrupt
        self._asked = True
        if self._daemon is not None:
            self._daemon.stop()


def cmd_run(args: argparse.Namespace) -> int:
    """``run``: build everything (:func:`edge.runtime.assemble.assemble`), run until a signal or ``--max-frames``,
    then close it all (the sink flushes and says offline)."""
    from edge.config import ConfigError
    from edge.runtime.preflight import check_state_dir

    cfg = load_run_config(args)
    _setup_logging(cfg.device.log_level)
    problem = check_state_dir(cfg)  # said once here, instead of a failed write on every frame
    if problem:
        raise ConfigError(problem)
    log.info("state folder %s (outbox, seq counter, pause, pushed models)", cfg.state_dir_path())
    from edge.runtime.assemble import assemble

    stop = _StopOnSignal()  # before the broker hears of this run: a stop as soon as it says "online" is clean
    with assemble(cfg) as daemon:
        stop.attach(daemon)
        frames = daemon.run(max_frames=args.max_frames)
    log.info("processed %d frames", frames)
    if daemon.source.state == "failed":  # e.g. the camera stack went away: systemd should show the unit failed
        print(f"error: source {cfg.source.uri}: {daemon.source.error}", file=sys.stderr)
        return 1
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """``check-config FILE``: validate the file, then check what ``run`` will need (source, model with a smoke
    inference, detector, state folder, TLS files, trusted keys) without starting the pipeline. Prints OK and a
    summary (exit 0), or every problem, one line each (exit 2)."""
    from edge.cli_common import log_level
    from edge.config import ConfigError, load_config
    from edge.runtime import preflight

    cfg = load_config(args.file)
    logging.basicConfig(level=log_level(args, logging.WARNING), format="%(levelname)s %(name)s: %(message)s")
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
    """Entry point of ``emotion-edge`` and ``python -m edge``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command not in DAEMON_COMMANDS:
            # The tools print their results; their log shows warnings only, unless -v asks for progress.
            from edge.cli_common import log_level

            logging.basicConfig(level=log_level(args, logging.WARNING, verbose=logging.INFO),
                                format="%(levelname)s %(name)s: %(message)s")
        return int(args.func(args))
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
