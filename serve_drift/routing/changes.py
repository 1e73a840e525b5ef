"""Promote, roll back, resume: what each does to the routing state, and when it is refused.

- ``promote`` sends all traffic to the candidate. It is refused unless the decision on the
  current evidence says promote (``force`` overrides, and is recorded).
- ``rollback`` sends all traffic to the incumbent, or to ``fallback`` when one is configured
  and named. It is always allowed: it is the safe state.
- ``resume`` returns to the configured mode (shadow or canary) in a new epoch, so that new
  evidence is gathered from scratch.

Each applied change starts a new epoch. Requests in flight finish on the arm they started on;
both arms keep running, so no request fails because of a change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from serve_drift.errors import ServeDriftError
from serve_drift.routing.decision import Decision
from serve_drift.routing.messages import Action, RoutingChange, RoutingState

ACTIONS: tuple[Action, ...] = ("promote", "rollback", "resume")


class ChangeRefused(ServeDriftError, ValueError):
    """A routing change that the evidence or the configuration does not allow."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ChangeAnswer:
    """The comparator's answer to a change request."""

    applied: bool
    state: RoutingState
    detail: str
    code: str | None = None
    change: RoutingChange | None = None
    decision: Decision | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "code": self.code,
            "detail": self.detail,
            "state": self.state.to_dict(),
            "change": None if self.change is None else self.change.to_dict(),
            "verdict": None if self.decision is None else self.decision.verdict,
            "reasons": [] if self.decision is None else list(self.decision.reasons),
        }


@dataclass(frozen=True)
class ChangeRequest:
    action: Action
    actor: str = "admin"
    reason: str = ""
    force: bool = False
    target: str = "incumbent"
    extra: dict[str, Any] = field(default_factory=dict)


def next_state(
    request: ChangeRequest,
    *,
    state: RoutingState,
    decision: Decision,
    has_fallback: bool,
    now: float,
) -> RoutingState:
    """The state after ``request``; raises :class:`ChangeRefused` when it is not allowed.

    >>> from serve_drift.routing.comparison import Comparison
    >>> from serve_drift.routing.decision import DecisionConfig, Evidence, decide
    >>> hold = decide(Evidence("shadow", 0, 0, None, None, None, Comparison()), DecisionConfig())
    >>> next_state(ChangeRequest("rollback"), state=RoutingState(), decision=hold,
    ...            has_fallback=False, now=5.0)
    RoutingState(route_all_to='incumbent', epoch=1, changed_at=5.0)
    """
    if request.action == "promote":
        if decision.verdict != "promote" and not request.force:
            raise ChangeRefused(
                "decision_not_promote",
                f"the decision is {decision.verdict}: {'; '.join(decision.reasons)}",
            )
        target: str | None = "candidate"
    elif request.action == "rollback":
        target = _rollback_target(request.target, has_fallback=has_fallback)
    else:
        target = None
    if target == state.route_all_to and request.action != "resume":
        raise ChangeRefused("no_change", f"traffic already goes to the {target}")
    return RoutingState(route_all_to=target, epoch=state.epoch + 1, changed_at=now)


def _rollback_target(target: str, *, has_fallback: bool) -> str:
    if target == "fallback" and not has_fallback:
        raise ChangeRefused("no_fallback", "no fallback arm is configured")
    if target not in ("incumbent", "fallback"):
        raise ChangeRefused("invalid_target", "roll back to 'incumbent' or 'fallback'")
    return target


def change_request(action: str, body: Mapping[str, Any]) -> ChangeRequest | None:
    """A change from an admin body, or from an Alertmanager webhook (``alerts`` present):
    a firing alert rolls back with the alert's name as the reason; a resolved one is None."""
    verb = next(a for a in ACTIONS if a == action)
    if "alerts" in body:
        if body.get("status") != "firing":
            return None
        names = sorted({str(a.get("labels", {}).get("alertname", "?")) for a in body["alerts"]})
        reason = f"alert firing: {', '.join(names)}"
        return ChangeRequest(verb, actor="alert", reason=reason, target=_target(body))
    return ChangeRequest(
        verb,
        reason=str(body.get("reason", ""))[:500],
        force=bool(body.get("force", False)),
        target=_target(body),
    )


def _target(body: Mapping[str, Any]) -> str:
    return str(body.get("target") or body.get("commonLabels", {}).get("target") or "incumbent")
