"""The frame loop's figures for status and /metrics: frames processed, fps and per-stage latency (moving averages).

Only the frame loop's thread writes them; other threads (status requests, /metrics scrapes) read plain floats.
"""

from __future__ import annotations

#: The stages of one frame, in order (the status's ``latency_ms`` keys).
STAGES = ("capture", "detect", "classify", "track", "publish")
#: Weight of the newest sample in the per-stage latency and fps moving averages.
EMA_ALPHA = 0.1


class LoopStats:
    """Frames, fps and per-stage latency of the frame loop."""

    def __init__(self) -> None:
        self.frames = 0
        self.fps = 0.0
        #: Per-stage milliseconds, moving average (None before the first frame).
        self.latency_ms: dict[str, float | None] = dict.fromkeys(STAGES)
        #: The latest frame's per-stage milliseconds (benchmarks read these; status uses the averages).
        self.last_ms: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._frame_dt: float | None = None
        self._last_frame_t: float | None = None

    def stage(self, stage: str, seconds: float) -> None:
        """Add one sample of ``stage``'s duration."""
        ms = seconds * 1000.0
        self.last_ms[stage] = ms
        old = self.latency_ms[stage]
        self.latency_ms[stage] = ms if old is None else old + EMA_ALPHA * (ms - old)

    def frame_done(self, now: float) -> None:
        """Count a processed frame finished at monotonic time ``now`` (the fps average follows)."""
        if self._last_frame_t is not None:
            dt = now - self._last_frame_t
            self._frame_dt = dt if self._frame_dt is None else self._frame_dt + EMA_ALPHA * (dt - self._frame_dt)
            self.fps = 1.0 / self._frame_dt if self._frame_dt > 0 else 0.0
        self._last_frame_t = now
        self.frames += 1

    def reset_fps(self) -> None:
        """No frame is processed from now on (a pause): status and metrics must not show the old rate."""
        self.fps, self._frame_dt, self._last_frame_t = 0.0, None, None

    def latency_body(self) -> dict[str, float | None]:
        """The status's ``latency_ms`` block (milliseconds, 3 decimals)."""
        return {k: (None if v is None else round(v, 3)) for k, v in self.latency_ms.items()}
