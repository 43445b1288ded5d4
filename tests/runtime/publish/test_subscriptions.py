"""The device's subscriptions (edge.runtime.publish.subscriptions): topic filters with wildcards reach their
callbacks, a failing callback stays contained, and SUBACK bookkeeping says when every filter is confirmed. Real
paho messages and reason codes; the broker side is covered by the MQTT sink tests."""

from __future__ import annotations

import logging

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.runtime.publish.subscriptions import Subscriptions

GRANTED = ReasonCode(PacketTypes.SUBACK, identifier=1)
REFUSED = ReasonCode(PacketTypes.SUBACK, identifier=0x80)


def message(topic: str, payload: bytes, properties: Properties | None = None) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(topic=topic.encode())
    msg.payload = payload
    if properties is not None:
        msg.properties = properties
    return msg


def test_a_message_reaches_every_matching_filter_and_no_other():
    subs = Subscriptions()
    got: list[tuple[str, str, bytes]] = []
    subs.add("emotion/dev1/command", lambda t, p: got.append(("exact", t, p)), with_properties=False)
    subs.add("emotion/+/command", lambda t, p: got.append(("plus", t, p)), with_properties=False)
    subs.add("emotion/dev1/model/#", lambda t, p: got.append(("model", t, p)), with_properties=False)
    subs.dispatch(message("emotion/dev1/command", b'{"command":"publish_status"}'))
    assert got == [("exact", "emotion/dev1/command", b'{"command":"publish_status"}'),
                   ("plus", "emotion/dev1/command", b'{"command":"publish_status"}')]
    got.clear()
    subs.dispatch(message("emotion/dev2/state/paused", b"ON"))
    assert got == []
    assert subs.topics() == ["emotion/dev1/command", "emotion/+/command", "emotion/dev1/model/#"]


def test_a_failing_callback_is_logged_and_the_others_still_run(caplog):
    subs = Subscriptions()
    got: list[bytes] = []

    def broken(topic: str, payload: bytes) -> None:
        raise RuntimeError("handler bug")

    subs.add("emotion/dev1/command", broken, with_properties=False)
    subs.add("emotion/#", lambda t, p: got.append(p), with_properties=False)
    with caplog.at_level(logging.ERROR, logger="edge.runtime.publish.subscriptions"):
        subs.dispatch(message("emotion/dev1/command", b"x"))  # never raises to the network thread
    assert got == [b"x"]
    assert any("emotion/dev1/command failed" in r.getMessage() for r in caplog.records)


def test_a_callback_asking_for_properties_gets_the_messages_mqtt5_properties():
    subs = Subscriptions()
    seen: list[tuple[bytes, object]] = []
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "answers/1"
    subs.add("emotion/dev1/command", lambda t, p, pr: seen.append((p, pr)), with_properties=True)
    subs.dispatch(message("emotion/dev1/command", b"v5", props))
    assert seen == [(b"v5", props)]
    # Re-registered without properties: the same filter now gets the two-argument call.
    subs.add("emotion/dev1/command", lambda t, p: seen.append((p, None)), with_properties=False)
    subs.dispatch(message("emotion/dev1/command", b"v3"))
    assert seen[-1] == (b"v3", None)


def test_all_acked_only_after_every_filter_is_granted_in_this_session():
    subs = Subscriptions()
    subs.add("a/command", lambda t, p: None, with_properties=False)
    subs.add("a/model/#", lambda t, p: None, with_properties=False)
    connected = [True]
    subs.sent(7, ["a/command", "a/model/#"])
    assert subs.acknowledged(7, [GRANTED, REFUSED]) == [("a/model/#", REFUSED)]
    assert not subs.wait_all_acked(lambda: connected[0], timeout=0)  # one filter was refused
    subs.sent(8, ["a/model/#"])
    assert subs.acknowledged(8, [GRANTED]) == []
    assert subs.wait_all_acked(lambda: connected[0], timeout=0)
    connected[0] = False
    assert not subs.wait_all_acked(lambda: connected[0], timeout=0)  # acknowledged, but no session is up
    connected[0] = True
    subs.forget_session()  # a new session must be acknowledged again
    assert not subs.wait_all_acked(lambda: connected[0], timeout=0)
    assert subs.acknowledged(99, [GRANTED]) == []  # a SUBACK for no known SUBSCRIBE changes nothing
    assert not subs.wait_all_acked(lambda: connected[0], timeout=0)
