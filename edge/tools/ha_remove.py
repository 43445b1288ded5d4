"""``ha-remove``: delete a device's Home Assistant entities by clearing its retained discovery configs."""

from __future__ import annotations

import logging
import time
from typing import Any

import paho.mqtt.client as mqtt

from edge.protocol.broker import BrokerSettings
from edge.protocol.topics import AVAILABILITY, STATE_TOPICS, topic
from edge.runtime.homeassistant import device_identifier
from edge.tools.subscribe.client import Subscriber, decode_json

log = logging.getLogger(__name__)


def names_device(body: Any, ident: str) -> bool:
    """Whether a discovery payload (device-based or per entity, full or abbreviated keys) is of device ``ident``."""
    if not isinstance(body, dict):
        return False
    device = body.get("device") or body.get("dev")
    if not isinstance(device, dict):
        return False
    ids = device.get("identifiers") or device.get("ids") or []
    return ident in ([ids] if isinstance(ids, str) else ids)


def remove_device_from_broker(settings: BrokerSettings, device_id: str, discovery_prefix: str = "homeassistant",
                              purge: bool = False, settle_s: float = 0.5, max_wait_s: float = 5.0) -> list[str]:
    """Clear every retained discovery config of ``device_id`` on the broker (Home Assistant then deletes the
    entities); with ``purge`` also its retained status, availability and plain-value ``state/...`` topics. Return
    the cleared topics.

    The configs are found by reading the retained ``<discovery_prefix>/+/+/config`` messages and keeping those
    whose device identifiers name this device: the device config (``<discovery_prefix>/device/<id>/config``) and
    the per-entity configs earlier versions published, for labels of any model version.

    """
    ident = device_identifier(device_id)
    found: dict[str, None] = {}
    last = [time.monotonic()]

    def on_message(client: mqtt.Client, msg: mqtt.MQTTMessage) -> None:
        last[0] = time.monotonic()
        body = decode_json(bytes(msg.payload))
        if msg.retain and names_device(body, ident):
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
            topics += [topic(settings.topic_prefix, device_id, leaf) for leaf in ("status", AVAILABILITY, *STATE_TOPICS)]
        infos = [sub.client.publish(t, b"", qos=1, retain=True) for t in topics]
        for info in infos:
            info.wait_for_publish(timeout=max_wait_s)
    finally:
        sub.stop()
    log.info("cleared %d retained topics of %s", len(topics), device_id)
    return topics
