"""Receive signed model pushes over MQTT and swap them in, with rollback.

Topics: ``<prefix>/<device_id>/model/push`` and ``<prefix>/group/<group>/model/push`` for each group in
``model_push.groups``. Messages are decoded and verified by :func:`edge.protocol.push.parse_push` (size cap,
signature against ``model_push.trusted_keys``, manifest schema, sha256), then the bundle is written to a
staging folder, loaded into a real interpreter and smoke-tested (:func:`edge.runtime.models.check.check_bundle`),
installed into the :class:`edge.runtime.models.store.ModelStore` and handed to the
:class:`edge.runtime.models.manager.ModelManager`, which links it as ``current`` (the old one becomes ``previous``)
and swaps it in. If it cannot load or run, the ``current`` link is rolled back, so the running model and the one a
restart would load stay the old one.

Every push ends with a result object, published as an ``events`` message (``event: "model_push"``) and kept
by the model manager for the ``model_push`` block of the status (as are the manager's own rollbacks, which this
receiver publishes).

Whoever may publish on a push topic may send anything, so the push topics are guarded inbound topics
(:mod:`edge.runtime.publish.inbound`), like the command topics, with their own limits: a payload above
``model_push.max_bytes`` is never read (answered ``oversized``), at most :data:`PUSH_RATE` messages per second
are looked at (the rest are dropped unread and counted in the log), at most :data:`QUEUE_SIZE` pushes wait while
one is handled (one more is answered ``busy``), and a worker thread does the verifying and loading, never paho's
network thread. Every text field of a result is clipped (a reason to :data:`REASON_CHARS`, an unverified id to
:data:`edge.protocol.envelope.ECHO_CHARS`), and a refusal is logged once per code, then counted.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.bundle import MANIFEST_FILE, BundleError, Manifest
from edge.protocol.envelope import clip
from edge.protocol.push import PushRejected, parse_push, peek_push_id
from edge.protocol.signing import SignatureError, load_public_key
from edge.protocol.topics import push_topics
from edge.runtime.loglimit import LogLimiter
from edge.runtime.models.check import check_bundle
from edge.runtime.models.manager import ModelManager, SwapFailed
from edge.runtime.models.store import parse_created
from edge.runtime.publish.base import BrokerSession
from edge.runtime.publish.inbound import GuardedInbound, InboundLimits, Refused

log = logging.getLogger(__name__)

#: Pushes waiting while one is being handled; more are rejected as busy rather than piling up in memory.
QUEUE_SIZE = 2
#: Push messages looked at per second at most, in bursts of :data:`PUSH_BURST` (a real push comes minutes apart;
#: a fleet tool may retry a few).
PUSH_RATE = 2.0
PUSH_BURST = 20
#: Longest ``reason`` of a result (our text; a field of the payload quoted in it may otherwise be megabytes).
REASON_CHARS = 400
#: Result fields that may carry unverified text from the payload (model ids come from the signed manifest).
_ECHOED = ("push_id", "key_id")
#: Longest wait for the push in progress when the receiver stops.
STOP_WAIT_S = 30.0
#: A queued push: its topic and payload.
_Item = tuple[str, bytes]


class ModelPushReceiver:
    """Daemon extension (:class:`edge.runtime.extension.Extension`) that accepts signed model pushes.

    Args:
        config: The daemon configuration (sections ``model_push``, ``mqtt``, ``device``, ``classifier``).
        session: The broker session (:attr:`edge.runtime.publish.mqtt.MqttSink.session`): push topics are
            subscribed on it, results published through it.
        models: The model manager: the running model, the store, the swap.
        publish_status: Asks the daemon for a fresh status (its ``model_push`` block shows the result).
    """

    def __init__(self, config: Any, session: BrokerSession, models: ModelManager,
                 publish_status: Callable[[], None] | None = None):
        self.config = config
        self.session = session
        self.models = models
        self.store = models.store
        self._publish_status = publish_status
        self._inbound: GuardedInbound[_Item] | None = None
        self._trusted: list[Ed25519PublicKey] = []
        self._key_errors: list[str] = []
        self._log = LogLimiter(log)

    @property
    def last_result(self) -> dict[str, Any] | None:
        """The last result published (with its time), as the status's ``model_push`` block shows it."""
        return self.models.last_report

    # ----- lifecycle -----
    def topics(self) -> list[str]:
        """The topics this receiver subscribes to."""
        return push_topics(self.config.mqtt.topic_prefix, self.config.device.id, list(self.config.model_push.groups))

    def _load_keys(self) -> None:
        self._trusted, self._key_errors = [], []
        for path in self.config.model_push.trusted_keys:
            try:
                self._trusted.append(load_public_key(path))
            except SignatureError as exc:
                # A bad key file must not stop the daemon: pushes are then refused with this reason.
                self._key_errors.append(str(exc))
                log.error("model push: %s", exc)
        if not self._trusted:
            log.warning("model push is enabled but no trusted key could be loaded; every push will be rejected")

    def start(self) -> None:
        """Load the trusted keys, subscribe to the push topics and start the worker thread.

        A rollback done at start (a pushed model that no longer loaded, see :mod:`edge.runtime.models.manager`)
        is reported first; the manager's later rollbacks are reported as they happen.
        """
        self._load_keys()
        limits = InboundLimits(noun="push", plural="model push messages", max_bytes=self.config.model_push.max_bytes,
                               size_setting="model_push.max_bytes", rate=PUSH_RATE, burst=PUSH_BURST,
                               queue_size=QUEUE_SIZE, busy_detail="another model push is in progress; retry later")
        self._inbound = GuardedInbound(self.session, limits, self._work, self._refused, log, "model-push")
        for t in self.topics():
            self._inbound.listen(t, self._parse)
        log.info("model push: listening on %s", ", ".join(self.topics()))
        if self.config.classifier.model is not None:
            log.warning("classifier.model is set (%s): pushed models run until the next restart, which loads that "
                        "folder again; unset it to keep the pushed model", self.config.classifier.model)
        self.models.connect(self.announce)

    def stop(self) -> None:
        """Stop answering and end the worker after the push in progress (if any)."""
        if self._inbound is None:
            return
        self._inbound.close(STOP_WAIT_S)
        self._inbound = None

    @property
    def dropped(self) -> int:
        """Push messages dropped unanswered by the rate limit since start."""
        return self._inbound.dropped if self._inbound is not None else 0

    @staticmethod
    def _parse(topic: str, payload: bytes, properties: object) -> _Item | None:
        # Network thread: never verify or load here, only queue. A zero-length retained message only clears an old
        # retained push: nothing to do.
        return (topic, bytes(payload)) if payload else None

    def _work(self, item: _Item) -> None:
        self.handle(*item)

    def _refused(self, refusal: Refused, topic: str, item: _Item | None, properties: object) -> None:
        push_id = peek_push_id(item[1]) if item is not None else None
        self._report(topic, push_id, PushRejected(refusal.code, refusal.detail))

    # ----- the work -----
    def handle(self, topic: str, payload: bytes) -> dict[str, Any]:
        """Verify, install and swap in one push; publish and return the result object."""
        started = time.monotonic()
        push_id = peek_push_id(payload)
        try:
            result = self._apply(topic, payload)
        except PushRejected as exc:
            return self._report(topic, push_id, exc, started=started)
        except Exception as exc:  # a full disk, a broken store: the sender must still get an answer
            log.exception("model push: unexpected error")
            return self._report(topic, push_id, PushRejected("internal", f"the device failed to handle the push "
                                                             f"({exc.__class__.__name__}: {exc})"), started=started)
        return self._publish(result, started)

    def _apply(self, topic: str, payload: bytes) -> dict[str, Any]:
        if not self._trusted:
            detail = "; ".join(self._key_errors) or "model_push.trusted_keys is empty"
            raise PushRejected("untrusted_key", f"no trusted key loaded ({detail})")
        push = parse_push(payload, self._trusted, self.config.model_push.max_bytes)
        base: dict[str, Any] = {
            "topic": topic,
            "push_id": push.push_id or None,
            "model_id": push.manifest.model_id,
            "sha256": push.manifest.sha256,
            "key_id": push.key_id,
            "previous_model_id": self.models.model_id,
            "rolled_back": False,
        }
        # A retained or repeated push of the running bundle (same manifest bytes, so same model) is a no-op.
        try:
            same = (self.models.bundle_dir / MANIFEST_FILE).read_bytes() == push.manifest_bytes
        except OSError:
            same = False
        if same:
            return {**base, "ok": True, "code": "already_running", "reason": "this model is already running"}

        self._refuse_replay(push.manifest, base)

        # Stage inside the store folder so the final install is a rename on the same file system.
        self.store.root.mkdir(parents=True, exist_ok=True)
        staging = self.store.root / f".push-{uuid.uuid4().hex[:12]}"
        try:
            push.write_bundle(staging)
            try:
                check_bundle(staging, self.config.classifier.threads, _runtime(self.config))
            except BundleError as exc:
                raise PushRejected("model_check", str(exc)) from None
            installed = self.store.install(staging)
        except OSError as exc:
            raise PushRejected("model_check", f"cannot store the model ({exc}); is the state folder full or read-only?") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

        try:
            self.models.adopt_push(installed, push.manifest, base["push_id"])
        except SwapFailed as exc:
            log.error("model push: %s failed after the swap (%s); rolled back", push.manifest.model_id, exc)
            reason = f"model failed to load or run on the device ({exc}); rolled back to {base['previous_model_id']}"
            raise PushRejected("swap_failed", reason, {**base, "rolled_back": True}) from None
        return {**base, "ok": True, "code": "ok", "reason": f"now running {push.manifest.model_id}"}

    def _refuse_replay(self, manifest: Manifest, base: dict[str, Any]) -> None:
        # Signatures prove who made a bundle, not when it was sent: anyone who can publish on the push topic
        # could replay an old signed push to bring back a worse model. So a push older than the newest one
        # this device ever accepted is refused unless the device's own config allows downgrades.
        if self.config.model_push.allow_downgrade:
            return
        seen = self.store.newest_push()
        if seen is None:
            return
        created = parse_created(manifest.created)
        newest = parse_created(seen["created"])
        # Equal counts too (the running bundle was let through above): a retained push re-delivered after a
        # rollback or an SSH push must not quietly bring that model back.
        if created is None or (newest is not None and created <= newest):
            what = ("was already accepted by this device and has since been rolled back or replaced"
                    if created == newest else f"is older than {seen['model_id']} (created {seen['created']}) that "
                    "this device already accepted")
            raise PushRejected(
                "downgrade",
                f"model {manifest.model_id} (created {manifest.created}) {what}; replayed or outdated pushes are "
                "refused: re-export the model, roll back on the device with 'edge rollback', or set model_push.allow_downgrade = true",
                base,
            )

    # ----- reporting -----
    def _report(self, topic: str, push_id: str | None, exc: PushRejected, started: float | None = None) -> dict[str, Any]:
        extra = exc.details or {
            "topic": topic,
            "push_id": push_id,
            "model_id": None,
            "sha256": None,
            "key_id": None,
            "previous_model_id": self.models.model_id,
            "rolled_back": False,
        }
        result = self._publish({**extra, "ok": False, "code": exc.code, "reason": exc.reason}, started)
        self._log.warning(f"rejected {exc.code}", "model push rejected (%s): %s", exc.code, result["reason"])
        return result

    def announce(self, result: dict[str, Any]) -> None:
        """Publish a result of the model manager's own (a rollback at start or on a frame) like a push's."""
        self._publish(result, None)

    def _publish(self, result: dict[str, Any], started: float | None) -> dict[str, Any]:
        if started is not None:
            result["duration_s"] = round(time.monotonic() - started, 3)
        result["running_model_id"] = self.models.model_id
        for key in _ECHOED:
            if result.get(key) is not None:
                result[key] = clip(result[key])
        if result.get("reason") is not None:
            result["reason"] = clip(result["reason"], REASON_CHARS)
        # The status block carries its own time; the event has the envelope's ts.
        self.models.record(result)
        body = {"event": "model_push", "track_id": None, **result}
        try:
            self.session.publish("events", body)
        except Exception:
            log.exception("model push: cannot publish the result event")
        # Status carries the result too (its model_push block): ask the daemon for a fresh one.
        if self._publish_status is not None:
            try:
                self._publish_status()
            except Exception:
                log.exception("model push: cannot publish status")
        if result["ok"]:
            log.info("model push %s: %s", result.get("push_id"), result["reason"])
        return result


def _runtime(config: Any) -> str | None:
    runtime = config.classifier.runtime
    return None if runtime == "auto" else runtime
