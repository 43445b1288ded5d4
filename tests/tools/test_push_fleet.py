"""A group push to a fleet: ``python -m edge push-mqtt BUNDLE --group G --expect 20`` against 20 simulated devices
on one real Mosquitto (each a real ``MqttSink`` + ``ModelPushReceiver`` with its own model store; the daemon is a
stand-in that loads the pushed model into a real classifier). One device trusts another key and refuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge.bundle import default_bundle_dir, read_manifest
from tests.support.paths import REPO
from tests.support.push import SimulatedFleet, make_keys, restamped_signed_copy

N = 20
REFUSER = 7
pytestmark = pytest.mark.slow


def _push(bundle: Path, broker, group: str, expect: int) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "edge", "push-mqtt", str(bundle), "--group", group, "--expect", str(expect),
            "--wait", "60", "--settle", "0", "--mqtt-host", broker.host, "--mqtt-port", str(broker.port)]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=180)


def _rows(stdout: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in stdout.splitlines() if line.startswith("pi-")}


def test_group_push_to_20_devices_every_answer_counts_and_a_refusal_fails_the_command(broker, tmp_path, tiny_bundle):
    release, _ = make_keys(tmp_path, "release")
    _, intruder_pub = make_keys(tmp_path, "intruder")
    # Every device is in "lab"; all but the refusing one are also in "good".
    fleet = SimulatedFleet(tmp_path / "fleet", broker.host, broker.port, N, tmp_path / "release.key.pub", intruder_pub,
                           groups=lambda i: ["lab"] if i == REFUSER else ["lab", "good"], refusing=(REFUSER,))
    try:
        assert fleet.wait_ready(30), "not every simulated device subscribed"
        bundle = restamped_signed_copy(tiny_bundle, tmp_path / "b1", release, "2100-01-01T00:00:00+00:00")
        r = _push(bundle, broker, "lab", N)
        assert r.returncode == 1, r.stdout + r.stderr
        rows = _rows(r.stdout)
        assert sorted(rows) == [f"pi-{i:02d}" for i in range(N)], r.stdout  # every device answered
        refuser = f"pi-{REFUSER:02d}"
        assert rows[refuser][1:3] == ["REFUSED", "untrusted_key"], rows[refuser]
        assert all(row[1] == "ok" and row[2] == "ok" for dev, row in rows.items() if dev != refuser), r.stdout
        assert f"{N} answered: {N - 1} ok, 1 refused" in r.stdout
        assert f"1 of {N} device(s) did not take the model: {refuser}" in r.stderr
        model_id = read_manifest(bundle).model_id
        assert [m.model_id for i, m in enumerate(fleet.models) if i != REFUSER] == [model_id] * (N - 1)
        shipped = read_manifest(default_bundle_dir()).model_id
        assert fleet.models[REFUSER].model_id == shipped  # it still runs what it ran

        # The devices that trust the key, as their own group: all take a newer model, exit status 0.
        newer = restamped_signed_copy(tiny_bundle, tmp_path / "b2", release, "2100-01-02T00:00:00+00:00")
        r = _push(newer, broker, "good", N - 1)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"{N - 1} answered: {N - 1} ok" in r.stdout and "refused" not in r.stdout

        # Expecting more devices than the group has: every one answers, the missing count fails the command.
        again = restamped_signed_copy(tiny_bundle, tmp_path / "b3", release, "2100-01-03T00:00:00+00:00")
        r = subprocess.run([sys.executable, "-m", "edge", "push-mqtt", str(again), "--group", "good", "--expect", str(N),
                            "--wait", "5", "--settle", "0", "--mqtt-host", broker.host, "--mqtt-port", str(broker.port)],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and f"only {N - 1} of {N} expected device(s) answered" in r.stderr, r.stderr
        assert f"1 of {N} expected did not answer" in r.stdout
    finally:
        fleet.close()
