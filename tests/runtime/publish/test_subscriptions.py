"""The device's subscription table (edge.runtime.publish.subscriptions): dispatch by topic filter, SUBACK
bookkeeping per session, and a failing callback that does not stop the others."""

from __future__ import annotations

import logging

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from edge.runtime.publish.subscriptions import Subscriptions

GRANTED = ReasonCode(PacketTypes.SUBACK, "Granted QoS 1")
REFUSED = ReasonCode(PacketTypes.SUBACK, "Not authorized")


def _message(topic: str, payload: bytes) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(topic=topic.encode())
    msg.payload = payload
    return msg


def test_every_matching_filter_gets_the_message_and_a_failing_one_is_logged(caplog):
    subs = Subscriptions()
    got: list[tuple[str, str, bytes]] = []

    def fail(topic: str, payload: bytes) -> None:
        raise RuntimeError("handler bug")

    subs.add("emotion/group/+/model/push", lambda t, p: got.append(("group", t, p)), with_properties=False)
    subs.add("emotion/#", fail, with_properties=False)
    subs.add("emotion/dev1/command", lambda t, p, props: got.append(("command", t, p)), with_properties=True)
    subs.dispatch(_message("emotion/group/lab/model/push", b"bundle"))
    subs.dispatch(_message("emotion/dev1/command", b"{}"))
    subs.dispatch(_message("other/topic", b"x"))
    assert got == [("group", "emotion/group/lab/model/push", b"bundle"), ("command", "emotion/dev1/command", b"{}")]
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in failures] == ["handler for MQTT topic emotion/group/lab/model/push failed",
                                                  "handler for MQTT topic emotion/dev1/command failed"]


def test_all_acked_only_when_every_topic_is_granted_in_this_session():
    subs = Subscriptions()
    subs.add("a/1", lambda t, p: None, with_properties=False)
    subs.add("a/2", lambda t, p: None, with_properties=False)
    assert sorted(subs.topics()) == ["a/1", "a/2"]
    subs.sent(7, ["a/1", "a/2"])
    assert subs.acknowledged(7, [GRANTED, REFUSED]) == [("a/2", REFUSED)]
    assert not subs.wait_all_acked(lambda: True, 0.0), "a refused topic is not acknowledged"
    subs.sent(8, ["a/2"])
    assert subs.acknowledged(8, [GRANTED]) == []
    assert not subs.wait_all_acked(lambda: False, 0.0), "nothing counts while disconnected"
    assert subs.wait_all_acked(lambda: True, 0.0)
    subs.forget_session()
    assert not subs.wait_all_acked(lambda: True, 0.0), "a new session must be acknowledged afresh"
    assert subs.acknowledged(7, [GRANTED]) == [], "a SUBACK of the old session counts for nothing"
    assert not subs.wait_all_acked(lambda: True, 0.0)
