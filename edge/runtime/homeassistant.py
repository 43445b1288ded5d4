"""Home Assistant MQTT discovery: the device announces itself, with all its entities, in one retained message.

Device-based discovery (Home Assistant 2024.11 and later): one retained config on
``<discovery_prefix>/device/emotion_edge_<device>/config`` with the device (``dev``), the origin (``o``) and its
components (``cmps``), published on the broker session (``session.publish_raw``) once per start (on the first
connect), whenever Home Assistant announces itself (``<discovery_prefix>/status`` = ``online``), and when a pushed model
changes the labels (a component left out of an update is removed by Home Assistant). Turned off with
``[homeassistant] enabled = false``. Every component's key and ``unique_id`` are the same
(``emotion_edge_<device>_<name>``; ``default_entity_id`` is ``<platform>.`` that; no ``object_id``, which Home
Assistant no longer honours), and all of them follow ``<prefix>/<device>/availability`` (the daemon's Last Will
sets ``offline``). What :func:`components` builds:

- From ``summary`` (one per ``mqtt.summary_interval_s``, so Home Assistant's history stays small), with
  ``expire_after`` three windows: ``dominant_emotion`` (``enum``: the model's labels plus ``none``),
  ``prob_<label>`` (mean probability, %; disabled by default: enable the ones you chart).
- From ``state/face_count``: ``face_count`` (faces tracked now); from ``state/presence``: ``presence``, an
  ``occupancy`` binary sensor (both ``expire_after`` three windows).
- From ``status`` (``entity_category: diagnostic``, ``expire_after`` three status intervals): ``fps``,
  ``cpu_temperature``, ``state``, ``outbox_pending``, ``model``.
- ``privacy``: a switch that sends ``ON``/``OFF`` to ``paused/set`` and reads ``state/paused``.
- Buttons ``publish_status`` (diagnostic) and ``reload_model`` (config) that send those commands.
- ``track``: an event entity firing ``track_start``/``track_end`` from ``events``; ``emotion_change``: one firing
  when a tracked face's smoothed emotion changes.

Earlier versions published one config per entity (``<discovery_prefix>/sensor/<device>_<object>/config``); the
state file (``ha_discovery_topics.json``) lists them, and they are cleared before the device config goes out.
Removing a device: :func:`edge.tools.ha_remove.remove_device_from_broker` (``emotion-edge ha-remove``).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from edge.config import Config
from edge.protocol.topics import (
    AVAILABILITY,
    COMMAND,
    PAUSED_SET,
    STATE_FACE_COUNT,
    STATE_PAUSED,
    STATE_PRESENCE,
    topic,
)
from edge.runtime.publish.base import BrokerSession
from edge.runtime.state import STATE_NAMES
from edge.version import package_version

log = logging.getLogger(__name__)

ORIGIN_NAME = "emotion-edge"
#: Sensors fed by a periodic message go unavailable after this many missed periods (a hung daemon whose
#: availability still says online).
EXPIRE_PERIODS = 3
#: Pause between clearing the old per-entity configs and publishing the device config, so Home Assistant has
#: removed the old entities before new ones with the same unique ids arrive.
MIGRATION_GAP_S = 2.0


def _object_id(text: str) -> str:
    """Home Assistant object ids allow ``[a-zA-Z0-9_-]``."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", text)


def device_identifier(device_id: str) -> str:
    """The identifier of the device in Home Assistant's device registry (also its discovery topic's object id)."""
    return f"emotion_edge_{device_id}"


def device_config_topic(config: Config) -> str:
    """``<discovery_prefix>/device/emotion_edge_<device>/config``."""
    return f"{config.homeassistant.discovery_prefix}/device/{_object_id(device_identifier(config.device.id))}/config"


def _jinja_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _expire(period_s: float) -> int:
    return max(1, math.ceil(EXPIRE_PERIODS * period_s))


def components(config: Config, labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The ``cmps`` of the device config: ``{unique_id: component config}`` for the model's ``labels``."""
    dev = config.device.id
    base = f"{config.mqtt.topic_prefix}/{dev}"
    summary, status, events = f"{base}/summary", f"{base}/status", f"{base}/events"
    command = topic(config.mqtt.topic_prefix, dev, COMMAND)
    per_summary = _expire(config.mqtt.summary_interval_s)
    per_status = _expire(config.mqtt.status_interval_s)
    label_list = "[" + ", ".join(_jinja_str(lab) for lab in labels) + "]"
    state_list = "[" + ", ".join(_jinja_str(s) for s in STATE_NAMES) + "]"
    diagnostic = {"state_topic": status, "entity_category": "diagnostic", "expire_after": per_status}
    out: dict[str, dict[str, Any]] = {}

    def add(platform: str, key: str, **options: Any) -> None:
        uid = f"{device_identifier(dev)}_{_object_id(key)}"
        out[uid] = {"platform": platform, "unique_id": uid,
                    "default_entity_id": f"{platform}.{uid}", "qos": 1, **options}

    add("sensor", "dominant_emotion", name="Dominant emotion", state_topic=summary,
        value_template="{% set d = value_json.dominant_emotion %}" f"{{{{ d if d in {label_list} else 'none' }}}}",
        device_class="enum", options=[*labels, "none"], icon="mdi:emoticon-outline", expire_after=per_summary,
        json_attributes_topic=summary,
        json_attributes_template="{{ {'window_s': value_json.window_s, 'frames': value_json.frames, "
                                 "'faces_mean': value_json.faces_mean} | tojson }}")
    add("sensor", "face_count", name="Faces", state_topic=f"{base}/{STATE_FACE_COUNT}", state_class="measurement",
        unit_of_measurement="faces", icon="mdi:account-group", expire_after=per_summary)
    for lab in labels:
        add("sensor", f"prob_{lab}", name=f"{lab.capitalize()} probability", state_topic=summary,
            value_template=f"{{{{ ((value_json.mean_probs[{_jinja_str(lab)}] | default(0)) * 100) | round(1) }}}}",
            state_class="measurement", unit_of_measurement="%", suggested_display_precision=1, icon="mdi:emoticon",
            expire_after=per_summary, enabled_by_default=False)
    add("binary_sensor", "presence", name="Presence", state_topic=f"{base}/{STATE_PRESENCE}", payload_on="ON",
        payload_off="OFF", device_class="occupancy", expire_after=per_summary)
    add("switch", "privacy", name="Privacy pause", command_topic=f"{base}/{PAUSED_SET}", payload_on="ON",
        payload_off="OFF", state_topic=f"{base}/{STATE_PAUSED}", state_on="ON", state_off="OFF",
        retain=False, icon="mdi:cctv-off")
    add("button", "publish_status", name="Publish status", command_topic=command,
        payload_press='{"command":"publish_status"}', retain=False, entity_category="diagnostic", icon="mdi:refresh")
    add("button", "reload_model", name="Reload model", command_topic=command, payload_press='{"command":"reload_model"}',
        retain=False, entity_category="config", icon="mdi:reload")
    add("event", "track", name="Track", state_topic=events, event_types=["track_start", "track_end"], icon="mdi:face-recognition",
        # Command and model-push events render empty, which Home Assistant ignores.
        value_template="{% if value_json.event in ['track_start', 'track_end'] %}{{ {'event_type': value_json.event, "
                       "'track_id': value_json.track_id, 'duration_s': value_json.duration_s | default(none), "
                       "'dominant_emotion': value_json.dominant_emotion | default(none)} | tojson }}{% endif %}")
    add("event", "emotion_change", name="Emotion change", state_topic=events, event_types=["emotion_change"],
        icon="mdi:emoticon-excited-outline",
        value_template="{% if value_json.event == 'emotion_change' %}{{ {'event_type': value_json.event, "
                       "'track_id': value_json.track_id, 'previous_emotion': value_json.previous_emotion, "
                       "'emotion': value_json.emotion, 'confidence': value_json.confidence} | tojson }}{% endif %}")
    add("sensor", "fps", name="Frame rate", value_template="{{ value_json.fps }}", state_class="measurement",
        unit_of_measurement="fps", suggested_display_precision=1, icon="mdi:speedometer", **diagnostic)
    add("sensor", "cpu_temperature", name="CPU temperature", device_class="temperature", state_class="measurement",
        unit_of_measurement="°C", icon="mdi:thermometer", **diagnostic,
        # 'None' is what Home Assistant reads as unknown (a machine without a thermal zone).
        value_template="{{ value_json.cpu_temp_c if value_json.cpu_temp_c is not none else 'None' }}")
    add("sensor", "state", name="State", device_class="enum", options=list(STATE_NAMES), icon="mdi:state-machine",
        value_template=f"{{% set s = value_json.state %}}{{{{ s if s in {state_list} else 'None' }}}}", **diagnostic)
    add("sensor", "outbox_pending", name="Outbox backlog", value_template="{{ value_json.outbox.pending | int(0) }}",
        state_class="measurement", unit_of_measurement="messages", icon="mdi:tray-full", **diagnostic)
    add("sensor", "model", name="Model", value_template="{{ value_json.model_id if value_json.model_id else 'None' }}",
        icon="mdi:brain", **diagnostic)
    return out


def discovery_message(config: Config, labels: Sequence[str], version: str | None = None) -> tuple[str, dict[str, Any]]:
    """The device config ``(topic, payload)`` for the model's ``labels`` and the software version."""
    version = version or package_version()
    dev = config.device.id
    origin: dict[str, Any] = {"name": ORIGIN_NAME, "sw": version}
    if config.homeassistant.support_url:
        origin["url"] = config.homeassistant.support_url
    payload = {
        "dev": {"ids": [device_identifier(dev)], "name": config.device.name or dev, "mf": "emotion-edge",
                "mdl": "Edge emotion monitor", "sw": version},
        "o": origin,
        "avty": [{"topic": topic(config.mqtt.topic_prefix, dev, AVAILABILITY), "payload_available": "online",
                  "payload_not_available": "offline"}],
        "cmps": components(config, labels),
    }
    return device_config_topic(config), payload


#: File in the state folder listing the discovery topics this device has published.
STATE_FILE = "ha_discovery_topics.json"


class HomeAssistantDiscovery:
    """Daemon extension that keeps the device config published.

    Args:
        config: The daemon config (device id, topic prefix, discovery prefix).
        session: The broker session (:attr:`edge.runtime.publish.mqtt.MqttSink.session`).
        model_info: Returns ``(model_id, labels)`` of the model in use; called on every publish.
        check_interval_s: How often to look for a model change (a hot swap may change the labels).
        migration_gap_s: Wait between clearing old per-entity configs and publishing the device config.
    """

    def __init__(self, config: Config, session: BrokerSession, model_info: Callable[[], tuple[str, list[str]]],
                 check_interval_s: float = 5.0, migration_gap_s: float = MIGRATION_GAP_S) -> None:
        self.config = config
        self.session = session
        self.model_info = model_info
        self.check_interval_s = check_interval_s
        self.migration_gap_s = migration_gap_s
        # Persisted, so configs an earlier version (or run) published are still cleared after a restart.
        self._state_file = config.state_dir() / STATE_FILE
        self.published: set[str] = self._load_published()
        self._last: tuple[str, tuple[str, ...]] | None = None
        self._announced = False
        self._lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self) -> str:
        """Clear configs published before that are not the device config (the per-entity configs of earlier
        versions), then publish the device config retained; return its topic."""
        model_id, labels = self.model_info()
        device_topic, payload = discovery_message(self.config, labels)
        with self._lock:
            stale = sorted(self.published - {device_topic})
            for old in stale:
                self.session.publish_raw(old, b"", retain=True, qos=1)  # empty retained = entity removed
            if stale:
                log.info("cleared %d Home Assistant discovery configs of an earlier version", len(stale))
                time.sleep(self.migration_gap_s)
            self.session.publish_raw(device_topic, json.dumps(payload, separators=(",", ":"), ensure_ascii=False),
                                  retain=True, qos=1)
            self.published = {device_topic}
            self._last = (model_id, tuple(labels))
            self._save_published()
        log.info("published the Home Assistant device config (%d entities) for model %s", len(payload["cmps"]),
                 model_id)
        return device_topic

    def _load_published(self) -> set[str]:
        try:
            topics = json.loads(self._state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s (%s); Home Assistant entities of an earlier version may remain",
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
        # Called on paho's network thread: do the publishing on a short-lived thread instead. At most one waits:
        # anyone may publish "online" on homeassistant/status, and a flood of it must not become a flood of
        # threads and retained configs (one publish after the flood answers all of it).
        with self._pending_lock:
            if self._pending:
                return
            self._pending = True
        threading.Thread(target=self._safe_publish, name="ha-discovery", daemon=True).start()

    def _safe_publish(self) -> None:
        with self._pending_lock:
            self._pending = False
        try:
            self.publish()
        except Exception:  # a failed announce must not take the daemon down; the next trigger retries
            log.exception("publishing Home Assistant discovery failed")

    def _on_connect(self) -> None:
        # Once per start: the config is retained, so later reconnects need not repeat it. Connect hooks run one
        # at a time on the network thread, so the flag needs no lock (and must not wait for publish()'s).
        if not self._announced:
            self._announced = True
            self._publish_soon()

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
        """Hook into the broker session (the first connect, HA status) and watch for model changes."""
        self.session.subscribe(f"{self.config.homeassistant.discovery_prefix}/status", self._on_ha_status)
        self.session.add_connect_hook(self._on_connect)  # also runs at once when the sink is connected already
        self._thread = threading.Thread(target=self._watch_model, name="ha-model-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (the config stays retained: Home Assistant shows the device unavailable, not gone)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)


def discovery(config: Config, session: BrokerSession,
              model_info: Callable[[], tuple[str, list[str]]]) -> HomeAssistantDiscovery | None:
    """The extension on the broker ``session`` when ``homeassistant.enabled``, else None (said in the log); a run
    without a broker builds none (:mod:`edge.runtime.assemble` says so)."""
    if not config.homeassistant.enabled:
        log.info("Home Assistant discovery is off (homeassistant.enabled = false)")
        return None
    return HomeAssistantDiscovery(config, session, model_info)
