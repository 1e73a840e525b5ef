"""False-alarm control for the deployed reference: p-values calibrated for one reference set.

**The problem.** A permutation p-value is exact *averaged over reference sets*. A deployment
has one fixed reference, and its false-alarm rate on clean windows, ``P(p < alpha | this
reference)``, varies from one reference to the next: the reference is a sample whose mean (or
kernel mean) sits off the population's by a fixed amount of order ``1/sqrt(N)``, which the
permutation null accounts for only on average. The effect grows with the window-to-reference
ratio ``M/N``: for a mean-difference statistic of Gaussian data, the offset moves the
statistic by about ``(M/N) / sqrt(1 + 2M/N)`` of its standard deviation, whatever the
dimension. Measured on the default detector (``benchmarks/false_alarms.py``: digits, N = 449,
M = 200, 20 references): 0.003 to 0.12 per reference at ``p < 0.05``.

**Why not a calibration split with its own null.** Holding out rows and testing windows
against them makes the p-value exact *given the reference*, but its false-alarm rate given
the reference *and the split* then varies with the split's own deviation (of order
``1/sqrt(|split|)``): the problem moves, it is not solved, and the reference loses the
held-out rows (a larger M/N). Estimating where this reference sits from held-out rows is no
better unless they far outnumber the window: in 64 dimensions with 450 reference and 450
held-out rows and M = 200, the estimate of the reference's squared offset is about twice as
noisy as the offset varies between references. What finite data can give is a guarantee with
high probability over the reference (the training-conditional, or PAC, validity of conformal
prediction; Vovk 2012).

**The method: bootstrap calibration of the level** (Beran 1988, prepivoting; Hall and
Martin 1988). The whole reference stays the reference; what is learned from it is how unlucky
a reference of its size and kind can be for this detector and window size:

1. ``S`` bootstrap references (``N`` rows of the reference drawn with replacement) each get
   the configured detector and ``J`` bootstrap windows of ``M`` rows: raw p-values
   ``p[s, j]``, so row ``s`` samples that reference's own null distribution of p.
2. On the probit scale ``z = Phi^-1(p)`` each reference's null is modelled as
   ``N(m_s, sigma^2)`` in its lower half, where alarms are (from its median and 10 %
   quantile), and the references' centres as ``m_s ~ N(m, tau^2)``; the medians' own
   sampling noise, ``(pi / 2) sigma^2 / J``, is taken out of ``tau^2``.
3. A reference at the ``q``-quantile of unluckiness has centre ``c = m - z_q tau
   sqrt(1 + 1/S)``; alarming at raw ``p`` would give it the false-alarm rate
   ``Phi((Phi^-1(p) - c) / sigma)``. That is the calibrated p-value, never below the raw
   one. Alarming at calibrated ``p < alpha`` keeps the false-alarm rate at most ``alpha`` for
   a fraction ``q`` (0.99 by default) of references built this way.

The model is smooth, so calibrated p-values are not limited to multiples of ``1/J``, and it
needs few draws: ``S * J = 2000`` tests by default (about 16 s for the default detector at
N = 449, M = 200 on one CPU core; 6 s for native MMD). They run when the monitor starts and
when the window size changes, in the monitor, never on the request path. alibi-detect's MMD is
calibrated through native MMD, which computes the same statistic (within 1e-6) with the same
count rule (alibi's p = k/P is native's (k + 1)/(P + 1)), because 2000 alibi tests take
minutes. The calibration costs power: at M/N = 0.45 the default detector alarms at raw p
below 0.005 to 0.02 (0.007 typically) instead of 0.05, which is what holding the level for 99 %
of references takes; a detector whose smallest p-value, 1/(P + 1), is above that can no longer
alarm at all (native MMD with 100 permutations, on a quarter of the digits references), and
:func:`cannot_alarm_warning` says so. The bootstrap world is discrete (rows repeat), which
statistics handle as ties.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> null = np.clip(rng.uniform(size=(40, 50)) ** 1.3, 1e-4, 1)  # references that alarm often
>>> calibration = fit_calibration(null, quantile=0.99, window_size=50, reference_size=200)
>>> calibration.calibrate(0.04) > 0.04, calibration.raw_threshold(0.05) < 0.05
(True, True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from serve_drift.config import CalibrationConfig, DetectorConfig
from serve_drift.detectors.base import DriftDetector
from serve_drift.detectors.registry import build_detector
from serve_drift.messages import DriftStatistic

METHOD = "bootstrap-probit-v1"
# var(median of J normal draws) ~ (pi / 2) sigma^2 / J
_MEDIAN_NOISE = math.pi / 2
_LOWER = 0.1  # the lower quantile that, with the median, fixes a reference's null scale
_Z_LOWER = float(-stats.norm.ppf(_LOWER))
_P_FLOOR = 1e-6  # probit of p = 0 (alibi-detect) or 1 would be infinite
_MIN_SCALE = 1e-3

Clock = Callable[[], float]
PTransform = Callable[[float], float]


@dataclass(frozen=True, kw_only=True)
class CalibrationMap:
    """The fitted calibration of one detector for one reference set and window size.

    ``center`` and ``scale`` describe, on the probit scale, the null distribution of the raw
    p-value for a reference at the ``quantile`` of unluckiness (``mean_center`` for a typical
    one; ``spread`` is the references' spread around it). See the module docstring.
    """

    center: float
    scale: float
    spread: float
    mean_center: float
    quantile: float
    window_size: int
    reference_size: int
    references: int
    windows: int

    def calibrate(self, p_value: float) -> float:
        """The false-alarm rate that alarming at raw ``p_value`` has for the q-quantile
        reference, and never less than ``p_value``."""
        if not math.isfinite(p_value):
            return p_value
        z = float(stats.norm.ppf(min(max(p_value, _P_FLOOR), 1.0)))
        return float(max(p_value, stats.norm.cdf((z - self.center) / self.scale)))

    def raw_threshold(self, alpha: float) -> float:
        """The raw p-value below which the calibrated p-value is below ``alpha`` (0: none is)."""
        bound = float(stats.norm.cdf(self.center + self.scale * stats.norm.ppf(alpha)))
        return 0.0 if bound < _P_FLOOR else min(alpha, bound)

    def false_alarm_rate(self, alpha: float, *, quantile: float | None = None) -> float:
        """Estimated false-alarm rate of *uncalibrated* ``p < alpha`` for the reference at
        ``quantile`` of unluckiness (default: this map's; 0.5 is a typical reference)."""
        q = self.quantile if quantile is None else quantile
        center = self.mean_center - float(stats.norm.ppf(q)) * self.spread
        return float(stats.norm.cdf((stats.norm.ppf(alpha) - center) / self.scale))

    @property
    def window_ratio(self) -> float:
        """M/N: the window's size over the reference's."""
        return self.window_size / self.reference_size


def fit_calibration(
    null_p_values: np.ndarray, *, quantile: float, window_size: int, reference_size: int
) -> CalibrationMap:
    """Fit the probit model to ``null_p_values`` (S bootstrap references x J windows)."""
    p = np.asarray(null_p_values, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 2 or p.shape[1] < 5:
        raise ValueError(f"need null p-values of at least 2 x 5 draws, got shape {p.shape}")
    z = stats.norm.ppf(np.clip(p, _P_FLOOR, 1 - _P_FLOOR))
    centers = np.median(z, axis=1)
    lower = np.quantile(z, _LOWER, axis=1)
    scale = max(float(np.median(centers - lower)) / _Z_LOWER, _MIN_SCALE)
    noise = _MEDIAN_NOISE * scale**2 / p.shape[1]
    spread = math.sqrt(max(float(centers.var(ddof=1)) - noise, 0.0))
    mean_center = float(centers.mean())
    # A prediction for a new reference: the estimated mean's own error widens the quantile.
    margin = float(stats.norm.ppf(quantile)) * spread * math.sqrt(1 + 1 / p.shape[0])
    return CalibrationMap(
        center=mean_center - margin,
        scale=scale,
        spread=spread,
        mean_center=mean_center,
        quantile=quantile,
        window_size=window_size,
        reference_size=reference_size,
        references=int(p.shape[0]),
        windows=int(p.shape[1]),
    )


def calibration_target(config: DetectorConfig) -> tuple[DetectorConfig, PTransform]:
    """The detector whose null is drawn for ``config``, and the map of ``config``'s p onto it.

    alibi-detect's MMD is calibrated as native MMD (same statistic, same count rule: see the
    module docstring); every other detector as itself.
    """
    if config.kind == "mmd" and config.resolved_backend == "alibi":
        permutations = config.resolved_n_permutations
        native = config.model_copy(update={"backend": "native"})
        return native, lambda p: (1 + permutations * p) / (1 + permutations)
    return config, lambda p: p


# Detectors whose p-value is a permutation count: the smallest is 1 / (P + 1) (alibi-detect's MMD
# reports k / P, which its calibration target maps onto the same scale).
_PERMUTATION_KINDS = {
    ("mmd", "native"),
    ("mmd", "alibi"),
    ("classifier", "native"),
    ("combined", "native"),
}


def smallest_p_value(config: DetectorConfig) -> float:
    """The smallest raw p-value ``config``'s detector can report, on its calibration scale."""
    if (config.kind, config.resolved_backend) in _PERMUTATION_KINDS:
        return 1.0 / (config.resolved_n_permutations + 1)
    return 0.0


def cannot_alarm_warning(
    config: DetectorConfig, calibration: CalibrationMap, *, alpha: float
) -> str | None:
    """A warning when, after calibration, no p-value the detector can report alarms at
    ``alpha``: the calibrated raw threshold is below its smallest p-value."""
    smallest, threshold = smallest_p_value(config), calibration.raw_threshold(alpha)
    if threshold > smallest:
        return None
    need = f"a raw p-value below {threshold:.4f}" if threshold > 0 else "no raw p-value"
    hint = (
        f"; with {config.resolved_n_permutations} permutations the smallest is {smallest:.4f}: "
        "raise n_permutations (500 allows 0.002)"
        if smallest > 0
        else ""
    )
    return (
        f"cannot alarm at p < {alpha:g} after calibration for window {calibration.window_size} "
        f"(M/N = {calibration.window_ratio:.2f}): it would need {need}{hint}"
    )


def calibration_key(
    config: DetectorConfig, *, window_size: int, plan: CalibrationConfig, reference_hash: str
) -> str:
    """Identifies a set of null draws: the same key means the same draws would be made.

    The threshold and the device do not change the draws' distribution and are left out.
    """
    target, _ = calibration_target(config)
    identity = {
        **_metadata(target, window_size=window_size, plan=plan),
        "reference": reference_hash,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8"))
    return f"{METHOD}:{digest.hexdigest()[:24]}"


@dataclass(frozen=True, eq=False)
class NullDraws:
    """The null p-values drawn for one detector, reference and window size, with what drew
    them (``metadata``, JSON): the form a reference set stores them in."""

    key: str
    metadata: dict[str, Any]
    null_p_values: np.ndarray


def draw_nulls(
    configs: Sequence[DetectorConfig],
    *,
    embeddings: np.ndarray,
    probabilities: np.ndarray | None,
    window_size: int,
    plan: CalibrationConfig,
    reference_hash: str,
    clock: Clock = time.monotonic,
) -> list[NullDraws]:
    """Null draws for each distinct calibration target of ``configs`` (see :func:`null_p_values`).

    >>> import numpy as np
    >>> reference = np.random.default_rng(0).normal(size=(60, 3))
    >>> plan = CalibrationConfig(references=5, windows=5, min_references=2)
    >>> (draws,) = draw_nulls([DetectorConfig(backend="native", device="cpu")],
    ...     embeddings=reference, probabilities=None, window_size=20, plan=plan,
    ...     reference_hash="sha256:0")
    >>> draws.null_p_values.shape, draws.metadata["window_size"]
    ((5, 5), 20)
    """
    draws: dict[str, NullDraws] = {}
    for config in configs:
        key = calibration_key(
            config, window_size=window_size, plan=plan, reference_hash=reference_hash
        )
        if key not in draws:
            target, _ = calibration_target(config)
            started = clock()
            null = null_p_values(
                target,
                embeddings=embeddings,
                probabilities=probabilities,
                window_size=window_size,
                plan=plan,
                clock=clock,
            )
            metadata = _metadata(target, window_size=window_size, plan=plan)
            metadata["seconds"] = round(clock() - started, 3)
            draws[key] = NullDraws(key=key, metadata=metadata, null_p_values=null)
    return list(draws.values())


def _metadata(
    target: DetectorConfig, *, window_size: int, plan: CalibrationConfig
) -> dict[str, Any]:
    """What drew a set of null p-values, as stored beside them."""
    return {
        "method": METHOD,
        "detector": _identity(target),
        "window_size": window_size,
        "plan": {"references": plan.references, "windows": plan.windows, "seed": plan.seed},
    }


def _identity(target: DetectorConfig) -> dict[str, Any]:
    # The threshold and the device do not change the draws' distribution.
    return target.model_dump(mode="json", exclude={"p_value_threshold", "device"})


def null_p_values(
    config: DetectorConfig,
    *,
    embeddings: np.ndarray,
    probabilities: np.ndarray | None,
    window_size: int,
    plan: CalibrationConfig,
    clock: Clock = time.monotonic,
) -> np.ndarray:
    """Raw p-values of bootstrap windows against bootstrap references: (S, J), float64.

    Stops after the reference whose successor would overrun ``plan.budget_s``, so fewer than
    ``plan.references`` rows may come back. ``config`` should be a :func:`calibration_target`.
    """
    rng = np.random.default_rng(plan.seed)
    rows: list[np.ndarray] = []
    started = clock()
    with _one_thread():
        for done in range(1, plan.references + 1):
            rows.append(
                _one_reference(
                    config, embeddings, probabilities, window_size=window_size, plan=plan, rng=rng
                )
            )
            elapsed = clock() - started
            if elapsed * (done + 1) / done > plan.budget_s:
                break
    return np.stack(rows)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Thousands of small tests: on shared cores, torch's intra-op threads wait on each other
    (measured: 40 ms per native MMD test with 2 threads on a loaded 2-core machine, 1.6 ms with
    one), and the monitor should not take every core from serving anyway."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _one_reference(
    config: DetectorConfig,
    embeddings: np.ndarray,
    probabilities: np.ndarray | None,
    *,
    window_size: int,
    plan: CalibrationConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    n = len(embeddings)
    picks = rng.integers(n, size=n)
    detector = build_detector(
        config,
        reference=embeddings[picks],
        reference_probabilities=None if probabilities is None else probabilities[picks],
    )
    p_values = np.empty(plan.windows)
    for j in range(plan.windows):
        rows = rng.integers(n, size=window_size)
        window_probabilities = None if probabilities is None else probabilities[rows]
        p_values[j] = detector.test(embeddings[rows], probabilities=window_probabilities).p_value
    return p_values


def window_ratio_warning(*, window_size: int, reference_size: int, max_ratio: float) -> str | None:
    """A warning when a window of ``window_size`` rows is too large for the reference.

    >>> window_ratio_warning(window_size=200, reference_size=300, max_ratio=0.5) is not None
    True
    """
    ratio = window_size / max(reference_size, 1)
    if ratio <= max_ratio:
        return None
    return (
        f"the window ({window_size} rows) is too large for the reference set ({reference_size} "
        f"rows): M/N = {ratio:.2f} > {max_ratio:g}. A reference's own sampling deviation then "
        "dominates its false-alarm rate; calibration holds the level only by alarming far less "
        "often. Use a larger reference set or a smaller window."
    )


class CalibratedDetector:
    """A detector whose p-value is calibrated for its reference set and the window size.

    ``calibrate(window_size)`` returns the :class:`CalibrationMap` for that size (or ``None``:
    the detector then runs uncalibrated); it is called once per size, at the first test or
    from :meth:`prepare`, so a change of window size costs nothing until a window of the new
    size is tested (off the request path, in the monitor's worker).
    """

    def __init__(
        self,
        detector: DriftDetector,
        *,
        calibrate: Callable[[int], CalibrationMap | None],
        window_size: int,
        transform: PTransform = float,
    ) -> None:
        self.detector = detector
        self.name = detector.name
        self.backend = detector.backend
        self.window_size = window_size
        self._calibrate = calibrate
        self._transform = transform
        self._maps: dict[int, CalibrationMap | None] = {}

    @property
    def calibration(self) -> CalibrationMap | None:
        """The calibration for the current window size (computed now if not yet)."""
        if self.window_size not in self._maps:
            self._maps[self.window_size] = self._calibrate(self.window_size)
        return self._maps[self.window_size]

    def prepare(self) -> CalibrationMap | None:
        return self.calibration

    def cached(self) -> CalibrationMap | None:
        """The calibration for the current window size if already computed; never computes."""
        return self._maps.get(self.window_size)

    def test(
        self, window: np.ndarray, *, probabilities: np.ndarray | None = None
    ) -> DriftStatistic:
        calibration = self.calibration
        raw = self.detector.test(window, probabilities=probabilities)
        if calibration is None:
            return raw
        calibrated = calibration.calibrate(self._transform(raw.p_value))
        return dataclasses.replace(raw, p_value=calibrated, uncalibrated_p_value=raw.p_value)
