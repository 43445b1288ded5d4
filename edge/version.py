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
