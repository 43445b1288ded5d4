"""How every part of emotion-edge reaches the MQTT broker: one settings type, one client factory, one flag set.

The daemon (:mod:`edge.runtime.publish.connection`), the subscriber tools (:mod:`edge.tools.subscribe.client`)
and the model push (:mod:`edge.tools.push_mqtt`) all build their paho client with :func:`make_client`, so TLS
(CA, client certificate, host name check), user name and password, and the Last Will are set up the same way
everywhere. The command-line tools take the same flags (:func:`add_broker_flags`) and merge them over the
``[mqtt]`` section of the daemon's config file (:func:`settings_from_args`), so a user who can run the daemon
against a broker can watch, record and push with the same flags. The password never goes on the command line:
it comes from ``$EMOTION_EDGE_MQTT_PASSWORD`` (``mqtt.password_env``) or the systemd credential
``mqtt_password``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.config import MqttConfig, TlsConfig, load_config, parse_config, resolve_secret
from edge.schema import dump

if TYPE_CHECKING:  # paho and ssl load only where a client is made: `run --stdout` and the CLI's parser skip them
    import ssl

    import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

#: paho's protocol numbers (``mqtt.MQTTv311``, ``mqtt.MQTTv5``), usable without importing paho.
MQTT_V311, MQTT_V5 = 4, 5

#: The password variable of workstation tools before they shared the daemon's; still read, with a warning.
LEGACY_PASSWORD_ENV = "EMOTION_PUSH_MQTT_PASSWORD"


class BrokerError(Exception):
    """The broker cannot be set up or reached (TLS files, refused connection); one line that says what to fix."""


@dataclass(frozen=True)
class BrokerSettings:
    """Where and how to connect to the broker."""

    host: str = "localhost"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: TlsConfig = field(default_factory=TlsConfig)
    topic_prefix: str = "emotion"
    keepalive_s: int = 30

    def describe(self) -> str:
        """``host:port`` for messages."""
        return f"{self.host}:{self.port}"


def settings_from_config(m: MqttConfig, host: str | None = None) -> BrokerSettings:
    """The broker settings of a device's ``[mqtt]`` section (``host`` overrides ``mqtt.host``)."""
    password = resolve_secret(m.password_env, m.password_credential) if m.username else None
    return BrokerSettings(host=host or m.host or "localhost", port=m.port, username=m.username, password=password,
                          tls=m.tls, topic_prefix=m.topic_prefix, keepalive_s=m.keepalive_s)


def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """The client TLS context of ``[mqtt.tls]``: the broker's CA, an optional client certificate.

    Raises:
        BrokerError: A file is missing or cannot be loaded (the message names the key to fix).
    """
    for key, what in (("ca_file", "CA file"), ("cert_file", "client certificate file"), ("key_file", "client key file")):
        path = getattr(tls, key)
        if path is not None and not Path(path).is_file():
            raise BrokerError(f"mqtt.tls: cannot load the {what} {path}: it does not exist; check mqtt.tls.{key}"
                              + (" or --mqtt-ca" if key == "ca_file" else ""))
    import ssl

    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise BrokerError(f"mqtt.tls: cannot load the CA/client certificate files ({exc}); check mqtt.tls.ca_file, "
                          "cert_file and key_file") from None
    if tls.insecure:
        ctx.check_hostname = False
    return ctx


def make_client(
    settings: BrokerSettings,
    client_id: str = "",
    *,
    protocol: int = MQTT_V5,
    manual_ack: bool = False,
    will: tuple[str, str] | None = None,
    reconnect_on_failure: bool = True,
    context: ssl.SSLContext | None = None,
    client_class: type[mqtt.Client] | None = None,
) -> mqtt.Client:
    """A paho 2.x client set up with the settings' credentials and TLS, not yet connected.

    Args:
        settings: Broker settings.
        client_id: MQTT client id (empty: the broker assigns one, MQTT 5 only).
        protocol: ``mqtt.MQTTv5`` (the default) or ``mqtt.MQTTv311``.
        manual_ack: Acknowledge QoS 1 messages only when the caller calls ``client.ack`` (after storing them).
        will: ``(topic, payload)`` of a retained QoS 1 Last Will.
        reconnect_on_failure: Let paho's ``loop_start`` thread reconnect by itself.
        context: A TLS context built once by the caller (:func:`tls_context`); built here when None.
        client_class: A subclass of paho's client (the device's bounds incoming message sizes); None: paho's own.

    Raises:
        BrokerError: The TLS files cannot be loaded.
    """
    import paho.mqtt.client as mqtt

    kwargs: dict[str, Any] = {"clean_session": True} if protocol != MQTT_V5 else {}
    client = (client_class or mqtt.Client)(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
        protocol=mqtt.MQTTProtocolVersion(protocol), manual_ack=manual_ack, reconnect_on_failure=reconnect_on_failure,
        **kwargs)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    if settings.username:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls.enabled:
        client.tls_set_context(context or tls_context(settings.tls))
    return client


def add_broker_flags(parser: argparse.ArgumentParser) -> None:
    """The broker flags every command takes (``run`` and the tools), in one group.

    Older spellings of the model-push command (``--username``, ``--ca-file``, ``--prefix``) are accepted as hidden
    aliases.
    """
    g = parser.add_argument_group("broker")
    g.add_argument("--config", type=Path, metavar="FILE",
                   help="Daemon config file (TOML) whose [mqtt] settings apply; see deploy/config.example.toml.")
    g.add_argument("--mqtt-host", metavar="H", help="Broker host (default: config, else localhost).")
    g.add_argument("--mqtt-port", type=int, metavar="P", help="Broker port (default: config, else 1883).")
    g.add_argument("--mqtt-username", metavar="U", help="Broker user name; the password comes from the variable "
                   "named by mqtt.password_env (default EMOTION_EDGE_MQTT_PASSWORD) or the credential mqtt_password.")
    g.add_argument("--mqtt-ca", type=Path, metavar="FILE", help="CA certificate (PEM) of the broker; turns TLS on.")
    g.add_argument("--topic-prefix", metavar="P", help="First topic level (default: config, else 'emotion').")
    g.add_argument("--username", dest="mqtt_username", help=argparse.SUPPRESS)
    g.add_argument("--ca-file", dest="mqtt_ca", type=Path, help=argparse.SUPPRESS)
    g.add_argument("--prefix", dest="topic_prefix", help=argparse.SUPPRESS)


def config_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The ``[mqtt]`` keys the broker flags (:func:`add_broker_flags`) set (only those given)."""
    given = {"host": args.mqtt_host, "port": args.mqtt_port, "username": args.mqtt_username,
             "topic_prefix": args.topic_prefix}
    out: dict[str, object] = {key: value for key, value in given.items() if value is not None}
    if args.mqtt_ca is not None:
        out["tls"] = {"enabled": True, "ca_file": str(args.mqtt_ca)}
    return out


def settings_from_args(args: argparse.Namespace) -> BrokerSettings:
    """The config file's ``[mqtt]`` (if ``--config``) with the broker flags (:func:`add_broker_flags`) over it.

    Raises:
        ConfigError: The config file is invalid, or a flag's value is (the message names the key).
    """
    cfg = load_config(args.config)
    overrides = config_overrides(args)
    if overrides:
        data = dump(cfg)
        mqtt_data = data.setdefault("mqtt", {})
        tls = overrides.pop("tls", None)
        mqtt_data.update(overrides)
        if isinstance(tls, dict):
            mqtt_data["tls"] = {**mqtt_data.get("tls", {}), **tls}
        cfg = parse_config(data, args.config)
    settings = settings_from_config(cfg.mqtt)
    if settings.username and settings.password is None:
        settings = dataclasses.replace(settings, password=legacy_password(cfg.mqtt.password_env))
    return settings


def legacy_password(env_name: str) -> str | None:
    """The password from the variable the workstation tools used before they shared the daemon's, with a
    warning; None when it is not set either."""
    value = os.environ.get(LEGACY_PASSWORD_ENV)
    if value:
        log.warning("$%s is deprecated: put the broker password in $%s", LEGACY_PASSWORD_ENV, env_name)
    return value or None

