"""The command topics: check what arrives on ``<prefix>/<device>/command`` (JSON) and ``<prefix>/<device>/paused/set``
(the plain pause switch, ``ON``/``OFF``) and run it off the network thread.

The topic carries no signature, so anyone who may publish there may send anything, and every step is bounded:

- at most ``mqtt.command_rate`` messages per second are looked at (a token bucket); the rest are dropped
  unanswered and counted in the log once a minute, so a flood can neither fill the outbox with answers nor the
  log with lines;
- a payload above ``mqtt.max_command_bytes`` is never read (see
  :mod:`edge.runtime.publish.bounded_client`) and is answered ``oversized``;
- deeply nested JSON ("[[[[..."): Python's parser recurses once per level and raises RecursionError at about a
  thousand; that is caught like any other unreadable payload and answered ``malformed``;
- answers and log lines echo at most :data:`edge.protocol.envelope.ECHO_CHARS` characters of the input.

Messages are checked on paho's network thread (cheap) and queued; one worker thread hands each command to the
handler (:meth:`edge.runtime.daemon.Daemon.handle_command`), so a slow command never stalls the network.

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

from edge.protocol.envelope import clip, command_event
from edge.runtime.loglimit import LogLimiter
from edge.runtime.publish.base import CommandHandler
from edge.runtime.ratelimit import TokenBucket

log = logging.getLogger(__name__)

#: Commands waiting for the worker; more are answered "busy" instead of piling up in memory. A parsed command of
#: max_command_bytes can take some 25 times that as Python objects, so this also bounds what waiting commands hold.
QUEUE_SIZE = 16

#: Publishes ``(response topic, body, correlation data)``.
ReplyPublisher = Callable[[str, dict[str, Any], "bytes | None"], None]
Reply = tuple[str, "bytes | None"]
class CommandRefused(ValueError):
    """A message that is not a command; ``code`` is ``malformed`` or ``oversized``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


#: What the plain switch topic (``<prefix>/<device>/paused/set``) accepts, upper-cased, and the command it means.
SWITCH_COMMANDS = {"ON": "pause", "OFF": "resume"}


def parse_switch(payload: bytes, max_bytes: int) -> dict[str, Any]:
    """The command a plain ``ON``/``OFF`` (any case, surrounding blanks ignored) means, or :class:`CommandRefused`."""
    if len(payload) > max_bytes:
        raise CommandRefused("oversized", f"switch payload is {len(payload)} bytes, above mqtt.max_command_bytes = "
                             f"{max_bytes}")
    text = payload.decode("utf-8", "replace").strip()
    name = SWITCH_COMMANDS.get(text.upper())
    if name is None:
        raise CommandRefused("malformed", f"the pause switch takes ON or OFF, not {clip(text)!r}")
    return {"command": name}


def parse_command(payload: bytes, max_bytes: int) -> dict[str, Any]:
    """The command object in ``payload``, or :class:`CommandRefused` saying why it is none."""
    if len(payload) > max_bytes:
        raise CommandRefused("oversized", f"command is {len(payload)} bytes, above mqtt.max_command_bytes = {max_bytes}")
    try:
        # Decoded strictly first: json.loads on bytes lets a lone surrogate (\xed\xa0\x80) through, and the answer
        # that quotes it could then not be encoded, so the sender would hear nothing.
        cmd = json.loads(payload.decode("utf-8"))
    except RecursionError:  # the C parser's depth guard: an answer, never a traceback
        raise CommandRefused("malformed", "command JSON is nested too deeply") from None
    except (UnicodeDecodeError, ValueError):
        raise CommandRefused("malformed", "command payload is not JSON; send e.g. {\"command\": \"publish_status\"}") from None
    if not isinstance(cmd, dict) or not isinstance(cmd.get("command"), str):
        raise CommandRefused("malformed", "command must be a JSON object with a string field 'command'")
    return cmd


class CommandChannel:
    """Receives commands and answers the ones it cannot run.

    Args:
        publish_event: Publishes an ``events`` body (the sink's outbox); must not block on the network.
        max_bytes: Largest accepted payload (``mqtt.max_command_bytes``).
        rate: Messages handled per second at most (``mqtt.command_rate``), in bursts of as many.
        publish_reply: Answers an MQTT 5 response topic; None answers on ``events`` only.
        reply_forbidden: Topic prefixes a response topic must not start with (the device's tree, discovery).
    """

    def __init__(self, publish_event: Callable[[dict[str, Any]], None], max_bytes: int = 64 * 1024,
                 rate: float = 10.0, publish_reply: ReplyPublisher | None = None,
                 reply_forbidden: tuple[str, ...] = ()) -> None:
        self._publish_event = publish_event
        self.max_bytes = max_bytes
        self._publish_reply = publish_reply
        self._reply_forbidden = reply_forbidden
        #: Runs each command (on the worker thread); None answers "no command handler".
        self.handler: CommandHandler | None = None
        #: Messages dropped unanswered by the rate limit since start.
        self.dropped = 0
        self._rate = rate
        self._bucket = TokenBucket(rate)
        #: Messages :meth:`gate` admitted that have not reached :meth:`on_message` yet (network thread only).
        self._gated = 0
        self._log = LogLimiter(log)
        self._closed = False
        self._queue: queue.Queue[tuple[dict[str, Any], Reply | None] | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self._worker = threading.Thread(target=self._run, name="mqtt-commands", daemon=True)

    def start(self) -> None:
        """Start the worker thread."""
        self._worker.start()

    def gate(self, topic: str) -> bool:
        """Whether a message on the command topic is taken, asked before it is even parsed (network thread): a
        flood beyond ``rate`` is dropped unread and counted; what passes is not counted again on arrival."""
        if self._admit():
            self._gated += 1
            return True
        return False

    def _arrived(self) -> bool:
        """A message arrived: admitted by :meth:`gate` already, or now by the rate."""
        if self._gated:
            self._gated -= 1
            return True
        return self._admit()

    def on_message(self, topic: str, payload: bytes, properties: Properties | None = None) -> None:
        """A message on the command topic (network thread): check and queue it, or answer why not."""
        self._receive(parse_command, payload, properties)

    def on_switch(self, topic: str, payload: bytes, properties: Properties | None = None) -> None:
        """A message on the plain pause switch topic (network thread): ``ON``/``OFF`` become ``pause``/``resume``,
        through the same rate limit, size bound, queue and answers as a JSON command."""
        self._receive(parse_switch, payload, properties)

    def _receive(self, parse: Callable[[bytes, int], dict[str, Any]], payload: bytes,
                 properties: Properties | None) -> None:
        if not self._arrived():
            return
        reply = self._reply_to(properties)
        try:
            cmd = parse(payload, self.max_bytes)
        except CommandRefused as exc:
            self._answer(None, False, exc.detail, code=exc.code, reply=reply)
            return
        try:
            self._queue.put_nowait((cmd, reply))
        except queue.Full:
            self._answer(cmd["command"], False, "too many queued commands; try again later", cmd, "busy", reply)

    def on_oversized(self, topic: str, size: int) -> None:
        """A message above ``max_bytes`` was dropped unread (network thread): answer ``oversized``."""
        if self._arrived():
            self._answer(None, False, f"command is {size} bytes, above mqtt.max_command_bytes = {self.max_bytes}; "
                         "it was not read", code="oversized")

    def _reply_to(self, properties: Properties | None) -> Reply | None:
        """``(response topic, correlation data)`` of an MQTT 5 request, None when there is none or it is refused."""
        topic = getattr(properties, "ResponseTopic", None) if properties is not None else None
        if not topic or self._publish_reply is None:
            return None
        if (topic.startswith("$") or any(c in topic for c in "+#\0")
                or any(topic == p.rstrip("/") or topic.startswith(p) for p in self._reply_forbidden)):
            self._log.warning("reply topic", "MQTT command: not answering response topic %s (a wildcard, or inside "
                              "%s); answering on events only", clip(topic), " or ".join(self._reply_forbidden))
            return None
        return topic, getattr(properties, "CorrelationData", None)

    def close(self, timeout: float = 1.0) -> None:
        """Stop answering and end the worker after the command in progress."""
        self._closed = True
        self._queue.put(None)
        self._worker.join(timeout)

    def _admit(self) -> bool:
        if self._bucket.take():
            return True
        self.dropped += 1
        self._log.warning("rate", "dropping commands unanswered: more than mqtt.command_rate = %g per second "
                          "(%d dropped since start)", self._rate, self.dropped)
        return False

    def _answer(self, command: str | None, ok: bool, detail: str, request: Any = None, code: str | None = None,
                reply: Reply | None = None) -> None:
        event = command_event(command, ok, detail, request, code)
        if not ok:
            self._log.warning(f"refused {event['code']}", "MQTT command %s not done (%s): %s", event["command"],
                              event["code"], event["detail"])
        if not self._closed:
            self._publish_event(event)
            self._send_reply(reply, event)

    def _send_reply(self, reply: Reply | None, body: dict[str, Any] | None) -> None:
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
                self._answer(cmd["command"], False, "this device has no command handler", cmd, reply=reply)
                continue
            try:
                self._send_reply(reply, handler(cmd))
            except Exception as exc:
                self._log.log(logging.ERROR, "failed", "command %s failed", clip(cmd["command"]), exc_info=True)
                self._answer(cmd["command"], False, f"command failed: {clip(exc)}", cmd, reply=reply)
