"""Ed25519 signatures of model bundles.

A bundle is signed by signing the exact bytes of its ``manifest.json``; the manifest holds the sha256 and the
size of ``model.tflite``, so the signature covers the model too. The signature lives next to the manifest in
``manifest.sig`` (:data:`edge.bundle.SIGNATURE_FILE`) as a small JSON object::

    {"algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<base64 of 64 bytes>"}

``key_id`` is the start of the sha256 of the raw public key: it names which key signed, so a device can say
"signed by an untrusted key 3f2a…" instead of just "bad signature". Keys are PEM files (PKCS#8 private,
SubjectPublicKeyInfo public), which ``openssl pkey`` also reads.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.bundle import MANIFEST_FILE, SIGNATURE_FILE, BundleError, load_bundle

log = logging.getLogger(__name__)

ALGORITHM = "ed25519"


class SignatureError(BundleError):
    """A signature is missing, malformed, made by an untrusted key, or does not match the manifest."""


@dataclass(frozen=True)
class Signature:
    """A parsed ``manifest.sig``."""

    key_id: str
    signature: bytes

    def to_dict(self) -> dict[str, str]:
        """The JSON form written to ``manifest.sig`` and carried in MQTT pushes."""
        return {"algorithm": ALGORITHM, "key_id": self.key_id, "signature": base64.b64encode(self.signature).decode()}

    @classmethod
    def from_dict(cls, data: object) -> Signature:
        """Parse the JSON form; raise :class:`SignatureError` on anything malformed."""
        if not isinstance(data, dict):
            raise SignatureError("signature must be a JSON object with algorithm, key_id and signature")
        if data.get("algorithm") != ALGORITHM:
            raise SignatureError(f"signature algorithm {data.get('algorithm')!r} is not supported (only {ALGORITHM})")
        try:
            raw = base64.b64decode(str(data.get("signature", "")), validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("signature is not valid base64") from None
        if len(raw) != 64:
            raise SignatureError(f"signature has {len(raw)} bytes; an Ed25519 signature has 64")
        return cls(key_id=str(data.get("key_id", "")), signature=raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short fingerprint of a public key: the first 16 hex digits of the sha256 of its raw 32 bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(private_path: Path | str, public_path: Path | str | None = None, overwrite: bool = False) -> str:
    """Write a new Ed25519 private key (mode 0600) and its public key as PEM files; return the key id.

    Args:
        private_path: Where the private key goes (keep it on the workstation, never on a device).
        public_path: Where the public key goes; default ``<private_path>.pub``. Devices list it in
            ``model_push.trusted_keys``.
        overwrite: Replace existing files (otherwise an existing file is an error, so a key is never lost).
    """
    private_path = Path(private_path)
    public_path = Path(public_path) if public_path else private_path.with_name(private_path.name + ".pub")
    for p in (private_path, public_path):
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} already exists; pass --force to replace it (the old key is then lost)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub = key.public_key()
    pub_pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    # Both files are written completely under temporary names first (the private one created 0600 with O_EXCL,
    # so it is never readable by others, even over an old key with looser permissions); only then are they
    # put in place. A full disk or a read-only folder therefore leaves no half pair behind.
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_private = private_path.with_name(f".{private_path.name}.tmp-{os.getpid()}")
    tmp_public = public_path.with_name(f".{public_path.name}.tmp-{os.getpid()}")
    placed: list[Path] = []
    try:
        fd = os.open(tmp_private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        tmp_public.write_bytes(pub_pem)
        for tmp, final in ((tmp_private, private_path), (tmp_public, public_path)):
            if overwrite:
                os.replace(tmp, final)
            else:
                _link_new(tmp, final)  # a key that appeared meanwhile is never replaced
            placed.append(final)
    except BaseException:
        if not overwrite:
            for final in placed:  # a new private key without its public key is useless: take it back
                final.unlink(missing_ok=True)
        raise
    finally:
        tmp_private.unlink(missing_ok=True)
        tmp_public.unlink(missing_ok=True)
    return key_id(pub)


def _link_new(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` only if nothing has that name (a key appearing meanwhile is kept)."""
    exists = FileExistsError(f"{path} already exists; pass --force to replace it (the old key is then lost)")
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise exists from None
    except OSError:  # a file system without hard links (FAT): check, then rename
        if path.exists():
            raise exists from None
        os.replace(tmp, path)


def _read_key_file(path: Path, missing: str) -> bytes:
    """The bytes of a key file; :class:`SignatureError` (``missing`` if absent) instead of an OSError."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SignatureError(missing) from None
    except OSError as exc:
        raise SignatureError(f"cannot read key file {path} ({exc.strerror or exc})") from None


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    """Read an Ed25519 private key PEM; raise :class:`SignatureError` with a one-line reason."""
    path = Path(path)
    pem = _read_key_file(path, f"private key {path} not found; create one with: emotion-edge keygen {path}")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 key; create one with: emotion-edge keygen")
    return key


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    """Read an Ed25519 public key PEM; raise :class:`SignatureError` with a one-line reason."""
    path = Path(path)
    pem = _read_key_file(path, f"trusted key {path} not found; copy the .pub file made by keygen there")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} is not an Ed25519 public key")
    return key


def sign_bytes(manifest_bytes: bytes, private_key: Ed25519PrivateKey) -> Signature:
    """Sign manifest bytes."""
    return Signature(key_id=key_id(private_key.public_key()), signature=private_key.sign(manifest_bytes))


def verify_bytes(manifest_bytes: bytes, signature: Signature, trusted: Iterable[Ed25519PublicKey]) -> str:
    """Check ``signature`` over ``manifest_bytes`` against the trusted keys; return the signing key's id.

    Raises :class:`SignatureError` saying whether no key is trusted, the key is unknown, or the bytes were
    altered.
    """
    keys = {key_id(k): k for k in trusted}
    if not keys:
        raise SignatureError("no trusted keys configured; add the signer's .pub file to model_push.trusted_keys")
    candidates = [keys[signature.key_id]] if signature.key_id in keys else []
    if not candidates:
        raise SignatureError(
            f"signed by key {signature.key_id or '(none)'}, which is not among the trusted keys "
            f"({', '.join(sorted(keys))}); add its .pub file to model_push.trusted_keys"
        )
    try:
        candidates[0].verify(signature.signature, manifest_bytes)
    except InvalidSignature:
        raise SignatureError(
            f"signature by key {signature.key_id} does not match the manifest; the bundle was altered after signing"
        ) from None
    return signature.key_id


def sign_bundle(bundle_dir: Path | str, private_key_path: Path | str) -> Signature:
    """Validate a bundle folder, sign its ``manifest.json`` and write ``manifest.sig`` next to it.

    This is the hook ``train_export export --sign-key KEY`` calls after writing a bundle.
    """
    bundle_dir = Path(bundle_dir)
    load_bundle(bundle_dir)  # never sign a bundle the device would refuse anyway
    sig = sign_bytes((bundle_dir / MANIFEST_FILE).read_bytes(), load_private_key(private_key_path))
    (bundle_dir / SIGNATURE_FILE).write_text(json.dumps(sig.to_dict()) + "\n", encoding="utf-8")
    log.info("signed %s with key %s", bundle_dir, sig.key_id)
    return sig


def read_signature(bundle_dir: Path | str) -> Signature:
    """Read ``manifest.sig`` of a bundle folder."""
    path = Path(bundle_dir) / SIGNATURE_FILE
    if not path.is_file():
        raise SignatureError(f"bundle {bundle_dir} is not signed (no {SIGNATURE_FILE}); sign it with: emotion-edge sign")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SignatureError(f"{path} is not valid JSON; sign the bundle again") from None
    return Signature.from_dict(data)


def verify_bundle(bundle_dir: Path | str, trusted_key_paths: Iterable[Path | str]) -> str:
    """Verify a bundle folder's signature against trusted public key files; return the signing key's id.

    Checks only the signature over ``manifest.json``; :func:`edge.bundle.load_bundle` checks the model's
    sha256 against that manifest.
    """
    bundle_dir = Path(bundle_dir)
    keys = [load_public_key(p) for p in trusted_key_paths]
    return verify_bytes((bundle_dir / MANIFEST_FILE).read_bytes(), read_signature(bundle_dir), keys)
