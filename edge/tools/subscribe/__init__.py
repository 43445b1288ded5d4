"""Subscriber tools for the emotion feeds: ``watch`` (live terminal view), ``record`` (recorder into SQLite or
PostgreSQL, several recorders splitting one feed, CSV/Parquet export) and ``plot`` (PNG timelines from a recording);
:mod:`.view` folds the live messages for ``watch`` and the web page of :mod:`edge.tools.dashboard`.

They only read what the daemon publishes under the MQTT contract (``<prefix>/<device>/<kind>``, every JSON
payload carrying ``device_id``, ``kind``, ``ts`` and a per-device ``seq``), so they run on any machine that
reaches the broker, not only on the Pi.
"""
