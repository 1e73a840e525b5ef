"""The drift report: every panel drawn from a store that has its data, "not available" for
the rest, and a page that needs nothing but itself."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve_drift.alerts import AlertsConfig
from serve_drift.eventlog.labels import record_window_metrics
from serve_drift.eventlog.schema import DriftTestRecord, InputStats, LabelRecord
from serve_drift.eventlog.store import BaseEventStore, EventStore, PostgresEventStore, ServedRequest
from serve_drift.tools.report import main, write_report
from serve_drift.tools.report_data import PhaseBand, data_from_store
from serve_drift.tools.report_figures import FIGURES
from tests.support.eventlog_helpers import make_record
from tests.support.postgres import PostgresServer
from tests.unit.tools.drill_fakes import window_result

WINDOWS, ROWS, T0 = 9, 20, 1_700_000_000.0
SHIFTED = range(3, 6)


def _stats(shifted: bool) -> InputStats:
    level = 0.1 if shifted else 0.3
    return InputStats(
        width=8,
        height=8,
        channels=1,
        brightness=level,
        contrast=level,
        sharpness=level * 3,
        channel_means=(level,),
    )


def _fill(store: BaseEventStore, *, alerts: bool) -> None:
    rng = np.random.default_rng(0)
    results = []
    for w in range(WINDOWS):
        shifted = w in SHIFTED
        records = []
        for k in range(ROWS):
            i = w * ROWS + k
            label = i % 10
            wrong = shifted and rng.random() < 0.4
            records.append(
                dataclasses.replace(
                    make_record(
                        i,
                        predicted_class=(label + 1) % 10 if wrong else label,
                        confidence=0.55 if wrong else 0.95,
                    ),
                    timestamp=T0 + i * 0.1,
                    drift_window=w,
                    input_stats=_stats(shifted),
                    validation_flags=("out_of_profile",) if shifted else (),
                    model_name="digits",
                )
            )
        store.write_batch(records)
        store.record_served([ServedRequest.of(r) for r in records])
        store.attach_labels(
            [
                LabelRecord(
                    correlation_id=r.correlation_id,
                    label=int(r.correlation_id[4:]) % 10,
                    received_at=T0 + 100,
                )
                for r in records
            ]
        )
        record_window_metrics(store, window_index=w, model_name="digits", model_version="v1")
        result = window_result(
            w, [0], p_value=0.001 if shifted else 0.5, tested_at=T0 + (w + 1) * ROWS * 0.1
        )
        results.append(result)
        store.write_drift_results([DriftTestRecord.from_result(result)])
    if alerts:
        from serve_drift.alerts.engine import AlertEngine
        from serve_drift.tools.drill_collect import signals_from_results

        engine = AlertEngine(AlertsConfig(sinks=()), started_at=T0, model_names=("digits",))
        store.write_alert_transitions(
            [
                t
                for s in signals_from_results(results, model_name="digits")
                for t in engine.observe(s)
            ]
        )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "events.sqlite"
    with EventStore(path) as store:
        _fill(store, alerts=True)
    return path


def _figure_bytes(html: str) -> dict[str, bytes]:
    found = re.findall(r'<img src="data:image/png;base64,([^"]+)" data-figure="([^"]+)"', html)
    return {name: base64.b64decode(data) for data, name in found}


def test_a_store_with_drift_alerts_labels_and_inputs_gets_every_panel_but_the_comparison(
    db: Path, tmp_path: Path
) -> None:
    page = write_report(data_from_store(db), out_dir=tmp_path / "report")
    html = page.read_text()
    written = sorted(p.name for p in page.parent.glob("*.png"))
    assert written == sorted(set(FIGURES) - {"comparison.png"})
    embedded = _figure_bytes(html)
    assert set(embedded) == set(written)
    for name in written:  # each file is the figure the page shows, and not a blank canvas
        assert embedded[name] == (page.parent / name).read_bytes()
        pixels = np.asarray(Image.open(io.BytesIO(embedded[name])).convert("L"), dtype=float)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 300 and pixels.std() > 10
    assert "not available: no shadow or canary comparison store" in html
    assert (
        "Drift first detected at" in html
        and "(window 3, p = 0.001); 3 of 9 windows drifted" in html
    )
    assert (
        "Alert input-drift (warning) opened" in html
        and "stored incidents" not in html.split("<h2>")[0]
    )
    assert "Accuracy from labels in drifted windows" in html


def test_the_page_fetches_nothing(db: Path, tmp_path: Path) -> None:
    html = write_report(data_from_store(db), out_dir=tmp_path).read_text()
    sources = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script" not in html and "@import" not in html and "url(" not in html
    assert not re.search(r"https?://", html)


def test_without_stored_incidents_the_default_rules_are_backtested_and_said_so(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.sqlite"
    with EventStore(path) as store:
        _fill(store, alerts=False)
    data = data_from_store(path)
    assert data.alert_source == "backtest" and [a.rule for a in data.alerts] == ["input-drift"]
    html = write_report(data, out_dir=tmp_path / "r").read_text()
    assert "Alerts (backtest)" in html


def test_drill_phases_split_accuracy_per_class_and_calibration(db: Path) -> None:
    t = lambda w: T0 + w * ROWS * 0.1  # noqa: E731
    phases = [
        PhaseBand("clean", t(0), t(3) - 0.05, True, None),
        PhaseBand("dusk", t(3), t(6) - 0.05, False, "darkness s3"),
        PhaseBand("recovery", t(6), t(9), True, None),
    ]
    data = data_from_store(db, phases=phases)
    groups = {g.name: g for g in data.groups}
    assert set(groups) == {"clean", "dusk"}  # clean phases pooled
    clean_hits = sum(c for c, _ in groups["clean"].per_class.values())
    dusk_hits = sum(c for c, _ in groups["dusk"].per_class.values())
    assert clean_hits == sum(n for _, n in groups["clean"].per_class.values())  # all right
    assert dusk_hits < 0.8 * sum(n for _, n in groups["dusk"].per_class.values())
    assert groups["dusk"].ece is not None and groups["dusk"].ece > groups["clean"].ece  # type: ignore[operator]


def test_an_empty_store_says_what_is_not_available(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    EventStore(path).close()
    page = write_report(data_from_store(path), out_dir=tmp_path / "r")
    html = page.read_text()
    assert list(page.parent.glob("*.png")) == []
    assert html.count("not available") == 7 and "No drift detected in 0 tested windows." in html


def _comparison_store(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE shadow_windows (router TEXT, window_index INTEGER, epoch INTEGER, "
        "opened_at REAL, closed_at REAL, record TEXT)"
    )

    def arm(correct: int) -> dict[str, object]:
        return {
            "answered": 50,
            "failures": {},
            "rows": 50,
            "confidence_sum": 40.0,
            "latency_histogram": {},
            "labelled": 50,
            "correct": correct,
            "calibration_bins": [],
        }

    for w in range(4):
        record = {
            "index": w,
            "epoch": 0,
            "mode": "shadow",
            "incumbent_version": "a",
            "candidate_version": "b",
            "opened_at": T0 + w,
            "closed_at": T0 + w + 1,
            "comparison": {
                "observations": 50,
                "incumbent": arm(45),
                "candidate": arm(40 - w),
                "pairs": {
                    "pairs": 50,
                    "agreements": 45 - w,
                    "flips": [],
                    "labelled": 50,
                    "incumbent_only_correct": 0,
                    "candidate_only_correct": 0,
                },
            },
            "drift": {},
        }
        db.execute(
            "INSERT INTO shadow_windows VALUES ('r', ?, 0, ?, ?, ?)",
            (w, T0 + w, T0 + w + 1, json.dumps(record)),
        )
    db.commit()
    db.close()


def test_a_shadow_comparison_is_drawn_when_there_is_one(db: Path, tmp_path: Path) -> None:
    shadow = tmp_path / "shadow.sqlite"
    _comparison_store(shadow)
    data = data_from_store(db, comparison=shadow)
    assert [p.agreement for p in data.comparison] == [0.9, 0.88, 0.86, 0.84]
    assert data.comparison[0].accuracy == {"incumbent": 0.9, "candidate": 0.8}
    page = write_report(data, out_dir=tmp_path / "r")
    assert (page.parent / "comparison.png").is_file()
    assert 'data-figure="comparison.png"' in page.read_text()


def test_the_command_writes_the_report(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    assert main(["--db", str(db), "--out", str(out), "--since", str(T0 + 4.5)]) == 0
    assert (out / "index.html").is_file() and "7 figures" in capsys.readouterr().out
    html = (out / "index.html").read_text()
    assert "(window 3, p = 0.001); 3 of 7 windows drifted" in html  # windows 2.. only
    assert main(["--db", str(tmp_path / "missing.sqlite")]) == 2


def test_the_command_reads_a_postgres_store_as_it_reads_sqlite_and_never_prints_its_password(
    db: Path,
    tmp_path: Path,
    postgres_server: PostgresServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dsn = postgres_server.new_database()
    with PostgresEventStore(dsn, schema="sd_digits__monitor") as store:
        _fill(store, alerts=True)
    assert main(["--dsn", dsn, "--out", str(tmp_path / "pg")]) == 0
    assert main(["--db", str(db), "--out", str(tmp_path / "sqlite")]) == 0
    out = capsys.readouterr().out
    assert "7 figures" in out and postgres_server.password not in out
    pages = {k: (tmp_path / k / "index.html").read_text() for k in ("pg", "sqlite")}
    assert postgres_server.password not in pages["pg"] and "#sd_digits__monitor" in pages["pg"]
    drifted = "(window 3, p = 0.001); 3 of 9 windows drifted"
    assert drifted in pages["pg"] and drifted in pages["sqlite"]
    assert sorted(p.name for p in (tmp_path / "pg").glob("*.png")) == sorted(
        p.name for p in (tmp_path / "sqlite").glob("*.png")
    )
    assert main(["--dsn", dsn, "--pg-schema", "sd_nothing_here"]) == 2
    assert postgres_server.password not in capsys.readouterr().out


def test_the_time_range_limits_what_is_drawn(db: Path) -> None:
    later = data_from_store(db, since=T0 + 4 * ROWS * 0.1 + 0.5)  # windows 4.. only
    assert [p.window for p in later.drift[0].points] == list(range(4, WINDOWS))


def test_the_demo_writes_the_report_unasked_when_nobody_is_at_the_terminal(
    db: Path, tmp_path: Path
) -> None:
    from rich.console import Console

    from serve_drift.tools.report import offer_report

    console = Console(record=True, width=200)  # not a terminal: nobody to ask
    page = offer_report(db, console=console, out_dir=tmp_path / "demo-report")
    assert page == tmp_path / "demo-report" / "index.html" and page.is_file()
    assert f"Drift report: {page.resolve()}" in console.export_text()


def test_the_demo_asks_first_when_someone_is(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console
    from rich.prompt import Confirm

    from serve_drift.tools import report

    asked: list[str] = []
    monkeypatch.setattr(report.sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(Confirm, "ask", lambda question, **_: asked.append(question) or False)
    console = Console(record=True, force_interactive=True, width=200)
    assert report.offer_report(db, console=console, out_dir=tmp_path / "r") is None
    assert asked and not (tmp_path / "r").exists()
    assert f"Later: serve-drift report --db {db}" in console.export_text()
