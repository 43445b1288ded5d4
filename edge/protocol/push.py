"""The MQTT model-push message: one JSON object carrying a signed bundle.

Format (``format`` = :data:`PUSH_FORMAT`)::

    {
      "format": "emotion-edge-model-push/1",
      "push_id": "<hex, chosen by the publisher to match results to pushes>",
      "manifest": "<base64 of the exact manifest.json bytes that were signed>",
      "signature": {"algorithm": "ed25519", "key_id": "...", "signature": "<base64>"},
      "model": "<base64 of model.tflite>"
    }

The manifest travels as bytes (base64) rather than as a JSON object so that the device verifies the very
bytes that were signed, independent of any re-serialisation. The manifest holds the model's sha256 and
size, so the signature covers the model. JSON costs a third more than a binary format, which is fine for
models of a few hundred kB, and every MQTT tool can inspect it.

:func:`parse_push` runs every check that needs no interpreter, cheapest first, and raises
:class:`PushRejected` with a short ``code`` (for dashboards) and a one-line reason.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.bundle import (
    MANIFEST_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    BundleError,
    Manifest,
    load_bundle,
    validate_manifest,
)
from edge.protocol.signing import Signature, SignatureError, read_signature, verify_bytes

PUSH_FORMAT = "emotion-edge-model-push/1"


class PushRejected(Exception):
    """A push was refused. ``code`` is one of: oversized, malformed, unsigned, untrusted_key, bad_signature,
    invalid_manifest, tampered, downgrade, model_check, swap_failed, busy, internal (and the device reports
    boot_rollback itself, see :mod:`edge.runtime.models.manager`)."""

    def __init__(self, code: str, reason: str, details: dict | None = None):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        #: Result fields already known when the push failed late (model id, key id, rolled_back...).
        self.details = details


@dataclass(frozen=True)
class Push:
    """A push that passed the signature, manifest and sha256 checks."""

    push_id: str
    manifest: Manifest
    manifest_bytes: bytes
    signature: Signature
    model: bytes
    key_id: str

    def write_bundle(self, folder: Path) -> Path:
        """Write the bundle files (model, manifest, signature) into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MODEL_FILE).write_bytes(self.model)
        (folder / MANIFEST_FILE).write_bytes(self.manifest_bytes)
        (folder / SIGNATURE_FILE).write_text(json.dumps(self.signature.to_dict()) + "\n", encoding="utf-8")
        return folder


def build_push(bundle_dir: Path | str, push_id: str | None = None) -> bytes:
    """Encode a signed bundle folder as a push message (the bundle must hold ``manifest.sig``)."""
    bundle_dir = Path(bundle_dir)
    load_bundle(bundle_dir)
    sig = read_signature(bundle_dir)
    msg = {
        "format": PUSH_FORMAT,
        "push_id": push_id or uuid.uuid4().hex,
        "manifest": base64.b64encode((bundle_dir / MANIFEST_FILE).read_bytes()).decode(),
        "signature": sig.to_dict(),
        "model": base64.b64encode((bundle_dir / MODEL_FILE).read_bytes()).decode(),
    }
    return json.dumps(msg, separators=(",", ":")).encode()


def peek_push_id(payload: bytes) -> str | None:
    """The push id of a message if one can be read cheaply (for reporting a rejection), else None."""
    try:
        value = json.loads(payload).get("push_id")
    except Exception:  # any garbage: the id is only a courtesy for the report
        return None
    return str(value)[:64] if value is not None else None


def _b64(msg: dict, field: str) -> bytes:
    value = msg.get(field)
    if not isinstance(value, str) or not value:
        raise PushRejected("malformed", f"push has no '{field}' field")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise PushRejected("malformed", f"push field '{field}' is not valid base64 (truncated?)") from None


def parse_push(payload: bytes, trusted: Iterable[Ed25519PublicKey], max_bytes: int) -> Push:
    """Decode and verify a push message; raise :class:`PushRejected` naming the first problem.

    Checks, in order: size cap, JSON and format, signature present, signer trusted, signature valid over
    the manifest bytes, manifest schema, model size and sha256 against the signed manifest.
    """
    if len(payload) > max_bytes:
        raise PushRejected("oversized", f"push is {len(payload)} bytes, above model_push.max_bytes = {max_bytes}")
    try:
        msg = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # RecursionError: "[[[[..."
        raise PushRejected("malformed", f"push is not valid JSON ({exc.__class__.__name__}); truncated or not a model push") from None
    if not isinstance(msg, dict) or msg.get("format") != PUSH_FORMAT:
        got = msg.get("format") if isinstance(msg, dict) else type(msg).__name__
        raise PushRejected("malformed", f"push format {got!r} is not {PUSH_FORMAT!r}; publish with: emotion-edge push-mqtt")
    push_id = str(msg.get("push_id") or "")[:64]
    manifest_bytes = _b64(msg, "manifest")
    if not msg.get("signature"):
        raise PushRejected("unsigned", "push is not signed; sign the bundle with: emotion-edge sign BUNDLE --key KEY")
    try:
        sig = Signature.from_dict(msg["signature"])
        key = verify_bytes(manifest_bytes, sig, trusted)
    except SignatureError as exc:
        text = str(exc)
        code = "untrusted_key" if "not among the trusted" in text or "no trusted keys" in text else "bad_signature"
        raise PushRejected(code, text) from None
    try:
        data = json.loads(manifest_bytes)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        manifest = validate_manifest(data)
    except BundleError as exc:
        raise PushRejected("invalid_manifest", str(exc)) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise PushRejected("invalid_manifest", f"manifest is not a JSON object ({exc})") from None
    model = _b64(msg, "model")
    if manifest.model_bytes is not None and len(model) != manifest.model_bytes:
        raise PushRejected(
            "tampered", f"model is {len(model)} bytes but the signed manifest says {manifest.model_bytes}; truncated or altered"
        )
    digest = hashlib.sha256(model).hexdigest()
    if digest != manifest.sha256:
        raise PushRejected("tampered", f"model sha256 {digest[:12]}… does not match the signed manifest; the model was altered")
    return Push(push_id, manifest, manifest_bytes, sig, model, key)
