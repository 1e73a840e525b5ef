"""Turning plausibility findings into a decision: block, quarantine, flag, and what to mark."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from serve_drift.ingress.config import PlausibilityConfig
from serve_drift.ingress.plausibility import Finding


@dataclass(frozen=True)
class RowVerdict:
    """What happens to one input of a request."""

    flags: tuple[str, ...] = ()
    exclude_from_drift: bool = False
    quarantine: bool = False


@dataclass(frozen=True)
class Verdict:
    """``blocked`` names the finding that refuses the whole request (422), if any."""

    rows: tuple[RowVerdict, ...]
    blocked: Finding | None = None

    @property
    def flagged(self) -> bool:
        return any(row.flags for row in self.rows)


def decide(findings: Sequence[Finding], *, rows: int, config: PlausibilityConfig) -> Verdict:
    """One bad input blocks the whole batch: a client gets one clear answer, not a mix.

    Inputs are still quarantined when their check says so, even if another blocks the request.
    """
    verdicts = [_row(findings, row=row, config=config) for row in range(rows)]
    blocked = next((f for f in findings if _blocks(f, config)), None)
    return Verdict(rows=tuple(verdicts), blocked=blocked)


def _blocks(finding: Finding, config: PlausibilityConfig) -> bool:
    check = config.check(finding.check)
    return check.action == "block" or (check.action == "quarantine" and not check.serve)


def _row(findings: Sequence[Finding], *, row: int, config: PlausibilityConfig) -> RowVerdict:
    mine = [f for f in findings if f.row == row]
    checks = [config.check(f.check) for f in mine]
    return RowVerdict(
        flags=tuple(f.check for f in mine),
        exclude_from_drift=any(c.exclude_from_drift for c in checks),
        quarantine=any(c.action == "quarantine" for c in checks),
    )


def block_message(finding: Finding, *, batch: bool) -> str:
    where = f"input {finding.row}" if batch else "the input"
    return f"{where} failed the {finding.check!r} plausibility check"
