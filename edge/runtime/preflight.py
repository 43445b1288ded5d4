"""What ``run`` will need, checked without starting the pipeline (``check-config``), and the state folder check
that ``run`` itself does first.

Every check returns problems as one line each (what is wrong, what to do) instead of raising at the first, so
``check-config`` lists them all. Nothing here creates or changes anything on the device: the state folder is
tested with a temporary file that is removed at once, and a missing one only needs a writable parent (``run``
creates it). The camera is never opened (a running daemon may hold it): a Pi camera is checked by importing
its library, a camera index or a stream URL is not checked.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edge.config import Config
from edge.schema import dump
from edge.version import opencv_missing, opencv_uses

#: Files in the state folder that ``run`` writes to when they exist.
_STATE_FILES = ("outbox.db", "outbox.db-wal", "outbox.db-shm", "models", "ha_discovery_topics.json")


@dataclass
class Report:
    """The outcome of :func:`check`: ``errors`` make ``run`` fail; ``notes`` are worth knowing but not fatal."""

    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: What was checked and found usable, as ``(what, detail)`` pairs for the summary.
    ok: list[tuple[str, str]] = field(default_factory=list)


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return f"uid {os.geteuid()}"


#: What to do about a folder that refuses writes, by errno; the rest is an ownership or permission problem.
_WRITE_FIXES = {
    errno.EROFS: "the file system is mounted read-only: remount it read-write or choose another folder",
    errno.ENOSPC: "the disk is full: free some space or choose another folder",
    errno.EDQUOT: "the user's disk quota is used up: free some space or choose another folder",
    errno.EIO: "an I/O error: the storage is failing (see dmesg; check or replace the SD card or disk)",
}


def _cannot_write(folder: Path) -> OSError | None:
    """Why a file cannot be written in ``folder`` (tried with a temporary file of one page, removed at once), or
    None. Permission bits do not tell: ACLs, read-only mounts, and root, for whom access() says yes to everything;
    a full disk still takes an empty file, hence the page."""
    try:
        fd, name = tempfile.mkstemp(prefix=".edge-write-check-", dir=folder)
    except OSError as exc:
        return exc
    try:
        os.write(fd, b"\0" * 4096)
        os.fsync(fd)
    except OSError as exc:
        return exc
    finally:
        os.close(fd)
        os.unlink(name)
    return None


def _write_fix(exc: OSError, path: Path, user: str) -> str:
    """The cause of a refused write and what to do: chown only where ownership can be the cause."""
    why = exc.strerror or str(exc)
    fix = _WRITE_FIXES.get(exc.errno or 0)
    if fix:
        return f"{why}; {fix}"
    return f"{why}; fix its owner (e.g. chown -R {user} {path}) or choose another folder"


def writable_dir_problem(path: Path, key: str) -> str | None:
    """Why the current user cannot write into the folder ``path`` (named by config ``key``), or None.

    An existing folder must take a new file, and the state files already in it must be writable; a missing one
    needs its nearest existing parent to take one (``run`` creates the folder; this check does not).
    """
    user = _user()
    if path.exists():
        if not path.is_dir():
            return f"{key}: {path} is not a folder"
        exc = _cannot_write(path)
        if exc:
            return f"{key}: {path} is not writable by user {user}: {_write_fix(exc, path, user)}"
        stuck = [p.name for p in map(path.joinpath, _STATE_FILES) if p.exists() and not os.access(p, os.W_OK)]
        if stuck:
            return (f"{key}: {', '.join(stuck)} in {path} not writable by user {user} (left by a run as "
                    f"another user?); fix the owner: chown -R {user} {path}")
        return None
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    exc = _cannot_write(parent) if parent.is_dir() else None
    why = "not a folder" if not parent.is_dir() else exc and (exc.strerror or str(exc))
    if why:
        return f"{key}: {path} does not exist and cannot be created by user {user} ({parent}: {why})"
    return None


def check_state_dir(config: Config) -> str | None:
    """Why ``run`` could not use the state folder, or None; ``run`` refuses to start on it (one line)."""
    return writable_dir_problem(config.state_dir_path(), "device.state_dir")


def _check_source(config: Config, report: Report) -> None:
    from edge.runtime.capture import may_appear_later, open_source
    from edge.runtime.capture.base import SourceError

    uri = config.source.uri
    if uri == "picamera2":
        if importlib.util.find_spec("picamera2") is None:
            # A note, not an error: install.sh writes this source on any host and checks the file it wrote.
            report.notes.append("source.uri = 'picamera2' but picamera2 is not importable here, so run will fail; on "
                                "Raspberry Pi OS run 'apt install python3-picamera2' and create the venv with "
                                "--system-site-packages, or use another source")
        else:
            report.ok.append(("source", "picamera2 importable (camera not opened)"))
        return
    if opencv_uses({"source": {"uri": uri}}) and importlib.util.find_spec("cv2") is None:
        return  # check() reports the missing OpenCV
    if may_appear_later(uri):  # picamera2 is handled above: a camera index or a stream
        report.notes.append(f"source {uri}: cameras and streams are not opened by check-config; run retries them")
        return
    if not (uri == "demo" or uri.startswith("demo:")):
        path = Path(uri)
        if path.exists() and not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
            report.errors.append(f"source.uri: {path} is not readable by user {_user()}")
            return
    try:
        source = open_source(uri, config.source)
    except SourceError as exc:
        report.errors.append(f"source.uri: {exc}")
        return
    source.close()
    report.ok.append(("source", uri))


def _check_model(config: Config, report: Report) -> None:
    from edge.bundle import BundleError, default_bundle_dir
    from edge.runtime.classify.interpreter import RuntimeMissing
    from edge.runtime.models.check import check_bundle
    from edge.runtime.models.manager import PUSHED, boot_choice
    from edge.runtime.models.store import ModelStore

    chosen_dir, chosen = boot_choice(config.classifier, ModelStore.for_state_dir(config.state_dir_path()))
    bundle = chosen_dir or default_bundle_dir()
    c = config.classifier
    try:
        manifest, runtime = check_bundle(bundle, c.threads, None if c.runtime == "auto" else c.runtime)
        if c.prior_correction > 0 and manifest.class_prior() is None:  # run refuses such a bundle
            raise BundleError(f"model {manifest.model_id} records no training class counts, so "
                              "classifier.prior_correction cannot apply; set it to 0 or use a bundle made by train_export")
    except (BundleError, RuntimeMissing) as exc:
        if chosen != PUSHED:  # the one choice whose failure `run` survives (it rolls the pushed model back)
            report.errors.append(f"model ({chosen}): {exc}")
        else:  # a broken pushed model is rolled back at start, so run still starts
            report.notes.append(f"model ({chosen}, {bundle}) does not load ({exc}); run rolls it back")
        return
    report.ok.append(("model", f"{manifest.model_id} ({chosen}; smoke inference on {runtime} passed)"))


def _check_detector(config: Config, report: Report) -> None:
    from edge.runtime.detect import make_detector
    from edge.runtime.detect.base import DetectorError

    d = config.detector
    if opencv_uses({"detector": {"backend": d.backend}}) and importlib.util.find_spec("cv2") is None:
        return  # check() reports the missing OpenCV
    try:
        det = make_detector(d)
    except DetectorError as exc:
        report.errors.append(f"detector.backend = {d.backend!r}: {exc}")
        return
    report.ok.append(("detector", f"{d.backend} -> {type(det).__name__}"))


def _check_files(config: Config, report: Report) -> None:
    from edge.protocol.broker import BrokerError, tls_context
    from edge.protocol.signing import SignatureError, load_public_key

    tls = config.mqtt.tls
    if config.mqtt.enabled and tls.enabled:
        try:
            tls_context(tls)
        except BrokerError as exc:
            report.errors.append(str(exc))
        else:
            report.ok.append(("tls", "certificate files load"))
    push = config.model_push
    if push.enabled:
        if not push.trusted_keys:
            report.errors.append("model_push.enabled is true but model_push.trusted_keys is empty: every push would "
                                 "be refused; add the signer's .pub file")
        for i, path in enumerate(push.trusted_keys):
            try:
                load_public_key(path)
            except SignatureError as exc:
                report.errors.append(f"model_push.trusted_keys.{i}: {exc}")
        if push.trusted_keys:
            report.ok.append(("push keys", f"{len(push.trusted_keys)} configured"))


def _check_broker_host(config: Config, report: Report) -> None:
    """A note, not an error, when ``mqtt.host`` does not resolve: the network (or the DNS) may come up after the
    device does, and ``run`` retries the broker with backoff."""
    m = config.mqtt
    if not m.enabled or not m.host:
        return
    import socket

    try:
        socket.getaddrinfo(m.host, m.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        report.notes.append(f"mqtt.host {m.host!r} does not resolve here ({getattr(exc, 'strerror', None) or exc});"
                            " run keeps retrying it, but check the name if the network is up")
    else:
        report.ok.append(("broker host", f"{m.host} resolves"))


def check(config: Config) -> Report:
    """Every check of what ``run`` needs: state folder, source, model (with a smoke inference), detector, TLS
    files and trusted keys, and the debug preview folder."""
    report = Report()
    problem = check_state_dir(config)
    if problem:
        report.errors.append(problem)
    else:
        path = config.state_dir_path()
        report.ok.append(("state dir", f"{path} {'writable' if path.exists() else 'can be created'} by {_user()}"))
    _check_source(config, report)
    _check_model(config, report)
    _check_detector(config, report)
    _check_files(config, report)
    _check_broker_host(config, report)
    if importlib.util.find_spec("cv2") is None:
        report.errors.extend(opencv_missing(use) for use in opencv_uses(dump(config)))
    if config.metrics.enabled and importlib.util.find_spec("prometheus_client") is None:
        from edge.version import install_hint

        report.errors.append(f"metrics.enabled = true needs the prometheus-client package: {install_hint('edge')}, "
                             "or pip install prometheus-client; or set metrics.enabled = false")
    preview = config.privacy.debug_preview_dir
    if preview is not None:
        problem = writable_dir_problem(preview, "privacy.debug_preview_dir")
        if problem:
            report.errors.append(problem)

    return report
