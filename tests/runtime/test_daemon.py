"""The frame loop with real parts (demo source, MediaPipe, int8 tiny_bundle) and an in-memory sink.

End-to-end runs through Mosquitto are in the MQTT tests; here the payload bodies are checked against the
published JSON Schema, and the loop's behaviour (tracks, status, swaps, commands, failing source) is asserted.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time

import pytest

from edge.bundle import BundleError
from edge.runtime.assemble import assemble
from edge.runtime.capture.base import SourceError
from edge.runtime.capture.demo import DemoSource
from edge.runtime.capture.managed import ManagedSource
from edge.runtime.daemon import Daemon
from tests.support.daemon import ListSink, make_config


@pytest.fixture
def daemon_factory(tmp_path, tiny_bundle):
    with contextlib.ExitStack() as stack:

        def make(sink=None, **sections):
            sections.setdefault("classifier", {})["model"] = str(tiny_bundle)
            return stack.enter_context(assemble(make_config(tmp_path, **sections), sink=sink or ListSink()))

        yield make


def test_demo_run_publishes_valid_faces_tracks_summary_and_status(daemon_factory):
    sink = ListSink()
    d = daemon_factory(sink)
    # The demo's second face leaves the picture at frame 160 of each 200-frame cycle.
    d.source = ManagedSource(lambda: DemoSource(faces=2), "demo", max_fps=0)
    assert d.run(max_frames=170) == 170
    faces = sink.of("faces")
    assert len(faces) == 170
    assert {len(m["faces"]) for m in faces[:150]} == {2}
    ids = {f["track_id"] for m in faces[:150] for f in m["faces"]}
    assert ids == {1, 2}, "ids must stay stable while the faces move"
    for m in faces:
        for f in m["faces"]:
            assert f["box"][2] > 0.1 and abs(sum(f["probs"].values()) - 1) < 0.01
    starts = [m["track_id"] for m in sink.of("events", "track_start")]
    ends = sink.of("events", "track_end")
    assert starts == [1, 2]
    # Track 2 ended when its face left (max_missed_frames 2), track 1 at shutdown.
    assert [m["track_id"] for m in ends] == [2, 1]
    assert ends[0]["duration_s"] > 0
    summary = sink.of("summary")[-1]
    assert summary["frames"] == 170 and summary["faces_max"] == 2 and 1 < summary["faces_mean"] <= 2
    assert {t["track_id"] for t in summary["tracks"]} == {1, 2}
    statuses = sink.of("status")
    # The run ends with "stopping", then its last status "offline" (as true as ever: nothing is processed now).
    assert statuses[0]["state"] == "running" and [s["state"] for s in statuses[-2:]] == ["stopping", "offline"]
    assert statuses[-1]["fps"] == 0.0 and statuses[-1]["frames"] == 170
    last = statuses[-2]
    assert last["frames"] == 170 and last["model_id"].startswith("tiny-test")
    assert last["model"]["runtime"] == "ai_edge_litert" and last["detector"] == "blazeface"
    assert all(last["latency_ms"][k] is not None and last["latency_ms"][k] >= 0
               for k in ("capture", "detect", "classify", "track", "publish"))
    assert last["fps"] > 0


def test_no_image_data_is_ever_published(daemon_factory, tmp_path):
    sink = ListSink()
    preview = tmp_path / "preview"
    d = daemon_factory(sink, privacy={"debug_preview_dir": str(preview)})
    d.run(max_frames=5)
    for m in sink.messages:
        text = json.dumps(m)
        assert len(text) < 8000  # numbers and labels only: a 48x48 crop alone would be >2 kB of numbers
        assert not any(isinstance(v, list) and len(v) > 16 for v in m.values())
    # The preview exists, locally, only because it was enabled.
    assert (preview / "preview.jpg").is_file()


def test_no_preview_unless_enabled(daemon_factory, tmp_path):
    d = daemon_factory()
    d.run(max_frames=3)
    assert d._preview is None and not list(tmp_path.rglob("*.jpg"))


def test_a_preview_folder_that_cannot_be_written_is_logged_once(daemon_factory, tmp_path, caplog):
    """A read-only or impossible preview folder must not stop the loop nor log a line per frame."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    d = daemon_factory(privacy={"debug_preview_dir": str(blocker / "preview")})
    with caplog.at_level("WARNING", logger="edge.runtime"):
        assert d.run(max_frames=5) == 5
    failures = [r for r in caplog.records if "debug preview" in r.getMessage() and "failed" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]


def _copy_bundle(src, dst, model_id):
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["model_id"] = model_id
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_swap_model_switches_and_a_bad_bundle_leaves_the_old_one(daemon_factory, tiny_bundle, tmp_path):
    sink = ListSink()
    d = daemon_factory(sink)
    d.run(max_frames=3)
    new = _copy_bundle(tiny_bundle, tmp_path / "v2", "tiny-v2")
    d.models.swap(new)
    assert d.model_id == "tiny-v2" and d.models.bundle_dir == new
    assert d.status_body()["model"]["id"] == "tiny-v2"
    broken = _copy_bundle(tiny_bundle, tmp_path / "broken", "broken")
    (broken / "model.tflite").write_bytes(b"garbage")
    with pytest.raises(BundleError):
        d.models.swap(broken)
    assert d.model_id == "tiny-v2" and d.models.classifier.model_id == "tiny-v2"


def _swap_while_running(d: Daemon, new_bundle) -> int:
    """Run the loop on a thread, swap to ``new_bundle`` after 3 frames, stop 3 frames later; return the frame
    count at the swap."""
    thread = threading.Thread(target=d.run, kwargs={"max_frames": 400}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and d.stats.frames < 3:
        time.sleep(0.02)
    d.models.swap(new_bundle)
    swapped_at = d.stats.frames
    while time.monotonic() < deadline and d.stats.frames < swapped_at + 3:
        time.sleep(0.02)
    d.stop()
    thread.join(10)
    assert not thread.is_alive()
    return swapped_at


def test_swap_while_running_restarts_tracks_with_the_new_model(daemon_factory, tiny_bundle, tmp_path):
    sink = ListSink()
    d = daemon_factory(sink)
    _swap_while_running(d, _copy_bundle(tiny_bundle, tmp_path / "v2", "tiny-v2"))
    assert sink.of("status")[-1]["model_id"] == "tiny-v2"
    # The old model's tracks ended at the swap and new ones (new ids) started with the new model.
    starts = [m["track_id"] for m in sink.of("events", "track_start")]
    assert starts[:2] == [1, 2] and len(starts) >= 4 and len(set(starts)) == len(starts)


def test_a_model_with_other_labels_closes_the_summary_window_of_the_old_one(daemon_factory, tmp_path):
    """A pushed model with fewer labels: the window so far is summarised with the old labels at the swap, the
    next one with the new labels, and the loop keeps running (old and new probabilities are never added)."""
    from tests.support.bundles import make_tiny_bundle

    sink = ListSink()
    d = daemon_factory(sink)
    four = ["angry", "happy", "sad", "neutral"]
    swapped_at = _swap_while_running(d, make_tiny_bundle(tmp_path / "four", labels=four, seed=1))
    assert d.stats.frames >= swapped_at + 3
    summaries = sink.of("summary")
    assert len(summaries) == 2, summaries
    assert len(summaries[0]["mean_probs"]) == 7 and summaries[0]["frames"] >= 3
    assert sorted(summaries[1]["mean_probs"]) == sorted(four) and summaries[1]["frames"] >= 3
    for t in summaries[1]["tracks"]:
        assert t["dominant_emotion"] in four


def test_commands_publish_their_results(daemon_factory, tiny_bundle, tmp_path):
    """reload_model loads only the store's current model or the running one (the command is unsigned: it must
    not pick an older model kept in the store, nor files elsewhere); answers echo the sender's request_id."""
    from edge.runtime.models.store import ModelStore

    sink = ListSink()
    d = daemon_factory(sink)
    store = ModelStore.for_state_dir(tmp_path / "state")
    store.activate(store.install(_copy_bundle(tiny_bundle, tmp_path / "v3", "v3")))
    older = _copy_bundle(tiny_bundle, store.root / "kept-older", "older")
    outside = _copy_bundle(tiny_bundle, tmp_path / "elsewhere", "not-allowed")
    d.handle_command({"command": "publish_status", "request_id": "r-1"})
    d.handle_command({"command": "reload_model", "bundle_dir": str(store.root / "current")})
    d.handle_command({"command": "reload_model", "bundle_dir": str(older)})
    d.handle_command({"command": "reload_model", "bundle_dir": str(outside)})
    d.handle_command({"command": "reload_model", "request_id": 7})
    d.handle_command({"command": "dance"})
    events = sink.of("events", "command")
    results = [(m["command"], m["ok"]) for m in events]
    assert results == [("publish_status", True), ("reload_model", True), ("reload_model", False),
                       ("reload_model", False), ("reload_model", True), ("dance", False)]
    assert events[0]["request_id"] == "r-1" and "request_id" not in events[4]  # only a short string is echoed
    assert "current link" in events[2]["detail"] and "current link" in events[3]["detail"]
    assert d.model_id == "v3"  # the refused folders were never loaded; the plain reload reloaded v3


class _SourceClock:
    """A clock that moves only when the source waits (thread-safe enough: only the frame loop calls it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> None:
        self.now += seconds
        time.sleep(0.001)  # let the test thread run


def test_failing_source_backs_off_and_status_shows_it(daemon_factory):
    sink = ListSink()
    d = daemon_factory(sink, mqtt={"status_interval_s": 0.05})
    attempts = []
    clock = _SourceClock()

    def opener():
        attempts.append(clock())
        raise SourceError("camera unplugged")

    # The source's own clock: its waits pass no real time, so the backoff is checked exactly.
    d.source = ManagedSource(opener, "0", max_fps=0, retry_initial_s=0.05, retry_max_s=0.2, clock=clock, wait=clock.wait)
    thread = threading.Thread(target=d.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (len(attempts) >= 6 and any(
            m["state"] == "degraded" and m["source"]["retries"] >= 1 for m in sink.of("status"))):
        time.sleep(0.05)
    d.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert len(attempts) >= 4
    degraded = [m for m in sink.of("status") if m["state"] == "degraded"]
    assert degraded, "a failing source must be visible in status"
    src = degraded[-1]["source"]
    assert src["state"] == "retrying" and src["error"] == "camera unplugged" and src["retries"] >= 1
    gaps = [round(b - a, 6) for a, b in zip(attempts, attempts[1:], strict=False)]
    assert gaps[:5] == [0.05, 0.1, 0.2, 0.2, 0.2]  # exponential backoff up to retry_max_s, never a busy loop


def test_faces_messages_are_rate_limited_by_faces_interval_s(daemon_factory):
    every = ListSink()
    daemon_factory(every).run(max_frames=20)
    sparse = ListSink()
    daemon_factory(sparse, mqtt={"faces_interval_s": 1e9}).run(max_frames=20)
    assert len(every.of("faces")) == 20 and len(sparse.of("faces")) == 1


def test_stop_from_another_thread_ends_the_loop_gracefully(daemon_factory):
    sink = ListSink()
    d = daemon_factory(sink)
    thread = threading.Thread(target=d.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and d.stats.frames < 3:
        time.sleep(0.02)
    d.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert [s["state"] for s in sink.of("status")[-2:]] == ["stopping", "offline"]
    assert sink.of("events", "track_end")


def test_extensions_start_and_stop_with_the_daemon(daemon_factory):
    calls = []

    class Ext:
        def start(self):
            calls.append("start")

        def stop(self):
            calls.append("stop")

    d = daemon_factory()
    d.add_extension(Ext())
    d.run(max_frames=1)
    assert calls == ["start", "stop"]


def test_status_shows_the_model_managers_last_push_report(daemon_factory):
    d = daemon_factory()
    assert d.status_body()["model_push"] is None
    d.models.record({"ok": True, "model_id": "x"})
    block = d.status_body()["model_push"]
    assert {k: v for k, v in block.items() if k != "ts"} == {"ok": True, "model_id": "x"} and block["ts"] > 0
