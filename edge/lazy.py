"""Package surfaces that cost nothing until used: a package's ``__init__`` names its public classes and
functions (``from edge.runtime.detect import BlazeFaceDetector``) without importing the modules that define
them, so ``import edge.runtime.publish`` does not bring paho, nor ``import edge.runtime.detect`` LiteRT.

Each package lists the same names under ``if TYPE_CHECKING:`` as real imports, for the type checker and for
``tests/project/test_architecture.py``'s import graph (a lazy import is still a dependency).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``package``.

    Args:
        package: The package's ``__name__``.
        table: Each public name -> the submodule (relative to ``package``) that defines it.

    Returns:
        The function to assign to the package's ``__getattr__``: it imports the submodule on the first access
        of a name, keeps the value in the package (later accesses do not come back here), and raises
        AttributeError for any other name (so ``from package import submodule`` still finds submodules).
    """

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
