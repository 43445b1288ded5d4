"""The command channel's life as a daemon extension (edge.runtime.publish.command_channel): building it takes
nothing (no subscription, no thread); start subscribes both command topics and runs commands; stop ends that."""

from __future__ import annotations

import threading

import pytest

from edge.runtime.publish.command_channel import CommandChannel
from tests.support.mqtt import RecordingSession, sink_config, wait_until


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "mqtt-commands"]


def test_building_the_channel_subscribes_nothing_and_start_subscribes_both_topics(tmp_path):
    session = RecordingSession()
    ran: list[dict] = []
    before = _workers()
    channel = CommandChannel(session, sink_config(tmp_path / "state", None), lambda cmd: ran.append(cmd))
    assert session.subscribed == [] and _workers() == before
    with pytest.raises(RuntimeError, match="only after start"):
        channel.on_message("emotion/dev1/command", b'{"command": "publish_status"}')
    channel.close()  # stopping a channel that never started is harmless
    channel.start()
    try:
        assert session.subscribed == ["emotion/dev1/command", "emotion/dev1/paused/set"]
        [worker] = [t for t in _workers() if t not in before]
        channel.on_message("emotion/dev1/command", b'{"command": "publish_status"}')
        assert wait_until(lambda: ran == [{"command": "publish_status"}], 10), ran
    finally:
        channel.stop()
    assert not worker.is_alive()


def test_a_second_start_is_refused_and_a_second_close_returns_at_once(tmp_path):
    session = RecordingSession()
    before = _workers()
    channel = CommandChannel(session, sink_config(tmp_path / "state", None), lambda cmd: None)
    channel.start()
    try:
        with pytest.raises(RuntimeError, match="started already"):
            channel.start()
        assert session.subscribed == ["emotion/dev1/command", "emotion/dev1/paused/set"]  # subscribed once
        assert len([t for t in _workers() if t not in before]) == 1
    finally:
        channel.stop()
    channel.close(timeout=30)  # nothing left to wait for: a second close does not wait out its timeout
    assert [t for t in _workers() if t not in before and t.is_alive()] == []
