"""The assembly with real parts (the demo source, BlazeFace, the shipped int8 model, the stdout sink, a real
Mosquitto): whatever step fails, what was built before it is closed, and nothing after it is built; a run that
ends (or raises) closes the sink (flush + offline), the source and the detector."""

from __future__ import annotations

import json
import sys

import pytest

import edge.runtime.assemble as assemble_module
import edge.runtime.capture.managed as managed_module
from edge.bundle import BundleError
from edge.config import Config, ConfigError, parse_config
from edge.runtime.assemble import assemble
from edge.runtime.capture.base import SourceError
from edge.runtime.capture.managed import ManagedSource
from edge.runtime.detect.base import DetectorError
from edge.runtime.detect.blazeface import BlazeFaceDetector
from edge.runtime.homeassistant import HomeAssistantDiscovery
from edge.runtime.models.push import ModelPushReceiver
from edge.runtime.publish.command_channel import CommandChannel
from tests.support.mqtt import Collector
from tests.support.push import make_keys


class Recorder:
    """What the assembly built, opened and closed (the real methods run; they are only counted)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[str] = []
        real_build, real_open = assemble_module.build_detector, managed_module.open_source
        real_close_det, real_close_src = BlazeFaceDetector.close, ManagedSource.close

        def build_detector(config):
            self.events.append("detector built")
            return real_build(config)

        def open_source(*args, **kwargs):
            self.events.append("source opened")
            return real_open(*args, **kwargs)

        def close_detector(det):
            self.events.append("detector closed")
            real_close_det(det)

        def close_source(src):
            self.events.append("source closed")
            real_close_src(src)

        monkeypatch.setattr(assemble_module, "build_detector", build_detector)
        monkeypatch.setattr(managed_module, "open_source", open_source)
        monkeypatch.setattr(BlazeFaceDetector, "close", close_detector)
        monkeypatch.setattr(ManagedSource, "close", close_source)

    def closed(self) -> set[str]:
        return {e.split()[0] for e in self.events if e.endswith("closed")}


@pytest.fixture
def recorder(monkeypatch):
    return Recorder(monkeypatch)


def config(tmp_path, **sections) -> Config:
    data = {
        "device": {"id": "asm", "state_dir": str(tmp_path / "state")},
        "source": {"uri": "demo", "max_fps": 0},
        "detector": {"backend": "blazeface", "every_n_frames": 1},
        "mqtt": {"enabled": False},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return parse_config(data)


def test_a_model_that_does_not_load_fails_before_anything_else_is_built(tmp_path, recorder):
    empty = tmp_path / "not-a-bundle"
    empty.mkdir()
    with pytest.raises(BundleError), assemble(config(tmp_path, classifier={"model": str(empty)})):
        pass
    assert recorder.events == []


def test_a_detector_that_cannot_load_fails_before_the_source_exists(tmp_path, recorder, monkeypatch):
    import edge.runtime.classify.interpreter as interp

    def no_runtime(*_a, **_k):
        raise interp.RuntimeMissing("no TFLite runtime found (simulated for the detector only)")

    monkeypatch.setattr("edge.runtime.detect.blazeface.make_interpreter", no_runtime)
    with pytest.raises(DetectorError), assemble(config(tmp_path)):
        pass
    assert recorder.events == ["detector built"]


def test_metrics_without_their_package_fail_before_the_camera_opens(tmp_path, recorder, monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if it were not installed
    with pytest.raises(ConfigError, match="prometheus-client"), assemble(config(tmp_path, metrics={"enabled": True})):
        pass
    assert "source opened" not in recorder.events
    assert recorder.closed() == {"source", "detector"}


def test_a_source_that_cannot_open_closes_the_detector(tmp_path, recorder):
    missing = tmp_path / "missing.mp4"
    with pytest.raises(SourceError), assemble(config(tmp_path, source={"uri": str(missing)})):
        pass
    assert recorder.events[:2] == ["detector built", "source opened"]
    assert recorder.closed() == {"source", "detector"}


def test_a_camera_that_is_not_there_yet_is_retried_instead_of_failing_the_start(tmp_path, recorder):
    with assemble(config(tmp_path, source={"uri": "97"})) as daemon:  # no camera 97 on this machine
        status = daemon.status_body()["source"]
        assert status["state"] == "retrying" and status["error"]
    assert recorder.closed() == {"source", "detector"}


def test_a_sink_that_cannot_be_set_up_closes_the_opened_source_and_the_detector(tmp_path, recorder):
    bad_ca = tmp_path / "ca.pem"
    bad_ca.write_text("not a certificate")
    cfg = config(tmp_path, mqtt={"enabled": True, "host": "127.0.0.1", "port": 9,
                                 "tls": {"enabled": True, "ca_file": str(bad_ca)}})
    with pytest.raises(ConfigError), assemble(cfg):
        pass
    assert "source opened" in recorder.events
    assert recorder.closed() == {"source", "detector"}


def _stdout_messages(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_a_run_ends_with_the_sink_closed_offline_and_the_parts_released(tmp_path, recorder, capsys):
    with assemble(config(tmp_path)) as daemon:
        assert daemon.extensions == ()  # stdout: no broker, so no discovery and no model push
        assert daemon.run(max_frames=3) == 3
    messages = _stdout_messages(capsys)
    assert messages[-1]["kind"] == "status" and messages[-1]["state"] == "offline"
    assert any(m["kind"] == "faces" for m in messages)
    assert recorder.closed() == {"source", "detector"}


def test_an_error_inside_the_block_still_closes_everything(tmp_path, recorder, capsys):
    with pytest.raises(RuntimeError, match="boom"), assemble(config(tmp_path)) as daemon:
        daemon.run(max_frames=1)
        raise RuntimeError("boom")
    assert _stdout_messages(capsys)[-1]["state"] == "offline"
    assert recorder.closed() == {"source", "detector"}


@pytest.mark.slow
def test_with_a_broker_the_extensions_are_registered_and_the_device_goes_offline_at_the_end(tmp_path, broker):
    _, public = make_keys(tmp_path)
    cfg = config(tmp_path, mqtt={"enabled": True, "host": broker.host, "port": broker.port},
                 model_push={"enabled": True, "trusted_keys": [str(public)]})
    watcher = Collector(broker, topic="emotion/asm/#", client_id="asm-watch").start()
    try:
        with assemble(cfg) as daemon:
            assert [type(e) for e in daemon.extensions] == [CommandChannel, HomeAssistantDiscovery, ModelPushReceiver]
            assert daemon.run(max_frames=3) == 3
        assert watcher.wait_for(lambda c: c.raw("emotion/asm/availability")[-1:] == [b"offline"])
        statuses = watcher.envelopes("status")
        assert statuses and statuses[-1]["state"] == "offline"
    finally:
        watcher.stop()


def test_a_pause_that_arrives_after_the_run_ended_is_refused_and_offline_stays_the_last_status(tmp_path):
    """The command worker may still run a queued command while the run ends: it must not publish a status after
    the run's last one (a stopped device would then say "paused" or "running" in its retained status)."""
    from tests.support.daemon import ListSink

    sink = ListSink()
    with assemble(config(tmp_path), sink=sink) as daemon:
        assert daemon.run(max_frames=2) == 2
        assert daemon.set_paused(True) == (False, "the device is stopping")
    assert sink.of("status")[-1]["state"] == "offline"
    assert not daemon.pause.paused
