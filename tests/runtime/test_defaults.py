"""One default per setting: every runtime component's keyword default for a configurable setting is the config
model's default (so `threads` cannot be 2 in the config and 1 in the classifier again)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from edge.config import ClassifierConfig, DetectorConfig, SourceConfig, TrackingConfig
from edge.runtime.capture.managed import ManagedSource
from edge.runtime.classify.classifier import Classifier
from edge.runtime.detect import make_detector
from edge.runtime.detect.blazeface import BlazeFaceDetector
from edge.runtime.detect.carry import CarryingDetector
from edge.runtime.detect.haar import HaarDetector
from edge.runtime.detect.mediapipe_tasks import MediaPipeDetector
from edge.runtime.track import Tracker

#: Each component, its config section, and the settings it must share with it (so a renamed parameter, which
#: would silently drop out of the comparison, fails here instead).
COMPONENTS = [
    (Classifier, ClassifierConfig, {"threads", "runtime", "flip_tta", "align_eyes", "prior_correction"}),
    (Tracker, TrackingConfig, {"iou_threshold", "max_missed_frames", "smoothing", "uncertain_below"}),
    (ManagedSource, SourceConfig, {"max_fps", "loop", "retry_initial_s", "retry_max_s"}),
    (BlazeFaceDetector, DetectorConfig, {"min_confidence", "min_face_size", "max_faces", "threads"}),
    (MediaPipeDetector, DetectorConfig, {"min_confidence", "min_face_size", "max_faces"}),
    (HaarDetector, DetectorConfig, {"min_face_size", "max_faces"}),
]


def _defaults(component: object) -> dict[str, object]:
    return {name: p.default for name, p in inspect.signature(component).parameters.items()
            if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize(("component", "section", "shared"), COMPONENTS, ids=lambda c: getattr(c, "__name__", ""))
def test_every_runtime_default_is_the_config_default(component, section, shared):
    defaults = _defaults(component)
    fields = {f.name: f for f in dataclasses.fields(section)}
    assert {n for n in defaults if n in fields} == shared
    assert {n: defaults[n] for n in shared} == {n: fields[n].default for n in shared}


def test_every_detector_setting_has_its_one_default_checked():
    """Each ``[detector]`` field is a detector's keyword default above, the backend choice (make_detector) or the
    frame carrying's (CarryingDetector takes both of its settings without defaults): a new field must be added."""
    covered = set().union(*(shared for _, section, shared in COMPONENTS if section is DetectorConfig))
    assert covered | {"backend", "every_n_frames", "min_match"} == {f.name for f in dataclasses.fields(DetectorConfig)}
    assert not {"every", "min_match"} & set(_defaults(CarryingDetector))


@pytest.mark.parametrize(("backend", "kept"), [("blazeface", {"min_confidence": 0.7, "min_face_size": 50, "max_faces": 3}),
                                               ("opencv", {"min_face_size": 50, "max_faces": 3})])
def test_the_detector_factory_hands_the_section_to_the_detector_not_its_defaults(backend, kept):
    det = make_detector(DetectorConfig(backend=backend, min_confidence=0.7, min_face_size=50, max_faces=3, threads=1))
    try:
        assert {name: getattr(det, name) for name in kept} == kept
    finally:
        det.close()


def test_the_detector_factory_has_no_defaults_of_its_own():
    """make_detector takes the [detector] section (None: the section's defaults) and keyword overrides only."""
    assert _defaults(make_detector) == {"section": None}
    assert make_detector(backend="opencv").name == "opencv"
