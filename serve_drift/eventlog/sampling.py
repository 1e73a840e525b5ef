"""Which inference events are stored, with what weight, and the accounting of every one.

**What is always kept.** Quarantined, flagged (any validation flag), low-confidence, and
drift-window events are stored with ``sampling_weight = 1``. Every other event is stored with
probability ``rate`` and ``sampling_weight = 1 / rate``, so summing weights over stored records
re-estimates counts (Horvitz-Thompson: unbiased, whatever mix of kept-always and sampled).

**When the decision is made (design choice).** Whether an event is in a *drift window* is known
only after its window's test. The monitor already holds every window's events until the test,
so it decides then: :meth:`Sampler.decide` takes ``in_drift_window`` from the test result, and
nothing needs a second pending buffer in the store. Events that never reach a tested window
(rejected embeddings, skipped windows, no reference set) are decided with
``in_drift_window=False``. The cost: an event becomes queryable (and labels can join it) only
once its window is tested, and a monitor crash loses the events of open windows; both were
never reported as stored, so the accounting stays honest.

**Accounting.** :class:`Accounting` counts ``accepted`` events (the monitor received them) and
how each was resolved: ``stored``, ``sampled_out``, or ``dropped`` with a reason. Once nothing
is pending, ``stored + sampled_out + dropped == accepted``.

>>> from serve_drift.eventlog.schema import InferenceRecord, Outputs
>>> sampler = Sampler(rate=0.1, keep_confidence_below=0.5, seed=0)
>>> low = InferenceRecord(timestamp=0.0, correlation_id="c", internal_id="i", model_name="m",
...                       model_version="1", outputs=Outputs(predicted_class=1, confidence=0.3))
>>> sampler.decide(low, in_drift_window=False)
Decision(keep=True, weight=1.0, reason='low_confidence')
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from serve_drift.errors import ServeDriftError
from serve_drift.eventlog.schema import FLAG_QUARANTINED, InferenceRecord

SAMPLED_OUT = "sampled_out"


@dataclass(frozen=True)
class Decision:
    """Keep or not; the weight to record if kept (1/P(kept)); and why."""

    keep: bool
    weight: float
    reason: str


class Sampler:
    """Per-event keep/drop decisions; thread-safe.

    ``rate`` in [0, 1] is the probability of keeping an ordinary event. ``keep_confidence_below``
    keeps every event whose top-1 confidence is below it (``None``: no confidence rule). Pass
    ``seed`` or an ``rng`` for reproducible decisions.
    """

    def __init__(
        self,
        *,
        rate: float,
        keep_confidence_below: float | None = 0.5,
        seed: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate!r}")
        if keep_confidence_below is not None and not 0.0 <= keep_confidence_below <= 1.0:
            raise ValueError(
                f"keep_confidence_below must be in [0, 1], got {keep_confidence_below!r}"
            )
        self.rate = rate
        self.keep_confidence_below = keep_confidence_below
        self._rng = rng if rng is not None else np.random.default_rng(seed)
        self._lock = threading.Lock()  # numpy Generators are not thread-safe

    def must_keep(self, record: InferenceRecord) -> str | None:
        """The reason this event is kept whatever the drift result, or ``None``."""
        if FLAG_QUARANTINED in record.validation_flags:
            return "quarantined"
        if record.flagged:
            return "flagged"
        confidence = record.outputs.confidence
        threshold = self.keep_confidence_below
        if threshold is not None and confidence is not None and confidence < threshold:
            return "low_confidence"
        return None

    def decide(self, record: InferenceRecord, *, in_drift_window: bool) -> Decision:
        return self.decide_many([record], in_drift_window=in_drift_window)[0]

    def decide_many(
        self, records: Sequence[InferenceRecord], *, in_drift_window: bool
    ) -> list[Decision]:
        """One decision per record; random draws are made in one vectorised call."""
        with self._lock:
            draws = self._rng.random(len(records))
        return [
            self._decide(record, draw, in_drift_window)
            for record, draw in zip(records, draws, strict=True)
        ]

    def _decide(self, record: InferenceRecord, draw: float, in_drift_window: bool) -> Decision:
        reason = self.must_keep(record) or ("drift_window" if in_drift_window else None)
        if reason is not None:
            return Decision(keep=True, weight=1.0, reason=reason)
        if draw < self.rate:
            return Decision(keep=True, weight=1.0 / self.rate, reason="sampled")
        return Decision(keep=False, weight=0.0, reason=SAMPLED_OUT)

    def apply(
        self, records: Sequence[InferenceRecord], *, in_drift_window: bool
    ) -> tuple[list[InferenceRecord], int]:
        """The records to store (weight and keep reason set), and how many were sampled out."""
        kept = [
            # A replica that shipped a sample already weighted the record: weights multiply.
            dataclasses.replace(
                record, sampling_weight=record.sampling_weight * d.weight, keep_reason=d.reason
            )
            for record, d in zip(
                records, self.decide_many(records, in_drift_window=in_drift_window), strict=True
            )
            if d.keep
        ]
        return kept, len(records) - len(kept)


class AccountingError(ServeDriftError, AssertionError):
    """The accounting invariant does not hold: events were lost or counted twice."""

    code = "accounting_invariant_broken"


@dataclass(frozen=True)
class AccountingSnapshot:
    """Counts at one moment. ``pending`` = accepted but not yet resolved (e.g. in open windows)."""

    accepted: int
    stored: int
    sampled_out: int
    dropped: Mapping[str, int] = field(default_factory=dict)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    @property
    def resolved(self) -> int:
        return self.stored + self.sampled_out + self.dropped_total

    @property
    def pending(self) -> int:
        return self.accepted - self.resolved

    def check(self, *, settled: bool = False) -> None:
        """Raise :class:`AccountingError` if more was resolved than accepted, or, with
        ``settled=True``, unless ``stored + sampled_out + dropped == accepted`` exactly."""
        if self.pending < 0 or (settled and self.pending != 0):
            raise AccountingError(self.summary())

    def summary(self) -> str:
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items())) or "none"
        return (
            f"stored {self.stored} + sampled out {self.sampled_out} + dropped "
            f"{self.dropped_total} ({dropped}) = {self.resolved} of {self.accepted} accepted"
            f" ({self.pending} pending)"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "accepted": self.accepted,
            "stored": self.stored,
            "sampled_out": self.sampled_out,
            "dropped": dict(self.dropped),
            "dropped_total": self.dropped_total,
            "pending": self.pending,
        }


class Accounting:
    """Thread-safe counters behind :class:`AccountingSnapshot`.

    >>> acc = Accounting()
    >>> acc.accept(10); acc.stored(3); acc.sampled_out(6); acc.dropped(1, reason="store_locked")
    >>> acc.snapshot().check(settled=True)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._accepted = 0
        self._stored = 0
        self._sampled_out = 0
        self._dropped: dict[str, int] = {}

    def accept(self, n: int) -> None:
        with self._lock:
            self._accepted += _non_negative(n)

    def stored(self, n: int) -> None:
        with self._lock:
            self._stored += _non_negative(n)

    def sampled_out(self, n: int) -> None:
        with self._lock:
            self._sampled_out += _non_negative(n)

    def dropped(self, n: int, *, reason: str) -> None:
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + _non_negative(n)

    def snapshot(self) -> AccountingSnapshot:
        with self._lock:
            return AccountingSnapshot(
                accepted=self._accepted,
                stored=self._stored,
                sampled_out=self._sampled_out,
                dropped=dict(self._dropped),
            )


def _non_negative(n: int) -> int:
    if n < 0:
        raise ValueError(f"counts only grow; got {n}")
    return n
