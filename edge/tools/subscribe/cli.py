"""Command-line entry points ``watch``, ``record``, ``plot``, ``dashboard`` (and ``ha-remove``), added to
``emotion-edge`` by :func:`register`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from edge.config import ConfigError
from edge.protocol.broker import BrokerError, add_broker_flags, settings_from_args
from edge.version import install_hint

if TYPE_CHECKING:  # imported inside the `record` command only, as the other commands do not need it
    from edge.tools.subscribe.record import Recorder

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


def _device_ids(p: argparse.ArgumentParser, help_text: str) -> None:
    """``--device-id`` (repeatable), the spelling of ``run`` and ``ha-remove``; ``--device`` still works."""
    p.add_argument("--device-id", action="append", metavar="ID", help=help_text)
    p.add_argument("--device", action="append", dest="device_id", help=argparse.SUPPRESS)


def register(subparsers: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``watch``, ``record``, ``plot``, ``dashboard`` and ``ha-remove`` sub-commands, each with the flags
    of ``parents``."""
    p = subparsers.add_parser("watch", parents=parents, help="Live terminal view of one or many devices.",
                              description="Live view of the emotion feeds, in colour on a terminal (not with "
                              "NO_COLOR set): per device online/offline, state, age of the last message, fps, "
                              "status figures (frames, dropped, CPU temperature, uptime, outbox, latency), tracks "
                              "with their emotion and confidence, per-emotion bars. When the devices do not fit "
                              "the terminal, one line per device.")
    add_broker_flags(p)
    _device_ids(p, "Device id to show (repeatable); default: all ('+').")
    p.add_argument("--duration", type=float, help="Stop after this many seconds (default: until Ctrl-C).")
    p.add_argument("--once", action="store_true", help="Collect for --duration seconds (default 3) and print one snapshot.")
    p.add_argument("--refresh", type=float, default=0.5, help="Seconds between redraws (default 0.5).")
    p.add_argument("--compact", action="store_true", default=None,
                   help="One line per device always (default: only when the full view does not fit).")
    p.add_argument("--stale-after", type=float, default=30.0, metavar="S",
                   help="A device silent this many seconds shows in red (default %(default)s).")
    p.set_defaults(func=_guarded(cmd_watch))

    p = subparsers.add_parser("record", parents=parents, help="Record the feeds to SQLite or PostgreSQL (export to CSV/Parquet).",
                              description="Record every status/faces/summary/events message once per (device, seq, ts) "
                              "into a SQLite file or a PostgreSQL database, with a persistent MQTT session so nothing "
                              "sent while the recorder is briefly down is lost. Re-run with the same --db to resume. "
                              "With --export, write a table of an existing recording to CSV or Parquet and exit.")
    add_broker_flags(p)
    p.add_argument("--db", type=_db_arg, default=Path("emotion-recording.sqlite"),
                   help="Recording: a SQLite file (default %(default)s) or postgresql://user@host:port/dbname "
                   "(password from $PGPASSWORD or ~/.pgpass; needs psycopg: from a checkout, pip install -e '.[postgres]').")
    _device_ids(p, "Device id to record (repeatable); default: all ('+').")
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
                   help="What --export writes: every message with its JSON, one row per face, or one per summary. "
                   "Each time column comes as UNIX seconds and beside it as ISO 8601 UTC (<column>_iso).")
    p.add_argument("--progress", type=float, default=5.0, metavar="S",
                   help="Seconds between running counts on stderr, redrawn in place on a terminal (default "
                   "%(default)s; 0: none).")
    p.set_defaults(func=_guarded(cmd_record))

    p = subparsers.add_parser("plot", parents=parents, help="PNG timelines, a per-hour chart and a fleet overview from a recording.",
                              description="From a recording, write timeline_<device>.png (stacked emotion "
                              "probabilities, dominant-emotion band, face count), hourly.png (one panel per "
                              "device; a grid of small panels for many devices) and, for two or more devices, "
                              "overview.png (one row per device).")
    p.add_argument("--db", type=_db_arg, default=Path("emotion-recording.sqlite"),
                   help="Recording: SQLite file (default %(default)s) or postgresql:// URL.")
    p.add_argument("--out", type=Path, default=Path("plots"), help="Output folder (default %(default)s).")
    _device_ids(p, "Device id to plot (repeatable); default: every device.")
    p.add_argument("--since", type=_time_arg, help="Start (UNIX seconds or ISO date/time).")
    p.add_argument("--until", type=_time_arg, help="End (UNIX seconds or ISO date/time).")
    p.add_argument("--width", type=int, default=1600, help="Image width in pixels (default %(default)s).")
    p.add_argument("--height", type=int, default=900, help="Image height in pixels (default %(default)s).")
    p.add_argument("--dpi", type=int, default=100, help="Resolution (default %(default)s).")
    p.add_argument("--max-bins", type=int, default=600, help="Most time bins on a timeline (default %(default)s).")
    p.add_argument("--local-time", action="store_true",
                   help="Time axes and hour bins in this machine's time zone (TZ) instead of UTC.")
    p.set_defaults(func=_guarded(cmd_plot))

    p = subparsers.add_parser("dashboard", parents=parents, help="Local web page with every device's live numbers.",
                              description="Serve a web page with every device's live numbers: availability, "
                              "health, fps, status figures, the emotion and confidence of each face in view, "
                              "per-emotion bars and a timeline of the last minutes. Numbers only, never an "
                              "image; the page's scripts ship with the package (no CDN). Listens on this "
                              "machine only unless --host says otherwise (the page has no login).")
    add_broker_flags(p)
    _device_ids(p, "Device id to show (repeatable); default: all ('+').")
    p.add_argument("--host", default="127.0.0.1", help="Address to listen on (default %(default)s; 0.0.0.0: "
                   "every interface, for anyone on the network).")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default %(default)s; 0: any free port).")
    p.add_argument("--window", type=float, default=300.0, metavar="S",
                   help="Seconds of history in each timeline (default %(default)s).")
    p.add_argument("--sample", type=float, default=1.0, metavar="S",
                   help="Seconds between timeline points and page updates (default %(default)s).")
    p.add_argument("--stale-after", type=float, default=30.0, metavar="S",
                   help="A device silent this many seconds shows in trouble (default %(default)s).")
    p.add_argument("--duration", type=float, help="Stop after this many seconds (default: until Ctrl-C).")
    p.set_defaults(func=_guarded(cmd_dashboard))

    p = subparsers.add_parser("ha-remove", parents=parents, help="Remove a device's Home Assistant entities (clear retained configs).",
                              description="Publish empty retained messages on every Home Assistant discovery "
                              "config of the device, so Home Assistant deletes its entities.")
    add_broker_flags(p)
    p.add_argument("--device-id", metavar="ID", help="Device id (default: the config's device.id).")
    p.add_argument("--purge", action="store_true", help="Also clear the device's retained status and availability.")
    p.set_defaults(func=_guarded(cmd_ha_remove))


def _devices(args: argparse.Namespace) -> list[str]:
    return args.device_id or ["+"]


def cmd_watch(args: argparse.Namespace) -> int:
    """Run ``watch``."""
    from edge.tools.subscribe.client import SubscribeError

    try:
        from edge.tools.subscribe.watch import Watcher
    except ImportError as exc:  # rich is in the [subscribe] extra, not on a device by default
        missing = (exc.name or "rich").split(".")[0]
        raise SubscribeError(f"watch needs {missing}: {install_hint('subscribe')}") from None

    settings = settings_from_args(args)
    duration = args.duration if args.duration is not None else (3.0 if args.once else None)
    with contextlib.suppress(KeyboardInterrupt):
        Watcher(settings, _devices(args), stale_after_s=args.stale_after).run(
            duration=duration, once=args.once, refresh_s=args.refresh, compact=args.compact)
    return 0


def _count_while_recording(recorder: Recorder, every_s: float, done: threading.Event) -> None:
    """Print the recorder's running count on stderr every ``every_s`` seconds until ``done``: redrawn in place
    on a terminal, one line each time otherwise (a log)."""
    tty = sys.stderr.isatty()
    start, shown = time.monotonic(), False
    while not done.wait(every_s):
        rate = recorder.stored / max(time.monotonic() - start, 1e-9)
        line = (f"recording: {recorder.stored} new messages ({rate:.1f}/s), {recorder.duplicates} duplicates, "
                f"{recorder.ignored} ignored")
        sys.stderr.write(f"\r{line}\x1b[K" if tty else line + "\n")
        sys.stderr.flush()
        shown = True
    if tty and shown:
        sys.stderr.write("\n")


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
        print(f"recording {', '.join(recorder.subscriber.filters)} from {settings.describe()} to "
              f"{where}{shared} (client id {recorder.client_id}); Ctrl-C to stop", file=sys.stderr)
        done = threading.Event()
        if args.progress > 0:
            threading.Thread(target=_count_while_recording, args=(recorder, args.progress, done), daemon=True,
                             name="record-progress").start()
        try:
            recorder.run(args.duration)
        finally:
            done.set()
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

    for path in plot_recording(args.db, args.out, args.device_id, args.since, args.until, args.width, args.height,
                               args.dpi, args.max_bins, local_time=args.local_time):
        print(path)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Run ``dashboard``."""
    from edge.tools.dashboard.server import Dashboard

    settings = settings_from_args(args)
    dash = Dashboard(settings, _devices(args), args.host, args.port, window_s=args.window, sample_s=args.sample,
                     stale_after_s=args.stale_after)
    dash.start()
    print(f"dashboard on {dash.url} for {', '.join(dash.subscriber.filters)} from "
          f"{settings.describe()}; Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        dash.run(args.duration)
    except KeyboardInterrupt:
        pass
    finally:
        dash.stop()
    return 0


def cmd_ha_remove(args: argparse.Namespace) -> int:
    """Run ``ha-remove``."""
    from edge.config import load_config
    from edge.tools.ha_remove import remove_device_from_broker

    cfg = load_config(args.config)
    device = args.device_id or cfg.device.id
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
        from edge.tools.subscribe.plotdata import PlotError
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
