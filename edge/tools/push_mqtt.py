"""Workstation side of the MQTT model push: publish a signed bundle to a device or a group and collect results.

The publisher subscribes to ``<prefix>/+/events`` first, then publishes the push (QoS 1) to
``<prefix>/<device>/model/push`` or ``<prefix>/group/<group>/model/push``, and waits for ``model_push`` events
that carry its ``push_id``. For one device it returns as soon as that device answered; for a group it waits
until ``expect`` devices answered or the timeout passed (it cannot know the group's size).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.protocol.broker import BrokerError, BrokerSettings, tls_context
from edge.protocol.push import build_push
from edge.protocol.signing import sign_bundle
from edge.tools.subscribe.client import BrokerUnreachable, SubscribeError, Subscriber

log = logging.getLogger(__name__)


class PushError(Exception):
    """The push could not be published (broker unreachable, refused, bad arguments)."""


@dataclass
class PushTarget:
    """Where a push goes: exactly one of ``device`` or ``group``."""

    prefix: str = "emotion"
    device: str | None = None
    group: str | None = None

    def topic(self) -> str:
        """The push topic of this target."""
        if bool(self.device) == bool(self.group):
            raise PushError("give exactly one of --device-id or --group")
        for what, name in (("--topic-prefix", self.prefix), ("--device-id", self.device), ("--group", self.group)):
            if name is not None and (not name or "+" in name or "#" in name or (what != "--topic-prefix" and "/" in name)):
                raise PushError(f"{what} {name!r} must be a plain topic level (no '+', '#' or '/')")
        if self.device:
            return f"{self.prefix}/{self.device}/model/push"
        return f"{self.prefix}/group/{self.group}/model/push"


@dataclass
class PushOutcome:
    """What came back: one result object per device that answered."""

    push_id: str
    topic: str
    payload_bytes: int
    results: dict[str, dict[str, Any]] = field(default_factory=dict)


@contextlib.contextmanager
def _subscribed_client(
    broker: BrokerSettings, client_id: str, topic: str, on_message: Callable[[Any, Any], None], hint: str = ""
) -> Iterator[Any]:
    """A connected paho client, subscribed (QoS 1) to ``topic`` with ``on_message(client, msg)``; disconnected
    on exit.

    Raises :class:`PushError` when the broker cannot be reached, refuses the connection or does not confirm
    the subscription.
    """
    sub = Subscriber(broker, [topic], on_message, client_id=client_id)
    try:
        sub.start()
    except BrokerUnreachable as exc:
        raise PushError(f"cannot reach the broker at {broker.describe()} ({exc.reason}){hint}") from None
    except SubscribeError as exc:
        raise PushError(str(exc)) from None
    try:
        yield sub.client
    finally:
        sub.stop()


def _json_object(payload: bytes) -> dict[str, Any] | None:
    """The payload as a JSON object, or None for anything else."""
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return body if isinstance(body, dict) else None


def publish_push(
    bundle_dir: Path | str,
    target: PushTarget,
    broker: BrokerSettings,
    sign_key: Path | str | None = None,
    wait_s: float = 60.0,
    expect: int | None = None,
    retain: bool = False,
    settle_s: float = 3.0,
) -> PushOutcome:
    """Sign (if ``sign_key`` is given) and publish a bundle; wait for the devices' results.

    Args:
        bundle_dir: The bundle folder; it must already hold ``manifest.sig`` unless ``sign_key`` is given.
        target: Device or group.
        broker: Broker connection settings.
        sign_key: Ed25519 private key to sign the bundle with first.
        wait_s: How long to wait for results (0: publish only).
        expect: Number of results to wait for (default 1 for a device, unbounded for a group).
        retain: Retain the push so devices that are offline now get it when they connect (a device ignores a
            push of the model it already runs, and refuses one it accepted before and has since rolled back or
            replaced). Without it, an older retained push on the topic is cleared first, so devices stop
            receiving it at every reconnect.
        settle_s: After the expected results arrived, listen this much longer: a model that fails on its first
            frames is rolled back and reported (``swap_failed``, same push_id), replacing the device's ``ok``.
    """
    if broker.tls.enabled:
        try:
            tls_context(broker.tls)  # a bad CA file fails before anything is signed or sent
        except BrokerError as exc:
            raise PushError(str(exc)) from None
    if sign_key is not None:
        sign_bundle(bundle_dir, sign_key)
    push_id = uuid.uuid4().hex
    payload = build_push(bundle_dir, push_id)
    topic = target.topic()
    if expect is None:
        expect = 1 if target.device else 0
    outcome = PushOutcome(push_id, topic, len(payload))
    done = threading.Event()

    def on_message(c: Any, msg: Any) -> None:
        body = _json_object(msg.payload)
        if body is None or body.get("event") != "model_push" or body.get("push_id") != push_id:
            return
        device = str(body.get("device_id", msg.topic.split("/")[-2]))
        earlier = outcome.results.get(device)
        if earlier is not None and earlier.get("rolled_back") and body.get("ok"):
            return  # the rollback is the final word, even if the device's "ok" arrives after it
        outcome.results[device] = body
        if expect and len(outcome.results) >= expect:
            done.set()

    with _subscribed_client(broker, f"emotion-push-{push_id[:8]}", f"{target.prefix}/+/events", on_message,
                            "; check --mqtt-host/--mqtt-port") as client:
        if not retain:  # a zero-length retained message removes an older retained push (devices ignore it)
            client.publish(topic, b"", qos=1, retain=True).wait_for_publish(timeout=30)
        info = client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=60)
        if not info.is_published():
            raise PushError("broker did not acknowledge the push within 60 s (payload too large for its message_size_limit?)")
        log.info("published %d bytes to %s (push_id %s)", len(payload), topic, push_id)
        if wait_s > 0 and done.wait(wait_s) and settle_s > 0:
            time.sleep(settle_s)  # later results for this push_id (a rollback) replace the first ones
    return outcome


def result_status(result: dict[str, Any]) -> str:
    """``ok``, ``rolled back`` (swapped in, failed, the old model runs again) or ``refused`` (not installed)."""
    if result.get("ok"):
        return "ok"
    return "rolled back" if result.get("rolled_back") else "refused"


def format_results(outcome: PushOutcome, expect: int | None = None) -> str:
    """A small table of per-device results for the terminal, and a count line (with ``expect``: how many of the
    expected devices did not answer)."""
    lines = [f"push {outcome.push_id} -> {outcome.topic} ({outcome.payload_bytes} bytes)"]
    if not outcome.results:
        lines.append("no device answered (offline, model push disabled, or not in that group)")
        return "\n".join(lines)
    width = max(len(d) for d in outcome.results)
    lines.append(f"{'device':<{width}}  {'result':<11}  {'code':<15}  {'model':<24}  reason")
    counts: dict[str, int] = {}
    for dev, r in sorted(outcome.results.items()):
        status = result_status(r)
        counts[status] = counts.get(status, 0) + 1
        lines.append(f"{dev:<{width}}  {status.upper() if status != 'ok' else status:<11}  {str(r.get('code') or '-'):<15}  "
                     f"{str(r.get('model_id') or '-'):<24}  {r.get('reason', '')}")
    summary = ", ".join(f"{counts[s]} {s}" for s in ("ok", "refused", "rolled back") if counts.get(s))
    missing = f", {expect - len(outcome.results)} of {expect} expected did not answer" if expect and expect > len(outcome.results) else ""
    lines.append(f"{len(outcome.results)} answered: {summary}{missing}")
    return "\n".join(lines)


def send_command(
    broker: BrokerSettings, prefix: str, device_id: str, command: dict[str, Any], wait_s: float = 60.0
) -> dict[str, Any]:
    """Publish a command to ``<prefix>/<device>/command`` and return the device's ``command`` event.

    Raises :class:`PushError` if the broker is unreachable or the device does not answer within ``wait_s``.
    """
    name = command.get("command")
    request_id = uuid.uuid4().hex
    command = {**command, "request_id": request_id}
    reply: dict[str, Any] = {}
    got = threading.Event()
    sent_at = time.time()

    def on_message(c: Any, msg: Any) -> None:
        body = _json_object(msg.payload)
        if body is None or body.get("event") != "command" or body.get("command") != name:
            return
        # Older answers may be re-delivered from the device's outbox, and other senders get answers too: the
        # answer that echoes this request's id counts (by id, not by time, as device clocks drift). A device
        # from before request ids echoes none: then only an answer stamped after the send counts.
        echoed = body.get("request_id")
        ts = body.get("ts")
        if echoed == request_id or (echoed is None and isinstance(ts, (int, float)) and ts >= sent_at - 1):
            reply.update(body)
            got.set()

    with _subscribed_client(broker, f"emotion-cmd-{uuid.uuid4().hex[:8]}", f"{prefix}/{device_id}/events",
                            on_message) as client:
        sent_at = time.time()
        client.publish(f"{prefix}/{device_id}/command", json.dumps(command), qos=1).wait_for_publish(timeout=30)
        if not got.wait(wait_s):
            raise PushError(f"device {device_id} did not answer the {name} command within {wait_s:.0f} s")
    return reply
