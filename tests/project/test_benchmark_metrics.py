"""Small metrics of the benchmark scripts, checked on hand-made inputs."""

from __future__ import annotations

import importlib

from tests.support.paths import REPO


def test_common_accuracy_scores_each_setting_on_the_frames_every_setting_covered(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    detect_interval = importlib.import_module("detect_interval")
    # Frame 1 is covered only by the second setting and frame 2 only by the first: both are left out.
    rows = [{"marks": [True, None, False, True]}, {"marks": [True, True, None, False]}]
    assert detect_interval.common_accuracy(rows) == [1.0, 0.5]
