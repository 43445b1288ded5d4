"""Static guards of the tests' own layout: test folders mirror the code packages, what tests share lives in
``tests.support`` (never imported from another test module), and neither tests nor benchmarks edit ``sys.path``
(benchmarks run as ``PYTHONPATH=. python3 benchmarks/NAME.py``, see benchmarks/README.md). Read with :mod:`ast`."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.paths import REPO

TESTS = REPO / "tests"
#: Test folders that mirror no code package: shared support, and checks of the project as a whole.
NOT_MIRRORED = {"support", "project"}


def _test_folders() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*") if p.is_dir() and p.name != "__pycache__")


def _sources(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_test_folder_is_a_package_that_mirrors_a_code_folder():
    unmirrored, not_packages = [], []
    for folder in _test_folders():
        rel = folder.relative_to(TESTS)
        if not (folder / "__init__.py").is_file():
            not_packages.append(str(rel))
        if rel.parts[0] not in NOT_MIRRORED and not ((REPO / "edge" / rel).is_dir() or (REPO / rel).is_dir()):
            unmirrored.append(str(rel))
    assert not not_packages, f"test folders without __init__.py: {not_packages}"
    assert not unmirrored, f"test folders that mirror no edge/ or top-level code folder: {unmirrored}"


def test_no_test_module_imports_another_one():
    """Shared fixtures and builders go to tests/support, so a test file can move or go without breaking others."""
    bad = []
    for path in _sources(TESTS, REPO / "benchmarks"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.relative_to(REPO)}: {n}" for n in names
                    if n.startswith("tests.") and n.split(".")[-1].startswith(("test_", "conftest"))]
    assert not bad, "import shared code from tests.support instead:\n" + "\n".join(bad)


def test_neither_tests_nor_benchmarks_edit_sys_path():
    bad = []
    for path in _sources(TESTS, REPO / "benchmarks"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and node.attr in ("insert", "append", "extend")
                    and isinstance(node.value, ast.Attribute) and node.value.attr == "path"
                    and isinstance(node.value.value, ast.Name) and node.value.value.id == "sys"):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not bad, f"sys.path edited at {bad}; run benchmarks with PYTHONPATH=. and import tests.support"
