"""Load the model at daemon start, rolling back a pushed model that no longer loads.

Order: ``classifier.model`` when configured, else the model store's
``current`` link (a pushed model), else the bundle shipped with the package. A pushed model that fails to load
or to run its smoke inference at start (a model that crashed the service after a swap, a corrupted SD card)
would otherwise stop the service for good: instead the store is rolled back to ``previous`` (or, without one,
the ``current`` link is removed so the shipped default loads), and the rollback is recorded in
:data:`last_boot_rollback` so the model-push extension can report it once MQTT is up.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from edge.bundle import BundleError, read_manifest
from edge.runtime.classify.classifier import Classifier
from edge.runtime.models.store import ModelStore

log = logging.getLogger(__name__)

#: What the last start rolled back, as a model-push result object (None if nothing was rolled back).
last_boot_rollback: dict[str, Any] | None = None


def configured_classifier(bundle_dir: Any, c: Any) -> Classifier:
    """A :class:`Classifier` of ``bundle_dir`` (None: the shipped one) with the options of a ``[classifier]`` section."""
    return Classifier(bundle_dir, c.threads, c.runtime, c.flip_tta, c.align_eyes, c.prior_correction)


def startup_classifier(config: Any) -> Classifier:
    """The classifier the daemon starts with; see the module docstring for the order and the rollback."""
    global last_boot_rollback
    c = config.classifier

    def load(bundle_dir: Any) -> Classifier:
        return configured_classifier(bundle_dir, c)

    if c.model is not None:
        return load(c.model)  # an explicitly configured model: its errors are the user's to see
    try:
        store = ModelStore.for_state_dir(config.state_dir())
        current = store.current()
    except OSError as exc:  # a broken store must not stop the daemon from using its default model
        log.warning("cannot read the model store (%s); using the default model", exc)
        return load(None)
    if current is None:
        return load(None)
    try:
        return load(current)
    except BundleError as exc:
        failed, reason = current.name, str(exc)
    log.error("pushed model %s does not load (%s); rolling back", failed, reason)
    try:
        failed_id = read_manifest(current).model_id
    except BundleError:
        failed_id = failed
    previous = store.previous()
    clf = None
    if previous is not None:
        store.rollback()
        try:
            clf = load(previous)
        except BundleError as exc:
            log.error("previous model %s does not load either (%s); using the shipped default", previous.name, exc)
    if clf is None:
        store.deactivate()
        clf = load(None)
    last_boot_rollback = {
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
        "ts": time.time(),
    }
    return clf
