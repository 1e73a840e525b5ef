"""The report's figures, drawn with matplotlib's object API (no pyplot: no global state, no
display) as PNG bytes. Each returns ``None`` when its data is not there.

Every time axis is UTC wall-clock time. Drill phases with a corruption are shaded grey and
named along the top; alerts are shaded in their severity's colour from opening to resolution,
so the same incident reads the same way in every panel.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import DateFormatter, date2num
from matplotlib.figure import Figure

from serve_drift.tools.report_data import AlertSpan, ReportData

SEVERITY_COLOURS = {"critical": "#d62728", "warning": "#ff7f0e", "info": "#1f77b4"}
PHASE_COLOUR = "#9e9e9e"
WIDTH_IN = 11.0
DPI = 100
MIN_BIN_ROWS = 5  # a reliability bin with fewer predictions is noise, not calibration
_P_FLOOR = 1e-4  # p-values are never 0 (native backends); alibi's 0 is drawn at the floor

Drawer = Callable[[ReportData], bytes | None]


def _when(t: float) -> float:
    """Matplotlib's date number (days since its 1970 epoch) of a Unix time."""
    return float(date2num(datetime.fromtimestamp(t, tz=timezone.utc)))


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _figure(
    rows: int = 1, cols: int = 1, *, height: float = 3.2, sharex: bool = True
) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(WIDTH_IN, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, sharex=sharex, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _time_axis(ax: Axes, data: ReportData) -> None:
    ax.xaxis.set_major_formatter(DateFormatter("%H:%M:%S", tz=timezone.utc))
    span = data.span
    if span is not None:
        pad = max((span[1] - span[0]) * 0.02, 1.0)
        ax.set_xlim(_when(span[0] - pad), _when(span[1] + pad))
    ax.grid(True, alpha=0.3)


def _phases(ax: Axes, data: ReportData, *, label: bool) -> None:
    for band in data.phases:
        if not band.clean:
            ax.axvspan(
                _when(band.started_at), _when(band.ended_at), color=PHASE_COLOUR, alpha=0.18, lw=0
            )
        if label:
            middle = _when((band.started_at + band.ended_at) / 2)
            text = band.name if band.clean else f"{band.name}\n{band.corruption}"
            ax.annotate(
                text,
                (middle, 1.0),
                xycoords=("data", "axes fraction"),
                ha="center",
                va="bottom",
                fontsize=8,
                color="#424242",
            )


def _alert_shading(ax: Axes, data: ReportData, *, label: bool) -> None:
    end = data.span[1] if data.span else None
    for alert in data.alerts:
        colour = SEVERITY_COLOURS.get(alert.severity, "#7f7f7f")
        until = alert.resolved_at if alert.resolved_at is not None else end
        if until is not None and until > alert.opened_at:
            ax.axvspan(_when(alert.opened_at), _when(until), color=colour, alpha=0.12, lw=0)
        ax.axvline(_when(alert.opened_at), color=colour, lw=1.5)
        if label:
            ax.annotate(
                f" {alert.rule} ({alert.severity})",
                (_when(alert.opened_at), 0.04),
                xycoords=("data", "axes fraction"),
                color=colour,
                fontsize=8,
                rotation=90,
                va="bottom",
                ha="right",
            )


def drift_figure(data: ReportData) -> bytes | None:
    """p-values (log scale, thresholds dashed, drifted windows red) and distances over time."""
    if not data.drift:
        return None
    has_distance = any(p.distance is not None for s in data.drift for p in s.points)
    fig, axes = _figure(2 if has_distance else 1, height=3.0)
    ax = axes[0]
    for series in data.drift:
        times = [_when(p.at) for p in series.points]
        values = [
            max(p.p_value, _P_FLOOR) if p.p_value is not None else np.nan for p in series.points
        ]
        (line,) = ax.plot(times, values, marker="o", ms=4, lw=1.2, label=series.detector)
        ax.axhline(series.threshold, color=line.get_color(), ls="--", lw=1, alpha=0.8)
        hit_x = [t for t, p in zip(times, series.points, strict=True) if p.is_drift]
        hit_y = [v for v, p in zip(values, series.points, strict=True) if p.is_drift]
        if hit_x:
            ax.scatter(
                hit_x, hit_y, s=46, color="#d62728", zorder=5, label=f"{series.detector}: drift"
            )
    ax.set_yscale("log")
    ax.set_ylim(_P_FLOOR * 0.7, 1.3)
    ax.set_ylabel("p-value (log)")
    ax.set_title(
        "Drift tests per window: p-value against its threshold (dashed)",
        loc="left",
        fontsize=10,
        pad=22,
    )
    _decorate(ax, data, label_phases=True, label_alerts=True)
    ax.legend(loc="lower left", fontsize=8, ncols=3)
    if has_distance:
        _distances(axes[1], data)
    return _png(fig)


def _decorate(
    ax: Axes, data: ReportData, *, label_phases: bool = False, label_alerts: bool = False
) -> None:
    _phases(ax, data, label=label_phases)
    _alert_shading(ax, data, label=label_alerts)
    _time_axis(ax, data)


def _distances(ax: Axes, data: ReportData) -> None:
    for series in data.drift:
        times = [_when(p.at) for p in series.points]
        values = [np.nan if p.distance is None else p.distance for p in series.points]
        (line,) = ax.plot(times, values, marker=".", lw=1, label=series.detector)
        if series.distance_threshold is not None:
            ax.axhline(series.distance_threshold, color=line.get_color(), ls="--", lw=1)
    ax.set_ylabel("distance")
    ax.set_title("Test statistic (distance) per window", loc="left", fontsize=10)
    _decorate(ax, data)


def alerts_figure(data: ReportData) -> bytes | None:
    """One bar per incident, from opening to resolution (open ones run to the end)."""
    if not data.alerts:
        return None
    alerts = sorted(data.alerts, key=lambda a: a.opened_at)
    fig, (ax,) = _figure(height=max(1.6, 0.45 * len(alerts) + 1.0))
    end = max([data.span[1] if data.span else 0.0] + [a.resolved_at or a.opened_at for a in alerts])
    for row, alert in enumerate(alerts):
        _alert_bar(ax, row, alert, end=end)
    ax.set_yticks(range(len(alerts)), [f"{a.rule} ({a.severity})" for a in alerts], fontsize=8)
    ax.invert_yaxis()
    ax.set_title(f"Alert timeline ({_source(data)})", loc="left", fontsize=10, pad=22)
    _phases(ax, data, label=True)
    _time_axis(ax, data)
    return _png(fig)


def _alert_bar(ax: Axes, row: int, alert: AlertSpan, *, end: float) -> None:
    colour = SEVERITY_COLOURS.get(alert.severity, "#7f7f7f")
    until = alert.resolved_at if alert.resolved_at is not None else end
    start = _when(alert.opened_at)
    ax.barh(
        row, _when(max(until, alert.opened_at + 0.5)) - start, left=start, height=0.55, color=colour
    )
    state = "open" if alert.resolved_at is None else "resolved"
    ax.annotate(f" {state}", (_when(until), row), va="center", fontsize=8, color=colour)


def _source(data: ReportData) -> str:
    if data.alert_source == "backtest":
        return "a backtest of the rules over these drift results: the monitor raised none itself"
    return {"store": "stored incidents", "endpoint": "the endpoint's open incidents"}.get(
        data.alert_source, data.alert_source
    )


def accuracy_figure(data: ReportData) -> bytes | None:
    """Accuracy from labels beside the label-free estimate, per window."""
    points = [p for p in data.accuracy if p.at]
    if not points:
        return None
    fig, (ax,) = _figure(height=3.0)
    times = [_when(p.at) for p in points]
    labelled = [np.nan if p.label_accuracy is None else p.label_accuracy for p in points]
    estimated = [np.nan if p.estimated_accuracy is None else p.estimated_accuracy for p in points]
    if not np.all(np.isnan(labelled)):
        ax.plot(times, labelled, marker="o", ms=4, color="#2ca02c", label="accuracy from labels")
    if np.all(np.isnan(estimated)):
        ax.annotate(
            "estimated accuracy: not in this store (it comes with event schema v2)",
            (0.99, 0.04),
            xycoords="axes fraction",
            ha="right",
            fontsize=8,
            color="#757575",
        )
    else:
        ax.plot(
            times,
            estimated,
            marker="s",
            ms=4,
            ls="--",
            color="#9467bd",
            label="estimated accuracy (no labels)",
        )
    ax.set_ylim(0, 1.05)
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_title("Accuracy per window", loc="left", fontsize=10, pad=22)
    _decorate(ax, data, label_phases=True)
    ax.legend(loc="lower left", fontsize=8)
    return _png(fig)


def per_class_figure(data: ReportData) -> bytes | None:
    """Accuracy per true class, one bar per group (clean traffic and each corrupted phase)."""
    groups = [g for g in data.groups if g.per_class]
    if not groups:
        return None
    classes = sorted({c for g in groups for c in g.per_class})
    fig, (ax,) = _figure(height=3.0, sharex=False)
    width = 0.8 / len(groups)
    for n, g in enumerate(groups):
        values = [
            g.per_class[c][0] / g.per_class[c][1] if c in g.per_class else np.nan for c in classes
        ]
        ax.bar(
            np.arange(len(classes)) + (n - (len(groups) - 1) / 2) * width,
            values,
            width,
            label=g.name,
        )
    ax.set_xticks(range(len(classes)), [str(c) for c in classes])
    ax.set_xlabel("true class")
    ax.set_ylim(0, 1.05)
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_title("Accuracy per class, from labels", loc="left", fontsize=10)
    ax.legend(fontsize=8, ncols=min(len(groups), 4))
    ax.grid(True, axis="y", alpha=0.3)
    return _png(fig)


def calibration_figure(data: ReportData) -> bytes | None:
    """Reliability diagram: accuracy against confidence per bin; the diagonal is calibrated."""
    groups = [g for g in data.groups if g.reliability]
    if not groups:
        return None
    fig = Figure(figsize=(5.5, 4.6), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#757575", ls=":", lw=1, label="perfectly calibrated")
    for g in groups:
        shown = [b for b in g.reliability if b[2] >= MIN_BIN_ROWS] or list(g.reliability)
        conf, acc, n = zip(*shown, strict=True)
        ece = "" if g.ece is None else f" (ECE {g.ece:.3f})"
        ax.plot(conf, acc, marker="o", lw=1.2, label=f"{g.name}{ece}")
        ax.scatter(conf, acc, s=[10 + 120 * k / max(n) for k in n], alpha=0.35)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.set_title(
        f"Calibration (reliability diagram; bins of {MIN_BIN_ROWS}+ predictions)",
        loc="left",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, alpha=0.3)
    return _png(fig)


def inputs_figure(data: ReportData) -> bytes | None:
    """Median brightness, contrast and sharpness of the stored inputs, per window."""
    if not data.inputs:
        return None
    fig, axes = _figure(3, height=1.6)
    times = [_when(p.at) for p in data.inputs]
    for ax, (name, values) in zip(axes, _input_series(data), strict=True):
        ax.plot(times, values, marker=".", lw=1.2, color="#1f77b4")
        ax.set_ylabel(name, fontsize=9)
        _decorate(ax, data, label_phases=ax is axes[0])
    axes[0].set_title("Input statistics per window (medians)", loc="left", fontsize=10, pad=22)
    return _png(fig)


def _input_series(data: ReportData) -> Sequence[tuple[str, list[float]]]:
    return (
        ("brightness", [p.brightness for p in data.inputs]),
        ("contrast", [p.contrast for p in data.inputs]),
        ("sharpness", [p.sharpness for p in data.inputs]),
    )


def drops_figure(data: ReportData) -> bytes | None:
    """Requests refused per phase, inputs flagged per window, and what the endpoint lost."""
    parts = [
        p
        for p in (
            _rejected_part if data.phases else None,
            _flagged_part if data.flags else None,
            _losses_part if data.accounting is not None else None,
        )
        if p is not None
    ]
    if not parts:
        return None
    fig, axes = _figure(1, len(parts), height=3.0, sharex=False)
    for ax, part in zip(axes, parts, strict=True):
        part(ax, data)
    return _png(fig)


def _rejected_part(ax: Axes, data: ReportData) -> None:
    names = [b.name for b in data.phases]
    codes = sorted({code for b in data.phases for code in b.rejected})
    bottom = np.zeros(len(names))
    ax.bar(names, bottom)  # every phase on the axis, refused or not
    for code in codes:
        values = np.asarray([b.rejected.get(code, 0) for b in data.phases], dtype=float)
        ax.bar(names, values, bottom=bottom, label=code)
        bottom += values
    total, sent = int(bottom.sum()), sum(b.sent for b in data.phases)
    ax.set_title(f"Requests refused per phase: {total} of {sent}", loc="left", fontsize=10)
    if codes:
        ax.legend(fontsize=7)
        ax.set_ylim(0, float(bottom.max()) * 1.2)
    else:
        _nothing(ax, "every request answered")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)


def _nothing(ax: Axes, text: str) -> None:
    ax.set_yticks([])
    ax.annotate(text, (0.5, 0.5), xycoords="axes fraction", ha="center", color="#2ca02c")


def _flagged_part(ax: Axes, data: ReportData) -> None:
    checks = sorted({c for p in data.flags for c in p.flagged if c != "sentinel"})
    times = [_when(p.at) for p in data.flags]
    for check in checks:
        ax.plot(times, [p.flagged.get(check, 0) for p in data.flags], marker=".", label=check)
    served = [p.served for p in data.flags]
    ax.plot(times, served, color="#bdbdbd", lw=1, label="requests (re-estimated)")
    ax.set_title("Inputs flagged by ingress, per window", loc="left", fontsize=10)
    ax.legend(fontsize=7)
    ax.xaxis.set_major_formatter(DateFormatter("%H:%M:%S", tz=timezone.utc))
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    ax.grid(True, alpha=0.3)


def _losses_part(ax: Axes, data: ReportData) -> None:
    assert data.accounting is not None
    items = sorted(data.accounting.items())
    names, values = [k for k, _ in items], [v for _, v in items]
    colours = ["#d62728" if v else "#2ca02c" for v in values]
    ax.barh(names, [max(v, 0.02) for v in values], color=colours)
    for row, value in enumerate(values):
        ax.annotate(f" {value}", (max(value, 0.02), row), va="center", fontsize=8)
    ax.set_title(f"Lost or untested at the endpoint: {sum(values)}", loc="left", fontsize=10)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlim(0, max(1, max(values, default=0)) * 1.3)
    if not any(values):
        ax.set_xticks([])


def comparison_figure(data: ReportData) -> bytes | None:
    """Shadow or canary: both arms' accuracy and confidence, and how often they agree."""
    if not data.comparison:
        return None
    fig, (ax,) = _figure(height=3.0)
    times = [_when(p.at) for p in data.comparison]
    for arm, colour in (("incumbent", "#1f77b4"), ("candidate", "#ff7f0e")):
        accuracy = [_or_nan(p.accuracy.get(arm)) for p in data.comparison]
        confidence = [_or_nan(p.confidence.get(arm)) for p in data.comparison]
        ax.plot(times, accuracy, marker="o", ms=4, color=colour, label=f"{arm} accuracy")
        ax.plot(times, confidence, ls=":", color=colour, label=f"{arm} mean confidence")
    agreement = [_or_nan(p.agreement) for p in data.comparison]
    ax.plot(times, agreement, color="#2ca02c", lw=2, label="agreement")
    ax.set_ylim(0, 1.05)
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_title("Shadow comparison per window", loc="left", fontsize=10)
    ax.legend(fontsize=8, ncols=3)
    _time_axis(ax, data)
    return _png(fig)


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


FIGURES: dict[str, tuple[str, Drawer]] = {
    "drift.png": ("Drift tests over time", drift_figure),
    "alerts.png": ("Alert timeline", alerts_figure),
    "accuracy.png": ("Estimated accuracy beside accuracy from labels", accuracy_figure),
    "per_class.png": ("Accuracy per class", per_class_figure),
    "calibration.png": ("Calibration", calibration_figure),
    "inputs.png": ("Input statistics over time", inputs_figure),
    "drops.png": ("Drops and errors", drops_figure),
    "comparison.png": ("Shadow comparison", comparison_figure),
}
