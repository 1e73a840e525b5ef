"""Scenario files: the built-in ones load, bad ones are refused with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_drift.tools.drill_scenario import (
    ScenarioError,
    builtin_scenarios,
    load_scenario,
    parse_scenario,
)

BASE = {"name": "s", "phases": [{"name": "clean", "windows": 2, "rate_per_s": 20}]}


def _with_phase(**phase: object) -> dict[str, object]:
    return {"name": "s", "phases": [{"name": "p", "rate_per_s": 10, "windows": 1, **phase}]}


@pytest.mark.parametrize("name", sorted(builtin_scenarios()))
def test_every_builtin_scenario_is_clean_then_shifted_then_clean(name: str) -> None:
    scenario = load_scenario(name)
    clean, shifted, recovery = scenario.phases
    assert clean.clean and recovery.clean and not shifted.clean
    assert shifted.expect.detect_within_windows is not None and shifted.expect.alert is not None
    # Clean phases must stay quiet unless a scenario says otherwise.
    assert clean.checks().no_false_alarms and clean.checks().no_alerts
    assert shifted.checks().no_alerts is False
    # Long enough to resolve the incident before the next drill (resolve after 3 quiet windows
    # once the 2-of-3 condition stops holding).
    assert recovery.windows is not None and recovery.windows >= 4


def test_the_builtin_set_covers_the_embedded_models_camera_failures() -> None:
    names = set(builtin_scenarios())
    assert {
        "digits-lighting",
        "digits-sensor-noise",
        "digits-occlusion",
        "digits-camera-swap",
    } <= names


def test_phase_lengths_in_windows_follow_the_endpoint_and_durations_follow_the_rate() -> None:
    scenario = parse_scenario(
        {
            "name": "s",
            "phases": [
                {"name": "a", "windows": 2.5, "rate_per_s": 20},
                {"name": "b", "duration_s": 3, "rate_per_s": 20},
            ],
        }
    )
    a, b = scenario.phases
    assert a.requests(window_size=200) == 500 and a.requests(window_size=50) == 125
    assert b.requests(window_size=200) == 60


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_with_phase(duration_s=3), "exactly one of duration_s and windows"),
        ({"name": "s", "phases": [{"name": "p", "rate_per_s": 10}]}, "exactly one of"),
        (_with_phase(corruption={"name": "fog", "severity": 2}), "valid: brightness"),
        (_with_phase(corruption={"name": "darkness", "severity": 6}), "less than or equal to 5"),
        (
            _with_phase(
                corruption={"name": "darkness", "severity": 2, "options": {"cast": "warm"}}
            ),
            "no options",
        ),
        (_with_phase(expect={"detect_within": 2}), "Extra inputs"),
        (_with_phase(expect={"alert": {"severity": "page"}}), "critical"),
        ({"name": "s", "phases": []}, "at least 1"),
        ({**BASE, "phases": BASE["phases"] * 2}, "unique"),
        ({**BASE, "images": {"source": "folder"}}, "needs a path"),
        ({**BASE, "surprise": 1}, "Extra inputs"),
    ],
)
def test_a_bad_scenario_is_refused_with_its_reason(data: object, reason: str) -> None:
    with pytest.raises(ScenarioError, match=reason) as caught:
        parse_scenario(data)
    assert caught.value.code == "invalid_scenario"


def test_files_load_and_missing_or_broken_ones_say_what_is_wrong(tmp_path: Path) -> None:
    good = tmp_path / "mine.yaml"
    good.write_text("name: mine\nphases:\n  - {name: a, windows: 1, rate_per_s: 5}\n")
    assert load_scenario(good).name == "mine"
    with pytest.raises(ScenarioError, match="built-in: digits-"):
        load_scenario(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match="not YAML"):
        load_scenario(broken)


def test_the_command_lists_scenarios_and_refuses_to_run_without_what_it_needs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from serve_drift.tools.cli import main

    assert main(["drill", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in builtin_scenarios())
    assert main(["drill"]) == 2 and "name a scenario" in capsys.readouterr().out
    monkeypatch.delenv("SERVE_DRIFT_ADMIN_TOKEN", raising=False)
    assert main(["drill", "digits-lighting"]) == 2 and "no admin token" in capsys.readouterr().out
    monkeypatch.setenv("SERVE_DRIFT_ADMIN_TOKEN", "t" * 20)
    assert main(["drill", "no-such-scenario"]) == 2 and "built-in" in capsys.readouterr().out
    # Nothing listens on port 9: the endpoint is unreachable, said so, exit 2.
    assert main(["drill", "digits-lighting", "--url", "http://127.0.0.1:9"]) == 2
    assert "/admin/health" in capsys.readouterr().out
