"""The command line as a user runs it: ``python -m edge`` in a subprocess from the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from tests.support.paths import REPO


def run_edge(*args: str, env_extra: dict[str, str] | None = None, timeout: float = 120,
             **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``python -m edge ARGS`` from the checkout, output captured as text (MediaPipe's native logging quiet)."""
    env = {**os.environ, "GLOG_minloglevel": "2", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO, **kwargs)
