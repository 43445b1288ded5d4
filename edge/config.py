"""The daemon's one configuration file (TOML), validated by :mod:`edge.schema`.

Every option has a default, so an empty file (or none) is a valid configuration: the demo source, the
shipped default model, and a broker on localhost if one answers. Unknown keys are errors, so a typo never
silently falls back to a default. Secrets (the MQTT password) come from the environment or systemd
credentials instead of the file: see :func:`resolve_secret`.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from edge.config_errors import format_error
from edge.protocol.topics import check_mqtt_string, check_topic_prefix
from edge.schema import Invalid, Rules, Validated, option, parse

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and what to do."""


def _not_empty(value: Any) -> Any:
    # An empty string is never a useful value here: '' as a path means the current folder, as a host or source it
    # fails later with a confusing message. Leaving the key out gives the documented default.
    if isinstance(value, str) and not value.strip():
        raise ValueError("must not be empty; leave the key out to use the default")
    return value


def _host_id(hostname: str) -> str:
    # The default id must pass the id's own check whatever the host is called (a name with '+' or '_' in it, or
    # one too long), or a config that does not set it would fail on this host alone.
    return re.sub(r"[^A-Za-z0-9_-]", "-", hostname.split(".")[0])[:64] or "edge"


#: A non-empty string.
Text = Annotated[str, _not_empty]
#: A string sent in an MQTT packet (client id, user name).
MqttText = Annotated[str, _not_empty, check_mqtt_string]
#: The first level(s) of topics: MQTT text without wildcards, not starting with '$'.
TopicPrefix = Annotated[str, _not_empty, check_topic_prefix]
#: The id pattern, and what it means for a message.
_ID = r"^[A-Za-z0-9_-]{1,64}$"
_ID_HINT = "1 to 64 letters, digits, '_' or '-' (it is an MQTT topic level)"
#: A fleet group: one topic level of the push topics.
_GROUP = Rules("", pattern=r"[^#+/]+", pattern_hint="free of '/' and the MQTT wildcards '#' and '+'")


@dataclass(frozen=True, kw_only=True)
class _Section(Validated):
    """A section of the file: frozen (its fields cannot be reassigned; a changed copy, ``dataclasses.replace``,
    is validated again)."""


@dataclass(frozen=True, kw_only=True)
class DeviceConfig(_Section):
    """``[device]``: identity, logging and the state folder."""

    id: str = option(
        factory=lambda: _host_id(socket.gethostname()),
        doc="Device id used in MQTT topics and client id; defaults to the host name (its first label, any other "
        "character than a letter, digit, '_' or '-' made '-').",
        pattern=_ID, pattern_hint=_ID_HINT,
    )
    name: Text | None = option(None, doc="Human-friendly device name (Home Assistant); defaults to the id.")
    state_dir: Path | None = option(
        None,
        doc="Folder for the outbox database, pushed models and the seq counter. Default: $STATE_DIRECTORY "
        "(systemd), else /var/lib/emotion-edge as root, else ~/.local/state/emotion-edge.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = option("INFO", doc="Logging level.")


@dataclass(frozen=True, kw_only=True)
class SourceConfig(_Section):
    """``[source]``: where frames come from, frame-rate cap and retry backoff."""

    uri: Text = option(
        "demo",
        doc="Frame source: 'demo' (bundled public-domain faces), 'picamera2', a camera index such as '0', "
        "a video file, an RTSP/HTTP URL, or an image folder.",
    )
    width: int = option(640, doc="Requested capture width (cameras).", ge=64, le=4096)
    height: int = option(480, doc="Requested capture height (cameras).", ge=48, le=4096)
    max_fps: float = option(10.0, doc="Frame-rate cap; 0 means as fast as possible.", ge=0)
    loop: bool = option(True, doc="Restart files, folders and the demo at the end instead of stopping.")
    retry_initial_s: float = option(1.0, doc="First wait before reopening a failed source.", gt=0)
    retry_max_s: float = option(60.0, doc="Longest wait between reopen attempts (exponential backoff).", gt=0)
    picamera_lores_width: int = option(320, doc="Picamera2 low-resolution stream width used for detection.", ge=64)
    picamera_lores_height: int = option(240, doc="Picamera2 low-resolution stream height.", ge=48)

    def check(self) -> None:
        """The retry range is a range, and the Pi camera's lores stream fits in its main one."""
        if self.retry_initial_s > self.retry_max_s:
            raise ValueError(f"retry_initial_s ({self.retry_initial_s:g}) must not exceed retry_max_s ({self.retry_max_s:g})")
        # libcamera refuses a lores stream larger than the main one; as a config error it is said once, at load,
        # instead of being retried forever as "camera not available yet".
        if self.uri == "picamera2" and (self.picamera_lores_width > self.width or self.picamera_lores_height > self.height):
            raise ValueError(
                f"picamera_lores_width x picamera_lores_height ({self.picamera_lores_width}x{self.picamera_lores_height}) "
                f"must not exceed width x height ({self.width}x{self.height}) for the Pi camera"
            )


@dataclass(frozen=True, kw_only=True)
class DetectorConfig(_Section):
    """``[detector]``: face detector backend and its limits."""

    backend: Literal["auto", "blazeface", "mediapipe", "opencv"] = option(
        "auto", doc="Face detector: 'blazeface' (BlazeFace short range in LiteRT, with eye/nose/mouth "
        "keypoints), 'mediapipe' (the same model through the optional mediapipe package), 'opencv' (Haar cascade: "
        "slower, no keypoints), or 'auto' (blazeface, else opencv, saying why)."
    )
    min_confidence: float = option(0.5, doc="Minimum detection score (BlazeFace, MediaPipe).", ge=0, le=1)
    min_face_size: int = option(40, doc="Ignore faces smaller than this many pixels (box side).", ge=8)
    max_faces: int = option(5, doc="Classify at most this many faces per frame (largest first).", ge=1, le=50)
    threads: int = option(2, doc="Interpreter threads of the BlazeFace detector (the detector is most of a "
                         "frame's work: 2 threads take it from about 1.3 to 0.8 ms a frame on a 2-core x86).", ge=1, le=8)
    every_n_frames: int = option(
        3, doc="Run the detector on one frame in this many and carry each face in between by matching its "
        "last detected patch near its previous place (the classifier still runs on every frame). The detector also "
        "runs at once when a carried face no longer matches (min_match), and on every frame while no face is seen. "
        "A face that enters beside a carried one is found within this many frames; 1 detects on every frame. "
        "Measured by benchmarks/detect_interval.py.", ge=1, le=30,
    )
    min_match: float = option(
        0.6, doc="Normalised cross-correlation under which a carried face is detected again at once.",
        ge=-1, le=1,
    )


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig(_Section):
    """``[classifier]``: model bundle, runtime and threads."""

    model: Path | None = option(
        None,
        doc="Model bundle folder. Default: the model store's current model (the last one pushed), else the "
        "bundle shipped with the package. Setting it pins the model: pushed models still install, but a restart "
        "loads this one again.",
    )
    threads: int = option(2, doc="Interpreter threads of the classifier (all faces of a frame run as one batch).",
                         ge=1, le=8)
    runtime: Literal["auto", "ai_edge_litert", "tflite_runtime"] = option(
        "auto", doc="TFLite runtime: 'ai_edge_litert', 'tflite_runtime', or 'auto' (the first of those two that imports)."
    )
    flip_tta: bool = option(False, doc="Average each face with its mirror image (2x classifier cost).")
    align_eyes: bool = option(
        True, doc="Turn each face so its eyes are level before the crop, with the detector's eye "
        "keypoints (BlazeFace; Haar and MediaPipe give none, so their faces are never turned). It changes little on "
        "upright faces and gives back most of what a rolled head costs (benchmarks/generalisation.py; its numbers "
        "are in benchmarks/README.md)."
    )
    prior_correction: float = option(
        0.0, doc="Strength tau of the class-prior correction: each face's probabilities are divided by the "
        "training set's class frequencies to the power tau (logit adjustment), so rare emotions (disgust above all) are "
        "reported more often and recalled better, at some cost in overall accuracy. 0 = off; 1 = full correction. "
        "Each model has its own best value: measure it with benchmarks/prior_correction.py.",
        ge=0, le=2,
    )


@dataclass(frozen=True, kw_only=True)
class TrackingConfig(_Section):
    """``[tracking]``: IoU matching, smoothing and the uncertain threshold."""

    iou_threshold: float = option(0.3, doc="Minimum box overlap to continue a track.", ge=0, le=1)
    max_missed_frames: int = option(10, doc="Frames a track survives without a detection.", ge=0)
    smoothing: float = option(0.3, doc="Exponential smoothing weight of the newest probabilities (1 = none).", gt=0, le=1)
    uncertain_below: float = option(
        0.5, ge=0, le=1,
        doc="Report 'uncertain' when the top smoothed probability is below. The bundle's probabilities are "
                    "calibrated, so under 0.5 the model is more likely wrong than right (benchmarks/calibration.py).")


@dataclass(frozen=True, kw_only=True)
class TlsConfig(_Section):
    """``[mqtt.tls]``: TLS to the broker (CA, optional client certificate)."""

    enabled: bool = option(False, doc="Connect with TLS.")
    ca_file: Path | None = option(None, doc="CA certificate (PEM) that signed the broker's certificate.")
    cert_file: Path | None = option(None, doc="Client certificate (PEM) for mutual TLS.")
    key_file: Path | None = option(None, doc="Client private key (PEM) for mutual TLS.")
    insecure: bool = option(False, doc="Skip host name verification (testing only).")


@dataclass(frozen=True, kw_only=True)
class OutboxConfig(_Section):
    """``[mqtt.outbox]``: the outbox of messages awaiting their acknowledgement (memory, then disk)."""

    max_messages: int = option(100_000, doc="Messages kept while the broker is unreachable; beyond, the "
                              "oldest 'faces' updates are dropped first, then the oldest of any kind.", ge=100)
    memory_s: float = option(
        2.0, doc="While connected, a message waits this long in memory for the broker's acknowledgement "
        "before it is written to disk: a kill -9 or power cut loses at most the unacknowledged messages of this "
        "window (checked every quarter of it; while disconnected every message is written to disk at once, per-frame "
        "'faces' updates in groups at most 1 s old). Smaller: safer, more SD-card writes.",
        gt=0, le=60,
    )


@dataclass(frozen=True, kw_only=True)
class MqttConfig(_Section):
    """``[mqtt]``: broker, credentials, topics, QoS and publishing intervals."""

    enabled: bool = option(True, doc="Publish over MQTT; false prints JSON lines to stdout instead.")
    host: Text | None = option(
        None, doc="Broker host; unset: localhost if a broker answers there, else stdout output."
    )
    port: int = option(1883, doc="Broker port (8883 is usual for TLS).", ge=1, le=65535)
    username: MqttText | None = option(None, doc="User name; the password comes from the environment or credentials.")
    password_env: Text = option("EMOTION_EDGE_MQTT_PASSWORD", doc="Environment variable holding the password.")
    password_credential: Text = option("mqtt_password", doc="systemd credential name holding the password.")
    client_id: MqttText | None = option(
        None, doc="MQTT client id (UTF-8, no control characters, at most 65535 bytes); default "
        "'emotion-edge-<device id>'.")
    keepalive_s: int = option(30, doc="MQTT keep-alive (at most 65535, MQTT's limit); the Last Will fires "
                             "after 1.5x this.", ge=5, le=65535)
    qos: Literal[0, 1] = option(1, doc="QoS of published data.")
    topic_prefix: TopicPrefix = option(
        "emotion", doc="First topic level (UTF-8 without control characters or the wildcards + and #, not "
        "starting with '$'). Messages still queued from a run with another prefix are sent under this one.")
    faces_interval_s: float = option(0.0, doc="Minimum seconds between 'faces' updates (0 = every frame).", ge=0)
    summary_interval_s: float = option(10.0, doc="Length of the 'summary' window.", gt=0)
    status_interval_s: float = option(10.0, doc="Seconds between retained 'status' updates.", gt=0)
    max_inflight: int = option(
        20, doc="Messages sent and awaiting their PUBACK at once; more wait in the outbox (keeps order and memory bounded).",
        ge=1, le=1000,
    )
    reconnect_min_s: float = option(1.0, doc="First wait before reconnecting to the broker.", gt=0)
    reconnect_max_s: float = option(60.0, doc="Longest wait between reconnect attempts (exponential backoff).", gt=0)
    max_command_bytes: int = option(
        64 * 1024, doc="Largest accepted message on the command topic; a larger one is dropped unread and "
        "answered 'oversized' (model pushes have their own cap, model_push.max_bytes).", ge=1024, le=16 * 1024 * 1024,
    )
    command_rate: float = option(
        10.0, doc="Commands answered per second at most (bursts of as many); more are dropped unanswered and "
        "counted in the log once a minute, so a flood cannot fill the outbox.", gt=0, le=1000,
    )
    tls: TlsConfig = option(factory=TlsConfig, doc="TLS settings.")
    outbox: OutboxConfig = option(factory=OutboxConfig, doc="Disk outbox settings.")
    faces_expiry_s: int = option(
        10, doc="MQTT 5 message expiry of each 'faces' message: the broker discards one that no subscriber "
        "took within this many seconds, so stale per-frame updates do not pile up for absent subscribers "
        "(0 = never; ignored on an MQTT 3.1.1 broker). Summaries, events and status never expire.",
        ge=0, le=86400,
    )

    def check(self) -> None:
        """The reconnect range is a range."""
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(f"reconnect_min_s ({self.reconnect_min_s:g}) must not exceed reconnect_max_s "
                             f"({self.reconnect_max_s:g})")


@dataclass(frozen=True, kw_only=True)
class HomeAssistantConfig(_Section):
    """``[homeassistant]``: MQTT discovery."""

    enabled: bool = option(True, doc="Publish Home Assistant MQTT discovery configs (retained).")
    discovery_prefix: TopicPrefix = option(
        "homeassistant", doc="Home Assistant discovery prefix, the first topic level(s) of the discovery "
        "configs (as mqtt.topic_prefix: UTF-8 without control characters or the wildcards + and #, not starting "
        "with '$').")
    support_url: Text | None = option(
        None, doc="Link shown as the discovery 'origin' support URL; none is sent when unset."
    )


@dataclass(frozen=True, kw_only=True)
class ModelPushConfig(_Section):
    """``[model_push]``: signed model updates over MQTT."""

    enabled: bool = option(False, doc="Accept signed model pushes over MQTT.")
    trusted_keys: list[Path] = option(factory=list, doc="Ed25519 public keys (PEM) that may sign models.")
    groups: list[Annotated[str, _GROUP]] = option(
        factory=list,
        doc="Fleet groups this device also listens to (one topic level each: no '/', '#' or '+').",
    )
    max_bytes: int = option(8 * 1024 * 1024, doc="Largest accepted push payload.", ge=1024)
    allow_downgrade: bool = option(
        False,
        doc="Accept a push whose model was created before the newest one this device accepted "
        "(off: replayed old signed pushes are refused; roll back on the device with 'edge rollback').",
    )


@dataclass(frozen=True, kw_only=True)
class PrivacyConfig(_Section):
    """``[privacy]``: the local-only debug preview."""

    debug_preview_dir: Path | None = option(
        None,
        doc="Write annotated frames to this local folder for debugging (off by default; never published). "
        "Under the systemd unit only the state folder is writable, so use a folder inside it.",
    )


@dataclass(frozen=True, kw_only=True)
class MetricsConfig(_Section):
    """``[metrics]``: the optional Prometheus endpoint (the figures of the status message)."""

    enabled: bool = option(False, doc="Serve Prometheus metrics over HTTP (needs the prometheus-client "
                          "package, part of the [edge] extra).")
    host: str = option("127.0.0.1", doc="Address to listen on; 127.0.0.1 keeps the endpoint on this machine "
                      "(0.0.0.0 exposes it to the network, unauthenticated).")
    port: int = option(9312, doc="TCP port of the endpoint (http://HOST:PORT/metrics).", ge=1, le=65535)


@dataclass(frozen=True, kw_only=True)
class Config(_Section):
    """The whole configuration file."""

    device: DeviceConfig = option(factory=DeviceConfig, doc="Device identity and state.")
    source: SourceConfig = option(factory=SourceConfig, doc="Where frames come from.")
    detector: DetectorConfig = option(factory=DetectorConfig, doc="Face detection.")
    classifier: ClassifierConfig = option(factory=ClassifierConfig, doc="Emotion classifier.")
    tracking: TrackingConfig = option(factory=TrackingConfig, doc="Tracking and smoothing.")
    mqtt: MqttConfig = option(factory=MqttConfig, doc="MQTT publishing.")
    homeassistant: HomeAssistantConfig = option(factory=HomeAssistantConfig, doc="HA discovery.")
    model_push: ModelPushConfig = option(factory=ModelPushConfig, doc="Fleet model updates.")
    privacy: PrivacyConfig = option(factory=PrivacyConfig, doc="Privacy switches.")
    metrics: MetricsConfig = option(factory=MetricsConfig, doc="Prometheus metrics endpoint.")

    def state_dir_path(self) -> Path:
        """The state folder (see DeviceConfig.state_dir), without creating it."""
        path = self.device.state_dir
        if path is not None:
            return path
        if os.environ.get("STATE_DIRECTORY"):
            return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
        if os.geteuid() == 0:
            return Path("/var/lib/emotion-edge")
        return Path.home() / ".local" / "state" / "emotion-edge"

    def state_dir(self) -> Path:
        """The state folder (see DeviceConfig.state_dir), created if missing; ConfigError if it cannot be."""
        path = self.state_dir_path()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the state folder {path} ({exc.strerror or exc}); check device.state_dir and its permissions"
            ) from None
        return path


def parse_config(data: dict[str, Any], path: Path | None = None) -> Config:
    """Validate a config dict; raise :class:`ConfigError` listing every bad key, one line each."""
    try:
        return parse(Config, data)
    except Invalid as exc:
        raise ConfigError(format_error(exc, path)) from None


def load_config(path: Path | str | None) -> Config:
    """Read and validate a TOML config file; ``None`` gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
        # ValueError: a number with more digits than Python converts; RecursionError: arrays nested thousands deep.
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, path)


def resolve_secret(env_name: str, credential_name: str) -> str | None:
    """A secret from systemd credentials (``$CREDENTIALS_DIRECTORY/<name>``) or else the environment."""
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        cred = Path(cred_dir) / credential_name
        if cred.is_file():
            value = cred.read_text(encoding="utf-8").rstrip("\n")
            # deploy/install.sh creates the credential file empty (LoadCredential needs it to exist): an empty
            # file means "no password here", so the environment may still provide one.
            if value:
                return value
    return os.environ.get(env_name) or None
