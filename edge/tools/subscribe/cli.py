"""Command-line entry points ``watch``, ``record``, ``plot`` (and ``ha-remove``), added to ``python -m edge``
by :func:`register`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from edge.config import ConfigError
from edge.protocol.broker import BrokerError, add_broker_flags, settings_from_args

log = logging.getLogger(__name__)


def _time_arg(text: str) -> float:
    """UNIX seconds or an ISO 8601 date/time (local time unless it has an offset)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).astimezone().timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither UNIX seconds nor an ISO date/time like 2026-11-23T14:00") from None


def _db_arg(text: str) -> Path | str:
    """A SQLite file, or a ``postgresql://`` URL kept as text (a Path would fold its ``//``)."""
    from edge.tools.subscribe.store import is_database_url

    return text if is_database_url(text) else Path(text)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``watch``, ``record``, ``plot`` and ``ha-remove`` sub-commands."""
    p = subparsers.add_parser("watch", help="Live terminal view of one or many devices.",
                              description="Live view of the emotion feeds: per device online/offline, faces, "
                              "tracks with their emotion and confidence, per-emotion bars, fps.")
    add_broker_flags(p)
    p.add_argument("--device", action="append", help="Device id to show (repeatable); default: all ('+').")
    p.add_argument("--duration", type=float, help="Stop after this many seconds (default: until Ctrl-C).")
    p.add_argument("--once", action="store_true", help="Collect for --duration seconds (default 3) and print one snapshot.")
    p.add_argument("--refresh", type=float, default=0.5, help="Seconds between redraws (default 0.5).")
    p.set_defaults(func=_guarded(cmd_watch))

    p = subparsers.add_parser("record", help="Record the feeds to SQLite or PostgreSQL (export to CSV/Parquet).",
                              description="Record every status/faces/summary/events message once per (device, seq, ts) "
                              "into a SQLite file or a PostgreSQL database, with a persistent MQTT session so nothing "
                              "sent while the recorder is briefly down is lost. Re-run with the same --db to resume. "
                              "With --export, write a table of an existing recording to CSV or Parquet and exit.")
    add_broker_flags(p)
    p.add_argument("--db", type=_db_arg, default=Path("emotion-recording.sqlite"),
                   help="Recording: a SQLite file (default %(default)s) or postgresql://user@host:port/dbname "
                   "(password from $PGPASSWORD or ~/.pgpass; needs pip install 'emotion-edge[postgres]').")
    p.add_argument("--device", action="append", help="Device id to record (repeatable); default: all ('+').")
    p.add_argument("--client-id", help="MQTT client id of the persistent session (default: stored in the recording; "
                   "with --share, one per host and group: give each member on one host its own).")
    p.add_argument("--share", metavar="GROUP", help="Split the feed with the other recorders of GROUP (MQTT 5 shared "
                   "subscription $share/GROUP/...): the broker gives each message to one member; all write to one "
                   "PostgreSQL --db.")
    p.add_argument("--session-expiry", type=int, default=7 * 24 * 3600,
                   help="Seconds the broker keeps queueing for the recorder while it is away (default 7 days).")
    p.add_argument("--duration", type=float, help="Stop after this many seconds (default: until Ctrl-C).")
    p.add_argument("--export", type=Path, metavar="FILE", help="Export to FILE (.csv or .parquet) instead of recording.")
    p.add_argument("--table", choices=("messages", "faces", "summary"), default="messages",
                   help="What --export writes: every message with its JSON, one row per face, or one per summary.")
    p.set_defaults(func=_guarded(cmd_record))

    p = subparsers.add_parser("plot", help="PNG timelines and a per-hour chart from a recording.",
                              description="From a recording, write timeline_<device>.png (stacked emotion "
                              "probabilities, dominant-emotion band, face count) and hourly.png.")
    p.add_argument("--db", type=_db_arg, default=Path("emotion-recording.sqlite"),
                   help="Recording: SQLite file (default %(default)s) or postgresql:// URL.")
    p.add_argument("--out", type=Path, default=Path("plots"), help="Output folder (default %(default)s).")
    p.add_argument("--device", action="append", help="Device to plot (repeatable); default: every device.")
    p.add_argument("--since", type=_time_arg, help="Start (UNIX seconds or ISO date/time).")
    p.add_argument("--until", type=_time_arg, help="End (UNIX seconds or ISO date/time).")
    p.add_argument("--width", type=int, default=1600, help="Image width in pixels (default %(default)s).")
    p.add_argument("--height", type=int, default=900, help="Image height in pixels (default %(default)s).")
    p.add_argument("--dpi", type=int, default=100, help="Resolution (default %(default)s).")
    p.add_argument("--max-bins", type=int, default=600, help="Most time bins on a timeline (default %(default)s).")
    p.set_defaults(func=_guarded(cmd_plot))

    p = subparsers.add_parser("ha-remove", help="Remove a device's Home Assistant entities (clear retained configs).",
                              description="Publish empty retained messages on every Home Assistant discovery "
                              "config of the device, so Home Assistant deletes its entities.")
    add_broker_flags(p)
    p.add_argument("--device-id", help="Device id (default: the config's device.id).")
    p.add_argument("--purge", action="store_true", help="Also clear the device's retained status and availability.")
    p.set_defaults(func=_guarded(cmd_ha_remove))


def _devices(args: argparse.Namespace) -> list[str]:
    return args.device or ["+"]


def cmd_watch(args: argparse.Namespace) -> int:
    """Run ``watch``."""
    from edge.tools.subscribe.watch import Watcher

    settings = settings_from_args(args)
    duration = args.duration if args.duration is not None else (3.0 if args.once else None)
    with contextlib.suppress(KeyboardInterrupt):
        Watcher(settings, _devices(args)).run(duration=duration, once=args.once, refresh_s=args.refresh)
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    """Run ``record`` (or the export)."""
    from edge.tools.subscribe.record import Recorder
    from edge.tools.subscribe.store import Recording

    if args.export:
        rec = Recording(args.db, readonly=True)
        try:
            n = rec.export(args.export, args.table, None if _devices(args) == ["+"] else _devices(args)[0])
        finally:
            rec.close()
        print(f"wrote {n} {args.table} rows to {args.export}")
        return 0
    settings = settings_from_args(args)
    recorder = Recorder(settings, args.db, _devices(args), args.client_id, args.session_expiry, share=args.share)
    where = recorder.recording.where
    try:
        recorder.start()
        shared = f" as a member of shared group {args.share}" if args.share else ""
        print(f"recording {settings.topic_prefix}/{'|'.join(_devices(args))}/* from {settings.describe()} to "
              f"{where}{shared} (client id {recorder.client_id}); Ctrl-C to stop", file=sys.stderr)
        recorder.run(args.duration)
    except KeyboardInterrupt:
        pass
    finally:
        held = recorder.recording.count()
        recorder.stop()
    print(f"stored {recorder.stored} new messages ({recorder.duplicates} duplicates dropped, {recorder.ignored} not "
          f"of the contract ignored) in {where}, which now holds {held}", file=sys.stderr)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Run ``plot``."""
    from edge.tools.subscribe.plot import plot_recording

    for path in plot_recording(args.db, args.out, args.device, args.since, args.until, args.width, args.height,
                               args.dpi, args.max_bins):
        print(path)
    return 0


def cmd_ha_remove(args: argparse.Namespace) -> int:
    """Run ``ha-remove``."""
    from edge.config import load_config
    from edge.tools.ha_remove import remove_device_from_broker

    cfg = load_config(getattr(args, "config", None))
    device = getattr(args, "device_id", None) or cfg.device.id
    settings = settings_from_args(args)
    cleared = remove_device_from_broker(settings, device, cfg.homeassistant.discovery_prefix, purge=args.purge)
    for topic in cleared:
        print(f"cleared {topic}")
    print(f"removed {len(cleared)} retained topics of device {device!r}")
    return 0


def _guarded(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command so expected failures print one line on stderr and give exit status 2 (no traceback),
    whichever CLI dispatches it."""

    def run(args: argparse.Namespace) -> int:
        from edge.tools.subscribe.client import SubscribeError
        from edge.tools.subscribe.plot import PlotError
        from edge.tools.subscribe.store import StoreError

        try:
            return int(fn(args) or 0)
        except (SubscribeError, BrokerError, ConfigError, StoreError, PlotError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # an export or plot path that cannot be written
            print(f"error: {exc}", file=sys.stderr)
            return 2

    run.__doc__ = fn.__doc__
    return run
