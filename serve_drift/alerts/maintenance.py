"""Maintenance mode: who set it, why, and until when; no notification gets through meanwhile.

Set it during retraining, a planned camera swap, or a reference rebuild. Incidents still open,
resolve and are stored, so the history is complete; only notifications are held back, and an
incident still open when maintenance ends is notified then. With an Alertmanager configured,
maintenance also creates a silence there (and expires it when cleared), so alerts that
Prometheus evaluates are held back the same way.

>>> window = MaintenanceWindow.starting(at=100.0, duration_s=3600, who="alice",
...     why="retraining digits-cnn v7")
>>> window.active(at=200.0), window.active(at=3700.0)
(True, False)
>>> MaintenanceWindow.from_dict(window.to_dict()) == window
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["MAX_MAINTENANCE_S", "MaintenanceWindow"]

MAX_MAINTENANCE_S = 14 * 24 * 3600.0  # a forgotten maintenance must not mute alerts forever
_MAX_TEXT = 500


@dataclass(frozen=True, kw_only=True)
class MaintenanceWindow:
    """Maintenance from ``started_at`` until ``until`` (Unix seconds), set by ``who`` for ``why``.

    ``silence_id`` is the Alertmanager silence created for it, if any; ``cleared_*`` say who
    ended it early.
    """

    maintenance_id: str
    who: str
    why: str
    started_at: float
    until: float
    silence_id: str | None = None
    cleared_at: float | None = None
    cleared_by: str | None = None

    def __post_init__(self) -> None:
        if not self.who.strip() or not self.why.strip():
            raise ValueError("maintenance needs who and why")
        if len(self.who) > _MAX_TEXT or len(self.why) > _MAX_TEXT:
            raise ValueError(f"who and why are at most {_MAX_TEXT} characters")
        if not self.started_at < self.until <= self.started_at + MAX_MAINTENANCE_S:
            raise ValueError(
                f"maintenance must end after it starts and last at most {MAX_MAINTENANCE_S:.0f} s"
            )

    @classmethod
    def starting(cls, *, at: float, duration_s: float, who: str, why: str) -> MaintenanceWindow:
        """A window from ``at`` for ``duration_s``, with an id derived from its content."""
        digest = hashlib.sha256(f"{at!r}|{duration_s!r}|{who}|{why}".encode()).hexdigest()
        return cls(
            maintenance_id=digest[:16], who=who, why=why, started_at=at, until=at + duration_s
        )

    def active(self, *, at: float) -> bool:
        return self.cleared_at is None and self.started_at <= at < self.until

    def cleared(self, *, at: float, by: str) -> MaintenanceWindow:
        return replace(self, cleared_at=at, cleared_by=by)

    def describe(self) -> str:
        return f"maintenance by {self.who}: {self.why}"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MaintenanceWindow:
        cleared = data.get("cleared_at")
        return cls(
            maintenance_id=str(data["maintenance_id"]),
            who=str(data["who"]),
            why=str(data["why"]),
            started_at=float(data["started_at"]),
            until=float(data["until"]),
            silence_id=data.get("silence_id"),
            cleared_at=None if cleared is None else float(cleared),
            cleared_by=data.get("cleared_by"),
        )
