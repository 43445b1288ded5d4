"""The MQTT topic tree of one device, shared by the daemon and every tool that talks to it.

``<prefix>/<device>/<kind>`` carries the JSON payloads (:data:`edge.protocol.envelope.KINDS`);
``<prefix>/<device>/availability`` the retained plain string ``online``/``offline`` (Last Will);
``<prefix>/<device>/command`` the JSON commands a device accepts; ``<prefix>/<device>/model/push`` and
``<prefix>/group/<group>/model/push`` signed model pushes (:mod:`edge.protocol.push`); and
``<prefix>/<device>/state/<name>`` the retained plain-value topics (:data:`STATE_TOPICS`) for consumers that do
not parse JSON (see ``TOPICS.md`` beside this module).
"""

from __future__ import annotations

from edge.protocol.envelope import KINDS

#: Plain-string retained topic driven by the Last Will.
AVAILABILITY = "availability"
#: Where a device listens for JSON commands.
COMMAND = "command"
#: The plain privacy switch: ``ON`` pauses, ``OFF`` resumes (case-insensitive); its state is :data:`STATE_PAUSED`.
PAUSED_SET = "paused/set"

#: Retained plain-value topics, ``<prefix>/<device>/state/<name>`` (QoS 1, the latest value only):
#: ``emotion`` the dominant emotion of the last summary window or ``none``; ``face_count`` the faces tracked right
#: now (an integer); ``presence`` ``ON`` while at least one face is tracked, else ``OFF``; ``paused`` ``ON`` while
#: the privacy pause holds the camera off, else ``OFF``.
STATE_EMOTION = "state/emotion"
STATE_FACE_COUNT = "state/face_count"
STATE_PRESENCE = "state/presence"
STATE_PAUSED = "state/paused"
STATE_TOPICS = (STATE_EMOTION, STATE_FACE_COUNT, STATE_PRESENCE, STATE_PAUSED)
#: The value of ``state/emotion`` when nobody was seen in the window (also while paused).
NO_EMOTION = "none"
#: What the plain topics say when nobody is seen: set by the MQTT sink before its first connect, so values a
#: crashed run left retained are corrected before anything else goes out.
NOBODY_STATE = {STATE_EMOTION: NO_EMOTION, STATE_FACE_COUNT: "0", STATE_PRESENCE: "OFF"}


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
