"""The models on the device: the model manager (boot choice, swap, rollback, push reports), the store of pushed
bundles, the bundle check, and the push receiver (:class:`edge.runtime.models.push.ModelPushReceiver`, imported
from its module: it needs the MQTT side, which the surface below does not load).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge.lazy import lazy_exports

if TYPE_CHECKING:
    from edge.runtime.models.check import check_bundle
    from edge.runtime.models.manager import ModelManager, SwapFailed, boot_choice
    from edge.runtime.models.store import ModelStore, StoreError

#: The public surface: other packages import these from here, not from the modules that define them.
__all__ = [
    "ModelManager",
    "ModelStore",
    "StoreError",
    "SwapFailed",
    "boot_choice",
    "check_bundle",
]

__getattr__ = lazy_exports(__name__, {
    "ModelStore": "store",
    "StoreError": "store",
    "ModelManager": "manager",
    "SwapFailed": "manager",
    "boot_choice": "manager",
    "check_bundle": "check",
})
