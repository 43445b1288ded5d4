"""What the daemon puts on the retained plain-value topics (``<prefix>/<device>/state/...``, see
:data:`edge.protocol.topics.STATE_TOPICS`), for consumers that do not parse JSON (Home Assistant's occupancy
sensor and privacy switch, Node-RED, openHAB, a shell with ``mosquitto_sub``).

``face_count`` and ``presence`` change with the tracks (a face that starts or ends a track), so they follow the
tracker's smoothing (``tracking.max_missed_frames``) instead of flickering with single missed detections;
``emotion`` comes from each summary window; ``paused`` from the privacy pause. All four are sent again with every
summary, so a consumer with a staleness timeout (Home Assistant's ``expire_after``) sees a live device.
"""

from __future__ import annotations

from collections.abc import Callable

from edge.protocol.topics import NO_EMOTION, STATE_EMOTION, STATE_FACE_COUNT, STATE_PAUSED, STATE_PRESENCE


def on_off(flag: bool) -> str:
    """``ON``/``OFF``, the payloads Home Assistant's binary sensors and switches expect by default."""
    return "ON" if flag else "OFF"


class PlainState:
    """Publishes the plain values when they change, and all of them on :meth:`refresh`.

    Args:
        publish: ``publish(leaf, value)``, the sink's :meth:`~edge.runtime.publish.base.Sink.publish_state`.
    """

    def __init__(self, publish: Callable[[str, str], None]) -> None:
        self._publish = publish
        self._faces: int | None = None

    def faces(self, count: int) -> None:
        """The number of tracked faces is ``count`` now: publish ``face_count`` and ``presence`` if it changed."""
        old = self._faces
        if count == old:
            return
        self._faces = count
        self._publish(STATE_FACE_COUNT, str(count))
        if old is None or (count > 0) != (old > 0):
            self._publish(STATE_PRESENCE, on_off(count > 0))

    def paused(self, paused: bool) -> None:
        """The privacy pause began or ended."""
        self._publish(STATE_PAUSED, on_off(paused))

    def refresh(self, emotion: str | None, faces: int, paused: bool) -> None:
        """Publish every value (at start and with each summary); ``emotion`` None means nobody was seen."""
        self._faces = faces
        self._publish(STATE_EMOTION, emotion or NO_EMOTION)
        self._publish(STATE_FACE_COUNT, str(faces))
        self._publish(STATE_PRESENCE, on_off(faces > 0))
        self._publish(STATE_PAUSED, on_off(paused))
