"""The optional Prometheus endpoint (``[metrics] enabled = true``): the status message's figures, over HTTP.

Off by default and bound to 127.0.0.1 by default (the endpoint has no authentication). Served by the
``prometheus-client`` library on its own thread; the figures are read from the daemon when Prometheus scrapes
(:class:`DaemonCollector`), so the frame loop does no extra work per frame. Metrics (all prefixed
``emotion_edge_``): ``info`` (labels device_id, version, model_id, runtime, detector), ``state`` (one series per
daemon state, 1 for the current one), ``paused``, ``fps``, ``frames_total``, ``dropped_frames_total``,
``stage_latency_seconds`` (label stage: moving averages), ``faces`` (tracked now), ``outbox_pending``,
``outbox_dropped_total``, ``mqtt_connected``, ``source_ok``, ``source_retries_total``,
``cpu_temperature_celsius`` (where the machine has a thermal zone), ``uptime_seconds``; plus the library's
``process_*`` and ``python_info``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from edge.config import Config
from edge.runtime.homeassistant import DAEMON_STATES

log = logging.getLogger(__name__)

PREFIX = "emotion_edge"


class MetricsUnavailable(Exception):
    """``metrics.enabled`` is set but prometheus-client is not installed; the message says what to install."""


class DaemonCollector:
    """A prometheus-client collector that reads the daemon's figures at scrape time.

    Args:
        daemon: The running :class:`edge.runtime.daemon.Daemon` (its ``status_body()``, ``face_count``, ``sink``).
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
        for name in DAEMON_STATES:
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
        yield gauge("mqtt_connected", "1 while a broker session is up.", bool(getattr(d.sink, "connected", False)))
        yield gauge("source_ok", "1 while the frame source delivers.", s["source"]["state"] == "ok")
        yield counter("source_retries", "Times the frame source was reopened after a failure.", s["source"]["retries"])
        if s["cpu_temp_c"] is not None:
            yield gauge("cpu_temperature_celsius", "CPU temperature.", s["cpu_temp_c"])
        yield gauge("uptime_seconds", "Seconds since the daemon started.", s["uptime_s"])


class MetricsServer:
    """Daemon extension serving ``http://<metrics.host>:<metrics.port>/metrics`` while the daemon runs.

    Args:
        config: The daemon config (``[metrics]``).
        daemon: The daemon whose figures are served.

    Raises:
        MetricsUnavailable: prometheus-client is not installed.
    """

    def __init__(self, config: Config, daemon: Any) -> None:
        try:
            from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
        except ImportError:
            raise MetricsUnavailable(
                "metrics.enabled = true needs the prometheus-client package: pip install 'emotion-edge[edge]' "
                "(or pip install prometheus-client), or set metrics.enabled = false") from None
        self.host, self.port = config.metrics.host, config.metrics.port
        self.registry = CollectorRegistry()
        self.registry.register(DaemonCollector(daemon))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._server: Any = None
        self._thread: Any = None

    def start(self) -> None:
        """Listen; a port that is taken is logged as an error and the daemon runs on without metrics."""
        from prometheus_client import start_http_server

        try:
            self._server, self._thread = start_http_server(self.port, self.host, self.registry)
        except OSError as exc:
            log.error("cannot serve metrics on %s:%d (%s); check metrics.host and metrics.port; running without "
                      "metrics", self.host, self.port, exc.strerror or exc)
            return
        log.info("serving Prometheus metrics on http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=2)
            self._server = None


def attach(daemon: Any, config: Config) -> MetricsServer | None:
    """Register the endpoint with ``daemon.add_extension`` when ``metrics.enabled``.

    Raises:
        MetricsUnavailable: enabled, but prometheus-client is not installed.
    """
    if not config.metrics.enabled:
        return None
    server = MetricsServer(config, daemon)
    daemon.add_extension(server)
    return server
