"""Frame sources: image folder, video file, demo, Picamera2 through its camera seam, retry with backoff."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from edge.config import SourceConfig
from edge.runtime.backoff import backoff_delay
from edge.runtime.capture import open_source
from edge.runtime.capture.base import SourceError
from edge.runtime.capture.demo import DemoSource
from edge.runtime.capture.folder import FolderSource
from edge.runtime.capture.managed import ManagedSource
from edge.runtime.capture.opencv import OpenCVSource
from edge.runtime.capture.pi_camera import Picamera2Source
from tests.support.paths import REPO


class FakeClock:
    """A clock that only moves when the source waits, so backoff is checked without real time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def test_folder_source_reads_images_in_name_order_and_skips_broken_files(tmp_path):
    for i, value in enumerate((10, 20, 30)):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), np.full((48, 64, 3), value, np.uint8))
    (tmp_path / "img1b.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    src = FolderSource(tmp_path)
    frames = []
    while (f := src.read()) is not None:
        frames.append(f)
    assert [int(f.image[0, 0, 0]) for f in frames] == [10, 20, 30]
    assert [f.index for f in frames] == [0, 1, 2]
    assert frames[0].width == 64 and frames[0].height == 48


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="has no images"):
        open_source(str(tmp_path))


def _write_video(path, n=12, size=(160, 120)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((size[1], size[0], 3), (10 * i) % 256, np.uint8))
    writer.release()


def test_video_file_source_reads_every_frame_then_ends(tmp_path):
    path = tmp_path / "clip.avi"
    _write_video(path, n=12)
    src = open_source(str(path))
    assert isinstance(src, OpenCVSource)
    frames = []
    while (f := src.read()) is not None:
        frames.append(f)
    src.close()
    assert len(frames) == 12
    # MJPG is lossy: the brightness ramp survives, exact values do not.
    means = [float(f.image.mean()) for f in frames]
    assert means == sorted(means) and means[-1] - means[0] > 80


class _PacedCapture:
    """A real ``cv2.VideoCapture`` on a clip, whose ``grab`` waits for the next frame like a camera does
    (the camera itself is what cannot exist here; its frame rate is all this adds)."""

    def __init__(self, path, fps: float) -> None:
        self._cap = cv2.VideoCapture(str(path))
        self._interval = 1.0 / fps

    def grab(self) -> bool:
        time.sleep(self._interval)
        return self._cap.grab()

    def retrieve(self):
        return self._cap.retrieve()

    def release(self) -> None:
        self._cap.release()


def test_a_live_source_hands_out_a_frame_grabbed_after_the_loop_asked_and_decodes_only_those(tmp_path):
    """A loop slower than the camera gets a current frame, not a backlog, and the frames it skips are
    grabbed but never decoded; when the camera stops, the next read says so."""
    from edge.runtime.capture.opencv import LatestFrame

    path = tmp_path / "clip.avi"
    _write_video(path, n=60)
    grabber = LatestFrame(_PacedCapture(path, fps=100), "clip")
    got, seq = [], 0
    while True:
        asked = time.time()
        frame = grabber.newest(seq, timeout=5.0)
        if frame is None:
            break
        image, ts, seq = frame
        got.append((asked, ts))
        time.sleep(0.05)  # the loop is busy with detection and classification meanwhile
    grabber.close()
    assert grabber.error is None and grabber.grabbed == 60
    assert 3 <= len(got) <= grabber.decoded < grabber.grabbed / 2
    assert all(ts >= asked for asked, ts in got)


def test_a_live_opencv_source_that_stops_delivering_is_a_clear_error(tmp_path):
    path = tmp_path / "clip.avi"
    _write_video(path, n=20)
    src = OpenCVSource(str(path), live=True)
    with pytest.raises(SourceError, match="stopped delivering"):
        while True:  # an unpaced file is over almost at once; at most the first read may still catch a frame
            assert src.read() is not None
    src.close()
    assert src._grabber.grabbed == 20
    assert OpenCVSource(str(path)).live is False  # files are still read frame by frame


def test_managed_video_without_loop_ends_and_with_loop_restarts(tmp_path):
    path = tmp_path / "clip.avi"
    _write_video(path, n=5)
    clock = FakeClock()
    once = ManagedSource(lambda: open_source(str(path)), str(path), max_fps=0, loop=False, clock=clock, wait=clock.wait)
    got = [f for _ in range(20) if (f := once.poll()) is not None]
    assert len(got) == 5 and once.finished and once.status()["state"] == "ended"

    looping = ManagedSource(lambda: open_source(str(path)), str(path), max_fps=0, loop=True, clock=clock, wait=clock.wait)
    got = [f for _ in range(30) if (f := looping.poll()) is not None]
    assert len(got) > 10 and not looping.finished
    assert [f.index for f in got[:7]] == [0, 1, 2, 3, 4, 0, 1]


def test_demo_source_moves_faces_and_is_deterministic():
    demo = DemoSource(faces=3, vanish=False)
    f0, f1 = demo.read(), demo.read()
    assert f0.image.shape == (480, 640, 3) and f0.image.dtype == np.uint8
    assert demo.positions(0) != demo.positions(25)
    assert np.array_equal(DemoSource(faces=3, vanish=False).render(7), demo.render(7))
    assert not np.array_equal(f0.image, f1.image)


def test_demo_second_face_vanishes_for_part_of_the_cycle():
    demo = DemoSource(faces=2)
    visible = [demo.positions(i)[1] is not None for i in range(200)]
    assert any(visible) and not all(visible)
    assert all(p is not None for i in range(200) for p in demo.positions(i)[:1])


def test_demo_faces_fit_any_frame_the_config_allows_or_are_refused_at_open():
    """Small frames scale the faces down into their lanes (320x240 with 3 faces used to crash on the first
    frame); a frame too small for a detectable face is a SourceError when the source opens."""
    for w, h, n in ((320, 240, 2), (320, 240, 3), (400, 480, 3), (640, 480, 1)):
        demo = DemoSource(w, h, faces=n, vanish=False)
        for i in range(0, 200, 7):
            for x, y, side in demo.positions(i):
                assert x >= 0 and y >= 0 and x + side <= w and y + side <= h, (w, h, n, i)
            assert demo.read().image.shape == (h, w, 3)
    with pytest.raises(SourceError, match="too small"):
        DemoSource(64, 48, faces=1)


def test_bad_demo_spec_is_refused():
    with pytest.raises(SourceError, match="demo"):
        open_source("demo:nine")
    with pytest.raises(SourceError, match="1-3"):
        open_source("demo:5")


def test_missing_file_is_a_clear_error():
    with pytest.raises(SourceError, match="does not exist"):
        open_source("/nonexistent/video.mp4")


def test_backoff_doubles_and_caps():
    assert [backoff_delay(i, 0.5, 3.0) for i in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_failing_source_is_retried_with_exponential_backoff_and_reported():
    clock = FakeClock()
    attempts = []

    def opener():
        attempts.append(clock.now)
        if len(attempts) <= 4:
            raise SourceError("camera unplugged")
        return DemoSource(faces=1)

    src = ManagedSource(opener, "cam", max_fps=0, retry_initial_s=1.0, retry_max_s=4.0, clock=clock, wait=clock.wait)
    frames = []
    statuses = []
    for _ in range(40):
        frame = src.poll(max_wait=0.5)
        statuses.append(src.status())
        if frame is not None:
            frames.append(frame)
            break
    assert frames, "the source never recovered"
    gaps = np.diff(attempts).round(6).tolist()
    assert gaps == [1.0, 2.0, 4.0, 4.0]
    assert statuses[0] == {"uri": "cam", "state": "retrying", "error": "camera unplugged", "retries": 0}
    assert src.status() == {"uri": "cam", "state": "ok", "error": None, "retries": 4}
    # poll() never waited longer than asked, so the caller's loop kept running during the backoff.
    assert max(clock.waits) <= 0.5


def test_an_opener_that_raises_something_else_is_retried_like_a_source_error():
    """A driver bug or a permission error while opening must back off and show in status, not end the loop."""
    clock = FakeClock()
    attempts = []

    def opener():
        attempts.append(clock.now)
        if len(attempts) == 1:
            raise PermissionError(13, "Permission denied")
        return DemoSource(faces=1)

    src = ManagedSource(opener, "/srv/faces", max_fps=0, retry_initial_s=1.0, clock=clock, wait=clock.wait)
    assert src.poll(max_wait=0.5) is None
    assert src.status()["state"] == "retrying"
    assert src.status()["error"] == "cannot open /srv/faces: PermissionError: [Errno 13] Permission denied"
    frame = None
    for _ in range(10):
        frame = frame or src.poll(max_wait=0.5)
    assert frame is not None and src.status()["state"] == "ok"


def test_a_source_that_keeps_failing_never_busy_loops():
    clock = FakeClock()
    calls = []

    def opener():
        calls.append(1)
        raise SourceError("no such camera")

    src = ManagedSource(opener, "0", max_fps=0, retry_initial_s=1.0, retry_max_s=8.0, clock=clock, wait=clock.wait)
    for _ in range(1000):
        assert src.poll(max_wait=0.5) is None
    # 1000 polls of at most 0.5 s cover <= 500 s; with delays 1, 2, 4, 8, 8, ... that is at most ~65 attempts.
    assert len(calls) <= 70
    assert src.state == "retrying" and src.retries == len(calls) - 1


def test_read_failure_mid_stream_reopens():
    clock = FakeClock()

    class Flaky:
        def __init__(self):
            self.n = 0

        def read(self):
            self.n += 1
            if self.n == 3:
                raise SourceError("stream stalled")
            return DemoSource(faces=1).read() if self.n < 3 else None

        def close(self):
            pass

    opened = []

    def opener():
        opened.append(Flaky())
        return opened[-1]

    src = ManagedSource(opener, "rtsp://cam", max_fps=0, loop=False, retry_initial_s=0.25, clock=clock, wait=clock.wait)
    results = [src.poll() for _ in range(6)]
    assert sum(r is not None for r in results) >= 3
    assert len(opened) == 2 and src.retries == 1


def test_an_empty_looping_source_does_not_spin():
    clock = FakeClock()
    opens = []

    class Empty:
        def read(self):
            return None

        def close(self):
            pass

    def opener():
        opens.append(1)
        return Empty()

    src = ManagedSource(opener, "empty", max_fps=0, loop=True, retry_initial_s=1.0, retry_max_s=4.0, clock=clock, wait=clock.wait)
    for _ in range(200):
        src.poll(max_wait=0.5)
    assert len(opens) < 35  # backoff between reopenings, not one per poll


def test_rate_cap_spaces_frames_by_the_interval():
    clock = FakeClock()
    src = ManagedSource(lambda: DemoSource(faces=1), "demo", max_fps=5, clock=clock, wait=clock.wait)
    stamps = []
    for _ in range(20):
        if src.poll(max_wait=1.0) is not None:
            stamps.append(clock.now)
    assert len(stamps) >= 10
    assert np.allclose(np.diff(stamps), 0.2)
    assert src.dropped == 0


def test_rate_cap_counts_frames_dropped_by_a_slow_loop():
    clock = FakeClock()
    src = ManagedSource(lambda: DemoSource(faces=1), "demo", max_fps=10, clock=clock, wait=clock.wait)
    assert src.poll() is not None
    clock.now += 0.55  # the loop spent 0.55 s on a frame: about 5 slots of 0.1 s passed
    assert src.poll() is not None
    assert src.dropped == 4


# --- Picamera2 through its thin seam (the only fake: libcamera cannot exist here) ---------------------------


class FakeRequest:
    def __init__(self, cam):
        self.cam = cam

    def make_array(self, name):
        return self.cam.arrays[name]

    def release(self):
        self.cam.released += 1


class FakePicamera2:
    """Implements the four Picamera2 calls the source uses, with a real demo image as the main stream."""

    def __init__(self, main_bgr, lores_wh):
        lw, lh = lores_wh
        gray = cv2.resize(cv2.cvtColor(main_bgr, cv2.COLOR_BGR2GRAY), (lw, lh), interpolation=cv2.INTER_AREA)
        stride = lw + 64  # libcamera pads rows; the source must cut the Y plane out of the padding
        yuv = np.full((lh * 3 // 2, stride), 128, np.uint8)
        yuv[:lh, :lw] = gray
        self.arrays = {"main": main_bgr, "lores": yuv}
        self.config = None
        self.started = self.stopped = self.closed = self.stalled = False
        self.released = self.flushed = 0

    def create_video_configuration(self, main, lores):
        return {"main": dict(main), "lores": dict(lores)}

    def configure(self, config):
        # As libcamera's validation does: a YUV420 stream needs an even height, and the size is written back.
        w, h = config["lores"]["size"]
        config["lores"]["size"] = (w, h - h % 2)
        self.config = config

    def start(self):
        self.started = True

    def capture_request(self, wait=None):
        assert wait is False, "the source must not block without a timeout"
        return "job"

    def wait(self, job, timeout=None):
        assert job == "job" and timeout is not None
        if self.stalled:
            raise TimeoutError()
        return FakeRequest(self)

    def cancel_all_and_flush(self):
        self.flushed += 1

    def stop(self):
        self.stopped = True

    def close(self):
        self.closed = True


def test_picamera2_source_uses_main_for_crops_and_lores_y_plane_for_detection():
    main = DemoSource(faces=1).render(0)
    cam = FakePicamera2(main, (320, 240))
    src = open_source("picamera2", SourceConfig(uri="picamera2"), camera_factory=lambda: cam)
    assert isinstance(src, Picamera2Source)
    assert cam.config["main"] == {"size": (640, 480), "format": "RGB888"}
    assert cam.config["lores"] == {"size": (320, 240), "format": "YUV420"}
    frame = src.read()
    assert frame.image is main
    assert frame.detect_image.shape == (240, 320)
    assert np.array_equal(frame.detect_image, cam.arrays["lores"][:240, :320])
    assert frame.detect_scale == (2.0, 2.0)
    assert cam.released == 1  # every request goes back to libcamera
    src.close()
    assert cam.stopped and cam.closed


def test_picamera2_uses_the_sizes_libcamera_configured_and_a_stalled_sensor_is_a_source_error():
    main = DemoSource(faces=1).render(0)
    cam = FakePicamera2(main, (320, 224))
    src = Picamera2Source(640, 480, 320, 225, camera_factory=lambda: cam)  # 225 is made 224 by "libcamera"
    frame = src.read()
    assert frame.detect_image.shape == (224, 320) and frame.detect_scale == (2.0, 480 / 224)
    cam.stalled = True
    with pytest.raises(SourceError, match="capture failed"):
        src.read()
    assert cam.flushed == 1, "the timed-out capture job is cancelled, or stop() would wait behind it"
    src.close()


@pytest.fixture
def no_picamera2(monkeypatch):
    """An interpreter where ``import picamera2`` fails, as on any machine without apt's python3-picamera2."""
    import builtins

    real_import = builtins.__import__

    def no_picamera(name, *args, **kwargs):
        if name == "picamera2":
            raise ImportError("No module named 'picamera2'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_picamera)


def test_picamera2_missing_is_a_clear_error(no_picamera2):
    with pytest.raises(SourceError, match="python3-picamera2"):
        open_source("picamera2")


def test_a_source_that_can_never_work_is_not_retried(no_picamera2):
    """picamera2 missing: the managed source fails for good (systemd then shows the unit failed) instead of
    retrying with backoff forever; a transient failure still retries."""
    from edge.runtime.capture.base import SourceFatal

    src = ManagedSource(lambda: open_source("picamera2"), "picamera2", max_fps=0, retry_initial_s=0.01)
    with pytest.raises(SourceFatal):
        src.open_now()
    assert src.state == "failed" and src.finished and "python3-picamera2" in src.error
    assert src.poll(0.01) is None and src.retries == 0


def test_the_daemon_exits_non_zero_when_picamera2_cannot_exist(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edge", "run", "--source", "picamera2", "--stdout", "--max-frames", "1"],
                       capture_output=True, text=True, timeout=120, cwd=REPO,
                       env={**os.environ, "STATE_DIRECTORY": str(tmp_path)})
    assert r.returncode == 2 and "python3-picamera2" in r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr
