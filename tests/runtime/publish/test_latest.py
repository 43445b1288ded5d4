"""The retained plain values' store (edge.runtime.publish.latest): the newest value of each topic, sent once per
change and all again on a new session, in the order they were set."""

from __future__ import annotations

import threading

from edge.runtime.publish.latest import LatestValues


def test_a_value_set_twice_before_it_is_sent_goes_out_once_with_the_newest_payload():
    values = LatestValues()
    values.set("emotion/dev1/state/face_count", "1")
    values.set("emotion/dev1/state/presence", "ON")
    values.set("emotion/dev1/state/face_count", "3")
    # face_count was set again last, so it goes out after presence: values leave in the order they were set.
    assert values.take_due() == [("emotion/dev1/state/presence", b"ON"), ("emotion/dev1/state/face_count", b"3")]
    assert values.take_due() == []  # taken counts as sent
    assert values.get("emotion/dev1/state/face_count") == b"3"


def test_setting_the_same_value_again_sends_it_again():
    values = LatestValues()
    values.set("t/emotion", "happy")
    values.take_due()
    values.set("t/emotion", "happy")  # a refresh (Home Assistant's expire_after) is a send, not a no-op
    assert values.take_due() == [("t/emotion", b"happy")]


def test_a_new_session_sends_every_known_value_again_and_unknown_topics_have_none():
    values = LatestValues()
    values.set("t/a", b"\x00raw")
    values.set("t/b", "é")
    values.take_due()
    assert values.take_due() == []
    values.all_due()
    assert values.take_due() == [("t/a", b"\x00raw"), ("t/b", "é".encode())]
    assert values.get("t/never") is None


def test_values_set_from_many_threads_keep_the_last_write_of_each_topic():
    values = LatestValues()

    def writer(k: int) -> None:
        for i in range(200):
            values.set(f"t/{k}", str(i))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(values.take_due()) == [(f"t/{k}", b"199") for k in range(4)]
