"""From windows to a decision's evidence, and the report the router serves at ``/shadow``.

Evidence is the latest ``lookback_windows`` windows (the open one included) of the current
routing epoch that share the newest window's model versions: a new candidate version, a
promotion or a resumption starts the evidence afresh.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from serve_drift.routing.comparison import pool, summary
from serve_drift.routing.decision import Decision, Evidence
from serve_drift.routing.drift import ArmDrift
from serve_drift.routing.messages import RoutingChange, RoutingState
from serve_drift.routing.windows import WindowRecord


def evidence_windows(
    records: Sequence[WindowRecord], *, epoch: int, lookback: int
) -> list[WindowRecord]:
    """The windows a decision reads, oldest first (``records`` oldest first)."""
    current = [r for r in records if r.epoch == epoch]
    if not current:
        return []
    newest = current[-1]
    same = [
        r
        for r in current
        if r.mode == newest.mode
        and _same(r.incumbent_version, newest.incumbent_version)
        and _same(r.candidate_version, newest.candidate_version)
    ]
    return same[-lookback:]


def _same(a: str | None, b: str | None) -> bool:
    return a is None or b is None or a == b


def build_evidence(
    windows: Sequence[WindowRecord], *, epoch: int, mode: str, drift: Mapping[str, ArmDrift]
) -> Evidence:
    newest = windows[-1] if windows else None
    return Evidence(
        mode=newest.mode if newest else mode,
        epoch=epoch,
        windows=len(windows),
        incumbent_version=_latest(windows, "incumbent_version"),
        candidate_version=_latest(windows, "candidate_version"),
        since=windows[0].opened_at if windows else None,
        comparison=pool(w.comparison for w in windows),
        drift=dict(drift),
    )


def _latest(windows: Sequence[WindowRecord], attr: str) -> str | None:
    return next((v for w in reversed(windows) if (v := getattr(w, attr)) is not None), None)


@dataclass(frozen=True)
class ShadowReport:
    """``GET /shadow`` and ``serve-drift shadow report``: where traffic goes, the decision on
    the current evidence, the recent windows and the recent changes."""

    name: str
    generated_at: float
    state: RoutingState
    decision: Decision
    windows: tuple[WindowRecord, ...]
    changes: tuple[RoutingChange, ...]
    store_path: str | None = None
    routing: Mapping[str, Any] = field(default_factory=dict)
    mirror: Mapping[str, int] = field(default_factory=dict)  # shadow copies, by outcome

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "generated_at": self.generated_at,
            "state": self.state.to_dict(),
            "routing": dict(self.routing),
            "decision": self.decision.to_dict(),
            "windows": [window_summary(w) for w in self.windows],
            "changes": [c.to_dict() for c in self.changes],
            "store_path": self.store_path,
            "mirror": dict(self.mirror),
        }


def window_summary(window: WindowRecord) -> dict[str, Any]:
    """One window's figures for reports (the stored record keeps the sums)."""
    return {
        "index": window.index,
        "epoch": window.epoch,
        "mode": window.mode,
        "incumbent_version": window.incumbent_version,
        "candidate_version": window.candidate_version,
        "opened_at": window.opened_at,
        "closed_at": window.closed_at,
        **summary(window.comparison),
        "drift": {arm: d.to_dict() for arm, d in window.drift.items()},
    }
