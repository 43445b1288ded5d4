"""The tests, in folders that mirror the code: ``runtime/`` (with ``publish/``, ``models/``, ``capture/``,
``detect/``, ``classify/``) for ``edge/runtime``, ``protocol/``, ``tools/`` (``subscribe/``), ``train_export/``,
``deploy/``; tests of ``edge``'s top-level modules sit here; ``project/`` checks the project as a whole (layout,
wheel, install lines, integrations, the shipped model, the benchmark scripts). What tests and benchmarks share is
``tests.support``; the fixtures are in ``conftest.py``."""
