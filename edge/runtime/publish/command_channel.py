"""The command topics: check what arrives on ``<prefix>/<device>/command`` (JSON) and ``<prefix>/<device>/paused/set``
(the plain pause switch, ``ON``/``OFF``) and run it off the network thread.

The topics carry no signature, so anyone who may publish there may send anything, and every step is bounded by
the guarded inbound topics of :mod:`edge.runtime.publish.inbound`, with these limits and answers:

- at most ``mqtt.command_rate`` messages per second are looked at, on both topics together; the rest are dropped
  unanswered and counted in the log once a minute;
- a payload above ``mqtt.max_command_bytes`` is never read and is answered ``oversized``; at most
  :data:`QUEUE_SIZE` commands wait, one more is answered ``busy``;
- deeply nested JSON ("[[[[..."): Python's parser recurses once per level and raises RecursionError at about a
  thousand; that is caught like any other unreadable payload and answered ``malformed``;
- answers and log lines echo at most :data:`edge.protocol.envelope.ECHO_CHARS` characters of the input.

Messages are checked on paho's network thread (cheap) and queued; one worker thread hands each command to the
handler (:meth:`edge.runtime.daemon.Daemon.handle_command`), so a slow command never stalls the network. Answers
are ``command`` events through the sink's outbox (:meth:`edge.runtime.publish.base.BrokerSession.publish`).

MQTT 5 request/response: a command that carries a Response Topic is answered there too (the body of its
``command`` event as JSON, not retained, with the command's Correlation Data echoed), besides the ``events``
answer every subscriber sees. A response topic inside the device's own topic tree or the Home Assistant
discovery prefix is not answered (a command must not make the device write into topics others read as data).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config import Config
from edge.protocol.envelope import clip, command_event
from edge.protocol.topics import COMMAND, PAUSED_SET, topic
from edge.runtime.loglimit import LogLimiter
from edge.runtime.publish.base import BrokerSession, SinkError
from edge.runtime.publish.inbound import GuardedInbound, InboundLimits, Refused

log = logging.getLogger(__name__)

#: Commands waiting for the worker; more are answered "busy" instead of piling up in memory. A parsed command of
#: max_command_bytes can take some 25 times that as Python objects, so this also bounds what waiting commands hold.
QUEUE_SIZE = 16

#: Runs a command; may return the body of its ``command`` event (for an MQTT 5 response topic).
CommandHandler = Callable[[dict[str, Any]], "dict[str, Any] | None"]
#: Where an MQTT 5 request wants its answer: ``(response topic, correlation data)``.
Reply = tuple[str, "bytes | None"]
#: A queued command and its reply address.
_Item = tuple[dict[str, Any], "Reply | None"]


class CommandRefused(Refused):
    """A message that is not a command; ``code`` is ``malformed`` or ``oversized``."""


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
    """The device's command topics on a broker session, a daemon extension
    (:class:`edge.runtime.extension.Extension`): :meth:`start` subscribes ``<prefix>/<device>/command`` and
    ``<prefix>/<device>/paused/set`` and starts the worker, which runs what arrives through ``handler``; what it
    cannot run is answered. Constructing it subscribes nothing and starts no thread.

    Args:
        session: The broker session (:attr:`edge.runtime.publish.mqtt.MqttSink.session`).
        config: The device configuration (``device.id``, ``mqtt.topic_prefix``, ``mqtt.max_command_bytes``,
            ``mqtt.command_rate``, ``homeassistant.discovery_prefix``).
        handler: Runs each command on the worker thread (:meth:`edge.runtime.daemon.Daemon.handle_command`); None
            answers "no command handler" until :attr:`handler` is set.

    Stop it (:meth:`stop` or :meth:`close`) before the sink: answers stop, and the worker ends after the command in
    progress.
    """

    def __init__(self, session: BrokerSession, config: Config, handler: CommandHandler | None = None) -> None:
        m = config.mqtt
        self._session = session
        self._device_id = config.device.id
        self._command_topic = topic(m.topic_prefix, self._device_id, COMMAND)
        self._switch_topic = topic(m.topic_prefix, self._device_id, PAUSED_SET)
        self.max_bytes = m.max_command_bytes
        #: Runs each command (on the worker thread); None answers "no command handler".
        self.handler = handler
        # A command must not make the device write into topics others read as data.
        self._reply_forbidden = (f"{m.topic_prefix}/", f"{config.homeassistant.discovery_prefix}/")
        self._log = LogLimiter(log)
        self._limits = InboundLimits(noun="command", plural="commands", max_bytes=m.max_command_bytes,
                                     size_setting="mqtt.max_command_bytes", rate=m.command_rate,
                                     rate_setting="mqtt.command_rate", queue_size=QUEUE_SIZE,
                                     busy_detail="too many queued commands; try again later")
        #: Set by :meth:`start`; kept after :meth:`close`, whose ``closed`` flag silences late answers.
        self._inbound: GuardedInbound[_Item] | None = None

    @property
    def _open(self) -> bool:
        """Whether the channel answers: started and not closed (a late answer after close is not sent)."""
        return self._inbound is not None and not self._inbound.closed

    @property
    def dropped(self) -> int:
        """Messages dropped unanswered by the rate limit since start (0 before it)."""
        return self._inbound.dropped if self._inbound is not None else 0

    def on_message(self, topic: str, payload: bytes, properties: Properties | None = None) -> None:
        """Take a message as if it arrived on the command topic (its subscription does the same on the network
        thread): check and queue it, or answer why not.

        Raises:
            RuntimeError: The channel has not been started.
        """
        if self._inbound is None:
            raise RuntimeError("the command channel takes messages only after start()")
        self._inbound.receive(self._parse_command, topic, payload, properties)

    def start(self) -> None:
        """Start the worker and subscribe the command topic and the pause switch (the
        :class:`edge.runtime.extension.Extension` protocol).

        Raises:
            RuntimeError: The channel was started before (a second worker would answer every command twice).
        """
        if self._inbound is not None:
            raise RuntimeError("the command channel is started already")
        inbound = GuardedInbound(self._session, self._limits, self._run, self._refused, log, "mqtt-commands")
        try:
            # The plain switch shares the command topic's rate (gated before parsing too), size bound and queue.
            inbound.listen(self._command_topic, self._parse_command)
            inbound.listen(self._switch_topic, self._parse_switch)
        except BaseException:
            inbound.close(0)  # the run stops only extensions that started: this worker must not outlive it
            raise
        self._inbound = inbound

    def stop(self) -> None:
        """:meth:`close` (the :class:`edge.runtime.extension.Extension` protocol)."""
        self.close()

    def close(self, timeout: float = 1.0) -> None:
        """Stop answering and end the worker after the command in progress (nothing to do before :meth:`start`)."""
        inbound = self._inbound
        if inbound is not None and not inbound.closed:  # a second close has nothing left to wait for
            inbound.close(timeout)

    def _parse_command(self, topic: str, payload: bytes, properties: Properties | None) -> _Item:
        return parse_command(payload, self.max_bytes), self._reply_to(properties)

    def _parse_switch(self, topic: str, payload: bytes, properties: Properties | None) -> _Item:
        return parse_switch(payload, self.max_bytes), self._reply_to(properties)

    def _refused(self, refusal: Refused, topic: str, item: _Item | None, properties: Properties | None) -> None:
        if item is None:
            self._answer(None, False, refusal.detail, code=refusal.code, reply=self._reply_to(properties))
        else:
            cmd, reply = item
            self._answer(cmd["command"], False, refusal.detail, cmd, refusal.code, reply)

    def _reply_to(self, properties: Properties | None) -> Reply | None:
        """``(response topic, correlation data)`` of an MQTT 5 request, None when there is none or it is refused."""
        reply_topic = getattr(properties, "ResponseTopic", None) if properties is not None else None
        if not reply_topic:
            return None
        if (reply_topic.startswith("$") or any(c in reply_topic for c in "+#\0")
                or any(reply_topic == p.rstrip("/") or reply_topic.startswith(p) for p in self._reply_forbidden)):
            self._log.warning("reply topic", "MQTT command: not answering response topic %s (a wildcard, or inside "
                              "%s); answering on events only", clip(reply_topic), " or ".join(self._reply_forbidden))
            return None
        return reply_topic, getattr(properties, "CorrelationData", None)

    def _answer(self, command: str | None, ok: bool, detail: str, request: Any = None, code: str | None = None,
                reply: Reply | None = None) -> None:
        event = command_event(command, ok, detail, request, code)
        if not ok:
            self._log.warning(f"refused {event['code']}", "MQTT command %s not done (%s): %s", event["command"],
                              event["code"], event["detail"])
        if not self._open:
            return
        try:
            self._session.publish("events", event)
        except SinkError:  # the sink closed before this channel: there is no session left to answer on
            return
        self._send_reply(reply, event)

    def _send_reply(self, reply: Reply | None, body: dict[str, Any] | None) -> None:
        """The MQTT 5 response to a command: its event body, to the requester's topic, not through the outbox (it
        takes no seq: subscribers of the device's topics never see a gap for it)."""
        if reply is None or body is None or not self._open:
            return
        props = Properties(PacketTypes.PUBLISH)
        if reply[1] is not None:
            props.CorrelationData = reply[1]
        payload = json.dumps({"device_id": self._device_id, **body}, separators=(",", ":"))
        self._session.publish_raw(reply[0], payload, retain=False, qos=1, properties=props)

    def _run(self, item: _Item) -> None:
        cmd, reply = item
        handler = self.handler
        if handler is None:
            self._answer(cmd["command"], False, "this device has no command handler", cmd, reply=reply)
            return
        try:
            self._send_reply(reply, handler(cmd))
        except Exception as exc:
            self._log.log(logging.ERROR, "failed", "command %s failed", clip(cmd["command"]), exc_info=True)
            self._answer(cmd["command"], False, f"command failed: {clip(exc)}", cmd, reply=reply)
