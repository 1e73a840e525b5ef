"""The stated false-alert rates are the engine's: exact chains against seeded simulations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from serve_drift.alerts.config import AlertsConfig
from serve_drift.alerts.engine import AlertEngine
from serve_drift.alerts.rates import (
    cusum_false_alert_rate,
    k_of_n_detection_probability,
    k_of_n_false_alert_rate,
)
from tests.support.alert_signals import MODEL, window


def _opened_per_window(config: AlertsConfig, p_values: np.ndarray) -> float:
    engine = AlertEngine(config, started_at=0.0, model_names=(MODEL,))
    opened = sum(
        t.kind == "opened"
        for i, p in enumerate(p_values)
        for t in engine.observe(window(i, float(p)))
    )
    return opened / len(p_values)


def _rule(condition: dict[str, object], resolve_after: int) -> AlertsConfig:
    return AlertsConfig.model_validate(
        {"sinks": [], "rules": [{"name": "r", "all": [condition], "resolve_after": resolve_after}]}
    )


@pytest.mark.parametrize(("k", "n", "alpha", "resolve_after"), [(2, 3, 0.2, 3), (3, 5, 0.3, 1)])
def test_the_exact_k_of_n_rate_matches_the_engine_on_uniform_p_values(
    k: int, n: int, alpha: float, resolve_after: int
) -> None:
    # A high alpha makes alerts frequent enough to measure the rate in 20 000 windows.
    p_values = np.random.default_rng(7).random(20_000)
    config = _rule({"kind": "drift", "k": k, "n": n, "alpha": alpha}, resolve_after)
    measured = _opened_per_window(config, p_values)
    exact = k_of_n_false_alert_rate(k=k, n=n, alpha=alpha, resolve_after=resolve_after)
    stderr = math.sqrt(exact / len(p_values))  # incidents are close to a Poisson count
    assert abs(measured - exact) < 4 * stderr, (measured, exact)


def test_the_cusum_rate_matches_the_engine_on_uniform_p_values() -> None:
    p_values = np.random.default_rng(11).random(20_000)
    config = _rule({"kind": "cusum", "allowance": 1.2, "threshold": 3.0}, 1)
    measured = _opened_per_window(config, p_values)
    exact = cusum_false_alert_rate(allowance=1.2, threshold=3.0)
    assert abs(measured - exact) < 4 * math.sqrt(exact / len(p_values)), (measured, exact)


def test_hysteresis_lowers_the_rate_and_one_window_rules_open_at_alpha_times_one_minus_alpha() -> (
    None
):
    assert k_of_n_false_alert_rate(k=1, n=1, alpha=0.05, resolve_after=1) == pytest.approx(
        0.05 * 0.95
    )
    loose = k_of_n_false_alert_rate(k=2, n=3, alpha=0.05, resolve_after=1)
    strict = k_of_n_false_alert_rate(k=2, n=3, alpha=0.05, resolve_after=5)
    assert strict < loose


def test_the_detection_probability_matches_a_simulation() -> None:
    rng = np.random.default_rng(3)
    significant = rng.random((50_000, 3)) < 0.7
    padded = np.concatenate([np.zeros((50_000, 2), dtype=bool), significant], axis=1)
    hit = np.zeros(50_000, dtype=bool)
    for t in range(3):
        hit |= padded[:, t : t + 3].sum(axis=1) >= 2
    exact = k_of_n_detection_probability(k=2, n=3, power=0.7, within=3)
    assert abs(hit.mean() - exact) < 0.01


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="k <= n"):
        k_of_n_false_alert_rate(k=4, n=3, alpha=0.1)
    with pytest.raises(ValueError, match="resolve_after"):
        k_of_n_false_alert_rate(k=1, n=3, alpha=0.1, resolve_after=0)
