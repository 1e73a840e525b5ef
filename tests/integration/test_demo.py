"""`serve-drift demo` end to end, on the shared Ray instance, with a smaller traffic plan."""

from __future__ import annotations

import subprocess
import sys

import pytest
from rich.console import Console

from tests.support.serve import ServeInstance


def test_cli_lists_the_demo_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "serve_drift.tools.cli", "demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--window-size" in out and "clean" in out


@pytest.mark.integration
def test_demo_detects_the_shifts_and_not_clean_traffic(serve_instance: ServeInstance) -> None:
    from serve_drift.tools.demo import DemoOptions, _window_phase, drift_alert_severities, run_demo

    console = Console(record=True, width=120)
    summary = run_demo(
        DemoOptions(
            window_size=50,
            clean_windows=2,
            shift_windows=3,  # the default drift rule wants 3 of the last 4 windows
            port=serve_instance.http_port,
            detectors=("combined", "mmd:native"),
        ),
        console=console,
    )
    assert summary.ok
    by_phase: dict[str, list[bool]] = {}
    for result in summary.results:
        by_phase.setdefault(_window_phase(result), []).append(result["is_drift"])
    assert set(by_phase) == {"clean", "brightness", "noise", "occlusion"}
    assert not any(by_phase["clean"]), "a clean window was flagged as drift"
    assert all(by_phase["brightness"]) and all(by_phase["occlusion"])
    for spec, detector in (("combined", "combined"), ("mmd:native", "mmd")):
        drifted = [
            r["window_index"]
            for r in summary.results
            if r["detector"] == detector and r["is_drift"]
        ]
        assert summary.first_drift_window[spec] == min(drifted)
    text = console.export_text()
    assert "Drift first detected by mmd:native" in text and "Windows tested: 11" in text
    # Labels were sent for every request: each window shows its accuracy beside its p-value.
    assert "accuracy" in text and "events and labels in" in text
    # The default rules: nothing for clean traffic, a ticket for brightness (inputs moved,
    # estimated accuracy held), a page for occlusion (estimated accuracy collapsed).
    severities = drift_alert_severities(summary.alerts, summary.results)
    assert "clean" not in severities
    assert severities.get("brightness") == ["warning"]
    assert severities.get("occlusion") == ["critical"]
