"""The command topic: parse what arrives on ``<prefix>/<device>/command`` and run it off the network thread.

Messages are parsed on paho's network thread (cheap) and queued; one worker thread hands each command to the
handler (:meth:`edge.runtime.daemon.Daemon.handle_command`), so a slow command never stalls the network. A
payload that is not a command, or a full queue, is answered with a ``command`` event saying so.

MQTT 5 request/response: a command that carries a Response Topic is answered there too (the body of its
``command`` event as JSON, not retained, with the command's Correlation Data echoed), besides the ``events``
answer every subscriber sees. A response topic inside the device's own topic tree or the Home Assistant
discovery prefix is not answered (a command must not make the device write into topics others read as data).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from paho.mqtt.properties import Properties

from edge.protocol.envelope import command_event

log = logging.getLogger(__name__)

#: Commands waiting for the worker; more are answered "try again later" instead of piling up in memory.
QUEUE_SIZE = 100

#: Runs a command; returns the body of its ``command`` event (answered to an MQTT 5 response topic) or None.
CommandHandler = Callable[[dict[str, Any]], "dict[str, Any] | None"]
#: Publishes ``(response topic, body, correlation data)``.
ReplyPublisher = Callable[[str, dict[str, Any], "bytes | None"], None]


class CommandChannel:
    """Receives commands and answers the ones it cannot run.

    Args:
        publish_event: Publishes an ``events`` body (the sink's outbox); must not block on the network.
        publish_reply: Answers an MQTT 5 response topic; None answers on ``events`` only.
        reply_forbidden: Topic prefixes a response topic must not start with (the device's tree, discovery).
    """

    def __init__(self, publish_event: Callable[[dict[str, Any]], None], publish_reply: ReplyPublisher | None = None,
                 reply_forbidden: tuple[str, ...] = ()) -> None:
        self._publish_event = publish_event
        self._publish_reply = publish_reply
        self._reply_forbidden = reply_forbidden
        #: Runs each command (on the worker thread); None answers "no command handler".
        self.handler: CommandHandler | None = None
        self._closed = False
        self._queue: queue.Queue[tuple[dict[str, Any], tuple[str, bytes | None] | None] | None] = \
            queue.Queue(maxsize=QUEUE_SIZE)
        self._worker = threading.Thread(target=self._run, name="mqtt-commands", daemon=True)

    def start(self) -> None:
        """Start the worker thread."""
        self._worker.start()

    def on_message(self, topic: str, payload: bytes, properties: Properties | None = None) -> None:
        """A message on the command topic (network thread): parse and queue it, or answer why not."""
        reply = self._reply_to(properties)
        try:
            cmd = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            self._answer(None, False, "command payload is not JSON; send e.g. {\"command\": \"publish_status\"}",
                         reply=reply)
            return
        if not isinstance(cmd, dict) or not isinstance(cmd.get("command"), str):
            self._answer(None, False, "command must be a JSON object with a string field 'command'", reply=reply)
            return
        try:
            self._queue.put_nowait((cmd, reply))
        except queue.Full:
            self._answer(cmd["command"], False, "too many queued commands; try again later", cmd, reply)

    def _reply_to(self, properties: Properties | None) -> tuple[str, bytes | None] | None:
        """``(response topic, correlation data)`` of an MQTT 5 request, None when there is none or it is refused."""
        topic = getattr(properties, "ResponseTopic", None) if properties is not None else None
        if not topic or self._publish_reply is None:
            return None
        if topic.startswith("$") or any(topic == p.rstrip("/") or topic.startswith(p) for p in self._reply_forbidden):
            log.warning("MQTT command: not answering response topic %s (inside %s); answering on events only",
                        topic, " or ".join(self._reply_forbidden))
            return None
        return topic, getattr(properties, "CorrelationData", None)

    def close(self, timeout: float = 1.0) -> None:
        """Stop answering and end the worker after the command in progress."""
        self._closed = True
        self._queue.put(None)
        self._worker.join(timeout)

    def _answer(self, command: str | None, ok: bool, detail: str, request: Any = None,
                reply: tuple[str, bytes | None] | None = None) -> None:
        if not ok:
            log.warning("MQTT command %s not done: %s", command, detail)
        if not self._closed:
            body = command_event(command, ok, detail, request)
            self._publish_event(body)
            self._send_reply(reply, body)

    def _send_reply(self, reply: tuple[str, bytes | None] | None, body: dict[str, Any] | None) -> None:
        if reply is not None and body is not None and self._publish_reply is not None and not self._closed:
            self._publish_reply(reply[0], body, reply[1])

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            cmd, reply = item
            handler = self.handler
            if handler is None:
                self._answer(cmd["command"], False, "this device has no command handler", cmd, reply)
                continue
            try:
                self._send_reply(reply, handler(cmd))
            except Exception as exc:
                log.exception("command %s failed", cmd.get("command"))
                self._answer(cmd["command"], False, f"command failed: {exc}", cmd, reply)
