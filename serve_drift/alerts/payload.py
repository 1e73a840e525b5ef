"""One notification document for every sink: Alertmanager's webhook format plus our evidence.

A receiver written for Alertmanager's webhook (version 4) reads ours unchanged: ``status``,
``alerts[].labels`` (``alertname`` = the rule, ``severity``, ``owner``, model name and version,
detector), ``alerts[].annotations`` (``summary``, ``runbook_url``, ``dashboard``,
``suggested_checks``), ``startsAt``/``endsAt``. The ``serve_drift`` key adds what Alertmanager
cannot know: the transition, and the incident with its evidence (windows, p-values, trace and
correlation IDs).

>>> from serve_drift.alerts.incidents import Incident, Transition
>>> incident = Incident(incident_id="a1", rule="input-drift", severity="warning", owner="vision",
...     scope=(("model_name", "digits"),), state="open", opened_at=0.0, updated_at=0.0,
...     summary="inputs drifted", runbook_url="https://runbooks.example.com/drift")
>>> body = notification(Transition(transition_id="t1", kind="opened", at=0.0,
...     incident=incident, notify=True))
>>> body["status"], body["alerts"][0]["annotations"]["runbook_url"]
('firing', 'https://runbooks.example.com/drift')
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from serve_drift.alerts.incidents import Incident, Transition

__all__ = ["alert_annotations", "incident_annotations", "iso_time", "notification"]

RECEIVER = "serve-drift"
_ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's "no end yet"


def iso_time(at: float) -> str:
    """RFC 3339 in UTC with milliseconds, as Alertmanager writes times."""
    moment = datetime.fromtimestamp(at, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def alert_annotations(
    *,
    summary: str,
    runbook_url: str | None,
    dashboards: Sequence[str],
    suggested_checks: Sequence[str],
) -> dict[str, str]:
    """The annotations every alert carries, here and in the compiled Prometheus rules."""
    notes = {"summary": summary}
    if runbook_url:
        notes["runbook_url"] = runbook_url
    if dashboards:
        notes["dashboard"] = dashboards[0]
    if suggested_checks:
        notes["suggested_checks"] = "\n".join(f"- {c}" for c in suggested_checks)
    return notes


def incident_annotations(incident: Incident) -> dict[str, str]:
    return alert_annotations(
        summary=incident.summary,
        runbook_url=incident.runbook_url,
        dashboards=incident.dashboards,
        suggested_checks=incident.suggested_checks,
    )


def notification(transition: Transition) -> dict[str, Any]:
    """The JSON document a sink sends for ``transition``."""
    incident = transition.incident
    labels = incident.labels
    alert = {
        "status": transition.status,
        "labels": labels,
        "annotations": incident_annotations(incident),
        "startsAt": iso_time(incident.opened_at),
        "endsAt": iso_time(incident.resolved_at) if incident.resolved_at else _ZERO_TIME,
        "generatorURL": "",
        "fingerprint": incident.incident_id,
    }
    return {
        "version": "4",
        "groupKey": f"serve-drift:{incident.rule}:{incident.scope_text}",
        "truncatedAlerts": 0,
        "status": transition.status,
        "receiver": RECEIVER,
        "groupLabels": {"alertname": incident.rule},
        "commonLabels": labels,
        "commonAnnotations": alert["annotations"],
        "externalURL": "",
        "alerts": [alert],
        "serve_drift": {
            "transition": transition.kind,
            "transition_id": transition.transition_id,
            "at": iso_time(transition.at),
            "incident": incident.to_dict(),
        },
    }
