"""What the device does with a command (edge.runtime.commands): each command's answer (an ``events`` body that
is valid against the published schema, echoing the request id), the reload rule an unsigned command cannot get
around, and failures answered, never raised. Real parts: the shipped int8 model in the real interpreter behind a
real ActiveModel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from edge.runtime.models.active import ActiveModel

from edge.bundle import default_bundle_dir
from edge.protocol.envelope import ECHO_CHARS, make_envelope
from edge.runtime.classify.classifier import Classifier
from edge.runtime.commands import COMMANDS, DeviceCommands
from edge.runtime.models.store import CURRENT
from tests.support.mqtt import validator
from tests.support.push import copy_bundle, corrupt_model_keep_manifest_valid


class Device:
    """DeviceCommands wired to a real ActiveModel, recording what it published and asked for."""

    def __init__(self, tmp_path: Path, pause_answer: tuple[bool, str] | None = None) -> None:
        self.store = tmp_path / "models"
        self.store.mkdir()
        self.running = copy_bundle(default_bundle_dir(), tmp_path / "running")
        self.models = ActiveModel(Classifier(self.running), Classifier, self.store)
        self.events: list[dict[str, Any]] = []
        self.status_requests = 0
        self.swapped: list[Path] = []
        self.paused: list[bool] = []
        self.pause_answer = pause_answer
        self.commands = DeviceCommands(self.models, self._swap, self._status, self.events.append,
                                       self._set_paused if pause_answer is not None else None)

    def _swap(self, bundle: Path) -> None:
        self.swapped.append(bundle)
        self.models.swap(bundle)

    def _status(self) -> None:
        self.status_requests += 1

    def _set_paused(self, paused: bool) -> tuple[bool, str]:
        self.paused.append(paused)
        assert self.pause_answer is not None
        return self.pause_answer

    def run(self, cmd: dict[str, Any]) -> dict[str, Any]:
        answer = self.commands.handle(cmd)
        assert self.events[-1] == answer  # the answer is also published, once
        validator().validate(make_envelope("events", "dev1", len(self.events), answer, ts=1_700_000_000.0))
        return answer


def test_publish_status_asks_for_a_status_and_echoes_the_request_id(tmp_path):
    device = Device(tmp_path)
    answer = device.run({"command": "publish_status", "request_id": "r-1"})
    assert device.status_requests == 1
    assert (answer["event"], answer["command"], answer["ok"], answer["code"]) == ("command", "publish_status", True, "ok")
    assert answer["request_id"] == "r-1"
    # A request id that is too long to be one is not echoed (the answer stays small).
    assert "request_id" not in device.run({"command": "publish_status", "request_id": "x" * (ECHO_CHARS + 1)})


def test_reload_model_without_a_folder_reloads_the_running_bundle(tmp_path):
    device = Device(tmp_path)
    before = device.models.classifier
    answer = device.run({"command": "reload_model"})
    assert answer["ok"] and answer["code"] == "ok"
    assert device.swapped == [device.running] and device.models.classifier is not before
    assert answer["detail"] == f"running {device.models.classifier.model_id}"


def test_reload_model_may_load_the_model_stores_current_bundle(tmp_path):
    device = Device(tmp_path)
    made_current = copy_bundle(default_bundle_dir(), device.store / "pushed")
    (device.store / CURRENT).symlink_to(made_current)
    answer = device.run({"command": "reload_model", "bundle_dir": str(device.store / CURRENT)})
    assert answer["ok"], answer
    assert Path(device.models.classifier.bundle_dir).resolve() == made_current.resolve()


def test_reload_model_refuses_any_other_folder_and_keeps_the_running_model(tmp_path):
    device = Device(tmp_path)
    older = copy_bundle(default_bundle_dir(), device.store / "older")  # in the store, but not current
    before = device.models.classifier
    answer = device.run({"command": "reload_model", "bundle_dir": str(older), "request_id": "r-2"})
    assert (answer["ok"], answer["code"], answer["request_id"]) == (False, "refused", "r-2")
    assert str(device.store / CURRENT) in answer["detail"] and "modelctl rollback" in answer["detail"]
    assert device.swapped == [] and device.models.classifier is before


def test_a_current_bundle_that_does_not_load_is_answered_as_failed_and_the_old_model_keeps_running(tmp_path):
    device = Device(tmp_path)
    broken = copy_bundle(default_bundle_dir(), device.store / "broken")
    corrupt_model_keep_manifest_valid(broken)
    (device.store / CURRENT).symlink_to(broken)
    before = device.models.classifier
    answer = device.run({"command": "reload_model", "bundle_dir": str(device.store / CURRENT)})  # never raises
    assert (answer["ok"], answer["code"]) == (False, "failed")
    assert answer["detail"].startswith("reload_model failed: ")
    assert device.models.classifier is before


def test_pause_and_resume_go_to_the_privacy_pause_and_say_when_it_failed(tmp_path):
    device = Device(tmp_path, pause_answer=(True, "capture paused"))
    answer = device.run({"command": "pause"})
    assert (answer["ok"], answer["code"], answer["detail"]) == (True, "ok", "capture paused")
    device.pause_answer = (False, "cannot write the pause file")
    answer = device.run({"command": "resume"})
    assert (answer["ok"], answer["code"], answer["detail"]) == (False, "failed", "cannot write the pause file")
    assert device.paused == [True, False]


def test_without_a_privacy_pause_pause_is_refused(tmp_path):
    device = Device(tmp_path)
    answer = device.run({"command": "pause"})
    assert (answer["ok"], answer["code"]) == (False, "refused")
    assert answer["detail"] == "this device has no privacy pause"


@pytest.mark.parametrize("name", ["reboot", "x" * 10_000, None, 42])
def test_an_unknown_command_is_answered_with_the_known_ones_and_its_name_clipped(tmp_path, name):
    device = Device(tmp_path)
    answer = device.run({"command": name})
    assert (answer["ok"], answer["code"]) == (False, "unknown_command")
    assert all(repr(c) in answer["detail"] for c in COMMANDS)
    assert len(answer["detail"]) < 400  # a 10,000-character name is not echoed in full
    assert device.status_requests == 0 and device.swapped == []
