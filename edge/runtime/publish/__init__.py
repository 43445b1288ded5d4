"""Where the frame loop's payloads go: MQTT through a disk outbox, or JSON lines on stdout.

Both sinks implement :class:`edge.runtime.publish.base.Sink`, add the envelope (:mod:`edge.protocol.envelope`)
and return the message's ``seq``. :func:`open_publisher` picks one from the configuration and returns the broker
session behind it (:class:`edge.runtime.publish.base.BrokerSession`, None for stdout): what Home Assistant discovery,
the command channel (:class:`edge.runtime.publish.command_channel.CommandChannel`) and model pushes are built on.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, TextIO

from edge.lazy import lazy_exports
from edge.runtime.publish.base import BrokerSession, Sink, SinkError

log = logging.getLogger(__name__)


def broker_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def open_publisher(config: Config, stream: TextIO | None = None) -> tuple[Sink, BrokerSession | None]:
    """The sink for this configuration and its broker session (None: stdout, no broker).

    ``mqtt.enabled = false`` gives stdout; a configured ``mqtt.host`` gives MQTT (it is retried until it
    answers); with no host, MQTT to ``localhost`` if a broker answers there, else stdout, saying so.

    Raises:
        SinkError: The sink cannot be set up (TLS files, the outbox or seq database).
    """
    # Imported where used: the MQTT sink brings paho and ssl (about 9 MB and 0.1 s of start-up), which a stdout
    # run does not need.
    from edge.runtime.publish.stdout import StdoutSink

    m = config.mqtt
    if not m.enabled:
        log.info("MQTT is off (--stdout, or mqtt.enabled = false in the config): printing the JSON time series "
                 "to stdout")
        return StdoutSink.from_config(config, stream), None
    from edge.runtime.publish.mqtt import MqttSink

    if m.host:
        sink = MqttSink(config)
        return sink, sink.session
    if broker_answers("localhost", m.port):
        log.info("no mqtt.host configured; a broker answers on localhost:%d, publishing there", m.port)
        sink = MqttSink(config, host="localhost")
        return sink, sink.session
    log.warning(
        "no mqtt.host configured and no MQTT broker answers on localhost:%d: printing the JSON time series to "
        "stdout instead (set mqtt.host or --mqtt-host to publish)", m.port,
    )
    return StdoutSink.from_config(config, stream), None


if TYPE_CHECKING:
    from edge.config import Config
    from edge.runtime.publish.mqtt import MqttSink
    from edge.runtime.publish.stdout import StdoutSink

#: The public surface: other packages import these from here, not from the modules that define them.
__all__ = [
    "BrokerSession",
    "MqttSink",
    "Sink",
    "SinkError",
    "StdoutSink",
    "broker_answers",
    "open_publisher",
]

__getattr__ = lazy_exports(__name__, {
    "MqttSink": "mqtt",
    "StdoutSink": "stdout",
})
