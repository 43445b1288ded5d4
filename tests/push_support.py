"""Helpers for the model-push tests: a second real int8 bundle, signing keys, bundle copies."""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path

from edge.bundle import MANIFEST_FILE, MODEL_FILE, sha256_file
from edge.protocol.signing import generate_keypair, sign_bundle


@functools.cache
def second_bundle() -> Path:
    """A second real int8 bundle (different weights and model id), built once per test session."""
    from tests.model_fixture import make_tiny_bundle

    return make_tiny_bundle(Path(tempfile.mkdtemp(prefix="tiny_bundle_b-")), seed=1)


def copy_bundle(src: Path, dst: Path) -> Path:
    """Copy a bundle folder (so a test may sign or damage its copy)."""
    shutil.copytree(src, dst)
    return dst


def make_keys(folder: Path, name: str = "release") -> tuple[Path, Path]:
    """A fresh Ed25519 keypair in ``folder``: (private, public)."""
    private = folder / f"{name}.key"
    generate_keypair(private)
    return private, folder / f"{name}.key.pub"


def signed_copy(src: Path, dst: Path, private_key: Path) -> Path:
    """A signed copy of a bundle."""
    copy_bundle(src, dst)
    sign_bundle(dst, private_key)
    return dst


def rewrite_manifest(bundle: Path, **changes) -> None:
    """Change manifest fields in place (the model file is left alone)."""
    path = bundle / MANIFEST_FILE
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data, indent=2) + "\n")


def restamped_signed_copy(src: Path, dst: Path, private_key: Path, created: str) -> Path:
    """A signed copy of a bundle whose manifest says it was created at ``created`` (as a re-export would)."""
    copy_bundle(src, dst)
    rewrite_manifest(dst, created=created)
    sign_bundle(dst, private_key)
    return dst


def corrupt_model_keep_manifest_valid(bundle: Path) -> None:
    """Replace model.tflite by bytes that are not a TFLite model, and fix up sha256/size in the manifest.

    This is a bundle whose files are self-consistent (as a buggy exporter could sign) but whose model does
    not load: it passes every file check and fails only in an interpreter.
    """
    model = bundle / MODEL_FILE
    model.write_bytes(b"not a tflite flatbuffer" * 100)
    rewrite_manifest(bundle, sha256=sha256_file(model), model_bytes=model.stat().st_size)
