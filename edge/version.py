"""The installed emotion-edge version (status payloads, Home Assistant's device block) and how to install what an
optional part needs (the extras of pyproject.toml, OpenCV above all)."""

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


def opencv_missing(what: str) -> str:
    """The one line for a missing OpenCV: ``what`` needs it, and how to add it (the ``opencv`` extra). A Pi camera
    and the demo run without OpenCV, so a device install leaves it out unless its source needs it."""
    return (f"{what} needs OpenCV, which this install leaves out (a Pi camera and the demo run without it): "
            f"re-run deploy/install.sh with --with-opencv, or {install_hint('opencv')}")


#: Sources that run without OpenCV: the Pi camera (Picamera2 hands out arrays) and the built-in demo.
_SOURCES_WITHOUT_OPENCV = ("picamera2", "demo")


def opencv_uses(config: dict) -> list[str]:
    """What in a configuration needs OpenCV, one phrase each (``[]`` for a Pi camera or the demo with the default
    detector and no debug preview). ``config`` holds the TOML file's tables as plain dicts (or a ``Config``'s
    plain data, :func:`edge.schema.dump`): standard library only, so that deploy/install.sh can ask before anything is installed."""
    source, detector, privacy = (config.get(k) or {} for k in ("source", "detector", "privacy"))
    uses = []
    uri = str(source.get("uri", "demo"))
    if uri not in _SOURCES_WITHOUT_OPENCV and not uri.startswith("demo:"):
        uses.append(f"source.uri = {uri!r} (a camera index, video file, stream or image folder)")
    if detector.get("backend") in ("opencv", "mediapipe"):
        uses.append(f"detector.backend = {detector['backend']!r}")
    if privacy.get("debug_preview_dir"):
        uses.append("privacy.debug_preview_dir (the debug preview)")
    return uses
