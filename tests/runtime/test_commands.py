"""What the device does with a command (edge.runtime.commands): each command's answer (an ``events`` body that
is valid against the published schema, echoing the request id), the reload rule an unsigned command cannot get
around, and failures answered, never raised. Real parts: the shipped int8 model in the real interpreter behind a
real ModelManager."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.bundle import default_bundle_dir
from edge.config import ClassifierConfig
from edge.protocol.envelope import ECHO_CHARS, make_envelope
from edge.runtime.classify.classifier import Classifier
from edge.runtime.commands import COMMANDS, DeviceCommands
from edge.runtime.models.manager import ModelManager
from edge.runtime.models.store import CURRENT
from tests.support.mqtt import validator
from tests.support.push import copy_bundle, corrupt_model_keep_manifest_valid


class RecordingModels(ModelManager):
    """The real model manager, recording the bundles it was asked to swap in."""

    def __init__(self, section: ClassifierConfig, state_dir: Path) -> None:
        self.swapped: list[Path] = []
        super().__init__(section, state_dir)

    def swap(self, bundle_dir: Path | str) -> Classifier:
        self.swapped.append(Path(bundle_dir))
        return super().swap(bundle_dir)


class Device:
    """DeviceCommands wired to a real ModelManager (running a copy of the shipped bundle), recording the status
    requests and pauses it asked of the device."""

    def __init__(self, tmp_path: Path, pause_answer: tuple[bool, str] = (True, "capture paused")) -> None:
        self.running = copy_bundle(default_bundle_dir(), tmp_path / "running")
        self.models = RecordingModels(ClassifierConfig(model=self.running), tmp_path / "state")
        self.store = self.models.store.root
        self.store.mkdir(parents=True, exist_ok=True)
        self.status_requests = 0
        self.paused: list[bool] = []
        self.pause_answer = pause_answer
        self.commands = DeviceCommands(self.models, self)

    @property
    def swapped(self) -> list[Path]:
        return self.models.swapped

    def publish_status(self) -> None:
        self.status_requests += 1

    def set_paused(self, paused: bool) -> tuple[bool, str]:
        self.paused.append(paused)
        return self.pause_answer

    def run(self, cmd: dict[str, Any]) -> dict[str, Any]:
        answer = self.commands.handle(cmd)
        validator().validate(make_envelope("events", "dev1", 1, answer, ts=1_700_000_000.0))
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


@pytest.mark.parametrize("name", ["reboot", "x" * 10_000, None, 42])
def test_an_unknown_command_is_answered_with_the_known_ones_and_its_name_clipped(tmp_path, name):
    device = Device(tmp_path)
    answer = device.run({"command": name})
    assert (answer["ok"], answer["code"]) == (False, "unknown_command")
    assert all(repr(c) in answer["detail"] for c in COMMANDS)
    assert len(answer["detail"]) < 400  # a 10,000-character name is not echoed in full
    assert device.status_requests == 0 and device.swapped == []
