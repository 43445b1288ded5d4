"""Faults the MQTT sink must survive without ever stopping silently, against a real Mosquitto: an unexpected error
on the network thread, connect settings paho cannot encode, and the systemd watchdog withheld while the publisher
does not make progress."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time

from edge.runtime.daemon import Daemon
from edge.runtime.publish.mqtt import MqttSink
from edge.runtime.sdnotify import Notifier
from tests.mqtt_support import Collector, faces_body, sink_config, wait_until
from tests.test_edge_daemon import ListSink, make_config


def test_an_error_on_the_network_thread_is_logged_once_and_publishing_goes_on(broker, tmp_path, caplog):
    """The pump raising in a session, and again when the session ends (the storage-error path of a full disk):
    one ERROR line with the cause, the thread reconnects, and every message still arrives."""
    col = Collector(broker).start()
    sink = MqttSink(sink_config(tmp_path / "state", broker))
    failures = {"tick": 3, "reset": 3}
    real_tick, real_reset = sink.pump.tick, sink.pump.reset

    def failing(name, real):
        def call(*args):
            if failures[name] > 0:
                failures[name] -= 1
                raise OSError(28, f"injected {name} failure")
            return real(*args)
        return call

    try:
        assert sink.wait_connected(10)
        with caplog.at_level(logging.ERROR, logger="edge.runtime.publish.connection"):
            sink.pump.tick = failing("tick", real_tick)
            sink.pump.reset = failing("reset", real_reset)
            seqs = [sink.publish("faces", faces_body(i)) for i in range(20)]
            assert wait_until(lambda: failures == {"tick": 0, "reset": 0}, 20)
            assert sink.flush(20), sink.stats()
            assert col.wait_for(lambda c: set(seqs) <= set(c.unique_seqs()), 20)
            assert sink.alive()
        lines = [r for r in caplog.records if "network thread failed" in r.getMessage()]
        # One traceback per distinct cause (tick's and reset's), however often each repeats.
        assert len(lines) == 2 and {"injected tick failure" in r.getMessage() for r in lines} == {True, False}
    finally:
        sink.close(2)
        col.stop()


def test_connect_settings_paho_cannot_encode_are_reported_and_retried(broker, tmp_path, caplog, monkeypatch):
    """A keep-alive above MQTT's 16 bits (struct.error inside paho) bypassing the config check: one ERROR naming
    the setting, the thread stays alive and connects once the setting is fixed."""
    import edge.runtime.publish.mqtt as sink_module

    real = sink_module.settings_from_config
    monkeypatch.setattr(sink_module, "settings_from_config",
                        lambda *a: dataclasses.replace(real(*a), keepalive_s=1_000_000))
    sink = MqttSink(sink_config(tmp_path / "state", broker))
    good = dataclasses.replace(sink.connection.settings, keepalive_s=30)
    try:
        with caplog.at_level(logging.ERROR, logger="edge.runtime.publish.connection"):
            assert wait_until(lambda: "paho refused" in (sink.connection_state()["error"] or ""), 10)
            time.sleep(1.0)  # several attempts at reconnect_min_s 0.2
        assert sink.alive() and not sink.connected
        assert sum("mqtt.keepalive_s" in r.getMessage() for r in caplog.records) == 1
        sink.connection.settings = good
        assert sink.wait_connected(10)
    finally:
        sink.close(2)


def test_the_daemon_withholds_the_watchdog_while_the_publisher_is_dead(tmp_path, tiny_bundle, caplog):
    """The frame loop goes on, but WATCHDOG=1 stops while the sink's threads do not make progress, so systemd
    restarts the service; it resumes when they do again."""

    class Sink(ListSink):
        ok = True

        def alive(self) -> bool:
            return self.ok

    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.setblocking(False)
    notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "100000", "WATCHDOG_PID": str(os.getpid())})
    sink = Sink()
    d = Daemon(make_config(tmp_path, classifier={"model": str(tiny_bundle)}, source={"uri": "demo", "max_fps": 50}),
               sink, notifier=notifier)

    def pings() -> int:
        n = 0
        while True:
            try:
                n += listener.recv(4096) == b"WATCHDOG=1"
            except BlockingIOError:
                return n

    t = threading.Thread(target=d.run, daemon=True)
    try:
        t.start()
        assert wait_until(lambda: pings() > 0, 30)
        sink.ok = False
        time.sleep(0.3)
        pings()  # what was sent before the change was seen
        frames = d.frames
        time.sleep(0.6)
        assert pings() == 0 and d.frames > frames  # the loop runs, the watchdog starves
        sink.ok = True
        assert wait_until(lambda: pings() > 0, 10)
    finally:
        d.stop()
        t.join(10)
        listener.close()
    assert any("no longer feeding the systemd watchdog" in r.getMessage() for r in caplog.records)

