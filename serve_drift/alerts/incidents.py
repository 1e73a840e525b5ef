"""Incidents and their transitions: what the engine answers, what sinks send, what is stored.

An :class:`Incident` is one alert of one rule for one scope (model name, version and, for
drift rules, detector): it opens when the rule's condition holds and resolves when it has not
held for ``resolve_after`` evaluations. Each change is a :class:`Transition`; ``notify`` says
whether it should reach people (false while maintenance, a suppression schedule or an
inhibiting rule holds it back, and ``suppressed_by`` says which).

Documents (``to_dict``) follow ``alert-v1.schema.json`` beside this module; readers ignore
unknown keys, so newer documents stay readable.

>>> incident = Incident(incident_id="a1", rule="input-drift", severity="warning",
...     owner="vision", scope=(("model_name", "digits"), ("model_version", "v1")),
...     state="open", opened_at=10.0, updated_at=10.0, summary="inputs drifted")
>>> Incident.from_dict(incident.to_dict()) == incident
True
>>> incident.labels["alertname"], incident.labels["owner"]
('input-drift', 'vision')
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ALERT_SCHEMA_PATH",
    "ALERT_SCHEMA_VERSION",
    "ConditionOutcome",
    "Evidence",
    "Incident",
    "SignalValue",
    "Transition",
    "WindowEvidence",
]

ALERT_SCHEMA_VERSION = 1
ALERT_SCHEMA_PATH = Path(__file__).with_name("alert-v1.schema.json")
MAX_EVIDENCE_WINDOWS = 32
MAX_SAMPLE_IDS = 16  # correlation IDs kept per window in an incident's evidence

IncidentState = Literal["open", "resolved"]
TransitionKind = Literal["opened", "released", "renotified", "resolved"]


@dataclass(frozen=True, kw_only=True)
class WindowEvidence:
    """One drift test that counted towards an alert, with the IDs that lead to its requests."""

    window_index: int
    detector: str
    backend: str
    p_value: float
    tested_at: float
    test_id: str
    trace_id: str
    span_id: str
    significant: bool
    correlation_ids_sample: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["correlation_ids_sample"] = list(self.correlation_ids_sample)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowEvidence:
        return cls(
            window_index=int(data["window_index"]),
            detector=str(data["detector"]),
            backend=str(data["backend"]),
            p_value=float(data["p_value"]),
            tested_at=float(data["tested_at"]),
            test_id=str(data["test_id"]),
            trace_id=str(data["trace_id"]),
            span_id=str(data["span_id"]),
            significant=bool(data["significant"]),
            correlation_ids_sample=tuple(data.get("correlation_ids_sample", ())),
        )


@dataclass(frozen=True, kw_only=True)
class SignalValue:
    """A measured signal a rule read, with the baseline it was compared to (if any)."""

    name: str
    value: float | None
    baseline: float | None = None
    at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignalValue:
        return cls(
            name=str(data["name"]),
            value=_opt_float(data.get("value")),
            baseline=_opt_float(data.get("baseline")),
            at=_opt_float(data.get("at")),
        )


@dataclass(frozen=True, kw_only=True)
class ConditionOutcome:
    """One condition at one evaluation: ``active`` is ``None`` when it could not be decided."""

    description: str
    active: bool | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConditionOutcome:
        active = data.get("active")
        return cls(
            description=str(data["description"]),
            active=None if active is None else bool(active),
            detail=str(data.get("detail", "")),
        )


@dataclass(frozen=True, kw_only=True)
class Evidence:
    """Why an incident holds: the windows behind it and the latest evaluation's readings."""

    windows: tuple[WindowEvidence, ...] = ()
    signals: tuple[SignalValue, ...] = ()
    conditions: tuple[ConditionOutcome, ...] = ()

    def merged_with(self, newer: Evidence) -> Evidence:
        """Windows accumulate (latest :data:`MAX_EVIDENCE_WINDOWS`); readings are the newest."""
        seen = {w.test_id for w in newer.windows}
        windows = (*(w for w in self.windows if w.test_id not in seen), *newer.windows)
        return replace(newer, windows=windows[-MAX_EVIDENCE_WINDOWS:])

    def to_dict(self) -> dict[str, Any]:
        return {
            "windows": [w.to_dict() for w in self.windows],
            "signals": [s.to_dict() for s in self.signals],
            "conditions": [c.to_dict() for c in self.conditions],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evidence:
        return cls(
            windows=tuple(WindowEvidence.from_dict(w) for w in data.get("windows", ())),
            signals=tuple(SignalValue.from_dict(s) for s in data.get("signals", ())),
            conditions=tuple(ConditionOutcome.from_dict(c) for c in data.get("conditions", ())),
        )

    @property
    def trace_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(w.trace_id for w in self.windows if w.trace_id))

    @property
    def correlation_ids(self) -> tuple[str, ...]:
        ids = (cid for w in self.windows if w.significant for cid in w.correlation_ids_sample)
        return tuple(dict.fromkeys(ids))


@dataclass(frozen=True, kw_only=True)
class Incident:
    """One alert of one rule for one scope, as of its latest transition."""

    incident_id: str
    rule: str
    severity: str
    owner: str
    scope: tuple[tuple[str, str], ...]
    state: IncidentState
    opened_at: float
    updated_at: float
    summary: str
    resolved_at: float | None = None
    resolution: str | None = None
    notified_at: float | None = None
    notifications: int = 0
    runbook_url: str | None = None
    dashboards: tuple[str, ...] = ()
    suggested_checks: tuple[str, ...] = ()
    evidence: Evidence = field(default_factory=Evidence)

    @property
    def labels(self) -> dict[str, str]:
        """Alertmanager-style identifying labels: ``alertname`` (the rule), severity, owner,
        and the scope."""
        return {
            "alertname": self.rule,
            "severity": self.severity,
            "owner": self.owner,
            **dict(self.scope),
        }

    @property
    def scope_text(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.scope)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "evidence"}
        data["scope"] = dict(self.scope)
        data["dashboards"] = list(self.dashboards)
        data["suggested_checks"] = list(self.suggested_checks)
        data["evidence"] = self.evidence.to_dict()
        data["alert_schema_version"] = ALERT_SCHEMA_VERSION
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Incident:
        return cls(
            incident_id=str(data["incident_id"]),
            rule=str(data["rule"]),
            severity=str(data["severity"]),
            owner=str(data["owner"]),
            scope=ordered_scope(dict(data["scope"])),
            state="resolved" if data["state"] == "resolved" else "open",
            opened_at=float(data["opened_at"]),
            updated_at=float(data["updated_at"]),
            summary=str(data.get("summary", "")),
            resolved_at=_opt_float(data.get("resolved_at")),
            resolution=data.get("resolution"),
            notified_at=_opt_float(data.get("notified_at")),
            notifications=int(data.get("notifications", 0)),
            runbook_url=data.get("runbook_url"),
            dashboards=tuple(data.get("dashboards", ())),
            suggested_checks=tuple(data.get("suggested_checks", ())),
            evidence=Evidence.from_dict(data.get("evidence", {})),
        )


@dataclass(frozen=True, kw_only=True)
class Transition:
    """A change of one incident. ``notify``: send it to people; ``suppressed_by``: why not.

    ``opened``: the condition started to hold; ``released``: an open incident held back so far
    is notified now; ``renotified``: a reminder that it still holds; ``resolved``: it stopped.
    """

    transition_id: str
    kind: TransitionKind
    at: float
    incident: Incident
    notify: bool
    suppressed_by: str | None = None

    # The event store reads these (its alert block stores any object that has them).
    @property
    def incident_id(self) -> str:
        return self.incident.incident_id

    @property
    def rule(self) -> str:
        return self.incident.rule

    @property
    def status(self) -> Literal["firing", "resolved"]:
        return "resolved" if self.kind == "resolved" else "firing"

    def to_dict(self) -> dict[str, Any]:
        return {
            "transition_id": self.transition_id,
            "kind": self.kind,
            "at": self.at,
            "notify": self.notify,
            "suppressed_by": self.suppressed_by,
            "incident": self.incident.to_dict(),
            "alert_schema_version": ALERT_SCHEMA_VERSION,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def incident_json(self) -> str:
        return json.dumps(self.incident.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Transition:
        return cls(
            transition_id=str(data["transition_id"]),
            kind=data["kind"],
            at=float(data["at"]),
            incident=Incident.from_dict(data["incident"]),
            notify=bool(data["notify"]),
            suppressed_by=data.get("suppressed_by"),
        )


_SCOPE_ORDER = ("model_name", "model_version", "detector")


def ordered_scope(scope: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """Scope labels in the engine's order (JSON documents may sort them otherwise)."""
    rank = {key: i for i, key in enumerate(_SCOPE_ORDER)}
    keys = sorted(scope, key=lambda k: (rank.get(k, len(rank)), k))
    return tuple((str(k), str(scope[k])) for k in keys)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def load_alert_schema() -> dict[str, Any]:
    """The alert document schema (JSON Schema 2020-12) as a dict."""
    schema: dict[str, Any] = json.loads(ALERT_SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema
