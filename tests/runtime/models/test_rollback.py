"""Rollback when a pushed model fails *after* the swap, in-process with a real assembled daemon, MqttSink and
Mosquitto.

Every model that reaches the swap has already loaded and run a smoke inference in the same runtime on this
machine (the receiver's check and ``ModelManager.swap`` run the same interpreter code), so no real model file
can pass the first and fail the second here. What fails after a swap on a device (a runtime that aborts on
real faces, out of memory on a Pi) is therefore injected at one seam each: the manager's ``swap`` raising, and
the new classifier raising on a frame. Everything else (signature, store, links, events, status) is real.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from edge.bundle import read_manifest
from edge.config import parse_config
from edge.protocol.broker import BrokerSettings
from edge.runtime.assemble import assemble
from edge.runtime.capture.base import Frame
from edge.runtime.models.manager import ModelManager
from edge.runtime.models.push import ModelPushReceiver
from edge.runtime.models.store import ModelStore
from edge.runtime.publish.mqtt import MqttSink
from edge.tools.push_mqtt import PushTarget, publish_push
from tests.support.mqtt import Collector, validator
from tests.support.push import make_keys, restamped_signed_copy, second_bundle, signed_copy

pytestmark = pytest.mark.slow


class SwapFails:
    """The seam: the device cannot load models whose id is in ``refuse`` (as a runtime crash would)."""

    refuse: set[str] = set()

    @classmethod
    def install(cls, models: ModelManager) -> None:
        real = models.swap

        def swap(bundle_dir):
            if read_manifest(bundle_dir).model_id in cls.refuse:
                raise RuntimeError("interpreter aborted while loading (simulated device failure)")
            return real(bundle_dir)

        models.swap = swap


def push_receiver(daemon) -> ModelPushReceiver:
    """The model push extension the assembly registered."""
    return next(e for e in daemon.extensions if isinstance(e, ModelPushReceiver))


def last_event_with_code(collector: Collector, code: str, timeout: float = 10.0) -> dict:
    """The newest event with this result code, waited for: events travel apart from the pusher's reply, which
    may arrive first."""
    assert collector.wait_for(lambda c: any(e.get("code") == code for e in c.envelopes("events")), timeout), code
    return [e for e in collector.envelopes("events") if e.get("code") == code][-1]


@pytest.fixture
def rig(tmp_path, broker, tiny_bundle):
    private, public = make_keys(tmp_path)
    state = tmp_path / "state"
    store = ModelStore.for_state_dir(state)
    store.activate(store.install(tiny_bundle))
    cfg = parse_config({
        "device": {"id": "pi-rb", "state_dir": str(state)},
        "source": {"uri": "demo"},
        "mqtt": {"host": broker.host, "port": broker.port},
        "homeassistant": {"enabled": False},
        "model_push": {"enabled": True, "trusted_keys": [str(public)]},
    })
    sink = MqttSink(cfg)
    with assemble(cfg, sink=sink, session=sink.session) as daemon:
        SwapFails.install(daemon.models)
        receiver = push_receiver(daemon)
        # Started as the daemon's run starts them (the command topics, then the push receiver), without frames.
        for ext in daemon.extensions:
            ext.start()
        assert sink.wait_connected(10)
        collector = Collector(broker, topic="emotion/pi-rb/events", client_id="rb-watch").start()
        assert sink.wait_subscribed(10), "the command and push topics must be subscribed before anything is sent"
        yield daemon, receiver, store, private, broker, collector
        for ext in reversed(daemon.extensions):
            ext.stop()
        collector.stop()
    sink.close(2)


def test_model_that_fails_to_load_after_the_swap_is_rolled_back(rig, tmp_path, tiny_bundle):
    daemon, receiver, store, private, broker, collector = rig
    old_id = daemon.model_id
    new = signed_copy(second_bundle(), tmp_path / "b", private)
    SwapFails.refuse = {read_manifest(new).model_id}
    try:
        out = publish_push(new, PushTarget(device="pi-rb"), BrokerSettings(broker.host, broker.port), wait_s=60)
    finally:
        SwapFails.refuse = set()
    r = out.results["pi-rb"]
    assert r["ok"] is False and r["code"] == "swap_failed" and r["rolled_back"] is True, r
    assert "rolled back" in r["reason"] and r["running_model_id"] == old_id
    assert daemon.model_id == old_id
    assert read_manifest(store.current()).model_id == old_id  # a restart loads the old model too
    assert receiver.last_result["code"] == "swap_failed"
    assert daemon.status_body()["model_push"]["rolled_back"] is True
    event = last_event_with_code(collector, "swap_failed")
    assert event["model_id"] == read_manifest(new).model_id and event["rolled_back"] is True
    validator().validate(event)


def test_model_that_fails_on_a_frame_after_the_swap_is_rolled_back_in_the_store_too(rig, tmp_path):
    daemon, receiver, store, private, broker, collector = rig
    old_id = daemon.model_id
    new = signed_copy(second_bundle(), tmp_path / "b", private)
    out = publish_push(new, PushTarget(device="pi-rb"), BrokerSettings(broker.host, broker.port), wait_s=60)
    assert out.results["pi-rb"]["ok"]
    new_id = read_manifest(new).model_id
    assert daemon.model_id == new_id and read_manifest(store.current()).model_id == new_id

    def broken(*_a, **_k):  # the seam: the new model's runtime fails on real faces
        raise RuntimeError("invoke failed (simulated)")

    daemon.models.classifier.classify = broken
    frame = Frame(image=np.full((480, 640, 3), 127, np.uint8), ts=time.time(), index=0)
    daemon.models.classify(frame.image, [(200.0, 120.0, 200.0, 200.0)])
    assert daemon.model_id == old_id
    assert read_manifest(store.current()).model_id == old_id
    event = last_event_with_code(collector, "swap_failed")
    assert event["model_id"] == new_id and event["rolled_back"] is True
    assert event["push_id"] == out.push_id, "the rollback answers the push that installed the model"
    validator().validate(event)


def test_reload_command_over_mqtt_loads_the_model_the_store_links_as_current(rig):
    """The SSH push's reload = "mqtt" path: swap the store link on disk, then a reload_model command."""
    from edge.tools.push_mqtt import send_command

    daemon, receiver, store, private, broker, collector = rig
    store.activate(store.install(second_bundle()))
    new_id = read_manifest(second_bundle()).model_id
    reply = send_command(BrokerSettings(broker.host, broker.port), "emotion", "pi-rb",
                         {"command": "reload_model", "bundle_dir": str(store.root / "current")}, wait_s=30)
    assert reply["ok"] is True and new_id in reply["detail"], reply
    assert daemon.model_id == new_id


def test_replayed_or_older_pushes_are_refused_unless_downgrades_are_allowed(rig, tmp_path, tiny_bundle):
    """A signature says who made a bundle, not when it was sent: an old signed push replayed later must not
    bring back an older model, while a local rollback and an explicit opt-in still can."""
    from edge.protocol.push import build_push

    daemon, receiver, store, private, broker, collector = rig
    topic = "emotion/pi-rb/model/push"
    a = build_push(restamped_signed_copy(second_bundle(), tmp_path / "a", private, "2026-01-02T00:00:00+00:00"))
    older = build_push(restamped_signed_copy(tiny_bundle, tmp_path / "old", private, "2026-01-01T00:00:00Z"))
    newer = build_push(restamped_signed_copy(tiny_bundle, tmp_path / "new", private, "2026-01-03T00:00:00+00:00"))

    assert receiver.handle(topic, a)["code"] == "ok"
    assert store.newest_push()["created"] == "2026-01-02T00:00:00+00:00"
    running = daemon.model_id

    result = receiver.handle(topic, older)
    assert result["ok"] is False and result["code"] == "downgrade", result
    assert "allow_downgrade" in result["reason"] and "\n" not in result["reason"]
    assert daemon.model_id == running and read_manifest(store.current()).model_id == running

    assert receiver.handle(topic, newer)["code"] == "ok"
    replay = receiver.handle(topic, a)  # the very message that was accepted first, sent again
    assert replay["code"] == "downgrade" and daemon.model_id == read_manifest(tiny_bundle).model_id
    last_event_with_code(collector, "downgrade")
    for env in collector.envelopes("events"):
        validator().validate(env)

    # A local rollback does not lower the mark, and the rolled-back push sent again (a retained message after
    # a reconnect) does not bring its model back; the device's own config can opt in to downgrades.
    store.rollback()
    assert store.newest_push()["created"] == "2026-01-03T00:00:00+00:00"
    daemon.models.swap(store.current())
    rolled_back_to = daemon.model_id
    again = receiver.handle(topic, newer)
    assert again["code"] == "downgrade" and "already accepted" in again["reason"], again
    assert daemon.model_id == rolled_back_to
    cfg = receiver.config
    receiver.config = dataclasses.replace(cfg, model_push=dataclasses.replace(cfg.model_push, allow_downgrade=True))
    assert receiver.handle(topic, older)["code"] == "ok"
    assert store.newest_push()["created"] == "2026-01-03T00:00:00+00:00"


def test_a_pinned_classifier_model_is_warned_about_when_pushes_are_accepted(tmp_path, broker, tiny_bundle, caplog):
    """classifier.model wins over the store at every start, so a push would silently not survive a restart."""
    _, public = make_keys(tmp_path)
    cfg = parse_config({
        "device": {"id": "pi-pin", "state_dir": str(tmp_path / "state")},
        "source": {"uri": "demo"},
        "classifier": {"model": str(tiny_bundle)},
        "mqtt": {"host": broker.host, "port": broker.port},
        "homeassistant": {"enabled": False},
        "model_push": {"enabled": True, "trusted_keys": [str(public)]},
    })
    sink = MqttSink(cfg)
    try:
        with assemble(cfg, sink=sink, session=sink.session) as daemon:
            receiver = push_receiver(daemon)
            try:
                with caplog.at_level("WARNING", logger="edge.runtime.models.push"):
                    receiver.start()
            finally:
                receiver.stop()
    finally:
        sink.close(2)
    assert any("classifier.model is set" in r.getMessage() and "unset it" in r.getMessage() for r in caplog.records)
