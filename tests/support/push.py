"""Model-push test support: a second real int8 bundle, signing keys, bundle copies."""

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
    from tests.support.bundles import make_tiny_bundle

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


class SimulatedFleet:
    """``n`` simulated devices on one broker, each a real ``MqttSink`` + ``ModelPushReceiver`` with its own state
    folder and a real :class:`edge.runtime.models.manager.ModelManager` (starting on the shipped model), without a
    camera or frame loop.

    Args:
        root: Folder for the devices' state folders.
        host, port: The broker.
        n: Number of devices, ids ``pi-00``, ``pi-01``...
        trusted_key: Public key every device trusts...
        other_key: ...except the devices in ``refusing``, which trust only this one (so they refuse the push).
        groups: ``groups(i)`` is the list of fleet groups of device ``i``.
        refusing: Indexes of the devices that trust ``other_key``.
    """

    def __init__(self, root: Path, host: str, port: int, n: int, trusted_key: Path, other_key: Path | None = None,
                 groups=lambda i: ["lab"], refusing: tuple[int, ...] = ()):
        from edge.config import parse_config
        from edge.runtime.models.manager import ModelManager
        from edge.runtime.models.push import ModelPushReceiver
        from edge.runtime.publish.mqtt import MqttSink

        self.sinks, self.receivers, self.models = [], [], []
        for i in range(n):
            key = other_key if i in refusing else trusted_key
            cfg = parse_config({
                "device": {"id": f"pi-{i:02d}", "state_dir": str(root / f"pi-{i:02d}")},
                "mqtt": {"host": host, "port": port, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
                "homeassistant": {"enabled": False},
                "model_push": {"enabled": True, "trusted_keys": [str(key)], "groups": groups(i)},
            })
            sink = MqttSink(cfg)
            models = ModelManager(cfg.classifier, cfg.state_dir())

            def publish_status(sink=sink, models=models) -> None:
                # A small status (the real one carries much more; nothing here reads it).
                sink.publish("status", {"state": "running", "model_id": models.model_id})

            receiver = ModelPushReceiver(cfg, sink.session, models, publish_status)
            receiver.start()
            self.sinks.append(sink)
            self.models.append(models)
            self.receivers.append(receiver)

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Whether every device is connected with its push subscriptions acknowledged within ``timeout``."""
        return all(s.wait_subscribed(timeout) for s in self.sinks)

    def close(self) -> None:
        """Stop the receivers and close the sinks."""
        for r in self.receivers:
            r.stop()
        for s in self.sinks:
            s.close(2)
