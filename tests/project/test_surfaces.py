"""Package surfaces: each subpackage's ``__init__`` names what other packages use (``__all__``), every name
resolves to the object its module defines, importing a package loads none of the heavy modules behind it, and
no module imports another module's private (``_name``) names."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO as ROOT

SURFACES = ["edge.runtime.capture", "edge.runtime.detect", "edge.runtime.classify", "edge.runtime.publish",
            "edge.runtime.models", "edge.protocol"]


@pytest.mark.parametrize("package", SURFACES)
def test_every_public_name_resolves_to_its_definition(package):
    pkg = importlib.import_module(package)
    assert pkg.__all__ == sorted(pkg.__all__) and pkg.__all__
    for name in pkg.__all__:
        value = getattr(pkg, name)
        home = getattr(value, "__module__", None)
        if home and home.startswith(package + "."):  # a class or function: the same object as in its module
            assert getattr(importlib.import_module(home), name) is value, name


def test_an_unknown_name_is_an_attribute_error_and_submodules_still_import():
    import edge.runtime.detect as detect

    with pytest.raises(AttributeError, match="has no attribute 'NoSuchDetector'"):
        _ = detect.NoSuchDetector
    from edge.runtime.detect import carry

    assert carry.CarryingDetector is detect.CarryingDetector


def test_importing_the_packages_loads_none_of_the_heavy_modules():
    code = ("import sys\nimport " + ", ".join(SURFACES[2:]) + "\n"
            "print(sorted(m for m in ('paho', 'cv2', 'ai_edge_litert', 'sqlite3', 'cryptography') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_shipped_files_are_found_in_the_package():
    from edge.bundle import default_bundle_dir
    from edge.protocol.envelope import SCHEMA_PATH
    from edge.runtime.capture.demo import DEMO_FACES
    from edge.runtime.detect import BLAZEFACE_MODEL

    package = Path(importlib.import_module("edge").__file__).parent
    for path in (BLAZEFACE_MODEL, SCHEMA_PATH, DEMO_FACES, default_bundle_dir() / "manifest.json"):
        assert path.exists(), path
        assert path.is_relative_to(package), path


def _private_imports(path: Path, root: Path = ROOT) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("edge", "train_export"):
            found += [f"{path.relative_to(root)}: {node.module}.{a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_module_imports_a_private_name_of_another():
    files = [p for folder in ("edge", "train_export", "tests", "benchmarks") for p in (ROOT / folder).rglob("*.py")]
    assert [hit for p in files for hit in _private_imports(p)] == []


def test_the_private_import_finder_finds_one(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from edge.runtime.detect.base import (\n    Detection,\n    _hidden,\n)\n"
                      "from edge.runtime.detect.base import __doc__\n", encoding="utf-8")
    assert _private_imports(sample, tmp_path) == ["sample.py: edge.runtime.detect.base._hidden"]
