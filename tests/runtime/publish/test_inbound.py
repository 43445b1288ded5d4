"""The guarded inbound topics (edge.runtime.publish.inbound): size cap, rate, bounded queue, worker and answers,
over a real Mosquitto where messages travel, and driven directly where only the order of checks matters."""

from __future__ import annotations

import logging
import re
import threading

import paho.mqtt.client as mqtt

from edge.runtime.publish.inbound import GuardedInbound, InboundLimits, Refused
from edge.runtime.publish.mqtt import MqttSink
from tests.support.mqtt import RecordingSession, sink_config, wait_until

TOPIC = "lab/dev1/things"
log = logging.getLogger("tests.inbound")


def _limits(**overrides) -> InboundLimits:
    # A rate this small adds no token while a test runs: exactly ``burst`` messages are looked at.
    options = {"noun": "thing", "plural": "things", "max_bytes": 100, "size_setting": "test.max_bytes",
               "rate": 0.001, "burst": 6, "queue_size": 1, "busy_detail": "busy now"}
    return InboundLimits(**{**options, **overrides})


def _parse(topic: str, payload: bytes, properties) -> str | None:
    if payload == b"bad":
        raise Refused("malformed", "not a thing")
    return payload.decode() if payload else None  # an empty message is ignored


class Recorder:
    """The owner's side: work that blocks on the first item until released, and the answers it publishes."""

    def __init__(self) -> None:
        self.done: list[str] = []
        self.answers: list[tuple[str, str, str | None]] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def work(self, item: str) -> None:
        self.started.set()
        self.release.wait(30)
        if item == "boom":
            raise RuntimeError("the work failed")
        self.done.append(item)

    def answer(self, refusal: Refused, topic: str, item: str | None, properties) -> None:
        self.answers.append((refusal.code, refusal.detail, item))


def test_a_guarded_topic_over_a_real_broker_answers_each_refusal_and_bounds_the_rest(broker, tmp_path):
    sink = MqttSink(sink_config(tmp_path / "state", broker))
    owner = Recorder()
    inbound = GuardedInbound(sink.session, _limits(), owner.work, owner.answer, log, "test-inbound")
    inbound.listen(TOPIC, _parse)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sender")
    try:
        assert sink.wait_subscribed(10)
        pub.connect(broker.host, broker.port)
        pub.loop_start()

        def send(payload: bytes) -> None:
            pub.publish(TOPIC, payload, qos=1).wait_for_publish(10)

        send(b"x" * 500)  # above max_bytes: never read, answered
        send(b"bad")  # the parser refuses it
        send(b"")  # the parser ignores it
        send(b"one")
        assert owner.started.wait(10), "the worker takes the first item"
        send(b"two")  # waits in the queue (one place)
        send(b"three")  # the queue is full
        assert wait_until(lambda: len(owner.answers) == 3), owner.answers
        for _ in range(3):  # the six tokens are spent: dropped unread and unanswered
            send(b"four")
        assert wait_until(lambda: inbound.dropped == 3), inbound.dropped
        owner.release.set()
        assert wait_until(lambda: owner.done == ["one", "two"]), owner.done
    finally:
        pub.loop_stop()
        inbound.close()
        sink.close(2)
    assert [(code, item) for code, _, item in owner.answers] == [("oversized", None), ("malformed", None),
                                                                  ("busy", "three")]
    # The size counts the MQTT 5 property list with the payload (one byte for an empty one).
    assert re.fullmatch(r"thing is 50\d bytes, above test.max_bytes = 100; it was not read", owner.answers[0][1])
    assert owner.answers[1][1] == "not a thing" and owner.answers[2][1] == "busy now"
    assert owner.done == ["one", "two"], "nothing refused, dropped or ignored reaches the work"


def test_a_failing_item_leaves_the_worker_running(caplog):
    owner = Recorder()
    owner.release.set()
    inbound = GuardedInbound(RecordingSession(), _limits(queue_size=4), owner.work, owner.answer, log, "test-inbound")
    inbound.receive(_parse, TOPIC, b"boom")
    inbound.receive(_parse, TOPIC, b"after")
    assert wait_until(lambda: owner.done == ["after"]), owner.done
    inbound.close()
    assert any("thing worker: unexpected error" in r.getMessage() for r in caplog.records)
    assert owner.answers == []


def test_what_the_gate_admits_is_counted_once_and_a_flood_is_logged_once(caplog):
    caplog.set_level(logging.WARNING, logger=log.name)
    owner = Recorder()
    owner.release.set()
    inbound = GuardedInbound(RecordingSession(), _limits(burst=2, queue_size=4), owner.work, owner.answer, log,
                             "test-inbound")
    assert inbound.gate(TOPIC), "the first message passes the gate before it is parsed..."
    inbound.receive(_parse, TOPIC, b"a")  # ...and is not counted again when it arrives
    inbound.receive(_parse, TOPIC, b"b")  # the second token
    for _ in range(50):
        assert not inbound.gate(TOPIC)
    inbound.receive(_parse, TOPIC, b"c")
    assert wait_until(lambda: owner.done == ["a", "b"]), owner.done
    inbound.close()
    assert inbound.dropped == 51
    lines = [r.getMessage() for r in caplog.records if r.name == log.name]
    assert lines == ["dropping things unanswered: more than 0.001 per second (1 dropped since start)"], lines


def test_nothing_is_answered_or_worked_after_close():
    owner = Recorder()
    owner.release.set()
    inbound = GuardedInbound(RecordingSession(), _limits(), owner.work, owner.answer, log, "test-inbound")
    inbound.close()
    inbound.receive(_parse, TOPIC, b"bad")
    inbound.on_oversized(TOPIC, 5000)
    inbound.receive(_parse, TOPIC, b"late")
    assert owner.answers == [] and owner.done == []
