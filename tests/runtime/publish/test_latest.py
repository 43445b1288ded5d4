"""The retained plain-value topics' store (edge.runtime.publish.latest): newest value only, sent once, all again
on a new session."""

from __future__ import annotations

from edge.runtime.publish.latest import LatestValues


def test_only_the_newest_value_of_a_topic_is_sent_in_the_order_topics_were_last_set():
    latest = LatestValues()
    latest.set("p/d/state/face_count", "1")
    latest.set("p/d/state/presence", "ON")
    latest.set("p/d/state/face_count", "2")  # replaces the value still waiting, and moves behind presence
    assert latest.take_due() == [("p/d/state/presence", b"ON"), ("p/d/state/face_count", b"2")]
    assert latest.take_due() == [], "what was taken counts as sent"
    assert latest.get("p/d/state/face_count") == b"2" and latest.get("p/d/state/paused") is None


def test_an_unchanged_value_is_sent_again_and_a_new_session_resends_every_value():
    latest = LatestValues()
    latest.set("p/d/state/presence", b"OFF")
    latest.set("p/d/state/paused", "OFF")
    latest.take_due()
    latest.set("p/d/state/presence", "OFF")  # the same value: sent again (it refreshes Home Assistant's expiry)
    assert latest.take_due() == [("p/d/state/presence", b"OFF")]
    latest.all_due()
    assert sorted(latest.take_due()) == [("p/d/state/paused", b"OFF"), ("p/d/state/presence", b"OFF")]
