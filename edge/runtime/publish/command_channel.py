"""The command topic: parse what arrives on ``<prefix>/<device>/command`` and run it off the network thread.

Messages are parsed on paho's network thread (cheap) and queued; one worker thread hands each command to the
handler (:meth:`edge.runtime.daemon.Daemon.handle_command`), so a slow command never stalls the network. A
payload that is not a command, or a full queue, is answered with a ``command`` event saying so.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from edge.protocol.envelope import command_event

log = logging.getLogger(__name__)

#: Commands waiting for the worker; more are answered "try again later" instead of piling up in memory.
QUEUE_SIZE = 100

CommandHandler = Callable[[dict[str, Any]], None]


class CommandChannel:
    """Receives commands and answers the ones it cannot run.

    Args:
        publish_event: Publishes an ``events`` body (the sink's outbox); must not block on the network.
    """

    def __init__(self, publish_event: Callable[[dict[str, Any]], None]) -> None:
        self._publish_event = publish_event
        #: Runs each command (on the worker thread); None answers "no command handler".
        self.handler: CommandHandler | None = None
        self._closed = False
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self._worker = threading.Thread(target=self._run, name="mqtt-commands", daemon=True)

    def start(self) -> None:
        """Start the worker thread."""
        self._worker.start()

    def on_message(self, topic: str, payload: bytes) -> None:
        """A message on the command topic (network thread): parse and queue it, or answer why not."""
        try:
            cmd = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            self._answer(None, False, "command payload is not JSON; send e.g. {\"command\": \"publish_status\"}")
            return
        if not isinstance(cmd, dict) or not isinstance(cmd.get("command"), str):
            self._answer(None, False, "command must be a JSON object with a string field 'command'")
            return
        try:
            self._queue.put_nowait(cmd)
        except queue.Full:
            self._answer(cmd["command"], False, "too many queued commands; try again later", cmd)

    def close(self, timeout: float = 1.0) -> None:
        """Stop answering and end the worker after the command in progress."""
        self._closed = True
        self._queue.put(None)
        self._worker.join(timeout)

    def _answer(self, command: str | None, ok: bool, detail: str, request: Any = None) -> None:
        if not ok:
            log.warning("MQTT command %s not done: %s", command, detail)
        if not self._closed:
            self._publish_event(command_event(command, ok, detail, request))

    def _run(self) -> None:
        while True:
            cmd = self._queue.get()
            if cmd is None:
                return
            handler = self.handler
            if handler is None:
                self._answer(cmd["command"], False, "this device has no command handler", cmd)
                continue
            try:
                handler(cmd)
            except Exception as exc:
                log.exception("command %s failed", cmd.get("command"))
                self._answer(cmd["command"], False, f"command failed: {exc}", cmd)
