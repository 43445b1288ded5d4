"""What the daemon needs from a feature that runs beside the frame loop (the command topics, Home Assistant
discovery, model push, the metrics endpoint): a start when the loop starts and a stop when it ends, before the
run's last status.

The assembly (:mod:`edge.runtime.assemble`) builds the extensions the config asks for and registers them with
:meth:`edge.runtime.daemon.Daemon.add_extension`; the daemon starts them in order and stops them in reverse.
What an extension contributes to the status (the model push's last result) it hands to the owner of that
state (:class:`edge.runtime.models.manager.ModelManager`), so the daemon never asks an extension for it.
"""

from __future__ import annotations

from typing import Protocol


class Extension(Protocol):
    """A feature whose life follows the frame loop's."""

    def start(self) -> None:
        """Begin (threads, subscriptions, a listening socket); called once, before the first frame."""
        ...

    def stop(self) -> None:
        """End and release what :meth:`start` took; called once, after the last frame, if :meth:`start` returned
        (when a later extension's start fails, the ones started before it are stopped)."""
        ...
