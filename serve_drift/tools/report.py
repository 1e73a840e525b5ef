"""``serve-drift report``: a self-contained HTML drift report, with its figures as PNG files.

After an incident, people want to see what happened at a glance. The report reads the event
store (read-only) and draws: p-values and distances over time with thresholds and alerts
marked, the alert timeline, estimated accuracy beside accuracy from labels, accuracy per class
and calibration, input statistics over time, drops and errors, and the shadow comparison when
there is one. Panels without data say so.

The HTML needs nothing but itself: no CDN, no script, no font or stylesheet fetched; figures
are embedded as ``data:`` URLs (each also written beside it as a PNG, named in the image's
``data-figure`` attribute), so it reads offline and can be attached to a ticket::

    serve-drift report --db ~/.cache/serve-drift/events/digits/ImageClassifierDriftMonitor.sqlite \\
        --since 6h --out drift-report/
    serve-drift report --db events.sqlite --comparison shadow.sqlite --out report/
    serve-drift report --dsn postgresql://drift@db:5432/drift --out report/  # PGPASSWORD

>>> import tempfile, pathlib
>>> from serve_drift.tools.report_data import ReportData
>>> out = pathlib.Path(tempfile.mkdtemp())
>>> page = write_report(ReportData(title="empty", source="none", generated_at=0.0), out_dir=out)
>>> "not available" in page.read_text() and sorted(p.name for p in out.iterdir())
['index.html']
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.prompt import Confirm

from serve_drift.files import atomic_write
from serve_drift.tools.events_cli import add_store_arguments, open_cli_store
from serve_drift.tools.report_data import AlertSpan, ReportData, data_from_store
from serve_drift.tools.report_figures import FIGURES

INDEX = "index.html"
_MISSING = {
    "drift.png": "not available: no drift results in this range",
    "alerts.png": "no alerts in this range",
    "accuracy.png": "not available: no labels joined and no estimated accuracy stored "
    "(labels arrive at POST /labels; the estimate comes with event schema v2)",
    "per_class.png": "not available: no labelled predictions",
    "calibration.png": "not available: no labelled predictions with a confidence",
    "inputs.png": "not available: no stored events with input statistics",
    "drops.png": "not available: nothing measured",
    "comparison.png": "not available: no shadow or canary comparison store (--comparison)",
}
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1140px; padding: 18px 24px; color: #212121; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 26px 0 6px; }
.meta { color: #616161; font-size: 13px; }
.headline { border-left: 5px solid #d62728; background: #fff5f5; padding: 10px 14px;
            margin: 14px 0; font-size: 15px; line-height: 1.5; }
.headline.calm { border-color: #2ca02c; background: #f4fbf4; }
img { max-width: 100%; display: block; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
th { background: #f5f5f5; } td.fail { color: #c62828; font-weight: 600; }
.na { color: #757575; font-style: italic; }
.notes { color: #616161; font-size: 12px; }
"""


def write_report(data: ReportData, *, out_dir: Path) -> Path:
    """Draw every figure that has data into ``out_dir`` and write ``index.html`` there."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, bytes] = {}
    for name, (_, draw) in FIGURES.items():
        png = draw(data)
        if png is not None:
            atomic_write(out_dir / name, png)
            figures[name] = png
    page = out_dir / INDEX
    atomic_write(page, render_html(data, figures).encode("utf-8"))
    return page


def render_html(data: ReportData, figures: dict[str, bytes]) -> str:
    """The page: headline, the drill's verdict if any, one section per figure, the alerts."""
    lines = headline(data)
    calm = "" if any(s.is_drift for d in data.drift for s in d.points) else " calm"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(data.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(data.title)}</h1>",
        f'<p class="meta">{_e(_meta(data))}</p>',
        f'<div class="headline{calm}">' + "<br>".join(_e(line) for line in lines) + "</div>",
        _summary(data),
        *(_section(name, title, figures.get(name), data) for name, (title, _) in FIGURES.items()),
        _alerts_table(data),
        "".join(f'<p class="notes">{_e(note)}</p>' for note in data.notes),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _t(at: float) -> str:
    return datetime.fromtimestamp(at, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _meta(data: ReportData) -> str:
    span = data.span
    when = "" if span is None else f"; {_t(span[0])} to {_t(span[1])}"
    return f"From {data.source}{when}; written {_t(data.generated_at)}"


def headline(data: ReportData) -> list[str]:
    """What happened, in a few sentences a person reads first."""
    windows = {p.window for s in data.drift for p in s.points}
    drifted = sorted(
        (
            (p.at, p.window, s.detector, p.p_value)
            for s in data.drift
            for p in s.points
            if p.is_drift
        ),
    )
    if not drifted:
        lines = [f"No drift detected in {len(windows)} tested windows."]
    else:
        at, window, detector, p = drifted[0]
        shown = "?" if p is None else f"{p:.3g}"
        lines = [
            f"Drift first detected at {_t(at)} by {detector} (window {window}, p = {shown}); "
            f"{len({d[1] for d in drifted})} of {len(windows)} windows drifted."
        ]
    lines += [_alert_line(a) for a in sorted(data.alerts, key=lambda a: a.opened_at)[:4]]
    accuracy = _accuracy_line(data, first_drift=drifted[0][0] if drifted else None)
    return lines + ([accuracy] if accuracy else [])


def _alert_line(alert: AlertSpan) -> str:
    resolved = "still open" if alert.resolved_at is None else f"resolved {_t(alert.resolved_at)}"
    return f"Alert {alert.rule} ({alert.severity}) opened {_t(alert.opened_at)}, {resolved}."


def _accuracy_line(data: ReportData, *, first_drift: float | None) -> str | None:
    """Accuracy from labels in the drifted windows against the windows before the drift."""
    drifted = {p.window for s in data.drift for p in s.points if p.is_drift}
    labelled = [(p, p.label_accuracy) for p in data.accuracy if p.label_accuracy is not None]
    if not labelled:
        return None
    during = [acc for p, acc in labelled if p.window in drifted]
    before = [
        acc
        for p, acc in labelled
        if p.window not in drifted and (first_drift is None or p.at < first_drift)
    ]
    if not during:
        mean = sum(acc for _, acc in labelled) / len(labelled)
        return f"Accuracy from labels: {mean:.0%} over {len(labelled)} windows."
    text = f"Accuracy from labels in drifted windows: {sum(during) / len(during):.0%}"
    if before:
        text += f", against {sum(before) / len(before):.0%} before the drift"
    return text + "."


def _section(name: str, title: str, png: bytes | None, data: ReportData) -> str:
    if png is None:
        reason = _MISSING[name]
        if name == "alerts.png":
            reason += f" ({data.alert_source})"
        return f'<h2>{_e(title)}</h2><p class="na">{_e(reason)}</p>'
    encoded = base64.b64encode(png).decode("ascii")
    return (
        f'<h2>{_e(title)}</h2><img src="data:image/png;base64,{encoded}" '
        f'data-figure="{_e(name)}" alt="{_e(title)}">'
    )


def _summary(data: ReportData) -> str:
    if not data.summary_rows:
        return ""
    head = (
        "phase",
        "traffic",
        "sent",
        "refused",
        "accuracy",
        "detected",
        "alerts opened",
        "verdict",
    )
    rows = "".join(
        "<tr>"
        + "".join(
            f'<td class="fail">{_e(c)}</td>' if c == "FAIL" else f"<td>{_e(c)}</td>" for c in row
        )
        + "</tr>"
        for row in data.summary_rows
    )
    header = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f"<h2>Drill verdict per phase</h2><table><tr>{header}</tr>{rows}</table>"


def _alerts_table(data: ReportData) -> str:
    if not data.alerts:
        return ""
    rows = "".join(
        f"<tr><td>{_e(a.rule)}</td><td>{_e(a.severity)}</td><td>{_e(_t(a.opened_at))}</td>"
        f"<td>{_e('open' if a.resolved_at is None else _t(a.resolved_at))}</td>"
        f"<td>{_e(a.summary)}</td><td>{_e(a.incident_id[:12])}</td></tr>"
        for a in sorted(data.alerts, key=lambda a: a.opened_at)
    )
    columns = ("rule", "severity", "opened", "resolved", "summary", "incident")
    header = "<tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"
    return f"<h2>Alerts ({_e(data.alert_source)})</h2><table>{header}{rows}</table>"


def offer_report(db: Path, *, console: Console, out_dir: Path | None = None) -> Path | None:
    """At the end of a run (the demo): ask whether to write the report when someone is at the
    terminal (yes by default), write it unasked otherwise (it takes a few seconds), and say
    where it is."""
    out = out_dir or Path(".serve-drift") / "reports" / db.stem
    someone_there = console.is_interactive and sys.stdin.isatty()
    question = f"Write the drift report to {out}/?"
    if someone_there and not Confirm.ask(question, default=True, console=console):
        console.print(f"Later: serve-drift report --db {db} --out {out}")
        return None
    page = write_report(data_from_store(db, title=f"Drift report: {db.stem}"), out_dir=out)
    console.print(
        f"Drift report: [bold]{page.resolve()}[/] (open it in a browser; figures beside it)"
    )
    return page


# --- command line -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serve-drift report",
        description="Write a self-contained HTML drift report and PNG figures from an event store.",
    )
    add_store_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("drift-report"), help="output folder")
    parser.add_argument(
        "--since", help="only after this: a duration back from now (6h, 30m) or Unix seconds"
    )
    parser.add_argument("--until", help="only before this (same forms)")
    parser.add_argument("--comparison", type=Path, help="a shadow/canary comparison store")
    parser.add_argument("--title", help="the report's title")
    return parser


def _instant(text: str | None, *, now: float) -> float | None:
    if text is None:
        return None
    from serve_drift.tools.alerts_cli import parse_duration

    try:
        value = float(text)
    except ValueError:
        return now - parse_duration(text)
    return value if value > 1e9 else now - value


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        store = open_cli_store(args)
    except SystemExit as exc:
        print(f"serve-drift report: {exc}")
        return 2
    now = time.time()
    with store:
        data = data_from_store(
            store,
            since=_instant(args.since, now=now),
            until=_instant(args.until, now=now),
            comparison=args.comparison,
            title=args.title,
        )
    page = write_report(data, out_dir=args.out)
    print(f"wrote {page} and {len(list(args.out.glob('*.png')))} figures beside it")
    return 0
