"""The optional local HTTP endpoint (``[metrics] enabled = true``): Prometheus metrics and a small read-only API.

Off by default and bound to 127.0.0.1 by default (the endpoint has no authentication). One threaded HTTP server
(standard library ``wsgiref``) serves, on its own threads:

- ``GET /metrics``: the Prometheus text format (``prometheus-client``); the figures are read from the daemon when
  Prometheus scrapes (:class:`DaemonCollector`), so the frame loop does no extra work for it;
- ``GET /api/stats``: the ``status`` body as JSON, with ``device_id``;
- ``GET /api/version``: device id, software version, payload schema version, model id;
- ``GET /api/config``: the effective configuration as JSON (:func:`redacted_config`).

Metrics (all prefixed
``emotion_edge_``): ``info`` (labels device_id, version, model_id, runtime, detector), ``state`` (one series per
daemon state, 1 for the current one), ``paused``, ``fps``, ``frames_total``, ``dropped_frames_total``,
``stage_latency_seconds`` (label stage: moving averages), ``faces`` (tracked now), ``outbox_pending``,
``outbox_dropped_total``, ``mqtt_connected``, ``source_ok``, ``source_retries_total``,
``cpu_temperature_celsius`` (where the machine has a thermal zone), ``uptime_seconds``; the emotions (labels from
the running model's manifest, :mod:`edge.runtime.emotions`): ``emotion_probability`` (label ``emotion``: the mean
smoothed probability over the faces of the last frame; no samples while nobody is in view),
``dominant_emotion`` (a state set: 1 for the emotion of that mean, ``uncertain`` under
``tracking.uncertain_below``, or ``none`` while nobody is in view), ``emotion_observations_total`` (label
``emotion``: face observations per reported emotion since start); plus the library's ``process_*`` and
``python_info``.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from edge.config import Config
from edge.protocol.envelope import SCHEMA_VERSION
from edge.protocol.topics import NO_EMOTION
from edge.runtime.state import STATE_NAMES
from edge.runtime.track import UNCERTAIN
from edge.schema import dump
from edge.version import install_hint, package_version

log = logging.getLogger(__name__)

PREFIX = "emotion_edge"
#: Config keys whose values ``/api/config`` never shows (the password itself is never in the config: it comes
#: from the environment or a systemd credential; these name who connects and with which private key).
REDACTED_KEYS = frozenset({"username", "key_file", "password_env", "password_credential"})
REDACTED = "<redacted>"


class MetricsUnavailable(Exception):
    """``metrics.enabled`` is set but prometheus-client is not installed; the message says what to install."""


class DaemonCollector:
    """A prometheus-client collector that reads the daemon's figures at scrape time.

    Args:
        daemon: The running :class:`edge.runtime.daemon.Daemon` (its ``status_body()`` and ``face_count``).
    """

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Any]:
        """The metric families of one scrape (called by prometheus-client on its HTTP thread)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily


        d = self.daemon
        s = d.status_body()
        yield InfoMetricFamily(PREFIX, "The device, its software and its model.", value={
            "device_id": d.config.device.id, "version": str(s["version"]), "model_id": str(s["model_id"]),
            "runtime": str(s["model"]["runtime"]), "detector": str(s["detector"])})
        state = GaugeMetricFamily(f"{PREFIX}_state", "Daemon state: 1 for the current one.", labels=["state"])
        for name in STATE_NAMES:
            state.add_metric([name], 1.0 if s["state"] == name else 0.0)
        yield state

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=float(value))

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=float(value))

        yield gauge("paused", "1 while the privacy pause keeps the camera off.", s["paused"])
        yield gauge("fps", "Processed frames per second (moving average).", s["fps"])
        yield counter("frames", "Frames processed since start.", s["frames"])
        yield counter("dropped_frames", "Frame slots skipped since start (frame-rate cap, overload).",
                      s["dropped_frames"])
        latency = GaugeMetricFamily(f"{PREFIX}_stage_latency_seconds",
                                    "Per-stage latency of a frame (moving average).", labels=["stage"])
        for stage, ms in s["latency_ms"].items():
            if ms is not None:
                latency.add_metric([stage], ms / 1000.0)
        yield latency
        yield gauge("faces", "Faces tracked right now.", d.face_count)
        yield gauge("outbox_pending", "Messages waiting for the broker's acknowledgement.", s["outbox"]["pending"])
        yield counter("outbox_dropped", "Messages the outbox dropped at its bound.", s["outbox"]["dropped"])
        yield gauge("mqtt_connected", "1 while a broker session is up.", bool(s.get("mqtt", {}).get("connected")))
        yield gauge("source_ok", "1 while the frame source delivers.", s["source"]["state"] == "ok")
        yield counter("source_retries", "Times the frame source was reopened after a failure.", s["source"]["retries"])
        if s["cpu_temp_c"] is not None:
            yield gauge("cpu_temperature_celsius", "CPU temperature.", s["cpu_temp_c"])
        yield gauge("uptime_seconds", "Seconds since the daemon started.", s["uptime_s"])
        yield from emotion_families(d.emotions)


def emotion_families(watch: Any) -> Iterator[Any]:
    """The per-emotion metric families of an :class:`edge.runtime.emotions.EmotionWatch` (one frame's values)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    # Each attribute is replaced whole by the frame loop: read each once.
    mean, labels, dominant, counts = watch.mean_probs, watch.labels, watch.dominant, watch.counts
    probability = GaugeMetricFamily(f"{PREFIX}_emotion_probability", "Mean smoothed probability of each emotion "
                                    "over the faces in view (no samples while nobody is).", labels=["emotion"])
    if mean is not None and len(mean) == len(labels):
        for label, p in zip(labels, mean, strict=True):
            probability.add_metric([label], float(p))
    yield probability
    states = GaugeMetricFamily(f"{PREFIX}_dominant_emotion", "The emotion of the faces in view: 1 for the current "
                               "one (uncertain under tracking.uncertain_below, none while nobody is in view).",
                               labels=["emotion"])
    for label in [*labels, UNCERTAIN, NO_EMOTION]:
        states.add_metric([label], 1.0 if label == dominant else 0.0)
    yield states
    observations = CounterMetricFamily(f"{PREFIX}_emotion_observations", "Face observations per reported emotion "
                                       "since start (one per face per processed frame).", labels=["emotion"])
    for label, n in counts.items():
        observations.add_metric([label], float(n))
    yield observations


def redacted_config(config: Config) -> dict[str, Any]:
    """The effective configuration as JSON-ready data, the values of :data:`REDACTED_KEYS` replaced."""

    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (REDACTED if k in REDACTED_KEYS and v is not None else scrub(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return value

    return scrub(dump(config))


def api_body(daemon: Any, path: str) -> dict[str, Any] | None:
    """The JSON body of ``GET <path>`` on the device API, None for an unknown path."""
    device_id = daemon.config.device.id
    if path == "/api/stats":
        return {"device_id": device_id, **daemon.status_body()}
    if path == "/api/version":
        return {"device_id": device_id, "version": package_version(), "schema_version": SCHEMA_VERSION,
                "model_id": daemon.model_id}
    if path == "/api/config":
        return redacted_config(daemon.config)
    return None


StartResponse = Callable[..., Any]


def make_app(daemon: Any, metrics_app: Callable[[dict, StartResponse], Iterable[bytes]]) \
        -> Callable[[dict, StartResponse], Iterable[bytes]]:
    """The WSGI app: ``/metrics`` to ``metrics_app``, ``/api/...`` to :func:`api_body`, else 404."""

    def app(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Content-Type", "text/plain"), ("Allow", "GET, HEAD")])
            return [b"read-only: use GET\n"]
        try:
            body = api_body(daemon, path)
        except Exception:  # a failing read must answer, not kill the server thread
            log.exception("answering %s failed", path)
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"internal error; see the device log\n"]
        if body is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try /metrics, /api/stats, /api/version or /api/config\n"]
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    return app


def require() -> None:
    """Check that the metrics endpoint can be served (checked before the camera opens).

    Raises:
        MetricsUnavailable: prometheus-client is not installed.
    """
    try:
        import prometheus_client  # noqa: F401 - imported only to see that it is there
    except ImportError:
        raise MetricsUnavailable(
            f"metrics.enabled = true needs the prometheus-client package: {install_hint('edge')}, "
            "or pip install prometheus-client; or set metrics.enabled = false") from None


class MetricsServer:
    """Daemon extension serving ``http://<metrics.host>:<metrics.port>/metrics`` while the daemon runs.

    Args:
        config: The daemon config (``[metrics]``).
        daemon: The daemon whose figures are served.

    Raises:
        MetricsUnavailable: prometheus-client is not installed.
    """

    def __init__(self, config: Config, daemon: Any) -> None:
        require()
        from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

        self.daemon = daemon
        self.host, self.port = config.metrics.host, config.metrics.port
        self.registry = CollectorRegistry()
        self.registry.register(DaemonCollector(daemon))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._server: Any = None
        self._thread: Any = None

    def start(self) -> None:
        """Listen; a port that is taken is logged as an error and the daemon runs on without metrics."""
        # Imported here: with metrics off (the default) the daemon never loads the HTTP server modules.
        from socketserver import ThreadingMixIn
        from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

        from prometheus_client import make_wsgi_app

        class Server(ThreadingMixIn, WSGIServer):
            daemon_threads = True

        class QuietHandler(WSGIRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                """Requests are not logged (a scrape every few seconds would fill the journal)."""

        try:
            # An IPv6 metrics.host needs an IPv6 socket (WSGIServer is IPv4 unless told).
            family, _, _, _, sockaddr = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM,
                                                           flags=socket.AI_PASSIVE)[0]
            Server.address_family = family
            self._server = make_server(str(sockaddr[0]), self.port, make_app(self.daemon, make_wsgi_app(self.registry)),
                                       Server, handler_class=QuietHandler)
        except OSError as exc:
            log.error("cannot serve metrics on %s:%d (%s); check metrics.host and metrics.port; running without "
                      "metrics", self.host, self.port, exc.strerror or exc)
            return
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        log.info("serving Prometheus metrics on http://%s:%d/metrics and the device API on /api/stats, "
                 "/api/version, /api/config", self.host, self.port)

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=2)
            self._server = None
