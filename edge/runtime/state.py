"""The daemon's states: what ``status.state`` says, what Home Assistant lists and what /metrics exports.

A str-valued enum, so the payloads keep the same plain strings (``DaemonState.RUNNING == "running"``).
``offline`` is the last status a run publishes (after the extensions stopped and the source closed); the broker's
Last Will says ``offline`` on the availability topic when a run dies without it.
"""

from __future__ import annotations

from enum import Enum


class DaemonState(str, Enum):
    """One state of the daemon; its value is the string the status payload carries."""

    STARTING = "starting"
    RUNNING = "running"
    DEGRADED = "degraded"
    PAUSED = "paused"
    STOPPING = "stopping"
    OFFLINE = "offline"

    def __str__(self) -> str:
        return self.value


#: Every state's string, in the order above (Home Assistant's enum options, the /metrics state labels).
STATE_NAMES: tuple[str, ...] = tuple(s.value for s in DaemonState)
