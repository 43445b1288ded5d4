"""Progress bars for the long work of ``export``, ``evaluate``, ``predict`` and ``explain`` (and ``soft-labels``).

tqdm on stderr, so stdout keeps only the results. A bar shows only on a terminal (tqdm's ``disable=None``),
never in a log, a pipe or a test; ``--no-progress`` (:func:`set_enabled`) turns them off on a terminal too.
"""

from __future__ import annotations

import sys
from typing import Any


class _Switch:
    """Whether bars may show in this process (one switch, set once from the command line)."""

    enabled = True


def set_enabled(enabled: bool) -> None:
    """Turn every progress bar of this process on (the default: on a terminal) or off."""
    _Switch.enabled = enabled


def bar(total: int | None = None, desc: str = "", unit: str = "it", leave: bool = True, **kwargs: Any):
    """A tqdm bar on stderr (a no-op object when off or when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr,
                disable=None if _Switch.enabled else True, dynamic_ncols=True, **kwargs)
