"""Home Assistant MQTT discovery: the device announces its own sensors.

Published retained by the daemon through the sink (``sink.publish_raw``), re-published after every
reconnect and whenever Home Assistant announces itself (``<discovery_prefix>/status`` = ``online``), and
again when a pushed model changes the labels. Turned off with ``[homeassistant] enabled = false``.

Sensors (``<discovery_prefix>/sensor/<device>_<object>/config``), all reading the device's ``summary``
messages (one per ``mqtt.summary_interval_s`` window, so Home Assistant's history stays small), all marked
unavailable through ``<prefix>/<device>/availability`` (the daemon's Last Will sets ``offline``):

- ``dominant_emotion``: ``device_class: enum``; options are the model's labels plus ``none`` (nobody seen in
  the window). The template maps anything else to ``none``, so the state is always a declared option.
- ``face_count``: the most faces seen in one frame of the window (``faces_max``).
- ``prob_<label>``: mean probability of each emotion over all face observations of the window, in %
  (0 when nobody was seen).

Removing a device: :func:`edge.tools.ha_remove.remove_device_from_broker` (``python -m edge ha-remove``) publishes empty retained
payloads on its config topics, which makes Home Assistant delete the entities.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from edge.config import Config
from edge.runtime.publish.base import Sink
from edge.version import package_version

log = logging.getLogger(__name__)

ORIGIN_NAME = "emotion-edge"
_FALLBACK_SUPPORT_URL = "https://pypi.org/project/emotion-edge/"


def support_url(config: Config) -> str:
    """``homeassistant.support_url``, else the package's project URL, else its PyPI page."""
    if config.homeassistant.support_url:
        return config.homeassistant.support_url
    try:
        urls = metadata.metadata("emotion-edge").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        urls = []
    for entry in urls:  # "Homepage, https://..."
        _, _, url = entry.partition(",")
        if url.strip().startswith("http"):
            return url.strip()
    return _FALLBACK_SUPPORT_URL


def _object_id(text: str) -> str:
    """Home Assistant object ids allow ``[a-zA-Z0-9_-]``."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", text)


def device_identifier(device_id: str) -> str:
    """The identifier of the device in Home Assistant's device registry."""
    return f"emotion_edge_{device_id}"


def config_topic(config: Config, object_name: str) -> str:
    """``<discovery_prefix>/sensor/<device>_<object>/config``."""
    return f"{config.homeassistant.discovery_prefix}/sensor/{_object_id(config.device.id)}_{_object_id(object_name)}/config"


def _jinja_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def discovery_messages(
    config: Config, labels: Sequence[str], model_id: str, version: str | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """The ``(config topic, payload)`` pairs for one device, its model's labels and the software version."""
    dev = config.device.id
    version = version or package_version()
    base = f"{config.mqtt.topic_prefix}/{dev}"
    summary_topic = f"{base}/summary"
    common: dict[str, Any] = {
        "availability": [{"topic": f"{base}/availability", "payload_available": "online",
                          "payload_not_available": "offline"}],
        "availability_mode": "all",
        "device": {
            "identifiers": [device_identifier(dev)],
            "name": config.device.name or dev,
            "manufacturer": "emotion-edge",
            "model": "Edge emotion monitor",
            "model_id": model_id,
            "sw_version": version,
        },
        "origin": {"name": ORIGIN_NAME, "sw_version": version, "support_url": support_url(config)},
        "has_entity_name": True,
        "qos": 1,
    }
    label_list = "[" + ", ".join(_jinja_str(lab) for lab in labels) + "]"
    msgs: list[tuple[str, dict[str, Any]]] = [
        (config_topic(config, "dominant_emotion"), {
            "name": "Dominant emotion",
            "unique_id": f"{device_identifier(dev)}_dominant_emotion",
            "state_topic": summary_topic,
            "value_template": "{% set d = value_json.dominant_emotion %}"
                              f"{{{{ d if d in {label_list} else 'none' }}}}",
            "device_class": "enum",
            "options": [*labels, "none"],
            "icon": "mdi:emoticon-outline",
            "json_attributes_topic": summary_topic,
            "json_attributes_template": "{{ {'window_s': value_json.window_s, 'frames': value_json.frames, "
                                        "'faces_mean': value_json.faces_mean} | tojson }}",
            **common,
        }),
        (config_topic(config, "face_count"), {
            "name": "Faces",
            "unique_id": f"{device_identifier(dev)}_face_count",
            "state_topic": summary_topic,
            "value_template": "{{ value_json.faces_max | int(0) }}",
            "state_class": "measurement",
            "unit_of_measurement": "faces",
            "icon": "mdi:account-group",
            **common,
        }),
    ]
    for lab in labels:
        msgs.append((config_topic(config, f"prob_{lab}"), {
            "name": f"{lab.capitalize()} probability",
            "unique_id": f"{device_identifier(dev)}_prob_{_object_id(lab)}",
            "state_topic": summary_topic,
            "value_template": f"{{{{ ((value_json.mean_probs[{_jinja_str(lab)}] | default(0)) * 100) | round(1) }}}}",
            "state_class": "measurement",
            "unit_of_measurement": "%",
            "suggested_display_precision": 1,
            "icon": "mdi:emoticon",
            **common,
        }))
    return msgs


def model_info_from_daemon(daemon: Any) -> tuple[str, list[str]]:
    """``(model_id, labels)`` of the daemon's current model.

    Read from ``daemon.classifier`` (plain attribute reads, safe from another thread), else from its
    status body, else from the current bundle's manifest.
    """
    clf = getattr(daemon, "classifier", None)
    if clf is not None and getattr(clf, "labels", None):
        return str(clf.model_id), [str(x) for x in clf.labels]
    model_id = str(getattr(daemon, "model_id", "") or "unknown")
    labels: list[str] = []
    try:
        labels = list((daemon.status_body().get("model") or {}).get("labels") or [])
    except Exception:  # the status body is best effort here; the manifest below is the fallback
        log.debug("status_body() gave no labels", exc_info=True)
    if not labels and getattr(daemon, "current_bundle_dir", None):
        manifest = Path(daemon.current_bundle_dir) / "manifest.json"
        labels = list(json.loads(manifest.read_text(encoding="utf-8")).get("labels") or [])
    return model_id, [str(x) for x in labels]


#: File in the state folder listing the discovery topics this device has published.
STATE_FILE = "ha_discovery_topics.json"


class HomeAssistantDiscovery:
    """Daemon extension that keeps the device's discovery configs published.

    Args:
        config: The daemon config (device id, topic prefix, discovery prefix).
        sink: An MQTT sink with ``publish_raw``, ``subscribe`` and ``add_connect_hook``.
        model_info: Returns ``(model_id, labels)`` of the model in use; called on every publish.
        check_interval_s: How often to look for a model change (a hot swap may change the labels).
    """

    def __init__(self, config: Config, sink: Sink, model_info: Callable[[], tuple[str, list[str]]],
                 check_interval_s: float = 5.0) -> None:
        self.config = config
        self.sink = sink
        self.model_info = model_info
        self.check_interval_s = check_interval_s
        # Persisted, so a restart with another model (a rollback while stopped) still clears the old labels'
        # configs, which would otherwise stay in Home Assistant as sensors stuck at 0 %.
        self._state_file = config.state_dir() / STATE_FILE
        self.published: set[str] = self._load_published()
        self._last: tuple[str, tuple[str, ...]] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self) -> list[str]:
        """Publish all configs retained, clear configs of labels the model no longer has; return the topics."""
        model_id, labels = self.model_info()
        msgs = discovery_messages(self.config, labels, model_id)
        with self._lock:
            topics = []
            for topic, payload in msgs:
                self.sink.publish_raw(topic, json.dumps(payload, separators=(",", ":")), retain=True, qos=1)
                topics.append(topic)
            for stale in sorted(self.published - set(topics)):
                self.sink.publish_raw(stale, b"", retain=True, qos=1)  # empty retained = entity removed
            self.published = set(topics)
            self._last = (model_id, tuple(labels))
            self._save_published()
        log.info("published %d Home Assistant discovery configs for model %s", len(topics), model_id)
        return topics

    def _load_published(self) -> set[str]:
        try:
            topics = json.loads(self._state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s (%s); stale Home Assistant entities of an earlier model may remain",
                        self._state_file, exc)
            return set()
        prefix = f"{self.config.homeassistant.discovery_prefix}/"
        # Only this device's own discovery topics: the file must never make us clear someone else's.
        return {t for t in topics if isinstance(t, str) and t.startswith(prefix)} if isinstance(topics, list) else set()

    def _save_published(self) -> None:
        tmp = self._state_file.with_name(self._state_file.name + ".tmp")
        try:
            tmp.write_text(json.dumps(sorted(self.published)) + "\n", encoding="utf-8")
            tmp.replace(self._state_file)
        except OSError as exc:
            log.warning("cannot write %s (%s)", self._state_file, exc)

    def _publish_soon(self) -> None:
        # Called on paho's network thread: do the publishing on a short-lived thread instead.
        threading.Thread(target=self._safe_publish, name="ha-discovery", daemon=True).start()

    def _safe_publish(self) -> None:
        try:
            self.publish()
        except Exception:  # a failed announce must not take the daemon down; the next trigger retries
            log.exception("publishing Home Assistant discovery failed")

    def _on_ha_status(self, topic: str, payload: bytes) -> None:
        if payload.strip().lower() == b"online":
            log.info("Home Assistant came online: re-publishing discovery")
            self._publish_soon()

    def _watch_model(self) -> None:
        while not self._stop.wait(self.check_interval_s):
            try:
                model_id, labels = self.model_info()
            except Exception:
                log.debug("model info unavailable", exc_info=True)
                continue
            if self._last is not None and (model_id, tuple(labels)) != self._last:
                log.info("model changed to %s: re-publishing discovery", model_id)
                self._safe_publish()

    def start(self) -> None:
        """Hook into the sink (HA status, reconnects), publish now, and watch for model changes."""
        self.sink.subscribe(f"{self.config.homeassistant.discovery_prefix}/status", self._on_ha_status)
        self.sink.add_connect_hook(self._publish_soon)
        if getattr(self.sink, "connected", True):
            self._safe_publish()
        self._thread = threading.Thread(target=self._watch_model, name="ha-model-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (configs stay retained: Home Assistant shows the device unavailable, not gone)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)


def attach(daemon: Any, sink: Any, config: Config) -> HomeAssistantDiscovery | None:
    """Create the extension and register it with ``daemon.add_extension`` when enabled and the sink is MQTT."""
    if not config.homeassistant.enabled:
        log.info("Home Assistant discovery is off (homeassistant.enabled = false)")
        return None
    if not sink.has_broker:
        log.info("Home Assistant discovery needs the MQTT sink; not publishing it")
        return None
    ext = HomeAssistantDiscovery(config, sink, lambda: model_info_from_daemon(daemon))
    daemon.add_extension(ext)
    return ext
