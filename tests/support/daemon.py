"""The daemon in-process without a broker: an in-memory sink that checks every message against the schema, and a
config for the demo source."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from edge.config import Config, parse_config
from edge.runtime.publish.stdout import StdoutSink
from tests.support.mqtt import validator


class ListSink(StdoutSink):
    """The real stdout sink (its envelope, seq counter and status handling) writing JSON lines into memory;
    each message is checked against the published JSON Schema when the test reads it back."""

    def __init__(self) -> None:
        self._buffer = io.StringIO()
        super().__init__("test-dev", stream=self._buffer)

    @property
    def messages(self) -> list[dict]:
        """Every message published so far, each valid against the schema."""
        with self._lock:
            text = self._buffer.getvalue()
        messages = [json.loads(line) for line in text.splitlines()]
        for msg in messages:
            validator().validate(msg)
        return messages

    def of(self, kind: str, event: str | None = None) -> list[dict]:
        """The messages of one kind (and one ``event``, for ``events``)."""
        return [m for m in self.messages if m["kind"] == kind and (event is None or m.get("event") == event)]


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    """A daemon config on the demo source with its state in ``tmp_path``; ``sections`` update its tables."""
    data: dict[str, Any] = {
        "device": {"id": "test-dev", "state_dir": str(tmp_path / "state")},
        "source": {"uri": "demo", "max_fps": 0},
        "mqtt": {"status_interval_s": 60, "summary_interval_s": 60},
        "tracking": {"max_missed_frames": 2},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return parse_config(data)
