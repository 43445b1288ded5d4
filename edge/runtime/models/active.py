"""The model the frame loop runs: swapped in at run time, and rolled back when a new one fails on a frame.

A swap loads and smoke-tests the new bundle before anything changes; the old classifier is kept until the new one
has classified real faces, so a model that loads but fails on them (a runtime crash, a broken op) is replaced by
the one that worked, on the same frame. Safe to swap from any thread: the reference changes between frames.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge.runtime.classify.classifier import Box, Classifier, Eyes
from edge.runtime.models.store import CURRENT

log = logging.getLogger(__name__)

#: ``(failed bundle dir, failed model id, restored bundle dir, reason)`` after a run-time rollback.
RollbackCallback = Callable[[Path, str, Path, str], None]


class ActiveModel:
    """The current classifier, the one before it, and the rules for changing them.

    Args:
        classifier: The classifier to start with.
        load: Builds a classifier from a bundle folder (raises BundleError, RuntimeMissing).
        store_root: The model store folder (``<state dir>/models``): ``reload_model`` may load its ``current``.
        on_rollback: Called after a run-time rollback (on the frame loop's thread).
    """

    def __init__(self, classifier: Classifier, load: Callable[[Path | str], Classifier], store_root: Path,
                 on_rollback: RollbackCallback | None = None) -> None:
        self._current = classifier
        self._previous: Classifier | None = None
        self._load = load
        self._store_root = store_root
        self._lock = threading.Lock()
        self.on_rollback = on_rollback

    @property
    def classifier(self) -> Classifier:
        """The classifier in use right now."""
        return self._current

    def swap(self, bundle_dir: Path | str) -> Classifier:
        """Load and smoke-test ``bundle_dir``, then use it from the next frame on; return it.

        Raises:
            BundleError, RuntimeMissing: the new model cannot be loaded or run; the old one stays in use.
        """
        new = self._load(bundle_dir)  # raises before anything changes
        with self._lock:
            self._previous, self._current = self._current, new
        log.info("model swapped: now running %s from %s", new.model_id, new.bundle_dir)
        return new

    def classify(self, image: np.ndarray, boxes: list[Box], eyes: list[Eyes] | None = None) -> tuple[Classifier, np.ndarray]:
        """Probabilities of the faces at ``boxes`` (with their ``eyes``, see :meth:`Classifier.crops`), and the
        classifier that produced them.

        A freshly swapped model that fails here is replaced by the one before it, which classifies the frame
        instead; any other failure is raised.
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
            if self.on_rollback is not None:
                self.on_rollback(clf.bundle_dir, clf.model_id, prev.bundle_dir, str(exc))
            return prev, prev.classify(image, boxes, eyes)

    def current_link(self) -> Path:
        """The model store's ``current`` link (what a push or ``modelctl rollback`` makes current)."""
        return self._store_root / CURRENT

    def reload_target(self, bundle_dir: object) -> Path | None:
        """The folder a ``reload_model`` command may load: the running bundle, or the model store's ``current``.

        The command topic carries no signature, so it must not be able to point the daemon at arbitrary files,
        nor at an older model kept in the store (which would get around the push's downgrade check).
        """
        running = Path(self._current.bundle_dir)
        if not bundle_dir:
            return running
        target = Path(str(bundle_dir)).resolve()
        allowed = (running.resolve(), self.current_link().resolve())
        return target if target in allowed else None
