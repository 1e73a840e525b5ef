"""Comparing two arms over a window of routed requests: pure code, no Ray, no I/O.

Every figure is kept as a sum, so windows pool exactly into the evidence a decision reads,
also after a restart (from the stored windows):

- **agreement** and **top-1 flips** by (incumbent class, candidate class), over requests both
  arms answered (shadow mode);
- per arm: answers and **failures** by kind, **mean confidence**, **latency** p50/p99 (from a
  log-bucket histogram, within 5 %), and once labels arrive **accuracy** and **ECE** (15 bins);
- on requests both answered and that have a label, the **paired** counts a test of the
  accuracy difference needs: incumbent-only correct and candidate-only correct.

>>> from serve_drift.routing.answers import Answer, RowAnswer
>>> def ok(c): return Answer("ok", 0.01, rows=(RowAnswer(c, 0.9),))
>>> acc = WindowAccumulator()
>>> for cand in (3, 3, 5):
...     acc.add_pair(incumbent=ok(3), candidate=ok(cand))
>>> stats = acc.freeze()
>>> (stats.pairs.agreement, stats.pairs.flips)
(0.6666666666666666, ((3, 5, 1),))
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from serve_drift.routing.answers import Answer, RowAnswer

ECE_BINS = 15
_LATENCY_BASE_S = 1e-4  # bucket k holds latencies in [base * 1.1**k, base * 1.1**(k+1))
_LATENCY_GROWTH = 1.1


def latency_bucket(latency_s: float) -> int:
    """The histogram bucket of a latency (everything under 0.1 ms shares bucket 0)."""
    if latency_s <= _LATENCY_BASE_S:
        return 0
    return int(math.log(latency_s / _LATENCY_BASE_S, _LATENCY_GROWTH))


def _bucket_mid_s(bucket: int) -> float:
    return _LATENCY_BASE_S * _LATENCY_GROWTH ** (bucket + 0.5)


def histogram_quantile(histogram: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a latency histogram, at its bucket's geometric middle."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = q * (total - 1)
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen > rank:
            return _bucket_mid_s(bucket)
    return _bucket_mid_s(max(histogram))


@dataclass(frozen=True)
class ArmStats:
    """One arm over a window (or pooled windows); every field adds up across windows."""

    answered: int = 0
    failures: Mapping[str, int] = field(default_factory=dict)
    rows: int = 0
    confidence_sum: float = 0.0
    latency_histogram: Mapping[int, int] = field(default_factory=dict)
    labelled: int = 0
    correct: int = 0
    # Per confidence bin: (rows, sum of confidences, correct rows), for the ECE.
    calibration_bins: tuple[tuple[int, float, int], ...] = ()

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def error_rate(self) -> float | None:
        return self.failed / self.answered if self.answered else None

    @property
    def mean_confidence(self) -> float | None:
        return self.confidence_sum / self.rows if self.rows else None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def ece(self) -> float | None:
        n = sum(rows for rows, _, _ in self.calibration_bins)
        if not n:
            return None
        return sum(abs(hits - conf) for rows, conf, hits in self.calibration_bins if rows) / n

    def latency_s(self, q: float) -> float | None:
        return histogram_quantile(self.latency_histogram, q)

    def to_dict(self) -> dict[str, Any]:
        return {
            "answered": self.answered,
            "failures": dict(self.failures),
            "rows": self.rows,
            "confidence_sum": self.confidence_sum,
            "latency_histogram": {str(k): v for k, v in self.latency_histogram.items()},
            "labelled": self.labelled,
            "correct": self.correct,
            "calibration_bins": [list(b) for b in self.calibration_bins],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArmStats:
        return cls(
            answered=int(data["answered"]),
            failures={str(k): int(v) for k, v in data["failures"].items()},
            rows=int(data["rows"]),
            confidence_sum=float(data["confidence_sum"]),
            latency_histogram={int(k): int(v) for k, v in data["latency_histogram"].items()},
            labelled=int(data["labelled"]),
            correct=int(data["correct"]),
            calibration_bins=tuple(
                (int(r), float(c), int(h)) for r, c, h in data["calibration_bins"]
            ),
        )


@dataclass(frozen=True)
class PairStats:
    """Requests both arms answered (shadow mode), compared row by row."""

    pairs: int = 0
    agreements: int = 0
    flips: tuple[tuple[int, int, int], ...] = ()  # (incumbent class, candidate class, rows)
    labelled: int = 0
    incumbent_only_correct: int = 0
    candidate_only_correct: int = 0

    @property
    def agreement(self) -> float | None:
        return self.agreements / self.pairs if self.pairs else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "agreements": self.agreements,
            "flips": [list(flip) for flip in self.flips],
            "labelled": self.labelled,
            "incumbent_only_correct": self.incumbent_only_correct,
            "candidate_only_correct": self.candidate_only_correct,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PairStats:
        return cls(
            pairs=int(data["pairs"]),
            agreements=int(data["agreements"]),
            flips=tuple((int(a), int(b), int(n)) for a, b, n in data["flips"]),
            labelled=int(data["labelled"]),
            incumbent_only_correct=int(data["incumbent_only_correct"]),
            candidate_only_correct=int(data["candidate_only_correct"]),
        )


@dataclass(frozen=True)
class Comparison:
    """Both arms over one window, or over pooled windows (:func:`pool`)."""

    observations: int = 0
    incumbent: ArmStats = field(default_factory=ArmStats)
    candidate: ArmStats = field(default_factory=ArmStats)
    pairs: PairStats = field(default_factory=PairStats)

    def delta(self, figure: str) -> float | None:
        """candidate minus incumbent, for ``mean_confidence``, ``accuracy``, ``ece``,
        ``latency_p50_s`` or ``latency_p99_s``; None when either side lacks it."""
        a, b = _figure(self.incumbent, figure), _figure(self.candidate, figure)
        return None if a is None or b is None else b - a

    def to_dict(self) -> dict[str, Any]:
        return {
            "observations": self.observations,
            "incumbent": self.incumbent.to_dict(),
            "candidate": self.candidate.to_dict(),
            "pairs": self.pairs.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Comparison:
        return cls(
            observations=int(data["observations"]),
            incumbent=ArmStats.from_dict(data["incumbent"]),
            candidate=ArmStats.from_dict(data["candidate"]),
            pairs=PairStats.from_dict(data["pairs"]),
        )


def _figure(stats: ArmStats, figure: str) -> float | None:
    if figure.startswith("latency_p"):
        return stats.latency_s(int(figure[len("latency_p") : -2]) / 100)
    value: float | None = getattr(stats, figure)
    return value


def summary(comparison: Comparison) -> dict[str, Any]:
    """The derived figures (agreement, deltas, per-arm rates), for reports and the CLI."""
    arms = {
        name: _arm_summary(stats)
        for name, stats in (
            ("incumbent", comparison.incumbent),
            ("candidate", comparison.candidate),
        )
    }
    deltas = {
        figure: comparison.delta(figure)
        for figure in ("mean_confidence", "ece", "accuracy", "latency_p50_s", "latency_p99_s")
    }
    pairs = comparison.pairs
    return {
        "observations": comparison.observations,
        "pairs": pairs.pairs,
        "agreement": pairs.agreement,
        "flips": [list(f) for f in pairs.flips],
        "paired_labels": pairs.labelled,
        "arms": arms,
        "deltas": deltas,
    }


def _arm_summary(stats: ArmStats) -> dict[str, Any]:
    return {
        "answered": stats.answered,
        "failures": dict(stats.failures),
        "error_rate": stats.error_rate,
        "mean_confidence": stats.mean_confidence,
        "latency_p50_s": stats.latency_s(0.5),
        "latency_p99_s": stats.latency_s(0.99),
        "labelled": stats.labelled,
        "accuracy": stats.accuracy,
        "ece": stats.ece,
    }


def pool(comparisons: Iterable[Comparison]) -> Comparison:
    """Several windows as one: every count summed, histograms and bins merged."""
    total = Comparison()
    for item in comparisons:
        total = Comparison(
            observations=total.observations + item.observations,
            incumbent=_add_arms(total.incumbent, item.incumbent),
            candidate=_add_arms(total.candidate, item.candidate),
            pairs=_add_pairs(total.pairs, item.pairs),
        )
    return total


def _add_counts(a: Mapping[Any, int], b: Mapping[Any, int]) -> dict[Any, int]:
    return dict(Counter(a) + Counter(b))


def _add_arms(a: ArmStats, b: ArmStats) -> ArmStats:
    bins = [(0, 0.0, 0)] * ECE_BINS
    for source in (a.calibration_bins, b.calibration_bins):
        for i, (rows, conf, hits) in enumerate(source):
            bins[i] = (bins[i][0] + rows, bins[i][1] + conf, bins[i][2] + hits)
    return ArmStats(
        answered=a.answered + b.answered,
        failures=_add_counts(a.failures, b.failures),
        rows=a.rows + b.rows,
        confidence_sum=a.confidence_sum + b.confidence_sum,
        latency_histogram=_add_counts(a.latency_histogram, b.latency_histogram),
        labelled=a.labelled + b.labelled,
        correct=a.correct + b.correct,
        calibration_bins=tuple(bins) if any(r for r, _, _ in bins) else (),
    )


def _add_pairs(a: PairStats, b: PairStats) -> PairStats:
    flips = Counter({(x, y): n for x, y, n in a.flips}) + Counter(
        {(x, y): n for x, y, n in b.flips}
    )
    return PairStats(
        pairs=a.pairs + b.pairs,
        agreements=a.agreements + b.agreements,
        flips=_sorted_flips(flips),
        labelled=a.labelled + b.labelled,
        incumbent_only_correct=a.incumbent_only_correct + b.incumbent_only_correct,
        candidate_only_correct=a.candidate_only_correct + b.candidate_only_correct,
    )


def _sorted_flips(flips: Mapping[tuple[int, int], int]) -> tuple[tuple[int, int, int], ...]:
    return tuple((x, y, n) for (x, y), n in sorted(flips.items(), key=lambda kv: (-kv[1], kv[0])))


class _ArmAccumulator:
    """Mutable sums for one arm while its window is open (or still receiving labels)."""

    def __init__(self) -> None:
        self.answered = 0
        self.failures: Counter[str] = Counter()
        self.rows = 0
        self.confidence_sum = 0.0
        self.latency: Counter[int] = Counter()
        self.labelled = 0
        self.correct = 0
        self.bins = [[0, 0.0, 0] for _ in range(ECE_BINS)]

    def add(self, answer: Answer) -> None:
        self.answered += 1
        if answer.latency_s is not None:
            self.latency[latency_bucket(answer.latency_s)] += 1
        if not answer.ok:
            self.failures[answer.status] += 1
            return
        self.rows += len(answer.rows)
        self.confidence_sum += sum(row.confidence for row in answer.rows)

    def label(self, row: RowAnswer, label: int) -> bool:
        hit = row.predicted == label
        self.labelled += 1
        self.correct += hit
        # Equal-width bins (0, 1/15], (1/15, 2/15], ...; a confidence of 0 joins the first.
        b = self.bins[min(ECE_BINS - 1, max(0, math.ceil(row.confidence * ECE_BINS) - 1))]
        b[0], b[1], b[2] = b[0] + 1, b[1] + row.confidence, b[2] + hit
        return hit

    def freeze(self) -> ArmStats:
        bins = tuple((int(r), float(c), int(h)) for r, c, h in self.bins)
        return ArmStats(
            answered=self.answered,
            failures=dict(self.failures),
            rows=self.rows,
            confidence_sum=self.confidence_sum,
            latency_histogram=dict(self.latency),
            labelled=self.labelled,
            correct=self.correct,
            calibration_bins=bins if self.labelled else (),
        )


def reconcile(incumbent: Answer, candidate: Answer) -> Answer:
    """A candidate answer with another number of rows than the incumbent's is garbage."""
    if incumbent.ok and candidate.ok and len(incumbent.rows) != len(candidate.rows):
        detail = f"{len(candidate.rows)} rows for a request the incumbent answered in "
        return replace(
            candidate, status="invalid", rows=(), detail=f"{detail}{len(incumbent.rows)}"
        )
    return candidate


class WindowAccumulator:
    """One window's sums, fed observation by observation and label by label."""

    def __init__(self) -> None:
        self.observations = 0
        self._arms = {"incumbent": _ArmAccumulator(), "candidate": _ArmAccumulator()}
        self._pairs = 0
        self._agreements = 0
        self._flips: Counter[tuple[int, int]] = Counter()
        self._paired_labelled = 0
        self._incumbent_only = 0
        self._candidate_only = 0

    def add_single(self, *, arm: str, answer: Answer) -> None:
        """A request only one arm answered (canary, or a shadow request not mirrored)."""
        self.observations += 1
        self._arms[arm].add(answer)

    def add_pair(self, *, incumbent: Answer, candidate: Answer) -> None:
        self.observations += 1
        self._arms["incumbent"].add(incumbent)
        self._arms["candidate"].add(candidate)
        if not (incumbent.ok and candidate.ok):
            return
        for a, b in zip(incumbent.rows, candidate.rows, strict=True):
            self._pairs += 1
            if a.predicted == b.predicted:
                self._agreements += 1
            else:
                self._flips[(a.predicted, b.predicted)] += 1

    def label(self, answers: Mapping[str, Answer], label: int) -> None:
        """Ground truth for a one-row request; ``answers`` holds each arm's ok answer."""
        hits = {arm: self._arms[arm].label(a.rows[0], label) for arm, a in answers.items()}
        if len(hits) == 2:
            self._paired_labelled += 1
            self._incumbent_only += hits["incumbent"] and not hits["candidate"]
            self._candidate_only += hits["candidate"] and not hits["incumbent"]

    def freeze(self) -> Comparison:
        return Comparison(
            observations=self.observations,
            incumbent=self._arms["incumbent"].freeze(),
            candidate=self._arms["candidate"].freeze(),
            pairs=PairStats(
                pairs=self._pairs,
                agreements=self._agreements,
                flips=_sorted_flips(self._flips),
                labelled=self._paired_labelled,
                incumbent_only_correct=self._incumbent_only,
                candidate_only_correct=self._candidate_only,
            ),
        )


def labelled_answers(answers: Sequence[tuple[str, Answer | None]]) -> dict[str, Answer]:
    """The arms whose answer a label can judge: ok, and one row (a label is per request)."""
    return {arm: a for arm, a in answers if a is not None and a.ok and len(a.rows) == 1}
