"""What the device does with a command from its command topic, and the ``command`` event that answers it.

Commands: ``publish_status`` (a fresh retained status now) and ``reload_model`` (load the model store's
``current`` bundle, or reload the running one). The command topic carries no signature, so a command can never
point the daemon at other files (see :meth:`edge.runtime.models.active.ActiveModel.reload_target`).

Privacy: ``pause`` stops capture and releases the camera until ``resume``, across restarts; no other command
turns capture back on (see :meth:`edge.runtime.daemon.Daemon.set_paused`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.protocol.envelope import clip, command_event
from edge.runtime.loglimit import LogLimiter
from edge.runtime.models.active import ActiveModel

log = logging.getLogger(__name__)
# Commands come from the network: their failures are logged once per code, then counted (see loglimit).
_log_limit = LogLimiter(log)

#: The commands a device accepts.
COMMANDS = ("publish_status", "reload_model", "pause", "resume")

#: Pauses (True) or resumes (False) capture; returns ``(ok, detail)`` for the answer.
SetPaused = Callable[[bool], "tuple[bool, str]"]


class DeviceCommands:
    """Runs commands and publishes their answers.

    Args:
        models: The active model (reload rule).
        swap_model: Swaps a bundle in (the daemon's, so its status and extensions follow).
        publish_status: Asks for a status message at the next loop iteration.
        publish_event: Publishes an ``events`` body.
        set_paused: The privacy pause (``pause``/``resume``); None answers those commands as unavailable.
    """

    def __init__(self, models: ActiveModel, swap_model: Callable[[Path], None], publish_status: Callable[[], None],
                 publish_event: Callable[[dict[str, Any]], None], set_paused: SetPaused | None = None) -> None:
        self._models = models
        self._swap_model = swap_model
        self._publish_status = publish_status
        self._publish_event = publish_event
        self._set_paused = set_paused

    def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Execute a command dict and publish the result as an ``events`` message with event ``command``; return
        that event's body (the MQTT 5 response). Runs on the caller's thread; never raises."""
        name = cmd.get("command")
        ok, detail, code = True, None, "ok"
        try:
            if name == "publish_status":
                self._publish_status()
                detail = "status will be published"
            elif name == "reload_model":
                target = self._models.reload_target(cmd.get("bundle_dir"))
                if target is None:
                    ok, code = False, "refused"
                    detail = (f"bundle_dir must be the model store's current link {self._models.current_link()} "
                              "or the running bundle (an unsigned command may not pick an older model); make a "
                              "model current with a push or 'python -m edge.modelctl rollback' first")
                else:
                    self._swap_model(target)
                    detail = f"running {self._models.classifier.model_id}"
            elif name in ("pause", "resume"):
                if self._set_paused is None:
                    ok, detail, code = False, "this device has no privacy pause", "refused"
                else:
                    ok, detail = self._set_paused(name == "pause")
                    code = "ok" if ok else "failed"
            else:
                ok, code = False, "unknown_command"
                detail = f"unknown command {clip(name)!r}; use {' or '.join(repr(c) for c in COMMANDS)}"
        except Exception as exc:  # BundleError, RuntimeMissing, OSError: reported, never raised to the sink
            ok, detail, code = False, f"{name} failed: {clip(exc, 300)}", "failed"
        event = command_event(name, ok, detail, cmd, code)
        if not ok:
            _log_limit.warning(f"command {code}", "command %s: %s", event["command"], event["detail"])
        self._publish_event(event)
        return event
