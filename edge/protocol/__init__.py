"""What the device and the tools both speak: the payload envelope and its JSON Schema, the topic tree, the
signed model-push message, bundle signatures, and the one MQTT client factory with its flags.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge.lazy import lazy_exports

if TYPE_CHECKING:
    from edge.protocol.broker import (
        BrokerError,
        BrokerSettings,
        add_broker_flags,
        make_client,
        settings_from_args,
        settings_from_config,
        tls_context,
    )
    from edge.protocol.envelope import KINDS, SCHEMA_VERSION, encode, make_envelope
    from edge.protocol.push import PushRejected, build_push, parse_push
    from edge.protocol.signing import (
        SignatureError,
        generate_keypair,
        load_public_key,
        sign_bundle,
        verify_bundle,
    )
    from edge.protocol.topics import AVAILABILITY, parse_topic, topic

#: The public surface: other packages import these from here, not from the modules that define them.
__all__ = [
    "AVAILABILITY",
    "BrokerError",
    "BrokerSettings",
    "KINDS",
    "PushRejected",
    "SCHEMA_VERSION",
    "SignatureError",
    "add_broker_flags",
    "build_push",
    "encode",
    "generate_keypair",
    "load_public_key",
    "make_client",
    "make_envelope",
    "parse_push",
    "parse_topic",
    "settings_from_args",
    "settings_from_config",
    "sign_bundle",
    "tls_context",
    "topic",
    "verify_bundle",
]

__getattr__ = lazy_exports(__name__, {
    "BrokerError": "broker",
    "BrokerSettings": "broker",
    "add_broker_flags": "broker",
    "make_client": "broker",
    "settings_from_args": "broker",
    "settings_from_config": "broker",
    "tls_context": "broker",
    "SCHEMA_VERSION": "envelope",
    "KINDS": "envelope",
    "encode": "envelope",
    "make_envelope": "envelope",
    "topic": "topics",
    "parse_topic": "topics",
    "AVAILABILITY": "topics",
    "build_push": "push",
    "parse_push": "push",
    "PushRejected": "push",
    "sign_bundle": "signing",
    "verify_bundle": "signing",
    "generate_keypair": "signing",
    "load_public_key": "signing",
    "SignatureError": "signing",
})
