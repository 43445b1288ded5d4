"""benchmarks/fleet.py replays a stream per simulated device through real sinks and counts what arrived (behaviour
only: its timings are the benchmark's business)."""

from __future__ import annotations

import pytest

from tests.support.broker import mosquitto_available
from tests.support.mqtt import faces_body, status_body
from tests.support.paths import REPO

BENCHMARKS = REPO / "benchmarks"
pytestmark = pytest.mark.slow


def test_fleet_replay_sends_each_device_the_recorded_stream_and_finds_no_loss(monkeypatch, tmp_path):
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import fleet

    # A 1 s "recording": 10 faces and one status; 3 devices in 2 processes replay it for 3 periods.
    events = [(0.1 * i, "faces", faces_body(i)) for i in range(10)] + [(0.55, "status", status_body())]
    row = fleet.run_fleet(3, 2, events, 1.0, 3.0, tmp_path)
    assert row["procs"] == 2
    assert row["published"] == 3 * 3 * len(events)  # every event once per period, per device
    assert row["lost"] == 0 and row["duplicates"] == 0 and row["flushed"]
    assert row["msg_s"] == pytest.approx(3 * len(events))
    assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert row["broker_in_b_s"] > row["payload_b_s"] > 0  # the broker reads the payloads plus MQTT framing
