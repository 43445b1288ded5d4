"""Workstation and operator commands: model keys, signing and pushes (MQTT, SSH), and the subscriber tools."""
