"""Files shipped inside the ``edge`` package (``[tool.setuptools.package-data]`` in pyproject.toml): the
default model bundle, the BlazeFace model, the demo faces, the payload schema.

Found through :mod:`importlib.resources`, so they are where the installed package is, whatever the layout
around it. The package is installed as files (a wheel unpacks), and the TFLite interpreter and OpenCV open
files by name, so the result is a file-system path.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def package_path(*parts: str) -> Path:
    """The path of ``edge/<parts...>`` in the installed package (it need not exist: callers check)."""
    resource = resources.files("edge")
    for part in parts:
        resource = resource / part
    return resource if isinstance(resource, Path) else Path(str(resource))
