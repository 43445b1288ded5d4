"""The daemon's one configuration file (TOML), validated with pydantic.

Every option has a default, so an empty file (or none) is a valid configuration: the demo source, the
shipped default model, and a broker on localhost if one answers. Unknown keys are errors, so a typo never
silently falls back to a default. Secrets (the MQTT password) come from the environment or systemd
credentials instead of the file: see :func:`resolve_secret`.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationError,
    model_validator,
)

from edge.config_errors import format_error
from edge.protocol.topics import check_mqtt_string, check_topic_prefix

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


def _not_bool(value: Any) -> Any:
    # In Python True == 1, so strict Literal[0, 1] would take `qos = true`.
    if isinstance(value, bool):
        raise ValueError("must be the number 0 or 1, not a boolean")
    return value


#: A non-empty string.
Text = Annotated[str, AfterValidator(_not_empty)]
#: A string sent in an MQTT packet (client id, user name).
MqttText = Annotated[str, AfterValidator(_not_empty), AfterValidator(check_mqtt_string)]
#: The first level(s) of topics: MQTT text without wildcards, not starting with '$'.
TopicPrefix = Annotated[str, AfterValidator(_not_empty), AfterValidator(check_topic_prefix)]
#: A path: TOML has no path type, so strings are converted (the one lax type under strict validation); not empty.
ConfigPath = Annotated[Path, Strict(False), BeforeValidator(_not_empty)]


class _Section(BaseModel):
    # strict: TOML has real booleans and numbers, so "yes", "off" or "1883" is a mistake to report, not to coerce.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)

    def __setattr__(self, name: str, value: object) -> None:
        # pydantic stores an assigned value before the model's after-validators run, so a value that one of them
        # rejects would stay in place behind the ValidationError; put the old value back so a refused change
        # changes nothing.
        old = self.__dict__.get(name)
        try:
            super().__setattr__(name, value)
        except ValidationError:
            if name in self.__dict__:
                self.__dict__[name] = old
            raise


class DeviceConfig(_Section):
    """``[device]``: identity, logging and the state folder."""

    id: str = Field(
        default_factory=lambda: socket.gethostname().split(".")[0] or "edge",
        description="Device id used in MQTT topics and client id; defaults to the host name.",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
    )
    name: Text | None = Field(None, description="Human-friendly device name (Home Assistant); defaults to the id.")
    state_dir: ConfigPath | None = Field(
        None,
        description="Folder for the outbox database, pushed models and the seq counter. Default: $STATE_DIRECTORY "
        "(systemd), else /var/lib/emotion-edge as root, else ~/.local/state/emotion-edge.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Logging level.")


class SourceConfig(_Section):
    """``[source]``: where frames come from, frame-rate cap and retry backoff."""

    uri: Text = Field(
        "demo",
        description="Frame source: 'demo' (bundled public-domain faces), 'picamera2', a camera index such as '0', "
        "a video file, an RTSP/HTTP URL, or an image folder.",
    )
    width: int = Field(640, description="Requested capture width (cameras).", ge=64, le=4096)
    height: int = Field(480, description="Requested capture height (cameras).", ge=48, le=4096)
    max_fps: float = Field(10.0, description="Frame-rate cap; 0 means as fast as possible.", ge=0,
                           allow_inf_nan=False)
    loop: bool = Field(True, description="Restart files, folders and the demo at the end instead of stopping.")
    retry_initial_s: float = Field(1.0, description="First wait before reopening a failed source.", gt=0)
    retry_max_s: float = Field(60.0, description="Longest wait between reopen attempts (exponential backoff).", gt=0)
    picamera_lores_width: int = Field(320, description="Picamera2 low-resolution stream width used for detection.", ge=64)
    picamera_lores_height: int = Field(240, description="Picamera2 low-resolution stream height.", ge=48)

    @model_validator(mode="after")
    def _retry_range(self) -> SourceConfig:
        if self.retry_initial_s > self.retry_max_s:
            raise ValueError(f"retry_initial_s ({self.retry_initial_s:g}) must not exceed retry_max_s ({self.retry_max_s:g})")
        return self

    @model_validator(mode="after")
    def _lores_fits_main(self) -> SourceConfig:
        # libcamera refuses a lores stream larger than the main one; as a config error it is said once, at load,
        # instead of being retried forever as "camera not available yet".
        if self.uri == "picamera2" and (self.picamera_lores_width > self.width or self.picamera_lores_height > self.height):
            raise ValueError(
                f"picamera_lores_width x picamera_lores_height ({self.picamera_lores_width}x{self.picamera_lores_height}) "
                f"must not exceed width x height ({self.width}x{self.height}) for the Pi camera"
            )
        return self


class DetectorConfig(_Section):
    """``[detector]``: face detector backend and its limits."""

    backend: Literal["auto", "blazeface", "mediapipe", "opencv"] = Field(
        "auto", description="Face detector: 'blazeface' (BlazeFace short range in LiteRT, with eye/nose/mouth "
        "keypoints), 'mediapipe' (the same model through the optional mediapipe package), 'opencv' (Haar cascade: "
        "slower, no keypoints), or 'auto' (blazeface, else opencv, saying why)."
    )
    min_confidence: float = Field(0.5, description="Minimum detection score (BlazeFace, MediaPipe).", ge=0, le=1)
    min_face_size: int = Field(40, description="Ignore faces smaller than this many pixels (box side).", ge=8)
    max_faces: int = Field(5, description="Classify at most this many faces per frame (largest first).", ge=1, le=50)
    threads: int = Field(2, description="Interpreter threads of the BlazeFace detector (the detector is most of a "
                         "frame's work: 2 threads take it from about 1.3 to 0.8 ms a frame on a 2-core x86).", ge=1, le=8)
    every_n_frames: int = Field(
        3, description="Run the detector on one frame in this many and carry each face in between by matching its "
        "last detected patch near its previous place (the classifier still runs on every frame). The detector also "
        "runs at once when a carried face no longer matches (min_match), and on every frame while no face is seen. "
        "A face that enters beside a carried one is found within this many frames; 1 detects on every frame. "
        "Measured by benchmarks/detect_interval.py.", ge=1, le=30,
    )
    min_match: float = Field(
        0.6, description="Normalised cross-correlation under which a carried face is detected again at once.",
        ge=-1, le=1,
    )


class ClassifierConfig(_Section):
    """``[classifier]``: model bundle, runtime and threads."""

    model: ConfigPath | None = Field(
        None,
        description="Model bundle folder. Default: the model store's current model (the last one pushed), else the "
        "bundle shipped with the package. Setting it pins the model: pushed models still install, but a restart "
        "loads this one again.",
    )
    threads: int = Field(2, description="Interpreter threads of the classifier (all faces of a frame run as one batch).",
                         ge=1, le=8)
    runtime: Literal["auto", "ai_edge_litert", "tflite_runtime"] = Field(
        "auto", description="TFLite runtime: 'ai_edge_litert', 'tflite_runtime', or 'auto' (the first of those two that imports)."
    )
    flip_tta: bool = Field(False, description="Average each face with its mirror image (2x classifier cost).")
    align_eyes: bool = Field(
        True, description="Turn each face so its eyes are level before the crop, with the detector's eye "
        "keypoints (BlazeFace; Haar and MediaPipe give none, so their faces are never turned). It changes little on "
        "upright faces and gives back most of what a rolled head costs (benchmarks/generalisation.py; its numbers "
        "are in benchmarks/README.md)."
    )
    prior_correction: float = Field(
        0.0, description="Strength tau of the class-prior correction: each face's probabilities are divided by the "
        "training set's class frequencies to the power tau (logit adjustment), so rare emotions (disgust above all) are "
        "reported more often and recalled better, at some cost in overall accuracy. 0 = off; 1 = full correction. "
        "Each model has its own best value: measure it with benchmarks/prior_correction.py.",
        ge=0, le=2,
    )


class TrackingConfig(_Section):
    """``[tracking]``: IoU matching, smoothing and the uncertain threshold."""

    iou_threshold: float = Field(0.3, description="Minimum box overlap to continue a track.", ge=0, le=1)
    max_missed_frames: int = Field(10, description="Frames a track survives without a detection.", ge=0)
    smoothing: float = Field(0.3, description="Exponential smoothing weight of the newest probabilities (1 = none).", gt=0, le=1)
    uncertain_below: float = Field(
        0.5, ge=0, le=1,
        description="Report 'uncertain' when the top smoothed probability is below. The bundle's probabilities are "
                    "calibrated, so under 0.5 the model is more likely wrong than right (benchmarks/calibration.py).")


class TlsConfig(_Section):
    """``[mqtt.tls]``: TLS to the broker (CA, optional client certificate)."""

    enabled: bool = Field(False, description="Connect with TLS.")
    ca_file: ConfigPath | None = Field(None, description="CA certificate (PEM) that signed the broker's certificate.")
    cert_file: ConfigPath | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    key_file: ConfigPath | None = Field(None, description="Client private key (PEM) for mutual TLS.")
    insecure: bool = Field(False, description="Skip host name verification (testing only).")


class OutboxConfig(_Section):
    """``[mqtt.outbox]``: the outbox of messages awaiting their acknowledgement (memory, then disk)."""

    max_messages: int = Field(100_000, description="Messages kept while the broker is unreachable; beyond, the "
                              "oldest 'faces' updates are dropped first, then the oldest of any kind.", ge=100)
    memory_s: float = Field(
        2.0, description="While connected, a message waits this long in memory for the broker's acknowledgement "
        "before it is written to disk: a kill -9 or power cut loses at most the unacknowledged messages of this "
        "window (checked every quarter of it; while disconnected every message is written to disk at once, per-frame "
        "'faces' updates in groups at most 1 s old). Smaller: safer, more SD-card writes.",
        gt=0, le=60,
    )


class MqttConfig(_Section):
    """``[mqtt]``: broker, credentials, topics, QoS and publishing intervals."""

    enabled: bool = Field(True, description="Publish over MQTT; false prints JSON lines to stdout instead.")
    host: Text | None = Field(
        None, description="Broker host; unset: localhost if a broker answers there, else stdout output."
    )
    port: int = Field(1883, description="Broker port (8883 is usual for TLS).", ge=1, le=65535)
    username: MqttText | None = Field(None, description="User name; the password comes from the environment or credentials.")
    password_env: Text = Field("EMOTION_EDGE_MQTT_PASSWORD", description="Environment variable holding the password.")
    password_credential: Text = Field("mqtt_password", description="systemd credential name holding the password.")
    client_id: MqttText | None = Field(
        None, description="MQTT client id (UTF-8, no control characters, at most 65535 bytes); default "
        "'emotion-edge-<device id>'.")
    keepalive_s: int = Field(30, description="MQTT keep-alive (at most 65535, MQTT's limit); the Last Will fires "
                             "after 1.5x this.", ge=5, le=65535)
    qos: Annotated[Literal[0, 1], BeforeValidator(_not_bool)] = Field(1, description="QoS of published data.")
    topic_prefix: TopicPrefix = Field(
        "emotion", description="First topic level (UTF-8 without control characters or the wildcards + and #, not "
        "starting with '$'). Messages still queued from a run with another prefix are sent under this one.")
    faces_interval_s: float = Field(0.0, description="Minimum seconds between 'faces' updates (0 = every frame).", ge=0)
    summary_interval_s: float = Field(10.0, description="Length of the 'summary' window.", gt=0)
    status_interval_s: float = Field(10.0, description="Seconds between retained 'status' updates.", gt=0)
    max_inflight: int = Field(
        20, description="Messages sent and awaiting their PUBACK at once; more wait in the outbox (keeps order and memory bounded).",
        ge=1, le=1000,
    )
    reconnect_min_s: float = Field(1.0, description="First wait before reconnecting to the broker.", gt=0)
    reconnect_max_s: float = Field(60.0, description="Longest wait between reconnect attempts (exponential backoff).", gt=0)
    max_command_bytes: int = Field(
        64 * 1024, description="Largest accepted message on the command topic; a larger one is dropped unread and "
        "answered 'oversized' (model pushes have their own cap, model_push.max_bytes).", ge=1024, le=16 * 1024 * 1024,
    )
    command_rate: float = Field(
        10.0, description="Commands answered per second at most (bursts of as many); more are dropped unanswered and "
        "counted in the log once a minute, so a flood cannot fill the outbox.", gt=0, le=1000,
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS settings.")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, description="Disk outbox settings.")
    faces_expiry_s: int = Field(
        10, description="MQTT 5 message expiry of each 'faces' message: the broker discards one that no subscriber "
        "took within this many seconds, so stale per-frame updates do not pile up for absent subscribers "
        "(0 = never; ignored on an MQTT 3.1.1 broker). Summaries, events and status never expire.",
        ge=0, le=86400,
    )

    @model_validator(mode="after")
    def _reconnect_range(self) -> MqttConfig:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(f"reconnect_min_s ({self.reconnect_min_s:g}) must not exceed reconnect_max_s "
                             f"({self.reconnect_max_s:g})")
        return self


class HomeAssistantConfig(_Section):
    """``[homeassistant]``: MQTT discovery."""

    enabled: bool = Field(True, description="Publish Home Assistant MQTT discovery configs (retained).")
    discovery_prefix: TopicPrefix = Field(
        "homeassistant", description="Home Assistant discovery prefix, the first topic level(s) of the discovery "
        "configs (as mqtt.topic_prefix: UTF-8 without control characters or the wildcards + and #, not starting "
        "with '$').")
    support_url: Text | None = Field(
        None, description="Link shown as the discovery 'origin' support URL; none is sent when unset."
    )


class ModelPushConfig(_Section):
    """``[model_push]``: signed model updates over MQTT."""

    enabled: bool = Field(False, description="Accept signed model pushes over MQTT.")
    trusted_keys: list[ConfigPath] = Field(default_factory=list, description="Ed25519 public keys (PEM) that may sign models.")
    groups: list[Annotated[str, StringConstraints(pattern=r"^[^#+/]+$")]] = Field(
        default_factory=list,
        description="Fleet groups this device also listens to (one topic level each: no '/', '#' or '+').",
    )
    max_bytes: int = Field(8 * 1024 * 1024, description="Largest accepted push payload.", ge=1024)
    allow_downgrade: bool = Field(
        False,
        description="Accept a push whose model was created before the newest one this device accepted "
        "(off: replayed old signed pushes are refused; roll back on the device with 'edge rollback').",
    )


class PrivacyConfig(_Section):
    """``[privacy]``: the local-only debug preview."""

    debug_preview_dir: ConfigPath | None = Field(
        None,
        description="Write annotated frames to this local folder for debugging (off by default; never published). "
        "Under the systemd unit only the state folder is writable, so use a folder inside it.",
    )


class MetricsConfig(_Section):
    """``[metrics]``: the optional Prometheus endpoint (the figures of the status message)."""

    enabled: bool = Field(False, description="Serve Prometheus metrics over HTTP (needs the prometheus-client "
                          "package, part of the [edge] extra).")
    host: str = Field("127.0.0.1", description="Address to listen on; 127.0.0.1 keeps the endpoint on this machine "
                      "(0.0.0.0 exposes it to the network, unauthenticated).")
    port: int = Field(9312, description="TCP port of the endpoint (http://HOST:PORT/metrics).", ge=1, le=65535)


class Config(_Section):
    """The whole configuration file."""

    device: DeviceConfig = Field(default_factory=DeviceConfig, description="Device identity and state.")
    source: SourceConfig = Field(default_factory=SourceConfig, description="Where frames come from.")
    detector: DetectorConfig = Field(default_factory=DetectorConfig, description="Face detection.")
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig, description="Emotion classifier.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Tracking and smoothing.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="MQTT publishing.")
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig, description="HA discovery.")
    model_push: ModelPushConfig = Field(default_factory=ModelPushConfig, description="Fleet model updates.")
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig, description="Privacy switches.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus metrics endpoint.")

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
        return Config.model_validate(data)
    except ValidationError as exc:
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
    except tomllib.TOMLDecodeError as exc:
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
