"""The privacy pause with real parts (demo frames, BlazeFace, the shipped int8 model; the camera is the one
stand-in: a source that counts its opens, reads and closes): pause releases the camera and no frame is read,
status and summaries go on, only ``resume`` turns capture back on, and the pause survives a restart; through a
real broker the Home Assistant switch's command pauses and the state is published retained."""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time

import pytest

from edge.config import Config, parse_config
from edge.runtime.assemble import assemble
from edge.runtime.capture.demo import DemoSource
from edge.runtime.capture.managed import ManagedSource
from edge.runtime.daemon import Daemon
from edge.runtime.pause import PAUSE_FILE
from edge.runtime.publish.mqtt import MqttSink
from edge.runtime.publish.stdout import StdoutSink
from tests.support.mqtt import Collector, validator, wait_until


class CountingCamera:
    """The camera stand-in: demo frames, with every open, read and close counted."""

    def __init__(self) -> None:
        self.opens = self.reads = self.closes = 0
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self.opens > self.closes

    def open(self) -> CountingCamera._Handle:
        with self._lock:
            self.opens += 1
        return self._Handle(self)

    class _Handle:
        def __init__(self, camera: CountingCamera) -> None:
            self.camera, self.demo = camera, DemoSource(faces=1)

        def read(self):
            with self.camera._lock:
                self.camera.reads += 1
            return self.demo.read()

        def close(self) -> None:
            with self.camera._lock:
                self.camera.closes += 1
            self.demo.close()


class RecordingSink(StdoutSink):
    """The real stdout sink into memory, keeping the plain state values too; messages are schema-checked."""

    def __init__(self) -> None:
        self._buffer = io.StringIO()
        super().__init__("pause-dev", stream=self._buffer)
        self.states: list[tuple[str, str]] = []

    def publish_state(self, leaf: str, value: str) -> None:
        with self._lock:
            self.states.append((leaf, value))

    def of(self, kind: str) -> list[dict]:
        with self._lock:
            lines = self._buffer.getvalue().splitlines()
        out = [json.loads(line) for line in lines]
        for m in out:
            validator().validate(m)
        return [m for m in out if m["kind"] == kind]

    def state(self, leaf: str) -> str | None:
        with self._lock:
            values = [v for k, v in self.states if k == leaf]
        return values[-1] if values else None


def make_config(state_dir, **mqtt) -> Config:
    return parse_config({
        "device": {"id": "pause-dev", "state_dir": str(state_dir)},
        "source": {"uri": "demo", "max_fps": 30},
        "mqtt": {"status_interval_s": 0.3, "summary_interval_s": 0.3, **mqtt},
    })


@pytest.fixture
def stack():
    """Closes the assembled daemons' parts at the end of the test."""
    with contextlib.ExitStack() as s:
        yield s


def start(config: Config, camera: CountingCamera, sink, stack, session=None) -> tuple[Daemon, threading.Thread]:
    # The assembly opens the source before the loop starts (as for `run`), unless the device is paused.
    d = stack.enter_context(assemble(config, sink=sink, session=session,
                                     source=ManagedSource(camera.open, "camera", max_fps=30)))
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    return d, t


def stop(d: Daemon, t: threading.Thread) -> None:
    d.stop()
    t.join(30)
    assert not t.is_alive()


def test_pause_releases_the_camera_reads_nothing_survives_a_restart_and_only_resume_ends_it(tmp_path, stack):
    cfg = make_config(tmp_path / "state")
    camera, sink = CountingCamera(), RecordingSink()
    d, t = start(cfg, camera, sink, stack)
    try:
        assert wait_until(lambda: camera.reads > 5 and sink.of("faces"))
        answer = d.handle_command({"command": "pause", "request_id": "p-1"})
        assert answer["ok"] is True and answer["detail"] == "capture paused, camera released"
        assert not camera.is_open, "the camera is released when the pause command is answered"
        reads = camera.reads
        summaries, statuses = len(sink.of("summary")), len(sink.of("status"))
        # No other command turns capture back on.
        for cmd in ({"command": "reload_model"}, {"command": "publish_status"}, {"command": "pause"}):
            assert d.handle_command(cmd)["ok"] is True
        d.models.swap(d.models.bundle_dir)  # a model push swaps too
        time.sleep(1.5)
        assert camera.reads == reads and camera.opens == camera.closes, "while paused no frame is read"
        assert len(sink.of("summary")) > summaries and len(sink.of("status")) > statuses, "publishing goes on"
        last = sink.of("status")[-1]
        assert last["state"] == "paused" and last["paused"] is True and last["source"]["state"] == "paused"
        assert sink.of("summary")[-1]["frames"] == 0
        assert sink.state("state/paused") == "ON" and sink.state("state/face_count") == "0"
        assert sink.state("state/presence") == "OFF" and sink.state("state/emotion") == "none"
        assert (cfg.state_dir() / PAUSE_FILE).is_file()
    finally:
        stop(d, t)

    # A restart: the device comes back paused and never opens the camera.
    camera2, sink2 = CountingCamera(), RecordingSink()
    d2, t2 = start(cfg, camera2, sink2, stack)
    try:
        assert wait_until(lambda: sink2.of("summary") and sink2.of("status"))
        time.sleep(1.0)
        assert camera2.opens == 0 and camera2.reads == 0
        assert sink2.of("status")[0]["state"] == "paused" and sink2.state("state/paused") == "ON"

        answer = d2.handle_command({"command": "resume"})
        assert answer["ok"] is True and answer["detail"] == "capture resumed"
        assert wait_until(lambda: camera2.reads > 5)
        assert sink2.of("status")[-1]["paused"] is False and sink2.state("state/paused") == "OFF"
        assert not (cfg.state_dir() / PAUSE_FILE).exists()
        assert wait_until(lambda: sink2.state("state/presence") == "ON"), "the demo face is tracked again"
    finally:
        stop(d2, t2)
    assert [s["state"] for s in sink2.of("status")[-2:]] == ["stopping", "offline"]
    assert sink2.state("state/presence") == "OFF"


def test_an_unreadable_pause_file_keeps_the_camera_off(tmp_path):
    cfg = make_config(tmp_path / "state")
    (cfg.state_dir() / PAUSE_FILE).write_text("{half a file")
    camera = CountingCamera()
    with assemble(cfg, sink=RecordingSink(), source=ManagedSource(camera.open, "camera", max_fps=0)) as d:
        assert d.pause.paused and camera.opens == 0  # the assembly opens the source only when not paused
        assert d.source.poll(0.01) is None and camera.opens == 0


@pytest.mark.slow
def test_the_switch_command_pauses_through_the_broker_and_the_state_is_retained(broker, tmp_path, stack):
    cfg = make_config(tmp_path / "state", host=broker.host, port=broker.port, reconnect_min_s=0.2)
    camera, sink = CountingCamera(), MqttSink(cfg)
    d, t = start(cfg, camera, sink, stack, session=sink.session)
    client = Collector(broker, topic="emotion/pause-dev/events", client_id="ha-switch").start()
    try:
        # The run subscribes the command topic as it starts: frames read first, then the subscription acknowledged.
        assert wait_until(lambda: camera.reads > 3) and sink.wait_subscribed(10)
        # What Home Assistant's privacy switch sends (its payload_on).
        client.client.publish("emotion/pause-dev/command", '{"command":"pause"}', qos=1).wait_for_publish(5)
        assert client.wait_for(lambda c: any(e.get("command") == "pause" and e["ok"] for e in c.envelopes("events")))
        assert wait_until(lambda: not camera.is_open)
        assert sink.flush(10)
    finally:
        client.stop()
        stop(d, t)
        sink.close(2)
    # What a subscriber that comes later (Home Assistant restarting) reads: retained values.
    late = Collector(broker, topic="emotion/pause-dev/#", client_id="late").start()
    assert late.wait_for(lambda c: c.raw("emotion/pause-dev/state/paused"))
    time.sleep(0.3)
    late.stop()
    retained = {topic: payload for topic, payload, was_retained in late.messages if was_retained}
    assert retained["emotion/pause-dev/state/paused"] == b"ON"
    assert retained["emotion/pause-dev/state/presence"] == b"OFF"
    assert retained["emotion/pause-dev/state/face_count"] == b"0"
    status = json.loads(retained["emotion/pause-dev/status"])
    assert status["paused"] is True  # the clean stop's last status, offline, keeps the flag
