"""The short version of benchmarks/fault_suite.py: the real daemon (demo source, shipped model, a subprocess)
against a real Mosquitto through a broker outage, broker flaps, a full state folder during an outage (a 2 MB
tmpfs: root only) and a command flood. It asserts behaviour, not speed: nothing lost or out of the daemon's
control, publishing resumes after every return of the broker, no traceback, a clean exit. The figures (times to
recover, delays) come from the full script, quoted in README's delivery guarantees."""

from __future__ import annotations

import pytest

from benchmarks.fault_suite import run_case
from tests.support.broker import mosquitto_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not mosquitto_available(), reason="mosquitto is not installed (apt-get install -y mosquitto)"),
]

SHORT = {"outage_s": 3, "flaps": 2, "flap_down_s": 1.0, "flap_up_s": 2.0, "disk_outage_s": 5, "free_kb": 64,
         "flood": 20_000, "settle_s": 2.0}


@pytest.mark.parametrize("case", ["outage", "flaps", "disk", "flood"])
def test_the_daemon_survives_the_fault_and_loses_nothing(case, tmp_path):
    res = run_case(case, tmp_path, **SHORT)
    if any(note.startswith("skipped") for note in res.notes):
        pytest.skip(res.notes[0])
    assert res.alive and res.exit_code == 0 and res.tracebacks == 0, res.line()
    assert res.delivered > 0 and res.lost.get("any", 0) == 0, res.line()
    if case in ("outage", "flaps", "disk"):
        # Every return of the broker was followed by fresh faces (run_case waits for them, with a deadline).
        assert len(res.fresh_faces_s) == (SHORT["flaps"] if case == "flaps" else 1), res.line()
        assert all(t != float("inf") for t in res.fresh_faces_s), res.line()
    if case == "disk":
        assert any("full disk" in note for note in res.notes), res.line()  # the fault did happen
