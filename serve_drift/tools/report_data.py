"""What a drift report shows, read from the event store (read-only) and, for a drill, from what
the drill itself measured.

Every panel's data is optional: a store without labels has no accuracy, a deployment without
a shadow arm has no comparison, a store written before calibrated results has no estimated
accuracy. The report draws what is there and says "not available" for the rest.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serve_drift.eventlog.schema import ConceptMetricsRecord, DriftTestRecord, InferenceRecord
from serve_drift.eventlog.store import BaseEventStore, EventQuery, EventStore
from serve_drift.tools.drill_results import DrillResult, PhaseOutcome

RELIABILITY_BINS = 10
_MAX_ROWS = 1_000_000


@dataclass(frozen=True)
class DriftPoint:
    window: int
    at: float
    p_value: float | None
    distance: float | None
    is_drift: bool


@dataclass(frozen=True)
class DriftSeries:
    """One detector's tests, oldest first (``kind:backend``)."""

    detector: str
    threshold: float
    distance_threshold: float | None
    points: tuple[DriftPoint, ...]


@dataclass(frozen=True)
class AlertSpan:
    incident_id: str
    rule: str
    severity: str
    opened_at: float
    resolved_at: float | None
    summary: str


@dataclass(frozen=True)
class AccuracyPoint:
    window: int
    at: float
    label_accuracy: float | None
    estimated_accuracy: float | None
    n_labelled: int


@dataclass(frozen=True)
class Group:
    """Labelled predictions of one part of the run (a drill phase, or everything)."""

    name: str
    per_class: Mapping[int, tuple[int, int]]  # class -> (correct, labelled)
    reliability: tuple[tuple[float, float, int], ...]  # per bin: (mean confidence, accuracy, n)
    ece: float | None


@dataclass(frozen=True)
class InputPoint:
    at: float
    window: int | None
    n: int
    brightness: float
    contrast: float
    sharpness: float


@dataclass(frozen=True)
class FlagPoint:
    at: float
    window: int | None
    served: float  # re-estimated from sampling weights
    flagged: Mapping[str, int]


@dataclass(frozen=True)
class PhaseBand:
    name: str
    started_at: float
    ended_at: float
    clean: bool
    corruption: str | None
    sent: int = 0
    rejected: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ComparisonPoint:
    window: int
    at: float
    accuracy: Mapping[str, float | None]  # arm -> accuracy
    confidence: Mapping[str, float | None]
    agreement: float | None


@dataclass(frozen=True)
class ReportData:
    title: str
    source: str
    generated_at: float
    drift: tuple[DriftSeries, ...] = ()
    alerts: tuple[AlertSpan, ...] = ()
    alert_source: str = "store"
    accuracy: tuple[AccuracyPoint, ...] = ()
    groups: tuple[Group, ...] = ()
    inputs: tuple[InputPoint, ...] = ()
    flags: tuple[FlagPoint, ...] = ()
    phases: tuple[PhaseBand, ...] = ()
    accounting: Mapping[str, Any] | None = None
    comparison: tuple[ComparisonPoint, ...] = ()
    summary_rows: tuple[tuple[str, ...], ...] = ()  # a drill's per-phase verdict
    notes: tuple[str, ...] = ()

    @property
    def span(self) -> tuple[float, float] | None:
        times = [p.at for s in self.drift for p in s.points] + [b.started_at for b in self.phases]
        times += [b.ended_at for b in self.phases]
        return (min(times), max(times)) if times else None


# --- from the store ---------------------------------------------------------------------------


def data_from_store(
    db: Path | BaseEventStore,
    *,
    since: float | None = None,
    until: float | None = None,
    comparison: Path | None = None,
    phases: Sequence[PhaseBand] = (),
    title: str | None = None,
) -> ReportData:
    """Everything the report draws, from an event store: a SQLite file (opened, read, closed)
    or a store the caller opened (either backend; the caller closes it)."""
    if isinstance(db, Path):
        with EventStore(db, max_age_s=None, max_bytes=None) as opened:
            return data_from_store(
                opened, since=since, until=until, comparison=comparison, phases=phases, title=title
            )
    records = [r for r in db.drift_results(limit=_MAX_ROWS) if _within(r.tested_at, since, until)]
    incidents = db.alert_incidents(since=since, limit=10_000)
    metrics = db.concept_metrics(limit=_MAX_ROWS, tag="feedback")
    events = db.query(EventQuery(since=since, until=until, limit=_MAX_ROWS))
    groups = _groups(db, phases=phases, since=since, until=until)
    alerts, source = _alert_spans(incidents, records)
    model = records[0].model_name if records else "model"
    return ReportData(
        title=title or f"Drift report: {model}",
        source=db.location,
        generated_at=time.time(),
        drift=drift_series(records),
        alerts=alerts,
        alert_source=source,
        accuracy=_accuracy(records, metrics),
        groups=groups,
        inputs=_inputs(events),
        flags=_flags(events),
        phases=tuple(phases),
        comparison=() if comparison is None else comparison_points(comparison),
    )


def _within(at: float, since: float | None, until: float | None) -> bool:
    return (since is None or at >= since) and (until is None or at <= until)


def drift_series(records: Iterable[DriftTestRecord]) -> tuple[DriftSeries, ...]:
    by_detector: dict[str, list[DriftTestRecord]] = defaultdict(list)
    for r in records:
        by_detector[f"{r.detector}:{r.backend}"].append(r)
    return tuple(
        DriftSeries(
            detector=name,
            threshold=found[-1].p_value_threshold,
            distance_threshold=found[-1].distance_threshold,
            points=tuple(
                DriftPoint(r.window_index, r.tested_at, r.p_value, r.distance, r.is_drift)
                for r in sorted(found, key=lambda r: r.window_index)
            ),
        )
        for name, found in sorted(by_detector.items())
    )


def _alert_spans(
    incidents: Sequence[Any], records: Sequence[DriftTestRecord]
) -> tuple[tuple[AlertSpan, ...], str]:
    """The stored incidents; with none stored, a backtest of the default rules over the
    stored drift results (the monitor did not evaluate rules, or none fired)."""
    if incidents:
        return tuple(alert_span(i.document) for i in incidents), "store"
    from serve_drift.alerts import AlertsConfig
    from serve_drift.tools.drill_collect import backtest

    results = [{**r.to_dict(), "component_p_values": {}, "skipped_components": []} for r in records]
    model = records[0].model_name if records else "model"
    found = backtest(results, config=AlertsConfig(sinks=()), model_name=model)
    return tuple(alert_span(doc) for doc in found), "backtest"


def alert_span(doc: Mapping[str, Any]) -> AlertSpan:
    return AlertSpan(
        incident_id=str(doc["incident_id"]),
        rule=str(doc["rule"]),
        severity=str(doc["severity"]),
        opened_at=float(doc["opened_at"]),
        resolved_at=None if doc.get("resolved_at") is None else float(doc["resolved_at"]),
        summary=str(doc.get("summary", "")),
    )


def _accuracy(
    records: Sequence[DriftTestRecord], metrics: Sequence[ConceptMetricsRecord]
) -> tuple[AccuracyPoint, ...]:
    """Per window: accuracy from labels (the latest record of the window) and the label-free
    estimate (drift records of event schema v2 carry it; older ones do not)."""
    tested = {r.window_index: r.tested_at for r in records}
    estimated: dict[int, float] = {}
    for r in records:
        value = getattr(r, "estimated_accuracy", None)
        if value is not None:
            estimated[r.window_index] = float(value)
    labelled: dict[int, ConceptMetricsRecord] = {}
    for m in metrics:  # newest first: keep each window's latest
        if m.window_index is not None:
            labelled.setdefault(m.window_index, m)
    windows = sorted(set(estimated) | (set(labelled) & set(tested)))
    return tuple(
        AccuracyPoint(
            window=w,
            at=tested.get(w, 0.0),
            label_accuracy=labelled[w].metrics.accuracy if w in labelled else None,
            estimated_accuracy=estimated.get(w),
            n_labelled=labelled[w].metrics.n_labelled if w in labelled else 0,
        )
        for w in windows
    )


def _groups(
    store: BaseEventStore, *, phases: Sequence[PhaseBand], since: float | None, until: float | None
) -> tuple[Group, ...]:
    """Labelled predictions per drill phase (clean phases pooled), or over the whole range."""
    if not phases:
        everything = store.labelled_predictions(since=since, until=until)
        return (
            (group("all traffic", everything.predicted, everything.labels, everything.confidence),)
            if len(everything)
            else ()
        )
    parts: dict[str, list[Any]] = defaultdict(list)
    # A phase runs until the next one starts (its last answers are in by then).
    ends = [b.started_at for b in phases[1:]] + [phases[-1].ended_at + 1.0]
    for band, until in zip(phases, ends, strict=True):
        rows = store.labelled_predictions(since=band.started_at, until=until)
        parts["clean" if band.clean else band.name].append(rows)
    groups = []
    for name, found in parts.items():
        predicted = np.concatenate([f.predicted for f in found])
        if len(predicted):
            labels = np.concatenate([f.labels for f in found])
            confidence = np.concatenate([f.confidence for f in found])
            groups.append(group(name, predicted, labels, confidence))
    return tuple(groups)


def group(name: str, predicted: np.ndarray, labels: np.ndarray, confidence: np.ndarray) -> Group:
    """Per-class hits and a reliability diagram (equal-width confidence bins) of one group."""
    correct = predicted == labels
    per_class = {
        int(c): (int(correct[labels == c].sum()), int((labels == c).sum()))
        for c in np.unique(labels)
    }
    known = ~np.isnan(confidence)
    edges = np.linspace(0.0, 1.0, RELIABILITY_BINS + 1)
    which = np.clip(np.digitize(confidence[known], edges[1:-1]), 0, RELIABILITY_BINS - 1)
    bins = []
    for b in range(RELIABILITY_BINS):
        rows = which == b
        if rows.any():
            bins.append(
                (
                    float(confidence[known][rows].mean()),
                    float(correct[known][rows].mean()),
                    int(rows.sum()),
                )
            )
    n = sum(count for _, _, count in bins)
    ece = sum(count * abs(acc - conf) for conf, acc, count in bins) / n if n else None
    return Group(name=name, per_class=per_class, reliability=tuple(bins), ece=ece)


def _inputs(events: Sequence[InferenceRecord]) -> tuple[InputPoint, ...]:
    """Median input statistics per window (per minute for events in no window)."""
    buckets: dict[tuple[str, int], list[InferenceRecord]] = defaultdict(list)
    for e in events:
        if e.input_stats is not None and "sentinel" not in e.validation_flags:
            buckets[_bucket(e)].append(e)
    points = []
    for found in buckets.values():
        stats = [e.input_stats for e in found if e.input_stats is not None]
        points.append(
            InputPoint(
                at=float(np.median([e.timestamp for e in found])),
                window=found[0].drift_window,
                n=len(stats),
                brightness=float(np.median([s.brightness for s in stats])),
                contrast=float(np.median([s.contrast for s in stats])),
                sharpness=float(np.median([s.sharpness for s in stats])),
            )
        )
    return tuple(sorted(points, key=lambda p: p.at))


def _bucket(event: InferenceRecord) -> tuple[str, int]:
    if event.drift_window is not None:
        return "window", event.drift_window
    return "minute", int(event.timestamp // 60)


def _flags(events: Sequence[InferenceRecord]) -> tuple[FlagPoint, ...]:
    """Per window: requests re-estimated from sampling weights, and inputs flagged by check
    (flagged events are always stored, so their counts are exact)."""
    buckets: dict[tuple[str, int], list[InferenceRecord]] = defaultdict(list)
    for e in events:
        buckets[_bucket(e)].append(e)
    points = []
    for found in buckets.values():
        flagged: dict[str, int] = defaultdict(int)
        for e in found:
            for flag in e.validation_flags:
                flagged[flag] += 1
        points.append(
            FlagPoint(
                at=float(np.median([e.timestamp for e in found])),
                window=found[0].drift_window,
                served=float(sum(e.sampling_weight for e in found)),
                flagged=dict(flagged),
            )
        )
    return tuple(sorted(points, key=lambda p: p.at))


# --- the shadow comparison --------------------------------------------------------------------


def comparison_points(path: Path) -> tuple[ComparisonPoint, ...]:
    """Windows of a shadow/canary comparison store (``shadow_windows`` rows, JSON records with
    each arm's counts), read-only."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT record FROM shadow_windows ORDER BY window_index").fetchall()
    except sqlite3.Error:
        return ()
    finally:
        db.close()
    return tuple(_comparison_point(json.loads(text)) for (text,) in rows)


def _comparison_point(record: Mapping[str, Any]) -> ComparisonPoint:
    comparison = record["comparison"]
    arms = ("incumbent", "candidate")

    def ratio(num: float, den: float) -> float | None:
        return float(num) / float(den) if den else None

    pairs = comparison.get("pairs", {})
    return ComparisonPoint(
        window=int(record["index"]),
        at=float(record.get("closed_at") or record["opened_at"]),
        accuracy={a: ratio(comparison[a]["correct"], comparison[a]["labelled"]) for a in arms},
        confidence={a: ratio(comparison[a]["confidence_sum"], comparison[a]["rows"]) for a in arms},
        agreement=ratio(pairs.get("agreements", 0), pairs.get("pairs", 0)),
    )


# --- from a drill -----------------------------------------------------------------------------


def phase_bands(result: DrillResult) -> tuple[PhaseBand, ...]:
    return tuple(
        PhaseBand(
            name=o.traffic.name,
            started_at=o.traffic.started_at,
            ended_at=o.traffic.ended_at,
            clean=o.traffic.clean,
            corruption=o.traffic.corruption,
            sent=o.traffic.sent,
            rejected=dict(o.traffic.rejected),
        )
        for o in result.outcomes
    )


def data_for_drill(result: DrillResult, *, store: BaseEventStore | None) -> ReportData:
    """A drill's report: the store's panels when the endpoint's event store is readable here,
    else what the drill collected over HTTP (drift results, alerts, and accuracy from its own
    labels)."""
    bands = phase_bands(result)
    title = f"Drill {result.scenario.name} ({result.run_id})"
    if store is not None:
        data = data_from_store(store, since=result.started_at - 1.0, phases=bands, title=title)
    else:
        data = _from_collected(result, bands, title=title)
    rows = tuple(_summary_row(o) for o in result.outcomes)
    notes = (f"Alerts from {result.alert_source}; detector judged: {result.detector}.",)
    return ReportData(
        **{
            **data.__dict__,
            # The alerts the drill judged, so the report and the verdict agree.
            "alerts": tuple(alert_span(doc) for doc in result.incidents),
            "alert_source": result.alert_source,
            "summary_rows": rows,
            "notes": data.notes + notes,
            "accounting": dict(result.accounting),
        }
    )


def _from_collected(result: DrillResult, bands: tuple[PhaseBand, ...], *, title: str) -> ReportData:
    records = [DriftTestRecord.from_result(r) for r in result.results]
    return ReportData(
        title=title,
        source=f"{result.endpoint.window_size}-row windows from the endpoint's /drift",
        generated_at=time.time(),
        drift=drift_series(records),
        alerts=tuple(alert_span(doc) for doc in result.incidents),
        alert_source=result.alert_source,
        phases=bands,
        notes=("No event store given (--db): accuracy, calibration and input panels need it.",),
    )


def _summary_row(outcome: PhaseOutcome) -> tuple[str, ...]:
    t = outcome.traffic
    detected = (
        "-"
        if t.clean
        else ("no" if outcome.detection_windows is None else f"window {outcome.detection_windows}")
    )
    alerts = ", ".join(f"{a.rule} ({a.severity})" for a in outcome.alerts) or "none"
    verdict = "pass" if outcome.ok else "FAIL"
    accuracy = "-" if t.accuracy is None else f"{t.accuracy:.0%}"
    return (
        t.name,
        t.corruption or "clean",
        str(t.sent),
        str(t.rejected_total),
        accuracy,
        detected,
        alerts,
        verdict,
    )
