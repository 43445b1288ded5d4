"""TLS (test CA made here, mutual TLS) and password authentication against a real Mosquitto."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.runtime.publish.base import SinkError
from edge.runtime.publish.command_channel import CommandChannel
from edge.runtime.publish.mqtt import MqttSink
from tests.support.mqtt import Collector, event_body, sink_config, validator, wait_until


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def _cert(subject: str, key, issuer_name: x509.Name | None, issuer_key, ca: bool, path: Path) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(issuer_key, hashes.SHA256())
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


@pytest.fixture
def pki(tmp_path) -> dict[str, Path]:
    """A test CA, a server certificate for 127.0.0.1, a client certificate, and an unrelated CA."""
    d = tmp_path / "pki"
    d.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("emotion test CA", ca_key, None, ca_key, True, d / "ca.pem")
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        _write_key(key, d / f"{who}.key")
        _cert(who, key, ca.subject, ca_key, False, d / f"{who}.pem")
    other_key = ec.generate_private_key(ec.SECP256R1())
    _cert("some other CA", other_key, None, other_key, True, d / "other-ca.pem")
    return {p.stem.replace("-", "_") + ("_key" if p.suffix == ".key" else ""): p for p in d.iterdir()}


def test_tls_with_a_test_ca_and_client_certificate(broker_factory, tmp_path, pki):
    broker = broker_factory(
        "tls",
        extra_conf=f"cafile {pki['ca']}\ncertfile {pki['server']}\nkeyfile {pki['server_key']}\n"
        "require_certificate true\n",
    ).start()
    tls = {"enabled": True, "ca_file": str(pki["ca"]), "cert_file": str(pki["client"]), "key_file": str(pki["client_key"])}
    col = Collector(broker)
    col.client.tls_set(ca_certs=str(pki["ca"]), certfile=str(pki["client"]), keyfile=str(pki["client_key"]))
    col.start()
    sink = MqttSink(sink_config(tmp_path / "ok", broker, tls=tls))
    try:
        seqs = [sink.publish("events", event_body(i)) for i in range(5)]
        assert sink.flush(5)
        assert col.wait_for(lambda c: c.unique_seqs() == seqs)
        for env in col.envelopes():
            validator().validate(env)
    finally:
        sink.close()
        col.stop()

    # Without the client certificate, and with a CA that did not sign the server: no session, reason reported.
    for name, bad_tls, expect in [
        ("nocert", {"enabled": True, "ca_file": str(pki["ca"])}, ""),
        ("wrongca", {**tls, "ca_file": str(pki["other_ca"])}, "certificate verify failed"),
    ]:
        bad = MqttSink(sink_config(tmp_path / name, broker, tls=bad_tls))
        try:
            bad.publish("events", event_body(0))
            def reported(sink=bad, expect=expect) -> bool:
                error = sink.connection_state()["error"]
                return bool(error) and expect in error

            assert wait_until(reported), bad.connection_state()
            assert bad.connection_state()["error"] and not bad.connected, name
            assert bad.stats()["pending"] == 1
        finally:
            bad.close(timeout=0.2)


def test_unreadable_tls_files_are_a_clear_error(tmp_path):
    cfg = sink_config(tmp_path / "s", None, host="127.0.0.1", tls={"enabled": True, "ca_file": str(tmp_path / "nope.pem")})
    with pytest.raises(SinkError, match=r"mqtt\.tls: cannot load .*check mqtt\.tls\.ca_file"):
        MqttSink(cfg)


@pytest.fixture
def password_broker(broker_factory, tmp_path):
    passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(passwd).exists():
        pytest.skip("mosquitto_passwd is not installed (apt-get install -y mosquitto)")
    pw_file = tmp_path / "passwd"
    subprocess.run([passwd, "-c", "-b", str(pw_file), "device", "s3cret"], check=True, capture_output=True)
    subprocess.run([passwd, "-b", str(pw_file), "watcher", "w4tch"], check=True, capture_output=True)
    return broker_factory("auth", allow_anonymous=False, extra_conf=f"password_file {pw_file}").start()


def test_anonymous_and_wrong_password_are_refused_and_reported_once(password_broker, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG, logger="edge.runtime.publish")
    anon = MqttSink(sink_config(tmp_path / "anon", password_broker, reconnect_min_s=0.1, reconnect_max_s=0.2))
    try:
        anon.publish("events", event_body(0))
        deadline = time.monotonic() + 5
        # Several attempts (backoff 0.1-0.2 s), each refused.
        while caplog.text.count("refused the connection") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        conn = anon.connection_state()
        assert conn["connected"] is False and conn["refused"] is True and "authori" in conn["error"].lower()
        refusals = [r for r in caplog.records if "refused the connection" in r.getMessage()]
        assert len(refusals) >= 3, "the sink must keep retrying"
        assert [r.levelno for r in refusals].count(logging.ERROR) == 1, "one clear line, repeats only at debug"
        assert "mqtt.username" in refusals[0].getMessage()
        assert anon.stats()["pending"] == 1, "nothing is lost while refused"
        # With a flush timeout of 10 minutes, close must still return: a refused sink does not wait for the
        # broker (the pending message stays in the outbox for the next run).
        closer = threading.Thread(target=anon.close, kwargs={"timeout": 600}, daemon=True)
        closer.start()
        closer.join(60)
        assert not closer.is_alive(), "close waits out its flush timeout for a broker that refuses us"
    finally:
        anon.close()

    monkeypatch.setenv("TEST_MQTT_PW", "wrong")
    wrong = MqttSink(sink_config(tmp_path / "wrong", password_broker, username="device", password_env="TEST_MQTT_PW"))
    try:
        assert wait_until(lambda: wrong.connection_state()["refused"] is True), wrong.connection_state()
        assert not wrong.connected
    finally:
        wrong.close(timeout=0.2)


def test_the_right_password_from_the_environment_works(password_broker, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_MQTT_PW", "s3cret")
    col = Collector(password_broker, username="watcher", password="w4tch").start()
    sink = MqttSink(sink_config(tmp_path / "ok", password_broker, username="device", password_env="TEST_MQTT_PW"))
    try:
        assert sink.wait_connected(5)
        seq = sink.publish("events", event_body(1))
        assert col.wait_for(lambda c: c.unique_seqs() == [seq])
        assert sink.connection_state() == {"connected": True, "refused": False, "error": None, "protocol": "5"}
    finally:
        sink.close()
        col.stop()


def _dynsec_broker(broker_factory, workdir: Path, password: str):
    """A Mosquitto whose dynamic-security plugin lets user 'device' publish and subscribe under emotion/ but
    refuses its SUBSCRIBE to the command topic (defaultACLAccess subscribe = false), as an ACL would."""
    plugin = next(iter(sorted(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so"))), None)
    ctrl = shutil.which("mosquitto_ctrl")
    if plugin is None or ctrl is None:
        pytest.skip("mosquitto's dynamic-security plugin is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "dynsec.json"
    subprocess.run([ctrl, "dynsec", "init", str(conf), "admin", password], check=True, capture_output=True)
    data = json.loads(conf.read_text())
    admin = next(c for c in data["clients"] if c["username"] == "admin")
    data["clients"].append({**admin, "username": "device", "roles": [{"rolename": "device"}]})
    data["roles"].append({"rolename": "device", "acls": [
        {"acltype": "publishClientSend", "topic": "emotion/#", "allow": True},
        {"acltype": "publishClientReceive", "topic": "emotion/#", "allow": True},
        {"acltype": "subscribePattern", "topic": "emotion/+/status", "allow": True},
    ]})
    conf.write_text(json.dumps(data))
    return broker_factory("dynsec", allow_anonymous=False,
                          extra_conf=f"plugin {plugin}\nplugin_opt_config_file {conf}").start()


def test_a_subscription_the_broker_refuses_is_reported_in_one_line(broker_factory, tmp_path, caplog, monkeypatch):
    """A device whose broker ACL refuses its command topic would never hear commands or model pushes: a real
    broker (Mosquitto's dynamic-security plugin) refuses the SUBSCRIBE, and the sink says so in one line while
    publishing goes on."""
    b = _dynsec_broker(broker_factory, tmp_path / "dynsec", "s3cret")
    monkeypatch.setenv("TEST_MQTT_PW", "s3cret")
    caplog.set_level(logging.DEBUG, logger="edge.runtime.publish")
    cfg = sink_config(tmp_path / "s", b, username="device", password_env="TEST_MQTT_PW")
    sink = MqttSink(cfg)
    channel = CommandChannel(sink.session, cfg)
    channel.start()
    try:
        assert sink.wait_connected(10), sink.connection_state()
        assert wait_until(lambda: any("refused the subscription" in r.getMessage() for r in caplog.records))
        assert not sink.wait_subscribed(0.5), "a refused subscription must not count as acknowledged"
        # Both command topics (JSON commands and the plain pause switch) are refused: one line each.
        assert wait_until(lambda: len([r for r in caplog.records if "refused the subscription" in r.getMessage()]) == 2)
        lines = [r for r in caplog.records if "refused the subscription" in r.getMessage()]
        assert all(r.levelno == logging.ERROR for r in lines)
        for line, topic in zip(sorted(r.getMessage() for r in lines), ("emotion/dev1/command", "emotion/dev1/paused/set"),
                               strict=True):
            assert topic in line and "ACL" in line and "\n" not in line
        assert sink.connection_state()["connected"] is True, "publishing still works"
        sink.publish("events", event_body(1))
        assert sink.flush(10)
    finally:
        channel.close()
        sink.close(timeout=2)
