"""Judging a drill: drift windows and alerts matched to phases, and the scenario's checks.

Pure (no HTTP, no Ray): the runner collects drift results (``DriftResult.to_dict()`` form)
and incidents (``Incident.to_dict()`` form), and these functions say what they mean.

- A window belongs to the phases whose requests its sample of correlation IDs names (the
  monitor samples IDs evenly over the window, its first and last included). A window whose
  sample names traffic that is not this drill's is **not judged**: the drill cannot say what
  it saw.
- A **false alarm** is a drifted window made only of clean phases' traffic.
- A corrupted phase is **detected** at its first drifted window; the delay counts the windows
  holding its traffic up to and including that one (1 = its first window), and the seconds
  from the phase's first request to that window's test (the endpoint's clock against the
  drill's: they agree on one host, and under NTP to well under a window).
- An **alert** belongs to the phase of the window that opened it (its latest significant
  window tested by the time it opened; for a window straddling two phases, the corrupted
  one); an incident without windows (flagged inputs, dropped telemetry) belongs to the phase
  running when it opened.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from serve_drift.tools.drill_collect import EndpointInfo
from serve_drift.tools.drill_scenario import SEVERITY_RANK, AlertExpectation, Phase, Scenario
from serve_drift.tools.drill_traffic import PhaseTraffic, phase_of

Status = Literal["pass", "fail", "unknown"]
# An incident opens when the engine evaluates the window just tested, so the opening window is
# the latest significant one tested by ``opened_at`` (both times on the monitor's clock). An
# incident's evidence keeps growing while it is open, so later windows must be left out.
_OPEN_TOLERANCE_S = 1e-3


@dataclass(frozen=True)
class DrillResult:
    """A whole drill: the scenario, where it ran, what it collected and each phase's verdict."""

    scenario: Scenario
    run_id: str
    endpoint: EndpointInfo
    detector: str | None
    alert_source: str
    outcomes: tuple[PhaseOutcome, ...]
    results: tuple[dict[str, Any], ...] = field(repr=False)
    incidents: tuple[dict[str, Any], ...] = field(repr=False)
    started_at: float = 0.0
    accounting: Mapping[str, int] = field(default_factory=dict)  # losses seen by the endpoint
    report: Path | None = None

    @property
    def checks(self) -> list[Check]:
        return [c for o in self.outcomes for c in o.checks]

    @property
    def ok(self) -> bool:
        return all(c.status == "pass" for c in self.checks)


@dataclass(frozen=True)
class WindowView:
    """One window as the drill sees it: which phases it holds, and the judged detector's test."""

    index: int
    phases: frozenset[int]
    foreign: bool
    tested_at: float
    p_value: float | None
    is_drift: bool

    def clean_only(self, clean: frozenset[int]) -> bool:
        return bool(self.phases) and self.phases <= clean


@dataclass(frozen=True)
class AlertView:
    incident_id: str
    rule: str
    severity: str
    opened_at: float
    opening_window: int | None
    state: str
    source: str


@dataclass(frozen=True)
class Check:
    phase: str
    name: str
    expected: str
    observed: str
    status: Status


@dataclass(frozen=True)
class PhaseOutcome:
    traffic: PhaseTraffic
    windows: tuple[int, ...]
    drifted: tuple[int, ...]
    detection_windows: int | None
    detection_delay_s: float | None
    false_alarms: tuple[int, ...]
    alerts: tuple[AlertView, ...]
    sentinel_accuracy: float | None
    checks: tuple[Check, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return all(c.status == "pass" for c in self.checks)


def judged_detector(results: Sequence[Mapping[str, Any]], wanted: str | None) -> str | None:
    """``kind`` or ``kind:backend`` of the detector the checks judge: ``wanted``, else
    ``combined`` (the default detector) when present, else the first one seen."""
    labels = list(dict.fromkeys(f"{r['detector']}:{r['backend']}" for r in results))
    if wanted:
        return next((label for label in labels if label.startswith(wanted)), None)
    return next((label for label in labels if label.startswith("combined:")), None) or (
        labels[0] if labels else None
    )


def window_views(
    results: Iterable[Mapping[str, Any]], *, run_id: str, detector: str | None
) -> list[WindowView]:
    """The windows holding this drill's traffic, oldest first, with ``detector``'s test."""
    views = []
    for r in results:
        if f"{r['detector']}:{r['backend']}" != detector:
            continue
        sample = [phase_of(cid, run_id) for cid in r.get("correlation_ids_sample", ())]
        phases = frozenset(p for p in sample if p is not None)
        if not phases:
            continue
        p_value = r.get("p_value")
        views.append(
            WindowView(
                index=int(r["window_index"]),
                phases=phases,
                foreign=any(p is None for p in sample),
                tested_at=float(r["tested_at"]),
                p_value=None if p_value is None else float(p_value),
                is_drift=bool(r["is_drift"]),
            )
        )
    return sorted({v.index: v for v in views}.values(), key=lambda v: v.index)


def alert_views(incidents: Iterable[Mapping[str, Any]], *, source: str) -> list[AlertView]:
    """Incidents (``Incident.to_dict()``) with the window that opened each."""
    found = {}
    for doc in incidents:
        found[str(doc["incident_id"])] = AlertView(
            incident_id=str(doc["incident_id"]),
            rule=str(doc["rule"]),
            severity=str(doc["severity"]),
            opened_at=float(doc["opened_at"]),
            opening_window=_opening_window(doc),
            state=str(doc.get("state", "open")),
            source=source,
        )
    return sorted(found.values(), key=lambda a: a.opened_at)


def _opening_window(doc: Mapping[str, Any]) -> int | None:
    windows = [w for w in (doc.get("evidence") or {}).get("windows", ()) if w.get("significant")]
    before = [
        w for w in windows if float(w["tested_at"]) <= float(doc["opened_at"]) + _OPEN_TOLERANCE_S
    ]
    chosen = before or windows
    if not chosen:
        return None
    pick = max if before else min
    return int(pick(chosen, key=lambda w: int(w["window_index"]))["window_index"])


def judge(
    phases: Sequence[Phase],
    traffic: Sequence[PhaseTraffic],
    windows: Sequence[WindowView],
    alerts: Sequence[AlertView],
    *,
    sentinel: Mapping[int, float] | None = None,
    alerts_known: bool = True,
) -> list[PhaseOutcome]:
    """Each phase's outcome and the result of each of its expectations."""
    clean = frozenset(t.index for t in traffic if t.clean)
    by_window = {w.index: w for w in windows}
    outcomes = []
    for phase, t in zip(phases, traffic, strict=True):
        own = [w for w in windows if t.index in w.phases and not w.foreign]
        drifted = [w for w in own if w.is_drift]
        first = next((n for n, w in enumerate(own, start=1) if w.is_drift), None)
        outcome = PhaseOutcome(
            traffic=t,
            windows=tuple(w.index for w in own),
            drifted=tuple(w.index for w in drifted),
            detection_windows=None if t.clean else first,
            detection_delay_s=None
            if t.clean or first is None
            else own[first - 1].tested_at - t.started_at,
            false_alarms=tuple(
                w.index for w in drifted if w.clean_only(clean) and min(w.phases) == t.index
            ),
            alerts=tuple(a for a in alerts if _alert_phase(a, by_window, traffic) == t.index),
            sentinel_accuracy=(sentinel or {}).get(t.index),
        )
        outcomes.append(_with_checks(phase, outcome, alerts_known=alerts_known))
    return outcomes


def _alert_phase(
    alert: AlertView, windows: Mapping[int, WindowView], traffic: Sequence[PhaseTraffic]
) -> int | None:
    window = windows.get(alert.opening_window) if alert.opening_window is not None else None
    if window is not None:
        # A window straddling two phases opened it for the corrupted one, whichever side.
        corrupted = [p for p in window.phases if not traffic[p].clean]
        return max(corrupted or window.phases)
    if alert.opening_window is not None:
        return None  # a window of other traffic, or from before the drill
    running = [t.index for t in traffic if t.started_at <= alert.opened_at]
    return running[-1] if running else None


def _with_checks(phase: Phase, outcome: PhaseOutcome, *, alerts_known: bool) -> PhaseOutcome:
    expect = phase.checks()
    t = outcome.traffic
    checks: list[Check] = []

    def add(name: str, expected: str, observed: str, status: Status) -> None:
        checks.append(Check(phase.name, name, expected, observed, status))

    if expect.detect_within_windows is not None:
        add(*_detection_check(outcome, expect.detect_within_windows))
    if expect.detect_within_s is not None:
        delay = outcome.detection_delay_s
        observed = "not detected" if delay is None else f"{delay:.1f} s"
        ok = delay is not None and delay <= expect.detect_within_s
        add("detected in time", f"<= {expect.detect_within_s:g} s", observed, _status(ok))
    if expect.no_false_alarms:
        n = len(outcome.false_alarms)
        add("no false alarm", "0 drifted clean windows", str(n), _status(n == 0))
    if expect.no_alerts:
        names = ", ".join(f"{a.rule} ({a.severity})" for a in outcome.alerts) or "none"
        add("no alert", "none opened", names, _known(not outcome.alerts, alerts_known))
    if expect.alert is not None:
        add(*_alert_check(outcome, expect.alert, alerts_known=alerts_known))
    if expect.max_rejected is not None:
        ok = t.rejected_total <= expect.max_rejected
        add("rejections", f"<= {expect.max_rejected}", _rejections(t), _status(ok))
    for name, bound, above in (
        ("accuracy", expect.min_accuracy, True),
        ("accuracy", expect.max_accuracy, False),
        ("sentinel accuracy", expect.min_sentinel_accuracy, True),
    ):
        if bound is not None:
            value = t.accuracy if name == "accuracy" else outcome.sentinel_accuracy
            add(*_bound_check(name, value, bound, above=above))
    return PhaseOutcome(**{**outcome.__dict__, "checks": tuple(checks)})


def _detection_check(outcome: PhaseOutcome, within: int) -> tuple[str, str, str, Status]:
    first = outcome.detection_windows
    if first is not None:
        return "detected", f"within {within} windows", f"window {first}", _status(first <= within)
    if len(outcome.windows) < within:  # the phase ended before the bound was reached
        observed = f"not detected in its {len(outcome.windows)} judged windows"
        return "detected", f"within {within} windows", observed, "unknown"
    return "detected", f"within {within} windows", "not detected", "fail"


def _alert_check(
    outcome: PhaseOutcome, wanted: AlertExpectation, *, alerts_known: bool
) -> tuple[str, str, str, Status]:
    expected = f">= {wanted.severity}" + (f" {wanted.rule}" if wanted.rule else "")
    if wanted.within_windows is not None:
        expected += f" within {wanted.within_windows} windows"
    matching = [
        a
        for a in outcome.alerts
        if SEVERITY_RANK.get(a.severity, -1) >= SEVERITY_RANK[wanted.severity]
        and (wanted.rule is None or a.rule == wanted.rule)
    ]
    delays = [_alert_delay(a, outcome) for a in matching]
    in_time = [
        d
        for d in delays
        if wanted.within_windows is None or (d is not None and d <= wanted.within_windows)
    ]
    if not matching:
        return "alert raised", expected, "none", _known(False, alerts_known)
    best = min((d for d in delays if d is not None), default=None)
    observed = ", ".join(f"{a.rule} ({a.severity})" for a in matching)
    observed += "" if best is None else f" at window {best}"
    return "alert raised", expected, observed, _status(bool(in_time))


def _alert_delay(alert: AlertView, outcome: PhaseOutcome) -> int | None:
    if alert.opening_window is None or alert.opening_window not in outcome.windows:
        return None
    return outcome.windows.index(alert.opening_window) + 1


def _bound_check(
    name: str, value: float | None, bound: float, *, above: bool
) -> tuple[str, str, str, Status]:
    expected = f"{'>=' if above else '<='} {bound:.1%}"
    if value is None or math.isnan(value):
        return name, expected, "not measured", "unknown"
    ok = value >= bound if above else value <= bound
    return name, expected, f"{value:.1%}", _status(ok)


def _rejections(t: PhaseTraffic) -> str:
    if not t.rejected:
        return "0"
    return (
        f"{t.rejected_total} ("
        + ", ".join(f"{k}: {v}" for k, v in sorted(t.rejected.items()))
        + ")"
    )


def _status(ok: bool) -> Status:
    return "pass" if ok else "fail"


def _known(ok: bool, known: bool) -> Status:
    return _status(ok) if known else "unknown"
