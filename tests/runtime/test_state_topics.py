"""The plain values the daemon puts on its retained ``state/...`` topics (edge.runtime.state_topics): presence and
face count follow the tracks and change only when they change, every value goes out again on refresh, and the
payloads are what Home Assistant's switches and binary sensors expect. The sink side (retained publishing over a
real broker) is tests/runtime/publish/test_mqtt_state.py."""

from __future__ import annotations

from edge.protocol.topics import (
    NO_EMOTION,
    STATE_EMOTION,
    STATE_FACE_COUNT,
    STATE_PAUSED,
    STATE_PRESENCE,
    STATE_TOPICS,
)
from edge.runtime.state_topics import PlainState, on_off


def recorder() -> tuple[PlainState, list[tuple[str, str]]]:
    sent: list[tuple[str, str]] = []
    return PlainState(lambda leaf, value: sent.append((leaf, value))), sent


def test_face_count_goes_out_when_it_changes_and_presence_when_someone_arrives_or_the_last_one_leaves():
    state, sent = recorder()
    state.faces(0)  # the first count is news: a new run says who is there
    assert sent == [(STATE_FACE_COUNT, "0"), (STATE_PRESENCE, "OFF")]
    sent.clear()
    state.faces(1)
    assert sent == [(STATE_FACE_COUNT, "1"), (STATE_PRESENCE, "ON")]
    sent.clear()
    state.faces(2)  # still present: only the count changes
    assert sent == [(STATE_FACE_COUNT, "2")]
    sent.clear()
    state.faces(2)
    assert sent == []
    state.faces(0)
    assert sent == [(STATE_FACE_COUNT, "0"), (STATE_PRESENCE, "OFF")]


def test_refresh_sends_every_value_and_becomes_the_count_later_changes_compare_against():
    state, sent = recorder()
    state.refresh(None, 0, False)  # nobody seen in the window
    assert sent == [(STATE_EMOTION, NO_EMOTION), (STATE_FACE_COUNT, "0"), (STATE_PRESENCE, "OFF"),
                    (STATE_PAUSED, "OFF")]
    assert {leaf for leaf, _ in sent} == set(STATE_TOPICS)
    sent.clear()
    state.refresh("happy", 2, True)
    assert sent == [(STATE_EMOTION, "happy"), (STATE_FACE_COUNT, "2"), (STATE_PRESENCE, "ON"), (STATE_PAUSED, "ON")]
    sent.clear()
    state.faces(2)  # what the refresh said already
    assert sent == []
    state.faces(1)
    assert sent == [(STATE_FACE_COUNT, "1")]


def test_the_pause_goes_out_each_time_it_is_set():
    state, sent = recorder()
    state.paused(True)
    state.paused(False)
    assert sent == [(STATE_PAUSED, "ON"), (STATE_PAUSED, "OFF")]
    assert (on_off(True), on_off(False)) == ("ON", "OFF")
