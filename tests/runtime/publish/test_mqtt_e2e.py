"""End to end: ``python -m edge run`` on an image folder of real faces -> Mosquitto -> schema-valid messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.mqtt import Collector, assert_in_order_without_gaps, validator
from tests.support.paths import REPO as ROOT


def _face_folder(folder: Path) -> Path:
    """Real faces: the demo's public-domain photos (astronaut and Grace Hopper), as is and mirrored, at 640x480."""
    cv2 = pytest.importorskip("cv2")
    from edge.runtime.capture.demo import DemoSource

    folder.mkdir()
    frame = DemoSource(faces=2, vanish=False).render(0)
    cv2.imwrite(str(folder / "a.png"), frame)
    cv2.imwrite(str(folder / "b.png"), cv2.flip(frame, 1))
    return folder


@pytest.mark.slow
def test_daemon_publishes_schema_valid_messages_from_real_faces(broker, tmp_path, tiny_bundle):
    faces_dir = _face_folder(tmp_path / "faces")
    config = tmp_path / "edge.toml"
    config.write_text(
        f'[device]\nstate_dir = "{tmp_path / "state"}"\n'
        "[source]\nmax_fps = 0\n"
        "[homeassistant]\nenabled = false\n"
    )
    col = Collector(broker, topic="emotion/e2e/#").start()
    frames = 12
    proc = subprocess.run(
        [sys.executable, "-m", "edge", "run", "--config", str(config), "--source", str(faces_dir),
         "--mqtt-host", broker.host, "--mqtt-port", str(broker.port), "--max-frames", str(frames),
         "--model", str(tiny_bundle), "--device-id", "e2e"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert col.wait_for(lambda c: c.raw("emotion/e2e/availability")[-1:] == [b"offline"])
    assert col.wait_for(lambda c: any(e["state"] == "offline" for e in c.envelopes("status")))
    col.stop()

    envs = col.envelopes()
    for env in envs:
        validator().validate(env)
    assert {e["device_id"] for e in envs} == {"e2e"}
    # One run, nothing lost: the seqs form one unbroken, ordered run.
    seqs = col.unique_seqs()
    assert_in_order_without_gaps(seqs, range(seqs[0], seqs[0] + len(seqs)))

    faces = col.envelopes("faces")
    assert faces, "the astronaut's face must be detected and published"
    assert all(f["width"] == 640 and f["height"] == 480 for f in faces)
    labels = set(json_labels(envs))
    for f in faces:
        for face in f["faces"]:
            assert set(face["probs"]) == labels and abs(sum(face["raw_probs"].values()) - 1) < 0.05
            assert face["emotion"] in labels | {"uncertain"}
    assert any(e["event"] == "track_start" for e in col.envelopes("events"))
    states = [e["state"] for e in col.envelopes("status")]
    assert states[-1] == "offline"
    last_running = [e for e in col.envelopes("status") if e["state"] != "offline"][-1]
    assert last_running["model_id"] == "tiny-test-0" and last_running["mqtt"]["connected"] is True
    offline = col.envelopes("status")[-1]
    assert offline["frames"] == last_running["frames"] == frames and offline["fps"] == 0.0, "the last status is true"
    assert col.raw("emotion/e2e/availability")[0] == b"online"
    # Privacy: no payload carries pixels (every payload is small JSON of numbers and labels).
    assert max(len(p) for t, p, _ in col.messages) < 8000


def json_labels(envs: list[dict]) -> list[str]:
    """The label set the daemon reports in its status."""
    for env in envs:
        if env["kind"] == "status":
            return env["model"]["labels"]
    raise AssertionError("no status message")
