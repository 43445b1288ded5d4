"""Home Assistant's own MQTT discovery rules, for the discovery tests.

Needs an interpreter with the ``homeassistant`` package (Python 3.13; not part of the project's dependencies: it
is ~600 MB and does not install on the project's Python 3.11). Two uses::

    PY -m tests.support.ha_schema extract tests/support/ha_mqtt_rules.json   # refresh the rules the offline test encodes
    PY -m tests.support.ha_schema validate PAYLOAD.json              # check a device config with HA's schemas

``extract`` writes the abbreviation tables and, per platform, the keys Home Assistant's schemas accept and
require; ``tests/runtime/test_homeassistant.py`` checks the device's payloads against that file on every run. ``validate``
runs a device-based discovery payload through ``DEVICE_DISCOVERY_SCHEMA`` and every component, after Home
Assistant's own abbreviation expansion and shared-option merge, through its platform's strict
``PLATFORM_SCHEMA_MODERN`` (which also compiles every template in Home Assistant's Jinja environment); the
test runs it when ``$EMOTION_EDGE_HA_PYTHON`` names such an interpreter. Prints one line per problem; exit 1
if there is any.
"""

from __future__ import annotations

import copy
import importlib
import json
import sys
from pathlib import Path

PLATFORMS = ("sensor", "binary_sensor", "switch", "button", "event")
#: Options newer than the Home Assistant release installed for the check (2025.4): ``default_entity_id``
#: replaces ``object_id`` from 2025.10 on; discovery ignores unknown keys, so older releases skip it.
NEWER_OPTIONS = {"default_entity_id"}


def _keys(schema) -> tuple[list[str], list[str]]:
    import voluptuous as vol

    allowed, required = [], []
    for marker in schema.schema:
        allowed.append(str(marker))
        if isinstance(marker, vol.Required):
            required.append(str(marker))
    return sorted(allowed), sorted(required)


def _platform_base(platform: str):
    mod = importlib.import_module(f"homeassistant.components.mqtt.{platform}")
    return getattr(mod, "_PLATFORM_SCHEMA_BASE", None) or mod.PLATFORM_SCHEMA_MODERN, mod.PLATFORM_SCHEMA_MODERN


def extract(out: Path) -> None:
    """Write the rules file."""
    from homeassistant.components.mqtt import abbreviations, schemas
    from homeassistant.components.sensor import SensorDeviceClass, SensorStateClass
    from homeassistant.const import __version__
    from homeassistant.helpers.entity import EntityCategory

    device_keys, _ = _keys(schemas.MQTT_ENTITY_DEVICE_INFO_SCHEMA.validators[1])
    origin_keys, origin_required = _keys(schemas.MQTT_ORIGIN_INFO_SCHEMA.validators[0])
    top_keys, top_required = _keys(schemas.DEVICE_DISCOVERY_SCHEMA)
    rules = {
        "home_assistant": __version__,
        "abbreviations": abbreviations.ABBREVIATIONS,
        "device_abbreviations": abbreviations.DEVICE_ABBREVIATIONS,
        "origin_abbreviations": abbreviations.ORIGIN_ABBREVIATIONS,
        "shared_options": list(schemas.SHARED_OPTIONS),
        "device_discovery": {"allowed": top_keys, "required": top_required},
        "device_info": {"allowed": device_keys},
        "origin": {"allowed": origin_keys, "required": origin_required},
        "entity_categories": [c.value for c in EntityCategory],
        "sensor_device_classes": [c.value for c in SensorDeviceClass],
        "sensor_state_classes": [c.value for c in SensorStateClass],
        "platforms": {},
    }
    for platform in PLATFORMS:
        allowed, required = _keys(_platform_base(platform)[0])
        rules["platforms"][platform] = {"allowed": allowed, "required": required}
    out.write_text(json.dumps(rules, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def validate(payload: dict) -> list[str]:
    """Problems Home Assistant's schemas find in a device-based discovery payload (empty: none)."""
    import asyncio
    import tempfile

    from homeassistant.core import HomeAssistant

    async def run() -> list[str]:
        # Template validation needs a running Home Assistant (its Jinja environment and frame tracking).
        with tempfile.TemporaryDirectory() as config_dir:
            hass = HomeAssistant(config_dir)
            try:
                return _validate(payload)
            finally:
                await hass.async_stop(force=True)

    return asyncio.run(run())


def _validate(payload: dict) -> list[str]:
    from homeassistant.components.mqtt import discovery, schemas

    problems: list[str] = []
    device_payload = copy.deepcopy(payload)
    discovery._replace_all_abbreviations(device_payload)
    try:
        schemas.DEVICE_DISCOVERY_SCHEMA(copy.deepcopy(device_payload))
    except Exception as exc:  # voluptuous.Invalid and friends: reported, not raised
        problems.append(f"device config: {exc}")
        return problems
    for cid, comp in device_payload["components"].items():
        config = dict(comp)
        platform = config.pop("platform")
        for option in schemas.SHARED_OPTIONS:
            if option in device_payload and option not in config:
                config[option] = device_payload[option]
        config["device"], config["origin"] = device_payload["device"], device_payload["origin"]
        for key in NEWER_OPTIONS & set(config):
            del config[key]
        try:
            _platform_base(platform)[1](config)
        except Exception as exc:
            problems.append(f"{cid} ({platform}): {exc}")
    return problems


def main(argv: list[str]) -> int:
    """``extract OUT`` or ``validate PAYLOAD``."""
    if len(argv) != 2 or argv[0] not in ("extract", "validate"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "extract":
        extract(Path(argv[1]))
        return 0
    problems = validate(json.loads(Path(argv[1]).read_text(encoding="utf-8")))
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
