"""``ha-remove``: delete a device's Home Assistant entities by clearing its retained discovery configs."""

from __future__ import annotations

import logging
import time

from edge.protocol.broker import BrokerSettings
from edge.runtime.homeassistant import device_identifier
from edge.tools.subscribe.client import Subscriber, decode_json

log = logging.getLogger(__name__)


def remove_device_from_broker(settings: BrokerSettings, device_id: str, discovery_prefix: str = "homeassistant",
                              purge: bool = False, settle_s: float = 0.5, max_wait_s: float = 5.0) -> list[str]:
    """Clear every retained discovery config of ``device_id`` on the broker (Home Assistant then deletes the
    entities); with ``purge`` also its retained status and availability. Return the cleared topics.

    The configs are found by reading the retained ``<discovery_prefix>/+/+/config`` messages and keeping those
    whose device identifiers name this device, so labels of any model version are covered.

    """
    ident = device_identifier(device_id)
    found: dict[str, None] = {}
    last = [time.monotonic()]

    def on_message(client, msg) -> None:
        last[0] = time.monotonic()
        body = decode_json(msg.payload)
        if msg.retain and body and ident in ((body.get("device") or {}).get("identifiers") or []):
            found[msg.topic] = None

    sub = Subscriber(settings, [f"{discovery_prefix}/+/+/config"], on_message)
    sub.start()
    last[0] = time.monotonic()
    try:
        deadline = time.monotonic() + max_wait_s
        while time.monotonic() < deadline and time.monotonic() - last[0] < settle_s:
            time.sleep(0.05)  # retained messages follow the SUBACK; wait until they stop coming
        topics = list(found)
        if purge:
            topics += [f"{settings.topic_prefix}/{device_id}/status", f"{settings.topic_prefix}/{device_id}/availability"]
        infos = [sub.client.publish(t, b"", qos=1, retain=True) for t in topics]
        for info in infos:
            info.wait_for_publish(timeout=max_wait_s)
    finally:
        sub.stop()
    log.info("cleared %d retained topics of %s", len(topics), device_id)
    return topics
