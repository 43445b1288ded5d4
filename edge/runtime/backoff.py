"""The one exponential backoff: sources reopening and the MQTT connection retrying use it."""

from __future__ import annotations


def backoff_delay(attempt: int, initial_s: float, max_s: float) -> float:
    """Wait before reopen attempt ``attempt`` (1-based): ``initial_s * 2**(attempt-1)`` capped at ``max_s``."""
    return min(max_s, initial_s * (2.0 ** max(0, attempt - 1)))
