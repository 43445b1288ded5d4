"""The systemd unit: `systemd-analyze verify` passes and the offline security exposure is at most 2.5.

Runs deploy/check_unit.sh (which prints both reports); skips cleanly where systemd-analyze is missing
(apt-get install -y systemd).
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.paths import REPO

UNIT = REPO / "systemd" / "emotion-edge.service"
CHECK = REPO / "deploy" / "check_unit.sh"


def _directives(path: Path) -> dict[str, list[str]]:
    """All Key=value lines of the unit (a key may repeat), ignoring comments."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line.strip())
        if m:
            out.setdefault(m.group(1), []).append(m.group(2).strip())
    return out


def test_unit_has_the_required_settings():
    d = _directives(UNIT)
    assert d["Type"] == ["notify"] and d["Restart"] == ["on-failure"] and int(d["WatchdogSec"][0]) > 0
    assert d["User"] == ["emotion-edge"] and "video" in d["SupplementaryGroups"][0].split()
    assert d["StateDirectory"] == ["emotion-edge"] and d["ConfigurationDirectory"] == ["emotion-edge"]
    assert d["LoadCredential"][0].startswith("mqtt_password:")
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables", "ProtectKernelModules",
                "ProtectKernelLogs", "ProtectControlGroups"):
        assert d[key] == ["yes"], key
    assert d["ProtectSystem"] == ["strict"] and d["CapabilityBoundingSet"] == [""]
    assert "@system-service" in d["SystemCallFilter"]
    assert d["DevicePolicy"] == ["closed"]
    allowed = {v.split()[0] for v in d["DeviceAllow"]}
    assert allowed == {"char-video4linux", "char-media", "char-dma_heap"}
    assert not any("*" in v for v in d["DeviceAllow"])
    assert "PrivateDevices" not in d  # it would hide the camera
    assert d["MemoryMax"] and "DynamicUser" not in d
    # Parses as an INI file with the three usual sections (duplicate keys allowed, as systemd does).
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read_string(UNIT.read_text())
    assert set(cp.sections()) == {"Unit", "Service", "Install"}


def test_check_unit_script_passes_verify_and_exposure():
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed (apt-get install -y systemd)")
    r = subprocess.run(["bash", str(CHECK)], capture_output=True, text=True, timeout=120)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verify: OK" in r.stdout
    exposure = float(re.search(r"exposure: ([0-9.]+)", r.stdout).group(1))
    assert exposure <= 2.5


def test_check_unit_script_fails_a_weak_or_broken_unit(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed (apt-get install -y systemd)")
    hardening = re.compile(r"^(NoNewPrivileges|ProtectSystem|ProtectHome|PrivateTmp|ProtectKernel\w+|CapabilityBoundingSet|"
                           r"SystemCallFilter|RestrictAddressFamilies|DevicePolicy|User|MemoryDenyWriteExecute|"
                           r"RestrictNamespaces|LockPersonality|ProtectProc|ProcSubset)=")
    weak = tmp_path / "emotion-edge.service"
    weak.write_text("\n".join(line for line in UNIT.read_text().splitlines() if not hardening.match(line)) + "\n")
    r = subprocess.run(["bash", str(CHECK), str(weak)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "security: FAILED" in r.stdout, r.stdout

    typo = tmp_path / "typo" / "emotion-edge.service"
    typo.parent.mkdir()
    typo.write_text(UNIT.read_text().replace("Restart=on-failure", "Restart=on-failure\nRestrt=always"))
    r = subprocess.run(["bash", str(CHECK), str(typo)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "verify: FAILED" in r.stdout and "Restrt" in r.stdout, r.stdout
