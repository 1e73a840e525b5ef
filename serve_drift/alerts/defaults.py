"""The default rule set: what a deployment gets without configuring any alert.

Input drift alone is a ticket, drift that costs accuracy is a page:

==========================  ========  ======================================================
rule                        severity  fires when
==========================  ========  ======================================================
``drift-accuracy-drop``     critical  sustained drift **and** estimated accuracy 10+ points
                                      under the estimator's value on the reference
``input-drift``             warning   sustained drift (muted while the rule above is open)
``label-accuracy-drop``     critical  accuracy from labels 5+ points under its first window
``calibration-drift``       warning   ECE from labels 0.05+ above its first window
``sentinel-regression``     critical  a sentinel run 5+ points under the first run
``detector-failing``        warning   3 windows in a row could not be tested
``telemetry-dropping``      warning   more than 1 % of events or embeddings lost
``flagged-inputs``          warning   more than 20 % of a window's inputs flagged
``monitor-silent``          warning   no window tested for an hour
==========================  ========  ======================================================

**Sustained drift** is :data:`SUSTAINED_DRIFT`: at least 3 of the last 4 windows with
``p <= 0.05``, per detector; an incident resolves after 3 windows without it. When per-window
p-values hold their level, its false-alert rate is **0.333 incidents per 1000 clean windows**
per detector (target: at most 1), computed exactly by
:func:`~serve_drift.alerts.rates.k_of_n_false_alert_rate` (a Markov chain over the last three
outcomes and the incident's state; ``tests/unit/alerts/test_defaults.py`` recomputes it).
A shift that every window shows is alerted on at its third window; one that each window shows
with probability 0.9 is alerted on within 4 windows with probability 0.948 (within 3: 0.729).

Why ``alpha = 0.05`` and not a stricter level with fewer windows: the p-values rules read are
calibrated for the deployed reference (``serve_drift.detectors.calibration``), which raises
them. The default detector's smallest calibrated p-value, a raw 1/501 calibrated, is 0.02 to
0.04 at windows of 200 (M/N = 0.45) and 0.008 to 0.015 at 100: a rule at ``p <= 0.01`` could
never fire at the default window size. ``benchmarks/alert_wiring.py`` measures the rules
through the monitor itself, on calibrated p-values.

Label metrics on fewer than 50 labels are not trusted for alerting.

>>> rules = {rule.name: rule for rule in default_rules()}
>>> round(rules["input-drift"].false_alert_rate_per_1000, 3)
0.333
>>> rules["drift-accuracy-drop"].inhibits
('input-drift',)
"""

from __future__ import annotations

from serve_drift.alerts.rules import (
    AlertRule,
    DetectorFailingCondition,
    DriftCondition,
    SilenceCondition,
    ThresholdCondition,
)

__all__ = ["DEFAULT_RUNBOOK", "SUSTAINED_DRIFT", "default_rules"]

SUSTAINED_DRIFT = DriftCondition(k=3, n=4, alpha=0.05)
DRIFT_RESOLVE_AFTER = 3
MIN_LABELS = 50
DEFAULT_RUNBOOK = "https://github.com/serve-drift/serve-drift#"  # + rule name: README runbooks

_DRIFT_CHECKS = (
    "Open the drift dashboard: which detector, since which window, and how low the p-values are",
    "Compare the windows' input statistics (brightness, contrast, sharpness) with the reference",
    "Look at sample requests of the windows: serve-drift alerts show <incident id>",
    "Check recent changes upstream: cameras, preprocessing, client releases, a new site",
)


def _drift_rules() -> tuple[AlertRule, ...]:
    page = AlertRule(
        name="drift-accuracy-drop",
        severity="critical",
        summary="{model_name} {model_version}: inputs drifted ({detector}) and estimated "
        "accuracy fell 10+ points",
        runbook_url=f"{DEFAULT_RUNBOOK}drift-accuracy-drop",
        suggested_checks=(*_DRIFT_CHECKS, "Label a sample of the drifted windows to confirm"),
        all=(SUSTAINED_DRIFT, ThresholdCondition(signal="estimated_accuracy", drop=0.10)),
        resolve_after=DRIFT_RESOLVE_AFTER,
        renotify_interval_s=3600.0,
        inhibits=("input-drift",),
    )
    ticket = AlertRule(
        name="input-drift",
        severity="warning",
        summary="{model_name} {model_version}: inputs drifted ({detector})",
        runbook_url=f"{DEFAULT_RUNBOOK}input-drift",
        suggested_checks=_DRIFT_CHECKS,
        all=(SUSTAINED_DRIFT,),
        resolve_after=DRIFT_RESOLVE_AFTER,
        renotify_interval_s=24 * 3600.0,
    )
    return page, ticket


def _label_rules() -> tuple[AlertRule, ...]:
    checks = (
        "Compare accuracy per class in serve-drift events metrics",
        "Check whether the drift rules fired for the same windows (data drift) or not "
        "(concept drift: the inputs look the same, the right answers changed)",
    )
    return (
        AlertRule(
            name="label-accuracy-drop",
            severity="critical",
            summary="{model_name} {model_version}: accuracy from labels fell 5+ points",
            runbook_url=f"{DEFAULT_RUNBOOK}label-accuracy-drop",
            suggested_checks=checks,
            all=(
                ThresholdCondition(
                    signal="label_accuracy", drop=0.05, baseline="first", min_labels=MIN_LABELS
                ),
            ),
        ),
        AlertRule(
            name="calibration-drift",
            severity="warning",
            summary="{model_name} {model_version}: calibration error from labels rose 0.05+",
            runbook_url=f"{DEFAULT_RUNBOOK}calibration-drift",
            suggested_checks=checks,
            all=(
                ThresholdCondition(
                    signal="label_ece", rise=0.05, baseline="first", min_labels=MIN_LABELS
                ),
            ),
        ),
        AlertRule(
            name="sentinel-regression",
            severity="critical",
            summary="{model_name} {model_version}: the sentinel set lost 5+ points of accuracy",
            runbook_url=f"{DEFAULT_RUNBOOK}sentinel-regression",
            suggested_checks=(
                "Rerun serve-drift sentinel to rule out a one-off",
                "Diff the serving image, preprocessing and weights against the last good run",
            ),
            all=(ThresholdCondition(signal="sentinel_accuracy", drop=0.05, baseline="first"),),
        ),
    )


def _health_rules() -> tuple[AlertRule, ...]:
    return (
        AlertRule(
            name="detector-failing",
            severity="warning",
            summary="{model_name} {model_version}: detector {detector} cannot test windows",
            runbook_url=f"{DEFAULT_RUNBOOK}detector-failing",
            suggested_checks=("Read the monitor's health: GET /healthz",),
            all=(DetectorFailingCondition(consecutive=3),),
        ),
        AlertRule(
            name="telemetry-dropping",
            severity="warning",
            summary="{model_name} {model_version}: monitoring data is being lost",
            runbook_url=f"{DEFAULT_RUNBOOK}telemetry-dropping",
            suggested_checks=("See serve_drift.embeddings.dropped and events.dropped by reason",),
            all=(ThresholdCondition(signal="dropped_share", above=0.01),),
        ),
        AlertRule(
            name="flagged-inputs",
            severity="warning",
            summary="{model_name} {model_version}: over 20 % of inputs flagged by ingress checks",
            runbook_url=f"{DEFAULT_RUNBOOK}flagged-inputs",
            suggested_checks=("See serve_drift.ingress.flagged by check",),
            all=(ThresholdCondition(signal="flagged_share", above=0.20),),
        ),
        AlertRule(
            name="monitor-silent",
            severity="warning",
            summary="{model_name}: no window tested for an hour",
            runbook_url=f"{DEFAULT_RUNBOOK}monitor-silent",
            suggested_checks=(
                "Is there traffic? Is the monitor deployment running (GET /healthz)?",
            ),
            all=(SilenceCondition(max_gap_s=3600.0),),
        ),
    )


def default_rules() -> tuple[AlertRule, ...]:
    """The rules a deployment gets when its config names none (table above)."""
    return (*_drift_rules(), *_label_rules(), *_health_rules())
