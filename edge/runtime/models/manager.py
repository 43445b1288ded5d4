"""The one owner of the device's model: the boot choice, the model in use and the one before it, swaps,
rollbacks (at start, after a swap, on a frame), the model store's links, and the push reports.

Boot order: ``classifier.model`` when configured, else the model store's ``current`` link (a pushed model), else
the bundle shipped with the package. A pushed model that fails to load or to run its smoke inference at start (a
model that crashed the service after a swap, a corrupted SD card) would otherwise stop the service for good:
instead the store is rolled back to ``previous`` (or, without one, the ``current`` link is removed so the shipped
default loads), and the rollback is kept as a report for the model push extension to publish once MQTT is up.

A swap loads and smoke-tests the new bundle before anything changes; the old classifier is kept until the new one
has classified real faces, so a model that loads but fails on them (a runtime crash, a broken op) is replaced by
the one that worked, on the same frame, and the store's ``current`` link follows (a restart must not load the
failing model). Safe to swap from any thread: the reference changes between frames.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.bundle import BundleError, Manifest, read_manifest
from edge.config import ClassifierConfig
from edge.runtime.classify.classifier import Box, Classifier, Eyes
from edge.runtime.models.store import CURRENT, ModelStore

log = logging.getLogger(__name__)

#: Bundles kept in the store (current and previous are never deleted).
KEEP_MODELS = 3

#: Publishes a push result object (the model push extension's event); see :meth:`ModelManager.connect`.
Announce = Callable[[dict[str, Any]], None]


#: How :func:`boot_choice` names its choices (``check-config`` says which one ``run`` will load).
CONFIGURED = "classifier.model"
PUSHED = "the model store's current (pushed) model"
SHIPPED = "the shipped default"


def boot_choice(section: ClassifierConfig, store: ModelStore) -> tuple[Path | None, str]:
    """The bundle a start loads first (None: the shipped one) and which rule chose it: ``classifier.model``
    when configured, else the store's ``current`` link, else the shipped bundle (also when the store cannot be
    read: a broken store must not stop the daemon from using its default model)."""
    if section.model is not None:
        return Path(section.model), CONFIGURED
    try:
        current = store.current()
    except OSError as exc:
        log.warning("cannot read the model store (%s); using the default model", exc)
        return None, SHIPPED
    return (current, PUSHED) if current is not None else (None, SHIPPED)


class SwapFailed(Exception):
    """A pushed model was installed but could not be swapped in; the store's links were put back."""


class ModelManager:
    """The model in use, the rules for changing it, and the store that a restart loads from.

    Args:
        section: The ``[classifier]`` section (its model, threads, runtime and per-face options).
        state_dir: The device state folder (the store is ``<state_dir>/models``).

    Raises:
        BundleError, RuntimeMissing: no model can be loaded (the configured one, or the shipped one).
    """

    def __init__(self, section: ClassifierConfig, state_dir: Path) -> None:
        self.section = section
        self.store = ModelStore.for_state_dir(state_dir)
        self._lock = threading.Lock()
        # The push worker and the frame thread (a rollback on a frame) both move the store's links: one at a
        # time, so a rollback's check-then-act cannot interleave with a new push's activation.
        self._store_lock = threading.RLock()
        self._previous: Classifier | None = None
        # The bundle folder (resolved) the last push swapped in and that push's id, so a rollback of that folder
        # answers the push.
        self._last_applied: tuple[Path, str | None] | None = None
        self._announce: Announce | None = None
        self._boot_report: dict[str, Any] | None = None
        #: The last push result with its time, for the status's ``model_push`` block (None before any).
        self.last_report: dict[str, Any] | None = None
        self._current = self._boot()

    # ------------------------------------------------------------------------------------------------ reading

    @property
    def classifier(self) -> Classifier:
        """The classifier in use right now."""
        return self._current

    @property
    def model_id(self) -> str:
        """The id of the model in use right now."""
        return self._current.model_id

    @property
    def bundle_dir(self) -> Path:
        """The bundle folder of the model in use right now."""
        return Path(self._current.bundle_dir)

    def load(self, bundle_dir: Path | str | None) -> Classifier:
        """A classifier of ``bundle_dir`` (None: the shipped one) with this section's options (not swapped in)."""
        return Classifier.from_config(bundle_dir, self.section)

    def current_link(self) -> Path:
        """The model store's ``current`` link (what a push or ``modelctl rollback`` makes current)."""
        return self.store.root.resolve() / CURRENT

    def reload_target(self, bundle_dir: object) -> Path | None:
        """The folder a ``reload_model`` command may load: the running bundle, or the model store's ``current``.

        The command topic carries no signature, so it must not be able to point the daemon at arbitrary files,
        nor at an older model kept in the store (which would get around the push's downgrade check).
        """
        running = self.bundle_dir
        if not bundle_dir:
            return running
        target = Path(str(bundle_dir)).resolve()
        allowed = (running.resolve(), self.current_link().resolve())
        return target if target in allowed else None

    # ------------------------------------------------------------------------------------------------ changing

    def swap(self, bundle_dir: Path | str) -> Classifier:
        """Load and smoke-test ``bundle_dir``, then use it from the next frame on; return it.

        Raises:
            BundleError, RuntimeMissing: the new model cannot be loaded or run; the old one stays in use.
        """
        new = self.load(bundle_dir)  # raises before anything changes
        with self._lock:
            self._previous, self._current = self._current, new
        log.info("model swapped: now running %s from %s", new.model_id, new.bundle_dir)
        return new

    def adopt_push(self, installed: Path, manifest: Manifest, push_id: str | None) -> None:
        """Make an installed (checked) pushed bundle current in the store and swap it in; record it as the newest
        accepted push and prune old bundles.

        Raises:
            SwapFailed: the swap failed (its message is the cause's); the store's ``current`` link was put back,
                so the running model and the one a restart would load stay the old one.
            StoreError, OSError: the store could not make it current; nothing changed.
        """
        with self._store_lock:
            old = self.store.current()
            self.store.activate(installed)
            # Before the swap: a failure on the very first frames must answer this push's id.
            self._last_applied = (installed.resolve(), push_id)
            try:
                self.swap(installed)
            except Exception as exc:
                # Unless the link already named this bundle (nothing to undo), put it back to the running model.
                if old != installed.resolve():
                    if old is not None:
                        self.store.rollback()
                    else:
                        self.store.deactivate()
                raise SwapFailed(str(exc)) from exc
            try:
                self.store.record_push(manifest)
            except OSError as exc:
                log.warning("model push: cannot record the newest pushed model (%s); the replay guard keeps its old mark", exc)
            try:
                self.store.prune(KEEP_MODELS)
            except OSError as exc:  # the new model runs and is recorded: a failed clean-up must not report failure
                log.warning("model push: cannot prune old models (%s)", exc)

    def classify(self, image: np.ndarray, boxes: list[Box], eyes: list[Eyes] | None = None) -> tuple[Classifier, np.ndarray]:
        """Probabilities of the faces at ``boxes`` (with their ``eyes``, see :meth:`Classifier.crops`), and the
        classifier that produced them.

        A freshly swapped model that fails here is replaced by the one before it, which classifies the frame
        instead (and the store's ``current`` link goes back with it); any other failure is raised.
        """
        clf = self._current
        try:
            return clf, clf.classify(image, boxes, eyes)
        except Exception as exc:
            with self._lock:
                prev = self._previous
                if prev is None or clf is not self._current:
                    raise
                log.error("model %s failed on a frame (%s); rolling back to %s", clf.model_id, exc, prev.model_id)
                self._current, self._previous = prev, None
            self._rolled_back(Path(clf.bundle_dir), clf.model_id, Path(prev.bundle_dir), str(exc))
            return prev, prev.classify(image, boxes, eyes)

    # ------------------------------------------------------------------------------------------------ reports

    def connect(self, announce: Announce) -> None:
        """Hand every later report (a rollback) to ``announce``, the model push extension's publisher; a rollback
        made at start is handed over at once."""
        self._announce = announce
        pending, self._boot_report = self._boot_report, None
        if pending is not None:
            announce(pending)

    def record(self, result: dict[str, Any]) -> None:
        """Keep a push result (with the time now) for the status's ``model_push`` block."""
        self.last_report = {**result, "ts": time.time()}

    # ------------------------------------------------------------------------------------------------ internals

    def _rolled_back(self, failed_dir: Path, failed_id: str, restored_dir: Path, reason: str) -> None:
        failed = failed_dir.resolve()
        try:
            with self._store_lock:
                if self.store.current() == failed:
                    if self.store.previous() == restored_dir.resolve():
                        self.store.rollback()
                    else:
                        self.store.deactivate()
        except OSError as exc:
            log.error("model push: cannot roll the model store back (%s)", exc)
        if self._announce is None:
            return
        applied = self._last_applied
        self._announce({
            "ok": False, "code": "swap_failed", "topic": "",
            "push_id": applied[1] if applied is not None and applied[0] == failed else None,
            "model_id": failed_id, "sha256": None,
            "key_id": None, "previous_model_id": failed_id, "rolled_back": True,
            "reason": f"model {failed_id} failed on a frame after the swap ({reason}); rolled back",
        })

    def _boot(self) -> Classifier:
        current, chosen = boot_choice(self.section, self.store)
        if current is None or chosen != PUSHED:
            return self.load(current)  # a configured model's errors are the user's to see; the shipped one is ours
        try:
            return self.load(current)
        except BundleError as exc:
            failed, reason = current.name, str(exc)
        log.error("pushed model %s does not load (%s); rolling back", failed, reason)
        try:
            failed_id = read_manifest(current).model_id
        except BundleError:
            failed_id = failed
        previous = self.store.previous()
        clf = None
        if previous is not None:
            self.store.rollback()
            try:
                clf = self.load(previous)
            except BundleError as exc:
                log.error("previous model %s does not load either (%s); using the shipped default", previous.name, exc)
        if clf is None:
            self.store.deactivate()
            clf = self.load(None)
        self._boot_report = {
            "ok": False,
            "code": "boot_rollback",
            "reason": f"model {failed_id} failed to load at start ({reason}); rolled back to {clf.model_id}",
            "model_id": failed_id,
            "previous_model_id": failed_id,
            "rolled_back": True,
            "running_model_id": clf.model_id,
            "push_id": None,
            "sha256": None,
            "key_id": None,
            "topic": "",
        }
        return clf
