"""Workstation side of the SSH model push: copy, verify, swap and reload a bundle on many hosts.

Per host, using the system ``ssh`` client (BatchMode, key authentication only):

1. stream the bundle as a tar into a fresh ``mktemp -d`` folder on the device (no scp/sftp needed);
2. ``<python> -m edge.modelctl install-bundle DIR --verify --state-dir S --activate`` on the device: first the checks
   of ``verify-bundle`` (manifest, sha256, interpreter tensors, smoke inference with the device's own runtime),
   then copy into the model store and switch the ``current`` link atomically (the old one becomes ``previous``);
3. reload: ``systemctl restart`` (``Type=notify`` makes it wait until the daemon is ready, or fail), or an MQTT
   ``reload_model`` command, or nothing; then an optional health command;
4. if step 3 fails, ``<python> -m edge.modelctl rollback`` and the reload again, so the host runs its old model;
5. the temporary folder is always removed.

Hosts come from an inventory TOML (see ``deploy/inventory.example.toml``) and run in parallel; the result is
one row per host.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edge.bundle import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, load_bundle
from edge.schema import Invalid, Validated, option, parse

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)


class InventoryError(Exception):
    """The inventory file is missing or invalid; the message names the key."""


@dataclass(frozen=True, kw_only=True)
class HostSettings(Validated):
    """Settings of one host; the ``[defaults]`` table gives them for all hosts."""

    user: str = option("pi", doc="SSH user; it needs passwordless sudo unless sudo = false.")
    port: int = option(22, doc="SSH port.", ge=1, le=65535)
    identity_file: Path | None = option(None, doc="SSH private key; default: ssh's own choice (agent, ~/.ssh).")
    known_hosts_file: Path | None = option(None, doc="known_hosts file; default: ssh's own (~/.ssh/known_hosts).")
    strict_host_key_checking: Literal["yes", "accept-new"] = option(
        "accept-new", doc="'accept-new' trusts a host on first contact and refuses a changed key; 'yes' needs it known."
    )
    connect_timeout_s: int = option(10, doc="SSH connect timeout.", ge=1)
    ssh_options: list[str] = option(factory=list, doc="Extra '-o' options for ssh, e.g. ['ProxyJump=bastion'].")
    multiplex: bool = option(True, doc="Reuse one SSH connection for all steps of a host (ControlMaster).")
    python: str = option("/opt/emotion-edge/bin/python", doc="The device's venv python (deploy/install.sh puts it here).")
    state_dir: str = option("/var/lib/emotion-edge", doc="The daemon's state folder (systemd StateDirectory).")
    sudo: bool = option(True, doc="Use 'sudo -n' to act as run_as and to restart the service.")
    run_as: str = option("emotion-edge", doc="User that owns the state folder; model files are written as it.")
    service: str = option("emotion-edge", doc="systemd unit name (without .service).")
    reload: Literal["restart", "mqtt", "none"] = option(
        "restart", doc="After the swap: restart the service, send a reload_model MQTT command, or do nothing."
    )
    restart_command: str | None = option(None, doc="Replaces 'systemctl restart <service>' (run on the device).")
    health_command: str | None = option(
        None, doc="Run on the device after the reload; a non-zero exit rolls back. Default: systemctl is-active."
    )
    device_id: str | None = option(None, doc="Device id for reload = 'mqtt'; default: the host's name.")
    mqtt_host: str = option("localhost", doc="Broker the workstation uses for reload = 'mqtt'.")
    mqtt_port: int = option(1883, doc="Broker port for reload = 'mqtt'.", ge=1, le=65535)
    mqtt_prefix: str = option("emotion", doc="Topic prefix for reload = 'mqtt'.")
    mqtt_username: str | None = option(
        None, doc="Broker user for reload = 'mqtt'; the password comes from $EMOTION_EDGE_MQTT_PASSWORD."
    )
    mqtt_tls: bool = option(False, doc="Use TLS to the broker for reload = 'mqtt' (system CA certificates).")
    mqtt_ca_file: Path | None = option(None, doc="CA certificate of the broker for reload = 'mqtt' (implies TLS).")


@dataclass(frozen=True, kw_only=True)
class HostEntry(Validated):
    """One ``[[hosts]]`` entry: a name, an address, groups, and any setting of :class:`HostSettings`."""

    extra_key = "overrides"

    name: str = option(doc="Name shown in the report (and default device id).", min_length=1)
    host: str = option(doc="Address or DNS name to ssh to.", min_length=1)
    groups: list[str] = option(factory=list, doc="Groups for --group selection.")
    overrides: dict[str, Any] = option(factory=dict, doc="The entry's other keys: settings of "
                                      ":class:`HostSettings` for this host alone, over ``[defaults]``.")


@dataclass(frozen=True, kw_only=True)
class Inventory(Validated):
    """The inventory file."""

    defaults: HostSettings = option(factory=HostSettings, doc="Settings for every host.")
    hosts: list[HostEntry] = option(factory=list, doc="The devices.")


@dataclass(frozen=True)
class Host:
    """A host with its effective settings."""

    name: str
    address: str
    groups: tuple[str, ...]
    settings: HostSettings
    #: Folder of the ControlMaster socket while a push runs (set by :func:`push_host`).
    control_dir: str | None = None


def load_inventory(path: Path | str) -> list[Host]:
    """Read an inventory TOML; raise :class:`InventoryError` with a one-line message naming the bad key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InventoryError(f"{path}: inventory not found; start from deploy/inventory.example.toml") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # TOMLDecodeError is a ValueError
        raise InventoryError(f"{path}: cannot read inventory ({exc})") from None
    try:
        inv = parse(Inventory, data)
    except Invalid as exc:
        raise InventoryError(f"{path}: {exc.problems[0]}") from None
    defaults = data.get("defaults", {})
    hosts = []
    for i, entry in enumerate(inv.hosts):
        try:
            settings = parse(HostSettings, {**defaults, **entry.overrides})
        except Invalid as exc:
            raise InventoryError(f"{path}: hosts[{i}] ({entry.name}).{exc.problems[0]}") from None
        hosts.append(Host(entry.name, entry.host, tuple(entry.groups), settings))
    names = [h.name for h in hosts]
    if len(set(names)) != len(names):
        raise InventoryError(f"{path}: host names must be unique")
    return hosts


def select_hosts(hosts: list[Host], names: list[str] | None = None, group: str | None = None) -> list[Host]:
    """Hosts by name and/or group; all when neither is given. Unknown names are an error."""
    if names:
        unknown = set(names) - {h.name for h in hosts}
        if unknown:
            raise InventoryError(f"unknown host(s) {', '.join(sorted(unknown))}; the inventory has {', '.join(h.name for h in hosts)}")
        hosts = [h for h in hosts if h.name in names]
    if group:
        hosts = [h for h in hosts if group in h.groups]
    if not hosts:
        raise InventoryError("no host selected; check --host/--group against the inventory")
    return hosts


@dataclass
class HostResult:
    """Outcome for one host."""

    host: str
    ok: bool
    step: str
    model_id: str | None = None
    previous: str | None = None
    rolled_back: bool = False
    detail: str = ""
    seconds: float = 0.0


class _StepFailed(Exception):
    def __init__(self, step: str, detail: str):
        super().__init__(detail)
        self.step = step
        self.detail = detail


def _ssh_base(host: Host) -> list[str]:
    s = host.settings
    cmd = ["ssh", "-p", str(s.port), "-o", "BatchMode=yes", "-o", f"ConnectTimeout={s.connect_timeout_s}",
           "-o", f"StrictHostKeyChecking={s.strict_host_key_checking}", "-o", "LogLevel=ERROR"]
    if s.identity_file:
        cmd += ["-i", str(Path(s.identity_file).expanduser()), "-o", "IdentitiesOnly=yes"]
    if s.known_hosts_file:
        cmd += ["-o", f"UserKnownHostsFile={Path(s.known_hosts_file).expanduser()}"]
    for opt in s.ssh_options:
        cmd += ["-o", opt]
    if host.control_dir:
        # Each step would otherwise pay a full key exchange, which takes seconds on a Pi.
        cmd += ["-o", "ControlMaster=auto", "-o", f"ControlPath={host.control_dir}/%C", "-o", "ControlPersist=60"]
    return [*cmd, f"{s.user}@{host.address}"]


def _run(host: Host, step: str, remote: str, stdin: bytes | None = None, timeout: float = 300) -> str:
    """Run one remote shell command; return stdout or raise _StepFailed with the last line of stderr."""
    try:
        proc = subprocess.run([*_ssh_base(host), remote], input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise _StepFailed(step, f"timed out after {timeout:.0f} s") from None
    except FileNotFoundError:
        raise _StepFailed(step, "ssh client not found; install openssh-client") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        out = proc.stdout.decode(errors="replace").strip().splitlines()
        last = (err or out or [f"exit status {proc.returncode}"])[-1]
        if proc.returncode == 255 and step == "copy":
            last = f"ssh failed: {last}"
        raise _StepFailed(step, last)
    return proc.stdout.decode(errors="replace")


def _as_owner(s: HostSettings, argv: list[str]) -> str:
    cmd = shlex.join(argv)
    if s.sudo and s.run_as:
        return f"sudo -n -u {shlex.quote(s.run_as)} {cmd}"
    return cmd


def _privileged(s: HostSettings, cmd: str) -> str:
    return f"sudo -n {cmd}" if s.sudo else cmd


def _bundle_tar(bundle_dir: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in (MODEL_FILE, MANIFEST_FILE, SIGNATURE_FILE):
            if (bundle_dir / name).is_file():
                tar.add(bundle_dir / name, arcname=name)
    return buf.getvalue()


def _reload(host: Host) -> None:
    s = host.settings
    if s.reload == "none":
        return
    if s.reload == "restart":
        cmd = s.restart_command or _privileged(s, f"systemctl restart {shlex.quote(s.service)}")
        _run(host, "restart", cmd, timeout=180)
    else:
        from edge.config import TlsConfig
        from edge.protocol.broker import BrokerSettings, legacy_password
        from edge.tools.push_mqtt import PushError, send_command

        # Name the store's link: the daemon would otherwise reload the folder it already runs.
        command = {"command": "reload_model", "bundle_dir": f"{s.state_dir.rstrip('/')}/models/current"}
        ca = s.mqtt_ca_file.expanduser() if s.mqtt_ca_file else None
        password = os.environ.get("EMOTION_EDGE_MQTT_PASSWORD") or legacy_password("EMOTION_EDGE_MQTT_PASSWORD")
        broker = BrokerSettings(host=s.mqtt_host, port=s.mqtt_port, username=s.mqtt_username, password=password,
                                tls=TlsConfig(enabled=bool(s.mqtt_tls or ca), ca_file=ca))
        try:
            reply = send_command(broker, s.mqtt_prefix, s.device_id or host.name, command)
        except PushError as exc:  # no broker or no answer: the new model is unproven, so it must roll back
            raise _StepFailed("reload", str(exc)) from None
        if not reply.get("ok"):
            raise _StepFailed("reload", f"reload_model failed: {reply.get('detail')}")
    health = s.health_command
    if health is None and s.reload == "restart" and s.restart_command is None:
        health = _privileged(s, f"systemctl is-active --quiet {shlex.quote(s.service)}")
    if health:
        _run(host, "health", health, timeout=60)


def push_host(host: Host, bundle_dir: Path) -> HostResult:
    """Push one bundle to one host (steps in the module docstring); never raises."""
    started = time.monotonic()
    s = host.settings
    control_dir = tempfile.mkdtemp(prefix="eep-") if s.multiplex else None
    host = dataclasses.replace(host, control_dir=control_dir)
    result = HostResult(host.name, ok=False, step="copy")
    tmp = None
    activated = False
    try:
        manifest, _ = load_bundle(bundle_dir)
        result.model_id = manifest.model_id
        out = _run(host, "copy", 'd=$(mktemp -d /tmp/emotion-push.XXXXXX) && tar -x -C "$d" && chmod 755 "$d" && '
                   'chmod 644 "$d"/* && echo "$d"', stdin=_bundle_tar(bundle_dir))
        tmp = out.strip().splitlines()[-1]
        # Verify and install in one remote process (one interpreter start instead of two on a slow Pi).
        result.step = "verify"
        try:
            out = _run(host, "install", _as_owner(s, [s.python, "-m", "edge.modelctl", "install-bundle", tmp, "--verify",
                                                      "--state-dir", s.state_dir, "--activate", "--json"]))
        except _StepFailed as exc:
            detail = exc.detail.removeprefix("error: ")
            if detail.startswith("verify: "):
                raise _StepFailed("verify", detail.removeprefix("verify: ")) from None
            raise _StepFailed("install", detail) from None
        info = json.loads(out.strip().splitlines()[-1])
        result.previous = info.get("previous_model_id")
        activated = bool(info.get("changed"))
        result.step = "reload"
        try:
            _reload(host)
        except _StepFailed as exc:
            if not activated:
                raise
            # The new model did not come up: put the old one back and reload again, then report the failure.
            _run(host, "rollback", _as_owner(s, [s.python, "-m", "edge.modelctl", "rollback", "--state-dir", s.state_dir]))
            result.rolled_back = True
            try:
                _reload(host)
            except _StepFailed as exc2:
                exc.detail += f"; reload after rollback failed too: {exc2.detail}"
            raise exc from None
        result.ok, result.step = True, "done"
        result.detail = "swapped" if activated else "already current"
    except _StepFailed as exc:
        result.step, result.detail = exc.step, exc.detail
    except Exception as exc:  # a bad bundle on the workstation, unexpected output: still one row per host
        result.detail = f"{exc.__class__.__name__}: {exc}"
    finally:
        if tmp and tmp.startswith("/tmp/emotion-push."):
            try:
                _run(host, "cleanup", f"rm -rf {shlex.quote(tmp)}", timeout=30)
            except _StepFailed as exc:
                log.warning("%s: could not remove %s: %s", host.name, tmp, exc.detail)
        if control_dir:
            subprocess.run([*_ssh_base(host)[:-1], "-O", "exit", _ssh_base(host)[-1]], capture_output=True, timeout=30)
            shutil.rmtree(control_dir, ignore_errors=True)
        result.seconds = round(time.monotonic() - started, 2)
    return result


def push_hosts(hosts: list[Host], bundle_dir: Path | str, parallel: int = 4) -> list[HostResult]:
    """Push a bundle to many hosts in parallel; one result per host, in inventory order."""
    bundle_dir = Path(bundle_dir)
    load_bundle(bundle_dir)  # fail once, here, rather than once per host
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return list(pool.map(lambda h: push_host(h, bundle_dir), hosts))


def format_table(results: list[HostResult]) -> str:
    """The per-host report as a text table."""
    rows = [("host", "result", "step", "model", "previous", "time", "detail")]
    for r in results:
        status = "ok" if r.ok else ("ROLLED BACK" if r.rolled_back else "FAILED")
        rows.append((r.host, status, r.step, r.model_id or "-", r.previous or "-", f"{r.seconds:.1f}s", r.detail))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:6], widths, strict=True)) + "  " + row[6] for row in rows]
    return "\n".join(lines)
