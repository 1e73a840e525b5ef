"""What every event-store backend promises: its errors, receipts, queries and result types.

Backends (:mod:`~serve_drift.eventlog.store.sqlite`, :mod:`~serve_drift.eventlog.store.postgres`)
differ in how they connect, measure size and name failures; everything they return is here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from serve_drift.errors import ServeDriftError
from serve_drift.eventlog.schema import InferenceRecord

LabelStatus = Literal[
    "accepted", "unknown_correlation_id", "duplicate_label", "ambiguous", "invalid"
]

DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0
DEFAULT_MAX_BYTES = 1 << 30


class StoreError(ServeDriftError):
    """The store could not do what was asked; ``reason`` is a short machine-readable word:
    ``disk_full``, ``locked``, ``read_only``, ``io_error``, ``cannot_open``, ``corrupt``,
    ``incompatible``, ``connection_lost``, ``timeout``, ``closed`` or ``error``, and ``code``
    is ``store_<reason>``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.code = f"store_{reason}"

    def __reduce__(self) -> tuple[Any, ...]:  # rebuilt with both arguments across processes
        return (type(self), (self.reason, str(self)))


class StoreWriteError(StoreError):
    """Nothing of the failed write was reported committed: count its events as dropped.

    (After a connection lost during COMMIT the server may have committed it anyway; a retry
    then finds those ids already present, so nothing is stored twice.)"""


@dataclass(frozen=True)
class WriteReceipt:
    """Ids committed by one write. ``already_present_ids`` were stored by an earlier attempt."""

    written_ids: tuple[str, ...]
    already_present_ids: tuple[str, ...] = ()

    @property
    def committed(self) -> int:
        return len(self.written_ids) + len(self.already_present_ids)


@dataclass(frozen=True)
class StoreHealth:
    """``degraded`` is true while the latest write failed; ``last_error`` says how.

    ``path`` is the SQLite file, or the PostgreSQL DSN without its password and the schema
    (``postgresql://user@host:5432/db#schema``); ``reconnects`` counts connections the store
    opened again after losing one."""

    path: str
    degraded: bool
    last_error: str | None
    last_error_reason: str | None
    last_error_at: float | None
    write_failures: int
    consecutive_failures: int
    last_write_at: float | None
    size_bytes: int
    synchronous: str
    backend: str = "sqlite"
    reconnects: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True, kw_only=True)
class EventQuery:
    """Filters for :meth:`~serve_drift.eventlog.store.BaseEventStore.query`, combined with AND;
    newest first."""

    limit: int = 100
    correlation_id: str | None = None
    since: float | None = None
    until: float | None = None
    model_version: str | None = None
    flagged_only: bool = False
    drift_window: int | None = None


@dataclass(frozen=True)
class RetentionReport:
    deleted_by_age: int
    deleted_by_size: int
    size_bytes: int


@dataclass(frozen=True)
class LabelAnswer:
    """The answer for one submitted label, in submission order.

    ``internal_ids`` are the events the label was joined to; ``drift_windows`` their windows
    (recompute those windows' metrics after accepting labels).
    """

    correlation_id: str
    status: LabelStatus
    detail: str
    internal_ids: tuple[str, ...] = ()
    drift_windows: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The caller's answer: internal ids and windows stay inside the monitor."""
        return {"correlation_id": self.correlation_id, "status": self.status, "detail": self.detail}


@dataclass(frozen=True)
class LabelledPredictions:
    """Joined (prediction, label) rows as arrays; ``confidence`` is NaN where unknown."""

    predicted: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    weights: np.ndarray
    timestamps: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True, kw_only=True)
class ServedRequest:
    """The compact row kept for every served request, whatever sampling decides.

    Written when the request reaches the monitor, before its window is tested: a label for any
    served request joins at once, and per-window accuracy from labels counts every labelled
    request once, not only the sampled ones. About 200 bytes per row with its indexes.
    """

    internal_id: str
    correlation_id: str
    timestamp: float
    model_name: str
    model_version: str
    predicted_class: int | None
    confidence: float | None
    deployment: str | None = None
    flagged: bool = False
    drift_window: int | None = None

    @classmethod
    def of(cls, record: InferenceRecord) -> ServedRequest:
        return cls(
            internal_id=record.internal_id,
            correlation_id=record.correlation_id,
            timestamp=record.timestamp,
            model_name=record.model_name,
            model_version=record.model_version,
            predicted_class=record.outputs.predicted_class,
            confidence=record.outputs.confidence,
            deployment=record.deployment,
            flagged=record.flagged,
            drift_window=record.drift_window,
        )

    def row(self) -> tuple[Any, ...]:
        return (
            self.internal_id,
            self.correlation_id,
            self.timestamp,
            self.model_name,
            self.model_version,
            self.deployment,
            int(self.flagged),
            self.drift_window,
            self.predicted_class,
            self.confidence,
        )


# --- alerts (issue 10) ------------------------------------------------------------------------
# Alert documents are versioned by the alerts package's own schema
# (``serve_drift/alerts/alert-v1.schema.json``), not by the event schema: the store keeps them
# as JSON beside a few indexed columns and never interprets more of them than that. The store
# cannot import the alerts package (same layer), so it takes any object with the attributes
# below; ``serve_drift.alerts.Transition`` and ``MaintenanceWindow`` have them.


class AlertTransitionLike(Protocol):
    """What the store needs of an alert transition."""

    @property
    def transition_id(self) -> str: ...
    @property
    def incident_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def at(self) -> float: ...
    @property
    def notify(self) -> bool: ...
    def to_json(self) -> str: ...
    def incident_json(self) -> str: ...


class MaintenanceLike(Protocol):
    """What the store needs of a maintenance window."""

    @property
    def maintenance_id(self) -> str: ...
    @property
    def started_at(self) -> float: ...
    @property
    def until(self) -> float: ...
    @property
    def cleared_at(self) -> float | None: ...
    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class StoredIncident:
    """An incident as last written; ``document`` is its JSON (alert schema v1)."""

    incident_id: str
    rule: str
    severity: str
    state: str
    opened_at: float
    updated_at: float
    resolved_at: float | None
    document: dict[str, Any]


@dataclass(frozen=True)
class StoredTransition:
    transition_id: str
    incident_id: str
    at: float
    kind: str
    notified: bool
    document: dict[str, Any]


class StoreConfigError(ServeDriftError, ValueError):
    """The store cannot be set up as configured (a bad schema name, a missing driver)."""

    code = "store_config"
