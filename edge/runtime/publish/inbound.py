"""Guarded inbound topics: what arrives where anyone may publish, bounded at every step.

The command channel (:mod:`edge.runtime.publish.command_channel`) and the model push receiver
(:mod:`edge.runtime.models.push`) take their messages through a :class:`GuardedInbound`, each with its own limits
(:class:`InboundLimits`), parsers, work and answers. Nobody's signature is checked before a message is read, so:

- at most ``rate`` messages per second (bursts of ``burst``) are looked at, a token bucket asked before a message
  is even parsed (the subscription's ``gate``, which lets :class:`edge.runtime.publish.bounded_client.BoundedClient`
  skim a flood straight off its read buffer); the rest are dropped unanswered and counted in the log once a
  minute, so a flood can fill neither the outbox with answers nor the log with lines;
- a payload above ``max_bytes`` is never read (the subscription's size cap) and is answered ``oversized``;
- the topic's parser runs on paho's network thread (cheap checks only) and may refuse a message with
  :class:`Refused` (answered with its code, e.g. ``malformed``) or ignore it (None);
- what it accepts waits in a queue of ``queue_size`` items, and a message beyond that is answered ``busy``, so
  waiting work bounds its memory;
- one worker thread does the work of each item in turn, so slow work never stalls the network, and an error there
  is logged (once a minute per cause) without ending the worker.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from edge.runtime.loglimit import LogLimiter
from edge.runtime.publish.base import BrokerSession
from edge.runtime.ratelimit import TokenBucket

if TYPE_CHECKING:
    from paho.mqtt.properties import Properties

T = TypeVar("T")

#: ``parse(topic, payload, properties) -> item``: None ignores the message, :class:`Refused` answers it.
Parse = Callable[[str, bytes, "Properties | None"], "T | None"]
#: ``answer(refusal, topic, item, properties)``: publish the refusal; ``item`` is the parsed one for ``busy``, else None.
Answer = Callable[["Refused", str, "T | None", "Properties | None"], None]


class Refused(ValueError):
    """A message refused before it is queued; ``code`` (``malformed``, ``oversized``, ``busy``...) and ``detail``
    make its answer."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class InboundLimits:
    """The bounds of one guarded topic set, and the words its answers and log lines use."""

    #: What one message is called ("command"), and several ("commands").
    noun: str
    plural: str
    #: Largest payload read, and the setting that names it (quoted in the ``oversized`` answer).
    max_bytes: int
    size_setting: str
    #: Messages looked at per second at most, in bursts of ``burst`` (default: ``rate``).
    rate: float
    burst: float | None = None
    #: The setting that names ``rate`` (quoted in the log line about a flood), if any.
    rate_setting: str | None = None
    #: Parsed items waiting for the worker; one more is answered ``busy`` with ``busy_detail``.
    queue_size: int = 16
    busy_detail: str = "too many queued messages; try again later"


class GuardedInbound(Generic[T]):
    """Subscriptions on one broker session with a shared rate, size cap, queue and worker (see the module doc).

    The worker starts at once; :meth:`listen` subscribes a topic, :meth:`close` stops answering and ends the worker.

    Args:
        session: The broker session to subscribe on.
        limits: Rate, size and queue bounds.
        work: Does one accepted item (on the worker thread).
        answer: Publishes a refusal (on the network thread); not called after :meth:`close`.
        logger: The owner's logger (its flood and failure lines are the owner's).
        thread_name: Name of the worker thread.
    """

    def __init__(self, session: BrokerSession, limits: InboundLimits, work: Callable[[T], None],
                 answer: Answer[T], logger: logging.Logger, thread_name: str) -> None:
        self._session = session
        self.limits = limits
        self._work = work
        self._answer = answer
        self._log = LogLimiter(logger)
        self._bucket = TokenBucket(limits.rate, limits.burst)
        #: Messages :meth:`gate` admitted that have not reached :meth:`receive` yet (network thread only).
        self._gated = 0
        #: Messages dropped unanswered by the rate limit since start.
        self.dropped = 0
        #: Set by :meth:`close`: nothing is answered any more.
        self.closed = False
        self._queue: queue.Queue[T | None] = queue.Queue(maxsize=limits.queue_size)
        self._worker = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self._worker.start()

    def listen(self, topic: str, parse: Parse[T]) -> None:
        """Subscribe to ``topic`` (no wildcards: the flood gate matches it exactly) with these bounds; ``parse`` turns
        each message into a work item."""
        self._session.subscribe(topic, lambda t, p, props: self.receive(parse, t, p, props), with_properties=True,
                                max_bytes=self.limits.max_bytes, on_oversized=self.on_oversized, gate=self.gate)

    def gate(self, topic: str) -> bool:
        """Whether a message is taken, asked before it is even parsed (network thread): a flood beyond the rate is
        dropped unread and counted; what passes is not counted again on arrival."""
        if self._admit():
            self._gated += 1
            return True
        return False

    def receive(self, parse: Parse[T], topic: str, payload: bytes, properties: Properties | None = None) -> None:
        """A message arrived (network thread): within the rate, parse and queue it, or answer why not."""
        if not self._arrived():
            return
        try:
            item = parse(topic, payload, properties)
        except Refused as exc:
            self._refuse(exc, topic, None, properties)
            return
        if item is None:
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._refuse(Refused("busy", self.limits.busy_detail), topic, item, properties)

    def on_oversized(self, topic: str, size: int) -> None:
        """A message above ``max_bytes`` was dropped unread (network thread): answer ``oversized``."""
        if self._arrived():
            lim = self.limits
            self._refuse(Refused("oversized", f"{lim.noun} is {size} bytes, above {lim.size_setting} = "
                                 f"{lim.max_bytes}; it was not read"), topic, None, None)

    def close(self, timeout: float = 1.0) -> None:
        """Stop answering and end the worker after the item in progress (waiting at most ``timeout`` seconds)."""
        self.closed = True
        deadline = time.monotonic() + timeout
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._worker.join(max(0.0, deadline - time.monotonic()))

    def _arrived(self) -> bool:
        """Admitted by :meth:`gate` already, or now by the rate."""
        if self._gated:
            self._gated -= 1
            return True
        return self._admit()

    def _admit(self) -> bool:
        if self._bucket.take():
            return True
        self.dropped += 1
        lim = self.limits
        rate = f"{lim.rate_setting} = {lim.rate:g}" if lim.rate_setting else f"{lim.rate:g}"
        self._log.warning("rate", "dropping %s unanswered: more than %s per second (%d dropped since start)",
                          lim.plural, rate, self.dropped)
        return False

    def _refuse(self, refusal: Refused, topic: str, item: T | None, properties: Properties | None) -> None:
        if not self.closed:
            self._answer(refusal, topic, item, properties)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._work(item)
            except Exception as exc:  # the worker must outlive any one item, so later messages are still handled
                self._log.log(logging.ERROR, f"failed {type(exc).__name__}", "%s worker: unexpected error",
                              self.limits.noun, exc_info=True)
