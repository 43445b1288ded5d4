"""The model manager with real int8 bundles in a real interpreter and a real model store on disk: the boot
choice, the rollbacks (at start, after a failed swap, on a frame) and where their reports go."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest

import edge.runtime.models.manager as manager_module
from edge.bundle import default_bundle_dir, read_manifest
from edge.config import ClassifierConfig, parse_config
from edge.runtime.models.manager import ModelManager, SwapFailed
from edge.runtime.models.store import ModelStore
from tests.support.bundles import with_manifest
from tests.support.push import corrupt_model_keep_manifest_valid

SHIPPED = read_manifest(default_bundle_dir()).model_id
BOX = [(200.0, 120.0, 200.0, 200.0)]


def _install(store: ModelStore, bundle, dst, model_id: str):
    """Install a copy of ``bundle`` named ``model_id`` and make it current; return its folder in the store."""
    folder = store.install(with_manifest(bundle, dst, model_id=model_id))
    store.activate(folder)
    return folder


def test_the_boot_choice_is_configured_then_pushed_then_shipped(tmp_path, tiny_bundle):
    state = tmp_path / "state"
    assert ModelManager(ClassifierConfig(), state).model_id == SHIPPED
    store = ModelStore.for_state_dir(state)
    _install(store, tiny_bundle, tmp_path / "pushed", "pushed-1")
    assert ModelManager(ClassifierConfig(), state).model_id == "pushed-1"
    pinned = with_manifest(tiny_bundle, tmp_path / "pinned", model_id="pinned-1")
    assert ModelManager(ClassifierConfig(model=pinned), state).model_id == "pinned-1"


def test_a_pushed_model_that_no_longer_loads_is_rolled_back_at_boot_and_reported_once(tmp_path, tiny_bundle):
    state = tmp_path / "state"
    store = ModelStore.for_state_dir(state)
    good = _install(store, tiny_bundle, tmp_path / "a", "good-1")
    bad = _install(store, tiny_bundle, tmp_path / "b", "bad-1")
    corrupt_model_keep_manifest_valid(bad)

    models = ModelManager(ClassifierConfig(), state)
    assert models.model_id == "good-1" and store.current() == good.resolve()
    reports: list[dict] = []
    models.connect(reports.append)
    [report] = reports
    assert report["code"] == "boot_rollback" and report["model_id"] == "bad-1" and report["rolled_back"] is True
    assert report["running_model_id"] == "good-1" and "rolled back to good-1" in report["reason"]
    models.connect(reports.append)  # handed over once, not again
    assert len(reports) == 1
    # The report belongs to this manager: a restart of the device (a new manager) boots clean and reports nothing.
    again: list[dict] = []
    ModelManager(ClassifierConfig(), state).connect(again.append)
    assert again == []


def test_without_a_previous_model_the_boot_rollback_falls_back_to_the_shipped_one(tmp_path, tiny_bundle):
    state = tmp_path / "state"
    store = ModelStore.for_state_dir(state)
    corrupt_model_keep_manifest_valid(_install(store, tiny_bundle, tmp_path / "b", "bad-1"))
    models = ModelManager(ClassifierConfig(), state)
    assert models.model_id == SHIPPED and store.current() is None
    reports: list[dict] = []
    models.connect(reports.append)
    assert [r["code"] for r in reports] == ["boot_rollback"]


def test_a_failed_swap_of_a_push_puts_the_store_back(tmp_path, tiny_bundle, monkeypatch):
    state = tmp_path / "state"
    store = ModelStore.for_state_dir(state)
    old = _install(store, tiny_bundle, tmp_path / "a", "old-1")
    models = ModelManager(ClassifierConfig(), state)
    new = store.install(with_manifest(tiny_bundle, tmp_path / "b", model_id="new-1"))

    def crash(_bundle_dir):  # the seam: a runtime that aborts while loading (as on a device out of memory)
        raise RuntimeError("interpreter aborted")

    monkeypatch.setattr(models, "load", crash)
    with pytest.raises(SwapFailed, match="interpreter aborted"):
        models.adopt_push(new, read_manifest(new), "push-1")
    assert models.model_id == "old-1" and store.current() == old.resolve()


def test_a_model_that_fails_on_a_frame_is_rolled_back_with_the_store_and_the_push_answered(tmp_path, tiny_bundle):
    state = tmp_path / "state"
    store = ModelStore.for_state_dir(state)
    old = _install(store, tiny_bundle, tmp_path / "a", "old-1")
    models = ModelManager(ClassifierConfig(), state)
    reports: list[dict] = []
    models.connect(reports.append)
    new = store.install(with_manifest(tiny_bundle, tmp_path / "b", model_id="new-1"))
    models.adopt_push(new, read_manifest(new), "push-1")
    assert models.model_id == "new-1" and store.current() == new.resolve()
    assert store.newest_push() is not None

    def broken(*_a, **_k):  # the seam: the new model's runtime fails on real faces
        raise RuntimeError("invoke failed")

    models.classifier.classify = broken
    image = np.full((480, 640, 3), 127, np.uint8)
    clf, probs = models.classify(image, BOX)
    assert clf.model_id == "old-1" and models.model_id == "old-1" and probs.shape == (1, len(clf.labels))
    assert store.current() == old.resolve(), "a restart must not load the failing model"
    [report] = reports
    assert report["code"] == "swap_failed" and report["model_id"] == "new-1" and report["push_id"] == "push-1"
    # A second failure of the restored model is not hidden: there is nothing older to go back to.
    models.classifier.classify = broken
    with pytest.raises(RuntimeError, match="invoke failed"):
        models.classify(image, BOX)


def test_reload_accepts_only_the_running_bundle_or_the_stores_current(tmp_path, tiny_bundle):
    state = tmp_path / "state"
    store = ModelStore.for_state_dir(state)
    current = _install(store, tiny_bundle, tmp_path / "a", "cur-1")
    models = ModelManager(ClassifierConfig(), state)
    assert models.reload_target(None) == models.bundle_dir
    assert models.reload_target(str(store.root / "current")) == current.resolve()
    assert models.reload_target(str(tiny_bundle)) is None


def test_the_manager_keeps_its_state_on_the_instance_not_in_the_module():
    """Before, a module-level record of the boot rollback was read and cleared by another module."""
    tree = ast.parse(inspect.getsource(manager_module))
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Global)]
    mutable = (ast.Dict, ast.List, ast.Set, ast.Call)
    module_state = [n for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign)) and isinstance(n.value, mutable)]
    assert [ast.unparse(n) for n in module_state] == ["log = logging.getLogger(__name__)"]


def test_the_classifier_options_of_the_section_reach_every_model_it_loads(tmp_path):
    section = parse_config({"classifier": {"align_eyes": False, "prior_correction": 0.5, "threads": 1}}).classifier
    models = ModelManager(section, tmp_path / "state")
    assert models.classifier.align_eyes is False and models.classifier.prior_correction == 0.5
    swapped = models.swap(with_manifest(default_bundle_dir(), tmp_path / "copy", model_id="shipped-copy"))
    assert swapped.model_id == "shipped-copy" and swapped.align_eyes is False and swapped.prior_correction == 0.5
