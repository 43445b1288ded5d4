"""The model store on the device: pushed bundles, start-up rollback, checks, the push receiver, the swap.

The push receiver (:class:`edge.runtime.models.push.ModelPushReceiver`) is imported from its module: it imports
this package for the start-up classifier, and the surface below may not import it back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge.lazy import lazy_exports

if TYPE_CHECKING:
    from edge.runtime.models.active import ActiveModel
    from edge.runtime.models.boot import configured_classifier, startup_classifier
    from edge.runtime.models.check import check_bundle
    from edge.runtime.models.store import ModelStore, StoreError

#: The public surface: other packages import these from here, not from the modules that define them.
__all__ = [
    "ActiveModel",
    "ModelStore",
    "StoreError",
    "check_bundle",
    "configured_classifier",
    "startup_classifier",
]

__getattr__ = lazy_exports(__name__, {
    "ModelStore": "store",
    "StoreError": "store",
    "ActiveModel": "active",
    "check_bundle": "check",
    "configured_classifier": "boot",
    "startup_classifier": "boot",
})
