"""Workstation and operator commands: model keys, signing and pushes (MQTT, SSH), the subscriber tools and
the live dashboard."""
