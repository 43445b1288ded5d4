"""Recordings: every received contract message once per ``(device, seq, ts)``, in a SQLite file (the embedded
default, :mod:`.sqlite`) or a PostgreSQL database (:mod:`.postgres`), with the same tables and exports
(:mod:`.base`). ``Recording(target)`` opens whichever ``target`` names.
"""

from edge.tools.subscribe.store.base import (
    EXPORT_TABLES,
    SCHEMA_VERSION,
    Recording,
    StoreError,
    is_database_url,
    is_number,
)
from edge.tools.subscribe.store.postgres import PostgresRecording
from edge.tools.subscribe.store.sqlite import SqliteRecording

__all__ = ["EXPORT_TABLES", "SCHEMA_VERSION", "PostgresRecording", "Recording", "SqliteRecording", "StoreError",
           "is_database_url", "is_number"]
