"""Where the tests find the checkout and the shared data, independent of how deep a test file sits."""

from __future__ import annotations

from pathlib import Path

#: The repository root (this file is ``tests/support/paths.py``).
REPO = Path(__file__).resolve().parents[2]
#: FER2013 beside the checkout (``../shared/data/fer2013``), never copied in; tests that need it skip without it.
SHARED_DATA = REPO.parent / "shared" / "data" / "fer2013"
