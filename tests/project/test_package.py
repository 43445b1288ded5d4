"""What a built wheel holds: the product (code, default model, assets, schema) and nothing of the lab."""

from __future__ import annotations

import zipfile


def test_the_wheel_holds_the_default_model_assets_and_schema(built_wheel):
    names = set(zipfile.ZipFile(built_wheel).namelist())
    for needed in ("edge/models/default/model.tflite", "edge/models/default/manifest.json",
                   "edge/models/default/README.md", "edge/assets/face_detection_short_range.tflite",
                   "edge/assets/demo/astronaut.npy", "edge/assets/demo/grace_hopper.npy",
                   "edge/protocol/payloads.schema.json", "edge/modelctl.py", "edge/runtime/daemon.py",
                   "edge/tools/dashboard/static/index.html", "edge/tools/dashboard/static/uPlot.iife.min.js",
                   "edge/tools/dashboard/static/LICENSE.uPlot.txt",
                   "train_export/cli.py"):
        assert needed in names, needed


def test_the_wheel_holds_nothing_of_tests_benchmarks_or_training_artefacts(built_wheel):
    names = zipfile.ZipFile(built_wheel).namelist()
    bad = [n for n in names if n.startswith(("tests/", "benchmarks/", "deploy/"))
           or "/checkpoints/" in n or "/training/" in n and n.startswith("edge/")
           or n.endswith((".keras", ".npz", ".log", ".csv"))]
    assert not bad, bad
    size = sum(i.file_size for i in zipfile.ZipFile(built_wheel).infolist())
    assert size < 5_000_000, f"{size} bytes unpacked: something big got into the wheel"
