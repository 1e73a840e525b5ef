"""Rules: conditions on drift results and other signals, combined with ``all`` or ``any``.

Each condition has a ``kind``:

- ``drift``: at least ``k`` of the last ``n`` windows have ``p <= alpha`` (per detector unless
  ``detector`` names one);
- ``cusum``: a CUSUM on ``-ln p`` crosses ``threshold`` (``allowance`` per window);
- ``threshold``: a measured signal is ``below``/``above`` a value, or fell by ``drop``/rose by
  ``rise`` from its baseline (``signal``: the baseline the signal carries; ``first``: its first
  value for this model version; or a number);
- ``detector_failing``: ``consecutive`` windows in a row could not be tested;
- ``silence``: no window tested for ``max_gap_s`` (alone in its rule, so that Prometheus can
  evaluate it on its own when the monitor is gone).

Every rule carries ``severity``, ``owner``, ``runbook_url``, ``dashboards`` and
``suggested_checks`` into every alert it raises.

>>> rule = AlertRule.model_validate({"name": "input-drift", "owner": "vision-team",
...     "all": [{"kind": "drift", "k": 2, "n": 3, "alpha": 0.01}]})
>>> (rule.conditions[0].kind, rule.per_detector, round(rule.false_alert_rate_per_1000, 3))
('drift', True, 0.196)
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_drift.alerts.rates import cusum_false_alert_rate, k_of_n_false_alert_rate

__all__ = [
    "CARRY_BASELINE",
    "DETECTOR_KINDS",
    "SIGNAL_NAMES",
    "AlertRule",
    "Condition",
    "CusumCondition",
    "DetectorFailingCondition",
    "DriftCondition",
    "Severity",
    "SilenceCondition",
    "ThresholdCondition",
]

Severity = Literal["critical", "warning", "info"]
SignalName = Literal[
    "estimated_accuracy",
    "label_accuracy",
    "label_f1_macro",
    "label_ece",
    "sentinel_accuracy",
    "flagged_share",
    "dropped_share",
    "latency_p99_s",
]
SIGNAL_NAMES: tuple[str, ...] = SignalName.__args__  # type: ignore[attr-defined]
# Signals whose reports carry their own baseline (the estimator on the reference, validation
# metrics, the sentinel's expected accuracy).
CARRY_BASELINE = frozenset(
    {"estimated_accuracy", "label_accuracy", "label_f1_macro", "label_ece", "sentinel_accuracy"}
)
# Placeholders a summary may use: the alert's labels, known wherever it is rendered
# (our sinks and Prometheus' templates alike).
SUMMARY_FIELDS = frozenset({"rule", "severity", "owner", "model_name", "model_version", "detector"})
_RULE_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- conditions -------------------------------------------------------------------------------


class DriftCondition(_Frozen):
    """Sustained drift: at least ``k`` of the last ``n`` tested windows have ``p <= alpha``."""

    kind: Literal["drift"] = "drift"
    k: int = Field(2, ge=1, le=12)
    n: int = Field(3, ge=1, le=12)
    alpha: float = Field(0.01, gt=0, lt=1)
    detector: str | None = None

    @model_validator(mode="after")
    def _k_at_most_n(self) -> DriftCondition:
        if self.k > self.n:
            raise ValueError(f"drift condition needs k <= n, got k={self.k}, n={self.n}")
        return self

    def describe(self) -> str:
        return f"{self.k} of the last {self.n} windows with p <= {self.alpha:g}"

    def false_alert_rate(self, *, resolve_after: int) -> float:
        return k_of_n_false_alert_rate(
            k=self.k, n=self.n, alpha=self.alpha, resolve_after=resolve_after
        )


class CusumCondition(_Frozen):
    """Sequential: ``S = max(0, S - ln p - allowance)`` per window; true when ``S > threshold``
    (then ``S`` restarts at 0). Under no drift ``-ln p`` averages 1, so ``allowance > 1``."""

    kind: Literal["cusum"] = "cusum"
    allowance: float = Field(1.5, gt=1.0, le=20)
    threshold: float = Field(8.0, gt=0, le=200)
    detector: str | None = None

    def describe(self) -> str:
        return f"CUSUM of -ln p (allowance {self.allowance:g}) above {self.threshold:g}"

    def false_alert_rate(self, *, resolve_after: int) -> float:
        # Alarms while an incident is open do not open another: 1/ARL is an upper bound.
        return cusum_false_alert_rate(allowance=self.allowance, threshold=self.threshold)


class ThresholdCondition(_Frozen):
    """A measured signal against a bound (``below``/``above``) or its baseline (``drop``/``rise``).

    ``baseline``: ``signal`` (the baseline the signal carries, e.g. the accuracy estimator on the
    reference), ``first`` (the signal's first value for this model version), or a number.
    ``min_labels`` ignores label metrics resting on fewer labels.
    """

    kind: Literal["threshold"] = "threshold"
    signal: SignalName
    below: float | None = None
    above: float | None = None
    drop: float | None = Field(None, gt=0)
    rise: float | None = Field(None, gt=0)
    baseline: float | Literal["signal", "first"] = "signal"
    min_labels: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _one_bound(self) -> ThresholdCondition:
        bounds = [b for b in (self.below, self.above, self.drop, self.rise) if b is not None]
        if len(bounds) != 1:
            raise ValueError(
                f"threshold on {self.signal} needs exactly one of below, above, drop, rise"
            )
        if self.relative and self.baseline == "signal" and self.signal not in CARRY_BASELINE:
            raise ValueError(
                f"{self.signal} carries no baseline: give baseline 'first' or a number"
            )
        return self

    @property
    def relative(self) -> bool:
        return self.drop is not None or self.rise is not None

    def describe(self) -> str:
        for word, value in (("below", self.below), ("above", self.above)):
            if value is not None:
                return f"{self.signal} {word} {value:g}"
        word, value = ("fell by", self.drop) if self.drop is not None else ("rose by", self.rise)
        return f"{self.signal} {word} >= {value:g} from its baseline ({self.baseline})"


class DetectorFailingCondition(_Frozen):
    """``consecutive`` windows in a row that a detector could not test."""

    kind: Literal["detector_failing"] = "detector_failing"
    consecutive: int = Field(3, ge=1, le=10_000)
    detector: str | None = None

    def describe(self) -> str:
        return f"{self.consecutive} windows in a row not tested (detector failing)"


class SilenceCondition(_Frozen):
    """No window tested for ``max_gap_s`` (counted from the engine's start before the first)."""

    kind: Literal["silence"] = "silence"
    max_gap_s: float = Field(3600.0, gt=0)

    def describe(self) -> str:
        return f"no window tested for {self.max_gap_s:g} s"


Condition = Annotated[
    DriftCondition
    | CusumCondition
    | ThresholdCondition
    | DetectorFailingCondition
    | SilenceCondition,
    Field(discriminator="kind"),
]
DETECTOR_KINDS = ("drift", "cusum", "detector_failing")


# --- rules ------------------------------------------------------------------------------------


class AlertRule(_Frozen):
    """One alert: conditions combined with ``all`` or ``any``, and what every alert carries.

    ``resolve_after``: evaluations without the condition before the incident resolves.
    ``renotify_interval_s``: re-send an open incident this often (``None``: never).
    ``inhibits``: rules whose notifications this one mutes, for the same model version (and
    detector), while it is open (e.g. a page mutes the matching ticket).
    """

    name: str
    severity: Severity = "warning"
    owner: str = "ml-platform"
    summary: str = ""
    runbook_url: str | None = None
    dashboards: tuple[str, ...] = ()
    suggested_checks: tuple[str, ...] = ()
    all: tuple[Condition, ...] = ()
    any: tuple[Condition, ...] = ()
    resolve_after: int = Field(1, ge=1, le=1000)
    renotify_interval_s: float | None = Field(4 * 3600.0, gt=0)
    inhibits: tuple[str, ...] = ()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _RULE_NAME.match(value) or len(value) > 63:
            raise ValueError(f"rule name {value!r}: lowercase words joined by '-', at most 63")
        return value

    @model_validator(mode="after")
    def _shape(self) -> AlertRule:
        if bool(self.all) == bool(self.any):
            raise ValueError(f"rule {self.name}: give exactly one of 'all' or 'any'")
        if any(c.kind == "silence" for c in self.conditions) and len(self.conditions) > 1:
            raise ValueError(f"rule {self.name}: a silence condition must be alone in its rule")
        _check_summary(self.name, self.summary)
        return self

    @property
    def conditions(self) -> tuple[Condition, ...]:
        return self.all or self.any

    @property
    def combine(self) -> Literal["all", "any"]:
        return "all" if self.all else "any"

    @property
    def per_detector(self) -> bool:
        """Whether incidents are per detector: some condition reads one detector's results."""
        return any(c.kind in DETECTOR_KINDS for c in self.conditions)

    @property
    def false_alert_rate_per_1000(self) -> float | None:
        """Incidents per 1000 clean windows from its drift conditions (``None``: none has one).

        For ``all``, no more than its least frequent drift condition; for ``any``, no more than
        their sum (a bound: the conditions may share windows). Per detector scope.
        """
        rates = [
            c.false_alert_rate(resolve_after=self.resolve_after) * 1000
            for c in self.conditions
            if isinstance(c, DriftCondition | CusumCondition)
        ]
        if not rates:
            return None
        return min(rates) if self.combine == "all" else sum(rates)

    def describe(self) -> str:
        joiner = " and " if self.combine == "all" else " or "
        return joiner.join(c.describe() for c in self.conditions)


def _check_summary(rule: str, summary: str) -> None:
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(summary) if name is not None}
    except ValueError as exc:
        raise ValueError(f"rule {rule}: summary is not a valid template: {exc}") from None
    unknown = fields - SUMMARY_FIELDS
    if unknown:
        raise ValueError(
            f"rule {rule}: summary uses {sorted(unknown)}; valid: {sorted(SUMMARY_FIELDS)}"
        )
