"""The rule config: YAML in, validated when built; the defaults state what they compute."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from serve_drift.alerts import defaults
from serve_drift.alerts.config import AlertsConfig
from serve_drift.alerts.rates import k_of_n_detection_probability, k_of_n_false_alert_rate
from serve_drift.tools.alerts_cli import load_alerts_config

EXAMPLE = """
alerts:
  rules:
    - name: drift-and-accuracy
      severity: critical
      owner: vision-oncall
      summary: "{model_name}: drifted on {detector}"
      runbook_url: https://runbooks.example.com/drift
      dashboards: [https://grafana.example.com/d/serve-drift-digits]
      suggested_checks: [Look at the camera feed]
      all:
        - {kind: drift, k: 3, n: 5, alpha: 0.005}
        - {kind: threshold, signal: estimated_accuracy, drop: 0.2}
      inhibits: [slow]
    - name: slow
      any:
        - {kind: threshold, signal: latency_p99_s, above: 0.25}
        - {kind: cusum, allowance: 2, threshold: 10, detector: mmd}
  suppress:
    - {name: weekend, weekdays: [saturday, sunday], start: "02:00", end: "04:00",
       timezone: Europe/Berlin, rules: [slow]}
  sinks:
    - {kind: webhook, url: "https://hooks.example.com/x", secret_env: HOOK_SECRET,
       severities: [critical]}
    - {kind: otel_logs}
"""


def test_a_yaml_alerts_section_builds_every_part() -> None:
    config = AlertsConfig.model_validate(yaml.safe_load(EXAMPLE)["alerts"])
    page, slow = config.rules
    assert (page.owner, page.combine, page.per_detector, page.inhibits) == (
        "vision-oncall",
        "all",
        True,
        ("slow",),
    )
    assert slow.combine == "any" and slow.conditions[1].detector == "mmd"
    assert config.suppress[0].timezone == "Europe/Berlin"
    assert [s.kind for s in config.sinks] == ["webhook", "otel_logs"]
    exact = k_of_n_false_alert_rate(k=3, n=5, alpha=0.005, resolve_after=1) * 1000
    assert page.false_alert_rate_per_1000 == pytest.approx(exact)


def test_the_readme_example_is_a_valid_alerts_section() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(alerts:\n.*?)```", readme, flags=re.S)
    assert blocks, "the README's alerts example is gone"
    config = AlertsConfig.model_validate(yaml.safe_load(blocks[0])["alerts"])
    assert [r.name for r in config.rules] == ["drift-costs-accuracy", "slow-or-drifting"]


def test_the_cli_finds_the_alerts_section_of_a_serve_config(tmp_path: Path) -> None:
    serve_config = {
        "applications": [
            {
                "name": "digits",
                "args": {"drift": {"model_name": "digits"}, **yaml.safe_load(EXAMPLE)},
            }
        ]
    }
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(serve_config))
    config, model_name = load_alerts_config(path)
    assert model_name == "digits" and [r.name for r in config.rules] == [
        "drift-and-accuracy",
        "slow",
    ]
    defaulted, _ = load_alerts_config(Path("deployments/digits.yaml"))
    assert defaulted.rules == defaults.default_rules()


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"name": "r", "all": [{"kind": "drift", "k": 4, "n": 3}]}, "k <= n"),
        ({"name": "r"}, "exactly one of 'all' or 'any'"),
        (
            {"name": "r", "all": [{"kind": "drift"}], "any": [{"kind": "drift"}]},
            "exactly one of 'all' or 'any'",
        ),
        (
            {"name": "r", "all": [{"kind": "silence"}, {"kind": "drift"}]},
            "silence condition must be alone",
        ),
        (
            {"name": "r", "all": [{"kind": "threshold", "signal": "flagged_share"}]},
            "exactly one of below, above, drop, rise",
        ),
        (
            {"name": "r", "all": [{"kind": "threshold", "signal": "flagged_share", "rise": 0.1}]},
            "carries no baseline",
        ),
        ({"name": "r", "summary": "{windows}", "all": [{"kind": "drift"}]}, "valid:"),
        ({"name": "Bad_Name", "all": [{"kind": "drift"}]}, "lowercase words"),
        ({"name": "r", "all": [{"kind": "threshold", "signal": "accuracy", "below": 1}]}, "signal"),
    ],
)
def test_a_bad_rule_is_refused_with_a_clear_message(rule: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        AlertsConfig.model_validate({"rules": [rule]})


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"rules": [{"name": "a", "all": [{"kind": "drift"}], "inhibits": ["b"]}]},
            "unknown rules",
        ),
        (
            {
                "rules": [
                    {"name": "a", "all": [{"kind": "drift"}], "inhibits": ["b"]},
                    {"name": "b", "all": [{"kind": "drift"}], "inhibits": ["a"]},
                ]
            },
            "cycle",
        ),
        ({"rules": [{"name": "a", "all": [{"kind": "drift"}]}] * 2}, "unique"),
        ({"suppress": [{"name": "s", "start": "25:00"}]}, "time of day"),
        ({"suppress": [{"name": "s", "start": "05:00", "end": "04:00"}]}, "start must be before"),
        ({"suppress": [{"name": "s", "timezone": "Mars/Olympus"}]}, "unknown timezone"),
        ({"sinks": [{"kind": "webhook", "url": "ftp://x"}]}, "http(s)"),
    ],
)
def test_a_bad_section_is_refused(section: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        AlertsConfig.model_validate(section)


def test_the_default_rules_docstring_states_the_computed_rates() -> None:
    doc = defaults.__doc__ or ""
    condition = defaults.SUSTAINED_DRIFT
    rate = k_of_n_false_alert_rate(
        k=condition.k,
        n=condition.n,
        alpha=condition.alpha,
        resolve_after=defaults.DRIFT_RESOLVE_AFTER,
    )
    assert f"**{rate * 1000:.3f} incidents per 1000 clean windows**" in doc
    assert rate * 1000 <= 1.0  # the target
    within4 = k_of_n_detection_probability(k=condition.k, n=condition.n, power=0.9, within=4)
    within3 = k_of_n_detection_probability(k=condition.k, n=condition.n, power=0.9, within=3)
    assert f"within 4 windows with probability {within4:.3f} (within 3: {within3:.3f})" in doc
    assert f"{condition.k} of the last {condition.n} windows" in doc
    assert f"``p <= {condition.alpha:g}``" in doc
