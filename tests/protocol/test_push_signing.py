"""Signing, the model store, the on-device bundle check and the push message, with real int8 bundles."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time

import pytest

from edge.bundle import MANIFEST_FILE, MODEL_FILE, BundleError, read_manifest
from edge.protocol.push import PushRejected, build_push, parse_push
from edge.protocol.signing import (
    SignatureError,
    generate_keypair,
    load_public_key,
    sign_bundle,
    verify_bundle,
)
from edge.runtime.models.check import check_bundle
from edge.runtime.models.store import ModelStore, StoreError
from tests.support.push import (
    copy_bundle,
    corrupt_model_keep_manifest_valid,
    make_keys,
    rewrite_manifest,
    second_bundle,
    signed_copy,
)


# ------------------------------------------------------------------------------------------------ keys, signing
def test_keygen_writes_private_key_readable_only_by_owner_and_refuses_to_overwrite(tmp_path):
    kid = generate_keypair(tmp_path / "k")
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    assert len(kid) == 16
    with pytest.raises(FileExistsError):
        generate_keypair(tmp_path / "k")
    (tmp_path / "k").chmod(0o644)  # an old key someone loosened: replacing it must not keep that mode
    assert generate_keypair(tmp_path / "k", overwrite=True) != kid
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(OSError):  # the public key's folder cannot be made: a file is in the way
        generate_keypair(tmp_path / "k2", public_path=tmp_path / "a-file" / "k2.pub")
    assert not (tmp_path / "k2").exists(), "a failed keygen must not leave a private key without its public key"


def test_unreadable_or_missing_key_files_are_signature_errors(tmp_path):
    from edge.protocol.signing import load_private_key

    for load in (load_public_key, load_private_key):
        with pytest.raises(SignatureError, match="Is a directory"):
            load(tmp_path)  # a folder where a key file was expected
        with pytest.raises(SignatureError, match="not found"):
            load(tmp_path / "absent.pem")


def test_signed_bundle_verifies_and_names_the_key(tmp_path, tiny_bundle):
    private, public = make_keys(tmp_path)
    b = signed_copy(tiny_bundle, tmp_path / "b", private)
    sig = json.loads((b / "manifest.sig").read_text())
    assert verify_bundle(b, [public]) == sig["key_id"]


def test_altered_manifest_fails_the_signature(tmp_path, tiny_bundle):
    private, public = make_keys(tmp_path)
    b = signed_copy(tiny_bundle, tmp_path / "b", private)
    rewrite_manifest(b, labels=["a", "b", "c", "d", "e", "f", "g"])
    with pytest.raises(SignatureError, match="altered"):
        verify_bundle(b, [public])


def test_wrong_key_and_unsigned_bundle_are_refused(tmp_path, tiny_bundle):
    private, _ = make_keys(tmp_path, "a")
    _, other_public = make_keys(tmp_path, "b")
    b = signed_copy(tiny_bundle, tmp_path / "b", private)
    with pytest.raises(SignatureError, match="not among the trusted keys"):
        verify_bundle(b, [other_public])
    with pytest.raises(SignatureError, match="not signed"):
        verify_bundle(copy_bundle(tiny_bundle, tmp_path / "unsigned"), [other_public])


def test_sign_refuses_a_bundle_whose_model_does_not_match_its_manifest(tmp_path, tiny_bundle):
    private, _ = make_keys(tmp_path)
    b = copy_bundle(tiny_bundle, tmp_path / "b")
    (b / MODEL_FILE).write_bytes((b / MODEL_FILE).read_bytes()[:-10])
    with pytest.raises(BundleError):
        sign_bundle(b, private)
    assert not (b / "manifest.sig").exists()


# ------------------------------------------------------------------------------------------------ model store
def test_store_install_activate_rollback_and_deactivate(tmp_path, tiny_bundle):
    store = ModelStore(tmp_path / "models")
    assert store.current() is None
    a = store.install(tiny_bundle)
    assert store.install(tiny_bundle) == a  # same model twice: same folder
    b = store.install(second_bundle())
    assert store.current() is None  # install alone does not activate

    assert store.activate(a) is None
    assert store.current() == a and store.previous() is None
    assert store.activate(b) == a
    assert store.current() == b and store.previous() == a
    assert (store.root / "current").is_symlink() and not os.path.isabs(os.readlink(store.root / "current"))

    assert store.rollback() == a
    assert store.current() == a and store.previous() == b
    store.deactivate()
    assert store.current() is None and store.previous() == a


def test_store_rollback_without_previous_is_an_error(tmp_path, tiny_bundle):
    store = ModelStore(tmp_path / "models")
    store.activate(store.install(tiny_bundle))
    with pytest.raises(StoreError, match="no previous model"):
        store.rollback()


def test_store_refuses_a_broken_bundle_and_leaves_nothing_behind(tmp_path, tiny_bundle):
    store = ModelStore(tmp_path / "models")
    store.activate(store.install(tiny_bundle))
    bad = copy_bundle(tiny_bundle, tmp_path / "bad")
    (bad / MODEL_FILE).write_bytes(b"\0" * 100)
    with pytest.raises(BundleError):
        store.install(bad)
    assert [p.name for p in store.root.iterdir() if p.name.startswith(".")] == []
    assert read_manifest(store.current()).model_id == read_manifest(tiny_bundle).model_id


def test_store_prune_keeps_current_and_previous(tmp_path, tiny_bundle):
    store = ModelStore(tmp_path / "models")
    a = store.install(tiny_bundle)
    b = store.install(second_bundle())
    c_src = copy_bundle(tiny_bundle, tmp_path / "c")
    rewrite_manifest(c_src, model_id="third")
    c = store.install(c_src)
    store.activate(a)
    store.activate(b)
    removed = store.prune(keep=1)
    assert removed == [c.name]
    assert a.is_dir() and b.is_dir() and not c.exists()


def test_store_survives_leftovers_of_a_power_cut_and_prunes_only_old_ones(tmp_path, tiny_bundle):
    """A dangling temporary link (its target pruned) must not break listing; stale staging folders and links
    go at the next prune, fresh ones (another process may be filling them) stay."""
    store = ModelStore(tmp_path / "models")
    a = store.install(tiny_bundle)
    store.activate(a)
    os.symlink("gone-model", store.root / ".current.tmp-123")  # dangles
    old_push, fresh_push = store.root / ".push-0ld", store.root / ".push-fresh"
    for d in (old_push, fresh_push, store.root / ".incoming-0ld"):
        d.mkdir()
        (d / "model.tflite").write_bytes(b"x" * 10)
    long_ago = time.time() - 3600
    for entry in (old_push, store.root / ".incoming-0ld"):
        os.utime(entry, (long_ago, long_ago))
    os.utime(store.root / ".current.tmp-123", (long_ago, long_ago), follow_symlinks=False)
    assert [m.path for m in store.installed()] == [a]
    store.prune(keep=3)
    left = sorted(p.name for p in store.root.iterdir() if p.name.startswith("."))
    assert left == [".push-fresh"], left
    assert store.current() == a


# ------------------------------------------------------------------------------------------------ runtime check
def test_check_bundle_runs_the_model(tiny_bundle):
    manifest, runtime = check_bundle(tiny_bundle)
    assert manifest.model_id == read_manifest(tiny_bundle).model_id
    assert runtime in ("ai_edge_litert", "tflite_runtime")


def test_check_bundle_catches_a_manifest_that_lies_about_the_tensors(tmp_path, tiny_bundle):
    b = copy_bundle(tiny_bundle, tmp_path / "six")
    m = json.loads((b / MANIFEST_FILE).read_text())
    rewrite_manifest(b, labels=m["labels"][:6], output={**m["output"], "shape": [1, 6]})
    with pytest.raises(BundleError, match="7 outputs but the manifest lists 6 labels"):
        check_bundle(b)
    b2 = copy_bundle(tiny_bundle, tmp_path / "quant")
    rewrite_manifest(b2, input={**m["input"], "quantization": {"scale": 0.5, "zero_point": 3}})
    with pytest.raises(BundleError, match="input quantization"):
        check_bundle(b2)


def test_check_bundle_refuses_a_model_that_does_not_load(tmp_path, tiny_bundle):
    b = copy_bundle(tiny_bundle, tmp_path / "garbage")
    corrupt_model_keep_manifest_valid(b)
    with pytest.raises(BundleError, match="does not load"):
        check_bundle(b)


# ------------------------------------------------------------------------------------------------ push message
@pytest.fixture
def signed(tmp_path, tiny_bundle):
    private, public = make_keys(tmp_path)
    return signed_copy(tiny_bundle, tmp_path / "signed", private), load_public_key(public)


def test_push_roundtrip(signed):
    bundle, key = signed
    payload = build_push(bundle, push_id="p1")
    push = parse_push(payload, [key], max_bytes=len(payload))
    assert push.push_id == "p1"
    assert push.model == (bundle / MODEL_FILE).read_bytes()
    assert push.manifest_bytes == (bundle / MANIFEST_FILE).read_bytes()


def _reject(payload: bytes, key, max_bytes: int = 10_000_000) -> PushRejected:
    with pytest.raises(PushRejected) as info:
        parse_push(payload, [key], max_bytes)
    assert "\n" not in info.value.reason
    return info.value


def test_push_rejections_name_the_problem(tmp_path, signed):
    bundle, key = signed
    payload = build_push(bundle)
    msg = json.loads(payload)

    assert _reject(payload, key, max_bytes=len(payload) - 1).code == "oversized"
    assert _reject(payload[: len(payload) // 2], key).code == "malformed"
    assert _reject(b"\x00\xff garbage", key).code == "malformed"
    assert _reject(json.dumps({**msg, "signature": None}).encode(), key).code == "unsigned"

    other_private, _ = make_keys(tmp_path, "intruder")
    other = signed_copy(bundle.parent / "signed", tmp_path / "other", other_private)
    assert _reject(build_push(other), key).code == "untrusted_key"

    manifest = json.loads(base64.b64decode(msg["manifest"]))
    manifest["labels"] = ["x"] * len(manifest["labels"])
    forged = {**msg, "manifest": base64.b64encode(json.dumps(manifest).encode()).decode()}
    assert _reject(json.dumps(forged).encode(), key).code == "bad_signature"

    model = bytearray(base64.b64decode(msg["model"]))
    model[len(model) // 2] ^= 0xFF
    tampered = {**msg, "model": base64.b64encode(bytes(model)).decode()}
    rej = _reject(json.dumps(tampered).encode(), key)
    assert rej.code == "tampered" and "sha256" in rej.reason

    short = {**msg, "model": base64.b64encode(bytes(model[:-100])).decode()}
    assert _reject(json.dumps(short).encode(), key).code == "tampered"


# ------------------------------------------------------------------------------------------------ CLI
def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edge.modelctl", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_cli_keygen_sign_verify_install_rollback(tmp_path, tiny_bundle):
    key = tmp_path / "k"
    assert _cli("keygen", str(key)).returncode == 0
    a = copy_bundle(tiny_bundle, tmp_path / "a")
    b = copy_bundle(second_bundle(), tmp_path / "b")
    assert _cli("sign", str(b), "--key", str(key)).returncode == 0
    r = _cli("verify-bundle", str(b), "--trusted-key", f"{key}.pub", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["signed_by"] is not None
    state = tmp_path / "state"
    for bundle in (a, b):
        r = _cli("install-bundle", str(bundle), "--state-dir", str(state), "--activate", "--json")
        assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["previous_model_id"] == read_manifest(a).model_id
    # An activation by hand or by push-ssh raises the replay mark as an MQTT push does.
    newest = max((read_manifest(a), read_manifest(b)), key=lambda m: m.created)
    assert ModelStore.for_state_dir(state).newest_push()["created"] == newest.created
    assert _cli("rollback", "--state-dir", str(state)).returncode == 0
    assert read_manifest(ModelStore.for_state_dir(state).current()).model_id == read_manifest(a).model_id


def test_cli_expected_failures_are_one_line_without_traceback(tmp_path, tiny_bundle):
    cases = [
        ("verify-bundle", str(tmp_path / "missing")),
        ("rollback", "--state-dir", str(tmp_path / "empty")),
        ("sign", str(tiny_bundle), "--key", str(tmp_path / "nokey")),
        ("verify-bundle", str(tiny_bundle), "--trusted-key", str(tmp_path / "nokey.pub")),
    ]
    for args in cases:
        r = _cli(*args)
        assert r.returncode == 1, args
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
        assert "Traceback" not in r.stderr
