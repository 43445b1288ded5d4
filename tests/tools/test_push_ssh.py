"""SSH model push against a real OpenSSH server started by the test on a loopback port.

The "devices" are folder layouts on this machine: each host entry has its own state folder, and the remote
commands run this checkout's ``python -m edge.modelctl`` through a real ``sshd`` with a throwaway host key
and a throwaway client key (root only, key authentication only). There is no systemd service to restart here,
so the inventory's ``restart_command`` stands in for ``systemctl restart``: it loads the model that is now
``current`` (as the daemon does at start) and appends its id to a log, so the test can see what "started".
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.bundle import read_manifest
from edge.runtime.models.store import ModelStore
from edge.tools.push_ssh import InventoryError, load_inventory, push_hosts, select_hosts
from tests.support.broker import free_port
from tests.support.paths import REPO
from tests.support.push import copy_bundle, corrupt_model_keep_manifest_valid, second_bundle

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
pytestmark = pytest.mark.slow


@pytest.fixture
def sshd(tmp_path):
    """A real sshd on 127.0.0.1:<free port>; yields (port, client key, known_hosts file)."""
    if not Path(SSHD).exists() or not shutil.which("ssh"):
        pytest.skip("openssh-server/openssh-client not installed (apt-get install -y openssh-server)")
    if os.geteuid() != 0:
        pytest.skip("sshd must run as root to log users in; this test logs in as root")
    d = tmp_path / "sshd"
    d.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_key")], check=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    # sshd refuses to start without its privilege separation folder.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    port = free_port()
    conf = d / "sshd_config"
    conf.write_text(
        f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d}/host_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
AllowUsers root
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
"""
    )
    with open(d / "sshd.log", "wb") as log:  # sshd keeps its own copy of the descriptor
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited: {(d / 'sshd.log').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("sshd did not listen")
            time.sleep(0.05)
    yield port, d / "client_key", d / "known_hosts"
    proc.terminate()
    proc.wait(5)


def _inventory(tmp_path: Path, port: int, key: Path, known: Path, hosts: list[tuple[str, int]], health: str = "",
               reload: tuple[str, ...] = ('reload = "restart"',)) -> Path:
    """Write an inventory: one [[hosts]] entry per (name, port), each with its own state folder; ``reload``
    holds the [defaults] lines that say how the service reloads."""
    py = shlex.quote(sys.executable)
    lines = [
        "[defaults]",
        'user = "root"',
        f'identity_file = "{key}"',
        f'known_hosts_file = "{known}"',
        f'python = "{sys.executable}"',
        "sudo = false",
        'run_as = ""',
        *reload,
    ]
    for name, p in hosts:
        state = tmp_path / "devices" / name
        started = state / "started.log"
        # "Start the service": load and smoke-test the current model, then log which one (folder name).
        restart = (f"{py} -m edge.modelctl verify-bundle {state}/models/current >/dev/null && "
                   f"readlink {state}/models/current >> {started}")
        lines += ["", "[[hosts]]", f'name = "{name}"', 'host = "127.0.0.1"', f"port = {p}", f'state_dir = "{state}"',
                  'groups = ["lab"]', f"restart_command = {json.dumps(restart)}"]
        if health:
            lines.append(f"health_command = {json.dumps(health)}")
    path = tmp_path / "inventory.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _current_id(tmp_path: Path, name: str) -> str | None:
    cur = ModelStore.for_state_dir(tmp_path / "devices" / name).current()
    return read_manifest(cur).model_id if cur else None


def _started(tmp_path: Path, name: str) -> list[str]:
    """Model ids the stand-in service started, in order (store folders are '<model_id>-<hash12>')."""
    log = tmp_path / "devices" / name / "started.log"
    return [line.rsplit("-", 1)[0] for line in log.read_text().split()] if log.exists() else []


def _push_dirs() -> set[str]:
    return {p.name for p in Path("/tmp").glob("emotion-push.*")}


def test_push_to_two_hosts_and_report_an_unreachable_one(sshd, tmp_path, tiny_bundle):
    port, key, known = sshd
    inv = _inventory(tmp_path, port, key, known, [("pi-a", port), ("pi-b", port), ("pi-down", free_port())])
    before = _push_dirs()
    hosts = load_inventory(inv)
    results = push_hosts(hosts, tiny_bundle)
    by = {r.host: r for r in results}
    new_id = read_manifest(tiny_bundle).model_id
    assert by["pi-a"].ok and by["pi-b"].ok, results
    assert not by["pi-down"].ok and by["pi-down"].step == "copy"
    for name in ("pi-a", "pi-b"):
        assert _current_id(tmp_path, name) == new_id
        assert _started(tmp_path, name) == [new_id]
    assert _push_dirs() == before  # temp folders on the device are removed

    # Second model through the CLI: table per host, exit status 1 because one host is down.
    b = copy_bundle(second_bundle(), tmp_path / "b")
    r = subprocess.run([sys.executable, "-m", "edge.modelctl", "push-ssh", str(b), "--inventory", str(inv)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    table = r.stdout.splitlines()
    assert table[0].split()[:3] == ["host", "result", "step"]
    rows = {line.split()[0]: line for line in table[1:]}
    assert rows["pi-a"].split()[1] == "ok" and rows["pi-down"].split()[1] == "FAILED"
    second_id = read_manifest(b).model_id
    assert _current_id(tmp_path, "pi-a") == second_id
    assert ModelStore.for_state_dir(tmp_path / "devices" / "pi-a").previous() is not None

    # Only the selected host, and the same model again changes nothing.
    only_a = select_hosts(hosts, ["pi-a"])
    [again] = push_hosts(only_a, b)
    assert again.ok and again.detail == "already current"


def test_device_side_verification_refuses_a_model_that_does_not_load(sshd, tmp_path, tiny_bundle):
    port, key, known = sshd
    inv = _inventory(tmp_path, port, key, known, [("pi-a", port)])
    [first] = push_hosts(load_inventory(inv), tiny_bundle)
    assert first.ok
    bad = copy_bundle(tiny_bundle, tmp_path / "bad")
    corrupt_model_keep_manifest_valid(bad)  # files consistent, so only an interpreter can tell
    [r] = push_hosts(load_inventory(inv), bad)
    assert not r.ok and r.step == "verify"
    assert "does not load" in r.detail
    assert _current_id(tmp_path, "pi-a") == read_manifest(tiny_bundle).model_id
    assert _started(tmp_path, "pi-a") == [read_manifest(tiny_bundle).model_id]  # never restarted


def test_failed_health_check_after_the_swap_rolls_back(sshd, tmp_path, tiny_bundle):
    port, key, known = sshd
    old_id = read_manifest(tiny_bundle).model_id
    inv = _inventory(tmp_path, port, key, known, [("pi-a", port)])
    assert push_hosts(load_inventory(inv), tiny_bundle)[0].ok
    # Now the service "does not come up healthy" after the next swap.
    flag = tmp_path / "unhealthy"
    flag.touch()
    inv = _inventory(tmp_path, port, key, known, [("pi-a", port)], health=f"test ! -e {flag}")
    [r] = push_hosts(load_inventory(inv), second_bundle())
    assert not r.ok and r.rolled_back and r.step == "health"
    assert _current_id(tmp_path, "pi-a") == old_id
    new_id = read_manifest(second_bundle()).model_id
    # started old, then the new one (unhealthy), then the old one again after the rollback
    assert _started(tmp_path, "pi-a") == [old_id, new_id, old_id]


def test_an_mqtt_reload_that_gets_no_answer_rolls_back(sshd, tmp_path, tiny_bundle):
    """reload = "mqtt" with no broker (or no device answering): the new model was never proven, so the store
    goes back to the old one and the row says why."""
    port, key, known = sshd
    old_id = read_manifest(tiny_bundle).model_id
    assert push_hosts(load_inventory(_inventory(tmp_path, port, key, known, [("pi-a", port)])), tiny_bundle)[0].ok
    inv = _inventory(tmp_path, port, key, known, [("pi-a", port)],
                     reload=('reload = "mqtt"', 'mqtt_host = "127.0.0.1"', f"mqtt_port = {free_port()}",
                             'mqtt_username = "pusher"'))
    [r] = push_hosts(load_inventory(inv), second_bundle())
    assert not r.ok and r.rolled_back and r.step == "reload", r
    assert "cannot reach the broker" in r.detail and "reload after rollback failed too" in r.detail
    assert _current_id(tmp_path, "pi-a") == old_id


def test_inventory_errors_name_the_key(tmp_path):
    inv = tmp_path / "inv.toml"
    inv.write_text('[defaults]\nuser = "pi"\n\n[[hosts]]\nname = "a"\nhost = "10.0.0.1"\nprot = 22\n')
    with pytest.raises(InventoryError, match=r"hosts\[0\] \(a\)\.prot: unknown key"):
        load_inventory(inv)
    inv.write_text('[defaults]\nreload = "reboot"\n')
    with pytest.raises(InventoryError, match="defaults.reload"):
        load_inventory(inv)
    example = REPO / "deploy" / "inventory.example.toml"
    hosts = load_inventory(example)
    assert hosts and all(h.settings.python.endswith("/bin/python") for h in hosts)
    with pytest.raises(InventoryError, match="unknown host"):
        select_hosts(hosts, ["nope"])
