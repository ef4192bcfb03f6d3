"""SQLite event store: the only room that knows SQL.

`StoreWriter` is the one writer of a file (batched, idempotent for podman events,
redacting secrets); `StoreReader` reads it read-only (runs, observations, changes,
findings, experiments, user SQL). Schema changes are numbered migrations (`schema`).
"""

from store.errors import (
    NoRun,
    NoStore,
    NotAStore,
    QueryRejected,
    StoreClosed,
    StoreError,
    StoreLocked,
    StoreVersionError,
    StoreWriteFailed,
)
from store.reader import StoreReader
from store.records import ChangeRecord, ExperimentRecord, FindingRecord, ObservationRecord, RunRecord
from store.redact import REDACTED, Redactor
from store.schema import LATEST_VERSION
from store.writer import StoreWriter

__all__ = [
    "ChangeRecord",
    "ExperimentRecord",
    "FindingRecord",
    "LATEST_VERSION",
    "NoRun",
    "NoStore",
    "NotAStore",
    "ObservationRecord",
    "QueryRejected",
    "REDACTED",
    "Redactor",
    "RunRecord",
    "StoreClosed",
    "StoreError",
    "StoreLocked",
    "StoreReader",
    "StoreVersionError",
    "StoreWriteFailed",
    "StoreWriter",
]
