"""What crosses a process inside a shadow or canary app: router to comparator, and back.

- :class:`Observation`: one routed request, with the answer of each arm that saw it;
- :class:`MirrorCopy`: a shadow copy of an answered request, for the comparator to send on;
- :class:`RoutingState`: where traffic goes now (all to one arm after a promotion or a
  rollback, else as configured), polled by every router replica;
- :class:`ArmLineage` and :class:`RoutingChange`: one promotion, rollback or resumption, with
  the model versions and artifact hashes of each arm at that moment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from serve_drift.routing.answers import Answer
from serve_drift.routing.forward import ReplayedRequest

Action = Literal["promote", "rollback", "resume"]


@dataclass(frozen=True)
class Observation:
    """One request as the router routed it. In shadow mode both answers are set when it was
    mirrored; in canary mode only the arm that answered (``served_by``) has one."""

    correlation_id: str
    timestamp: float
    mode: str
    served_by: str
    incumbent: Answer | None = None
    candidate: Answer | None = None


@dataclass(frozen=True)
class MirrorCopy:
    """A shadow copy of one request the incumbent answered: the comparator sends ``request``
    to the candidate under the same correlation and internal IDs, and pairs its answer with
    ``incumbent``. The request's ``traceparent`` header is the router's span for it."""

    correlation_id: str
    internal_id: str
    timestamp: float
    request: ReplayedRequest
    incumbent: Answer


@dataclass(frozen=True)
class RoutingState:
    """``route_all_to`` names the arm that answers everything (no mirror, no canary), or is
    None: then the configured mode applies. ``epoch`` counts changes; evidence for a
    decision is gathered within one epoch."""

    route_all_to: str | None = None
    epoch: int = 0
    changed_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ArmLineage:
    """What one arm served when a change was made.

    ``model_name``, ``model_version``, ``reference_version`` and ``reference_hash`` come from
    the arm's drift monitor (its reference set's lineage: the model version it was embedded
    with, and its content hash); ``answered_version`` is the ``model_version`` the arm's
    latest answers carried, when they carry one.
    """

    arm: str
    app: str
    model_name: str | None = None
    model_version: str | None = None
    reference_version: str | None = None
    reference_hash: str | None = None
    answered_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RoutingChange:
    """One recorded change of where traffic goes, and why."""

    change_id: str
    at: float
    action: Action
    actor: str  # "admin", "auto" (the comparator's own rollback) or "alert"
    reason: str
    before: RoutingState
    after: RoutingState
    verdict: str | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)
    arms: tuple[ArmLineage, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["arms"] = [arm.to_dict() for arm in self.arms]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoutingChange:
        return cls(
            change_id=str(data["change_id"]),
            at=float(data["at"]),
            action=data["action"],
            actor=str(data["actor"]),
            reason=str(data["reason"]),
            before=RoutingState(**data["before"]),
            after=RoutingState(**data["after"]),
            verdict=data.get("verdict"),
            evidence=dict(data.get("evidence") or {}),
            arms=tuple(ArmLineage(**arm) for arm in data.get("arms", ())),
        )
