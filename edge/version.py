"""The installed emotion-edge version, for status payloads and Home Assistant's device block."""

from __future__ import annotations

import functools


@functools.cache
def package_version() -> str:
    """The installed ``emotion-edge`` version (``0+unknown`` when running from a bare checkout)."""
    from importlib import metadata  # imported here: it brings email, csv and zipfile, which run needs once

    try:
        return metadata.version("emotion-edge")
    except Exception:  # PackageNotFoundError, or broken metadata
        return "0+unknown"


def install_hint(extra: str) -> str:
    """How to add an optional dependency group (``extra`` of pyproject.toml): emotion-edge is not on a public
    package index, so from a checkout or from a wheel built from one."""
    return (f"from a checkout: pip install -e '.[{extra}]' (or from a built wheel: "
            f"pip install 'dist/emotion_edge-VERSION-py3-none-any.whl[{extra}]')")
