"""Drills against the ready-made app over real HTTP: every built-in scenario is detected in
time with quiet clean phases, a failed expectation exits non-zero, and sentinel sets of the
user's own run through the serving path.

Until the drift monitor evaluates alert rules (and mounts ``/admin/alerts``), the drills'
alert checks run on a backtest of the default rules over the drift results the endpoint
served; once it does, ``--alerts auto`` reads the stored incidents instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from serve_drift.eventlog.store import EventStore
from serve_drift.tools.drill import DrillOptions, run_drill
from serve_drift.tools.drill_scenario import SEVERITY_RANK, builtin_scenarios, load_scenario
from serve_drift.tools.imageio import encode_png
from serve_drift.tools.sentinel import run_sentinel_set
from serve_drift.tools.sentinel_sets import load_image_set
from tests.support.drill_app import DrillApp, digits_app
from tests.support.serve import ADMIN_TOKEN, ServeInstance

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def app(
    serve_instance: ServeInstance, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DrillApp]:
    db = tmp_path_factory.mktemp("drill") / "events.sqlite"
    with digits_app(serve_instance, name="drill", db=db) as deployed:
        yield deployed


@pytest.mark.parametrize("name", sorted(builtin_scenarios()))
def test_each_builtin_scenario_is_detected_in_time_and_clean_phases_stay_quiet(
    app: DrillApp, name: str
) -> None:
    scenario = load_scenario(name)
    console = Console(record=True, width=160)
    result = run_drill(
        scenario, DrillOptions(url=app.url, admin_token=ADMIN_TOKEN, db=app.db), console=console
    )
    text = console.export_text()
    assert result.ok, text
    assert result.detector == "combined:native" and result.endpoint.window_size == 50
    for phase, outcome in zip(scenario.phases, result.outcomes, strict=True):
        t = outcome.traffic
        assert t.sent == t.ok and not t.rejected, text
        assert len(outcome.windows) >= 3, text  # every window of the phase was tested
        if phase.clean:
            assert not outcome.false_alarms and not outcome.alerts, text
            continue
        wanted = phase.expect
        assert outcome.detection_windows is not None, text
        assert outcome.detection_windows <= (wanted.detect_within_windows or 0), text
        assert outcome.detection_delay_s is not None and 0 < outcome.detection_delay_s < 60
        assert any(SEVERITY_RANK[a.severity] >= SEVERITY_RANK["warning"] for a in outcome.alerts), (
            text
        )
    assert f"Drill {name} PASSED" in text


def test_a_failed_expectation_exits_non_zero_and_says_which(
    app: DrillApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serve_drift.tools.cli import main

    scenario = tmp_path / "impossible.yaml"
    scenario.write_text(
        "name: impossible\n"
        "sentinel: {set: embedded, count: 20}\n"
        "phases:\n"
        "  - name: calm\n"
        "    windows: 2\n"
        "    rate_per_s: 50\n"
        "    expect: {detect_within_windows: 2, min_sentinel_accuracy: 0.9}\n"
    )
    verdict = tmp_path / "verdict.json"
    monkeypatch.setenv("SERVE_DRIFT_ADMIN_TOKEN", ADMIN_TOKEN)
    code = main(
        ["drill", str(scenario), "--url", app.url, "--db", str(app.db), "--json", str(verdict)]
    )
    assert code == 1
    found = json.loads(verdict.read_text())
    assert found["ok"] is False
    statuses = {c["name"]: c["status"] for c in found["checks"]}
    # Clean traffic is not drift: the impossible expectation fails, the rest holds.
    assert statuses == {
        "detected": "fail",
        "no false alarm": "pass",
        "no alert": "pass",
        "sentinel accuracy": "pass",
    }
    (phase,) = found["phases"]
    assert phase["sentinel_accuracy"] > 0.9 and phase["detection_windows"] is None


def test_a_sentinel_set_of_the_users_own_is_versioned_in_what_the_store_records(
    app: DrillApp, tmp_path: Path
) -> None:
    from serve_drift.models.digits import split_digits

    split = split_digits(seed=0)
    root = tmp_path / "my-sentinels"
    for i, (image, label) in enumerate(
        zip(split.test_images[:24], split.test_labels[:24], strict=True)
    ):
        (root / str(int(label))).mkdir(parents=True, exist_ok=True)
        (root / str(int(label)) / f"cam7-{i:03d}.png").write_bytes(
            encode_png(np.kron(image, np.ones((4, 4), np.uint8)))
        )
    sentinel_set = load_image_set(root, version="cam7.v3")
    run = run_sentinel_set(app.url, sentinel_set, admin_token=ADMIN_TOKEN)
    assert run.sent == 24 and run.failed == 0 and run.label_status == {"accepted": 24}
    assert run.set_lineage is not None and run.set_lineage.sha256 == sentinel_set.lineage.sha256
    assert run.run_id.startswith("cam7.v3-")
    with EventStore(app.db) as store:
        first = store.by_correlation_id(f"sentinel-{run.run_id}-0000")
        sentinel = store.concept_metrics(tag="sentinel")[0]
    assert first and first[0].drift_window is None and "sentinel" in first[0].validation_flags
    assert sentinel.metrics.n_labelled == 24 and sentinel.metrics.accuracy == pytest.approx(
        run.accuracy
    )
