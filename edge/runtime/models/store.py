"""The device's model store: pushed bundles under ``<state_dir>/models`` with atomically swapped links.

Layout::

    <state_dir>/models/
        <model_id>-<hash12>/        one folder per installed bundle (model.tflite, manifest.json, manifest.sig)
        current -> <model_id>-<hash12>    the model the daemon runs (relative symlink)
        previous -> <model_id>-<hash12>   the one before, for rollback
        .newest-push.json           manifest ``created`` of the newest bundle ever accepted by push (replay guard)

``hash12`` starts the sha256 of the manifest bytes, which hold the model's sha256: two bundles share a folder
only if both their manifests and models are identical.

A link is replaced by creating a new symlink under a temporary name and ``os.replace``-ing it over the old
one, which is atomic on POSIX: a crash or power cut at any moment leaves either the old or the new link,
never none. Bundles are copied into a hidden ``.incoming-*`` folder and renamed into place only once
complete and verified, so a half-copied bundle is never linked.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from edge.bundle import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, BundleError, Manifest, load_bundle

log = logging.getLogger(__name__)

CURRENT = "current"
PREVIOUS = "previous"
NEWEST_PUSH = ".newest-push.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class StoreError(Exception):
    """The model store cannot do what was asked (nothing to roll back to, unknown model, ...)."""


@dataclass(frozen=True)
class StoredModel:
    """One installed bundle."""

    name: str
    path: Path
    model_id: str
    sha256: str
    current: bool
    previous: bool


def folder_name(manifest: Manifest, manifest_bytes: bytes) -> str:
    """Folder name of a bundle in the store: a path-safe model id plus the start of the manifest's sha256.

    The hash keeps apart two bundles that reuse a model id, or the same weights with other labels.
    """
    safe = _UNSAFE.sub("_", manifest.model_id).strip("._") or "model"
    return f"{safe[:80]}-{hashlib.sha256(manifest_bytes).hexdigest()[:12]}"


def parse_created(value: str) -> dt.datetime | None:
    """A manifest's ``created`` as an aware UTC datetime, or None when it is not ISO-8601."""
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once its directory is synced; without this a power cut can undo a swap.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: Age after which a staging folder or temporary link in the store is taken to be a leftover.
STALE_AFTER_S = 600.0


def _mtime(path: Path) -> float:
    """The entry's own modification time (a link's, not its target's); 0 if it vanished meanwhile."""
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


class ModelStore:
    """Installed model bundles with ``current`` and ``previous`` links.

    Args:
        root: The store folder, usually ``<state_dir>/models`` (see :meth:`for_state_dir`).
    """

    def __init__(self, root: Path | str):
        self.root = Path(root).absolute()

    @classmethod
    def for_state_dir(cls, state_dir: Path | str) -> ModelStore:
        """The store of a device state folder."""
        return cls(Path(state_dir) / "models")

    # ----- reading -----
    def _link(self, name: str) -> Path | None:
        link = self.root / name
        if not link.is_symlink():
            return None
        target = link.resolve()
        return target if target.is_dir() else None

    def current(self) -> Path | None:
        """Folder of the active bundle, or None when nothing was installed (the daemon uses its default)."""
        return self._link(CURRENT)

    def previous(self) -> Path | None:
        """Folder of the bundle before the active one, or None."""
        return self._link(PREVIOUS)

    def installed(self) -> list[StoredModel]:
        """All installed bundles, oldest first."""
        if not self.root.is_dir():
            return []
        cur, prev = self.current(), self.previous()
        out = []
        # Links and dot-entries (staging folders, temporary links, which may dangle) are skipped before sorting.
        folders = [d for d in self.root.iterdir() if not d.name.startswith(".") and not d.is_symlink() and d.is_dir()]
        for d in sorted(folders, key=_mtime):
            try:
                manifest, _ = load_bundle(d)
            except BundleError:
                continue
            out.append(StoredModel(d.name, d, manifest.model_id, manifest.sha256, d == cur, d == prev))
        return out

    def newest_push(self) -> dict | None:
        """``{"created", "model_id"}`` of the newest bundle ever accepted by push, or None (none yet, or unreadable)."""
        try:
            data = json.loads((self.root / NEWEST_PUSH).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and parse_created(str(data.get("created"))) else None

    # ----- writing -----
    def record_push(self, manifest: Manifest) -> None:
        """Remember a pushed bundle's ``created`` if it is the newest so far (written atomically)."""
        when = parse_created(manifest.created)
        seen = self.newest_push()
        seen_when = parse_created(seen["created"]) if seen is not None else None
        if when is None or (seen_when is not None and when <= seen_when):
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{NEWEST_PUSH}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps({"created": manifest.created, "model_id": manifest.model_id}) + "\n")
        os.replace(tmp, self.root / NEWEST_PUSH)
        _fsync_dir(self.root)

    def install(self, bundle_dir: Path | str) -> Path:
        """Copy a bundle into the store (validated, not yet active) and return its folder.

        Installing the same model twice returns the existing folder. Raises :class:`edge.bundle.BundleError`
        if the bundle is invalid, before anything is written.
        """
        bundle_dir = Path(bundle_dir)
        manifest, _ = load_bundle(bundle_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / folder_name(manifest, (bundle_dir / MANIFEST_FILE).read_bytes())
        if final.is_dir():
            try:
                load_bundle(final)
                return final
            except BundleError:
                # A damaged copy (e.g. an SD card error): replace it below.
                log.warning("stored bundle %s is damaged; installing it again", final)
                shutil.rmtree(final)
        incoming = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root))
        try:
            for name in (MODEL_FILE, MANIFEST_FILE, SIGNATURE_FILE):
                src = bundle_dir / name
                if src.is_file():
                    shutil.copyfile(src, incoming / name)
                    with open(incoming / name, "rb") as f:
                        os.fsync(f.fileno())
            os.chmod(incoming, 0o755)
            load_bundle(incoming)  # the copy itself is checked, not just the source
            os.replace(incoming, final)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        _fsync_dir(self.root)
        log.info("installed model %s into %s", manifest.model_id, final)
        return final

    def _set_link(self, name: str, target: Path | None) -> None:
        link = self.root / name
        if target is None:
            if link.is_symlink():
                link.unlink()
            return
        tmp = self.root / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # unique per thread too
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        # Relative target, so the store still works when the state folder is moved or bind-mounted.
        os.symlink(os.path.relpath(target, self.root), tmp)
        os.replace(tmp, link)

    def activate(self, folder: Path | str) -> Path | None:
        """Make an installed bundle current, keeping the old current as previous; return the old current.

        Activating the bundle that is already current changes nothing.
        """
        folder = Path(folder)
        if not folder.is_absolute() and not folder.exists():
            folder = self.root / folder  # a bare folder name from `models`
        folder = folder.resolve()
        if folder.parent != self.root.resolve() or not folder.is_dir():
            raise StoreError(f"{folder} is not a bundle in the model store {self.root}; install it first")
        old = self.current()
        if old == folder:
            return old
        if old is not None:
            self._set_link(PREVIOUS, old)
        self._set_link(CURRENT, folder)
        _fsync_dir(self.root)
        log.info("active model is now %s (previous: %s)", folder.name, old.name if old else None)
        return old

    def deactivate(self) -> None:
        """Remove the ``current`` link, so the daemon falls back to its configured or shipped model."""
        cur = self.current()
        if cur is not None:
            self._set_link(PREVIOUS, cur)
        self._set_link(CURRENT, None)
        _fsync_dir(self.root)

    def rollback(self) -> Path:
        """Make the previous bundle current again (the failed one becomes previous); return it."""
        prev, cur = self.previous(), self.current()
        if prev is None:
            raise StoreError("no previous model to roll back to")
        self._set_link(CURRENT, prev)
        self._set_link(PREVIOUS, cur)
        _fsync_dir(self.root)
        log.warning("rolled back to model %s (was %s)", prev.name, cur.name if cur else None)
        return prev

    def prune(self, keep: int = 3) -> list[str]:
        """Delete the oldest bundles beyond ``keep``, never the current or previous one; return what went."""
        removed = []
        models = self.installed()
        extra = len(models) - keep
        for m in models:
            if extra <= 0:
                break
            if m.current or m.previous:
                continue
            shutil.rmtree(m.path, ignore_errors=True)
            removed.append(m.name)
            extra -= 1
        # Leftovers of an install, push or link swap cut short (power cut, SIGKILL). Only old ones: another
        # process (push-ssh's install-bundle) may be filling a fresh one right now.
        now = time.time()
        for pattern in (".incoming-*", ".push-*", ".*.tmp-*"):
            for stale in self.root.glob(pattern) if self.root.is_dir() else []:
                if now - _mtime(stale) < STALE_AFTER_S:
                    continue
                if stale.is_symlink() or stale.is_file():
                    stale.unlink(missing_ok=True)
                else:
                    shutil.rmtree(stale, ignore_errors=True)
        return removed
