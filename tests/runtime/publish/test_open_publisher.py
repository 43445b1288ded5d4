"""open_publisher: the sink for the configuration and the broker session behind it (None without a broker)."""

from __future__ import annotations

import io

from edge.runtime.publish import open_publisher
from tests.support.mqtt import Collector, event_body, sink_config, wait_until


def test_stdout_has_no_broker_session(tmp_path):
    sink, session = open_publisher(sink_config(tmp_path / "state", None, enabled=False), io.StringIO())
    try:
        assert session is None
        assert sink.stats() == {"pending": 0, "dropped": 0}, "no broker, so no connection figures"
    finally:
        sink.close()


def test_the_mqtt_session_publishes_in_the_sinks_sequence(broker, tmp_path):
    col = Collector(broker, topic="emotion/dev1/events").start()
    sink, session = open_publisher(sink_config(tmp_path / "state", broker))
    try:
        assert session is not None
        assert wait_until(lambda: session.connected)
        seqs = [sink.publish("events", event_body(0)), session.publish("events", event_body(1)),
                sink.publish("events", event_body(2))]
        assert seqs == [1, 2, 3], "answers and results share the device's one sequence"
        assert col.wait_for(lambda c: c.unique_seqs() == seqs)
        assert sink.stats()["mqtt"]["connected"] is True
    finally:
        sink.close(2)
        col.stop()
