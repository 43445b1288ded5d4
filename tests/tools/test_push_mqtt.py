"""MQTT model push end to end: the real daemon (``python -m edge run``, demo faces, int8 bundles) on a real
Mosquitto receives signed pushes from the workstation publisher, switches models, refuses bad pushes without
touching the running model, and rolls back a pushed model that stops loading.

One daemon process serves the module; each test first pushes the models it needs (re-exports, each created
later than anything pushed before), so any test can run alone or in any order.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge.bundle import MODEL_FILE, read_manifest
from edge.config import TlsConfig
from edge.protocol.broker import BrokerSettings
from edge.protocol.push import build_push
from edge.runtime.models.store import ModelStore
from edge.tools.push_mqtt import PushTarget, publish_push
from tests.support.broker import Broker, mosquitto_available
from tests.support.mqtt import Collector, validator
from tests.support.paths import REPO
from tests.support.push import (
    copy_bundle,
    make_keys,
    restamped_signed_copy,
    rewrite_manifest,
    second_bundle,
    signed_copy,
)

DEVICE = "pi-push"
MAX_BYTES = 200_000  # the tiny bundles make pushes of about 65 kB
# ``created`` stamps for the re-exports the tests push, increasing within the run: the replay guard only
# accepts a push created after the newest one the device accepted.
_CREATED = iter(f"2100-01-01T{h:02d}:00:00+00:00" for h in range(24))
pytestmark = pytest.mark.slow


class Device:
    """The daemon process plus what the tests need to watch it."""

    def __init__(self, root: Path, broker: Broker, config: Path, state: Path):
        self.root, self.broker, self.config, self.state = root, broker, config, state
        self.proc: subprocess.Popen | None = None
        self.collector = Collector(broker, topic="emotion/+/+", client_id="push-test-watch").start()
        self.log = root / "daemon.log"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(self.config)],
                                         cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        assert self.wait(lambda s: s["state"] == "running", after=time.time() - 1, timeout=120), self.log.read_text()[-3000:]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)

    def statuses(self, after: float = 0.0) -> list[dict]:
        return [e for e in self.collector.envelopes("status") if e["ts"] >= after]

    def wait(self, pred, after: float, timeout: float = 30.0) -> bool:
        return self.collector.wait_for(lambda c: any(pred(s) for s in self.statuses(after)), timeout)

    def push_events(self) -> list[dict]:
        return [e for e in self.collector.envelopes("events") if e["event"] == "model_push"]

    def store(self) -> ModelStore:
        return ModelStore.for_state_dir(self.state)

    def current_id(self) -> str | None:
        cur = self.store().current()
        return read_manifest(cur).model_id if cur else None


@pytest.fixture(scope="module")
def device(tmp_path_factory, tiny_bundle):
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
    root = tmp_path_factory.mktemp("push_device")
    broker = Broker(root / "mosquitto").start()
    private, public = make_keys(root)
    state = root / "state"
    # The device already runs a model from its store (as after an earlier push or install).
    store = ModelStore.for_state_dir(state)
    store.activate(store.install(tiny_bundle))
    config = root / "edge.toml"
    config.write_text(
        f'[device]\nid = "{DEVICE}"\nstate_dir = "{state}"\n'
        '[source]\nuri = "demo"\nmax_fps = 10\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nstatus_interval_s = 1\nsummary_interval_s = 60\n'
        '[homeassistant]\nenabled = false\n'
        f'[model_push]\nenabled = true\ntrusted_keys = ["{public}"]\ngroups = ["lab"]\nmax_bytes = {MAX_BYTES}\n'
    )
    dev = Device(root, broker, config, state)
    dev.private_key = private
    dev.start()
    yield dev
    dev.stop()
    dev.collector.stop()
    broker.stop()


def _publish_raw(broker: Broker, topic: str, payload: bytes) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="push-test-raw")
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.publish(topic, payload, qos=1).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def _raw_push(device: Device, payload: bytes) -> dict:
    """Publish a hand-made push; return the device's model_push event for it (the next one)."""
    before = len(device.push_events())
    _publish_raw(device.broker, f"emotion/{DEVICE}/model/push", payload)
    assert device.collector.wait_for(lambda c: len(device.push_events()) > before, 60), "no model_push event"
    return device.push_events()[before]


def _accept(device: Device, src: Path, dst: Path) -> str:
    """Push a re-export of ``src`` that the device must accept; return its model id once it runs."""
    bundle = restamped_signed_copy(src, dst, device.private_key, next(_CREATED))
    out = publish_push(bundle, PushTarget(device=DEVICE), BrokerSettings(device.broker.host, device.broker.port), wait_s=60)
    assert out.results[DEVICE]["ok"] and out.results[DEVICE]["code"] == "ok", out.results
    return read_manifest(bundle).model_id


def test_signed_push_switches_the_running_model(device, tmp_path):
    new = restamped_signed_copy(second_bundle(), tmp_path / "b", device.private_key, next(_CREATED))
    new_id = read_manifest(new).model_id
    old_id = device.current_id()
    t0 = time.time()
    outcome = publish_push(new, PushTarget(device=DEVICE), BrokerSettings(device.broker.host, device.broker.port), wait_s=60)
    result = outcome.results[DEVICE]
    assert result["ok"] and result["code"] == "ok" and result["model_id"] == new_id, result
    assert result["previous_model_id"] == old_id and result["key_id"]
    assert device.wait(lambda s: s["model_id"] == new_id and (s["model_push"] or {}).get("push_id") == outcome.push_id, t0)
    assert device.current_id() == new_id
    assert read_manifest(device.store().previous()).model_id == old_id
    for env in device.collector.envelopes():
        validator().validate(env)


def test_group_push_signed_at_publish_time(device, tmp_path, tiny_bundle):
    assert _accept(device, second_bundle(), tmp_path / "start") != read_manifest(tiny_bundle).model_id
    back = copy_bundle(tiny_bundle, tmp_path / "a")  # unsigned: the publisher signs it with --key
    rewrite_manifest(back, created=next(_CREATED))
    back_id = read_manifest(back).model_id
    t0 = time.time()
    outcome = publish_push(back, PushTarget(group="lab"), BrokerSettings(device.broker.host, device.broker.port),
                           sign_key=device.private_key, wait_s=60, expect=1)
    assert outcome.results[DEVICE]["ok"], outcome.results
    assert outcome.results[DEVICE]["topic"] == "emotion/group/lab/model/push"
    assert device.wait(lambda s: s["model_id"] == back_id, t0)
    assert device.current_id() == back_id

    # The same bundle again (a retained or repeated push) changes nothing.
    again = publish_push(back, PushTarget(device=DEVICE), BrokerSettings(device.broker.host, device.broker.port), wait_s=60)
    assert again.results[DEVICE]["ok"] and again.results[DEVICE]["code"] == "already_running"
    assert device.current_id() == back_id


def test_bad_pushes_are_rejected_and_change_nothing(device, tmp_path, tiny_bundle):
    running = _accept(device, tiny_bundle, tmp_path / "start")
    # Validly signed, with its original (older) ``created``: the base of every bad case below.
    signed = signed_copy(second_bundle(), tmp_path / "signed", device.private_key)
    good = json.loads(build_push(signed))

    intruder_key, _ = make_keys(tmp_path, "intruder")
    wrong_key = build_push(signed_copy(second_bundle(), tmp_path / "intruder", intruder_key))
    model = bytearray((signed / MODEL_FILE).read_bytes())
    model[100] ^= 0x01
    cases = {
        "unsigned": json.dumps({**good, "push_id": "unsigned", "signature": None}).encode(),
        "tampered": json.dumps({**good, "push_id": "tampered", "model": base64.b64encode(bytes(model)).decode()}).encode(),
        "untrusted_key": wrong_key,
        "oversized": json.dumps({**good, "push_id": "oversized", "padding": "x" * MAX_BYTES}).encode(),
        "malformed": json.dumps({**good, "push_id": "truncated"}).encode()[:30_000],
        # Validly signed, but created before the newest bundle the device already accepted: a replay.
        "downgrade": json.dumps({**good, "push_id": "replayed"}).encode(),
    }
    t0 = time.time()
    nested = ("malformed", b"[" * 100_000)  # deeper than Python's JSON parser recurses
    for code, payload in [*cases.items(), nested]:
        event = _raw_push(device, payload)
        assert event["ok"] is False and event["code"] == code, (code, event)
        assert event["reason"] and "\n" not in event["reason"]
        assert event["running_model_id"] == running
        validator().validate(event)
    assert device.current_id() == running
    time.sleep(1.5)  # one status interval: the running model is still the old one
    assert {s["model_id"] for s in device.statuses(t0)} == {running}


def test_pushed_model_that_stops_loading_is_rolled_back_at_start(device, tmp_path, tiny_bundle):
    # Corrupt the current model on "disk" (an SD card error, or a model that crashes the service) and restart:
    # the daemon must come up on the previous model.
    previous_id = _accept(device, second_bundle(), tmp_path / "a")
    bad_id = _accept(device, tiny_bundle, tmp_path / "b")
    assert read_manifest(device.store().previous()).model_id == previous_id
    device.stop()
    model = device.store().current() / MODEL_FILE
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    before = len(device.push_events())
    t0 = time.time()
    device.start()
    assert device.wait(lambda s: s["model_id"] == previous_id, t0)
    assert device.collector.wait_for(lambda c: len(device.push_events()) > before, 30)
    event = device.push_events()[-1]
    assert event["code"] == "boot_rollback" and event["rolled_back"] and event["model_id"] == bad_id, event
    assert device.current_id() == previous_id


def test_push_cli_counts_missing_answers_and_clears_an_old_retained_push(device, tmp_path, tiny_bundle):
    """A group push that fewer devices answer than --expect exits 1 and says so; a push without --retain
    removes the retained push an earlier --retain left on the topic (devices would get it at every reconnect)."""
    _accept(device, second_bundle(), tmp_path / "start")
    retained = restamped_signed_copy(tiny_bundle, tmp_path / "kept", device.private_key, next(_CREATED))
    out = publish_push(retained, PushTarget(group="lab"), BrokerSettings(device.broker.host, device.broker.port),
                       wait_s=60, expect=1, retain=True)
    assert out.results[DEVICE]["ok"], out.results
    topic = "emotion/group/lab/model/push"
    assert _retained(device.broker, topic), "the --retain push is on the broker"

    again = restamped_signed_copy(second_bundle(), tmp_path / "again", device.private_key, next(_CREATED))
    r = subprocess.run([sys.executable, "-m", "edge.modelctl", "push-mqtt", str(again), "--group", "lab",
                        "--expect", "2", "--wait", "10", "--settle", "0",
                        "--mqtt-host", device.broker.host, "--mqtt-port", str(device.broker.port)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "only 1 of 2 expected device(s) answered" in r.stderr and f"{DEVICE}" in r.stdout
    assert not _retained(device.broker, topic), "the retained push is cleared"


def test_push_targets_and_options_are_checked_before_anything_is_sent(tmp_path):
    from edge.tools.push_mqtt import PushError

    for target in (PushTarget(device="+"), PushTarget(group="a/b"), PushTarget(prefix="x/#", device="pi")):
        with pytest.raises(PushError, match="plain topic level"):
            target.topic()
    with pytest.raises(PushError, match="CA file"):
        publish_push(tmp_path, PushTarget(device="pi"), BrokerSettings("127.0.0.1", 1, tls=TlsConfig(enabled=True, ca_file=tmp_path / "no.pem")))


def _retained(broker: Broker, topic: str) -> bytes:
    """The retained message on ``topic`` (b"" if none), read by a fresh subscriber."""
    got: list[bytes] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="retained-probe")
    c.on_message = lambda _c, _u, msg: got.append(msg.payload) if msg.retain else None
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.subscribe(topic, qos=1)
    time.sleep(1.0)  # a retained message arrives right after the SUBACK; nothing arriving means none is kept
    c.disconnect()
    c.loop_stop()
    return b"".join(got)
