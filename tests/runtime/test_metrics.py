"""The Prometheus endpoint: scraped over real HTTP from a running daemon (``python -m edge run`` on the demo), parsed
with prometheus-client's own parser; off by default, on 127.0.0.1 by default, freed at stop, one clear line
without the package."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.config import Config, parse_config
from edge.runtime.metrics import MetricsServer, MetricsUnavailable
from tests.support.broker import free_port
from tests.support.paths import REPO as ROOT


def scrape(port: int) -> dict[str, list]:
    """``{family name: [samples]}`` from ``http://127.0.0.1:PORT/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode("utf-8")
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(families: dict, family: str, sample: str | None = None, **labels) -> float:
    [v] = [s.value for s in families[family] if (sample is None or s.name == sample)
           and all(s.labels.get(k) == val for k, val in labels.items())]
    return v


def test_a_running_daemon_serves_its_figures(tmp_path):
    port = free_port()
    config = tmp_path / "edge.toml"
    config.write_text(f'[device]\nid = "metrics-dev"\nstate_dir = "{tmp_path / "state"}"\n'
                      "[source]\nmax_fps = 10\n"
                      f"[metrics]\nenabled = true\nport = {port}\n")
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(config), "--stdout"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        families: dict = {}
        while time.monotonic() < deadline:
            try:
                families = scrape(port)
                if value(families, "emotion_edge_frames", "emotion_edge_frames_total") >= 5:
                    break
            except (OSError, KeyError, ValueError):
                pass
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.3)
        assert value(families, "emotion_edge_frames", "emotion_edge_frames_total") >= 5
        [info] = families["emotion_edge_info"]
        assert info.name == "emotion_edge_info" and info.labels["device_id"] == "metrics-dev"
        assert info.labels["model_id"] and info.labels["runtime"] and info.labels["detector"] == "blazeface"
        assert value(families, "emotion_edge_state", state="running") == 1
        assert value(families, "emotion_edge_state", state="paused") == 0
        assert value(families, "emotion_edge_paused") == 0
        assert 0 < value(families, "emotion_edge_fps") <= 15
        stages = {s.labels["stage"]: s.value for s in families["emotion_edge_stage_latency_seconds"]}
        assert set(stages) == {"capture", "detect", "classify", "track", "publish"}
        assert all(0 <= v < 5 for v in stages.values()) and stages["detect"] > 0
        assert value(families, "emotion_edge_faces") >= 0
        assert value(families, "emotion_edge_outbox_pending") == 0
        assert value(families, "emotion_edge_outbox_dropped", "emotion_edge_outbox_dropped_total") == 0
        assert value(families, "emotion_edge_mqtt_connected") == 0  # --stdout: no broker
        assert value(families, "emotion_edge_source_ok") == 1
        assert value(families, "emotion_edge_uptime_seconds") > 0
        assert "process_resident_memory_bytes" in {s.name for s in families["process_resident_memory_bytes"]}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0
    with pytest.raises(OSError):  # the port is free again: nothing answers
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_off_by_default_and_local_by_default(tmp_path):
    cfg = Config()
    assert cfg.metrics.enabled is False and cfg.metrics.host == "127.0.0.1"
    r = subprocess.run([sys.executable, "-m", "edge", "check-config", str(ROOT / "deploy/config.example.toml")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "metrics:    off" in r.stdout


def test_without_the_package_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if it were not installed
    cfg = parse_config({"metrics": {"enabled": True}})
    with pytest.raises(MetricsUnavailable, match=r"from a checkout: pip install -e '\.\[edge\]'"):
        MetricsServer(cfg, daemon=None)
