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


#: Longest MQTT string (client id, user name, a whole topic): its length is a 16-bit field of the packet.
MQTT_STRING_BYTES = 65535
#: Longest topic prefix: the device id (up to 64), a kind and the separators must still fit a topic.
MQTT_PREFIX_BYTES = 65000


def check_mqtt_string(value: str | None) -> str | None:
    """``value`` if a broker takes it as an MQTT string (client id, user name, topic), else ValueError."""
    # What a broker refuses in a CONNECT or a topic (MQTT 5 section 1.5.4, Mosquitto's UTF-8 check): a string that
    # is not UTF-8 (a lone surrogate), NUL or another control character, more than 65535 bytes. Refused here, the
    # mistake is one line at start; at the broker it would be a dropped connection, retried forever.
    if value is None:
        return value
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 text (it holds a lone surrogate)") from None
    bad = next((c for c in value if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F), None)
    if bad is not None:
        raise ValueError(f"must not contain control characters such as {bad!r}: MQTT brokers refuse them")
    if size > MQTT_STRING_BYTES:
        raise ValueError(f"is {size} bytes in UTF-8; MQTT allows at most {MQTT_STRING_BYTES}")
    return value


def check_topic_prefix(value: str) -> str:
    """``value`` if it can start every topic the device publishes to (see below), else ValueError."""
    # A prefix is the start of every topic the device publishes to: a wildcard is refused by the broker (and by
    # paho), and a topic starting with '$' is the broker's own ($SYS): it is silently not delivered.
    check_mqtt_string(value)
    if "+" in value or "#" in value:
        raise ValueError("must not contain the MQTT wildcards '+' or '#'")
    if value.startswith("$"):
        raise ValueError("must not start with '$' (topics starting with '$' belong to the broker, e.g. $SYS)")
    if len(value.encode("utf-8")) > MQTT_PREFIX_BYTES:
        raise ValueError(f"must be at most {MQTT_PREFIX_BYTES} bytes, so whole topics fit MQTT's {MQTT_STRING_BYTES}")
    return value
