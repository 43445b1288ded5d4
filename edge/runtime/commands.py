"""What the device does with a command from its command topic, and the ``command`` event that answers it.

Commands: ``publish_status`` (a fresh retained status now) and ``reload_model`` (load the model store's
``current`` bundle, or reload the running one). The command topic carries no signature, so a command can never
point the daemon at other files (see :meth:`edge.runtime.models.manager.ModelManager.reload_target`).

Privacy: ``pause`` stops capture and releases the camera until ``resume``, across restarts; no other command
turns capture back on (see :meth:`edge.runtime.daemon.Daemon.set_paused`).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from edge.protocol.envelope import clip, command_event
from edge.runtime.loglimit import LogLimiter
from edge.runtime.models.manager import ModelManager

log = logging.getLogger(__name__)
# Commands come from the network: their failures are logged once per code, then counted (see loglimit).
_log_limit = LogLimiter(log)

#: The commands a device accepts.
COMMANDS = ("publish_status", "reload_model", "pause", "resume")


class DeviceControl(Protocol):
    """What a command may ask of the device besides its model (the daemon implements it)."""

    def publish_status(self) -> None:
        """Ask for a status message at the next loop iteration."""
        ...

    def set_paused(self, paused: bool) -> tuple[bool, str]:
        """Pause (True) or resume (False) capture; ``(ok, detail)`` for the answer."""
        ...


class DeviceCommands:
    """Runs commands and builds their answers.

    Args:
        models: The model manager (the reload rule and the swap).
        device: The status request and the privacy pause.
    """

    def __init__(self, models: ModelManager, device: DeviceControl) -> None:
        self._models = models
        self._device = device

    def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Execute a command dict; return the body of its answer, an ``events`` message with event ``command`` (also
        the MQTT 5 response) that the caller publishes. Runs on the caller's thread; never raises."""
        name = cmd.get("command")
        ok, detail, code = True, None, "ok"
        try:
            if name == "publish_status":
                self._device.publish_status()
                detail = "status will be published"
            elif name == "reload_model":
                target = self._models.reload_target(cmd.get("bundle_dir"))
                if target is None:
                    ok, code = False, "refused"
                    detail = (f"bundle_dir must be the model store's current link {self._models.current_link()} "
                              "or the running bundle (an unsigned command may not pick an older model); make a "
                              "model current with a push or 'python -m edge.modelctl rollback' first")
                else:
                    self._models.swap(target)
                    self._device.publish_status()
                    detail = f"running {self._models.classifier.model_id}"
            elif name in ("pause", "resume"):
                ok, detail = self._device.set_paused(name == "pause")
                code = "ok" if ok else "failed"
            else:
                ok, code = False, "unknown_command"
                detail = f"unknown command {clip(name)!r}; use {' or '.join(repr(c) for c in COMMANDS)}"
        except Exception as exc:  # BundleError, RuntimeMissing, OSError: reported, never raised to the sink
            ok, detail, code = False, f"{name} failed: {clip(exc, 300)}", "failed"
        event = command_event(name, ok, detail, cmd, code)
        if not ok:
            _log_limit.warning(f"command {code}", "command %s: %s", event["command"], event["detail"])
        return event
