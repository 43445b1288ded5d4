"""Where the frame loop's payloads go: MQTT through a disk outbox, or JSON lines on stdout.

Both sinks implement :class:`edge.runtime.publish.base.Sink`, add the envelope (:mod:`edge.protocol.envelope`)
and return the message's ``seq``; :func:`choose_sink` picks one from the configuration.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, TextIO

from edge.lazy import lazy_exports
from edge.runtime.publish.base import Sink, SinkError

log = logging.getLogger(__name__)


def broker_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def choose_sink(config: Config, stream: TextIO | None = None) -> Sink:
    """The sink for this configuration.

    ``mqtt.enabled = false`` gives stdout; a configured ``mqtt.host`` gives MQTT (it is retried until it
    answers); with no host, MQTT to ``localhost`` if a broker answers there, else stdout, saying so.
    """
    # Imported where used: the MQTT sink brings paho and ssl (about 9 MB and 0.1 s of start-up), which a stdout
    # run does not need.
    from edge.runtime.publish.stdout import StdoutSink

    m = config.mqtt
    if not m.enabled:
        log.info("MQTT is off (--stdout, or mqtt.enabled = false in the config): printing the JSON time series "
                 "to stdout")
        return StdoutSink.from_config(config, stream)
    from edge.runtime.publish.mqtt import MqttSink

    if m.host:
        return MqttSink(config)
    if broker_answers("localhost", m.port):
        log.info("no mqtt.host configured; a broker answers on localhost:%d, publishing there", m.port)
        return MqttSink(config, host="localhost")
    log.warning(
        "no mqtt.host configured and no MQTT broker answers on localhost:%d: printing the JSON time series to "
        "stdout instead (set mqtt.host or --mqtt-host to publish)", m.port,
    )
    return StdoutSink.from_config(config, stream)


if TYPE_CHECKING:
    from edge.config import Config
    from edge.runtime.publish.mqtt import MqttSink
    from edge.runtime.publish.stdout import StdoutSink

#: The public surface: other packages import these from here, not from the modules that define them.
__all__ = [
    "MqttSink",
    "Sink",
    "SinkError",
    "StdoutSink",
    "broker_answers",
    "choose_sink",
]

__getattr__ = lazy_exports(__name__, {
    "MqttSink": "mqtt",
    "StdoutSink": "stdout",
})
