"""False-alert rates and detection probabilities of the sustained-drift rules, computed exactly.

Each drift rule turns per-window p-values into alerts. When the p-values hold their level (a
window without drift has ``P(p <= alpha) <= alpha``; calibrated p-values of non-overlapping
windows do) the outcome of each window is an independent Bernoulli(alpha) draw, and a rule plus
the engine's incident logic is a finite Markov chain. These functions solve that chain:

- :func:`k_of_n_false_alert_rate`: incidents opened per clean window by "at least ``k`` of the
  last ``n`` windows have ``p <= alpha``", including the engine's hysteresis (an open incident
  resolves after ``resolve_after`` windows without the condition, and a new one cannot open
  before);
- :func:`k_of_n_detection_probability`: the chance that a shift is alerted on within ``m``
  windows, when each shifted window is significant with probability ``power``;
- :func:`cusum_false_alert_rate`: alarms per clean window of a CUSUM on ``-ln p``
  (Brook and Evans' Markov-chain approximation of its in-control run length).

Sliding windows (``stride < size``) share rows, so their p-values are correlated and these
rates do not apply to them.

>>> round(k_of_n_false_alert_rate(k=2, n=3, alpha=0.01, resolve_after=3) * 1000, 3)
0.195
>>> round(k_of_n_detection_probability(k=2, n=3, power=0.9, within=3), 3)
0.972
"""

from __future__ import annotations

import itertools
import math
from functools import cache

import numpy as np

__all__ = [
    "cusum_false_alert_rate",
    "k_of_n_detection_probability",
    "k_of_n_false_alert_rate",
]

_MAX_N = 12  # 2**(n-1) history states: exact and instant up to here


def _check(*, k: int, n: int, resolve_after: int = 1) -> None:
    if not (1 <= k <= n <= _MAX_N):
        raise ValueError(f"need 1 <= k <= n <= {_MAX_N}, got k={k}, n={n}")
    if resolve_after < 1:
        raise ValueError(f"resolve_after must be >= 1, got {resolve_after}")


def _states(n: int, resolve_after: int) -> list[tuple[tuple[int, ...], int]]:
    """(last n-1 outcomes, incident phase): phase 0 = closed, 1..r = open with phase-1 clears."""
    histories = list(itertools.product((0, 1), repeat=n - 1))
    return [(h, phase) for h in histories for phase in range(resolve_after + 1)]


def _step(
    history: tuple[int, ...], phase: int, outcome: int, *, k: int, resolve_after: int
) -> tuple[tuple[int, ...], int, bool]:
    """The engine's incident logic for one window: new history, new phase, whether it opened."""
    window = (*history, outcome)
    active = sum(window) >= k
    if phase == 0:
        return window[1:], (1 if active else 0), active
    clears = 0 if active else phase  # phase - 1 clears so far; this window adds one
    return window[1:], (0 if clears >= resolve_after else clears + 1), False


@cache
def k_of_n_false_alert_rate(*, k: int, n: int, alpha: float, resolve_after: int = 1) -> float:
    """Long-run incidents opened per window under the null hypothesis (exact)."""
    _check(k=k, n=n, resolve_after=resolve_after)
    states = _states(n, resolve_after)
    index = {s: i for i, s in enumerate(states)}
    transition = np.zeros((len(states), len(states)))
    opens = np.zeros(len(states))
    for i, (history, phase) in enumerate(states):
        for outcome, prob in ((1, alpha), (0, 1.0 - alpha)):
            new_h, new_phase, opened = _step(
                history, phase, outcome, k=k, resolve_after=resolve_after
            )
            transition[i, index[(new_h, new_phase)]] += prob
            opens[i] += prob * opened
    return float(_stationary(transition) @ opens)


def _stationary(transition: np.ndarray) -> np.ndarray:
    size = len(transition)
    system = np.vstack([transition.T - np.eye(size), np.ones(size)])
    target = np.zeros(size + 1)
    target[-1] = 1.0
    solution, *_ = np.linalg.lstsq(system, target, rcond=None)
    return np.asarray(solution)


def k_of_n_detection_probability(*, k: int, n: int, power: float, within: int) -> float:
    """P(the rule holds at some window among the first ``within`` shifted windows).

    Windows before the shift are taken as not significant (the conservative case: a stray
    earlier significant window could only make detection sooner).
    """
    _check(k=k, n=n)
    total = 0.0
    for outcomes in itertools.product((0, 1), repeat=within):
        prob = math.prod(power if o else 1.0 - power for o in outcomes)
        padded = (0,) * (n - 1) + outcomes
        if any(sum(padded[t : t + n]) >= k for t in range(within)):
            total += prob
    return total


@cache
def cusum_false_alert_rate(*, allowance: float, threshold: float, cells: int = 600) -> float:
    """1 / in-control average run length of ``S = max(0, S - ln p - allowance)``, alarm ``S > h``.

    Under the null hypothesis ``-ln p`` is Exp(1). The alarm restarts ``S`` at 0 (as the engine
    does), so alarms form a renewal process whose rate is exactly 1/ARL; the Markov-chain
    discretisation on ``cells`` cells is accurate to about 1 % at the default.
    """
    if allowance <= 0 or threshold <= 0:
        raise ValueError("allowance and threshold must be > 0")
    width = threshold / cells
    centres = np.concatenate([[0.0], (np.arange(1, cells + 1) - 0.5) * width])
    upper = np.concatenate([[0.0], np.arange(1, cells + 1) * width])  # right edge of each state
    lower = np.concatenate([[-np.inf], upper[:-1]])
    # P(next in state j | now at c) = P(lower_j < c + X - allowance <= upper_j), X ~ Exp(1)
    shift = centres[:, None] - allowance
    transition = _exp_cdf(upper[None, :] - shift) - _exp_cdf(lower[None, :] - shift)
    run_length = np.linalg.solve(np.eye(cells + 1) - transition, np.ones(cells + 1))
    return float(1.0 / run_length[0])


def _exp_cdf(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, -np.expm1(-np.clip(x, 0, None)), 0.0)
