"""The MQTT topic tree of one device, shared by the daemon and every tool that talks to it.

``<prefix>/<device>/<kind>`` carries the JSON payloads (:data:`edge.protocol.envelope.KINDS`);
``<prefix>/<device>/availability`` the retained plain string ``online``/``offline`` (Last Will);
``<prefix>/<device>/command`` the JSON commands a device accepts; ``<prefix>/<device>/model/push`` and
``<prefix>/group/<group>/model/push`` signed model pushes (:mod:`edge.protocol.push`).
"""

from __future__ import annotations

from edge.protocol.envelope import KINDS

#: Plain-string retained topic driven by the Last Will.
AVAILABILITY = "availability"
#: Where a device listens for JSON commands.
COMMAND = "command"


def topic(prefix: str, device_id: str, leaf: str) -> str:
    """The topic ``<prefix>/<device_id>/<leaf>``, e.g. ``emotion/pi1/status``."""
    return f"{prefix}/{device_id}/{leaf}"


def push_topics(prefix: str, device_id: str, groups: list[str]) -> list[str]:
    """The topics a device listens to for model pushes: its own, then one per fleet group."""
    return [f"{prefix}/{device_id}/model/push"] + [f"{prefix}/group/{g}/model/push" for g in groups]


def parse_topic(topic_: str, prefix: str) -> tuple[str, str] | None:
    """``(device, kind)`` for ``<prefix>/<device>/<kind>`` topics of the contract (kinds and availability),
    else ``None``."""
    if not topic_.startswith(prefix + "/"):
        return None
    rest = topic_[len(prefix) + 1:].split("/")
    if len(rest) != 2 or rest[1] not in (*KINDS, AVAILABILITY):
        return None
    return rest[0], rest[1]
