"""``watch``: a live terminal view of one or many devices, in colour (``rich``), redrawn in place.

Per device, the full view shows availability, state, the age of the last message, fps, the status figures
(frames, dropped frames, CPU temperature, uptime, outbox, latency), the face count with a sparkline, each
track's smoothed emotion and confidence, and one bar per emotion. When that does not fit the terminal (e.g.
20 devices) or with ``--compact``, it is one line per device. The view is a pure function of the messages seen
(:class:`~edge.tools.subscribe.view.FeedState`), so it is tested without a terminal; colour appears only on a
terminal (and not with ``NO_COLOR`` set); ``--once`` prints a single snapshot.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from edge.protocol.broker import BrokerSettings
from edge.tools.subscribe.client import Subscriber, subscription_filters
from edge.tools.subscribe.view import (
    DeviceView,
    FeedState,
    age_s,
    emotion_mix,
    health,
    label_colors,
    labels_of,
    live_tracks,
    status_figures,
)

log = logging.getLogger(__name__)

_SPARK = "▁▂▃▄▅▆▇█"
_EIGHTHS = " ▏▎▍▌▋▊▉█"
_LINK_STYLE = {"online": "bold green", "offline": "bold red"}
_HEALTH_STYLE = {"ok": "green", "warn": "yellow", "bad": "bold red"}


def bar(fraction: float, width: int) -> str:
    """A horizontal bar of ``width`` cells filled to ``fraction`` (0..1), with eighth-cell resolution."""
    fraction = min(max(float(fraction), 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    text = "█" * full + (_EIGHTHS[part] if part else "")
    return text.ljust(width)


def sparkline(values: Sequence[float], top: float | None = None) -> str:
    """One character per value, scaled to ``top`` (default the largest value)."""
    if not values:
        return ""
    top = top if top is not None else max(values)
    if top <= 0:
        return _SPARK[0] * len(values)
    return "".join(_SPARK[min(len(_SPARK) - 1, int(v / top * (len(_SPARK) - 1) + 0.5))] for v in values)


def format_age(seconds: float | None) -> str:
    """``0.4s``, ``12s``, ``3m05s``, ``2h01m``; ``-`` when nothing arrived yet."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _age_style(seconds: float | None, stale_after_s: float) -> str:
    if seconds is None or seconds > stale_after_s:
        return "bold red"
    return "green" if seconds < 5 else "yellow"


def _num(value: Any, fmt: str, unit: str = "") -> str:
    return f"{value:{fmt}}{unit}" if isinstance(value, (int, float)) else "-"


def _colors(view: DeviceView) -> dict[str, str]:
    labels = labels_of(view)
    return dict(zip(labels, label_colors(labels), strict=True))


class WatchView:
    """Renders a :class:`FeedState` as ``rich`` renderables.

    Args:
        state: The folded messages.
        stale_after_s: A device silent for this long shows as stale (red age, health ``bad``).
    """

    def __init__(self, state: FeedState, stale_after_s: float = 30.0) -> None:
        self.state = state
        self.stale_after_s = stale_after_s

    def render(self, now: float | None = None, width: int = 100, height: int | None = None,
               compact: bool | None = None) -> RenderableType:
        """The whole view: one block per device, or one line per device when ``compact`` is true, or (``None``)
        when the blocks would be taller than ``height`` lines."""
        now = time.time() if now is None else now
        views = self.state.snapshot()
        if not views:
            return Text(f"waiting for devices on {self.state.prefix}/+/... ")
        if compact is None:
            blocks = [self._block(v, now, width) for v in views]
            compact = height is not None and sum(len(b) for b in blocks) > height
            if not compact:
                return Group(*(line for b in blocks for line in b))
        return Group(self._fleet_line(views, now), self._table(views, now))

    def _fleet_line(self, views: list[DeviceView], now: float) -> Text:
        """One line over the table: how many devices, how many of them online or in trouble, faces in view."""
        levels = [health(v, now, self.stale_after_s)[0] for v in views]
        faces = sum(len(live_tracks(v, now, self.state.stale_s)) for v in views)
        line = Text(f"{len(views)} device{'s' if len(views) != 1 else ''} · ", style="bold")
        line.append(f"{sum(v.availability == 'online' for v in views)} online", style="green")
        for level in ("warn", "bad"):
            if level in levels:
                line.append(f" · {levels.count(level)} {'warning' if level == 'warn' else 'in trouble'}",
                            style=_HEALTH_STYLE[level])
        line.append(f" · {faces} faces in view")
        return line

    def _block(self, v: DeviceView, now: float, width: int) -> list[Text]:
        try:
            return self._device_lines(v, now, width)
        except Exception as exc:  # one odd device must not take the whole view down
            return [Text(f"■ {v.device}: cannot show its last messages ({exc.__class__.__name__}: {exc})"), Text("")]

    def _head(self, v: DeviceView, now: float, live: list[dict[str, Any]]) -> Text:
        age = age_s(v, now)
        level, reason = health(v, now, self.stale_after_s)
        head = Text("■ ", style=_HEALTH_STYLE[level])
        head.append(v.device, style="bold")
        head.append("  ")
        head.append(f"[{v.availability}]", style=_LINK_STYLE.get(v.availability, "yellow"))
        if v.state:  # an offline device's [offline] tag above already says what its state is now
            head.append(f"  state={v.shown_state}", style="yellow" if v.shown_state != "running" else "")
        head.append("  age ")
        head.append(format_age(age), style=_age_style(age, self.stale_after_s))
        head.append(f"  fps={_num(v.shown_fps, '.1f')}  faces={len(live)}")
        if v.face_history:
            head.append(f"  {sparkline(list(v.face_history))}", style="cyan")
        if level != "ok":
            head.append(f"  ({reason})", style=_HEALTH_STYLE[level])
        return head

    def _device_lines(self, v: DeviceView, now: float, width: int) -> list[Text]:
        """The lines of one device's block."""
        live = live_tracks(v, now, self.state.stale_s)
        lines = [self._head(v, now, live)]
        fig = status_figures(v)
        if v.model_id or v.status:
            # The figures first: on a narrow terminal the line is cut at the model's (long) id.
            parts = [f"up {format_age(fig['uptime_s'])}" if fig["uptime_s"] is not None else "up -",
                     f"cpu {_num(fig['cpu_temp_c'], '.1f', '°C')}",
                     f"frames {_num(fig['frames'], '.0f')} ({_num(fig['dropped_frames'], '.0f')} dropped)",
                     f"outbox {_num(fig['outbox_pending'], '.0f')} pending",
                     f"latency {_num(fig['latency_ms'], '.1f', ' ms')}", f"model {v.model_id or '-'}"]
            if fig["detector"]:
                parts.append(str(fig["detector"]))
            lines.append(Text("  " + " · ".join(parts), style="dim"))
        colors = _colors(v)
        for t in live:
            conf = t.get("confidence")
            line = Text(f"  track {t.get('track_id')}: ")
            emotion = str(t.get("emotion", "?"))
            line.append(emotion, style=f"bold {colors.get(emotion, '')}".strip())
            line.append(f" ({_num(conf, '.2f')})")
            lines.append(line)
        probs, source = emotion_mix(v, now, self.state.stale_s)
        if probs:
            name_w = max(len(lab) for lab in probs)
            bar_w = max(5, min(30, width - name_w - 12))
            lines.append(Text(f"  emotions ({source}):"))
            for lab, p in probs.items():
                line = Text(f"    {lab:<{name_w}} ")
                line.append(bar(p, bar_w), style=colors.get(lab, ""))
                line.append(f" {p * 100:5.1f}%")
                lines.append(line)
        if v.summary:
            dom = v.summary.get("dominant_emotion") or "none"
            lines.append(Text(f"  summary: dominant={dom} faces_mean={v.summary.get('faces_mean') or 0:.2f}"))
        for line in lines:
            line.truncate(width, overflow="ellipsis")
        return [*lines, Text("")]

    def _table(self, views: list[DeviceView], now: float) -> Table:
        """One line per device: what a fleet operator scans for."""
        table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False, padding=(0, 2, 0, 0))
        justify: JustifyMethod
        for name, justify in (("device", "left"), ("link", "left"), ("state", "left"), ("age", "right"),
                              ("fps", "right"), ("faces", "right"), ("emotion", "left"), ("confidence", "left"),
                              ("cpu °C", "right"), ("outbox", "right"), ("dropped", "right"),
                              ("health", "left")):
            table.add_column(name, justify=justify, no_wrap=True)
        for v in views:
            try:
                table.add_row(*self._row(v, now))
            except Exception as exc:  # as in the full view: one odd device keeps its line
                table.add_row(v.device, Text(f"cannot show ({exc.__class__.__name__})", style="red"))
        return table

    def _row(self, v: DeviceView, now: float) -> list[Text | str]:
        live = live_tracks(v, now, self.state.stale_s)
        probs, _ = emotion_mix(v, now, self.state.stale_s)
        colors = _colors(v)
        top = max(probs, key=probs.__getitem__) if probs else None
        conf = probs[top] if top else None
        age = age_s(v, now)
        level, reason = health(v, now, self.stale_after_s)
        fig = status_figures(v)
        return [
            Text(v.device, style="bold"),
            Text(v.availability, style=_LINK_STYLE.get(v.availability, "yellow")),
            v.shown_state or "-",
            Text(format_age(age), style=_age_style(age, self.stale_after_s)),
            _num(v.shown_fps, ".1f"),
            str(len(live)),
            Text(top or "-", style=colors.get(top or "", "")),
            Text(_num(conf, ".2f") + " ").append(bar(conf or 0.0, 6), style=colors.get(top or "", "")),
            _num(fig["cpu_temp_c"], ".1f"),
            _num(fig["outbox_pending"], ".0f"),
            _num(fig["dropped_frames"], ".0f"),
            Text(reason, style=_HEALTH_STYLE[level]),
        ]


def to_text(renderable: RenderableType, width: int = 100, color: bool = False) -> str:
    """A renderable as the text a terminal would show (with ANSI colours when ``color``)."""
    console = Console(width=width, force_terminal=color, color_system="truecolor" if color else None)
    with console.capture() as cap:
        console.print(renderable)
    return cap.get()


class Watcher:
    """Subscribes and feeds a :class:`FeedState`; draws a :class:`WatchView`."""

    def __init__(self, settings: BrokerSettings, devices: Sequence[str] = ("+",), stale_s: float = 2.0,
                 stale_after_s: float = 30.0) -> None:
        self.state = FeedState(settings.topic_prefix, stale_s)
        self.view = WatchView(self.state, stale_after_s)
        self.subscriber = Subscriber(settings, subscription_filters(settings.topic_prefix, devices), self._on_message)

    def _on_message(self, client: mqtt.Client, msg: mqtt.MQTTMessage) -> None:
        self.state.update(msg.topic, bytes(msg.payload))

    def run(self, duration: float | None = None, once: bool = False, refresh_s: float = 0.5,
            out: TextIO | None = None, compact: bool | None = None) -> None:
        """Show the view until ``duration`` elapses (or Ctrl-C).

        With ``once``, collect for ``duration`` seconds and print one snapshot; otherwise redraw in place on a
        terminal (alternate screen, so the scrollback stays intact), or append snapshots when the output is not
        a terminal.
        """
        console = Console(file=out or sys.stdout)
        tty = console.is_terminal and not once
        if not console.is_terminal:
            console.width = 120  # a pipe or file: wide enough for the one-line-per-device table
        self.subscriber.start()
        deadline = None if duration is None else time.monotonic() + duration
        try:
            if once:
                time.sleep(duration or 0)
                console.print(self.view.render(width=console.width, height=self._height(console), compact=compact))
                return
            if not tty:
                while deadline is None or time.monotonic() < deadline:
                    console.print(self.view.render(width=console.width, height=self._height(console), compact=compact))
                    time.sleep(refresh_s)
                return
            with Live(console=console, screen=True, auto_refresh=False) as live:
                while deadline is None or time.monotonic() < deadline:
                    size = shutil.get_terminal_size()
                    live.update(self.view.render(width=size.columns, height=size.lines, compact=compact), refresh=True)
                    time.sleep(refresh_s)
        finally:
            self.subscriber.stop()

    @staticmethod
    def _height(console: Console) -> int:
        """Lines the snapshot may take before it turns into one line per device (a pipe: a terminal's worth)."""
        return console.height if console.is_terminal else shutil.get_terminal_size().lines
