"""The rule engine: signals in, incident transitions out. Pure and synchronous.

The drift monitor calls :meth:`AlertEngine.observe` after each tested window, on label and
sentinel updates, and on a timer (:class:`~serve_drift.alerts.signals.Tick`); each call returns
the transitions it caused. Time comes only from the signals, so a recorded sequence replays to
the same transitions, and nothing here does I/O: sinks, storage and metrics take the
transitions elsewhere (:class:`~serve_drift.alerts.pipeline.AlertPipeline`).

Noise control:

- **dedup**: at most one open incident per rule and scope (model name, version, and detector
  for drift rules); a new incident opens only after the previous one resolved;
- **resolution**: an incident resolves after ``resolve_after`` evaluations without its
  condition; a new model version resolves the previous version's incidents;
- **re-notification** every ``renotify_interval_s`` while open;
- **suppression** by maintenance, schedules and inhibiting rules holds notifications back (the
  incident is still recorded); an incident still open when that ends is notified then.

>>> from serve_drift.alerts.config import AlertsConfig
>>> from serve_drift.alerts.signals import Tick
>>> engine = AlertEngine(AlertsConfig(), started_at=0.0, model_names=("digits",))
>>> engine.observe(Tick(at=60.0))
[]
>>> [t.kind for t in engine.observe(Tick(at=7200.0))], engine.open_incidents()[0].rule
(['opened'], 'monitor-silent')
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

from serve_drift.alerts.conditions import Evaluation, Trigger, combine, evaluate, triggers
from serve_drift.alerts.config import AlertsConfig, inhibition_order
from serve_drift.alerts.incidents import Evidence, Incident, Transition, TransitionKind
from serve_drift.alerts.maintenance import MaintenanceWindow
from serve_drift.alerts.rules import (
    AlertRule,
    CusumCondition,
    DriftCondition,
    SilenceCondition,
    ThresholdCondition,
)
from serve_drift.alerts.signals import (
    DetectorFailed,
    LabelMetrics,
    SentinelRun,
    Signal,
    Tick,
    WindowTested,
)
from serve_drift.alerts.state import StateNeeds, VersionState
from serve_drift.alerts.suppression import labels_agree, schedules_holding

__all__ = ["AlertEngine"]

Scope = tuple[tuple[str, str], ...]


@dataclass
class _Live:
    """An open incident and its bookkeeping."""

    rule: AlertRule
    incident: Incident
    clears: int = 0


class AlertEngine:
    """Evaluates ``config.rules`` on observed signals; see the module docstring.

    ``started_at``: when monitoring started (silence is counted from it before the first
    window). ``model_names``: models to watch for silence before any of their signals arrives.
    ``open_incidents``/``maintenance``: state to continue from after a restart (from the event
    store), so that a restarted monitor neither reopens nor re-sends what is already open.
    """

    def __init__(
        self,
        config: AlertsConfig,
        *,
        started_at: float,
        model_names: Sequence[str] = (),
        open_incidents: Sequence[Incident] = (),
        maintenance: MaintenanceWindow | None = None,
    ) -> None:
        self.config = config
        self.started_at = started_at
        self._rules = inhibition_order(config.rules)
        self._needs = _needs(config)
        self._versions: dict[tuple[str, str], VersionState] = {}
        self._current: dict[str, str] = {}  # model name -> latest version seen in a window
        self._last_window_at: dict[str, float] = {name: started_at for name in model_names}
        self._live: dict[tuple[str, Scope], _Live] = {}
        self._opened = 0
        self._maintenance = maintenance
        for incident in open_incidents:
            self._restore(incident)

    # --- public -------------------------------------------------------------------------------

    def observe(self, signal: Signal) -> list[Transition]:
        """Take one signal; returns the transitions it caused, in order."""
        transitions: list[Transition] = []
        trigger = self._ingest(signal)
        if isinstance(signal, WindowTested):
            transitions += self._supersede(signal)
        for rule in self._rules:
            if any(trigger in triggers(c) for c in rule.conditions):
                for scope in self._scopes(rule, signal):
                    transitions += self._evaluate(rule, scope, at=signal.at)
        return transitions + self._notification_pass(at=signal.at)

    def set_maintenance(self, window: MaintenanceWindow, *, at: float) -> list[Transition]:
        """Hold every notification back while ``window`` is active (replaces any other)."""
        self._maintenance = window
        return self._notification_pass(at=at)

    def clear_maintenance(
        self, *, at: float, by: str
    ) -> tuple[MaintenanceWindow | None, list[Transition]]:
        """End maintenance now; open incidents held back are notified."""
        previous = self._maintenance
        if previous is not None and previous.active(at=at):
            previous = previous.cleared(at=at, by=by)
        self._maintenance = None
        return previous, self._notification_pass(at=at)

    @property
    def maintenance(self) -> MaintenanceWindow | None:
        return self._maintenance

    def maintenance_active(self, *, at: float) -> bool:
        return self._maintenance is not None and self._maintenance.active(at=at)

    def open_incidents(self) -> list[Incident]:
        return [live.incident for live in self._live.values()]

    # --- ingest -------------------------------------------------------------------------------

    def _ingest(self, signal: Signal) -> Trigger:
        if isinstance(signal, Tick):
            return "tick"
        state = self._version(signal.model_name, signal.model_version)
        if isinstance(signal, WindowTested):
            state.add_window(signal)
            if signal.results:
                self._last_window_at[signal.model_name] = signal.at
            return "window"
        if isinstance(signal, DetectorFailed):
            state.add_failure(signal)
            return "failure"
        if isinstance(signal, LabelMetrics):
            state.add_labels(signal)
            return "labels"
        assert isinstance(signal, SentinelRun)
        state.add_sentinel(signal)
        return "sentinel"

    def _version(self, name: str, version: str) -> VersionState:
        key = (name, version)
        if key not in self._versions:
            self._versions[key] = VersionState(
                model_name=name, model_version=version, needs=self._needs
            )
        self._last_window_at.setdefault(name, self.started_at)
        return self._versions[key]

    # --- scopes and evaluation ----------------------------------------------------------------

    def _scopes(self, rule: AlertRule, signal: Signal) -> list[Scope]:
        if any(isinstance(c, SilenceCondition) for c in rule.conditions):
            # Silence is per model name: on a tick, every model watched; else the signal's.
            names = list(self._last_window_at) if isinstance(signal, Tick) else [signal.model_name]
            return [(("model_name", name),) for name in names]
        if isinstance(signal, Tick):
            return []
        base = (("model_name", signal.model_name), ("model_version", signal.model_version))
        if not rule.per_detector:
            return [base]
        detectors = self._versions[(signal.model_name, signal.model_version)].detectors
        return [(*base, ("detector", name)) for name in sorted(detectors)]

    def _evaluate(self, rule: AlertRule, scope: Scope, *, at: float) -> list[Transition]:
        labels = dict(scope)
        state = self._versions.get((labels["model_name"], labels.get("model_version", "")))
        results = [
            evaluate(
                condition,
                state=state,
                detector=getattr(condition, "detector", None) or labels.get("detector"),
                at=at,
                last_window_at=self._last_window_at.get(labels["model_name"]),
            )
            for condition in rule.conditions
        ]
        active = combine(rule.combine, [r.outcome.active for r in results])
        return self._apply(rule, scope, active=active, evidence=_evidence(results), at=at)

    # --- the incident state machine ------------------------------------------------------------

    def _apply(
        self, rule: AlertRule, scope: Scope, *, active: bool | None, evidence: Evidence, at: float
    ) -> list[Transition]:
        live = self._live.get((rule.name, scope))
        if live is None:
            return [self._open(rule, scope, evidence=evidence, at=at)] if active else []
        if active:
            live.clears = 0
            merged = live.incident.evidence.merged_with(evidence)
            live.incident = replace(live.incident, evidence=merged, updated_at=at)
            return []
        live.clears += 1
        if live.clears < rule.resolve_after:
            return []
        return [self._resolve(live, at=at, why="the condition no longer holds")]

    def _open(self, rule: AlertRule, scope: Scope, *, evidence: Evidence, at: float) -> Transition:
        self._opened += 1
        digest = hashlib.sha256(f"{rule.name}|{scope}|{at!r}|{self._opened}".encode())
        incident = Incident(
            incident_id=digest.hexdigest()[:16],
            rule=rule.name,
            severity=rule.severity,
            owner=rule.owner,
            scope=scope,
            state="open",
            opened_at=at,
            updated_at=at,
            summary=_summary(rule, scope),
            runbook_url=rule.runbook_url,
            dashboards=rule.dashboards,
            suggested_checks=rule.suggested_checks,
            evidence=evidence.merged_with(evidence),  # caps the windows kept
        )
        live = _Live(rule=rule, incident=incident)
        self._live[(rule.name, scope)] = live
        return self._transition(live, "opened", at=at)

    def _resolve(self, live: _Live, *, at: float, why: str) -> Transition:
        del self._live[(live.rule.name, live.incident.scope)]
        live.incident = replace(
            live.incident, state="resolved", resolved_at=at, updated_at=at, resolution=why
        )
        # Only an incident someone was told about has a resolution worth telling.
        return self._transition(
            live, "resolved", at=at, worth_telling=live.incident.notifications > 0
        )

    def _transition(
        self, live: _Live, kind: TransitionKind, *, at: float, worth_telling: bool = True
    ) -> Transition:
        held_by = self._held_by(live.rule, live.incident.scope, at=at)
        notify = worth_telling and held_by is None
        if notify and kind != "resolved":
            live.incident = replace(
                live.incident, notified_at=at, notifications=live.incident.notifications + 1
            )
        return Transition(
            # Unique: each kind happens at most once per incident at one time.
            transition_id=f"{live.incident.incident_id}:{kind}:{at:.6f}",
            kind=kind,
            at=at,
            incident=live.incident,
            notify=notify,
            suppressed_by=held_by if worth_telling else None,
        )

    def _notification_pass(self, *, at: float) -> list[Transition]:
        """Notify open incidents that were held back and no longer are; send reminders."""
        transitions = []
        for live in list(self._live.values()):
            if self._held_by(live.rule, live.incident.scope, at=at) is not None:
                continue
            if live.incident.notifications == 0:
                # Held back while its condition holds; one already clearing is not worth
                # telling now: it is released if the condition holds again, else it resolves.
                if live.clears == 0:
                    transitions.append(self._transition(live, "released", at=at))
            elif _reminder_due(live, at=at):
                transitions.append(self._transition(live, "renotified", at=at))
        return transitions

    def _supersede(self, signal: WindowTested) -> list[Transition]:
        """A window of a new model version resolves the older versions' incidents."""
        previous = self._current.get(signal.model_name)
        self._current[signal.model_name] = signal.model_version
        if previous is None or previous == signal.model_version:
            return []
        why = f"superseded by model version {signal.model_version}"
        return [
            self._resolve(live, at=signal.at, why=why)
            for live in list(self._live.values())
            if dict(live.incident.scope).get("model_name") == signal.model_name
            and dict(live.incident.scope).get("model_version", signal.model_version)
            != signal.model_version
        ]

    # --- suppression --------------------------------------------------------------------------

    def _held_by(self, rule: AlertRule, scope: Scope, *, at: float) -> str | None:
        if self.maintenance_active(at=at):
            assert self._maintenance is not None
            return self._maintenance.describe()
        schedule = schedules_holding(self.config.suppress, rule=rule.name, at=at)
        if schedule is not None:
            return f"suppression schedule {schedule}"
        return self._inhibitor(rule, scope)

    def _inhibitor(self, rule: AlertRule, scope: Scope) -> str | None:
        labels = dict(scope)
        for (name, other_scope), live in self._live.items():
            if rule.name in live.rule.inhibits and labels_agree(labels, dict(other_scope)):
                return f"inhibited by {name}"
        return None

    def _restore(self, incident: Incident) -> None:
        rules = {r.name: r for r in self.config.rules}
        if incident.state != "open" or incident.rule not in rules:
            return  # a rule removed from the config leaves its incidents behind
        self._live[(incident.rule, incident.scope)] = _Live(
            rule=rules[incident.rule], incident=incident
        )


def _reminder_due(live: _Live, *, at: float) -> bool:
    interval = live.rule.renotify_interval_s
    notified = live.incident.notified_at
    return interval is not None and notified is not None and at - notified >= interval


def _evidence(results: list[Evaluation]) -> Evidence:
    return Evidence(
        windows=tuple(w for r in results for w in r.windows),
        signals=tuple(s for r in results for s in r.signals),
        conditions=tuple(r.outcome for r in results),
    )


class _Labels(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def _summary(rule: AlertRule, scope: Scope) -> str:
    fields = _Labels(rule=rule.name, severity=rule.severity, owner=rule.owner, **dict(scope))
    text = rule.summary or f"{rule.name}: {rule.describe()}"
    return text.format_map(fields)


def _needs(config: AlertsConfig) -> StateNeeds:
    conditions = [c for rule in config.rules for c in rule.conditions]
    history = max([c.n for c in conditions if isinstance(c, DriftCondition)] + [3])
    cusums = frozenset(
        (c.allowance, c.threshold) for c in conditions if isinstance(c, CusumCondition)
    )
    firsts = frozenset(
        (c.signal, c.min_labels)
        for c in conditions
        if isinstance(c, ThresholdCondition) and c.baseline == "first"
    )
    return StateNeeds(history=history, cusums=cusums, firsts=firsts)
