"""The emotion classifier: a TFLite interpreter (LiteRT) over a validated model bundle."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge.lazy import lazy_exports

if TYPE_CHECKING:
    from edge.runtime.classify.calibration import temperature_scale
    from edge.runtime.classify.classifier import Classifier
    from edge.runtime.classify.interpreter import RuntimeMissing, make_interpreter

#: The public surface: other packages import these from here, not from the modules that define them.
__all__ = [
    "Classifier",
    "RuntimeMissing",
    "make_interpreter",
    "temperature_scale",
]

__getattr__ = lazy_exports(__name__, {
    "Classifier": "classifier",
    "RuntimeMissing": "interpreter",
    "make_interpreter": "interpreter",
    "temperature_scale": "calibration",
})
