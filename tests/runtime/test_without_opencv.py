"""A Pi camera or the demo, BlazeFace and the classifier need no OpenCV: the device install leaves it out.

Each check runs in a fresh interpreter in which ``import cv2`` fails (``sys.modules["cv2"] = None``), as on a
Pi installed without the [opencv] extra; the Pi camera is the one fake (libcamera cannot exist here), handing
out the demo's frame as the main stream and its grey as the lores Y plane, as Picamera2 does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: Makes ``import cv2`` raise ImportError in the child, whatever is installed.
NO_CV2 = "import sys\nsys.modules['cv2'] = None\n"


def _run(code: str, *args: str, state_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "STATE_DIRECTORY": str(state_dir)}
    return subprocess.run([sys.executable, "-c", NO_CV2 + textwrap.dedent(code), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_demo_runs_through_the_daemon_without_opencv(tmp_path):
    r = _run("""
        from edge.cli import main
        sys.exit(main(sys.argv[1:]))
        """, "run", "--source", "demo", "--max-frames", "3", "--stdout", state_dir=tmp_path)
    assert r.returncode == 0, r.stderr
    faces = [m for m in map(json.loads, r.stdout.splitlines()) if m["kind"] == "faces"]
    assert len(faces) == 3 and all(len(m["faces"]) == 2 for m in faces), r.stdout
    # The astronaut reads as happy and Hopper as neutral (edge/runtime/capture/demo.py), as with OpenCV.
    assert [f["emotion"] for f in faces[0]["faces"]] == ["happy", "neutral"]


def test_a_pi_camera_frame_goes_through_blazeface_and_the_classifier_without_opencv(tmp_path):
    r = _run("""
        import json

        import numpy as np

        from edge.config import parse_config
        from edge.imaging import resize
        from edge.preprocess import to_gray
        from edge.runtime.capture import open_source
        from edge.runtime.capture.demo import DemoSource
        from edge.runtime.assemble import assemble
        from edge.runtime.capture.managed import ManagedSource
        from edge.runtime.publish.stdout import StdoutSink

        class Request:
            def __init__(self, arrays):
                self.arrays = arrays

            def make_array(self, name):
                return self.arrays[name]

            def release(self):
                pass

        class Camera:
            '''Picamera2's calls that the source makes: the demo frame as "main", its grey as the lores Y plane.'''

            def __init__(self, main):
                y = resize(to_gray(main), 320, 240)
                yuv = np.full((240 * 3 // 2, 320), 128, np.uint8)
                yuv[:240] = y
                self.arrays = {"main": main, "lores": yuv}

            def create_video_configuration(self, main, lores):
                return {"main": dict(main), "lores": dict(lores)}

            def configure(self, config):
                pass

            def start(self):
                pass

            def capture_request(self, wait=None):
                return "job"

            def wait(self, job, timeout=None):
                return Request(self.arrays)

            def cancel_all_and_flush(self):
                pass

            def stop(self):
                pass

            def close(self):
                pass

        config = parse_config({"device": {"id": "pi", "state_dir": sys.argv[1]},
                                        "source": {"uri": "picamera2"}})
        camera = Camera(DemoSource(faces=1).render(0))  # the astronaut (grey faces are harder for BlazeFace)
        source = open_source("picamera2", config.source, camera_factory=lambda: camera)
        import contextlib, io
        parts = contextlib.ExitStack()
        daemon = parts.enter_context(assemble(config, sink=StdoutSink("pi", stream=io.StringIO()),
                                              source=ManagedSource(lambda: source, "picamera2", max_fps=0)))
        frame = source.read()
        assert frame.detect_image.shape == (240, 320)  # BlazeFace runs on the lores Y plane
        tracks = daemon.process_frame(frame)
        labels = daemon.models.classifier.labels
        print(json.dumps({"detector": daemon.detector.name, "cv2": sys.modules["cv2"] is None,
                          "emotions": [labels[int(np.argmax(t.probs))] for t in sorted(tracks, key=lambda t: t.box[0])]}))
        parts.close()
        source.close()
        """, str(tmp_path), state_dir=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out == {"detector": "blazeface", "cv2": True, "emotions": ["happy"]}


def test_a_source_that_needs_opencv_says_so_in_one_line_without_it(tmp_path):
    r = _run("""
        from edge.cli import main
        sys.exit(main(sys.argv[1:]))
        """, "run", "--source", str(tmp_path), "--max-frames", "1", "--stdout", state_dir=tmp_path / "state")
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if " INFO " not in line]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert errors[0].startswith(f"error: image folder {tmp_path} needs OpenCV") and "--with-opencv" in errors[0]
    assert "pip install -e '.[opencv]'" in errors[0]


def test_check_config_names_each_setting_that_needs_opencv_once_without_it(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(f'[device]\nstate_dir = "{tmp_path / "state"}"\n[source]\nuri = "0"\n'
                      f'[detector]\nbackend = "opencv"\n[privacy]\ndebug_preview_dir = "{tmp_path / "preview"}"\n')
    r = _run("""
        from edge.cli import main
        sys.exit(main(sys.argv[1:]))
        """, "check-config", str(config), state_dir=tmp_path / "state")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if "needs OpenCV" in line]
    assert len(errors) == 3, r.stderr
    for setting in ("source.uri = '0'", "detector.backend = 'opencv'", "privacy.debug_preview_dir"):
        assert sum(setting in line for line in errors) == 1, (setting, errors)


def test_each_part_that_needs_opencv_refuses_when_set_up_with_its_own_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")  # the folder source refuses before it reads a file
    r = _run("""
        import json
        from pathlib import Path

        from edge.runtime.capture.folder import FolderSource
        from edge.runtime.capture.opencv import OpenCVSource
        from edge.runtime.detect.haar import HaarDetector
        from edge.runtime.detect.mediapipe_tasks import MediaPipeDetector
        from edge.runtime.preview import PreviewWriter

        parts = {"folder": lambda: FolderSource(sys.argv[1]), "opencv": lambda: OpenCVSource("0"),
                 "haar": HaarDetector, "mediapipe": MediaPipeDetector,
                 "preview": lambda: PreviewWriter(Path(sys.argv[1]) / "preview")}
        out = {}
        for name, make in parts.items():
            try:
                make()
            except Exception as exc:
                out[name] = [type(exc).__name__, str(exc)]
        print(json.dumps(out))
        """, str(tmp_path), state_dir=tmp_path / "state")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert {name: kind for name, (kind, _) in out.items()} == {
        "folder": "SourceFatal", "opencv": "SourceFatal", "haar": "DetectorError", "mediapipe": "DetectorError",
        "preview": "ConfigError"}
    whats = {"folder": f"image folder {tmp_path}", "opencv": "source '0' (a camera index, video file or stream)",
             "haar": "the Haar cascade face detector",
             "mediapipe": "the MediaPipe face detector (detector.backend = 'mediapipe')",
             "preview": "privacy.debug_preview_dir (the debug preview)"}
    for name, (_, message) in out.items():
        assert message.startswith(f"{whats[name]} needs OpenCV") and "\n" not in message, (name, message)
        assert "--with-opencv" in message and "pip install -e '.[opencv]'" in message, (name, message)
    assert not (tmp_path / "preview").exists()
