"""The dashboard's web server: the standard library's threading HTTP server and Server-Sent Events.

No web framework and no new dependency, so it runs on the Pi as on a workstation. Routes: ``/`` the page,
``/static/<file>`` its shipped scripts and styles (only the files in ``static/``), ``/events`` the live
stream (an ``snapshot`` event, then an ``update`` per sample), ``/api/state`` the snapshot as JSON. The page's
Content-Security-Policy allows only this server as a source: nothing is fetched from a CDN.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

import paho.mqtt.client as mqtt

from edge.protocol.broker import BrokerSettings
from edge.tools.dashboard.feed import DashboardFeed
from edge.tools.subscribe.client import SubscribeError, Subscriber, subscription_filters
from edge.tools.subscribe.view import FeedState

log = logging.getLogger(__name__)

_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8"}
_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; object-src 'none'"


def load_static() -> dict[str, tuple[bytes, str]]:
    """The shipped page files by name (``index.html``, scripts, styles) with their content type."""
    folder = resources.files("edge.tools.dashboard") / "static"
    files = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _TYPES:
            files[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    if "index.html" not in files:
        raise SubscribeError(f"the dashboard's page is missing from {folder}; reinstall emotion-edge")
    return files


class _Handler(BaseHTTPRequestHandler):
    """One request; the server object carries the feed and the files."""

    server: DashboardHTTPServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: HTTPStatus, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", _CSP)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path == "/events":
            self._events()
        elif path == "/api/state":
            self._send(HTTPStatus.OK, self.server.feed.snapshot().encode(), "application/json")
        elif path in ("/", "/index.html") or path.startswith("/static/"):
            name = "index.html" if path in ("/", "/index.html") else path[len("/static/"):]
            found = self.server.files.get(name)
            if found is None:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
            else:
                self._send(HTTPStatus.OK, *found)
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def _events(self) -> None:
        """Server-Sent Events: a snapshot, then every update until the client leaves or the server stops."""
        feed, stopping = self.server.feed, self.server.stopping
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        generation = feed.generation  # the snapshot holds everything up to now: then each newer update
        try:
            self.wfile.write(f"retry: 2000\nevent: snapshot\ndata: {feed.snapshot()}\n\n".encode())
            self.wfile.flush()
            while not stopping.is_set():
                generation, update = feed.wait_update(generation, timeout=15.0)
                # A comment line when nothing changed keeps proxies and the browser from closing the stream.
                self.wfile.write(f"event: update\ndata: {update}\n\n".encode() if update else b": idle\n\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            log.debug("dashboard client %s left", self.address_string())


class DashboardHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that knows the feed, the page files and when it is stopping."""

    daemon_threads = True  # a browser tab left open must not keep the process alive

    def __init__(self, address: tuple[str, int], feed: DashboardFeed, files: dict[str, tuple[bytes, str]]) -> None:
        self.feed = feed
        self.files = files
        self.stopping = threading.Event()
        super().__init__(address, _Handler)


class Dashboard:
    """Subscribe to the feeds, sample them every ``sample_s`` and serve the page on ``host:port``.

    Args:
        settings: Broker settings.
        devices: Device ids or ``+``.
        host: Address to bind (127.0.0.1 by default: the page is for this machine unless asked).
        port: TCP port; 0 picks a free one (see :attr:`url`).
        window_s: Length of the timeline in seconds.
        sample_s: Seconds between timeline samples and page updates.
        stale_s: Faces older than this count as nobody in view.
        stale_after_s: A device silent this long shows in trouble.
    """

    def __init__(self, settings: BrokerSettings, devices: Sequence[str] = ("+",), host: str = "127.0.0.1",
                 port: int = 8765, window_s: float = 300.0, sample_s: float = 1.0, stale_s: float = 2.0,
                 stale_after_s: float = 30.0) -> None:
        self.state = FeedState(settings.topic_prefix, stale_s)
        self.feed = DashboardFeed(self.state, window_s, stale_after_s, settings.describe())
        self.sample_s = sample_s
        self.subscriber = Subscriber(settings, subscription_filters(settings.topic_prefix, devices), self._on_message)
        try:
            self.httpd = DashboardHTTPServer((host, port), self.feed, load_static())
        except OSError as exc:
            raise SubscribeError(f"cannot serve the dashboard on {host}:{port} ({exc.strerror or exc}); "
                                 "choose another --port or --host") from None
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        """Where the page is, e.g. ``http://127.0.0.1:8765/``."""
        host, port = self.httpd.socket.getsockname()[:2]  # server_address, typed str | bytes by the stubs
        return f"http://{host}:{port}/"

    def _on_message(self, client: mqtt.Client, msg: mqtt.MQTTMessage) -> None:
        self.state.update(msg.topic, bytes(msg.payload))

    def _sampler(self) -> None:
        while not self.httpd.stopping.wait(self.sample_s):
            self.feed.tick()

    def start(self) -> None:
        """Connect to the broker (raises :class:`SubscribeError` if it cannot), then serve."""
        try:
            self.subscriber.start()
        except SubscribeError:
            self.httpd.server_close()
            raise
        self.feed.tick()
        self._threads = [threading.Thread(target=self.httpd.serve_forever, name="dashboard-http", daemon=True),
                         threading.Thread(target=self._sampler, name="dashboard-sampler", daemon=True)]
        for t in self._threads:
            t.start()
        log.info("dashboard on %s for %s", self.url, ", ".join(self.subscriber.filters))

    def run(self, duration: float | None = None) -> None:
        """Serve until ``duration`` seconds pass (or Ctrl-C, or the broker refuses us for good)."""
        deadline = None if duration is None else time.monotonic() + duration
        while not self.subscriber.failed.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            self.httpd.stopping.wait(0.5 if left is None else min(0.5, left))
        raise SubscribeError(f"{self.subscriber.failure}; dashboard stopped, check the user name and password")

    def stop(self) -> None:
        """Stop serving and disconnect."""
        self.httpd.stopping.set()
        self.feed.wake_all()
        if self._threads:  # shutdown() waits for serve_forever, which only runs once started
            self.httpd.shutdown()
        self.httpd.server_close()
        for t in self._threads:
            t.join(5)
        self.subscriber.stop()
